"""The attribution family users compare LRP against; each returns a relprop.Explanation, as LRP does."""
from .deeplift import DeepLift, DeepLiftShap
from .gradient import (Deconvnet, ExcitationBackprop, Gradient, GradientXInput, GuidedBackprop, IntegratedGradients,
                       SmoothGrad)
from .occlusion import Occlusion

# The methods by the names the command line and relprop run use (LRP itself is "lrp"), and the parameters they get
# by name where the class has no default (occlusion's window).
BY_NAME = {"gradient": Gradient, "gradient_x_input": GradientXInput, "smoothgrad": SmoothGrad,
           "integrated_gradients": IntegratedGradients, "occlusion": Occlusion, "guided_backprop": GuidedBackprop,
           "deconvnet": Deconvnet, "excitation_backprop": ExcitationBackprop, "deeplift": DeepLift}
DEFAULTS_BY_NAME = {"occlusion": {"window": (8, 8)}}

__all__ = ["BY_NAME", "DEFAULTS_BY_NAME", "Gradient", "GradientXInput", "SmoothGrad", "IntegratedGradients", "GuidedBackprop", "Deconvnet",
           "ExcitationBackprop", "Occlusion", "DeepLift", "DeepLiftShap"]
