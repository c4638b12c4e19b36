"""One explanation's run: the model forward under interception, the module stack, and dispatch to op families.

``Session.run`` forwards the input with an ``intercept.Interceptor`` active and forward pre/post hooks on the model's
own modules (removed afterwards, also on errors). Each torch function that touches relevance goes to its family's
handler from ``ops.table.HANDLERS``, which gets an ``OpContext``: the few things a handler may use (the rule for a
site, the report, the facts about tensors), not the session.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from ..composites import Composite, Site
from ..ops import custom, elementwise, load_families
from ..ops.signatures import writes_first_argument
from ..ops.table import HANDLERS, SIGN_KNOWN, module_handler
from ..ops.weights import WeightCache
from .batch import BatchAxes
from .facts import KEEPS_SIGN, MAKES_NONNEGATIVE, Facts
from .intercept import DataFlow, Interceptor, UnsupportedOperation, UnsupportedOpWarning, caller_level
from .report import Recorded, Recorder

load_families()
LINEAR_KINDS = ("linear", "conv", "conv_transpose")  # the sites counted by position (index_map, first)


class OpContext:
    """What an op family's handler sees of the run: which tensors carry relevance, the composite's choices, the
    report (row, tap, watch), the facts about tensors, and the generic fallbacks (plain gradient, unsupported)."""

    def __init__(self, session: Session):
        self._session = session
        self.composite, self.differentiable = session.composite, session.differentiable
        self.facts, self.weights = session.facts, session.weights
        self.active, self.touched, self.mark = session.flow.active, session.flow.touched, session.flow.mark
        recorder = session.recorder
        self.row, self.tap, self.tap_args, self.watch = recorder.row, recorder.tap, recorder.tap_args, recorder.watch
        self.reporting = recorder.rows is not None
        self.where, self.unsupported = session.where, session.unsupported

    def plain(self, func, name, args, kwargs, rule="Gradient"):
        """The op with its own gradient (exact LRP for linear maps), reported under rule."""
        row = self.row(name, rule)
        # In report mode in-place ops act on the tapped copy, which they return (as every in-place op does).
        out = func(*self.tap_args(args, row), **kwargs)
        self.watch(out, row)
        return out

    def unknown(self, func, name, args, kwargs):
        """An op without a rule: its plain gradient, with a warning (an error in strict mode)."""
        out = self.plain(func, name, args, kwargs, rule="Gradient (unsupported)")
        if any(isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
               for t in (out if isinstance(out, (tuple, list)) else (out,))):
            self.unsupported(name, "no relevance rule is known for this op")
        return out

    def intercept(self):
        """Interception on again inside a handler: a decomposition's ops are ruled one by one."""
        return Interceptor(self._session)

    def site(self, kind: str, name: str) -> Site:
        """Where a linear-like op runs, with its position among the run's linear-like layers (composites'
        index_map; -1 for pooling and cluster sites), kept on the session to tell composite keys that matched
        nothing."""
        session = self._session
        module, module_name = self.where()
        index = session.linear_index if kind in LINEAR_KINDS else -1
        session.linear_index += index >= 0
        site = Site(kind, name, module, module_name, index)
        session.sites.append(site)
        return site

    def is_model_input(self, tensor) -> bool:
        leaf = self._session.input_leaf
        return tensor is leaf or (tensor._is_view() and tensor._base is leaf)

    def direct_view(self, tensor):
        """tensor as a view of the direct leaf: relevance handed there is taken as it is, not times the input."""
        return self._session.direct_leaf.as_strided(tensor.size(), tensor.stride(), tensor.storage_offset())


class Session:
    """State of one explanation: which tensors carry relevance, where ops run, what to record and report."""

    def __init__(self, model: torch.nn.Module, composite: Composite, canonizers=(), strict: bool = False,
                 record=(), report: bool = False, warned: set | None = None, differentiable: bool = False,
                 elementwise=(), forward=None, weights: WeightCache | None = None):
        self.model, self.composite, self.strict = model, composite, strict
        self.handlers = {family: entry.lrp for family, entry in HANDLERS.items()}
        for canonizer in canonizers:
            self.handlers.update(canonizer.handlers())
        self.flow = DataFlow("_relprop")
        self.facts = Facts(self.flow.token)
        self.active = self.flow.active
        self.names = {id(module): name for name, module in model.named_modules()}
        self.stack: list[torch.nn.Module] = []
        self.linear_index = 0
        self.sites: list[Site] = []  # every linear-like op's site, in order (to tell unmatched composite keys)
        self.input_leaf: torch.Tensor | None = None
        self.direct_leaf: torch.Tensor | None = None
        self.batch: BatchAxes | None = None  # where the samples lie, and whether an op mixes them
        self.warned = warned if warned is not None else set()
        self.weights = weights if weights is not None else WeightCache()  # the caller's: kept between its calls
        self.weights.begin()
        self.recorder = Recorder(report, self.facts, self.active, self.where)
        self.record = set(record)
        self.recorded: dict[str, list] = {}
        self.record_as = Recorded  # what keeps a recorded output (concepts.conditional keeps the tensor itself)
        self.differentiable = differentiable  # create_graph: relevance must be differentiable w.r.t. parameters
        self.elementwise = tuple(elementwise)  # extra module types explained as one element-wise op
        self.forward = forward  # callable(model, x) -> output, when the model is not called as model(x)
        self.suspended: elementwise.Suspended | None = None  # an element-wise module running unintercepted
        self.busy = False  # the session's own tensor work in a module hook: not the model's ops, not intercepted
        self.customs = custom.Adopter(self._busy)
        self.context = OpContext(self)

    @property
    def rows(self):
        return self.recorder.rows

    # ---- running a model -------------------------------------------------------------------------------------
    def run(self, x: torch.Tensor):
        """Forward x through the model with interception on; returns its output (the leaves stay on the session)."""
        self.input_leaf = x.detach().requires_grad_(True)
        self.direct_leaf = self.input_leaf.detach().requires_grad_(True)
        self.flow.mark(self.input_leaf)
        self.flow.mark(self.direct_leaf)
        self.batch = BatchAxes(self.flow.token, len(x) if x.dim() else 1)
        self.batch.start(self.input_leaf, self.direct_leaf)
        handles = []
        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(self._enter))
                handles.append(module.register_forward_hook(self._leave))
            with torch.enable_grad(), Interceptor(self):
                if self.forward is None:
                    output = self.model(self.input_leaf)
                else:
                    output = self.forward(self.model, self.input_leaf)
            output = self._adopt_all(output)
        finally:
            for handle in handles:
                handle.remove()
            self.stack.clear()
            if self.suspended is not None:
                self.suspended.release()
                self.suspended = None
            self.customs.clear()
        return output

    def _enter(self, module, args):
        adopted = self._adopt_all(args) if self.suspended is None else args
        self.stack.append(module)
        if self.suspended is None and args and self.active(args[0]):
            if elementwise.is_elementwise_module(module, self.elementwise):
                # its inner ops need no graph: the whole module gets one op in it
                self.suspended = elementwise.Suspended(module, args[0], self.differentiable)
            elif module_handler(module) is not None:
                with self._busy():
                    rule = module_handler(module)(self.context, module, args[0])
                if rule is not None:  # ruled as a whole: its inner ops run unintercepted
                    self.suspended = elementwise.Suspended(module, args[0], self.differentiable, rule)
        return adopted if adopted is not args else None

    def _leave(self, module, args, output):
        self.busy = True  # hooks run with the interceptor on (unlike handle(), which torch runs with it off)
        try:
            if self.suspended is None:
                output = self._adopt_all(output)
            if self.stack and self.stack[-1] is module:
                self.stack.pop()
            if self.suspended is not None and self.suspended.module is module:
                suspended, self.suspended = self.suspended, None
                output = suspended.finish(self.context, output)
            self._record(module, output)
            return output
        finally:
            self.busy = False

    def _record(self, module, output):
        name = self.names.get(id(module))
        if name in self.record:
            tensor = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output if isinstance(output, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
            if tensor is not None and tensor.requires_grad:
                recorded = self.record_as()
                recorded.watch(tensor)
                self.recorded.setdefault(name, []).append(recorded)
                producer = self.facts.producer(tensor)
                if producer is not None:  # a batch norm merged into this op later records the merged output
                    producer.recorded.append(recorded)

    def where(self) -> tuple[torch.nn.Module | None, str]:
        """The innermost running module and its name."""
        if not self.stack:
            return None, ""
        module = self.stack[-1]
        return module, self.names.get(id(module), type(module).__name__)

    def _adopt_all(self, value):
        """value with every custom autograd Function output on the data flow replaced by the tensor standing for it
        (see ops/custom.py)."""
        return self.customs.adopt_all(self.context, value, self.direct_leaf)

    @contextlib.contextmanager
    def _busy(self):
        busy, self.busy = self.busy, True  # pre-hooks run with the interceptor on: this work is not the model's
        try:
            yield
        finally:
            self.busy = busy

    # ---- dispatch --------------------------------------------------------------------------------------------
    def handle(self, func, name, family, args, kwargs):
        # inside an element-wise module its output is ruled as a whole; a busy session is doing its own work
        if self.suspended is not None or self.busy:
            return func(*args, **kwargs)
        if self.customs.without_grad:  # a custom Function ran on the data flow (its forward's ops were seen)
            args, kwargs = self._adopt_all(args), self._adopt_all(kwargs)
        active = self.flow.touched(args, kwargs)
        if not active:
            return func(*args, **kwargs)
        if not torch.is_grad_enabled():  # inside a custom Function's forward, say: its inputs may be asked for
            self.customs.seen_without_grad(active)
        handler = self.handlers.get(family, _unknown)
        short = name.rsplit(".", 1)[-1]
        for tensor in active:
            consumed = self.facts.call(tensor)
            if consumed is not None and not consumed.rectified:
                # A rule op whose outputs only ever feed ReLUs receives no relevance on outputs <= 0.
                consumed.consumers += 1
                consumed.relu_consumers += short in ("relu", "relu_")
        call = self.facts.call(args[0]) if args and isinstance(args[0], torch.Tensor) else None
        if call is None or not writes_first_argument(func, name, args, kwargs):
            out = handler(self.context, func, name, args, kwargs)
        else:
            # The model is about to change a rule op's output in place; the rule's backward needs its values.
            target = args[0]
            relu = short in ("relu", "relu_") and target._version in call.harmless_versions
            if not relu and call.preserved is None:
                call.preserved = target.detach().clone()
            out = handler(self.context, func, name, args, kwargs)
            if relu:  # zeroes exactly where a ReLU's gradient will be zero: the rule never reads those values
                call.harmless_versions.add(target._version)
                call.rectified = True  # later readers see the ReLU's output, and their relevance passes through it
        self.flow.mark(out)
        if self.batch.checking:
            self.batch.follow(name, args, kwargs, active, out, self.where)
        if isinstance(out, torch.Tensor):
            self.facts.set_nonnegative(out, family in SIGN_KNOWN and (short in MAKES_NONNEGATIVE or (
                short in KEEPS_SIGN and all(self.facts.is_nonnegative(t) for t in active))))
        return out

    def unsupported(self, name: str, why: str):
        module, module_name = self.where()
        where = f"in module '{module_name}' ({type(module).__name__})" if module is not None else "outside any module"
        if self.strict:
            raise UnsupportedOperation(f"relprop: {name} {where}: {why}. Rewrite it with supported ops, or use "
                                       "strict=False to fall back to its plain gradient with a warning.")
        if name not in self.warned:
            self.warned.add(name)
            warnings.warn(f"relprop: {name} {where}: {why}; its plain gradient is used, which may not conserve "
                          "relevance. Rewrite it with supported ops, or pass strict=True to make this an error.",
                          UnsupportedOpWarning, stacklevel=caller_level())


def _unknown(ctx, func, name, args, kwargs):
    return ctx.unknown(func, name, args, kwargs)
