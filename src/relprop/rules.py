"""LRP rules: small values that say how relevance crosses one layer.

A rule for a linear-like layer (linear, convolution, transposed convolution, pooling seen as a linear map) is a
list of *groups*. Each group is a sum of *terms*; a term is the layer applied to a modified input with modified
weights. For output j and input i the relevance a group hands down is

    coefficient * sum_terms sign * input_t(x)_i * weight_t(W)_ij * R_j / stabilize(sum_terms sign * z_t,j)

restricted to the outputs selected by ``where`` (original pre-activation positive / negative). The relevance of a
layer's input is the sum over its groups. Every rule below is that formula with its own terms.
"""
from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch

from .stabilize import stabilize

WeightModifier = Callable[[torch.Tensor], torch.Tensor]

# The inputs a term can see. "x", "x+" and "x-" keep relevance proportional to the input, so it travels through
# the gradient pass unchanged; the others ("ones", "low", "high", "pow") put relevance on inputs whatever their
# value, which the engine handles at the model input.
PROPORTIONAL_INPUTS = ("x", "x+", "x-")
INPUTS = PROPORTIONAL_INPUTS + ("ones", "low", "high", "pow")


def keep(weight: torch.Tensor) -> torch.Tensor:
    """The weight as it is (w).

    Args:
        weight: A layer's weight (or bias).

    Returns:
        The weight itself.
    """
    return weight


def positive(weight: torch.Tensor) -> torch.Tensor:
    """The positive part of the weight, w+ = max(w, 0).

    Args:
        weight: A layer's weight (or bias).

    Returns:
        A new tensor.
    """
    return weight.clamp(min=0)


def negative(weight: torch.Tensor) -> torch.Tensor:
    """The negative part of the weight, w- = min(w, 0).

    Args:
        weight: A layer's weight (or bias).

    Returns:
        A new tensor.
    """
    return weight.clamp(max=0)


def ones(weight: torch.Tensor) -> torch.Tensor:
    """Ones shaped like the weight (the flat rule's modifier).

    Args:
        weight: A layer's weight (or bias).

    Returns:
        A new tensor.
    """
    return torch.ones_like(weight)


def square(weight: torch.Tensor) -> torch.Tensor:
    """The squared weight, w^2 (the w^2 rule's modifier).

    Args:
        weight: A layer's weight (or bias).

    Returns:
        A new tensor.
    """
    return weight * weight


def number(name: str, value, minimum: float | None = None):
    """A rule parameter checked to be a finite real number (at least ``minimum``), numpy scalars taken as floats."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value if isinstance(value, (int, float)) else float(value)


def flag(name: str, value) -> bool:
    """A rule switch: only True or False, so that zero_bias="no" is not silently taken as True."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def bound(name: str, value):
    """A z^B bound: a number, or a tensor broadcastable to one input sample."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be a finite floating-point tensor or a number")
        return value
    return number(name, value)


# A modifier that is a W+ + c W- says so in ``parts`` = (a, c): on inputs >= 0 the engine then needs only x W+
# besides the layer's own output (x W- = z - b - x W+).
keep.parts, positive.parts, negative.parts = (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)


@dataclass(frozen=True)
class Term:
    """One term of a rule's contributions: sign * modified input * modified weight.

    Attributes:
        input: Which input the term sees: "x", "x+", "x-" (the input or its positive or negative part), "ones",
            "low", "high" (z^B's bounds) or "pow" (the input to a power, Exponent).
        weight: The weight modifier, a function of the weight (keep, positive, negative, ones, square, ...).
        bias: Whether the weight modifier is applied to the bias too and the bias joins the term (False: the term
            has no bias).
        sign: The sign (or factor) the term enters with.

    Raises:
        ValueError: for an unknown input.
    """
    input: str
    weight: WeightModifier = keep
    bias: bool = True  # the weight modifier is applied to the bias too, unless False
    sign: float = 1.0

    def __post_init__(self):
        if self.input not in INPUTS:
            raise ValueError(f"unknown term input {self.input!r}; use one of {INPUTS}")


@dataclass(frozen=True)
class Group:
    """Terms whose sum is one set of contributions z_ij, normalised by its own denominator.

    Attributes:
        terms: The terms, summed.
        coefficient: The group's share of the output's relevance (alpha, -beta; 1 for most rules).
        where: None (every output), "positive" or "negative": which outputs, by the sign of z, this group explains.
    """
    terms: tuple[Term, ...]
    coefficient: float = 1.0
    where: str | None = None  # None, "positive" or "negative": which outputs (by sign of z) this group explains


PLAIN_CONTRIBUTIONS = (Group((Term("x"),)),)  # LRP-0: z_ij = x_i w_ij, the input and the weights as they are


class Rule:
    """Base of all rules; ``name`` shows in reports and listings.

    What op handlers ask of a rule, the rule says itself (a new rule changes no handler): ``is_gradient``, whether
    it equals gradient x input (the op then needs no custom backward); ``splits_plain_contributions``, whether it
    splits relevance by LRP-0's contributions x_i w_ij (what recurrent layers' pre-activations take).
    """

    is_gradient = False
    splits_plain_contributions = False

    @property
    def name(self) -> str:
        """The rule's name in reports and listings (its class name)."""
        return type(self).__name__

    def parameters(self) -> dict:
        """The rule's parameters by name, as its repr shows them.

        Returns:
            A dict.
        """
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items())
        return f"{self.name}({params})"

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


class LinearRule(Rule):
    """A rule for linear-like layers, defined by its groups and the stabilizer of its denominators."""

    stabilizer: float = 1e-6
    zero_bias: bool = False
    # Outputs where every group but one has a zero denominator: that group explains all of their relevance (its
    # denominator is multiplied by its coefficient, which then cancels) instead of coefficient times it.
    conserve_one_sided: bool = False

    def groups(self) -> tuple[Group, ...]:
        """The groups of terms that define the rule's contributions (each subclass says its formula).

        Returns:
            A tuple of Group.
        """
        raise NotImplementedError

    def stabilize(self, denominator: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """A denominator pushed away from zero by the rule's stabilizer, keeping its sign.

        Args:
            denominator: The denominators.
            inplace: Write into denominator when nothing needs its old values.

        Returns:
            The stabilized denominators.
        """
        return stabilize(denominator, self.stabilizer, inplace)

    @property
    def is_gradient(self) -> bool:
        """True when the rule equals gradient x input, so the engine needs no custom backward at all."""
        return False

    @property
    def splits_plain_contributions(self) -> bool:
        """True for LRP-0's terms (one group: each input's contribution x_i w_ij as it is), whatever the
        stabilizer and the bias choice: Zero, Epsilon and Norm."""
        return self.groups() == PLAIN_CONTRIBUTIONS

    def term_input(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """The input a term of this kind sees; rules with inputs of their own (bounds, powers) extend this.

        Args:
            kind: The term's input: "x", "x+", "x-" or "ones".
            x: The layer's input.

        Returns:
            A tensor shaped like x.

        Raises:
            ValueError: for a kind the rule has no input for.
        """
        if kind == "x":
            return x
        if kind == "x+":
            return x.clamp(min=0)
        if kind == "x-":
            return x.clamp(max=0)
        if kind == "ones":
            return torch.ones_like(x)
        raise ValueError(f"{self.name} has no term input {kind!r}")


class Zero(LinearRule):
    """LRP-0: relevance split in proportion to each input's contribution z_ij = x_i w_ij (bias absorbs its part).

    Args:
        zero_bias: Leave the bias out of the contributions (it then takes no relevance).
    """

    def __init__(self, zero_bias: bool = False):
        self.zero_bias = flag("zero_bias", zero_bias)
        self.stabilizer = 0.0

    def groups(self):
        return PLAIN_CONTRIBUTIONS

    @property
    def is_gradient(self):
        return not self.zero_bias


class Epsilon(LinearRule):
    """LRP-epsilon: LRP-0 with epsilon added to each denominator (sign kept), absorbing weak or contradictory parts.

    Args:
        epsilon: Added to each denominator with its sign; 0 is LRP-0.
        zero_bias: Leave the bias out of the contributions (it then takes no relevance).

    Raises:
        TypeError: for a parameter of the wrong type.
        ValueError: for a negative or non-finite epsilon.

    Example:
        >>> from relprop import rules
        >>> rules.Epsilon(0.25)
        Epsilon(epsilon=0.25, zero_bias=False)
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False):
        self.epsilon = number("epsilon", epsilon, minimum=0)
        self.zero_bias = flag("zero_bias", zero_bias)

    @property
    def stabilizer(self):
        """The stabilizer of the denominators: epsilon."""
        return self.epsilon

    def groups(self):
        return PLAIN_CONTRIBUTIONS

    @property
    def is_gradient(self):
        return self.epsilon == 0 and not self.zero_bias


def _boost(gamma: float, part: WeightModifier) -> WeightModifier:
    def boosted(weight: torch.Tensor) -> torch.Tensor:
        return part(weight).mul_(gamma).add_(weight)  # in place on the fresh clamp: one allocation, not three

    boosted.parts = (1.0 + gamma * part.parts[0], 1.0 + gamma * part.parts[1])
    return boosted


def _check_inputs(inputs: str) -> str:
    if inputs not in ("signed", "positive"):
        raise ValueError(f"inputs must be 'signed' (x+ and x- both count) or 'positive' (only x+ counts), "
                         f"got {inputs!r}")
    return inputs


class Gamma(LinearRule):
    """LRP-gamma: favour contributions that agree with the output's sign by adding gamma times them.

    Positive outputs use w + gamma w+ on positive inputs and w + gamma w- on negative inputs; negative outputs
    the opposite, so negative inputs (e.g. after a leaky activation) are handled too. With non-negative inputs
    this is Montavon et al.'s gamma rule. ``signed=False`` uses w + gamma w+ (bias b + gamma b+) for every input
    and output whatever their signs, the formula as Montavon et al. write it and as explainiverse computes it.

    Args:
        gamma: How much the contributions that agree with the output's sign are boosted (0: LRP-0).
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
        zero_bias: Leave the bias out of the contributions (it then takes no relevance).
        signed: Treat negative inputs and outputs by their signs (see above); False: w + gamma w+ everywhere.

    Raises:
        TypeError: for a parameter of the wrong type.
        ValueError: for a negative gamma or stabilizer.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_bias: bool = False, signed: bool = True):
        self.gamma = number("gamma", gamma, minimum=0)
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = flag("zero_bias", zero_bias)
        self.signed = flag("signed", signed)

    def groups(self):
        if not self.signed:
            return (Group((Term("x", _boost(self.gamma, positive)),)),)
        up, down = _boost(self.gamma, positive), _boost(self.gamma, negative)
        return (
            Group((Term("x+", up), Term("x-", down, bias=False)), where="positive"),
            Group((Term("x+", down), Term("x-", up, bias=False)), where="negative"),
        )


class AlphaBeta(LinearRule):
    """LRP-alpha-beta (Bach et al. 2015, eq. 60): positive and negative contributions normalised separately.

    Each bias is counted once, in the part its sign belongs to. alpha - beta = 1 keeps relevance conserved.
    ``conserve_one_sided=True`` is Pytorch-LRP's treatment of "rare neurons": an output whose contributions all have
    one sign (the other part is exactly zero) hands all its relevance to the part that exists, instead of alpha
    times it (all positive) or -beta times it (all negative); the stabilizer then acts on alpha z+ (or -beta z-).
    ``inputs="positive"`` counts only the positive part of the inputs (x+ w+ and x+ w-, explainiverse's
    convention); the default "signed" also counts negative inputs (x- w- is positive, x- w+ negative), as zennit.

    Args:
        alpha: The weight of the positive contributions.
        beta: The weight of the negative contributions; alpha - beta must be 1.
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
        zero_bias: Leave the bias out of the contributions (it then takes no relevance).
        conserve_one_sided: Hand all relevance of a one-sided output to the part that exists (see above).
        inputs: "signed" or "positive" (see above).

    Raises:
        ValueError: when alpha - beta is not 1, or for another inputs value.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False,
                 conserve_one_sided: bool = False, inputs: str = "signed"):
        alpha, beta = number("alpha", alpha, minimum=0), number("beta", beta, minimum=0)
        if abs(alpha - beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1 for relevance to be conserved, got alpha={alpha}, beta={beta}")
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = flag("zero_bias", zero_bias)
        self.conserve_one_sided = flag("conserve_one_sided", conserve_one_sided)
        self.inputs = _check_inputs(inputs)

    def groups(self):
        if self.inputs == "positive":
            return (Group((Term("x+", positive),), coefficient=self.alpha),
                    Group((Term("x+", negative),), coefficient=-self.beta))
        return (
            Group((Term("x+", positive), Term("x-", negative, bias=False)), coefficient=self.alpha),
            Group((Term("x+", negative), Term("x-", positive, bias=False)), coefficient=-self.beta),
        )


class ZPlus(LinearRule):
    """LRP-z+: only positive contributions (x+ w+ and x- w-) carry relevance; alpha=1, beta=0.

    ``inputs="positive"``: only x+ w+ (and b+), explainiverse's z+; negative inputs then get no relevance.

    Args:
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
        zero_bias: Leave the bias out of the contributions (it then takes no relevance).
        inputs: "signed" or "positive" (see above).
    """

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False, inputs: str = "signed"):
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = flag("zero_bias", zero_bias)
        self.inputs = _check_inputs(inputs)

    def groups(self):
        if self.inputs == "positive":
            return (Group((Term("x+", positive),)),)
        return (Group((Term("x+", positive), Term("x-", negative, bias=False))),)


class ZBox(LinearRule):
    """LRP-z^B for bounded inputs (pixels): z_ij = x_i w_ij - low_i w+_ij - high_i w-_ij.

    ``low`` and ``high`` are the smallest and largest possible input values: scalars or tensors broadcastable to
    one input sample (e.g. shape (3, 1, 1) for per-channel image bounds).

    Args:
        low: The smallest possible input value: a number or a tensor broadcastable to one sample.
        high: The largest possible input value, likewise.
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.

    Raises:
        ValueError: when low exceeds high anywhere or their shapes do not broadcast.

    Example:
        >>> import torch
        >>> from relprop import rules
        >>> mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
        >>> box = rules.ZBox(low=((0 - mean) / std).view(3, 1, 1), high=((1 - mean) / std).view(3, 1, 1))
        >>> box.name
        'ZBox'
    """

    def __init__(self, low=-3.0, high=3.0, stabilizer: float = 1e-6):
        self.low, self.high = bound("low", low), bound("high", high)
        try:
            inverted = bool((torch.as_tensor(self.low) > torch.as_tensor(self.high)).any())
        except RuntimeError:
            raise ValueError(f"low {tuple(torch.as_tensor(low).shape)} and high {tuple(torch.as_tensor(high).shape)} "
                             "must broadcast to one shape (e.g. per-channel (3, 1, 1))") from None
        if inverted:
            raise ValueError(f"z^B bounds need low <= high, got low={low!r}, high={high!r}; low is the smallest "
                             "input value, high the largest")
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = True

    def parameters(self):
        return {"low": self.low, "high": self.high, "stabilizer": self.stabilizer}

    def term_input(self, kind, x):
        if kind in ("low", "high"):
            bound = self.low if kind == "low" else self.high
            return torch.broadcast_to(torch.as_tensor(bound, dtype=x.dtype, device=x.device), x.shape)
        return super().term_input(kind, x)

    def groups(self):
        return (
            Group(
                (
                    Term("x", keep, bias=False),
                    Term("low", positive, bias=False, sign=-1.0),
                    Term("high", negative, bias=False, sign=-1.0),
                )
            ),
        )


class Flat(LinearRule):
    """LRP-flat: each output's relevance spread evenly over the inputs it sees, whatever their values.

    Args:
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = True

    def groups(self):
        return (Group((Term("ones", ones, bias=False),)),)


class WSquare(LinearRule):
    """LRP-w^2: relevance spread in proportion to squared weights, whatever the input values.

    Args:
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = True

    def groups(self):
        return (Group((Term("ones", square, bias=False),)),)


class Exponent(LinearRule):
    """The e-rule of Pytorch-LRP's RelevancePropagator: inputs and weights raised to the power p, bias left out.

    R_i = sum_j x_i^p w_ij^p / (sum_i x_i^p w_ij^p + eps) R_j; p=1 is LRP-epsilon without bias. Meant for
    non-negative inputs or integer p (a negative number to a fractional power is NaN).

    Args:
        p: The power inputs and weights are raised to.
        epsilon: Added to every denominator with its sign (zero counts as positive), so none is zero.
    """

    def __init__(self, p: float = 1.0, epsilon: float = 1e-6):
        self.p = number("p", p)
        self.epsilon = number("epsilon", epsilon, minimum=0)
        self.zero_bias = True

    @property
    def stabilizer(self):
        """The stabilizer of the denominators: epsilon."""
        return self.epsilon

    def groups(self):
        p = self.p
        return (Group((Term("pow", lambda weight: weight.pow(p), bias=False),)),)

    def term_input(self, kind, x):
        return x.pow(self.p) if kind == "pow" else super().term_input(kind, x)


class Norm(LinearRule):
    """LRP-0 with only a tiny stabilizer, for parameter-free linear maps (sums, average pooling).

    Args:
        stabilizer: Added to every denominator with its sign (zero counts as positive), so none is zero.
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)
        self.zero_bias = True

    def groups(self):
        return PLAIN_CONTRIBUTIONS


class Pass(Rule):
    """Relevance passes through unchanged (output and input have the same shape): used for activations."""


class Gradient(Rule):
    """Plain gradient x input through the op: exact LRP-0 for linear maps, winner-take-all for max."""

    is_gradient = True


# ---- pooling: how a window's relevance reaches its inputs (max, average and min pooling) ---------------------------
class WinnerTakeAll(Rule):
    """Pooling: each window's relevance goes to the input that won it (the max; the min for min-pooling)."""


class SmoothMax(Rule):
    """Pooling: each window's relevance spread over its inputs in proportion to their values, R_i = x_i R / sum x.

    What average pooling's LRP-0 does, for max-pooling; the stabilizer is added to the window's sum (sign kept).

    Args:
        stabilizer: Added to each window's sum with its sign.
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = number("stabilizer", stabilizer, minimum=0)


class SoftMin(Rule):
    """Min-pooling over competitors (neuralized k-means): relevance shared in proportion to exp(-beta s_k).

    Kauffmann et al. (2022): beta is the stiffness; beta -> infinity gives the winner (the min) all, beta = 0
    shares evenly.

    Args:
        beta: The stiffness, at least 0.
    """

    def __init__(self, beta: float = 1.0):
        self.beta = number("beta", beta, minimum=0)


class Midpoint(Rule):
    """Linear cluster discriminants w_ck.x + b_ck: LRP with the root point at the midpoint m_ck = (mu_c + mu_k) / 2,
    R_i = sum_k (x - m_ck)_i w_ck,i R_ck / h_ck (Kauffmann et al. 2022); conserves exactly, the bias included."""


_RULES = {
    "zero": Zero,
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha_beta": AlphaBeta,
    "z_plus": ZPlus,
    "z_box": ZBox,
    "flat": Flat,
    "w_square": WSquare,
    "exponent": Exponent,
    "norm": Norm,
    "pass": Pass,
    "gradient": Gradient,
    "winner_take_all": WinnerTakeAll,
    "smooth_max": SmoothMax,
    "soft_min": SoftMin,
    "midpoint": Midpoint,
}


def names() -> list[str]:
    """Names accepted by :func:`get`.

    Returns:
        The sorted rule names.
    """
    return sorted(_RULES)


def get(name: str, **params) -> Rule:
    """A rule by name, e.g. ``get("epsilon", epsilon=0.25)``.

    Args:
        name: A rule name (see names()), or a Rule, returned as it is.
        **params: The rule's parameters.

    Returns:
        The rule.

    Raises:
        TypeError: when name is neither a name nor a Rule.
        ValueError: for an unknown name (with the closest one), or parameters given with a Rule object.

    Example:
        >>> from relprop import rules
        >>> rules.get("gamma", gamma=0.5)
        Gamma(gamma=0.5, stabilizer=1e-06, zero_bias=False, signed=True)
    """
    if isinstance(name, Rule):
        if params:
            raise ValueError("parameters can only be given with a rule name, not with a Rule object")
        return name
    if not isinstance(name, str):
        raise TypeError(f"a rule is a relprop.rules object or a rule's name, got {name!r} ({type(name).__name__})")
    try:
        cls = _RULES[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown rule {name!r}{hint}; choose one of {', '.join(names())}") from None
    return cls(**params)


def describe() -> list[tuple[str, str, str]]:
    """(name, parameters with defaults, one-line summary) for each rule, for listings.

    Returns:
        A list of (name, signature, summary) tuples.
    """
    import inspect

    rows = []
    for key in names():
        cls = _RULES[key]
        signature = str(inspect.signature(cls))  # the class's: () for rules without parameters
        rows.append((key, signature, (cls.__doc__ or "").strip().splitlines()[0]))
    return rows


__all__ = [
    "Rule", "LinearRule", "Term", "Group", "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "Flat",
    "WSquare", "Exponent", "Norm", "Pass", "Gradient", "WinnerTakeAll", "SmoothMax", "SoftMin", "Midpoint", "names",
    "get", "describe", "keep", "positive", "negative", "ones", "square",
]
