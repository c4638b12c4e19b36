"""Kept outputs: an alias while unchanged, the engine's copy after a change it saw, None after one it did not."""
import torch

from relprop.ops.kept import KeptOutput


def test_alias_is_read_while_the_output_is_unchanged():
    output = torch.randn(3, 4)
    kept = KeptOutput()
    alias = kept.keep(output)
    assert alias.data_ptr() == output.data_ptr() and kept.values(alias) is alias


def test_change_nobody_saw_makes_the_values_unavailable():
    output = torch.randn(3, 4)
    kept = KeptOutput()
    alias = kept.keep(output)
    output.mul_(2)
    assert kept.values(alias) is None


def test_copy_taken_before_a_change_is_what_the_backward_reads():
    output = torch.randn(3, 4)
    kept = KeptOutput()
    alias = kept.keep(output)
    original = output.clone()
    kept.preserved = output.detach().clone()  # what the engine does before an in-place op
    output.add_(1)
    torch.testing.assert_close(kept.values(alias), original)


def test_harmless_change_keeps_the_alias_valid():
    output = torch.randn(3, 4)
    kept = KeptOutput()
    alias = kept.keep(output)
    output.relu_()
    kept.harmless_versions.add(output._version)  # a ReLU: the engine knows the gradient is zero where it changed
    kept.rectified = True
    assert kept.values(alias) is alias and kept.feeds_only_relu()
