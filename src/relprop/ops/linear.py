"""Linear-like ops (linear, convolution, transposed convolution, pooling as a linear map) under any LinearRule.

The backward pass carries g with relevance = tensor * g (the gradient x input convention). For a layer z = f(x, W)
+ b that receives g at its output, the relevance to explain is R = z * g. The rule's denominators are computed
lazily in the backward pass, from the saved input, and only for groups that explain some non-zero relevance
(after a ReLU the negative outputs carry none, so the gamma rule's negative group costs nothing there).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import rules
from ..rules import PROPORTIONAL_INPUTS, LinearRule, keep, ones, positive, square
from ..stabilize import divide_or_zero
from .elementwise import pass_through
from . import pooling, reference
from .kept import KeptOutput
from .signatures import bind
from .table import register
from .weights import WeightCache, modifier_key


@dataclass
class LinearMap:
    """How to run a linear-like op with given weights, and how to apply its transpose to a tensor."""

    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (v, weight, input) -> W^T v
    out_channel_dim: int = 0  # which weight dim indexes output channels (for batch-norm merging)
    channels_last: bool = False  # outputs carry channels in the last dim (dense) rather than dim 1 (convolutions)
    groups: int = 1
    transposed: bool = False
    spatial_dims: int = 0  # convolutions: 1, 2 or 3 (a batched input has spatial_dims + 2 dims)
    # the op for a rule's own terms (modified weights or inputs), equal to forward up to float rounding; the model's
    # own output always comes from forward
    term_forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    # a 1x1 convolution's transpose given W^T as a contiguous (in, out, 1, 1) weight (see _transpose); None elsewhere
    flipped_transpose: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def terms(self, x, weight, bias):
        """x through the op with a rule's modified weight (and bias)."""
        return (self.term_forward or self.forward)(x, weight, bias)


def dense_map() -> LinearMap:
    return LinearMap(forward=F.linear, transpose=lambda v, weight, x: v @ weight, channels_last=True)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _tuple(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def conv_map(dims: int, transposed: bool, stride=1, padding=0, dilation=1, groups=1, output_padding=0) -> LinearMap:
    stride, dilation = _tuple(stride, dims), _tuple(dilation, dims)
    fn = (_CONV_T if transposed else _CONV)[dims]
    if transposed:
        kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups, dilation=dilation)
    else:
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def forward(x, weight, bias):
        return fn(x, weight, bias, **kwargs)

    term_forward = flipped_transpose = None
    if isinstance(padding, str):
        # 'same'/'valid' padding: the transpose goes through autograd on one more forward (rare in practice).
        def transpose(v, weight, x):
            with torch.enable_grad():
                probe = x.detach().requires_grad_(True)
                return torch.autograd.grad(fn(probe, weight, None, **kwargs), probe, v, create_graph=v.requires_grad)[0]
    else:
        padding_, output_padding_ = _tuple(padding, dims), _tuple(output_padding, dims)

        pointwise = (dims == 2 and groups == 1 and not transposed and not any(padding_)
                     and all(step == 1 for step in dilation))

        def transpose(v, weight, x):
            if pointwise and weight.shape[-2:] == (1, 1) and v.dim() == 4:
                return _pointwise_transpose(v, weight, x, stride)
            if unfoldable(weight, v):
                return _folded_transpose(v, weight, x, stride, padding_, dilation)
            return torch.ops.aten.convolution_backward.default(
                v, x, weight, None, stride, padding_, dilation, transposed, output_padding_, groups,
                [True, False, False],
            )[0]

        def unfoldable(weight, v):
            return (dims == 2 and groups == 1 and not transposed and v.dim() == 4
                    and weight.shape[1] <= _FEW_CHANNELS)

        def unfolded_terms(x, weight, bias):
            if unfoldable(weight, x):
                return _unfolded_forward(x, weight, bias, padding_, dilation)
            return forward(x, weight, bias)

        if all(step == 1 for step in stride):  # strided: torch's own kernels were as fast or faster (see below)
            term_forward = unfolded_terms

        if pointwise:
            flipped_transpose = lambda v, flipped, x: _placed(F.conv2d(v, flipped), x, stride)  # noqa: E731

    return LinearMap(forward, transpose, out_channel_dim=1 if transposed else 0, groups=groups, transposed=transposed,
                     spatial_dims=dims, term_forward=term_forward, flipped_transpose=flipped_transpose)


# A 2-D convolution over this few input channels (an image's) runs as one matrix product over its unfolded windows
# for a rule's own terms: torch's convolution kernels are slow there (batch 2, 3 x 160 x 160 on one thread: the
# transpose of a 7x7 or 3x3 convolution to 64 channels 8.5-8.8 ms against 2.5-3.3 ms, a 3x3 stride-1 forward
# 13.4 ms against 4.2 ms; a 7x7 stride-2 forward is faster as torch runs it, and at 8 channels torch wins).
_FEW_CHANNELS = 4


def _folded_transpose(v, weight, x, stride, padding, dilation):
    """W^T v of a 2-D convolution: each output's window contributions as one matrix product, summed back by fold."""
    columns = torch.matmul(weight.reshape(weight.shape[0], -1).t(), v.reshape(v.shape[0], v.shape[1], -1))
    return F.fold(columns, tuple(x.shape[-2:]), tuple(weight.shape[-2:]), dilation=dilation, padding=padding,
                  stride=stride)


def _pointwise_transpose(v, weight, x, stride):
    """W^T v of a 1x1 2-D convolution (ResNet's bottlenecks and shortcuts): one batched matrix product, placed on the
    strided input positions. torch's convolution backward was 1.1-1.7x slower at stride 1 and up to 2.9x at stride 2
    (batch 2, one thread: 256 -> 512 channels at 40x40, stride 2, 5.1 ms against 1.7 ms)."""
    batch, channels, rows, columns = v.shape
    product = torch.matmul(weight.reshape(channels, -1).t(), v.reshape(batch, channels, rows * columns))
    return _placed(product.reshape(batch, -1, rows, columns), x, stride)


def _placed(product, x, stride):
    """A 1x1 convolution's transposed product placed on the input positions its stride read (zero elsewhere)."""
    if stride == (1, 1):
        return product
    out = product.new_zeros(x.shape)
    out[:, :, ::stride[0], ::stride[1]] = product
    return out


def _flip(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution's weight (out, in, 1, 1) as W^T, a contiguous (in, out, 1, 1) weight."""
    return weight.reshape(weight.shape[0], -1).t().contiguous().reshape(weight.shape[1], weight.shape[0], 1, 1)


def _transpose(lmap: LinearMap, v, weight, x, cache: WeightCache | None):
    """lmap.transpose(v, weight, x). A 1x1 convolution whose weight the cache keeps runs it as a convolution by W^T,
    kept beside the weight: one thread, batch 2, 2048 -> 512 channels at 5x5 (ResNet-50's last stage at 160 px) 2.0
    ms against 2.8-3.2 ms for the broadcast matrix product and 3.2 ms for torch's convolution backward; at 1x1 0.14
    ms against 5.8 ms; from 10x10 up all within 5%."""
    if lmap.flipped_transpose is not None and cache is not None and v.dim() == 4 and weight.shape[-2:] == (1, 1):
        flipped = cache.derived(weight, "flipped", _flip)
        if flipped is not None:
            return lmap.flipped_transpose(v, flipped, x)
    return lmap.transpose(v, weight, x)


def _unfolded_forward(x, weight, bias, padding, dilation):
    """A stride-1 2-D convolution as one matrix product over the input's unfolded windows."""
    rows = x.shape[-2] + 2 * padding[0] - dilation[0] * (weight.shape[-2] - 1)
    columns = F.unfold(x, tuple(weight.shape[-2:]), dilation=dilation, padding=padding)
    out = torch.matmul(weight.reshape(weight.shape[0], -1), columns)
    if bias is not None:
        out = out.add_(bias.reshape(-1, 1)) if not out.requires_grad else out + bias.reshape(-1, 1)
    return out.reshape(x.shape[0], weight.shape[0], rows, -1)


def scale_output_channels(weight: torch.Tensor, scale: torch.Tensor, linear_map: LinearMap) -> torch.Tensor:
    """weight with each output channel multiplied by scale (what merging a following batch norm does)."""
    if not linear_map.transposed:
        return weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
    groups = linear_map.groups
    in_channels, out_per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape((groups, in_channels // groups, out_per_group) + tuple(weight.shape[2:]))
    factor = scale.reshape((groups, 1, out_per_group) + (1,) * (weight.dim() - 2))
    return (grouped * factor).reshape(weight.shape)


class LayerWeights:
    """A layer's weight (merged with its batch norm, if any) and its modified versions (w+, w + gamma w+): each built
    when first asked for, and kept between calls in the LRP object's cache where the layer's parameters allow."""

    def __init__(self, build, cache: WeightCache | None = None, sources: tuple | None = None, key: tuple = ()):
        self._build, self._value = build, None
        self.cache, self.sources, self.key = cache, sources, key

    def base(self) -> torch.Tensor:
        """The weight itself."""
        if self._value is None:
            self._value = self._build()
        return self._value

    def kept(self) -> bool:
        """Whether modified weights are kept between calls (so a new one costs nothing after the first call)."""
        return self.cache is not None and self.sources is not None

    def modified(self, modifier) -> torch.Tensor:
        """modifier(weight), from the cache when the modifier's result depends on the weight alone."""
        key = modifier_key(modifier)
        if key is None or self.cache is None or self.sources is None:
            return modifier(self.base())
        return self.cache.get(self.sources, self.key + key, lambda: modifier(self.base()))


def merged_parameters(weight, bias, merge, linear_map):
    """Weight and bias of a linear-like op followed by an affine batch norm (scale, shift per channel)."""
    scale, shift = merge
    merged_bias = shift if bias is None else bias * scale + shift
    return scale_output_channels(weight, scale, linear_map), merged_bias


@dataclass
class LinearCall(KeptOutput):
    """What one linear-like op call needs for its backward; kept on its output so a batch norm can merge into it."""

    linear_map: LinearMap | None = None
    rule: LinearRule | None = None
    site: Any = None
    direct: bool = False  # the input is the model input: hand back relevance itself, not g
    output: torch.Tensor | None = None  # precomputed output (merged batch norm), handed over once
    merge: tuple | None = None  # (scale, shift) of a batch norm merged into this op, applied in the backward only
    nonnegative: bool = False  # the input is known to be >= 0 (it comes from a ReLU): x+ is x, x- is 0
    # what a batch norm reading the output needs to merge into this op (canonizers.MergeBatchNorm)
    x: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    row: Any = None  # its report row
    recorded: list = field(default_factory=list)  # records of its module, moved to a merged layer's output
    cache: WeightCache | None = None  # the LRP object's modified weights
    weight_key: tuple | None = None  # (sources, key): what the (merged) weight is built from, None: not kept

    def forget_inputs(self):
        """Once the backward has run, the input need not outlive the autograd node (which lives to the pass's end)."""
        self.x = self.weight = self.bias = None


def _select_input(kind: str, x: torch.Tensor, call: LinearCall) -> torch.Tensor:
    return call.rule.term_input(kind, x)  # the rule owns its inputs (z^B's bounds, the e-rule's power)


def _is_plain(terms, rule, bias) -> bool:
    if len(terms) != 1:
        return False
    term = terms[0]
    return term.input == "x" and term.weight is keep and term.sign == 1 and (
        bias is None or (term.bias and not rule.zero_bias))


def _denominator(terms, weights, rule, lmap, x, bias, call, shift=None):
    """The sum of the terms' outputs; shift = (value, channels): a constant the first term's bias takes up (the
    stabilizer of a denominator known to be >= 0: no pass of its own)."""
    denominator = None
    for term, term_weight in zip(terms, weights):
        term_bias = None if (bias is None or not term.bias or rule.zero_bias) else term.weight(bias)
        if shift is not None:
            value, channels = shift
            term_bias = (torch.full((channels,), value, dtype=x.dtype, device=x.device) if term_bias is None
                         else term_bias + value)
            shift = None
        part = lmap.terms(_select_input(term.input, x, call), term_weight, term_bias)
        if denominator is None:
            denominator = part if term.sign == 1 else part * term.sign
        elif denominator.requires_grad or part.requires_grad:  # differentiable mode: no in-place ops
            denominator = denominator + term.sign * part
        else:
            denominator.add_(part, alpha=term.sign)  # accumulate in place: one output-sized buffer in all
        del part
    return denominator


def _effective_terms(terms, nonnegative: bool, nonpositive: bool):
    """Terms as they act on this input: on a non-negative input x+ is x and x- vanishes (and vice versa)."""
    effective = []
    for term in terms:
        kind = term.input
        if (kind == "x-" and nonnegative) or (kind == "x+" and nonpositive):
            continue
        if kind in ("x+", "x-") and (nonnegative or nonpositive):
            term = replace(term, input="x")
        effective.append(term)
    return effective


def _transpose_group(s, group, terms, weights, lmap, x, transposed, cache=None):
    """Add coefficient * W_t^T s for the group's terms to the running sums, per kind of input."""
    if group.coefficient != 1:
        s = s * group.coefficient
    by_input: dict[str, torch.Tensor] = {}
    for term, term_weight in zip(terms, weights):
        if term.sign != 1:
            term_weight = term.sign * term_weight
        by_input[term.input] = by_input[term.input] + term_weight if term.input in by_input else term_weight
    for kind, combined in by_input.items():
        part = _transpose(lmap, s, combined, x, cache)
        transposed[kind] = transposed[kind] + part if kind in transposed else part


def _at_least_output(terms, bias, rule, nonnegative: bool) -> bool:
    """On x >= 0 the terms' sum is a x W+ + c x W- + a b+ + c b- (each a W+ + c W- modifier's bias taken): that is
    z + (a - 1)(x W+ + b+) + (c - 1)(x W- + b-), at least z when a >= 1 >= c."""
    if not nonnegative or (bias is not None and rule.zero_bias):
        return False
    a = c = 0.0
    for term in terms:
        parts = getattr(term.weight, "parts", None)
        if term.input != "x" or parts is None or (bias is not None and not term.bias):
            return False
        a, c = a + term.sign * parts[0], c + term.sign * parts[1]
    return a >= 1 >= c


def _never_negative(terms, bias, rule, nonnegative: bool) -> bool:
    """The denominator is a sum of non-negative parts: non-negative inputs times non-negative weights."""
    for term in terms:
        if term.sign != 1 or term.weight not in (positive, ones, square):
            return False
        if not (term.input == "ones" or (term.input == "x" and nonnegative)):
            return False
        if term.bias and bias is not None and not rule.zero_bias and term.weight is not positive:
            return False  # ones(bias) / square(bias) are not used by any rule, but would be positive anyway
    return True


def _split_plan(groups, nonnegative: bool, rectified: bool):
    """On a non-negative input, the groups' terms as [(group, terms)] when every weight modifier is a combination
    a W+ + c W- (``parts``) and the general path would run more than one extra forward op (alpha-beta; gamma
    without a ReLU after it); None otherwise."""
    if not nonnegative:
        return None
    plan, forwards = [], 0
    for group in groups:
        if rectified and group.where == "negative":
            continue  # after a ReLU no relevance sits on outputs <= 0
        terms = _effective_terms(group.terms, True, False)
        if any(term.input != "x" or getattr(term.weight, "parts", None) is None for term in terms):
            return None
        forwards += sum(term.weight.parts != (1.0, 1.0) for term in terms) or len(terms)
        plan.append((group, terms))
    return plan if forwards > 1 else None


def _split_on_nonnegative_input(call, plan, x, weights, bias, z, g, rectified: bool):
    """Any rule whose weights are a W+ + c W- per term, on x >= 0: every denominator follows from z and one extra
    op, P = x W+, since x W- = z - b - P; the backward needs W+^T and W-^T once each, whatever the groups
    (alpha-beta and gamma: two forward and two backward ops in all, where the general path needs three forward).

    A group's denominator a P + c (z - b - P) + its bias is (a - c) P + c z + (its bias - c b): one or two output-
    sized passes. Groups that each explain the outputs of one sign (gamma's) share one denominator, chosen per output
    by the sign of z, and one signal, scaled per output by the group's shares."""
    rule, lmap = call.rule, call.linear_map
    positive_weight = weights.modified(rules.positive)
    shape = (-1,) if lmap.channels_last else (-1,) + (1,) * (z.dim() - 2)
    # Every term takes its bias (or there is none): a term's bias is then a b+ + c b-, a group's offset is (a - c) b+,
    # and b+ goes into P's bias: P = x W+ + b+, and each denominator is (a - c) P + c z.
    folded = bias is None or (not rule.zero_bias and all(term.bias for _, terms in plan for term in terms))
    live = []  # (group, terms, a, c, bias offset, shares of W+ and W-, own bias)
    for group, terms in plan:
        if rectified and group.where == "negative":
            continue  # after a ReLU no relevance sits on outputs <= 0
        a = sum(term.sign * term.weight.parts[0] for term in terms)
        c = sum(term.sign * term.weight.parts[1] for term in terms)
        own_bias = None  # the group's bias, the sum of its terms' modified biases
        if folded:
            live.append((group, terms, a, c, None, (group.coefficient * a, group.coefficient * c), folded))
            continue
        if bias is not None and not rule.zero_bias:
            for term in terms:
                if term.bias:
                    part = term.weight(bias) if term.sign == 1 else term.sign * term.weight(bias)
                    own_bias = part if own_bias is None else own_bias + part
        offset = own_bias
        if bias is not None and c:
            offset = -c * bias if offset is None else offset - c * bias
        shares = (group.coefficient * a, group.coefficient * c)
        live.append((group, terms, a, c, offset, shares, own_bias))
    uses = sum(a - c != 0 for _, _, a, c, _, _, _ in live)
    by_sign = {group.where: (a, c, offset, shares, own) for group, terms, a, c, offset, shares, own in live}
    gamma_like = len(live) == 2 and set(by_sign) == {"positive", "negative"}
    if not gamma_like and folded and weights.kept() and _positive_and_negative(live, rule):
        return _positive_and_negative_parts(call, live, x, weights, bias, z, g)
    # gamma's denominators have the sign of z where they explain it: the stabilizer goes into their biases
    signed = gamma_like and bool(rule.stabilizer) and _follows_sign(by_sign["positive"], bias, 1) and _follows_sign(
        by_sign["negative"], bias, -1)
    shift = rule.stabilizer if signed else 0.0
    gamma = _gamma_of(by_sign) if signed and folded and weights.kept() else 0.0
    if gamma and type(rule).stabilize is rules.LinearRule.stabilize:
        return _gamma_by_magnitude(call, x, weights, bias, z, g, gamma, rule.stabilizer)
    product_bias = None
    if folded and bias is not None:
        product_bias = rules.positive(bias)
    if signed and folded:
        up, down = by_sign["positive"], by_sign["negative"]
        if up[0] != up[1] and down[0] != down[1] and shift / (up[0] - up[1]) == -shift / (down[0] - down[1]):
            # +eps and -eps are (a - c) times one constant for both groups (gamma: eps / gamma): into P's bias too
            ratio = shift / (up[0] - up[1])
            product_bias = (torch.full((z.shape[-1] if lmap.channels_last else z.shape[1],), ratio, dtype=z.dtype,
                                       device=z.device) if product_bias is None else product_bias + ratio)
            shift = 0.0
    product = lmap.terms(x, positive_weight, product_bias)  # P = x W+ (+ b+, + the stabilizer's share)

    def denominator(a, c, offset, shift=0.0, scale=1.0):
        """(a - c) P + c z + offset + shift, all divided by scale, in as few output-sized passes as can be."""
        nonlocal uses, product
        add = None if offset is None else offset.reshape(shape)
        if shift:
            add = shift if add is None else add + shift
        if scale != 1:
            a, c, add = a / scale, c / scale, None if add is None else add / scale
        if a == c:
            den = z * c
        else:
            uses -= 1
            last = uses == 0  # the last use of P may take its buffer
            if c == 0 and a == 1:
                den = product if last else (product.clone() if add is None else torch.add(product, add))
                if not last:
                    add = None
            elif c == 0 and not last and add is not None:
                add = add if isinstance(add, torch.Tensor) else torch.tensor(add, dtype=z.dtype, device=z.device)
                den, add = torch.add(add, product, alpha=a), None
            elif c == 0:
                den = product.mul_(a) if last else product * a
            elif c == 1:
                den = torch.add(z, product, alpha=a - c, out=product if last else None)
            elif last and a == 1:
                den = product.lerp_(z, c)  # (1 - c) P + c z in P's buffer, one pass (gamma's negative group)
            elif last:
                den = product.mul_(a - c).add_(z, alpha=c)  # in P's buffer: no temporary for c z
            else:
                den = torch.add(z * c, product, alpha=a - c)
            if last:
                product = None  # its buffer lives on in den only, and goes when den does (alpha-beta's peak)
        if add is not None:
            den.add_(add)
        return den

    def stabilized(den, terms):
        if rule.stabilizer and _never_negative(terms, bias, rule, True):
            return den.add_(rule.stabilizer)
        return _stabilize(rule, den)

    signals = [None, None]  # what W+^T and W-^T are applied to
    # The transposes' weights are (a W+ + c W-) given as (a, c): a signal's constant factor goes into a kept weight
    # (no pass over the signal) where the LRP object keeps modified weights between calls.
    factors = [(1.0, 0.0), (0.0, 1.0)]
    kept = weights.kept()
    g_in = None

    def transpose(k, total):
        """total + the transpose of signal k by its weight (k = 0: W+, k = 1: W-, times any factor taken over), the
        signal then freed (one buffer less at peak)."""
        if signals[k] is None:
            return total
        weight = positive_weight if factors[k] == (1.0, 0.0) else weights.modified(_combination(*factors[k]))
        part = _transpose(lmap, signals[k], weight, x, weights.cache)
        signals[k] = None
        return part if total is None else total.add_(part)

    def take(k, s, share):
        """Signal k becomes s * share: the share goes into signal k's weight when that weight is kept."""
        if kept and share != 1:
            factors[k] = tuple(share * part for part in factors[k])
            signals[k] = s
        else:
            signals[k] = s.mul_(share) if share != 1 else s

    if gamma_like:  # one group per sign of z (gamma)
        # Float ops only (a bool mask in where or masked_fill costs several passes): h = 1 where z > 0, else 0.
        chosen = torch.gt(z, 0, out=torch.empty_like(z))  # written as floats: one pass, no bool tensor
        up, down = by_sign["positive"], by_sign["negative"]
        # Each denominator has the sign of z on the outputs it explains when it is z plus contributions of that
        # sign (gamma's); then the stabilizer is folded into its bias (or P's), else the chosen one is stabilized.
        den = denominator(up[0], up[1], up[2], shift)
        other = denominator(down[0], down[1], down[2], -shift)
        den = torch.lerp(other, den, chosen, out=other)  # exact for weights 0 and 1
        if not signed:
            den = _stabilize(rule, den)
        s = torch.div(z, den, out=den).mul_(g)  # z g / z', in the denominator's own buffer; 0 where z = 0
        if rule.stabilizer == 0:
            s.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        # signal k = s (down share + (up share - down share) h)
        needed = [k for k in (0, 1) if up[3][k] or down[3][k]]
        low, step = down[3][0], up[3][0] - down[3][0]
        if kept and needed == [0, 1] and low == 1 and step and up[3][1] - down[3][1] == -step:
            # gamma: signal 1 is (both lows) s - signal 0, so W+^T signal 0 + W-^T signal 1 is (W+ - W-)^T signal 0
            # + (both lows) W-^T s: one pass for both signals
            signals[0] = torch.addcmul(s, s, chosen, value=step, out=chosen)  # chosen is read where it is written
            factors[0] = (1.0, -1.0)
            take(1, s, low + down[3][1])
            needed = []
        for k in needed:
            low, step = down[3][k], up[3][k] - down[3][k]
            if k != needed[-1]:
                signals[k] = torch.addcmul(s if low == 1 else s * low, s, chosen, value=step)
            elif low == 0:
                signals[k] = s.mul_(chosen).mul_(step)
            else:
                signals[k] = s.addcmul_(s, chosen, value=step / low) if step else s
                if low != 1:
                    signals[k].mul_(low)
        del s, chosen
    else:
        # Groups whose denominators are never negative first (their stabilizer and share go into the denominator),
        # so that the last one, which may take P's buffer, is the one that is stabilized by its sign.
        live.sort(key=lambda entry: not (rule.stabilizer and _never_negative(entry[1], bias, rule, True)))
        for index, (group, terms, a, c, offset, shares, _) in enumerate(live):
            left_out = None  # after a ReLU only outputs > 0 carry relevance: no mask for the positive group
            if group.where is not None and not (rectified and group.where == "positive"):
                left_out = z <= 0 if group.where == "positive" else z >= 0
            if rule.stabilizer and _never_negative(terms, bias, rule, True) and (shares[0] == 0) != (shares[1] == 0):
                # z g / ((den + eps) / share): the group's only signal, in one pass fewer than stabilizing it and
                # scaling s apart
                k = 0 if shares[0] else 1
                s = denominator(a, c, offset, rule.stabilizer, shares[k])
                s = torch.div(z, s, out=s).mul_(g)
                if left_out is not None:
                    s.masked_fill_(left_out, 0)
                if signals[k] is None:
                    signals[k] = s
                else:
                    signals[k].add_(s, alpha=1 / (factors[k][0] + factors[k][1]))  # over a factor taken already
                del s
                if not any(later[5][k] for later in live[index + 1:]):  # complete: transposed now, and freed
                    g_in = transpose(k, g_in)
                continue
            s = stabilized(denominator(a, c, offset), terms)
            s = torch.div(z, s, out=s).mul_(g)  # z g / z', in the denominator's own buffer
            if rule.stabilizer == 0:
                s.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            if left_out is not None:
                s.masked_fill_(left_out, 0)
            for k in (0, 1):
                if shares[k] and signals[k] is None and not shares[1 - k]:
                    take(k, s, shares[k])  # the group's only signal
                elif shares[k] and signals[k] is None:
                    signals[k] = s * shares[k]
                elif shares[k]:  # over a factor already taken into signal k's weight
                    signals[k].add_(s, alpha=shares[k] / (factors[k][0] + factors[k][1]))
            del s
    product = None
    for k in (0, 1):
        g_in = transpose(k, g_in)
    if g_in is None:
        g_in = torch.zeros_like(x)
    return g_in if not call.direct else x * g_in


def _gamma_of(by_sign) -> float:
    """gamma when the groups are gamma's (w + gamma w+ on outputs > 0, w + gamma w- on the others, each with its
    bias), else 0."""
    (a, c, _, up_shares, _), (a_down, c_down, _, down_shares, _) = by_sign["positive"], by_sign["negative"]
    gamma = a - c
    if gamma <= 0 or c != 1 or a_down != 1 or c_down - a_down != gamma:
        return 0.0
    return gamma if up_shares == (a, c) and down_shares == (a_down, c_down) else 0.0


def _gamma_by_magnitude(call, x, weights, bias, z, g, gamma: float, eps: float):
    """Gamma on x >= 0 where outputs of both signs carry relevance, in five output-sized passes.

    With P = x W+ + b+ and q = |z| + gamma max(-z, 0) (one leaky ReLU of slope -(1 + gamma)), every output's
    stabilized denominator has the magnitude D = q + gamma P + eps: z + gamma P + eps where z > 0, and
    (1 + gamma) z - gamma P - eps = -D elsewhere. The input's g is then W^T (q g / D) + gamma W+^T (z g / D): where
    z > 0 both signals are s = z g / D, which gives (W + gamma W+)^T s; elsewhere q = -(1 + gamma) z, which gives
    (W + gamma W-)^T (z g / -D)."""
    lmap = call.linear_map
    scaled_positive = weights.modified(_combination(gamma, 0.0))  # gamma W+: the extra forward's and a transpose's
    channels = z.shape[-1] if lmap.channels_last else z.shape[1]
    offset = torch.full((channels,), eps, dtype=z.dtype, device=z.device)
    if bias is not None:
        offset.add_(rules.positive(bias), alpha=gamma)
    magnitude = F.leaky_relu(z, -(1.0 + gamma))
    ratio = lmap.terms(x, scaled_positive, offset).add_(magnitude)  # D
    ratio = torch.div(g, ratio, out=ratio)
    signal = magnitude.mul_(ratio)  # q g / D
    ratio.mul_(z)  # z g / D
    g_in = _transpose(lmap, signal, weights.modified(_combination(1.0, 1.0)), x, weights.cache)
    del signal
    g_in.add_(_transpose(lmap, ratio, scaled_positive, x, weights.cache))
    return g_in if not call.direct else x * g_in


def _positive_and_negative(live, rule) -> bool:
    """Two groups, one on x W+ and one on x W- (alpha-beta on x >= 0), each with a share, under the standard
    stabilizer: their denominators' signs are known."""
    if len(live) != 2 or not rule.stabilizer or type(rule).stabilize is not rules.LinearRule.stabilize:
        return False
    parts = sorted((a, c) for _, _, a, c, _, _, _ in live)
    return parts == [(0.0, 1.0), (1.0, 0.0)] and all(any(shares) for *_, shares, _ in live)


def _positive_and_negative_parts(call, live, x, weights, bias, z, g):
    """Alpha-beta on x >= 0 with every bias taken: P = x W+ + b+ + eps is > 0 and z - P = x W- + b- - eps < 0, each
    its group's stabilized denominator (no pass to stabilize either), and each group's share goes into its kept
    transposed weight; s = z g / P and z g / (z - P) in five output-sized passes (four, with z g once, took VGG-16's
    peak memory from 1.20x to 1.28x the gradient's for no time that could be told from noise)."""
    rule, lmap = call.rule, call.linear_map
    channels = z.shape[-1] if lmap.channels_last else z.shape[1]
    share = {(a, c): shares[0] + shares[1] for _, _, a, c, _, shares, _ in live}
    product_bias = (torch.full((channels,), rule.stabilizer, dtype=z.dtype, device=z.device) if bias is None
                    else rules.positive(bias) + rule.stabilizer)
    product = lmap.terms(x, weights.modified(rules.positive), product_bias)
    s = torch.div(z, product)
    negative = torch.sub(z, product, out=product)  # P's buffer: two output-sized buffers at most (VGG's peak)
    del product
    g_in = _transpose(lmap, s.mul_(g), weights.modified(_combination(share[(1.0, 0.0)], 0.0)), x, weights.cache)
    del s
    s = torch.div(z, negative, out=negative).mul_(g)
    del negative
    g_in.add_(_transpose(lmap, s, weights.modified(_combination(0.0, share[(0.0, 1.0)])), x, weights.cache))
    return g_in if not call.direct else x * g_in


def _combination(a: float, c: float):
    """The weight modifier a W+ + c W- (kept between calls under its parts, like gamma's)."""
    if (a, c) == (1.0, 0.0):
        return rules.positive
    if (a, c) == (0.0, 1.0):
        return rules.negative

    def combined(weight: torch.Tensor) -> torch.Tensor:
        out = weight.clamp(min=0).mul_(a)
        return out.add_(weight.clamp(max=0), alpha=c) if c else out

    combined.parts = (a, c)
    return combined


def _follows_sign(group, bias, sign) -> bool:
    """On x >= 0 a group's denominator a x W+ + c x W- + its bias is z plus contributions of the given sign (so it has
    z's sign wherever z has that sign) when a - 1, 1 - c and its bias minus b all have that sign."""
    a, c, _, _, own_bias = group
    if sign * (a - 1) < 0 or sign * (1 - c) < 0:
        return False
    if bias is None or own_bias is True:  # True: its bias is a b+ + c b-, so its bias minus b is (a-1) b+ + (c-1) b-
        return True
    difference = -bias if own_bias is None else own_bias - bias
    return bool((sign * difference >= 0).all())


def _stabilize(rule, denominator):
    """rule.stabilize in two passes (d + copysign(eps, d), equal to copysign(|d| + eps, d) bit for bit), over d."""
    if rule.stabilizer == 0:
        return denominator
    if type(rule).stabilize is not rules.LinearRule.stabilize:
        return rule.stabilize(denominator, inplace=True)  # a rule with a stabilizer of its own
    eps = torch.tensor(rule.stabilizer, dtype=denominator.dtype, device=denominator.device)
    return torch.copysign(eps, denominator).add_(denominator)


def _outputs_explained(group, z, g, rectified: bool, differentiable: bool):
    """(skip the group, mask of the outputs it leaves out or None), for groups restricted by the output's sign."""
    if group.where is None:
        return False, None
    if rectified and not differentiable:  # after a ReLU no relevance sits on outputs <= 0
        return group.where == "negative", None
    left_out = z <= 0 if group.where == "positive" else z >= 0
    if not differentiable and not bool(g.masked_fill(left_out, 0).any()):
        return True, None  # nothing to explain: skip the group's convolutions
    return False, left_out


def _one_sided_scales(call, groups, x, weights, bias, nonnegative: bool, nonpositive: bool):
    """Per group, what its denominator is multiplied by under ``conserve_one_sided`` (None: nothing): its own
    coefficient on the outputs where every other group's denominator is zero, so that the coefficient cancels and
    the group alone explains those outputs' relevance; 1 elsewhere."""
    zero = []
    for group in groups:
        terms = _effective_terms(group.terms, nonnegative, nonpositive)
        if not terms:
            zero.append(None)  # no term survives on this input: zero everywhere
            continue
        denominator = _denominator(terms, [weights.modified(term.weight) for term in terms], call.rule, call.linear_map, x,
                                   bias, call)
        zero.append(denominator == 0)
    scales = []
    for index, group in enumerate(groups):
        others = [mask for other, mask in enumerate(zero) if other != index]
        if group.coefficient in (0, 1) or not others:
            scales.append(None)  # nothing to cancel
            continue
        alone = None
        for mask in others:
            if mask is not None:
                alone = mask if alone is None else alone & mask
        coefficient = torch.tensor(group.coefficient, dtype=x.dtype, device=x.device)
        scales.append(coefficient if alone is None else torch.where(alone, coefficient, torch.ones_like(coefficient)))
    return scales


def _signal(call, terms, weights, x, bias, z, g, nonnegative: bool, scale=None, rectified: bool = False):
    """s = z g / stabilize(z'), with at most two output-sized buffers alive (big layers dominate peak memory);
    rectified: g is zero wherever z <= 0 (the output feeds only ReLUs)."""
    rule = call.rule
    if scale is None and _is_plain(terms, rule, bias):
        # z g / (z + eps sign z) = g |z| / (|z| + eps): no relevance tensor, no sign tensor
        s = z.abs()
        denominator = s + rule.stabilizer
        return s.div_(denominator).mul_(g)
    channels = z.shape[-1] if call.linear_map.channels_last else z.shape[1]
    known = bool(rule.stabilizer) and _never_negative(terms, bias, rule, nonnegative)
    own_stabilize = type(rule).stabilize is not rules.LinearRule.stabilize
    if (rectified and not known and scale is None and rule.stabilizer and terms[0].sign == 1 and not own_stabilize
            and _at_least_output(terms, bias, rule, nonnegative)):
        # gamma after a ReLU: where z > 0 the denominator is >= z > 0, so stabilizing it adds eps, which its bias
        # takes; elsewhere g is zero and any positive denominator gives s = 0 (the clamp keeps 0 / 0 out)
        stabilized = _denominator(terms, weights, rule, call.linear_map, x, bias, call, (rule.stabilizer, channels))
        s = torch.div(z, stabilized.clamp_min_(rule.stabilizer), out=stabilized).mul_(g)
        return s
    if known and scale is None and all(term.sign == 1 for term in terms):
        # z+, flat, w^2 on x >= 0: the sign is known, and the stabilizer goes into the first term's bias
        stabilized = _denominator(terms, weights, rule, call.linear_map, x, bias, call, (rule.stabilizer, channels))
    else:
        denominator = _denominator(terms, weights, rule, call.linear_map, x, bias, call)
        if scale is not None:
            denominator = denominator * scale  # one output-sized buffer more, only under conserve_one_sided
        if known:
            stabilized = denominator.add_(rule.stabilizer)
        else:
            stabilized = _stabilize(rule, denominator)
    s = torch.div(z, stabilized, out=stabilized).mul_(g)  # z g / z', in the denominator's own buffer
    if rule.stabilizer == 0:
        s.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # unstabilized: a zero denominator carries nothing
    return s


_CHUNK_BYTES = 8 << 20  # an output above this is explained in chunks of samples


def input_relevance(call: LinearCall, x, weights: LayerWeights, bias, z, g, differentiable: bool):
    """The rule's backward: g (or relevance, for direct inputs) at the input, from g at the output.

    A large output is explained in chunks of samples: the rule's output-sized temporaries (extra forward ops'
    results, denominators, signals, a transpose's result and the workspace of the op itself) then exist for one
    chunk at a time beside the input-sized result (alpha-beta on VGG-16's first layers at batch 2: two output-sized
    buffers less at the peak). Samples are independent, so this changes nothing but float rounding."""
    lmap = call.linear_map  # dim 0 indexes samples: a dense layer's leading dims, a batched convolution's first
    batched = x.dim() >= 2 if lmap.channels_last else x.dim() == lmap.spatial_dims + 2
    samples = x.shape[0] if batched else 1
    chunks = 1 if differentiable else min(samples, -(-z.numel() * z.element_size() // _CHUNK_BYTES))
    if chunks <= 1:
        return _input_relevance(call, x, weights, bias, z, g, differentiable)
    out = None
    for part in torch.arange(samples).tensor_split(chunks):
        rows = slice(int(part[0]), int(part[-1]) + 1)
        value = _input_relevance(call, x[rows], weights, bias, z[rows], g[rows], differentiable)
        if out is None:
            out = value.new_empty((samples,) + tuple(value.shape[1:]))
        out[rows] = value
        del value
    return out


def _input_relevance(call: LinearCall, x, weights: LayerWeights, bias, z, g, differentiable: bool):
    rule = call.rule
    lmap = call.linear_map
    groups = rule.groups()
    nonnegative, nonpositive = call.nonnegative, False
    if not differentiable and not nonnegative and any(t.input in ("x+", "x-") for group in groups for t in group.terms):
        low, high = torch.aminmax(x)  # one pass; after a ReLU this makes x+ = x and drops every x- term
        nonnegative, nonpositive = bool(low >= 0), bool(high <= 0)
    rectified = call.feeds_only_relu()
    scales = [None] * len(groups)
    if rule.conserve_one_sided:  # each group's denominator scaled per output: the general path
        scales = _one_sided_scales(call, groups, x, weights, bias, nonnegative, nonpositive)
    else:
        plan = None if differentiable else _split_plan(groups, nonnegative, rectified and not differentiable)
        if plan is not None:
            return _split_on_nonnegative_input(call, plan, x, weights, bias, z, g, rectified)
    # Accumulated W^T s per kind of input; combined into g (proportional) or relevance (the others) at the end.
    transposed: dict[str, torch.Tensor] = {}
    for group, scale in zip(groups, scales):
        terms = _effective_terms(group.terms, nonnegative, nonpositive)
        if not terms:
            continue
        skip, left_out = _outputs_explained(group, z, g, rectified, differentiable)
        if skip:
            continue
        modified = [weights.modified(term.weight) for term in terms]  # `keep`: the weight itself, no copy
        if differentiable:  # out-of-place ops only, so that relevance can be differentiated
            plain = scale is None and _is_plain(terms, rule, bias)
            denominator = z if plain else _denominator(terms, modified, rule, lmap, x, bias, call)
            if scale is not None:
                denominator = denominator * scale
            # z / denominator comes from the forward pass alone: one output-sized pass, then one pass over g (which
            # holds every condition of a batched conditional backward), not two
            ratio = z / rule.stabilize(denominator)
            if left_out is not None:
                ratio = ratio.masked_fill(left_out, 0)
            s = g * ratio
        else:
            s = _signal(call, terms, modified, x, bias, z, g, nonnegative, scale, rectified)
            if left_out is not None:
                s.masked_fill_(left_out, 0)
        _transpose_group(s, group, terms, modified, lmap, x, transposed, weights.cache)
        del s

    g_in = None
    for kind in PROPORTIONAL_INPUTS:
        if kind not in transposed:
            continue
        part = transposed[kind]
        if kind == "x+":
            part = part * (x > 0)
        elif kind == "x-":
            part = part * (x < 0)
        g_in = part if g_in is None else g_in + part
    if g_in is None:
        g_in = torch.zeros_like(x)
    direct = None
    for kind, part in transposed.items():
        if kind in PROPORTIONAL_INPUTS:
            continue
        contribution = _select_input(kind, x, call) * part
        direct = contribution if direct is None else direct + contribution
    if call.direct:
        return x * g_in if direct is None else x * g_in + direct
    if direct is not None:
        # Relevance that is not proportional to the input can only travel on where the input is non-zero.
        g_in = g_in + divide_or_zero(direct, x)
    return g_in


class RuleGradient(torch.autograd.Function):
    """Differentiable mode: adds zero to the output, and its backward is the rule's (recomputed, differentiable).

    The output value then comes from the op on the *detached* input, so that its dependence on the parameters is
    the true one (what a second derivative with respect to the parameters needs), while the input sees the rule.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, call: LinearCall, like):
        ctx.call = call
        ctx.save_for_backward(x, weight, bias)
        return torch.zeros_like(like)

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        ctx.call.forget_inputs()
        z = ctx.call.linear_map.forward(x, weight, bias)
        weights = LayerWeights(lambda: weight)  # differentiable: the weights as they are, nothing kept
        return input_relevance(ctx.call, x, weights, bias, z, g, True), None, None, None, None


def apply_rule(x, weight, bias, call: LinearCall, differentiable: bool):
    """The op's output, whose backward applies call.rule to the input."""
    if not differentiable:
        return LinearRuleFunction.apply(x, weight, bias, call)
    if call.merge is not None:
        weight, bias = merged_parameters(weight, bias, call.merge, call.linear_map)
        call.merge = None
    value = call.linear_map.forward(x.detach(), weight, bias)
    call.output = None
    return value + RuleGradient.apply(x, weight, bias, call, value.detach())


class LinearRuleFunction(torch.autograd.Function):
    """Forward: the op itself (or a precomputed output, for merged batch norm). Backward: the rule."""

    @staticmethod
    def forward(ctx, x, weight, bias, call: LinearCall):
        z = call.linear_map.forward(x, weight, bias) if call.output is None else call.output
        call.output = None
        ctx.call = call
        ctx.save_for_backward(x, weight, bias)
        ctx.z = call.keep(z)
        return z

    @staticmethod
    def backward(ctx, g):
        x, weight, bias = ctx.saved_tensors
        call = ctx.call
        call.forget_inputs()
        build = lambda: weight  # noqa: E731
        if call.merge is not None:  # merged weights exist only while this layer's backward runs, or in the cache
            scale, shift = call.merge
            bias = shift if bias is None else bias * scale + shift
            build = lambda: scale_output_channels(weight, scale, call.linear_map)  # noqa: E731
        sources, key = call.weight_key if call.weight_key is not None else (None, ())
        weights = LayerWeights(build, call.cache, sources, key)
        z = call.values(ctx.z)
        if z is None:  # changed in place where the engine could not see it: one recomputation
            z = call.linear_map.forward(x, weights.base(), bias)
        return input_relevance(call, x, weights, bias, z, g, False), None, None, None


# ---- DeepLift: the gradient is exact for linear maps ------------------------------------------------------------
def conv_deeplift(dl, func, name, args, kwargs, active):
    """A convolution over many references runs them without gradient (they never need one), which saves their
    share of the backward pass. (Dense layers are left whole: at small batches they are bound by reading their
    weights, which a second call would double.)"""
    z = args[0] if args else None
    if not (len(active) == 1 and z is active[0] and dl.pairing.fits(z) and dl.pairing.many):
        return func(*args, **kwargs)
    rows = dl.pairing.rows
    out = func(z[:rows], *args[1:], **kwargs)
    with torch.no_grad():
        references = func(z[rows:], *args[1:], **kwargs)
    return torch.cat([out, references])


# ---- LRP handlers: the linear family -----------------------------------------------------------------------------
_LINEAR_ARGS = {
    "linear": ("input", "weight", "bias"),
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv_transpose": ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
}


@register("linear", deeplift=reference.exact)
def dense_op(ctx, func, name, args, kwargs):
    return linear_like(ctx, func, name, args, kwargs, "linear")


@register("conv", deeplift=conv_deeplift)
def conv_op(ctx, func, name, args, kwargs):
    return linear_like(ctx, func, name, args, kwargs, "conv")


@register("conv_transpose", deeplift=reference.exact)
def conv_transpose_op(ctx, func, name, args, kwargs):
    return linear_like(ctx, func, name, args, kwargs, "conv_transpose")


def linear_like(ctx, func, name, args, kwargs, kind):
    bound = bind(_LINEAR_ARGS[kind], args, kwargs)
    x, weight, bias = bound["input"], bound["weight"], bound["bias"]
    if ctx.active(weight) or ctx.active(bias):
        if ctx.active(x):
            return ctx.unknown(func, name + " (with weights computed from the input)", args, kwargs)
        return ctx.plain(func, name, args, kwargs)
    if not ctx.active(x):
        return ctx.plain(func, name, args, kwargs)
    if kind == "linear":
        linear_map = dense_map()
    else:
        dims = int(name[-2])
        extra = {key: bound[key] for key in _LINEAR_ARGS[kind][3:]}
        linear_map = conv_map(dims, kind == "conv_transpose", **extra)
    site = ctx.site(kind, name)
    rule = ctx.composite.rule_for(site)
    return apply_linear_rule(ctx, func, name, args, kwargs, rule, linear_map, site, x, weight, bias,
                             weight_key=((weight,), ()))


def apply_linear_rule(ctx, func, name, args, kwargs, rule, linear_map, site, x, weight, bias, output=None, merge=None,
                      row=None, weight_key=None):
    """Run one linear-like op (or merged op, given its output, batch norm and the op's report row) under rule;
    weight_key = (sources, key) says what the (merged) weight is built from, so that its modified versions can be kept
    between calls (None: they are built on each call)."""
    if rule is None or rule.is_gradient:
        if output is not None:
            raise AssertionError("merged layers always carry a rule")
        return ctx.plain(func, name, args, kwargs, rule=rule.name if rule else "Gradient")
    if isinstance(rule, rules.Pass):
        row = ctx.row(name, "Pass")
        out = pass_through(ctx.tap(x, row), lambda t: func(t, *args[1:], **kwargs))
        if out.shape != x.shape:
            raise ValueError(f"the Pass rule needs an op whose output has its input's shape; {site.name or name} "
                             f"maps {tuple(x.shape)} to {tuple(out.shape)}")
        ctx.watch(out, row)
        return out
    if not isinstance(rule, rules.LinearRule):
        raise TypeError(f"rule {rule!r} cannot be used on {site.kind} layer '{site.name}'")
    direct = ctx.is_model_input(x) and any(
        term.input not in rules.PROPORTIONAL_INPUTS for group in rule.groups() for term in group.terms)
    x_in = ctx.direct_view(x) if direct else x
    if output is None:
        row = ctx.row(name, rule.name)
    elif row is not None:  # the merged layer takes over the op's row: one row, named for both
        row.op = name + " + batch_norm (merged)"
    call = LinearCall(linear_map=linear_map, rule=rule, site=site, direct=direct, output=output, merge=merge,
                      nonnegative=ctx.facts.is_nonnegative(x), x=x, weight=weight, bias=bias, row=row,
                      cache=getattr(ctx, "weights", None), weight_key=None if ctx.differentiable else weight_key)
    out = apply_rule(ctx.tap(x_in, row, direct), weight, bias, call, ctx.differentiable)
    if not ctx.differentiable:
        ctx.facts.set_call(out, call)
    ctx.facts.set_producer(out, call)
    ctx.watch(out, row)
    return out


@register("avg_pool", deeplift=reference.exact)
def avg_pool(ctx, func, name, args, kwargs):
    site = ctx.site("avg_pool", name)
    rule = ctx.composite.rule_for(site)
    if rule is None or rule.is_gradient:
        return ctx.plain(func, name, args, kwargs, rule=rule.name if rule else "Gradient")
    if not isinstance(rule, (rules.LinearRule, rules.SmoothMax)):
        pooling.refuse(rule, "average pooling", site.name or name, pooling.AVG_POOL_TAKES)
    x = args[0]
    linear_map, weight = _pool_as_conv(name, x, args, kwargs) if isinstance(rule, rules.LinearRule) else (None, None)
    if linear_map is None and isinstance(rule, pooling.WINDOW_RULES):
        return pooling.apply_window_rule(ctx, func, name, args, kwargs, rule)  # exact for every window shape
    if linear_map is None:
        ctx.unsupported(name, f"rule {rule.name} needs the pooling to be a fixed window (no ceil_mode, no "
                               "count_include_pad=False with padding, adaptive sizes that divide the input)")
        return ctx.plain(func, name, args, kwargs)
    return apply_linear_rule(ctx, func, name, args, kwargs, rule, linear_map, site, x, weight, None)


def _pool_as_conv(name, x, args, kwargs):
    """Average pooling as a depthwise convolution (weight 1/window per channel), or (None, None) if not exact."""
    dims = int(name[-2])
    channels = x.shape[1] if x.dim() == dims + 2 else None
    if channels is None:
        return None, None
    spatial = tuple(x.shape[2:])
    if "adaptive" in name:
        output_size = _tuple(args[1] if len(args) > 1 else kwargs["output_size"], dims)
        output_size = tuple(s if o is None else o for s, o in zip(spatial, output_size))
        if any(s % o for s, o in zip(spatial, output_size)):
            return None, None
        kernel = tuple(s // o for s, o in zip(spatial, output_size))
        stride, padding = kernel, (0,) * dims
    else:
        names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
        bound = bind(names, args, kwargs, {"stride": None, "padding": 0, "ceil_mode": False,
                                            "count_include_pad": True, "divisor_override": None})
        kernel = _tuple(bound["kernel_size"], dims)
        stride = _tuple(bound["stride"] or kernel, dims)
        padding = _tuple(bound["padding"], dims)
        if bound["ceil_mode"] or bound["divisor_override"] or (not bound["count_include_pad"] and any(padding)):
            return None, None
    window = 1
    for k in kernel:
        window *= k
    weight = torch.full((channels, 1) + kernel, 1.0 / window, dtype=x.dtype, device=x.device)
    return conv_map(dims, False, stride=stride, padding=padding, groups=channels), weight
