"""Transformers from Hugging Face (tiny random configs), torchvision and timm: CP-LRP conserves exactly, AttnLRP
runs strict, token relevance comes per token, and nothing about the models is patched."""
import warnings

import pytest
import torch
import torchvision

import relprop
from relprop.language import explain_tokens
from tests.language_models import language_model

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
transformers.logging.set_verbosity_error()


def zero_constants(model):
    """Zero every bias and every learned constant added to the stream (position, token-type, class tokens): with
    them gone, conservative rules must hand the whole logit to the input embeddings."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or any(key in name for key in ("pos", "wpe", "token_type", "cls_token",
                                                                     "class_token")):
                parameter.zero_()
            if name.endswith("head.weight"):  # torchvision starts its ViT head at zero
                parameter.normal_(0, 0.5)
    return model.eval()


FAMILIES = [(family, implementation) for family in ("llama", "gpt2", "bert") for implementation in ("eager", "sdpa")]


@pytest.mark.parametrize("family, implementation", FAMILIES)
def test_cp_lrp_is_exactly_conservative_on_language_models(family, implementation):
    model = zero_constants(language_model(family, implementation))
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))
    result = explain_tokens(model, ids, composite="cp_lrp", strict=True)
    expl = result.explanation
    assert result.relevance.shape == (2, 6) and expl.relevance.shape == (2, 6, 32)
    torch.testing.assert_close(result.relevance.sum(1), expl.explained, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("family, implementation", FAMILIES)
def test_attnlrp_runs_strict_and_reports_its_residual_honestly(family, implementation):
    model = language_model(family, implementation).eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    result = explain_tokens(model, ids, composite="attnlrp", strict=True)
    expl = result.explanation
    assert torch.isfinite(expl.relevance).all()
    torch.testing.assert_close(expl.delta, expl.explained - expl.relevance_sum)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if family == "bert":
        assert result.target.tolist() == logits.argmax(-1).tolist()
    else:  # the predicted next token at the last position
        assert result.target.tolist() == logits[:, -1].argmax(-1).tolist()
        torch.testing.assert_close(expl.explained, logits[:, -1].max(-1).values, rtol=1e-4, atol=1e-5)


def test_eager_and_sdpa_give_the_same_relevance():
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    eager = explain_tokens(language_model("llama", "eager").eval(), ids, target=7).relevance
    sdpa = explain_tokens(language_model("llama", "sdpa").eval(), ids, target=7).relevance
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-6)


def test_token_relevance_renders_as_html():
    model = language_model("gpt2", "eager").eval()
    result = explain_tokens(model, torch.tensor([[1, 2, 3]]), target=5)
    page = result.html()
    assert page.count("<span") == 3 and "<!DOCTYPE html>" in page


def test_record_the_residual_stream_after_each_block():
    model = zero_constants(language_model("llama", "eager"))
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(4))
    result = explain_tokens(model, ids, composite="cp_lrp", record=["model.layers.0", "model.layers.1"])
    for name in ("model.layers.0", "model.layers.1"):
        torch.testing.assert_close(result.explanation.layers[name].sum(), result.explanation.explained.sum(),
                                   rtol=1e-3, atol=1e-5)


def test_nothing_is_patched_and_the_model_works_as_before():
    model = language_model("llama", "sdpa").eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(5))
    classes_before = {name: dict(vars(type(module))) for name, module in model.named_modules()}
    functions_before = dict(vars(torch.nn.functional))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    explain_tokens(model, ids)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert {name: dict(vars(type(module))) for name, module in model.named_modules()} == classes_before
    assert dict(vars(torch.nn.functional)) == functions_before


def test_bad_token_input_is_refused():
    model = language_model("gpt2", "eager").eval()
    with pytest.raises(ValueError, match="integer tensor shaped \\(batch, tokens\\)"):
        explain_tokens(model, torch.randn(1, 4))
    with pytest.raises(ValueError, match="token id in 0..63"):
        explain_tokens(model, torch.tensor([[1, 2]]), target=100)


def torchvision_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=5)


def timm_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=5)


@pytest.mark.parametrize("build", [torchvision_vit, timm_vit], ids=["torchvision", "timm"])
def test_vision_transformers(build):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    model = zero_constants(build())
    expl = relprop.explain(model, x, composite="cp_lrp", strict=True)
    torch.testing.assert_close(expl.relevance_sum, expl.explained, rtol=1e-3, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attn = relprop.explain(build().eval(), x, composite="attnlrp", strict=True)
    assert torch.isfinite(attn.relevance).all() and attn.relevance.shape == x.shape


def test_report_shows_every_attention_op_and_its_rule():
    model = language_model("llama", "sdpa").eval()
    embeddings = model.get_input_embeddings()(torch.tensor([[1, 2, 3, 4]])).detach()
    lrp = relprop.LRP(model, "attnlrp", forward=lambda m, e: m(inputs_embeds=e).logits)
    report = lrp.report(embeddings, target=lambda logits: logits * (logits == logits.max()))
    rules = {(row.op.rsplit(".", 1)[-1], row.rule) for row in report}
    assert ("matmul", "Uniform split over 2 factors") in rules
    assert ("softmax", "Gradient (AttnLRP softmax)") in rules
    assert ("LlamaRMSNorm (element-wise module)", "Pass") in {(row.op, row.rule) for row in report}
    assert ("linear", "Zero") in rules  # LRP-0: the linear layers' own gradient
    # the model's ops only: relprop's own work after an element-wise module once showed up as an unsupported division
    assert not [row for row in report if "unsupported" in row.rule or row.op.endswith((".detach", ".clone", ".to"))]
    epsilon = relprop.LRP(model, relprop.composites.AttnLRP(epsilon=1e-6),
                          forward=lambda m, e: m(inputs_embeds=e).logits)
    report = epsilon.report(embeddings, target=lambda logits: logits * (logits == logits.max()))
    assert ("linear", "Epsilon") in {(row.op.rsplit(".", 1)[-1], row.rule) for row in report}


# ---- plain modules, extra model inputs, positions ------------------------------------------------------------------
class TokenBag(torch.nn.Module):
    """A sequence classifier that is not a Hugging Face model: embed, average over tokens, classify."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 3)
        torch.nn.init.uniform_(self.head.bias, -0.5, 0.5)

    def forward(self, ids, scale=1.0):
        return self.head(self.embed(ids).mean(1) * scale)


class TinyLM(TokenBag):
    def forward(self, ids):
        return self.head(self.embed(ids))  # (N, T, V) with V = 3


def test_a_plain_module_is_explained_from_the_embedding_it_names():
    model = TokenBag().eval()
    ids = torch.tensor([[1, 2, 3, 2], [4, 5, 6, 7]])
    for embedding in ("embed", model.embed):
        result = explain_tokens(model, ids, target=[0, 2], embedding=embedding)
        e = model.embed(ids).detach()
        # LRP-0 through the average and the linear head (AttnLRP's linear rule): e_pd / T * w_cd summed over d
        expected = (e / 4 * model.head.weight.detach()[[0, 2]].unsqueeze(1)).sum(-1)
        torch.testing.assert_close(result.relevance, expected)
        assert result.target.tolist() == [0, 2]


def test_extra_model_inputs_are_passed_to_a_plain_module():
    model = TokenBag().eval()
    ids = torch.tensor([[1, 2, 3, 2]])
    result = explain_tokens(model, ids, target=1, embedding="embed", model_inputs={"scale": 3.0})
    e = model.embed(ids).detach()
    torch.testing.assert_close(result.relevance, (3.0 * e / 4 * model.head.weight.detach()[1]).sum(-1))
    torch.testing.assert_close(result.explanation.output, model(ids, scale=3.0).detach())


def test_a_plain_module_without_an_embedding_argument_is_told_which_to_name():
    with pytest.raises(TypeError, match=r"TokenBag has no get_input_embeddings\(\).*pass embedding=.*'embed'"):
        explain_tokens(TokenBag(), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"no module named 'embedd'; did you mean 'embed'"):
        explain_tokens(TokenBag(), torch.tensor([[1, 2]]), embedding="embedd")
    with pytest.raises(ValueError, match="not part of the model"):
        explain_tokens(TokenBag(), torch.tensor([[1, 2]]), embedding=torch.nn.Embedding(10, 4))


def test_a_position_out_of_range_is_refused_with_the_valid_range():
    model = TinyLM().eval()
    ids = torch.tensor([[1, 2, 3]])
    for position in (3, -4):
        with pytest.raises(ValueError, match=r"position .* is out of range for 3 tokens; use 0..2, or -3..-1"):
            explain_tokens(model, ids, position=position, embedding="embed")
    with pytest.raises(TypeError, match="position must be an int"):
        explain_tokens(model, ids, position=1.5, embedding="embed")
    result = explain_tokens(model, ids, target=2, position=1, embedding="embed")
    e = model.embed(ids).detach()
    expected = torch.zeros(1, 3)
    expected[0, 1] = (e[0, 1] * model.head.weight.detach()[2]).sum()
    torch.testing.assert_close(result.relevance, expected)


def test_token_type_ids_reach_bert():
    model = language_model("bert", "eager").eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(6))
    token_types = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    result = explain_tokens(model, ids, target=1, model_inputs={"token_type_ids": token_types})
    with torch.no_grad():
        expected_logits = model(input_ids=ids, token_type_ids=token_types).logits
        embeddings = model.get_input_embeddings()(ids)
    torch.testing.assert_close(result.explanation.output, expected_logits)
    reference = relprop.LRP(model, "attnlrp", output=lambda out: out.logits,
                            forward=lambda m, e: m(inputs_embeds=e, token_type_ids=token_types))(embeddings, 1)
    torch.testing.assert_close(result.relevance, reference.relevance.sum(-1))
    without = explain_tokens(model, ids, target=1)  # token types matter to this model's output and relevance
    assert (without.explanation.output - result.explanation.output).abs().max() > 1e-4
    assert (without.relevance - result.relevance).abs().max() > 1e-3 * result.relevance.abs().max()
    with pytest.raises(ValueError, match="attention_mask given twice"):
        explain_tokens(model, ids, attention_mask=torch.ones_like(ids),
                       model_inputs={"attention_mask": torch.ones_like(ids)})


# ---- recurrent text classifiers --------------------------------------------------------------------------------------
class LSTMClassifier(torch.nn.Module):
    """Embedding, bidirectional LSTM read at both ends, linear head: the classic text classifier."""

    def __init__(self, vocabulary=20, width=6, hidden=5, classes=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.lstm = torch.nn.LSTM(width, hidden, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        _, (h, _) = self.lstm(self.embed(ids))
        return self.head(torch.cat([h[0], h[1]], 1))


def test_an_lstm_text_classifier_is_explained_token_by_token_and_rendered():
    model = LSTMClassifier().double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.zero_()  # no bias absorbs relevance: the tokens' relevance adds up to the logit
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = explain_tokens(model, ids, target=[1, 0], embedding="embed", composite="epsilon", epsilon=0.0,
                                strict=True)
    logits = model(ids).detach()
    torch.testing.assert_close(result.relevance.sum(1), logits[[0, 1], [1, 0]], rtol=1e-10, atol=1e-12)
    assert result.relevance.shape == (2, 5) and bool((result.relevance != 0).all())
    page = result.html()
    assert page.count("<span") == 10
