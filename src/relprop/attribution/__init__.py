"""The attribution family users compare LRP against; each returns a relprop.Explanation, as LRP does."""
from .deeplift import DeepLift, DeepLiftShap
from .gradient import (Deconvnet, ExcitationBackprop, Gradient, GradientXInput, GuidedBackprop, IntegratedGradients,
                       SmoothGrad)
from .occlusion import Occlusion

__all__ = ["Gradient", "GradientXInput", "SmoothGrad", "IntegratedGradients", "GuidedBackprop", "Deconvnet",
           "ExcitationBackprop", "Occlusion", "DeepLift", "DeepLiftShap"]
