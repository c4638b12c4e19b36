"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN): the fused op run as its time steps in plain torch.

``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh`` and ``torch.rnn_relu`` (padded or packed input) arrive as one op,
as do the cells ``torch.lstm_cell``, ``torch.gru_cell``, ``torch.rnn_tanh_cell`` and ``torch.rnn_relu_cell``.
While explaining they run as the equations below, one time step at a time, for every configuration torch allows:
layers, directions, ``batch_first``, projections (``proj_size``), given initial states, packed sequences, dropout
between layers. Per layer and direction, with W_i* x + b_i* computed for all steps at once:

  LSTM   i, f, o = sigmoid(W_i* x + b_i* + W_h* h + b_h*)        (gates)
         g = tanh(W_ig x + b_ig + W_hg h + b_hg)
         c' = f * c + i * g          h' = o * tanh(c')          h' = W_hr h' with a projection
  GRU    r, z = sigmoid(W_i* x + b_i* + W_h* h + b_h*)           (gates)
         n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
         h' = (1 - z) * n + z * h
  RNN    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)   (or relu)

LRP follows Arras et al. 2017 (Explaining Recurrent Neural Network Predictions in Sentiment Analysis):
  - gates (i, f, o; r, z) are constants: a product gate * signal hands all its relevance to the signal, and the
    reset gate inside the GRU candidate only scales the weights W_hn, b_hn;
  - tanh and relu pass relevance through (R_c gets all of R_h, R_pre-activation all of R_g);
  - a sum of signals (the cell c' = f c + i g, the GRU update (1 - z) n + z h) splits by its terms, each term t
    getting R t / (s + eps sign s) of the sum s;
  - a pre-activation a = W_x x + W_h h + b (all of it, the gates' constants folded into the weights) is one
    epsilon-rule layer over [x, h]: R_x = x W_x^T (R / (a + eps sign a)), the same for h, the bias keeping its share.
The composite picks the rule of the pre-activations as for a dense layer (site kind "linear", the recurrent module
as its module): Epsilon(epsilon, zero_bias), Zero(zero_bias) or Norm (= Epsilon(stabilizer, zero_bias=True)), the
rules whose terms are LRP-0's (``rule.splits_plain_contributions``); with zero_bias the denominators leave the biases
out, and the steps of a float32 or float16 layer run in float64 (bias-free denominators can be near zero).

Under the gradient x input convention all of this is a plain backward pass with the gates detached and two
changes: a stabilised sum s multiplies the gradient reaching it by s / (s' + eps sign s') (s' = s without biases,
or s), and tanh hands back g tanh(a) / a (relevance passes through). The relevance of a time step's input is then
x W_x^T of what reaches its pre-activation: exactly the epsilon rule over [x, h]. DeepLift and the gradient methods
(``engine.steps.StepsOnGPU``) run the same steps with nothing changed, so no cuDNN kernel (whose backward needs
training mode) is involved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..stabilize import stabilize
from .elementwise import pass_through
from .table import FAMILIES, register

_LAYERS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
FAMILIES.update({f"torch.{name}{cell}": "recurrent" for name in _LAYERS for cell in ("", "_cell")})
# Packing and padding (torch.nn.utils.rnn) only move rows: their gradient carries relevance unchanged.
FAMILIES.update({"_VariableFunctionsClass._pack_padded_sequence": "gradient",
                 "_VariableFunctionsClass._pad_packed_sequence": "gradient", "pad_sequence": "gradient"})

_PADDED = ("input", "hx", "params", "has_biases", "num_layers", "dropout", "train", "bidirectional", "batch_first")
_PACKED = ("input", "batch_sizes", "hx", "params", "has_biases", "num_layers", "dropout", "train", "bidirectional")
_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def bind_call(name: str, args, kwargs) -> dict:
    """A recurrent op's arguments by name; ``batch_sizes`` is None for padded input."""
    kind = name.rsplit(".", 1)[-1]
    if kind.endswith("_cell"):
        bound = dict(zip(("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"), args), **kwargs)
        bound.setdefault("b_ih", None)
        bound.setdefault("b_hh", None)
        bound.update(kind=kind, params=[bound["w_ih"], bound["w_hh"], bound["b_ih"], bound["b_hh"]])
        return bound
    # The packed form has the batch sizes (a tensor) second; a GRU's or RNN's padded form has its state there, and
    # then its parameters (a list) third.
    packed = len(args) > 2 and isinstance(args[1], torch.Tensor) and (
        kind == "lstm" or isinstance(args[2], torch.Tensor))
    bound = dict(zip(_PACKED if packed else _PADDED, args), **kwargs)
    bound.setdefault("batch_sizes", None)
    bound.setdefault("batch_first", False)
    bound["kind"] = kind
    return bound


class Plain:
    """The equations as they are (DeepLift, gradients)."""

    zero_bias = False

    def constant(self, tensor):
        return tensor

    def stabilized(self, total, bias=None):
        return total

    def squash(self, tensor, fn):
        return fn(tensor)


class EpsilonShare(torch.autograd.Function):
    """Forward: the sum itself. Backward: the gradient times s / stabilize(s'), the epsilon rule's share."""

    @staticmethod
    def forward(ctx, total, factor):
        ctx.save_for_backward(factor)
        return total.view_as(total)

    @staticmethod
    def backward(ctx, g):
        (factor,) = ctx.saved_tensors
        return g * factor, None


class Arras(Plain):
    """LRP for recurrent layers (Arras et al. 2017): gates constant, signals take all, sums by the epsilon rule."""

    def __init__(self, epsilon: float, zero_bias: bool):
        self.epsilon, self.zero_bias = epsilon, zero_bias

    @classmethod
    def from_rule(cls, rule, where: str) -> Arras:
        if rule is None or rule.is_gradient:
            return cls(0.0, False)
        if rule.splits_plain_contributions:
            return cls(float(rule.stabilizer), rule.zero_bias)
        raise TypeError(f"rule {rule.name} cannot be used on the recurrent layer '{where}': its pre-activations take "
                        "a rule splitting the plain contributions x_i w_ij, Epsilon(epsilon, zero_bias), "
                        "Zero(zero_bias) or Norm (Arras et al. 2017). Map the module type "
                        "(e.g. torch.nn.LSTM) or its name to one of those in the composite's layer_map / name_map")

    @property
    def name(self) -> str:
        bias = ", biases left out" if self.zero_bias else ""
        return f"Recurrent (Arras et al. 2017, epsilon={self.epsilon:g}{bias})"

    def constant(self, tensor):
        return tensor.detach()

    def stabilized(self, total, bias=None):
        if self.epsilon == 0 and (bias is None or not self.zero_bias):
            return total  # s / s: the gradient is already the share
        with torch.no_grad():
            denominator = total - bias if (self.zero_bias and bias is not None) else total
            factor = total / stabilize(denominator, self.epsilon)
            factor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # epsilon 0: a zero sum carries nothing
        return EpsilonShare.apply(total, factor)

    def squash(self, tensor, fn):
        return pass_through(tensor, fn)


def run(bound: dict, policy: Plain = Plain()):
    """The recurrent op's outputs ((output, h_n, c_n) for an LSTM, else (output, h_n)), step by step."""
    if bound["kind"].endswith("_cell"):
        return _cell(bound, policy)
    kind, params = bound["kind"], list(bound["params"])
    layers, directions = bound["num_layers"], 2 if bound["bidirectional"] else 1
    per = len(params) // (layers * directions)
    x, batch_sizes = bound["input"], bound["batch_sizes"]
    if batch_sizes is not None:
        x, mask, rows = _padded(x, batch_sizes)
    else:
        mask = rows = None
        if bound["batch_first"]:
            x = x.transpose(0, 1)
    h0, c0 = (bound["hx"][0], bound["hx"][1]) if kind == "lstm" else (bound["hx"], None)
    finals_h, finals_c = [], []
    for layer in range(layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weights = params[index * per:(index + 1) * per]
            output, h, c = _direction(kind, policy, x, mask, h0[index], None if c0 is None else c0[index], weights,
                                      bound["has_biases"], reverse=direction == 1)
            outputs.append(output)
            finals_h.append(h)
            finals_c.append(c)
        x = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        if bound["dropout"] and bound["train"] and layer < layers - 1:
            x = F.dropout(x, bound["dropout"], training=True)
    if rows is not None:
        x = x.reshape(-1, x.shape[-1])[rows]
    elif bound["batch_first"]:
        x = x.transpose(0, 1)
    if kind == "lstm":
        return x, torch.stack(finals_h), torch.stack(finals_c)
    return x, torch.stack(finals_h)


def _padded(data, batch_sizes):
    """Packed rows as a (steps, batch, features) tensor, the mask of real entries and where each row sits."""
    sizes = batch_sizes.tolist()
    steps, batch = len(sizes), sizes[0]
    rows = torch.cat([step * batch + torch.arange(size) for step, size in enumerate(sizes)]).to(data.device)
    source = torch.full((steps * batch,), data.shape[0], dtype=torch.long, device=data.device)
    source[rows] = torch.arange(data.shape[0], device=data.device)
    padded = torch.cat([data, data.new_zeros(1, data.shape[1])])[source].reshape(steps, batch, data.shape[1])
    mask = (torch.arange(batch)[None, :] < batch_sizes[:, None]).unsqueeze(-1).to(data.device)
    return padded, mask, rows


def _direction(kind, policy, x, mask, h, c, weights, has_biases, reverse):
    """One layer in one direction: (outputs (steps, batch, hidden), last h, last c)."""
    step_of = _step(kind, policy, weights, has_biases)
    inputs = F.linear(x, weights[0], weights[2] if has_biases else None).unbind(0)  # unbind: one gradient buffer
    outputs = [None] * len(inputs)
    for step in (reversed(range(len(inputs))) if reverse else range(len(inputs))):
        h_new, c_new = step_of(inputs[step], h, c)
        if mask is not None:  # packed: sequences that have ended (or not yet begun, in reverse) keep their state
            h_new = torch.where(mask[step], h_new, h)
            c_new = None if c is None else torch.where(mask[step], c_new, c)
        h, c = h_new, c_new
        outputs[step] = h
    return torch.stack(outputs), h, c


def _step(kind, policy, weights, has_biases):
    """One time step, (W_i* x + b_i*, h, c) -> (h', c'), with these weights [w_ih, w_hh, (b_ih, b_hh), (w_hr)]."""
    w_hh = weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_biases else (None, None)
    w_hr = weights[-1] if kind == "lstm" and len(weights) == 3 + 2 * has_biases else None
    bias = None
    if policy.zero_bias and has_biases:
        bias = (b_ih + b_hh).detach().chunk(_GATES[kind])  # what the bias-free denominators leave out, per gate
    if kind == "lstm":
        return lambda projected, h, c: _lstm(policy, projected, h, c, w_hh, b_hh, w_hr, bias)
    if kind == "gru":
        return lambda projected, h, c: (_gru(policy, projected, h, w_hh, b_hh, b_ih, bias), None)
    return lambda projected, h, c: (_rnn(policy, projected, h, w_hh, b_hh, bias, kind), None)


def _cell(bound, policy):
    """nn.LSTMCell, GRUCell, RNNCell: one step; (h', c') for an LSTM cell, else h'."""
    kind, has_biases = bound["kind"][:-len("_cell")], bound["b_ih"] is not None
    weights = [bound["w_ih"], bound["w_hh"]] + ([bound["b_ih"], bound["b_hh"]] if has_biases else [])
    h, c = bound["hx"] if kind == "lstm" else (bound["hx"], None)
    h, c = _step(kind, policy, weights, has_biases)(F.linear(bound["input"], bound["w_ih"], bound["b_ih"]), h, c)
    return (h, c) if kind == "lstm" else h


def _lstm(policy, projected, h, c, w_hh, b_hh, w_hr, bias):
    i, f, g, o = (projected + F.linear(h, w_hh, b_hh)).chunk(4, 1)
    i, f, o = torch.sigmoid(policy.constant(i)), torch.sigmoid(policy.constant(f)), torch.sigmoid(policy.constant(o))
    g = policy.squash(policy.stabilized(g, None if bias is None else bias[2]), torch.tanh)
    c = policy.stabilized(f * c + i * g)
    h = o * policy.squash(c, torch.tanh)
    if w_hr is not None:
        h = policy.stabilized(F.linear(h, w_hr))
    return h, c


def _gru(policy, projected, h, w_hh, b_hh, b_ih, bias):
    x_r, x_z, x_n = projected.chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, 1)
    r, z = torch.sigmoid(policy.constant(x_r + h_r)), torch.sigmoid(policy.constant(x_z + h_z))
    if bias is not None:  # the candidate's biases: b_in + r b_hn
        bias = b_ih.detach().chunk(3)[2] + r * b_hh.detach().chunk(3)[2]
    n = policy.squash(policy.stabilized(x_n + r * h_n, bias), torch.tanh)
    return policy.stabilized((1 - z) * n + z * h)


def _rnn(policy, projected, h, w_hh, b_hh, bias, kind):
    total = policy.stabilized(projected + F.linear(h, w_hh, b_hh), None if bias is None else bias[0])
    return policy.squash(total, torch.tanh if kind == "rnn_tanh" else torch.relu)


# ---- DeepLift and LRP handlers ------------------------------------------------------------------------------------
def recurrent_deeplift(dl, func, name, args, kwargs, active):
    """The time steps' ops get their own multipliers (the gates' products the midpoint rule, tanh/sigmoid Rescale)."""
    bound = bind_call(name, args, kwargs)
    if bound.get("batch_sizes") is not None:
        return dl.fallback(func, name, args, kwargs, "its input is packed (rows sorted by length, so inputs no "
                                                     "longer pair with their baselines)")
    with dl.intercept():
        return run(bound)


@register("recurrent", deeplift=recurrent_deeplift)
def recurrent_op(ctx, func, name, args, kwargs):
    bound = bind_call(name, args, kwargs)
    if any(ctx.active(weight) for weight in bound["params"]):
        return ctx.unknown(func, name + " (with weights computed from the input)", args, kwargs)
    site = ctx.site("linear", name)
    policy = Arras.from_rule(ctx.composite.rule_for(site), site.name or name)
    row = ctx.row(name, policy.name)
    bound["input"] = ctx.tap(bound["input"], row)
    hx = bound["hx"]
    bound["hx"] = ctx.tap(hx, row) if isinstance(hx, torch.Tensor) else type(hx)(ctx.tap(t, row) for t in hx)
    dtype = bound["input"].dtype
    if policy.zero_bias and dtype in _WIDENED:
        # Bias-free denominators W_x x + W_h h can be near zero: their shares are huge and cancel, and float32
        # rounding in the steps would show in every relevance value (0.2% of the largest, measured). The steps run
        # in float64; the outputs, and so the relevance, come back in the input's dtype.
        out = _cast(run({key: _cast(value, torch.float64) for key, value in bound.items()}, policy), dtype)
    else:
        out = run(bound, policy)
    ctx.watch(out, row)
    return out


_WIDENED = (torch.float32, torch.float16, torch.bfloat16)


def _cast(value, dtype):
    """Floating-point tensors in value (a tensor, or a list or tuple of them) as dtype; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(item, dtype) for item in value)
    return value
