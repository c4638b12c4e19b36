"""Did the correction work? Measures of a model's dependence on an artifact, before and after (Reveal to Revise).

- clean accuracy: on samples as they are (the correction should keep it);
- poisoned accuracy: on samples of the other classes with the artifact pasted in (a model that learnt "artifact =>
  class" calls them that class);
- artifact sensitivity: per sample, logit_target(x with the artifact) - logit_target(x without it), on the same
  samples (the artifact added to clean samples, or removed from marked ones); its mean is what the artifact adds;
- artifact relevance: per sample, the share of positive relevance inside the artifact's mask,
  sum(R+ in mask) / sum(R+);
- TCAV score (Kim et al. 2018) along the CAV: the share of samples whose target logit grows when the layer's
  activation moves along the CAV (directional derivative > 0).
"""
from __future__ import annotations

import torch

from .cav import CAV, evaluating
from .clarc import directional_derivative


def _device(model):
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, classes) model outputs in batches, without gradients.

    Args:
        model: The classifier (left unchanged; run in eval mode).
        x: The inputs, samples first.
        batch_size: Samples per forward pass.

    Returns:
        (N, classes) float32 on the CPU.
    """
    device = _device(model)
    with torch.no_grad(), evaluating(model):
        return torch.cat([model(x[start:start + batch_size].to(device)).float().cpu()
                          for start in range(0, len(x), batch_size)])


def accuracy(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Share of samples whose predicted class is their label.

    Args:
        model: The classifier (left unchanged; run in eval mode).
        x: The inputs, samples first.
        labels: (N,) class labels.
        batch_size: Samples per forward pass.

    Returns:
        The share, in [0, 1].

    Raises:
        ValueError: for no samples.
    """
    if len(x) == 0:
        raise ValueError("no samples to measure accuracy on")
    return float((logits(model, x, batch_size).argmax(1) == torch.as_tensor(labels)).float().mean())


def paste(x: torch.Tensor, artifact: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with artifact where mask is set: x (1 - mask) + artifact mask (artifact and mask broadcast to x).

    Args:
        x: The inputs, samples first.
        artifact: The artifact's pixels (broadcast to x).
        mask: Where the artifact goes: 1 inside, 0 outside (broadcast to x).

    Returns:
        A new tensor shaped like x.

    Example:
        >>> import torch
        >>> from relprop.correct import paste
        >>> paste(torch.zeros(1, 1, 2, 2), 1.0, torch.tensor([[1.0, 0.0], [0.0, 0.0]])).flatten().tolist()
        [1.0, 0.0, 0.0, 0.0]
    """
    mask = torch.as_tensor(mask, dtype=x.dtype)
    return x * (1 - mask) + torch.as_tensor(artifact, dtype=x.dtype) * mask


def poisoned_accuracy(model, x: torch.Tensor, labels: torch.Tensor, artifact: torch.Tensor, mask: torch.Tensor,
                      artifact_class: int, batch_size: int = 256) -> float:
    """Accuracy on the samples not of artifact_class, with the artifact pasted in.

    Args:
        model: The classifier (left unchanged; run in eval mode).
        x: The inputs, samples first.
        labels: (N,) class labels.
        artifact: The artifact's pixels (broadcast to x).
        mask: Where the artifact goes: 1 inside, 0 outside (broadcast to x).
        artifact_class: The class the artifact stands for (its samples are left out).
        batch_size: Samples per forward pass.

    Returns:
        The share, in [0, 1].

    Raises:
        ValueError: when every sample is of artifact_class.
    """
    labels = torch.as_tensor(labels)
    others = labels != int(artifact_class)
    if not others.any():
        raise ValueError(f"every sample is of class {artifact_class}; poisoned accuracy needs samples of others")
    return accuracy(model, paste(x[others], artifact, mask), labels[others], batch_size)


def artifact_sensitivity(model, without: torch.Tensor, with_artifact: torch.Tensor, target,
                         batch_size: int = 256) -> torch.Tensor:
    """(N,): logit_target(with the artifact) - logit_target(without it), the same samples in both.

    Args:
        model: The classifier (left unchanged; run in eval mode).
        without: Samples without the artifact.
        with_artifact: The same samples with it.
        target: The class whose logit is read: an int or one per sample.
        batch_size: Samples per forward pass.

    Returns:
        (N,) logit differences.

    Raises:
        ValueError: when the two differ in shape.
    """
    if without.shape != with_artifact.shape:
        raise ValueError(f"the samples with the artifact {tuple(with_artifact.shape)} and without it "
                         f"{tuple(without.shape)} must be the same samples, of the same shape")
    target = torch.as_tensor(target).reshape(-1).expand(len(without))[:, None]
    return (logits(model, with_artifact, batch_size).gather(1, target)
            - logits(model, without, batch_size).gather(1, target)).squeeze(1)


def artifact_relevance(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,): share of each sample's positive relevance (summed over channels) inside the mask ((N or 1, H, W), or
    (N, C, H, W)).

    Args:
        relevance: (N, C, H, W) or (N, H, W) relevance.
        mask: The artifact's region, (N or 1, H, W) or (N, C, H, W).

    Returns:
        (N,) shares (NaN where a sample has no positive relevance).
    """
    relevance = torch.as_tensor(relevance)
    maps = relevance.sum(1) if relevance.dim() == 4 else relevance
    positive = maps.clamp(min=0)
    mask = torch.as_tensor(mask, dtype=positive.dtype)
    mask = mask.amax(1) if mask.dim() == 4 else mask  # (N, C, H, W) masks: a pixel is in where any channel is
    mask = mask.expand_as(positive)
    total = positive.flatten(1).sum(1)
    inside = (positive * mask).flatten(1).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def tcav_score(model, x: torch.Tensor, cav: CAV, target, batch_size: int = 64) -> float:
    """Share of samples whose target logit grows along the CAV at its layer (directional derivative > 0).

    Args:
        model: The classifier (left unchanged; run in eval mode).
        x: The inputs, samples first.
        cav: The CAV.
        target: The class whose logit is read: an int or one per sample.
        batch_size: Samples per forward pass.

    Returns:
        The share, in [0, 1].
    """
    device = _device(model)
    derivatives = torch.cat([directional_derivative(model, x[start:start + batch_size].to(device), cav,
                                                    target).detach().cpu()
                             for start in range(0, len(x), batch_size)])
    # a rounding error is no growth: after P-ClArC the derivative is 0 up to float noise
    return float((derivatives > 1e-6).float().mean())


__all__ = ["accuracy", "logits", "paste", "poisoned_accuracy", "artifact_sensitivity", "artifact_relevance",
           "tcav_score"]
