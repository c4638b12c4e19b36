"""engine/deeplift_session.py: one DeepLift pass over [inputs; references], each op of the input routed to its
family's DeepLift handler."""
import ast
import pathlib

import torch
from torch import nn

import relprop
from relprop.engine.deeplift_session import DeepLiftSession
from relprop.ops.reference import Pairing


def test_a_relu_carries_the_rescale_multiplier_and_ops_off_the_input_run_untouched():
    x = torch.tensor([[2.0, -1.0, 3.0]])
    reference = torch.tensor([[-1.0, -3.0, 3.0]])
    offset = torch.ones(3, requires_grad=True)  # a parameter-like tensor: not from the input, not marked
    session = DeepLiftSession(Pairing(1, 1, None), eps=1e-10, warned=set())
    leaf = x.clone().requires_grad_(True)
    output = session.run(lambda batch: torch.relu(batch) * 2 + (offset * 0), leaf, reference)
    assert output.shape == (2, 3) and session.active(output) and not session.active(offset * 1)
    (multipliers,) = torch.autograd.grad(output[:1].sum(), leaf)
    # (relu(x) - relu(x0)) / (x - x0) per element, times 2; where x = x0 the gradient (relu'(3) = 1)
    torch.testing.assert_close(multipliers, torch.tensor([[2 * 2 / 3, 0.0, 2.0]]))


def test_logits_under_a_softmax_output_are_explained_when_asked():
    x, reference = torch.randn(2, 4), torch.zeros(1, 4)
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(1))
    for explain_logits in (True, False):
        session = DeepLiftSession(Pairing(2, 1, None), 1e-10, set(), explain_logits)
        output = session.run(model, x.clone().requires_grad_(True), reference)
        explained, logits = session.explained(output)
        assert logits is explain_logits
        assert (explained is output) is not explain_logits and explained.shape == output.shape


def test_the_deeplift_method_holds_no_dispatch():
    # the op table, custom Functions and path averaging are the engine's (deeplift_session.py), not the method's
    path = pathlib.Path(relprop.__file__).parent / "attribution" / "deeplift.py"
    imported = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"ops", "ops.table", "ops.custom"} and "engine.deeplift_session" in imported
