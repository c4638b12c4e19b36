"""Products of two or more activations (gating, attention): relevance split uniformly among the factors.

Gradient x input over a product of k activation factors hands each factor the whole output relevance (Euler's
theorem for functions homogeneous of degree k), so k times too much in total; scaling the gradient reaching each
factor by 1/k splits it evenly. The scaling sits on the factors (views consumed by the product alone), so the
product's output stays an ordinary tensor that the model may change in place.
"""
import torch


class ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    return ScaleGradient.apply(x, factor)
