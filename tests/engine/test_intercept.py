"""engine/intercept.py: OpMode, the base of the modes that route a model's torch calls."""
import torch

from relprop.engine import OpMode


class Recording(OpMode):
    """Doubles every add it is handed, and records what it was handed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def op(self, func, name, family, args, kwargs):
        self.seen.append((name, family, dict(kwargs)))
        out = func(*args, **kwargs)
        return out * 2 if name == "torch.add" else out


def test_quiet_calls_run_as_they_are_and_every_other_call_reaches_op_named_with_its_family():
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    mode = Recording()
    with mode:
        shape, size = x.shape, x.size(1)  # quiet: shape and attribute reads
        doubled = torch.add(x, 1.0, alpha=2.0)
    assert (tuple(shape), size) == ((2, 3), 3)
    assert mode.seen == [("torch.add", "gradient", {"alpha": 2.0})]
    torch.testing.assert_close(doubled, 2 * (x + 2.0))
