"""Incremental forward passes: run a model again on an input that differs from the last one in a small region, and
recompute only the outputs that region can reach.

Convolutions, pooling and element-wise ops are local. Output position o of a window op (kernel k, stride s, left
padding p, dilation d) reads input positions o*s - p + j*d for j < k, so when input positions [a, b) of a spatial
dim changed, only outputs ceil((a + p - (k-1)d) / s) <= o <= floor((b - 1 + p) / s) change; they are computed from
the input crop [o_lo*s - p, (o_hi-1)*s - p + (k-1)d + 1), padded as the op pads, with the op's padding set to 0.

``Incremental`` keeps every op's output of a base pass. On a new input it finds, per row, the box of positions that
differ from the base input, and each local op computes only its box and writes it over its base output. What is not
known to be local (linear layers, global pooling, norms over positions, reshapes, unknown ops) takes its whole
input, and everything after it runs in full. So the result is a plain forward pass's, to float rounding (a crop sums
in another order), whatever the model; a model whose ops differ between passes, or that writes into a tensor in a
way the engine cannot follow, just runs plain forward passes. An in-place element-wise op on an output that no op read
before it (``ReLU(inplace=True)`` after a convolution) runs in place, as in the model: its kept output shares its
input's buffer, and an incremental pass applies it to the box just written there.

An op's boxes are written over its kept output only when something reads that output otherwise than as the batch
they were computed in (``_Pass.defer``): a batch norm, a pointwise convolution or an in-place ReLU takes the batch
itself (no crops, no concatenation), and ``out += identity`` adds the identity's rows into the branch's batch. An
output that every reader took so, in this pass and in the last full one (a ResNet block's convolutions, read by their
batch norms only), is never written: its kept output is outdated where earlier passes changed it, and a later pass
that would read it there runs in full instead. On ResNet-50 at 224x224 (4 images, 7 steps of 16 px patches) the
writes and concatenations took 0.42 s before, 0.10 s now.

An image batch runs channels-last (``Incremental._layout``), so every kept output, every crop of a convolution or
pooling and the batches computed from them share one layout, and writing a box or adding a residual needs no
transposing copy; a model that cannot take such a batch, or one with a module in training mode, runs as given.

Perturbation metrics that remove one patch per step (region perturbation, selectivity, IROF) and occlusion change a
small region per pass, so the early layers, where a CNN does most of its work at high resolution, cost little.

What every step runs in full (from the first op that is not local on: VGG-16's classifier, whose three linear layers
read 494 MB of weights for a few rows) costs each step as much as a plain pass's. ``Incremental.steps`` runs a chain
of steps whose inputs are known in advance: each step's pass stops at that op (the cut), keeping a copy of what the
ops from the cut on read of the ops before it, and the ops from the cut on then run once on all the steps' rows
stacked. Which outputs those are is read from the last full pass (which op read which op's output); the ops before
the cut hand back their kept outputs, or an empty tensor of their shape where nothing after the cut reads them, and
a value read of such a tensor runs a plain pass of the stacked inputs instead. ``engine.together.steps`` runs the
steps' passes before the cut as one pass of up to ``together.MAX_STEPS`` steps where every op can: each op computes
all the steps' boxes in one batch, reading for each step the earlier ops' outputs as that step left them.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import weakref

import torch

from ..ops.signatures import bind, plain_variant, writes_first_argument
from ..ops.table import QUIET
from .cores import FreeCores
from .intercept import OpMode
from .winograd import Transforms
from .winograd import conv2d as winograd_conv2d
from .winograd import conv2d_crops as winograd_crops

_SHARES = weakref.WeakKeyDictionary()  # model -> {(row shape, dtype, box): (share, ops per multiply-add)}
TAIL_BYTES = 2 ** 28  # the most the stacked ops from a cut on may output, all together (see Incremental.steps)
KEEP_BYTES = 2 ** 31  # the most a base pass may keep: 2 GiB (per 224x224 image VGG-16 keeps 109 MiB, ResNet-50 143)
TOGETHER_BYTES = 2 ** 32  # the most a pass of several steps holds beside the base (engine.together): 4 GiB
FULL = "full"  # recomputed in full this pass
STALE = "stale"  # written in place by the model; the engine ran the op out of place, so this object is outdated


class _Diverged(Exception):
    """The model ran other ops than on the base pass (control flow that depends on the data)."""


class _Unfollowable(Exception):
    """The model used a tensor after writing into it in place, which an out-of-place run cannot reproduce."""


class _NotTogether(Exception):
    """A pass of several chain steps at once met an op it cannot run per step (see engine.together)."""


class _Deferred(Exception):
    """A deferred pass reached its cut: the first op it runs in full (see Incremental.steps)."""

    def __init__(self, cut):
        super().__init__()
        self.cut = cut


class _Cut:
    """A kept pass stopped at op ``cut``: what the ops from there on read of the ops before (cloned), the shapes of
    the earlier ops' outputs, and the pass's input."""

    def __init__(self, cut, captures, shapes, x, work):
        self.cut, self.captures, self.shapes, self.x, self.work = cut, captures, shapes, x, work


class _Checkpoint:
    """A base to return to (Incremental.checkpoint): its kept list, input and stale outputs, and a copy of each of
    its kept outputs, whole, made the first time a later pass writes into it; outputs no pass writes (a ResNet
    block's convolutions, read by their batch norms only) are never copied. A rollback copies back the outputs
    written since the last one, and the copies stay for the next.

    Whole outputs once, not a log of each box a step overwrites: IROF's 94 steps on ResNet-50 (4 images at 224x224,
    one thread) overwrote 2.9 GiB, 6.9 times the 426 MiB base; logging that took 1.5 s and replaying it 1.2 s, where a
    pass that keeps its outputs took 0.33 s. The copies are 153 MiB there, made in 0.07 s. A short chain pays more
    than a log would (VGG-16's region perturbation, 8 steps: 230 MiB against 63 MiB), but never more than the base."""

    def __init__(self, kept, base_input, stale):
        self.kept, self.base_input, self.stale = list(kept), base_input, dict(stale)
        self.outputs = {id(output): output for _, output in kept if output is not None}
        self.copies: dict = {}  # id -> the checkpoint's values of an output a later pass wrote into
        self.written: set = set()  # the ids of the outputs written since the checkpoint or the last rollback

    def before_write(self, buffer):
        key = id(buffer)
        if key in self.written or self.outputs.get(key) is not buffer:
            return  # copied already, or not the checkpoint's (a later pass's own output: the rollback drops it)
        if key not in self.copies:
            self.copies[key] = buffer.clone()
        self.written.add(key)

    def restore(self):
        for key in self.written:
            self.outputs[key].copy_(self.copies[key])
        self.written.clear()


class Incremental:
    """Forward passes of ``model`` that reuse its last kept pass where the input did not change.

    ``incremental(x, keep=True)`` returns ``model(x)``; keep=True makes this pass the base of the next one (the
    output of each convolution, pooling and element-wise op is kept: ``row_bytes`` per input row), keep=False leaves
    the base as it was (occlusion-style copies of one input). ``threshold``: above this share of changed positions
    a pass runs in full. ``max_bytes``: a base larger than this is not kept (the passes after it run in full).
    """

    def __init__(self, model: torch.nn.Module, threshold: float = 0.5, max_bytes: int = KEEP_BYTES):
        self.model, self.threshold, self.max_bytes = model, threshold, max_bytes
        self.base_input: torch.Tensor | None = None
        self.kept: list = []  # ((op name, argument shapes), output or None) per op that read the input, in order
        self.followable = True
        self.row_bytes: int | None = None  # what the base keeps per input row, once a base was kept
        self.passes = {"full": 0, "incremental": 0}
        self.saved: _Checkpoint | None = None  # the base rollback returns to, see checkpoint()
        self.work = None  # the last pass's multiply-adds in convolutions and linear layers: (computed, a plain pass's)
        self.reads = None  # per op of the last full kept pass, the ops (-1: the input) whose outputs it read
        self.readers = None  # per op of the last full kept pass, the ops that read its output (the model's: len(reads))
        self.value_reads = set()  # the ops of the last full kept pass whose outputs a value read (item, ==) read
        self.stale = {}  # id -> a kept output that a pass did not write, as no later pass reads it (Pass.settle_rest)
        self.out_bytes = None  # per op of the last full kept pass, the bytes of its output
        self.max_tail_bytes = TAIL_BYTES  # steps stacked after their cut output at most this much (one at least)
        self.threads = None  # the threads of full passes, whole ops and stacked tails; None: torch's, at each pass
        self.cores = FreeCores()  # how many cores other processes leave free: the threads of incremental passes' crops
        self.weight_copies: dict = {}  # id(weight) -> channels-last copy of a convolution weight (see _channels_last)
        self.channels_last = True  # image batches run channels-last (see _layout); off once the model cannot
        # Winograd-transformed weights of the wide 3x3 convolutions, which passes then compute so, in full and on
        # crops (engine.winograd); None: torch's own convolutions
        self.transforms: Transforms | None = Transforms()
        self.stepwise = True  # together.steps: several steps in one pass where they can; False: one by one
        self.together_passes = 0  # the passes that ran several steps at once
        self.together_bytes = TOGETHER_BYTES  # the most such a pass holds beside the base (see together.steps)
        self.step_bytes = None  # what such a pass held per step, the last time one ran

    def reset(self):
        """Forget the base pass (and any checkpoint)."""
        self.base_input, self.kept, self.saved, self.reads, self.readers = None, [], None, None, None
        self.stale = {}
        self.weight_copies = {}

    def kept_bytes(self) -> int:
        """What the base pass keeps, in bytes."""
        outputs = {id(output): output for _, output in self.kept if output is not None}
        return sum(output.numel() * output.element_size() for output in outputs.values())

    def checkpoint(self):
        """Remember the present base, so that ``rollback`` can return to it: later kept passes copy each of its kept
        outputs, whole, the first time they write into it (see _Checkpoint), so the copies hold at most the base."""
        self.saved = _Checkpoint(self.kept, self.base_input, self.stale)

    def rollback(self) -> bool:
        """Make the checkpoint's pass the base again; False when there is none (reset, or a pass ran in full)."""
        if self.saved is None:
            return False
        with torch.inference_mode():  # the kept outputs are inference tensors
            self.saved.restore()
        self.kept, self.base_input, self.stale = list(self.saved.kept), self.saved.base_input, dict(self.saved.stale)
        return True

    def steps(self, inputs: list, stopped: list | None = None) -> list:
        """The outputs of kept passes of each input in turn (a chain: each becomes the base of the next), with the
        ops every step runs in full deferred and run once for all of them: each step's incremental pass stops at
        its first op that would run in full (the cut) and keeps a copy of what the ops from there on read of the
        earlier ones (for VGG-16, its last pooling's output); the ops from the cut on then run as one pass on the
        steps' rows stacked, so that layers whose cost is reading their weights (VGG-16's classifier: 494 MB per
        pass) read them once for all steps. The numbers are each step's plain pass's, to float rounding. Steps
        that cannot stop at a cut (no base yet, a change too large, a model the engine cannot follow) run as
        ``incremental(x)`` does.

        Args:
            inputs: The chain's batches, in order, shaped alike. The ops from the cut on run for as many steps at
                once as keep their outputs within ``max_tail_bytes`` (their bytes in the last full pass, per step).
            stopped: Per input, its pass already run and stopped at its cut, or its output (``together.steps``
                runs several steps in one pass so), or None to run it here; None: all run here.

        Returns:
            The model's output per input.
        """
        outputs, pending, work = [None] * len(inputs), [], [0, 0]

        def flush():
            if pending:
                cut_outputs, tail = self._replay([cut for _, cut in pending])
                for (position, cut), out in zip(pending, cut_outputs):
                    outputs[position] = out
                    work[0] += cut.work[0] + tail[0]
                    work[1] += cut.work[1] + tail[1]
                pending.clear()

        for position, x in enumerate(inputs):
            result = stopped[position] if stopped and stopped[position] is not None else self(x, defer=True)
            if isinstance(result, _Cut):
                tail = sum(self.out_bytes[result.cut:]) if self.out_bytes else 0
                if pending and (pending[0][1].cut != result.cut or pending[0][1].shapes != result.shapes
                                or (len(pending) + 1) * tail > self.max_tail_bytes):
                    flush()
                pending.append((position, result))
            else:
                outputs[position] = result
                if self.work is not None:
                    work = [a + b for a, b in zip(work, self.work)]
        flush()
        self.work = tuple(work)
        return outputs

    def _replay(self, cuts):
        """The outputs of the stopped passes: the model run once on their inputs stacked, the ops before the cut
        giving their captured outputs (stacked) or, where nothing after the cut reads them, empty tensors."""
        count, rows = len(cuts), len(cuts[0].x)
        stacked = torch.cat([cut.x for cut in cuts])
        captured = {index: torch.cat([cut.captures[index] for cut in cuts]) for index in cuts[0].captures}
        signatures = [signature for signature, _ in self.kept]
        mode = _Replay(stacked, cuts[0].cut, captured, cuts[0].shapes, count, signatures)
        try:
            with torch.inference_mode(), mode, on_threads(self.whole_threads()):
                out = self.model(stacked)
            work = (mode.work[0] // count, mode.work[0] // count)
        except _Diverged:
            with torch.inference_mode(), on_threads(self.whole_threads()):
                out = self.model(stacked)
            work = (0, 0)
        return [_detached(_rows(out, i * rows, (i + 1) * rows)) for i in range(count)], work

    def __call__(self, x: torch.Tensor, keep: bool = True, defer: bool = False):
        with torch.inference_mode():
            boxes = self._changed(x)
            if boxes is None:
                return self._plain(x, keep)
            try:
                out = self._run(x, boxes, keep, defer=defer and keep and self.reads is not None)
            except _Diverged:
                return self._plain(x, keep)
            except _Unfollowable:
                self.followable = False
                return self._plain(x, keep)
            self.passes["incremental"] += 1
            return out

    def whole_threads(self) -> int:
        """The threads a full pass, a whole op or a stacked tail runs on.

        Returns:
            ``threads`` where set (a runner sets it around a chain), else the count torch is set to.
        """
        return self.threads or torch.get_num_threads()

    def _changed(self, x, base=None):
        """Per row, the box of spatial positions where x differs from base (None: the base input); None: run in
        full."""
        base = self.base_input if base is None else base
        if (base is None or not self.followable or x.shape != base.shape or x.dtype != base.dtype
                or x.device != base.device or x.dim() < 3 or not x.is_floating_point()):
            return None
        boxes = changed_boxes(x, base)
        volume = sum(math.prod(stop - start for start, stop in box) for box in boxes if box is not None)
        if volume > self.threshold * math.prod(x.shape[2:]) * len(x):
            return None
        return boxes

    def _plain(self, x, keep):
        self.passes["full"] += 1
        if not keep or not self.followable or x.dim() < 3:
            if keep:
                self.reset()
            with on_threads(self.whole_threads()):
                return self.model(x)
        self.reset()
        try:
            try:
                return self._run(x, FULL, keep=True)
            except RuntimeError:
                if not self._runs_channels_last(x):
                    raise
                # the model cannot take a channels-last batch (``.view`` of an activation, say): as given, from now on
                self.channels_last = False
                return self._run(x, FULL, keep=True)
        except _Unfollowable:
            self.followable = False
            self.reset()
            with on_threads(self.whole_threads()):
                return self.model(x)

    def _layout(self, x):
        """x as the passes run it: channels-last where _runs_channels_last says so, so that every kept output is
        channels-last, like the crops of convolutions and pooling (see _window) and the batches computed from
        them. Mixed layouts cost a transposing copy at every write of a box and every residual sum: on one
        thread, 4 images at 224x224, region perturbation (8 regions of 16 px) and selectivity (56 px) took 10-12%
        less on VGG-16 and ResNet-50 than with the kept outputs as the model makes them (a 256-channel 40x40 box
        written from a channels-last batch into a contiguous output: 0.51 ms, into a channels-last one 0.15 ms).
        The scores moved by float rounding (at most 6e-7). Not in training mode: dropout draws its mask in memory
        order, so a channels-last pass would draw another one than a plain pass seeded alike (and a model given as
        a function, whose modules cannot be asked, runs as given)."""
        return x.contiguous(memory_format=torch.channels_last) if self._runs_channels_last(x) else x

    def _runs_channels_last(self, x) -> bool:
        """Whether the passes take x channels-last: an image batch, while the model takes it so, of a module with
        none of its modules in training mode."""
        return (self.channels_last and x.dim() == 4 and x.is_floating_point()
                and isinstance(self.model, torch.nn.Module) and not in_training(self.model))

    def crop_threads(self) -> int:
        """The threads an incremental pass runs its crops on: as many as other processes left cores free since the
        last pass, at most ``whole_threads`` (one where that cannot be told; see engine.cores)."""
        return self.cores.threads(self.whole_threads())

    def _run(self, x, boxes, keep, defer=False):
        given, x = x, self._layout(x)
        mode = self._prepared(_Pass(self.kept, x, boxes, keep, self.saved if keep else None, self.whole_threads()),
                              boxes, defer)
        try:
            # an incremental pass runs its crops on the cores left free (one on a busy machine) and its whole ops on
            # all (see on_threads); a full one on all
            try:
                with mode, on_threads(mode.crop_threads):
                    out = self.model(x)
            except _Deferred as stop:
                mode.settle_rest(None)
                return self._stopped(mode, given, stop.cut)
            mode.settle_rest(out)
            if mode.is_stale(out):
                raise _Unfollowable
            if not keep and len(mode.fresh) != len(self.kept):
                raise _Diverged
        except BaseException:
            mode.undo()
            if keep:
                self.reset()
            raise
        self.work = tuple(mode.work)
        if keep:
            if boxes is FULL:
                mode.reads.append(tuple(mode.index_of(item) for item in _tensors((out,), {})))  # the output reads
                self.reads = mode.reads
                self.readers = _readers(mode.reads)
                self.value_reads = mode.value_read
                self.out_bytes = [sum(t.numel() * t.element_size() for t in _tensors((out,), {}))
                                  for out in mode.outs]
            self._keep(mode.fresh, given)
        else:
            mode.undo()
        return _detached(out)

    def _prepared(self, mode, boxes, defer: bool):
        """mode (a pass of this engine's kept outputs) given the engine's threads, weight copies, transforms and, for
        an incremental pass, what the last full pass found of who reads what; defer: stop at the cut."""
        if boxes is FULL:
            mode.crop_threads = mode.threads
            self.cores.look()  # a span starts here, so that the first step after a kept pass can tell
        else:
            mode.crop_threads = self.crop_threads()
        mode.weight_copies = self.weight_copies
        mode.transforms = self.transforms
        mode.reads_before = self.reads if defer else None
        if boxes is not FULL and self.readers is not None:
            mode.readers, mode.value_reads, mode.stale = self.readers, self.value_reads, self.stale
        return mode

    def _keep(self, fresh, x):
        """fresh (a whole pass's kept outputs) and x the base, unless they keep more than max_bytes."""
        self.kept, self.base_input = fresh, x.clone()
        size = self.kept_bytes()
        self.row_bytes = -(-size // len(x))
        if size > self.max_bytes:
            self.reset()


    def _stopped(self, mode, x, cut):
        """A kept pass stopped at its cut: its ops before the cut are the new base, and what the rest reads is kept."""
        captures = {index: mode.outs[index].clone() for index in self._read_after(mode, cut)}
        return _Cut(cut, captures, self._cut_base(mode, x, cut), x, tuple(mode.work))

    def _read_after(self, mode, cut) -> list:
        """The ops before the cut (in order) whose outputs in mode the ops from the cut on read; _Diverged where one of
        them is stale (not written by the pass)."""
        later = sorted({producer for reads in self.reads[cut:] for producer in reads if 0 <= producer < cut})
        if any(self.stale.get(id(mode.outs[index])) is mode.outs[index] for index in later):
            raise _Diverged
        return later

    def _cut_base(self, mode, x, cut) -> tuple:
        """The base after mode, a kept pass of x stopped at its cut: its ops before the cut (those from the cut on did
        not run, so their kept outputs are dropped: a later pass runs them in full). Returns the pass's output
        shapes."""
        self.kept = mode.fresh + [(signature, None) for signature, _ in self.kept[cut:]]
        self.base_input = x.clone()
        return tuple(tuple(out.shape) for out in mode.outs)


def in_training(model: torch.nn.Module) -> bool:
    """Whether any module of model is in training mode: its random or batch-wise ops (dropout's mask, batch
    statistics) then follow memory order or the batch, so its passes keep the layout and batch they are given."""
    return any(module.training for module in model.modules())


def _rows(out, start, stop):
    """Rows start to stop of each tensor in a model's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return out[start:stop]
    if isinstance(out, (tuple, list)):
        return type(out)(_rows(item, start, stop) for item in out)
    if isinstance(out, dict):
        return {key: _rows(value, start, stop) for key, value in out.items()}
    return out


def changed_boxes(x: torch.Tensor, base: torch.Tensor) -> list:
    """Per row, the box of spatial positions where x differs from base (channels-first batches shaped alike): a
    (start, stop) pair per spatial dim, or None where the row is unchanged.

    Args:
        x: The new batch.
        base: The batch it is compared with.

    Returns:
        One box (or None) per row.
    """
    differs = (x != base).any(1)  # (N, *positions)
    extents = []
    for dim in range(1, differs.dim()):
        along = differs.any(dim=[d for d in range(1, differs.dim()) if d != dim]) if differs.dim() > 2 else differs
        size = along.shape[1]
        first = along.int().argmax(1)
        last = size - along.flip(1).int().argmax(1)
        extents.append(torch.stack([first, last], 1))
    changed = differs.flatten(1).any(1).tolist()
    extents = torch.stack(extents, 1).tolist()  # (N, dims, 2)
    boxes = [tuple(map(tuple, extent)) if any_change else None for extent, any_change in zip(extents, changed)]
    return boxes


def step_share(model, x: torch.Tensor, boxes) -> float | None:
    """The share of a plain pass's multiply-adds an incremental pass of ``model`` computes when row r of x changed in
    boxes[r] (a tuple of (start, stop) per spatial dim, or None), from a pass on the meta device: shapes only,
    nothing is computed and the model's parameters are not copied. None where the model cannot run there (data-
    dependent control flow, tensors it holds outside its parameters and buffers) or the pass is not followable.

    Args:
        model: The model (an nn.Module).
        x: An input batch like the ones the incremental passes will get (only its shape, dtype and layout are read).
        boxes: Per row of x, the box that changes, as ``Incremental`` finds it; None for a row that does not change.

    Returns:
        The computed share, 0 to 1, or None.
    """
    estimate = _estimate(model, x, boxes)
    return None if estimate is None else estimate[0]


def step_ops(model, x: torch.Tensor, boxes) -> float | None:
    """The ops an incremental pass of ``model`` runs (on crops or whole) per multiply-add of a plain pass of one row,
    from the same pass on the meta device as ``step_share``: each op costs a step about the same whatever its size
    (Python, a crop and a write per row, a call per crop), so the smaller the model's pass, the more they weigh.

    Returns:
        The ratio, or None where ``step_share`` is None.
    """
    estimate = _estimate(model, x, boxes)
    return None if estimate is None else estimate[1]


def _estimate(model, x, boxes):
    from torch.func import functional_call

    changed = [box for box in boxes if box is not None]
    if not isinstance(model, torch.nn.Module) or x.dim() < 3 or not changed:
        return None
    known = _SHARES.setdefault(model, {})
    key = (tuple(x.shape[1:]), x.dtype, changed[0])
    if key not in known:
        known[key] = _meta_share(model, x, changed[0], functional_call)
    return known[key]


def _meta_share(model, x, box, functional_call):
    meta = {name: tensor.to("meta") for name, tensor in list(model.named_parameters()) + list(model.named_buffers())}
    engine = Incremental(lambda batch: functional_call(model, meta, (batch,)))
    shaped = torch.empty((1,) + tuple(x.shape[1:]), dtype=x.dtype, device="meta")  # one row: rows cost alike
    try:
        with torch.inference_mode(), _hooks_set_aside(model), _ShapesOnly():
            engine._run(shaped, FULL, keep=True)
            engine._run(shaped.clone(), [box], keep=False)
    except Exception:  # noqa: BLE001 - any failure on the meta device only means no estimate
        return None
    done, full = engine.work
    return (done / full, len(engine.kept) / full) if full else None


@contextlib.contextmanager
def _hooks_set_aside(model: torch.nn.Module):
    """The model's own forward hooks left out while inside: they are the user's, and would see the estimate's empty
    meta tensors as if they were a pass (a hook that records activations would record them)."""
    kinds = ("_forward_pre_hooks", "_forward_hooks")
    saved = [(module, {kind: getattr(module, kind) for kind in kinds}) for module in model.modules()]
    try:
        for module, _ in saved:
            for kind in kinds:
                setattr(module, kind, type(getattr(module, kind))())
        yield
    finally:
        for module, hooks in saved:
            for kind, value in hooks.items():
                setattr(module, kind, value)


class _ShapesOnly(OpMode):
    """Element-wise ops and batch norm as an empty tensor of their output's shape: on the meta device torch works out
    their shapes in Python (reference decompositions), which took step_share longer than a plain pass of ResNet-50."""

    def op(self, func, name, family, args, kwargs):
        short = name.rsplit(".", 1)[-1]
        handler = _LOCAL.get(short)
        tensors = list(_tensors(args, kwargs))
        if handler in (_elementwise, _batch_norm) and tensors and not short.endswith("_") \
                and not short.startswith("__i"):
            shape = tensors[0].shape if handler is _batch_norm else torch.broadcast_shapes(*(t.shape for t in tensors))
            return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
        return func(*args, **kwargs)


def _detached(out):
    """The model's output as tensors of their own (a kept buffer is written by the next pass)."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(item) for item in out)
    if isinstance(out, dict):
        return {key: _detached(value) for key, value in out.items()}
    return out


def _tensors(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


class _Pass(OpMode):
    """One pass: which tensors came from the input and which of their positions changed (boxes per row, FULL).
    It sees quiet calls too: a value read (item, argmax) of a tensor written in place must stop the pass."""

    sees_quiet = True
    versioned = False  # rows are the steps' rows of one pass of several steps (engine.together), read per step

    def __init__(self, kept, x, boxes, keep, saved=None, threads=None):
        super().__init__()
        self.kept, self.keep, self.saved = kept, keep, saved
        self.regions = {id(x): (x, boxes)}
        self.rows = len(x)
        self.fresh: list = []  # this pass's ((name, argument shapes), output) per op, the next base when keep
        self.written: list = []  # (buffer, index, values before) to restore when not keep
        self.work = [0, 0]  # multiply-adds of convolutions and linear layers: computed, and in a plain pass
        self.threads = threads or torch.get_num_threads()  # the threads of this pass's whole ops
        self.crop_threads = 1  # the threads of its crops, writes and copies (Incremental.crop_threads)
        self.weight_copies: dict = {}  # the Incremental's channels-last weight copies (see _channels_last)
        self.transforms: Transforms | None = None  # the Incremental's Winograd weights; None: torch's convolutions
        self.outs: list = []  # each op's output, in order
        self.reads: list = []  # per op, the ops (-1: the input) whose outputs it read
        self.producers = {id(x): (x, -1)}
        self.reads_before = None  # a full kept pass's reads: stop at the first op run in full (Incremental.steps)
        self.read_from: set = set()  # the ops whose outputs an op of this pass has read
        self.pending: dict = {}  # id(buffer) -> (buffer, {group: values}): boxes computed, not yet written (defer)
        self.kept_to: dict = {}  # op -> the ops of this pass that took its boxes as computed, at no other position
        self.value_read: set = set()  # the ops whose outputs a value read (item, ==, numpy) read in this pass
        self.readers = None  # the last full kept pass's readers per op (Incremental.readers), None: write every box
        self.value_reads = set()  # the last full kept pass's value-read ops
        self.index = -1  # the op being run
        self.model_call = None  # the op being run as the model called it, where that writes into its first argument
        self.stale: dict = {}  # id -> kept output that an earlier pass left outdated (Incremental.stale)

    def index_of(self, tensor):
        entry = self.producers.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def region(self, tensor):
        entry = self.regions.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def is_stale(self, out):
        return any(self.region(item) is STALE for item in _tensors((out,), {}))

    def real(self, row: int) -> int:
        """The batch row a pass row reads (engine.together's passes have a row per step and sample)."""
        return row

    def read(self, tensor, index):
        """tensor[index], index's first item a pass row (an int, or a slice of one row)."""
        return tensor[index]

    def gather(self, tensor, reads):
        """Each (batch, position, index, place) of reads: batch[(position,) + place] = tensor[index]."""
        for batch, position, index, place in reads:
            batch[(position,) + place] = tensor[index]

    def mutates(self, tensor):
        """A handler is about to change tensor's deferred values in place."""

    def whole(self):
        """An op is about to run in full."""

    def reads_values(self, args, kwargs):
        """A value read (item, ==, numpy) of tracked tensors: their deferred boxes written first."""
        self.value_read.update(i for i in map(self.index_of, _tensors(args, kwargs)) if i is not None)
        self._settle_arguments(args, kwargs)

    def op(self, func, name, family, args, kwargs):
        regions = [self.region(t) for t in _tensors(args, kwargs)]
        if not any(region is not None for region in regions):
            return func(*args, **kwargs)
        if STALE in regions:
            raise _Unfollowable
        if name in QUIET:
            if name not in _SHAPE_READS:
                self.reads_values(args, kwargs)
            return func(*args, **kwargs)
        index = self.index = len(self.fresh)
        signature = (name,) + tuple(t.shape for t in _tensors(args, kwargs))
        base = None
        if self.kept:
            if index >= len(self.kept) or self.kept[index][0] != signature:
                raise _Diverged
            base = self.kept[index][1]
        model_call = func, args, kwargs
        func, args, kwargs, target = _out_of_place(func, name, args, kwargs)
        short = name.rsplit(".", 1)[-1]
        handler = _LOCAL.get(short) if name.startswith(_PREFIXES) else None
        in_place = target is not None and self._in_place(handler, target, model_call, base)
        result = None
        if in_place and FULL not in regions:
            result = self._in_place_boxes(model_call, target)
        elif handler is not None and FULL not in regions:
            if handler not in _TAKES_DEFERRED:
                self._settle_arguments(args, kwargs)
            self.model_call = model_call if target is not None else None
            result = handler(self, short, func, args, kwargs, base)
        if result is None and self.reads_before is not None and index < len(self.reads_before) and all(
                isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == self.rows for out in self.outs):
            raise _Deferred(index)
        if result is None:
            self.whole()
            self._settle_arguments(args, kwargs)
            call, call_args, call_kwargs = model_call if in_place else (func, args, kwargs)
            with on_threads(self.threads):  # a whole op: as many threads as a plain pass gives it
                out = None
                if short == "conv2d" and self.transforms is not None:
                    out = winograd_conv2d(self.transforms, *call_args, **call_kwargs)
                if out is None:
                    out = call(*call_args, **call_kwargs)
                boxes = FULL
        else:
            out, boxes = result
        per_output = _multiply_adds(short, args, kwargs)
        if per_output and isinstance(out, torch.Tensor):
            self.work[1] += out.numel() * per_output
            if result is None:
                self.work[0] += out.numel() * per_output
        if target is not None and not in_place:
            self.regions[id(target)] = (target, STALE)
        self._mark(out, boxes)
        reads = tuple(i for i in map(self.index_of, _tensors(args, kwargs)) if i is not None)
        self.reads.append(reads)
        self.read_from.update(reads)
        self.outs.append(out)
        if isinstance(out, torch.Tensor):
            self.producers[id(out)] = (out, index)
        # what the next pass reads of this op: its output where it computes boxes into it, else nothing
        self.fresh.append((signature, out if handler in _USES_BASE and isinstance(out, torch.Tensor) else None))
        return out

    def _in_place(self, handler, target, model_call, base) -> bool:
        """Whether an in-place op runs in place, as the model asked, instead of out of place into a buffer of its own:
        an element-wise op of one tensor (ReLU(inplace=True)) on the kept output of an earlier op of this pass that
        no op has read before it. Its kept output is then that op's buffer: a pass that keeps every output touches no
        fresh memory for it, and an incremental pass applies it to the box that op just wrote, with no crop, copy or
        write (the producer's write already saved what the box held, for undo and rollback)."""
        func, args, kwargs = model_call
        if handler is not _elementwise or not args or args[0] is not target:
            return False
        if any(t is not target for t in _tensors(args, kwargs)):
            return False
        producer = self.index_of(target)
        if producer is None or producer < 0 or producer in self.read_from or self.fresh[producer][1] is not target:
            return False
        return base is None or base is target or self.region(target) is FULL

    def _in_place_boxes(self, model_call, target):
        """An in-place op of one tensor applied to the box of each row of target that changed, in place (to the
        boxes' values where they are still to be written)."""
        func, args, kwargs = model_call
        rows = self.region(target)
        deferred = self.pending.get(id(target))
        if deferred is not None:
            self.mutates(target)
            for values in deferred[1].values():
                func(values, *args[1:], **kwargs)
            self.took(target)
            return target, rows
        if self.versioned:
            raise _NotTogether  # in place on the kept output itself, which holds one step at a time
        self.settle(target)
        for row, box in enumerate(rows):
            if box is not None:
                func(target[(row, slice(None)) + _slices(box)], *args[1:], **kwargs)
        return target, rows

    # --- deferred writes: an op's boxes are kept as the batch it computed them in until something reads its output
    # otherwise (crops with a margin, a whole op, a value read, the pass's end); an output that every reader takes
    # as computed, at no other position, in this pass and the last full one (a convolution read by its batch norm
    # only), is never written: its kept output is never read again

    def defer(self, buffer, group, values):
        """buffer's box in each (row, box) of group is the next row of values, written when first needed."""
        entry = self.pending.get(id(buffer))
        if entry is None:
            entry = self.pending[id(buffer)] = (buffer, {})
        entry[1][tuple(group)] = values

    def deferred(self, tensor, group):
        """The values of tensor's boxes in group's rows, as computed and not yet written, or None."""
        entry = self.pending.get(id(tensor))
        return None if entry is None or entry[0] is not tensor else entry[1].get(tuple(group))

    def took(self, tensor):
        """The op being run took tensor's boxes as computed and reads no other position of it."""
        producer = self.index_of(tensor)
        if producer is not None:
            self.kept_to.setdefault(producer, set()).add(self.index)

    def settle(self, tensor):
        """Make tensor readable at any position: its deferred boxes written into it. A kept output that an earlier
        pass did not write (see settle_rest) holds outdated values: the pass stops, to run in full."""
        if self.stale and self.stale.get(id(tensor)) is tensor:
            raise _Diverged
        self._write_deferred(tensor)

    def _write_deferred(self, tensor):
        entry = self.pending.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            del self.pending[id(tensor)]
            for group, values in entry[1].items():
                _write_rows(self, tensor, group, values)

    def drop(self, tensor):
        """Forget tensor's deferred boxes, never to be written: a kept pass leaves its kept output stale."""
        self.pending.pop(id(tensor), None)
        if self.keep:
            self.stale[id(tensor)] = tensor

    def _settle_arguments(self, args, kwargs):
        if self.pending:
            for value in _tensors(args, kwargs):
                self.settle(value)

    def settle_rest(self, out):
        """At the pass's end (or its cut): write what is still deferred, but for outputs no pass reads again."""
        if not self.pending:
            return
        returned = {id(item) for item in _tensors((out,), {})}
        this_pass = _readers(self.reads)
        with on_threads(self.crop_threads):
            for buffer, _ in list(self.pending.values()):
                owners = [index for index, out in enumerate(self.outs) if out is buffer]
                if id(buffer) in returned or not owners or not all(
                        self._unread(index, this_pass.get(index, ())) for index in owners):
                    self._write_deferred(buffer)
                elif self.keep:
                    self.stale[id(buffer)] = buffer  # outdated where this pass changed it: read no more
            self.pending.clear()

    def _unread(self, index, readers) -> bool:
        """Whether later passes will not read op index's kept output: every op that read it, in this pass and in
        the last full one, took its boxes as computed (a batch norm of a convolution, a residual sum whose other
        input changed inside them), so they take the next pass's boxes too; one that does not ends that pass."""
        if self.readers is None or index in self.value_reads or index in self.value_read:
            return False
        took = self.kept_to.get(index, set())
        full = self.readers.get(index)
        return bool(full) and full <= took and set(readers) <= took

    def _mark(self, out, boxes):
        if isinstance(out, torch.Tensor):
            self.regions[id(out)] = (out, boxes)
        elif isinstance(out, (tuple, list)):
            for item in out:
                self._mark(item, FULL)

    def write(self, buffer, index, values):
        """buffer[index] = values, remembering what was there when this pass is not kept, or the whole buffer once
        when a checkpoint is set."""
        if not self.keep:
            self.written.append((buffer, index, buffer[index].clone()))
        elif self.saved is not None:
            self.saved.before_write(buffer)
        buffer[index] = values

    def undo(self):
        for buffer, index, values in reversed(self.written):
            buffer[index] = values
        self.written.clear()


_PREFIXES = ("torch.nn.functional.", "torch.Tensor.", "torch.")
_SHAPE_READS = {"torch.Tensor." + name for name in (
    "size", "dim", "numel", "shape.__get__", "dtype.__get__", "device.__get__", "ndim.__get__", "is_contiguous",
    "stride", "storage_offset", "requires_grad.__get__", "grad_fn.__get__", "__len__", "element_size",
    "is_floating_point", "layout.__get__", "is_cuda.__get__", "names.__get__", "is_complex", "get_device",
    "output_nr.__get__", "_version.__get__", "__hash__", "_is_view")}


class _Replay(OpMode):
    """The ops from a cut on, run once on several stopped passes' rows stacked (see Incremental.steps): an op
    before the cut gives its captured outputs, or an empty tensor of its output's shape where nothing after the cut
    reads it; an op from the cut on runs as it is. A value read of an empty tensor, or ops other than the kept
    pass's, stop the replay (the caller then runs a plain pass)."""

    sees_quiet = True

    def __init__(self, stacked, cut, captured, shapes, count, signatures):
        super().__init__()
        self.cut, self.captured, self.shapes, self.count, self.signatures = cut, captured, shapes, count, signatures
        self.tracked: dict = {id(stacked): (stacked, False)}  # id -> (tensor, whether it is an empty stand-in)
        self.index = 0
        self.work = [0]

    def op(self, func, name, family, args, kwargs):
        tensors = list(_tensors(args, kwargs))
        entries = [self.tracked.get(id(t)) for t in tensors]
        entries = [entry for entry, t in zip(entries, tensors) if entry is not None and entry[0] is t]
        if not entries:
            return func(*args, **kwargs)
        if name in QUIET:
            if any(empty for _, empty in entries) and name not in _SHAPE_READS:
                raise _Diverged
            return func(*args, **kwargs)
        index = self.index
        self.index += 1
        if index >= len(self.signatures) or self.signatures[index][0] != name:
            raise _Diverged
        if index < self.cut:
            if index in self.captured:
                out, empty = self.captured[index], False
            else:
                shape = self.shapes[index]
                out, empty = torch.empty((shape[0] * self.count,) + shape[1:], dtype=tensors[0].dtype,
                                         device=tensors[0].device), True
            self.tracked[id(out)] = (out, empty)
            return out
        if any(empty for _, empty in entries):
            raise _Diverged
        out = func(*args, **kwargs)
        per_output = _multiply_adds(name.rsplit(".", 1)[-1], args, kwargs)
        if per_output and isinstance(out, torch.Tensor):
            self.work[0] += out.numel() * per_output
        for item in _tensors((out,), {}):
            self.tracked[id(item)] = (item, False)
        return out


def _out_of_place(func, name, args, kwargs):
    """The op run without writing into its first argument, and that argument (None if the op is not in place)."""
    if not writes_first_argument(func, name, args, kwargs):
        return func, args, kwargs, None
    target = args[0] if args else None
    plain = plain_variant(name)
    if plain is not None and not name.startswith("torch.nn.functional."):
        return plain, args, kwargs, target
    try:
        signature = _signature(func)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        raise _Unfollowable from None
    if "inplace" not in bound.arguments and "inplace" not in signature.parameters:
        raise _Unfollowable
    bound.arguments["inplace"] = False
    return func, bound.args, bound.kwargs, target


@functools.lru_cache(maxsize=256)
def _signature(func) -> inspect.Signature:
    """func's signature, looked up once: an in-place functional op (``F.relu(x, inplace=True)``) is bound at every op
    of every pass, and inspect.signature took 7 microseconds a call, twice an op (ResNet-50: 49 ReLUs a step)."""
    return inspect.signature(func)


# --- boxes -------------------------------------------------------------------------------------------------------

def _union(first, second):
    if first is None:
        return second
    if second is None:
        return first
    return tuple((min(a, c), max(b, d)) for (a, b), (c, d) in zip(first, second))


def _row_union(regions):
    rows = None
    for boxes in regions:
        rows = list(boxes) if rows is None else [_union(a, b) for a, b in zip(rows, boxes)]
    return rows


def _slices(box):
    return tuple(slice(start, stop) for start, stop in box)


# --- local ops ---------------------------------------------------------------------------------------------------

def _tuple(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_MAX_POOL = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _window(state, name, func, args, kwargs, base):
    """Convolution and pooling: each output box from its input crop, padded as the op pads."""
    names = _CONV if name.startswith("conv") else _MAX_POOL if name.startswith("max") else _AVG_POOL
    op = bind(names, args, kwargs, {"stride": None, "padding": 0, "dilation": 1, "groups": 1, "bias": None,
                                    "ceil_mode": False, "return_indices": False, "count_include_pad": True,
                                    "divisor_override": None})
    source = op["input"]
    if not isinstance(base, torch.Tensor) or op.get("return_indices") or source.dim() < 3:
        return None
    if any(state.region(op[key]) is not None for key in ("weight", "bias") if isinstance(op.get(key), torch.Tensor)):
        return None
    dims = source.dim() - 2
    if names is _CONV:
        kernel = tuple(op["weight"].shape[2:])
        padding = op["padding"]
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(_tuple(op["dilation"], dims), kernel))
        stride = _tuple(op["stride"] or 1, dims)
        fill = 0.0
    else:
        kernel = _tuple(op["kernel_size"], dims)
        stride = _tuple(op["stride"] or op["kernel_size"], dims)
        padding = op["padding"]
        fill = -math.inf if names is _MAX_POOL else 0.0
        if names is _AVG_POOL and (op["ceil_mode"] or (not op["count_include_pad"] and padding != 0)):
            return None
    padding, dilation = _tuple(padding, dims), _tuple(op.get("dilation", 1), dims)
    sizes, outputs = source.shape[2:], base.shape[2:]

    def reach(dim, start, stop):
        k, s, p, d = kernel[dim], stride[dim], padding[dim], dilation[dim]
        return max(0, -(-(start + p - (k - 1) * d) // s)), min(outputs[dim], (stop - 1 + p) // s + 1)

    rows = _mapped(state.region(source), reach)
    crop_args = dict(op)
    crop_args.pop("input")
    crop_args["padding"] = 0
    if names is not _CONV:
        crop_args["ceil_mode"] = False
        crop_args["stride"] = stride
        crop_args.pop("return_indices", None)
    groups = _same_sizes(rows)
    if names is _CONV and all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(padding):
        # a pointwise convolution reads its input's boxes and nothing else: the batches they were computed in
        batches = [state.deferred(source, group) for group in groups]
        if groups and all(batch is not None for batch in batches):
            state.took(source)
            for group, batch in zip(groups, batches):
                values = func(batch, **crop_args)
                state.work[0] += values.numel() * op["weight"][0].numel()
                state.defer(base, group, values)
            return base, rows
    state.settle(source)
    strided = names is _CONV and any(step > 1 for step in stride)
    image = source.dim() == 4
    layout = torch.channels_last if image else torch.contiguous_format
    prepared = []  # per group of same-sized boxes: (the group, its batch of crops, the convolution's padding of it)
    reads = []  # (batch, position, where the crop lies in source, where in the batch): copied together, in row order
    for group in groups:
        crops = []  # per row: where its crop lies in source and in the batch (past the padding)
        for row, box in group:
            index, place = [row, slice(None)], [slice(None)]
            extent = []
            for (low, high), k, s, p, d, size in zip(box, kernel, stride, padding, dilation, sizes):
                first, last = low * s - p, (high - 1) * s - p + (k - 1) * d + 1
                index.append(slice(max(first, 0), min(last, size)))
                place.append(slice(max(-first, 0), max(-first, 0) + min(last, size) - max(first, 0)))
                extent.append(last - first)
            crops.append((tuple(index), tuple(place)))
        if names is _CONV:
            crops, extent, crop_args["padding"] = _own_padding(crops, extent, padding)
        padded = any((part.start, part.stop) != (0, n) for _, place in crops for part, n in zip(place[1:], extent))
        # 2-D crops in channels-last order, a convolution's weights too (copied once per weight), like the kept
        # outputs (Incremental._layout): on one thread VGG-16's convolution crops in IROF ran at 31-57 billion
        # multiply-adds a second channels-first, 46-70 so; strided ones and pooling too (torch's own kernels take
        # them so), which spares a transposing copy at each gather and write: ResNet-50's strided blocks made
        # region perturbation 8% and selectivity 3% faster (4 images at 224 px), VGG-16's max pooling on crops took
        # 20 ms in place of 48 (8 regions of 16 px)
        if len(crops) == 1 and not padded and not state.versioned:
            batch = source[crops[0][0]].unsqueeze(0)
            if image:
                batch = batch.contiguous(memory_format=layout)
        else:  # the crops written once into one batch, its padding filled as the op pads
            shape = (len(crops), source.shape[1], *extent)
            batch = torch.empty(shape, dtype=source.dtype, device=source.device, memory_format=layout)
            if padded:
                batch.fill_(fill)
            reads.extend((batch, position, index, place) for position, (index, place) in enumerate(crops))
        prepared.append((group, batch, crop_args.get("padding")))
    state.gather(source, reads)
    computed = None
    if names is _CONV and not strided and state.transforms is not None:
        # the groups' crops together, in one set of Winograd's matrix products where it applies: each group alone
        # would read the weights once more (engine.winograd.convolve_crops)
        computed = winograd_crops(state.transforms, [(batch, padding) for _, batch, padding in prepared],
                                  op["weight"], op["bias"], op["dilation"], op["groups"])
    for position, (group, batch, padding) in enumerate(prepared):
        if computed is not None:
            values = computed[position]
        else:
            if names is _CONV:
                crop_args["padding"] = padding
                if image:
                    crop_args["weight"] = _channels_last(op["weight"], state.weight_copies)
            # on the pass's crop threads, however large the crop (see on_threads); a strided convolution's crop
            # without oneDNN, whose per-call setup (a primitive per new crop shape, the weights reordered per call)
            # cost ResNet-50's strided layers 1.3-1.6x torch's own unfolding and matrix product on crops of a few rows,
            # and without NNPACK, which torch would pick for 16 rows or more instead (see _without_onednn_or_nnpack)
            with _without_onednn_or_nnpack(strided):
                values = func(batch, **crop_args)
        if names is _CONV:
            state.work[0] += values.numel() * op["weight"][0].numel()
        state.defer(base, group, values)
    return base, rows


def _own_padding(crops, extent, padding):
    """(crops, extent, padding) with the convolution's own padding on each dim where every crop of the group needs
    exactly it on both sides (a crop over the whole map), which then is not written out: one thread, 3x3 over 512
    channels, a 7x7 map with padding 1 took 3.7-9.5 ms for 1-4 rows against 4.1-10.9 ms for the 9x9 crop padded by
    hand; 14x14 maps took 8-11% more padded by hand."""
    own = tuple(pad if pad and all(place[dim + 1].start == pad and extent[dim] - place[dim + 1].stop == pad
                                   for _, place in crops) else 0
                for dim, pad in enumerate(padding))
    if not any(own):
        return crops, extent, 0
    shifted = [(index, (place[0],) + tuple(slice(part.start - pad, part.stop - pad)
                                           for part, pad in zip(place[1:], own))) for index, place in crops]
    return shifted, [size - 2 * pad for size, pad in zip(extent, own)], own


def _channels_last(weight, copies: dict):
    """weight's channels-last copy from copies (id -> (a weak reference to it, its version, the copy)), made again
    after it changed in place. The copies belong to one Incremental (one Runner, so one metric call or a Runner a user
    shares), like its kept activations: a weight written through ``.data`` (no version change) between calls is
    copied afresh by the next call's Incremental, and nothing outlives the evaluation (up to 56 MiB for VGG-16, 67
    MiB for ResNet-50: its stride-1 convolutions).
    An inference tensor has no version to tell an in-place change by: it is copied each call."""
    if weight.is_inference():
        return weight.contiguous(memory_format=torch.channels_last)
    key = id(weight)
    entry = copies.get(key)
    if entry is None or entry[0]() is not weight or entry[1] != weight._version:
        copy = weight.contiguous(memory_format=torch.channels_last)
        entry = copies[key] = (weakref.ref(weight), weight._version, copy)
    return entry[2]


class _without_onednn_or_nnpack:
    """torch's oneDNN (mkldnn) and NNPACK convolutions off for a block where ``off``, then back: torch's own unfolding
    and matrix product run. With oneDNN off, torch hands a batch of 16 rows or more to NNPACK, which a pass of several
    steps (engine.together) makes: ResNet-50's 7 strided convolutions took 357 ms of its region perturbation's 1.5 s
    of steps so (8 steps of 4 images, 32 rows a crop batch; one thread). Without it, whole calls alternating, 3
    rounds: region perturbation 1.09x faster (1.15x given a tensor), selectivity 1.05x (1.10x), LeRF 1.02x."""

    def __init__(self, off: bool):
        self.onednn = off and torch._C._get_mkldnn_enabled()
        self.nnpack = off and torch._C._get_nnpack_enabled()

    def __enter__(self):
        if self.onednn:
            torch._C._set_mkldnn_enabled(False)
        if self.nnpack:
            torch._C._set_nnpack_enabled(False)

    def __exit__(self, *exc):
        if self.onednn:
            torch._C._set_mkldnn_enabled(True)
        if self.nnpack:
            torch._C._set_nnpack_enabled(True)


class on_threads:
    """torch's thread count set to count for a block, then back (no call where it already is). Incremental passes
    give their whole ops the threads of a full pass (``Incremental.threads``) and run their crops, pads,
    concatenations and writes on the cores other processes leave free (``Incremental.crop_threads``): those are many
    small ops of new shapes each pass, and every small op that torch runs on two threads waits for the second where
    another process holds a core: on a busy 2-core machine (load 3-4) 8 steps on VGG-16 took 9.6x as long on two
    threads as on one with every op on both, 1.25x with the crops on one (a plain forward: 1.45x).

    Args:
        count: The threads torch runs the block on.
    """

    def __init__(self, count: int):
        self.count = count

    def __enter__(self):
        self.before = torch.get_num_threads()
        if self.count != self.before:
            torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        if self.count != self.before:
            torch.set_num_threads(self.before)


def _multiply_adds(short, args, kwargs) -> int:
    """Multiply-adds per output value of a convolution or linear layer (0 for other ops: they cost little)."""
    if not (short.startswith("conv") or short == "linear"):
        return 0
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return 0
    return weight[0].numel() if short.startswith("conv") else weight.shape[-1]


def _same_sizes(rows):
    """The rows with a box, grouped by the box's size: each group's crops run as one batch."""
    groups: dict = {}
    for row, box in enumerate(rows):
        if box is not None:
            groups.setdefault(tuple(high - low for low, high in box), []).append((row, box))
    return list(groups.values())


def _write_rows(state, base, group, values):
    """Each (row, box) of group: base's box in that row from the next of values."""
    for value, (row, box) in zip(values, group):
        state.write(base, (row, slice(None)) + _slices(box), value)


def _elementwise(state, name, func, args, kwargs, base, crop_first_only=False):
    """An op applied position by position: the union of its inputs' boxes, from crops of the arguments shaped like
    the output (for batch norm only the input: its other arguments are per channel)."""
    if not isinstance(base, torch.Tensor) or base.dim() < 3:
        return None
    shape = base.shape
    tracked = [t for t in _tensors(args, kwargs) if state.region(t) is not None]
    if any(t.shape != shape for t in tracked):
        return None
    for value in _tensors(args, kwargs):
        if state.region(value) is None and not crop_first_only and value.shape != shape and value.dim() > 0:
            if any(size != 1 for size in value.shape[-(len(shape) - 2):]):
                return None  # varies along positions without being the output's shape: not worth following

    def crop(value, row, box):
        if isinstance(value, torch.Tensor) and value.shape == shape and (
                not crop_first_only or state.region(value) is not None):
            if (id(value), row) in gathered:
                return gathered[id(value), row]
            real = state.real(row)
            return value[(slice(real, real + 1), slice(None)) + _slices(box)]
        if isinstance(value, torch.Tensor) and value.dim() == len(shape) and value.shape[0] == shape[0] > 1:
            real = state.real(row)
            return value[real:real + 1]
        return None  # the same for every row

    def batched(value, group):
        if id(value) in direct:
            return state.deferred(value, group)
        crops = [crop(value, row, box) for row, box in group]
        return value if crops[0] is None else torch.cat(crops)

    rows = _row_union([state.region(t) for t in tracked])
    groups = _same_sizes(rows)
    direct = set()  # the inputs whose boxes are this op's, in batches as computed
    for value in tracked:
        if all(state.deferred(value, group) is not None for group in groups):
            direct.add(id(value))
        else:
            state.settle(value)
    gathered = {}  # (id, row) -> a tracked input's crop, read per step (engine.together), in row order
    if state.versioned:
        for row, box in sorted(item for group in groups for item in group):
            for value in tracked:
                if id(value) not in direct:
                    index = (slice(row, row + 1), slice(None)) + _slices(box)
                    gathered[id(value), row] = state.read(value, index).clone()
    for value in tracked:
        # it takes an input's boxes as computed, in any pass: alone, or where the other inputs changed inside them
        # (a residual sum's convolution branch grows the boxes of the identity)
        if id(value) in direct and (len(tracked) == 1 or any(
                state.region(other) != state.region(value) for other in tracked)):
            state.took(value)
    written = state.model_call[1][0] if state.model_call is not None and state.model_call[1] else None
    if written is not None and id(written) in direct and state.index in state.kept_to.get(state.index_of(written), ()):
        # the model writes into an input whose boxes it takes (out += identity): its batches take the result in
        # place, each other input added row by row, with no batch of crops; the input is read no more (the engine
        # ran the model's write out of place, so the input is stale to it) and its kept output is not written
        call, model_args, model_kwargs = state.model_call
        state.mutates(written)
        for group in groups:
            values = state.deferred(written, group)

            def part(value, position, row, box):
                if id(value) in direct:
                    return state.deferred(value, group)[position:position + 1]
                if (id(value), row) in gathered:
                    return gathered[id(value), row]
                return _row_crop(value, state.real(row), box, shape)

            for position, (row, box) in enumerate(group):
                call(values[position:position + 1], *[part(value, position, row, box) for value in model_args[1:]],
                     **{key: part(value, position, row, box) for key, value in model_kwargs.items()})
            state.defer(base, group, values)
        state.drop(written)
        return base, rows
    for group in groups:
        out = func(*[batched(value, group) for value in args],
                   **{key: batched(value, group) for key, value in kwargs.items()})
        state.defer(base, group, out)
    return base, rows


def _readers(reads) -> dict:
    """op -> the ops that read its output, from reads (per op, the ops whose outputs it read; -1: the input)."""
    readers: dict = {}
    for reader, producers in enumerate(reads):
        for producer in producers:
            readers.setdefault(producer, set()).add(reader)
    return readers


def _row_crop(value, row, box, shape):
    """What an element-wise op with output ``shape`` reads of value for one row's box: its row where it has one per
    row, its positions where it has the output's (others are broadcast, as are scalars)."""
    if not isinstance(value, torch.Tensor) or value.dim() != len(shape):
        return value
    rows = slice(row, row + 1) if value.shape[0] == shape[0] > 1 else slice(None)
    return value[(rows, slice(None)) + tuple(slice(low, high) if size == full else slice(None)
                                              for (low, high), size, full in zip(box, value.shape[2:], shape[2:]))]


def _batch_norm(state, name, func, args, kwargs, base):
    op = bind(("input", "running_mean", "running_var", "weight", "bias", "training"), args, kwargs,
              {"training": False})
    if op["training"]:
        return None
    return _elementwise(state, name, func, args, kwargs, base, crop_first_only=True)


def _dropout(state, name, func, args, kwargs, base):
    op = bind(("input", "p", "training"), args, kwargs, {"p": 0.5, "training": True})
    if op["training"]:
        return None
    state.took(op["input"])
    return op["input"], state.region(op["input"])


def _adaptive(state, name, func, args, kwargs, base):
    """Adaptive pooling: computed in full (it is cheap), outputs whose windows meet the box marked as changed."""
    if state.versioned:
        return None  # a whole op: the cut of a pass of several steps
    source = args[0] if args else kwargs["input"]
    out = func(*args, **kwargs)
    if not isinstance(out, torch.Tensor):
        return None
    sizes, outputs = source.shape[2:], out.shape[2:]

    def reach(dim, start, stop):  # output i pools [floor(i * size / outputs), ceil((i + 1) * size / outputs))
        size, count = sizes[dim], outputs[dim]
        touched = [i for i in range(count) if (i * size) // count < stop and -(-((i + 1) * size) // count) > start]
        return touched[0], touched[-1] + 1

    return out, _mapped(state.region(source), reach)


def _mapped(boxes, reach):
    """Each row's box through an op: reach(dim, start, stop) gives the (low, high) of the outputs that read it."""
    rows = []
    for box in boxes:
        mapped = None if box is None else tuple(reach(dim, start, stop) for dim, (start, stop) in enumerate(box))
        rows.append(mapped if mapped is not None and all(low < high for low, high in mapped) else None)
    return rows


def _cat(state, name, func, args, kwargs, base):
    """Concatenation along channels: computed in full (a copy), boxes united."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    first = tensors[0]
    if first.dim() < 3 or dim % first.dim() != 1 or state.versioned:
        return None
    tracked = [state.region(t) for t in tensors if state.region(t) is not None]
    if any(t.shape[2:] != first.shape[2:] for t in tensors):
        return None
    return func(*args, **kwargs), _row_union(tracked)


_ELEMENTWISE = [
    "relu", "relu6", "leaky_relu", "hardtanh", "gelu", "silu", "elu", "selu", "celu", "softplus", "hardswish",
    "hardsigmoid", "mish", "tanh", "sigmoid", "logsigmoid", "softsign", "abs", "neg", "clamp", "clip", "threshold",
    "add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
    "__rtruediv__", "__neg__", "exp", "log", "sqrt", "rsqrt", "square", "pow", "__pow__", "erf", "maximum",
    "minimum", "clamp_min", "clamp_max",
]
_LOCAL = {name: _elementwise for name in _ELEMENTWISE}
_LOCAL.update({name + "_": _elementwise for name in _ELEMENTWISE if not name.startswith("__")})
_LOCAL.update({f"__i{name[2:]}": _elementwise for name in ("__add__", "__sub__", "__mul__", "__truediv__")})
_LOCAL.update({f"conv{d}d": _window for d in (1, 2, 3)})
_LOCAL.update({f"{kind}_pool{d}d": _window for kind in ("max", "avg") for d in (1, 2, 3)})
_LOCAL.update({f"adaptive_{kind}_pool{d}d": _adaptive for kind in ("max", "avg") for d in (1, 2, 3)})
_LOCAL.update({"batch_norm": _batch_norm, "dropout": _dropout, "dropout1d": _dropout, "dropout2d": _dropout,
               "dropout3d": _dropout, "cat": _cat, "concat": _cat, "concatenate": _cat})
_USES_BASE = {_window, _elementwise, _batch_norm}
_TAKES_DEFERRED = {_window, _elementwise, _batch_norm, _dropout}  # the handlers that write what they read first
