"""What new users commonly get wrong is recognised, for LRP and every attribution method, with the fix named."""
import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop import attribution
from tests.models import MLP, TinyResNet, with_biases

# Every method, built on a model (most with their defaults, the slow ones made small).
METHODS = {
    "lrp": lambda model: relprop.LRP(model, "epsilon"),
    "gradient": attribution.Gradient,
    "gradient_x_input": attribution.GradientXInput,
    "smoothgrad": lambda model: attribution.SmoothGrad(model, n_samples=2, seed=0),
    "integrated_gradients": lambda model: attribution.IntegratedGradients(model, steps=3),
    "guided_backprop": attribution.GuidedBackprop,
    "deconvnet": attribution.Deconvnet,
    "excitation_backprop": attribution.ExcitationBackprop,
    "occlusion": lambda model: attribution.Occlusion(model, window=(2,)),
    "deeplift": attribution.DeepLift,
    "deeplift_shap": lambda model: attribution.DeepLiftShap(model, torch.zeros(2, 8)),
}


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return with_biases(MLP()).eval()


@pytest.fixture
def rows():
    torch.manual_seed(1)
    return torch.randn(3, 8)


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return with_biases(TinyResNet()).eval()


# ---- torch.compile -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_a_compiled_model_is_explained_through_the_module_it_wraps_saying_so_once(method, mlp, rows):
    compiled = torch.compile(mlp)
    with pytest.warns(UserWarning, match="torch.compile'd; relprop explains the original module"):
        ours = METHODS[method](compiled)(rows, target=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model: a second attributor says nothing
        again = METHODS[method](compiled)(rows, target=1)
    plain = METHODS[method](mlp)(rows, target=1)
    torch.testing.assert_close(ours.relevance, plain.relevance)
    torch.testing.assert_close(again.relevance, plain.relevance)


def test_tokens_of_a_compiled_model_are_explained_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3))
    from relprop.language import explain_tokens

    ids = torch.tensor([[1, 2, 3]])
    with pytest.warns(UserWarning, match="torch.compile"):
        ours = explain_tokens(torch.compile(model), ids, target=0, embedding="0", composite="epsilon")
    plain = explain_tokens(model, ids, target=0, embedding="0", composite="epsilon")
    torch.testing.assert_close(ours.relevance, plain.relevance)


# ---- outputs without one entry per sample ------------------------------------------------------------------------
class Summed(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x).sum()


@pytest.mark.parametrize("method", METHODS)
def test_a_model_reducing_over_the_batch_is_refused(method, mlp, rows):
    with pytest.raises(ValueError, match=r"output is one value \(shape \(\)\) for a batch of \d+.*reduces over the "
                                         r"batch.*one output per sample"):
        METHODS[method](Summed(mlp))(rows)


def test_one_value_for_one_sample_is_explained_as_that_sample(mlp, rows):
    expl = relprop.explain(Summed(mlp), rows[:1], composite="epsilon")
    total = mlp(rows[:1]).sum().detach()
    assert expl.explained.shape == expl.delta.shape == (1,)
    torch.testing.assert_close(expl.explained, total.reshape(1))
    torch.testing.assert_close(expl.delta, expl.explained - expl.relevance.sum().reshape(1))


def test_an_output_with_another_first_dimension_is_refused(mlp, rows):
    class Flat(nn.Module):
        def forward(self, x):
            return mlp(x).flatten()

    for method in ("lrp", "gradient"):
        with pytest.raises(ValueError, match=r"output has shape \(9,\), but x is a batch of 3.*x.unsqueeze\(0\)"):
            METHODS[method](Flat())(rows)


# ---- unbatched input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_one_row_without_its_batch_dimension_is_told_to_add_it(method, mlp):
    with pytest.raises(ValueError, match=r"x has shape \(8,\): one sample of 8 features.*x.unsqueeze\(0\)"):
        METHODS[method](mlp)(torch.randn(8))


def test_one_image_without_its_batch_dimension_is_told_to_add_it(cnn):
    for method in ("lrp", "gradient", "deeplift"):
        with pytest.raises(ValueError, match=r"x.unsqueeze\(0\)"):
            METHODS[method](cnn)(torch.randn(3, 8, 8))


# ---- forward failures --------------------------------------------------------------------------------------------
FAILURES = [
    ("cnn", lambda: torch.randn(1, 5, 8, 8), r"first convolution 'stem.0' takes 3 channels but x has 5"),
    ("cnn", lambda: torch.randn(1, 8, 8, 3), r"looks channels-last.*x.permute\(0, 3, 1, 2\)"),
    ("cnn", lambda: torch.randn(1, 3, 8, 8, dtype=torch.float64), r"dtype torch.float64 but the model's parameters "
                                                                  r"are torch.float32: pass x.to\(torch.float32\)"),
    ("mlp", lambda: torch.randn(2, 8, dtype=torch.float64), r"pass x.to\(torch.float32\)"),
    ("mlp", lambda: torch.randn(2, 6), r"first linear layer '0' takes 8 features but x's samples have 6"),
]


@pytest.mark.parametrize("method", ["lrp", "gradient", "integrated_gradients", "occlusion", "deeplift"])
@pytest.mark.parametrize("which, make, fix", FAILURES)
def test_common_input_mistakes_get_their_fix_and_no_bug_report(method, which, make, fix, mlp, cnn):
    model = {"mlp": mlp, "cnn": cnn}[which]
    if method == "occlusion":
        build = lambda m: attribution.Occlusion(m, window=(2,))  # noqa: E731
    else:
        build = METHODS[method]
    with pytest.raises(ValueError, match="forward failed") as caught:
        build(model)(make())
    assert caught.match(fix)
    assert "relprop bug" not in str(caught.value)


def test_a_model_of_another_dtype_is_named(mlp):
    with pytest.raises(ValueError, match=r"parameters are torch.float64: pass x.to\(torch.float64\)"):
        relprop.explain(mlp.double(), torch.randn(2, 8))


def test_a_model_on_another_device_is_named(mlp):
    model = mlp.to("meta")
    for method in ("lrp", "gradient"):
        with pytest.raises(ValueError, match=r"x is on cpu but the model's parameters are on meta: pass "
                                             r"x.to\('meta'\)"):
            METHODS[method](model)(torch.randn(2, 8))


def test_inference_mode_tensors_and_calls_are_named(mlp):
    with torch.inference_mode():
        made_there = torch.randn(2, 8)
    for method in ("lrp", "gradient", "deeplift"):
        with pytest.raises(ValueError, match=r"created under torch.inference_mode\(\).*x.clone\(\)"):
            METHODS[method](mlp)(made_there)
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inside torch.inference_mode"):
            METHODS[method](mlp)(torch.randn(2, 8))
    relprop.explain(mlp, made_there.clone())  # the fix works


def test_an_error_relprop_cannot_explain_keeps_the_bug_report(mlp, rows):
    class Failing(nn.Module):
        def forward(self, x):
            raise RuntimeError("something odd")

    for method in ("lrp", "gradient"):
        with pytest.raises(ValueError, match="something odd.*please report this as a relprop bug"):
            METHODS[method](Failing())(rows)


# ---- token ids -----------------------------------------------------------------------------------------------------
def test_token_ids_get_the_recipe_for_explaining_embeddings_not_x_float():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3))
    ids = torch.tensor([[1, 2, 3]])
    for method in ("lrp", "gradient", "deeplift"):
        with pytest.raises(TypeError, match=r"token ids for the model's embedding layer '0'.*x.float\(\) does not "
                                            r"work either.*explain_tokens\(model, ids, embedding='0'\).*forward="):
            METHODS[method](model)(ids)
    with pytest.raises(ValueError, match=r"x holds floats, but the model starts from token ids.*embedding='0'"):
        relprop.explain(model, ids.float())


def test_token_ids_for_a_hugging_face_model_get_its_inputs_embeds_recipe():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    from tests.language_models import language_model

    model = language_model("gpt2", "eager").eval()
    with pytest.raises(TypeError, match=r"explain_tokens\(model, ids\).*forward=lambda model, e: "
                                        r"model\(inputs_embeds=e\)"):
        relprop.explain(model, torch.tensor([[1, 2, 3]]))
