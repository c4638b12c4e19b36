"""The attribution family users compare LRP against; each returns a relprop.Explanation, as LRP does.

The methods by name (``lrp`` and each of these, with their defaults and parameters) are in
:mod:`relprop.attribution.registry`.
"""
from . import registry
from .deeplift import DeepLift, DeepLiftShap
from .gradient import (Deconvnet, ExcitationBackprop, Gradient, GradientXInput, GuidedBackprop, IntegratedGradients,
                       SmoothGrad)
from .occlusion import Occlusion

# The classes of the methods besides LRP by their names (a view of the registry, which also holds their defaults)
BY_NAME = {name: registry.get(name).constructor for name in registry.names(lrp=False)}

__all__ = ["BY_NAME", "registry", "Gradient", "GradientXInput", "SmoothGrad",
           "IntegratedGradients", "GuidedBackprop", "Deconvnet", "ExcitationBackprop", "Occlusion", "DeepLift",
           "DeepLiftShap"]
