"""Tiny models and inputs for the relprop.evaluate tests: small enough for references written as plain loops."""
import numpy as np
import torch


def linear_rows(features=6, classes=3, seed=0):
    """A linear model on table rows, f(x) = W x + b with non-zero biases, in float64."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(features, classes).double().eval()
    with torch.no_grad():
        model.bias.normal_(0, 0.5)
    return model


def small_cnn(channels=3, size=8, classes=4, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * size * size, classes)).double().eval()
    with torch.no_grad():
        for module in model:
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.3)
    return model


def scores(model, inputs, target):
    """Plain numpy-side evaluation of the target's logit, one input at a time."""
    with torch.no_grad():
        return np.array([float(model(torch.as_tensor(row)[None])[0, t]) for row, t in zip(inputs, target)])
