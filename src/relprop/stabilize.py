"""Safe division for relevance: denominators pushed away from zero, keeping their sign."""
import torch


def stabilize(denominator: torch.Tensor, epsilon: float, inplace: bool = False) -> torch.Tensor:
    """Add epsilon with the sign of each entry (zero counts as positive), as the epsilon rule defines it."""
    if epsilon == 0:
        return denominator
    # copysign gives zero (+0.0) the positive sign, as the rule wants, in one pass instead of where()'s three
    if inplace and not denominator.requires_grad:
        # sign(d) (|d| + eps), written over |d|: the caller hands over d, so no more than one other buffer lives
        magnitude = denominator.abs().add_(epsilon)
        return torch.copysign(magnitude, denominator, out=magnitude)
    shift = torch.copysign(torch.tensor(epsilon, dtype=denominator.dtype, device=denominator.device), denominator)
    return shift.add_(denominator) if not shift.requires_grad else denominator + shift


def divide_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator where the denominator is non-zero, else 0 (no relevance can be carried there)."""
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / safe)
