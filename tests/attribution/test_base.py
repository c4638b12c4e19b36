import pytest
import torch
from torch import nn

from relprop import attribution
from relprop.attribution.base import baseline_like, batched, rows_of


def test_a_baseline_can_be_a_number_one_sample_or_one_per_sample():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(baseline_like(x, 0.5), torch.full_like(x, 0.5))
    sample = torch.randn(3, 4, 4)
    assert torch.equal(baseline_like(x, sample), sample.expand_as(x))
    assert torch.equal(baseline_like(x, sample[None]), sample.expand_as(x))
    per_channel = torch.randn(3, 1, 1)
    assert torch.equal(baseline_like(x, per_channel), per_channel.expand_as(x))
    per_sample = torch.randn(2, 3, 4, 4)
    assert torch.equal(baseline_like(x, per_sample), per_sample)


@pytest.mark.parametrize("bad", [torch.zeros(3, 3, 4, 4), torch.zeros(4, 4, 4), torch.zeros(2, 3, 5, 4)])
def test_a_baseline_of_the_wrong_shape_says_which_shapes_work(bad):
    with pytest.raises(ValueError, match=r"one sample shaped \(3, 4, 4\).*one baseline per sample"):
        baseline_like(torch.randn(2, 3, 4, 4), bad)


def test_bad_baselines_are_refused():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="number or a tensor"):
        baseline_like(x, "zeros")
    with pytest.raises(ValueError, match="NaN"):
        baseline_like(x, torch.tensor([0.0, float("nan"), 0.0]))


def test_batches_follow_copies_in_order_and_split_them_where_needed():
    copies = [(torch.arange(3) + 10 * k,) for k in range(3)]
    batches = list(batched(iter(copies), 4))
    assert [len(rows) for (rows,), _, _ in batches] == [4, 4, 1]
    rows = torch.cat([rows for (rows,), _, _ in batches])
    samples = torch.cat([sample for _, sample, _ in batches])
    numbers = torch.cat([number for _, _, number in batches])
    assert rows.tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert samples.tolist() == [0, 1, 2] * 3
    assert numbers.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_per_sample_targets_follow_their_rows():
    sample = torch.tensor([0, 1, 0, 1])
    assert rows_of([3, 5], sample).tolist() == [3, 5, 3, 5]
    assert rows_of(torch.tensor([3, 5]), sample).tolist() == [3, 5, 3, 5]
    assert rows_of(2, sample) == 2
    assert rows_of(None, sample) is None
    relevance = torch.randn(2, 4)
    assert torch.equal(rows_of(relevance, sample), relevance[sample])


# ---- forward= and feature_names, as LRP takes them ------------------------------------------------------------------
METHODS = {
    "gradient": lambda model, **kw: attribution.Gradient(model, **kw),
    "gradient_x_input": lambda model, **kw: attribution.GradientXInput(model, **kw),
    "smoothgrad": lambda model, **kw: attribution.SmoothGrad(model, n_samples=2, seed=0, **kw),
    "smoothgrad_lrp": lambda model, **kw: attribution.SmoothGrad(model, n_samples=2, seed=0, composite="epsilon",
                                                                 **kw),
    "integrated_gradients": lambda model, **kw: attribution.IntegratedGradients(model, steps=3, **kw),
    "integrated_gradients_lrp": lambda model, **kw: attribution.IntegratedGradients(model, steps=3,
                                                                                    composite="epsilon", **kw),
    "guided_backprop": lambda model, **kw: attribution.GuidedBackprop(model, **kw),
    "deconvnet": lambda model, **kw: attribution.Deconvnet(model, **kw),
    "excitation_backprop": lambda model, **kw: attribution.ExcitationBackprop(model, **kw),
    "occlusion": lambda model, **kw: attribution.Occlusion(model, window=(1,), **kw),
    "deeplift": lambda model, **kw: attribution.DeepLift(model, **kw),
    "deeplift_shap": lambda model, **kw: attribution.DeepLiftShap(model, torch.zeros(2, 4), **kw),
}


class Keyed(nn.Module):
    """A model called as model(features=x), which the attributors cannot call as model(x)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        nn.init.uniform_(self.body[0].bias, -0.3, 0.3)

    def forward(self, *, features):
        return self.body(features)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_forward_and_feature_names(method):
    model = Keyed().eval()
    rows = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    names = ["age", "income", "debt", "savings"]
    ours = METHODS[method](model, forward=lambda m, x: m(features=x), feature_names=names)(rows, target=1)
    reference = METHODS[method](model.body)(rows, target=1)
    torch.testing.assert_close(ours.relevance, reference.relevance)
    assert ours.feature_names == names
    assert {name for name, _ in ours.top(4)[0]} == set(names)
    with pytest.raises(TypeError, match="forward must be a callable"):
        METHODS[method](model, forward="features")
