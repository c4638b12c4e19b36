"""Several steps of a chain in one incremental pass, layer by layer: each op computes the boxes of every step at once.

A chain's steps (``Incremental.steps``, run here by ``steps``) depend on each other: step k's pass reads, around its
own boxes, the outputs step k - 1 left. Run one after another, each step's crops of a convolution are a few small
matrix products that read the layer's weights again (VGG-16's 512-channel layers: 9.4 MiB, 16.8 MiB as Winograd's
transforms) and pay the engine's per-op cost again. Here the model runs once for all the steps: a pass row per step
and sample, and each op computes every step's boxes in one batch. What step k reads of an earlier op's output is
that output as step k left it: its kept values with the boxes of steps 1 to k written over them (``_Steps.read``),
so the numbers are each step's own pass's, to float rounding. Steps write over each kept output in order, each
write's old values saved, so that a second reader of the output (a residual sum) winds it back and reads it again
step by step; what is left at the end is the last step's pass, the base of the next one, as a chain of single steps
leaves it.

The pass stops at its cut (the first op it would run in full, as ``Incremental.steps``'s single passes do), keeping
per step what the ops from there on read, and the ops from the cut on run on the steps' rows stacked; a model with no
such op (a map out of convolutions) gives each step's output as that step left it. An op it cannot run per step (a
value read, an in-place op on a kept output) winds every output back and the steps run one by one, as before.
"""
from __future__ import annotations

import torch

from .incremental import FULL, _Cut, _Deferred, _Diverged, _NotTogether, _Pass, _Unfollowable, _slices, on_threads

MAX_STEPS = 16  # the most steps one pass runs together (the kept outputs' boxes of all of them are held till the end)


def steps(engine, inputs: list) -> list:
    """``engine.steps(inputs)`` (the outputs of kept passes of each input in turn), their passes before the cut run
    several steps at once where they can: as many steps a pass as keep what it holds (each step's boxes and the values
    they overwrote) within ``engine.together_bytes``, as measured on the last such pass, else as if a step held the
    whole base, at most MAX_STEPS; one by one from the first pass that cannot, or where ``engine.stepwise`` is off."""
    stopped, start = [], 0
    while engine.stepwise and len(inputs) - start > 1:
        per_step = engine.step_bytes or engine.kept_bytes()
        count = max(2, min(MAX_STEPS, engine.together_bytes // max(1, per_step)))
        block = inputs[start:start + count]
        done = together(engine, block)
        if done is None:
            break
        stopped.extend(done)
        start += len(block)
    return engine.steps(inputs, stopped + [None] * (len(inputs) - len(stopped)))


def together(engine, inputs: list):
    """The steps' stopped passes (``_Cut``s, as ``Incremental.steps`` replays them), computed in one pass of all the
    steps, or None where that cannot be (the engine's state then is as it was).

    Args:
        engine: The Incremental whose base the first input continues.
        inputs: The chain's batches, in order (at least two).
    """
    if len(inputs) < 2 or engine.reads is None or not engine.kept:
        return None
    boxes, before = [], engine.base_input
    for x in inputs:
        changed = engine._changed(x, before)  # None: no base, a model it cannot follow, or a change too large
        if changed is None:
            return None
        boxes.extend(changed)
        before = x
    laid = [engine._layout(x) for x in inputs]
    mode = engine._prepared(_Steps(engine.kept, laid, boxes, engine.saved, engine.whole_threads()), boxes, True)
    stale = dict(engine.stale)
    try:
        try:
            with torch.inference_mode(), mode, on_threads(mode.crop_threads):
                out = engine.model(laid[-1])
            cut = None
        except _Deferred as stop:
            cut = stop.cut
        with torch.inference_mode(), on_threads(mode.crop_threads):
            if cut is None:  # no op ran in full (a map out of convolutions): each step's output read from the last
                outputs = mode.outputs(out)
            else:
                captures = mode.captures(engine._read_after(mode, cut))
            held = mode.held_bytes()
            mode.settle_rest(out if cut is None else None)
            if cut is None and mode.is_stale(out):
                raise _Unfollowable
    except (_NotTogether, _Diverged, _Unfollowable):
        mode.wind_back()
        engine.stale.clear()
        engine.stale.update(stale)
        return None
    except BaseException:
        mode.wind_back()
        engine.reset()
        raise
    engine.passes["incremental"] += len(inputs)
    engine.together_passes += 1
    engine.step_bytes = -(-held // len(inputs))
    work = (mode.work[0] // len(inputs), mode.work[1])  # per step; the ops ran once, for every step's boxes
    if cut is None:
        engine.work = work
        engine._keep(mode.fresh, inputs[-1])
        return outputs
    shapes = engine._cut_base(mode, inputs[-1], cut)
    return [_Cut(cut, step, shapes, x, work) for step, x in zip(captures, inputs)]


class _Steps(_Pass):
    """One pass of several steps: pass row ``step * samples + sample``; reads of a tracked tensor see it as that
    step left it (``read``), kept outputs written step by step (``_at``) with their old values saved."""

    versioned = True

    def __init__(self, kept, inputs, boxes, saved, threads):
        super().__init__(kept, inputs[-1], boxes, True, saved, threads)
        self.inputs, self.x, self.samples = inputs, inputs[-1], len(inputs[-1])
        self.versions: dict = {}  # id -> [tensor, writes (row, index, values) in row order, applied, old values]

    def real(self, row: int) -> int:
        return row % self.samples

    def read(self, tensor, index):
        head = index[0]
        row = head if isinstance(head, int) else head.start
        step, sample = divmod(row, self.samples)
        head = sample if isinstance(head, int) else slice(sample, sample + 1)
        index = (head,) + tuple(index[1:])
        if tensor is self.x:
            return self.inputs[step][index]
        self._at(tensor, step)
        return tensor[index]

    def gather(self, tensor, reads):
        for batch, position, index, place in sorted(reads, key=lambda item: item[2][0]):
            batch[(position,) + place] = self.read(tensor, index)

    def _at(self, tensor, step):
        """tensor as step left it: the boxes of steps up to it written, those of later steps not."""
        entry = self.versions.get(id(tensor))
        if entry is None:
            pending = self.pending.get(id(tensor))
            if pending is None or pending[0] is not tensor:
                raise _NotTogether  # changed, yet no boxes to write: not an output this pass computes by boxes
            writes = sorted(((row, (self.real(row), slice(None)) + _slices(box), values[position])
                             for group, values in pending[1].items() for position, (row, box) in enumerate(group)),
                            key=lambda write: write[0])
            entry = self.versions[id(tensor)] = [tensor, writes, 0, []]
        _, writes, applied, old = entry
        if applied and writes[applied - 1][0] // self.samples > step:
            self._wind(entry)
            applied = 0
        if applied < len(writes) and self.saved is not None:
            self.saved.before_write(tensor)
        while applied < len(writes) and writes[applied][0] // self.samples <= step:
            _, index, values = writes[applied]
            old.append((index, tensor[index].clone()))
            tensor[index] = values
            applied += 1
        entry[2] = applied

    @staticmethod
    def _wind(entry):
        tensor, _, _, old = entry
        for index, values in reversed(old):
            tensor[index] = values
        old.clear()
        entry[2] = 0

    def wind_back(self):
        """Every kept output as it was before this pass (the pass is given up)."""
        with torch.inference_mode():
            for entry in self.versions.values():
                self._wind(entry)

    def settle(self, tensor):
        if self.stale and self.stale.get(id(tensor)) is tensor:
            raise _Diverged  # reads are per step (read): nothing to write before

    def _write_deferred(self, tensor):
        entry = self.pending.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            self._at(tensor, len(self.inputs) - 1)
            del self.pending[id(tensor)]

    def defer(self, buffer, group, values):
        self.mutates(buffer)
        super().defer(buffer, group, values)

    def mutates(self, tensor):
        if id(tensor) in self.versions:
            raise _NotTogether  # read per step already: its boxes are being written

    def whole(self):
        raise _NotTogether

    def reads_values(self, args, kwargs):
        raise _NotTogether

    def outputs(self, out) -> list:
        """Per step, the model's output (a tensor computed by boxes, or one no step changed) as that step left it."""
        if not isinstance(out, torch.Tensor) or self.region(out) is FULL:
            raise _NotTogether
        return self._each_step(out)

    def _each_step(self, out) -> list:
        """out as each step left it, in step order (cloned)."""
        copies = []
        for step in range(len(self.inputs)):
            if self.region(out) is not None:
                self._at(out, step)
            copies.append(out.clone())
        return copies

    def held_bytes(self) -> int:
        """What the pass holds beyond the kept outputs, before its deferred boxes are settled: every step's computed
        boxes and the values they overwrote."""
        computed = [values for _, groups in self.pending.values() for values in groups.values()]
        old = [values for entry in self.versions.values() for _, values in entry[3]]
        return sum(values.numel() * values.element_size() for values in computed + old)

    def captures(self, later) -> list:
        """Per step, the outputs of the ops later (what the ops from the cut on read, Incremental._read_after) as
        that step left them (cloned)."""
        steps = [{} for _ in self.inputs]
        for index in later:
            for kept, copy in zip(steps, self._each_step(self.outs[index])):
                kept[index] = copy
        return steps
