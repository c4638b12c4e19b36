"""attribution/targets.py: the input, target and output checks every method and the evaluation runner share."""
import pytest
import torch
from torch import nn

import relprop
from relprop import evaluate
from relprop.attribution import DeepLift, Gradient, IntegratedGradients
from relprop.attribution.targets import check_target_type, output_gradient, tensor_output


class Pair(nn.Module):
    """Returns its logits inside a tuple, as many library models do."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return (self.linear(x), x)


def test_a_tensor_output_passes_as_it_is():
    output = torch.randn(2, 3)
    assert tensor_output(output) is output


@pytest.mark.parametrize("explain", [
    lambda model, x: relprop.LRP(model, "epsilon")(x, 0),
    lambda model, x: Gradient(model)(x, 0),
    lambda model, x: IntegratedGradients(model, steps=4)(x, 0),
    lambda model, x: DeepLift(model)(x, 0),
], ids=["lrp", "gradient", "integrated_gradients", "deeplift"])
def test_every_method_refuses_a_tuple_output_with_the_same_message_naming_output(explain):
    torch.manual_seed(0)
    with pytest.raises(TypeError, match=r"^the model returned tuple, not a tensor; pass output=\.\.\. to pick the "
                                        r"tensor to explain, e\.g\. output=lambda out: out\.logits or "
                                        r"output=lambda out: out\[0\]$"):
        explain(Pair(), torch.rand(2, 4))


def test_the_evaluation_runner_refuses_a_tuple_output_asking_for_the_class_scores():
    with pytest.raises(TypeError, match=r"^the model returned tuple, not a tensor; pass output=\.\.\. to pick the "
                                        r"class scores, e\.g\."):
        evaluate.Runner(Pair(), torch.rand(2, 4), target=0).clean  # the first pass runs when read


def test_numpy_targets_become_ints_and_tensors_and_a_bool_is_refused():
    np = pytest.importorskip("numpy")
    assert check_target_type(np.int64(2)) == 2 and type(check_target_type(np.int64(2))) is int
    assert torch.equal(check_target_type(np.array([1, 0])), torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="not a bool"):
        check_target_type(True)


def test_a_class_target_is_a_one_hot_gradient_and_a_relevance_target_is_divided_by_the_output():
    output = torch.tensor([[1.0, -2.0, 0.0], [3.0, 4.0, 5.0]])
    g, index = output_gradient(output, 1)
    assert torch.equal(g, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])) and index.tolist() == [1, 1]
    relevance = torch.tensor([[2.0, 2.0, 2.0], [0.0, 8.0, 0.0]])
    g, index = output_gradient(output, relevance)
    assert index is None
    assert torch.equal(output * g, torch.tensor([[2.0, 2.0, 0.0], [0.0, 8.0, 0.0]]))  # zero where the output is
