"""Whether the samples of a batch exchange information in the forward pass.

relprop reads row i of a batch as sample i: its relevance explains explained[i], and delta[i] checks conservation for
it. That holds only when no sample's output depends on another sample. A graph network run on its nodes as the batch
(``forward=lambda m, z: m(z, edge_index)``), batch norm in training mode, attention or a mean over the batch break
it: row i of the relevance is then sample i's share of every explained output, and only the batch's total is
conserved.

The batch axis of every tensor on the data flow is followed op by op: the input's is 0, each op's output gets the
position its input's axis goes to, with the samples its rows along that axis come from (``origin``: None when row k
is sample k; a gather along the axis sets it, as message passing does when it collects each edge's source node). An
op mixes the batch when it reduces, normalises or contracts over that axis, adds rows of one origin into rows of
another (scatter, index_add), or pairs rows of different samples (q @ k.T over the batch, broadcasting (N, 1, F)
against (N, F)). An op whose effect on the axis is not known here loses the axis, and nothing after it is checked:
the check may miss mixing, never report it where it is not.
"""
from __future__ import annotations

import torch

from .facts import Facts


class BatchMixingWarning(UserWarning):
    """The samples of the batch exchange information in the forward: per-sample relevance and delta mean less."""


# Ops over a dim given at this position (or as dim=), and their default dim when not given (None: all dims).
_OVER_DIM = {
    "sum": 1, "mean": 1, "nansum": 1, "nanmean": 1, "prod": 1, "amax": 1, "amin": 1, "max": 1, "min": 1, "std": 1,
    "var": 1, "std_mean": 1, "var_mean": 1, "logsumexp": 1, "median": 1, "nanmedian": 1, "mode": 1, "all": 1,
    "any": 1, "count_nonzero": 1, "softmax": 1, "log_softmax": 1, "cumsum": 1, "cumprod": 1, "cummax": 1,
    "cummin": 1, "logcumsumexp": 1, "sort": 1, "argsort": 1, "topk": 2, "kthvalue": 2, "norm": 2, "normalize": 2,
    "quantile": 2, "nanquantile": 2,
}
_DEFAULT_DIM = {"sort": -1, "argsort": -1, "topk": -1, "kthvalue": -1, "mode": -1, "normalize": 1}
_KEEPING = {"softmax", "log_softmax", "cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "sort", "argsort",
            "normalize"}  # over a dim without removing it
_RESHAPING = {"view", "reshape", "view_as", "reshape_as", "flatten", "unflatten"}
_MATMUL = {"matmul", "__matmul__", "mm", "bmm", "_sparse_mm", "spmm", "mv"}
_SCATTERING = {"index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_",
               "index_reduce", "index_reduce_"}
_NORMALISING_LAST = {"layer_norm", "rms_norm"}  # over the last len(normalized_shape) dims


class BatchAxes:
    """Follows the batch axis of the flow's tensors through one run and keeps the first op that mixes the batch."""

    def __init__(self, token, size: int):
        self.token, self.size = token, size
        self.mixing: str | None = None  # what mixed the batch first: op and module
        self.checking = size > 1  # a batch of one sample cannot mix

    def start(self, *leaves):
        for leaf in leaves:
            self._set(leaf, 0, None)

    # ---- the fact on each tensor --------------------------------------------------------------------------------
    def _get(self, tensor):
        fact = Facts.batch(tensor)
        return fact[1:] if fact is not None and fact[0] is self.token else None

    def _set(self, tensor, axis, origin):
        if isinstance(tensor, torch.Tensor) and axis is not None and 0 <= axis < tensor.dim():
            if origin is not None and len(origin) == self.size and torch.equal(
                    origin, torch.arange(self.size, device=origin.device)):
                origin = None  # rows back in their own order
            Facts.set_batch(tensor, (self.token, axis, origin))

    # ---- one op ------------------------------------------------------------------------------------------------
    def follow(self, name: str, args, kwargs, active, out, where):
        """Set the batch axis of out from the op's inputs; note where (``where()``: the running module) the batch is
        mixed first, after which nothing more is checked."""
        facts = [(t, self._get(t)) for t in active]
        tracked = [(t, *fact) for t, fact in facts if fact is not None]
        if not tracked:
            return
        short = name.rsplit(".", 1)[-1] if not name.endswith(".__get__") else ".".join(name.rsplit(".", 2)[-2:])
        rule = _RULES.get(short, _elementwise)
        if short in _OVER_DIM and not _is_tensor(args[1] if len(args) > 1 else None):
            rule = _over_dim
        try:
            why = rule(self, short, args, kwargs, tracked, out)
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, RuntimeError):
            return  # arguments this reading does not know (named dims, say): the axis is lost, nothing is said
        if why:
            module, module_name = where()
            place = ("outside modules" if module is None else f"in the model ({type(module).__name__})"
                     if not module_name else f"in module '{module_name}' ({type(module).__name__})")
            self.mixing = f"{short} {place}: {why}"
            self.checking = False

    def pairs(self, origins) -> str | None:
        """Why rows from these origins, combined element by element, mix samples (None if they do not)."""
        first = origins[0]
        for other in origins[1:]:
            if (first is None) != (other is None) or (first is not None and not torch.equal(first, other)):
                return "it combines rows of different samples"
        return None

    def contracted(self, origin, how: str) -> str | None:
        """Why an op that works over the batch axis (how: "sums over", ...) of rows from origin mixes samples."""
        if origin is None or int(origin.unique().numel()) > 1:
            return f"it {how} the batch axis"
        return None


def _is_tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [item for item in out if isinstance(item, torch.Tensor)]
    return []


def _argument(args, kwargs, position, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _elementwise(axes, short, args, kwargs, tracked, out):
    """Element-wise, linear-like and shape-keeping ops: each input's axis goes where broadcasting puts it (from the
    right), or, for reshapes, stays first while the leading size is kept."""
    for result in _tensors(out):
        positions, origins = set(), []
        for tensor, axis, origin in tracked:
            if short in _RESHAPING:
                position = 0 if axis == 0 and result.dim() and result.shape[0] == tensor.shape[0] else None
            elif result.dim() < tensor.dim():
                position = None  # dims removed by an op not read here: which ones cannot be told
            else:
                position = axis + result.dim() - tensor.dim()
            if position is None or not 0 <= position < result.dim() or result.shape[position] != tensor.shape[axis]:
                continue  # this input's axis does not reach the output (or cannot be told): lost
            positions.add(position)
            origins.append(origin)
        why = _land(axes, result, positions, origins, "it combines rows of different samples")
        if why:
            return why
    return None


def _land(axes, result, positions, origins, apart: str) -> str | None:
    """result's batch axis where every tracked input's landed; why it mixes when they landed apart (apart) or come
    from different samples."""
    if len(positions) > 1:
        return apart
    if positions:
        why = axes.pairs(origins)
        if why:
            return why
        axes._set(result, positions.pop(), origins[0])
    return None


def _over_dim(axes, short, args, kwargs, tracked, out):
    tensor, axis, origin = tracked[0]
    if tensor is not args[0]:
        return _elementwise(axes, short, args, kwargs, tracked, out)
    dims = _argument(args, kwargs, _OVER_DIM[short], "dim", _DEFAULT_DIM.get(short))
    if isinstance(dims, bool):
        dims = None  # std(x, unbiased): the old signature, over all dims
    if dims is None and short in ("softmax", "log_softmax"):
        return None  # the legacy implicit dim: lose the axis rather than guess
    if dims is None:
        dims = range(tensor.dim())
    dims = {d % max(tensor.dim(), 1) for d in (dims if isinstance(dims, (list, tuple, range)) else [dims])}
    if axis in dims:
        return axes.contracted(origin, "reduces over" if short not in _KEEPING else "works along")
    for result in _tensors(out):
        position = axis if result.dim() == tensor.dim() else axis - sum(d < axis for d in dims)
        if result.shape[position] == tensor.shape[axis]:
            axes._set(result, position, origin)
    return None


def _permuting(axes, short, args, kwargs, tracked, out):
    """A permutation of dims: where the same permutation of a size-only tensor with distinct sizes puts the axis."""
    tensor, axis, origin = tracked[0]
    if tensor is not args[0] or not isinstance(out, torch.Tensor):
        return None
    probe = torch.empty([2 + d for d in range(tensor.dim())], device="meta")
    moved = _PROBES[short](probe, args[1:], kwargs)
    sizes = list(moved.shape)
    if sizes.count(2 + axis) == 1:
        axes._set(out, sizes.index(2 + axis), origin)
    return None


def _transpose(probe, rest, kwargs):
    return probe.transpose(*rest)


_PROBES = {
    "transpose": _transpose, "transpose_": _transpose, "swapaxes": _transpose, "swapaxes_": _transpose,
    "swapdims": _transpose, "swapdims_": _transpose,
    "t": lambda probe, rest, kwargs: probe.t(), "t_": lambda probe, rest, kwargs: probe.t(),
    "T.__get__": lambda probe, rest, kwargs: probe.permute(*reversed(range(probe.dim()))),
    "H.__get__": lambda probe, rest, kwargs: probe.permute(*reversed(range(probe.dim()))),
    "mT.__get__": lambda probe, rest, kwargs: probe.transpose(-2, -1),
    "mH.__get__": lambda probe, rest, kwargs: probe.transpose(-2, -1),
    "adjoint": lambda probe, rest, kwargs: probe.transpose(-2, -1),
    "permute": lambda probe, rest, kwargs: probe.permute(*(rest[0] if len(rest) == 1 and isinstance(
        rest[0], (list, tuple)) else rest or kwargs["dims"])),
    "movedim": lambda probe, rest, kwargs: torch.movedim(probe, *rest, **kwargs),
    "moveaxis": lambda probe, rest, kwargs: torch.movedim(probe, *rest, **kwargs),
}


def _unsqueeze(axes, short, args, kwargs, tracked, out):
    tensor, axis, origin = tracked[0]
    dim = _argument(args, kwargs, 1, "dim") % out.dim()
    axes._set(out, axis + (dim <= axis), origin)


def _stack(axes, short, args, kwargs, tracked, out):
    """torch.stack: a new dim at dim, before or after each input's axis."""
    dim = _argument(args, kwargs, 1, "dim", 0) % out.dim()
    positions, origins = set(), []
    for tensor, axis, origin in tracked:
        positions.add(axis + (dim <= axis))
        origins.append(origin)
    return _land(axes, out, positions, origins, "it combines rows of different samples")


def _select(axes, short, args, kwargs, tracked, out):
    """select and unbind: one dim removed; on the batch axis that picks one sample (lose the axis)."""
    tensor, axis, origin = tracked[0]
    dim = _argument(args, kwargs, 1, "dim", 0) % tensor.dim()
    if tensor is args[0] and dim != axis:
        for result in _tensors(out):
            axes._set(result, axis - (dim < axis), origin)
    return None


def _squeeze(axes, short, args, kwargs, tracked, out):
    tensor, axis, origin = tracked[0]
    dims = _argument(args, kwargs, 1, "dim")
    dims = range(tensor.dim()) if dims is None else (dims if isinstance(dims, (list, tuple)) else [dims])
    gone = sum(1 for d in dims if d % tensor.dim() < axis and tensor.shape[d] == 1)
    axes._set(out, axis - gone, origin)


def _matmul(axes, short, args, kwargs, tracked, out):
    """A matrix product: the axis of an operand is contracted (mixes), a row or column of the result, or a batch dim
    of the product; two operands whose axes land on different dims pair samples."""
    if short == "__rmatmul__":
        left, right = args[1], args[0]
    elif short in ("addmm", "baddbmm", "addbmm", "addmv"):
        left, right = args[1], args[2]
    else:
        left, right = args[0], args[1]
    landing, origins = set(), []
    known = {id(tensor): (axis, origin) for tensor, axis, origin in tracked}
    for is_left, tensor in ((True, left), (False, right)):  # the same tensor may be both (x @ x)
        if id(tensor) not in known:
            continue  # a constant operand (addmm's added input is element-wise)
        axis, origin = known[id(tensor)]
        n = tensor.dim()
        contracted = (n == 1 or axis == n - 1) if is_left else (n == 1 or axis == n - 2)
        if contracted:
            why = axes.contracted(origin, "sums (a matrix product) over")
            if why:
                return why
            continue
        if is_left:
            position = out.dim() - 2 if axis == n - 2 else out.dim() + axis - n
        else:
            position = out.dim() - 1 if axis == n - 1 else out.dim() + axis - n
        landing.add(position)
        origins.append(origin)
    return _land(axes, out, landing, origins, "it pairs rows of different samples")


def _einsum(axes, short, args, kwargs, tracked, out):
    equation = args[0].replace(" ", "")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    inputs, _, output = equation.partition("->")
    inputs = inputs.split(",")
    if "." in equation or len(inputs) != len(operands):
        return None  # ellipses: lose the axis
    if not _:
        output = "".join(sorted(c for c in set("".join(inputs)) if "".join(inputs).count(c) == 1))
    labels, origins = set(), []
    known = {id(tensor): (axis, origin) for tensor, axis, origin in tracked}
    for index, operand in enumerate(operands):  # the same tensor may be several operands
        if id(operand) not in known or known[id(operand)][0] >= len(inputs[index]):
            continue
        axis, origin = known[id(operand)]
        label = inputs[index][axis]
        if label not in output:
            why = axes.contracted(origin, "sums (einsum) over")
            if why:
                return why
            continue
        labels.add(output.index(label))
        origins.append(origin)
    return _land(axes, out, labels, origins, "it pairs rows of different samples")


def _gather_rows(axes, short, args, kwargs, tracked, out):
    """index_select and x[index]: rows picked along the axis come from the samples the index names."""
    tensor, axis, origin = tracked[0]
    if tensor is not args[0] or not isinstance(out, torch.Tensor):
        return None
    if short == "index_select":
        dim, index = _argument(args, kwargs, 1, "dim") % tensor.dim(), _argument(args, kwargs, 2, "index")
        if dim != axis:
            axes._set(out, axis, origin)
            return None
    else:
        index, position = _getitem_rows(args[1], tensor.dim(), axis)
        if index is None:
            if position is not None:
                axes._set(out, position, origin)
            return None
    if index.dtype == torch.bool:
        index = index.nonzero().flatten()
    index = index.to(torch.long).flatten()
    axes._set(out, axis, index if origin is None else origin[index])
    return None


def _getitem_rows(key, dims, axis):
    """(rows a key picks along the axis, or None; where the axis lands when it is kept whole)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(item is Ellipsis for item in key):
        at = key.index(Ellipsis)
        width = dims - sum(1 for item in key if item is not None and item is not Ellipsis)
        key = key[:at] + (slice(None),) * width + key[at + 1:]
    position, dim = 0, 0
    advanced = [item for item in key if isinstance(item, (torch.Tensor, list))]
    for item in key:
        if item is None:
            position += 1
            continue
        if dim == axis:
            if isinstance(item, slice) and item == slice(None):
                return None, (position if not advanced else None)
            if isinstance(item, (torch.Tensor, list)) and len(advanced) == 1:
                index = torch.as_tensor(item)
                return (index, None) if index.dim() == 1 else (None, None)
            return None, None
        if isinstance(item, slice) or isinstance(item, (torch.Tensor, list)):
            position += 1
        dim += 1
    return None, (position + axis - dim if not advanced else None)


def _scatter(axes, short, args, kwargs, tracked, out):
    """Rows added into rows of the batch: mixing where a row receives from another sample."""
    target, dim = args[0], _argument(args, kwargs, 1, "dim") % max(args[0].dim(), 1)
    index = _argument(args, kwargs, 2, "index")
    source = _argument(args, kwargs, 3, "source" if short.startswith("index") else "src")
    along = [(tensor, axis, origin) for tensor, axis, origin in tracked if axis == dim]
    if not along:  # scattered along another dim: sample by sample
        return _elementwise(axes, short, args, kwargs, tracked, out)
    for tensor, axis, origin in along:
        if tensor is source and isinstance(index, torch.Tensor):
            rows = torch.arange(tensor.shape[axis], device=index.device) if origin is None else origin
            if index.dim() > 1:  # scatter's index is shaped like src: its rows along dim
                rows = rows[:index.shape[dim]].reshape([-1 if d == dim else 1 for d in range(index.dim())])
            if bool((index != rows).any()):
                return "it adds rows of one sample into another's"
        elif tensor is target and origin is not None:
            return None  # rows of a gathered tensor as the target: lose the axis
    if isinstance(out, torch.Tensor) and out.dim() > dim and out.shape[dim] == axes.size:
        axes._set(out, dim, None)  # each row received only from its own sample
    return None


def _gather(axes, short, args, kwargs, tracked, out):
    """gather and take_along_dim: along the batch axis, elements of other rows; lose the axis there."""
    tensor, axis, origin = tracked[0]
    dim = _argument(args, kwargs, 1 if short == "gather" else 2, "dim")
    if tensor is args[0] and dim is not None and dim % tensor.dim() == axis:
        return None
    return _elementwise(axes, short, args, kwargs, tracked, out)


def _linear(axes, short, args, kwargs, tracked, out):
    """F.linear contracts its input's last dim."""
    tensor, axis, origin = tracked[0]
    if tensor is args[0] and axis == tensor.dim() - 1:
        return axes.contracted(origin, "sums (a linear layer) over")
    return _elementwise(axes, short, args, kwargs, [(t, a, o) for t, a, o in tracked if t is args[0]], out)


def _batch_norm(axes, short, args, kwargs, tracked, out):
    tensor, axis, origin = tracked[0]
    if tensor is args[0] and _argument(args, kwargs, 5, "training", False) and axis != 1:
        return "batch norm in training mode normalises with statistics over the batch"
    return _elementwise(axes, short, args, kwargs, tracked, out)


def _layer_norm(axes, short, args, kwargs, tracked, out):
    tensor, axis, origin = tracked[0]
    shape = _argument(args, kwargs, 1, "normalized_shape")
    width = 1 if isinstance(shape, int) else len(shape)
    if tensor is args[0] and axis >= tensor.dim() - width:
        return axes.contracted(origin, "normalises over")
    return _elementwise(axes, short, args, kwargs, tracked, out)


def _multi_head(axes, short, args, kwargs, tracked, out):
    """F.multi_head_attention_forward on (tokens, batch, features): the batch is dim 1 (unbatched: none)."""
    origins = []
    for tensor, axis, origin in tracked:
        if tensor is args[0] or tensor is args[1] or tensor is args[2]:
            if tensor.dim() != 3 or axis != 1:
                return axes.contracted(origin, "attends over")
            origins.append(origin)
    why = axes.pairs(origins) if origins else None
    if why:
        return why
    results = _tensors(out)
    if origins and results and results[0].dim() == 3:
        axes._set(results[0], 1, origins[0])
    return None


def _attention(axes, short, args, kwargs, tracked, out):
    """Fused attention: keys and values along the token dim (-2) are attended over, features (-1) contracted."""
    query = args[0]
    for tensor, axis, origin in tracked:
        if axis >= tensor.dim() - 2 and (tensor is not query or axis == tensor.dim() - 1):
            why = axes.contracted(origin, "attends over")
            if why:
                return why
    return _elementwise(axes, short, args, kwargs, [(t, a, o) for t, a, o in tracked if t is query], out)


def _recurrent(axes, short, args, kwargs, tracked, out):
    """LSTM/GRU/RNN: steps run along the time dim, samples along the batch dim (packed input: lose the axis)."""
    from ..ops import recurrent

    bound = recurrent.bind_call("torch." + short, args, kwargs)
    found = [(axis, origin) for tensor, axis, origin in tracked if tensor is bound["input"]]
    if not found or bound.get("batch_sizes") is not None:
        return None
    tensor, (axis, origin) = bound["input"], found[0]
    if short.endswith("_cell"):
        for result in _tensors(out):
            axes._set(result, axis, origin)
        return None
    batch = 0 if bound["batch_first"] else 1
    if tensor.dim() == 3 and axis != batch:
        return "the recurrent layer runs its steps along the batch axis"
    results = _tensors(out)
    if results and tensor.dim() == 3:
        axes._set(results[0], batch, origin)
        for state in results[1:]:
            axes._set(state, 1, origin)
    return None


_RULES = {short: _permuting for short in _PROBES}
_RULES.update({short: _matmul for short in _MATMUL | {"__rmatmul__", "addmm", "baddbmm", "addbmm", "addmv"}})
_RULES.update({short: _scatter for short in _SCATTERING})
_RULES.update({short: _layer_norm for short in _NORMALISING_LAST})
_RULES.update({"unsqueeze": _unsqueeze, "unsqueeze_": _unsqueeze, "squeeze": _squeeze, "squeeze_": _squeeze,
               "stack": _stack, "select": _select, "unbind": _select,
               "einsum": _einsum, "index_select": _gather_rows, "__getitem__": _gather_rows,
               "batch_norm": _batch_norm, "scaled_dot_product_attention": _attention, "linear": _linear,
               "multi_head_attention_forward": _multi_head, "gather": _gather, "take_along_dim": _gather})
_RULES.update({name + cell: _recurrent for name in ("lstm", "gru", "rnn_tanh", "rnn_relu") for cell in ("", "_cell")})
