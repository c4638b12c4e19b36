"""Composites: which rule each layer gets.

A composite maps a layer *site* (its kind, module, qualified name and position) to a rule. Precedence, highest
first: ``name_map`` (qualified module name, exact or glob such as ``"features.*"``) > ``index_map`` / ``first``
(position among linear-like layers in execution order, 0 = the first one run) > ``layer_map`` (module type, or an
op kind: ``"linear"``, ``"conv"`` (includes transposed), ``"conv_transpose"``, ``"avg_pool"``) > the default,
which is the plain gradient (LRP-0 for linear maps). Ops that are not linear-like (activations, sums, products,
norms) follow the engine's default op rules. Max-pooling (``"max_pool"``) and the cluster modules of
relprop.neuralize (``"min_pool"``, ``"discriminant"``) take only a rule mapped to them by kind, module type or exact
module name (see EXPLICIT_KINDS); a rule they cannot use is refused by name, never ignored.
A rule is given as a ``relprop.rules`` object, or by its name (``"epsilon"``, ``"flat"``:
``relprop.rules.names()``) for its default parameters.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from . import rules
from .rules import Rule

KINDS = ("linear", "conv", "conv_transpose", "avg_pool", "max_pool", "min_pool", "discriminant")
# Sites that take a rule only when it is mapped to them (by their kind, or by the type or exact name of their own
# module): the default and name globs are meant for linear-like layers, and a preset's conv rule there would
# change max-pooling's winner-take-all or be refused.
EXPLICIT_KINDS: dict[str, tuple[type, ...]] = {"max_pool": (torch.nn.modules.pooling._MaxPoolNd,
                                                            torch.nn.modules.pooling._AdaptiveMaxPoolNd),
                                               # sites made for a relprop.neuralize module, which is their own
                                               "min_pool": (torch.nn.Module,), "discriminant": (torch.nn.Module,)}


@dataclass(frozen=True)
class Site:
    """Where a linear-like op runs.

    Attributes:
        kind: One of KINDS.
        op: The torch function's name, e.g. "torch.nn.functional.conv2d".
        module: The innermost module running when the op ran.
        name: Its qualified name ("" for the root model).
        index: Its position among linear-like ops in execution order; -1 for pooling and cluster sites.
    """

    kind: str  # one of KINDS
    op: str  # torch function name, e.g. "torch.nn.functional.conv2d"
    module: torch.nn.Module | None  # innermost module running when the op ran
    name: str  # its qualified name ("" for the root model)
    index: int  # position among linear-like ops in execution order; -1 for pooling and cluster sites


def _matches_kind(key: str, kind: str) -> bool:
    return key == kind or (key == "conv" and kind == "conv_transpose")


class Composite:
    """Rules by name, position and layer type; see the module docstring for precedence.

    Args:
        layer_map: Rules by module type (e.g. torch.nn.Conv2d) or kind name ("linear", "conv", "conv_transpose",
            "avg_pool", "max_pool", "min_pool", "discriminant").
        name_map: Rules by qualified module name, exact or a glob such as "features.*".
        index_map: Rules by position among linear-like layers in execution order (0: the first one run).
        first: The rule of the first linear-like layer (index 0), unless index_map names it.
        default: The rule of every other linear-like layer; None: the plain gradient (LRP-0).

    Raises:
        TypeError: for keys of the wrong type or a rule that is neither a Rule nor a rule name.
        ValueError: for an unknown kind or rule name.

    Example:
        >>> import torch
        >>> from relprop import composites, rules
        >>> composite = composites.Composite(layer_map={torch.nn.Conv2d: rules.Gamma(0.25)}, first="flat",
        ...                                  default=rules.Epsilon(1e-3))
        >>> composite.index_map[0]
        Flat(stabilizer=1e-06, zero_bias=True)
    """

    # Ops without rules of their own follow the engine's defaults, with two choices a composite makes:
    softmax = "gradient"  # softmax by its gradient x input (AttnLRP), or "constant": attention weights get none
    gates = "sigmoid"  # in a product of activations, which factors are gates (constants, no relevance): outputs of
    # sigmoids, or "activation": outputs of any element-wise activation (the SiLU branch of a gated MLP)

    def __init__(
        self,
        layer_map: Mapping[Any, Rule | str] | None = None,
        name_map: Mapping[str, Rule | str] | None = None,
        index_map: Mapping[int, Rule | str] | None = None,
        first: Rule | str | None = None,
        default: Rule | str | None = None,
    ):
        self.layer_map = dict(layer_map or {})
        self.name_map = dict(name_map or {})
        self.index_map = dict(index_map or {})
        for key in self.name_map:
            if not isinstance(key, str):
                raise TypeError(f"name_map keys are qualified module names (str) or globs, got {key!r}")
        for key in self.index_map:
            if isinstance(key, bool) or not isinstance(key, numbers.Integral):
                raise TypeError(f"index_map keys are positions among linear-like layers (int), got {key!r}")
        self.index_map = {int(key): rule for key, rule in self.index_map.items()}
        self.given = (tuple(self.name_map), tuple(self.index_map))  # the keys a user named (warned if unmatched)
        for key in self.layer_map:
            if isinstance(key, str) and key not in KINDS:
                raise ValueError(f"unknown layer kind {key!r} in layer_map; use a module type or one of {KINDS}")
            if not isinstance(key, (str, type)):
                raise TypeError(f"layer_map keys are module types or kind names, got {key!r}")
        for where, mapping in (("layer_map", self.layer_map), ("name_map", self.name_map),
                               ("index_map", self.index_map)):
            for key, rule in mapping.items():
                mapping[key] = _rule(rule, f"{where}[{getattr(key, '__name__', key)!r}]")
        if first is not None:
            self.index_map.setdefault(0, _rule(first, "first"))
        self.default = None if default is None else _rule(default, "default")

    def rule_for(self, site: Site) -> Rule | None:
        """The rule for a site, by the precedence of the module docstring.

        Args:
            site: Where the op runs.

        Returns:
            The rule, or None for the engine's default.
        """
        if site.kind in EXPLICIT_KINDS:
            return self._mapped_rule_for(site)
        if site.name in self.name_map:
            return self.name_map[site.name]
        for pattern, rule in self.name_map.items():
            if fnmatch.fnmatchcase(site.name, pattern):
                return rule
        if site.index in self.index_map and site.index >= 0:
            return self.index_map[site.index]
        for key, rule in self.layer_map.items():
            if isinstance(key, type):
                if isinstance(site.module, key):
                    return rule
            elif _matches_kind(key, site.kind):
                return rule
        return self.default

    def _mapped_rule_for(self, site: Site) -> Rule | None:
        """The rule mapped to an explicit-kind site by its kind, or by its own module's exact name or type."""
        own = isinstance(site.module, EXPLICIT_KINDS[site.kind])
        if own and site.name in self.name_map:
            return self.name_map[site.name]
        for key, rule in self.layer_map.items():
            if key == site.kind or (own and isinstance(key, type) and isinstance(site.module, key)):
                return rule
        return None

    def summary(self) -> dict:
        """Name and parameters of this composite, as recorded on each Explanation (parameters where known).

        Returns:
            A dict with the composite's name and parameters.
        """
        names = [key for key, factory in _REGISTRY.items() if factory is type(self)]
        return {"name": getattr(self, "label", names[0] if names else type(self).__name__),
                "parameters": dict(getattr(self, "parameters", {}))}

    def __repr__(self):
        return (f"{type(self).__name__}(layer_map={self.layer_map}, name_map={self.name_map}, "
                f"index_map={self.index_map}, default={self.default})")


def _rule(rule, where: str) -> Rule:
    """A rule given to a composite: a Rule, or a rule's name (``relprop.rules.names()``) with its defaults."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        try:
            return rules.get(rule)
        except ValueError as error:
            raise ValueError(f"composite {where}: {error}") from None
    made = " (a rule class: pass an instance, e.g. rules.Epsilon())" if isinstance(rule, type) else ""
    raise TypeError(f"composite {where}: a composite maps layers to rules, a relprop.rules object such as "
                    f"rules.Epsilon(0.25) or a rule's name such as 'epsilon'; got {rule!r}{made}")


def _extend(own: Mapping | None, base: Mapping) -> dict:
    merged = dict(own or {})  # user entries first: they take precedence over the composite's own
    for key, value in base.items():
        merged.setdefault(key, value)
    return merged


class Epsilon(Composite):
    """LRP-epsilon on every linear and convolutional layer.

    Args:
        epsilon: The epsilon of every linear-like layer.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False, layer_map=None, name_map=None, index_map=None):
        rule = rules.Epsilon(epsilon, zero_bias=zero_bias)
        super().__init__(_extend(layer_map, {"linear": rule, "conv": rule}), name_map, index_map)


class EpsilonPlus(Composite):
    """z+ on convolutions, epsilon on dense layers.

    Args:
        epsilon: The epsilon of the dense layers' rule.
        stabilizer: The stabilizer of the convolutions' rule.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False,
                 layer_map=None, name_map=None, index_map=None):
        base = {"conv": rules.ZPlus(stabilizer, zero_bias=zero_bias),
                "linear": rules.Epsilon(epsilon, zero_bias=zero_bias)}
        super().__init__(_extend(layer_map, base), name_map, index_map)


class EpsilonPlusFlat(Composite):
    """EpsilonPlus, with the flat rule on the first linear-like layer.

    Args:
        epsilon: The epsilon of the dense layers' rule.
        stabilizer: The stabilizer of the convolutions' rule.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False,
                 layer_map=None, name_map=None, index_map=None):
        base = {"conv": rules.ZPlus(stabilizer, zero_bias=zero_bias),
                "linear": rules.Epsilon(epsilon, zero_bias=zero_bias)}
        super().__init__(_extend(layer_map, base), name_map, index_map, first=rules.Flat(stabilizer))


class EpsilonGammaBox(Composite):
    """gamma on convolutions, epsilon on dense layers, z^B with input bounds [low, high] on the first layer.

    Args:
        low: The smallest input value (a number or a tensor broadcastable to one sample), for z^B.
        high: The largest input value, likewise.
        epsilon: The epsilon of the dense layers' rule.
        gamma: The gamma of the convolutions.
        stabilizer: The stabilizer of the gamma and z^B rules.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, low=-3.0, high=3.0, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6,
                 zero_bias: bool = False, layer_map=None, name_map=None, index_map=None):
        base = {"conv": rules.Gamma(gamma, stabilizer, zero_bias=zero_bias),
                "linear": rules.Epsilon(epsilon, zero_bias=zero_bias)}
        super().__init__(_extend(layer_map, base), name_map, index_map, first=rules.ZBox(low, high, stabilizer))


class EpsilonAlpha2Beta1(Composite):
    """alpha=2, beta=1 on convolutions, epsilon on dense layers.

    Args:
        epsilon: The epsilon of the dense layers' rule.
        stabilizer: The stabilizer of the convolutions' rule.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False,
                 layer_map=None, name_map=None, index_map=None):
        base = {"conv": rules.AlphaBeta(2.0, 1.0, stabilizer, zero_bias=zero_bias),
                "linear": rules.Epsilon(epsilon, zero_bias=zero_bias)}
        super().__init__(_extend(layer_map, base), name_map, index_map)


class EpsilonAlpha2Beta1Flat(Composite):
    """EpsilonAlpha2Beta1, with the flat rule on the first linear-like layer.

    Args:
        epsilon: The epsilon of the dense layers' rule.
        stabilizer: The stabilizer of the convolutions' rule.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, zero_bias: bool = False,
                 layer_map=None, name_map=None, index_map=None):
        base = {"conv": rules.AlphaBeta(2.0, 1.0, stabilizer, zero_bias=zero_bias),
                "linear": rules.Epsilon(epsilon, zero_bias=zero_bias)}
        super().__init__(_extend(layer_map, base), name_map, index_map, first=rules.Flat(stabilizer))


class AttnLRP(Composite):
    """AttnLRP (Achtibat et al. 2024) for transformers: softmax by its gradient x input, products of activations split
    uniformly, norms and element-wise activations pass relevance through (std as a constant).

    Linear layers: LRP-0 by default, which is their plain gradient, as the authors' efficient implementation (LXT)
    computes it; epsilon > 0 gives the epsilon rule, gamma the gamma rule (stabilised by epsilon, or 1e-6).

    Args:
        epsilon: 0 (LRP-0) or the epsilon of the linear layers' rule.
        gamma: With a value, the gamma rule on linear layers.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    softmax = "gradient"

    def __init__(self, epsilon: float = 0.0, gamma: float | None = None, zero_bias: bool = False,
                 layer_map=None, name_map=None, index_map=None):
        if gamma is not None:
            rule = rules.Gamma(gamma, stabilizer=epsilon or 1e-6, zero_bias=zero_bias)
        elif epsilon == 0:
            rule = rules.Zero(zero_bias=zero_bias)
        else:
            rule = rules.Epsilon(epsilon, zero_bias=zero_bias)
        super().__init__(_extend(layer_map, {"linear": rule, "conv": rule}), name_map, index_map)


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al. 2022): AttnLRP's rules, but attention weights and gates are constants: relevance flows
    through the values only, in a gated MLP through the ungated branch only (as LXT does), and is conserved exactly
    when biases are zero.

    Args:
        epsilon: 0 (LRP-0) or the epsilon of the linear layers' rule.
        gamma: With a value, the gamma rule on linear layers.
        zero_bias: Leave biases out of the contributions.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    softmax = "constant"
    gates = "activation"


class PytorchLRP(Composite):
    """Pytorch-LRP's RelevancePropagator(lrp_exponent, beta, method, epsilon) on linear and convolutional layers.

    "e-rule": inputs and weights raised to lrp_exponent, biases left out (rules.Exponent); "b-rule": alpha-beta with
    alpha = 1 + beta, biases left out, one-sided outputs conserved (rules.AlphaBeta(conserve_one_sided=True)).
    Max-pooling (non-overlapping windows), ReLU, dropout and flattening follow relprop's defaults, which equal its
    own; its batch norm passes relevance through unchanged, which relprop does not offer. A softmax or
    log-softmax at the output starts relevance at the target's probability there, not its logit: pass
    ``target=lambda logits: torch.softmax(logits, 1) * one_hot`` for its numbers (docs/coming-from.md).

    Args:
        lrp_exponent: The e-rule's power.
        beta: The b-rule's beta (alpha = 1 + beta).
        method: "e-rule" or "b-rule".
        epsilon: The stabilizer of either rule.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.

    Raises:
        ValueError: for another method, or a negative beta with the b-rule.
    """

    METHODS = ("e-rule", "b-rule")

    def __init__(self, lrp_exponent: float = 1.0, beta: float = 0.5, method: str = "e-rule", epsilon: float = 1e-6,
                 layer_map=None, name_map=None, index_map=None):
        if method == "e-rule":
            rule = rules.Exponent(lrp_exponent, epsilon)
        elif method == "b-rule":
            if beta < 0:
                raise ValueError(f"beta must be >= 0 for the b-rule, got {beta} (Pytorch-LRP's beta=-1 keeps only "
                                 "negative contributions, which relprop does not offer)")
            rule = rules.AlphaBeta(1.0 + beta, beta, epsilon, zero_bias=True, conserve_one_sided=True)
        else:
            raise ValueError(f"unknown method {method!r}; Pytorch-LRP's methods are {self.METHODS}")
        super().__init__(_extend(layer_map, {"linear": rule, "conv": rule}), name_map, index_map)


class Explainiverse(Composite):
    """explainiverse's LRPExplainer(rule, epsilon, gamma, alpha, beta), with set_composite_rule's layer_rules.

    Its rules in relprop's terms, each stabilised by its epsilon: "epsilon" is Epsilon; "gamma" Gamma(signed=False)
    (w + gamma w+ and b + gamma b+ whatever the signs); "z_plus" ZPlus(inputs="positive") (x+ w+ and b+ only);
    "alpha_beta" AlphaBeta(inputs="positive") on dense layers and epsilon on convolutions (explainiverse's own
    fallback). "composite" takes layer_rules {position in the top-level nn.Sequential, activations counted: rule}
    and gives epsilon to the other layers.

    Args:
        rule: One of RULES.
        epsilon: The stabilizer of every rule.
        gamma: The gamma rule's gamma.
        alpha: The alpha-beta rule's alpha.
        beta: Its beta.
        layer_rules: With rule="composite": position in the top-level nn.Sequential -> rule name.

    Raises:
        ValueError: for an unknown rule name, or layer_rules without rule="composite".
    """

    RULES = ("epsilon", "gamma", "alpha_beta", "z_plus", "composite")

    def __init__(self, rule: str = "epsilon", epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0,
                 beta: float = 1.0, layer_rules: Mapping[int, str] | None = None):
        for name in [rule, *(layer_rules or {}).values()]:
            if name not in self.RULES:
                raise ValueError(f"unknown explainiverse rule {name!r}; choose one of {', '.join(self.RULES)}")
        if layer_rules and rule != "composite":
            raise ValueError(f"layer_rules apply to rule='composite' only, got rule={rule!r}")
        self.rule = rule
        self.layer_rules = {int(index): name for index, name in (layer_rules or {}).items()}
        self.by_name = {"epsilon": rules.Epsilon(epsilon), "gamma": rules.Gamma(gamma, epsilon, signed=False),
                      "z_plus": rules.ZPlus(epsilon, inputs="positive")}
        if rule == "alpha_beta" or "alpha_beta" in self.layer_rules.values():
            self.by_name["alpha_beta"] = rules.AlphaBeta(alpha, beta, epsilon, inputs="positive")
        super().__init__()

    def rule_for(self, site: Site) -> Rule | None:
        """The rule for a site, by explainiverse's conventions (see the class).

        Args:
            site: Where the op runs.

        Returns:
            The rule, or None.
        """
        if site.kind not in ("linear", "conv"):
            return None  # explainiverse knows no other linear-like layer with a rule (pooling: see the guide)
        name = self.rule
        if name == "composite":
            position = int(site.name) if site.name.isdigit() else None
            name = self.layer_rules.get(position, "epsilon")
        if name == "alpha_beta" and site.kind == "conv":
            name = "epsilon"
        return self.by_name.get(name, self.by_name["epsilon"])  # "composite" as one layer's rule is epsilon there

    def __repr__(self):
        return f"Explainiverse(rule={self.rule!r}, layer_rules={self.layer_rules}, rules={self.by_name})"


class Neon(Composite):
    """NEON (Kauffmann et al. 2022) for relprop.neuralize's k-means: soft-min over competitors with stiffness beta,
    the midpoint rule on the discriminants; a feature extractor below gets epsilon_plus's rules.

    beta > 0: beta -> infinity gives each f_c's relevance to its nearest competitor, beta = 0 shares it evenly.

    Args:
        beta: The soft-min's stiffness.
        epsilon: The epsilon of dense layers below.
        stabilizer: The z+ stabilizer of convolutions below.
        layer_map: More rules by module type or kind, taking precedence over the composite's own.
        name_map: Rules by qualified module name (exact or glob).
        index_map: Rules by position among the linear-like layers in execution order.
    """

    def __init__(self, beta: float = 1.0, epsilon: float = 1e-6, stabilizer: float = 1e-6, layer_map=None,
                 name_map=None, index_map=None):
        base = {"min_pool": rules.SoftMin(beta), "discriminant": rules.Midpoint(),
                "conv": rules.ZPlus(stabilizer), "linear": rules.Epsilon(epsilon)}
        super().__init__(_extend(layer_map, base), name_map, index_map)


_REGISTRY = {
    "attnlrp": AttnLRP,
    "cp_lrp": CPLRP,
    "epsilon": Epsilon,
    "epsilon_plus": EpsilonPlus,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "explainiverse": Explainiverse,
    "neon": Neon,
    "pytorch_lrp": PytorchLRP,
}
# Other libraries' conventions, there to reproduce their numbers (docs/coming-from.md), and neon, which differs from
# epsilon_plus only on neuralized k-means: compare() leaves them out unless asked for by name.
PRESETS = ("explainiverse", "pytorch_lrp", "neon")


class Auto(Composite):
    """The default: epsilon_plus_flat when the first linear-like layer run is a convolution (images), epsilon when
    it is dense (tables, embeddings), chosen afresh in each run; the flat and z^B first-layer rules ignore input
    values, which suits pixels but gives every feature of a table row the same relevance.

    Args:
        **params: Parameters of both choices (epsilon, zero_bias, ...), each given only the ones it takes.
    """

    def __init__(self, **params):
        super().__init__()
        dense = set(inspect.signature(Epsilon).parameters)
        self.choices = {"conv": get("epsilon_plus_flat", **params),
                        "linear": get("epsilon", **{k: v for k, v in params.items() if k in dense})}
        self._choose("conv", "no linear-like layer has run yet")  # until a run shows its first linear-like layer

    def _choose(self, kind: str, why: str):
        self.chosen, self.why = kind, why
        chosen = self.choices[kind]  # its maps are this composite's for as long as it is chosen
        self.layer_map, self.name_map, self.index_map = chosen.layer_map, chosen.name_map, chosen.index_map
        self.given = chosen.given

    def rule_for(self, site: Site) -> Rule | None:
        """The rule for a site, choosing the composite at the first linear-like layer of each run.

        Args:
            site: Where the op runs.

        Returns:
            The rule, or None.
        """
        if site.index == 0:
            kind = "linear" if site.kind == "linear" else "conv"
            shape = "dense" if kind == "linear" else "a convolution"
            self._choose(kind, f"the first linear-like layer run ({site.name or site.op}) is {shape}")
        return self.choices[self.chosen].rule_for(site)

    def summary(self) -> dict:
        """The chosen composite's summary, with why it was chosen.

        Returns:
            A dict.
        """
        return dict(self.choices[self.chosen].summary(), chosen=f"by default: {self.why}")


# Rules that ignore the input's values (flat, w^2, z^B): at the first layer they only make sense for images.
IMAGE_FIRST_RULES = (rules.Flat, rules.WSquare, rules.ZBox)


def suits_dense_input(composite: Composite) -> bool:
    """Whether a composite's first-layer rule reads input values (not flat, w^2 or z^B), as table rows need.

    Args:
        composite: The composite.

    Returns:
        True or False.
    """
    return not isinstance(composite.index_map.get(0), IMAGE_FIRST_RULES)


def names() -> list[str]:
    """Names accepted by :func:`get` and by ``composite=`` wherever a composite is taken.

    Returns:
        The sorted names ("auto" is accepted as well).
    """
    return sorted(_REGISTRY)


def register(name: str, factory) -> None:
    """Make a composite class (or factory) available by name.

    Args:
        name: The name.
        factory: A Composite subclass, or a function of keyword parameters returning a Composite.
    """
    _REGISTRY[name] = factory


def get(name, **params) -> Composite:
    """A composite by name with its parameters, e.g. ``get("epsilon_gamma_box", low=0.0, high=1.0)``.

    Args:
        name: A name (see names(), or "auto"), or a Composite, returned as it is.
        **params: The composite's parameters.

    Returns:
        The composite.

    Raises:
        TypeError: when name is neither, or for a parameter the composite does not have (with the closest one).
        ValueError: for an unknown name, or parameters given with a Composite object.
    """
    if isinstance(name, Composite):
        if params:
            raise ValueError("parameters can only be given with a composite name, not with a Composite object")
        return name
    if not isinstance(name, str):
        raise TypeError(f"composite must be a name or a relprop.composites.Composite, got {type(name).__name__}")
    if name == "auto":
        return Auto(**params)
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown composite {name!r}; choose one of auto, {', '.join(names())}") from None
    accepted = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, list(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"composite {name} has no parameter {key!r}{hint}; its parameters: "
                                f"{', '.join(accepted)}")
    composite = factory(**params)
    composite.label = name
    defaults = {key: p.default for key, p in accepted.items() if p.default is not p.empty}
    composite.parameters = {key: _plain(value) for key, value in {**defaults, **params}.items()
                            if key not in ("layer_map", "name_map", "index_map") or value}
    return composite


def _plain(value):
    """A parameter as a plain value (numbers, strings, bools, None), anything else by its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)


def describe() -> list[tuple[str, str, str]]:
    """(name, parameters with defaults, one-line summary) for each registered composite.

    Returns:
        A list of (name, signature, summary) tuples.
    """
    import inspect

    rows = []
    for key in names():
        factory = _REGISTRY[key]
        signature = str(inspect.signature(factory)).replace("self, ", "")
        rows.append((key, signature, (factory.__doc__ or "").strip().splitlines()[0]))
    return rows
