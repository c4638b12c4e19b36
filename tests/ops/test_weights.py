import gc
import weakref

import pytest
import torch

import relprop
from relprop import rules
from relprop.ops.weights import WeightCache, checksums, modifier_key


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
        torch.nn.Flatten(), torch.nn.Linear(6 * 36, 5),
    )
    with torch.no_grad():
        for norm in (model[3], model[6]):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.normal_()
            norm.bias.normal_()
    return model.eval()


def _fresh(model, composite, x):
    """What an LRP object that never ran before gives: nothing kept."""
    return relprop.LRP(model, composite)(x, 1).relevance


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat"])
def test_kept_weights_give_the_numbers_of_a_first_call(composite):
    model, x = _model(), torch.randn(2, 3, 6, 6)
    lrp = relprop.LRP(model, composite)
    first = lrp(x, 1).relevance
    assert len(lrp._weights) > 0
    assert torch.equal(lrp(x, 1).relevance, first)


@pytest.mark.parametrize("change", ["data", "no_grad", "optimizer", "load_state_dict", "running_var"])
def test_a_changed_parameter_rebuilds_its_kept_weights(change):
    model, x = _model(), torch.randn(2, 3, 6, 6)
    lrp = relprop.LRP(model, "epsilon_gamma_box")
    before = lrp(x, 1).relevance
    if change == "data":
        model[5].weight.data.add_(1)  # version counters do not see this; the checksums do
    elif change == "no_grad":
        with torch.no_grad():
            model[2].weight.mul_(-1)
    elif change == "optimizer":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model(x).sum().backward()
        optimizer.step()
    elif change == "load_state_dict":
        state = {key: value + 0.5 if key.endswith("weight") else value for key, value in model.state_dict().items()}
        model.load_state_dict(state)
    else:
        model[6].running_var.mul_(3)
    after = lrp(x, 1).relevance
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _fresh(model, "epsilon_gamma_box", x), rtol=0, atol=0)


def test_a_write_through_data_that_keeps_the_float_sum_rebuilds_the_kept_weights():
    model, x = _model(), torch.randn(2, 3, 6, 6)
    weight = model[5].weight
    with torch.no_grad():  # quarters: every partial sum is exact, so a float sum cannot tell an order apart
        weight.copy_(torch.randint(-8, 8, weight.shape, generator=torch.Generator().manual_seed(1)) / 4)
        weight[0, 0, 0, :2] = torch.tensor([2.0, -1.5])
    lrp = relprop.LRP(model, "epsilon_gamma_box")
    before = lrp(x, 1).relevance
    float_sum = float(weight.detach().sum())
    weight.data[0, 0, 0, :2] = torch.tensor([-1.5, 2.0])  # two values swapped within one 64-bit word
    assert float(weight.detach().sum()) == float_sum  # a float sum does not see the swap
    after = lrp(x, 1).relevance
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _fresh(model, "epsilon_gamma_box", x), rtol=0, atol=0)


def test_checksums_of_tensors_whose_bytes_are_not_aligned_words_fall_back_to_a_sum():
    odd = torch.arange(7, dtype=torch.float32)  # 28 bytes: not whole 64-bit words
    offset = torch.arange(9, dtype=torch.float32)[1:]  # 8 values starting 4 bytes in
    strided = torch.arange(16, dtype=torch.float32)[::2]
    sums = checksums([odd, offset, strided, torch.ones(4, dtype=torch.float64)])
    assert sums[id(odd)] == 21.0 and sums[id(offset)] == 36.0 and sums[id(strided)] == 56.0
    assert isinstance(sums[id(odd)], float)
    words = torch.ones(4, dtype=torch.float64).view(torch.int64)
    assert sums[next(iter(sums.keys() - {id(odd), id(offset), id(strided)}))] == int(words.sum())


def test_kept_weights_do_not_keep_the_model_alive():
    model, x = _model(), torch.randn(2, 3, 6, 6)
    cache = WeightCache()
    lrp = relprop.LRP(model, "epsilon_alpha2_beta1")
    lrp._weights = cache
    lrp(x, 1)
    assert len(cache) > 0
    alive = weakref.ref(model)
    del lrp, model
    gc.collect()
    assert alive() is None
    assert len(cache) == 0  # the entries went with the parameters they were built from


def test_only_modifiers_that_depend_on_the_weight_alone_are_kept():
    assert modifier_key(rules.keep) is None  # the weight itself: nothing to keep
    assert modifier_key(lambda weight: weight.pow(2)) is None
    up = rules.Gamma(0.25).groups()[0].terms[0].weight
    again = rules.Gamma(0.25).groups()[0].terms[0].weight
    assert modifier_key(up) == modifier_key(again)  # made anew per call, the same weights
    assert modifier_key(up) != modifier_key(rules.Gamma(0.5).groups()[0].terms[0].weight)
    assert modifier_key(rules.positive) != modifier_key(rules.negative)


def test_a_derived_form_is_kept_with_its_weight_and_built_again_when_the_weight_is():
    cache, source, builds = WeightCache(), torch.randn(4, 3), []

    def flip(weight):
        builds.append(weight)
        return weight.t().contiguous()

    cache.begin()
    kept = cache.get((source,), ("positive",), lambda: source.clamp(min=0))
    assert cache.derived(source.clamp(min=0), "flipped", flip) is None  # not a weight the cache keeps
    flipped = cache.derived(kept, "flipped", flip)
    assert flipped is cache.derived(kept, "flipped", flip) and len(builds) == 1
    torch.testing.assert_close(flipped, source.clamp(min=0).t(), rtol=0, atol=0)
    with torch.no_grad():
        source.mul_(-1)
    cache.begin()
    rebuilt = cache.get((source,), ("positive",), lambda: source.clamp(min=0))
    assert rebuilt is not kept
    assert cache.derived(kept, "flipped", flip) is None  # the old weight is no longer kept, nor its forms
    torch.testing.assert_close(cache.derived(rebuilt, "flipped", flip), source.clamp(min=0).t(), rtol=0, atol=0)
    assert len(builds) == 2


def _pointwise_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 1), torch.nn.BatchNorm2d(6),
        torch.nn.Flatten(), torch.nn.Linear(6 * 9, 5),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
            if getattr(module, "bias", None) is not None:
                module.bias.normal_()
    return model.eval()


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat"])
def test_pointwise_convolutions_transposed_by_kept_flipped_weights_give_the_relevance_of_the_plain_transpose(
        composite, monkeypatch):
    model, x = _pointwise_model(), torch.randn(2, 3, 6, 6)
    lrp = relprop.LRP(model, composite)
    kept = lrp(x, 1).relevance
    flipped = sum(len(entry[4]) for entry in lrp._weights._entries.values())
    assert flipped >= 3  # every 1x1 convolution's transpose went through a kept flipped weight
    monkeypatch.setattr(WeightCache, "derived", lambda self, weight, key, build: None)
    plain = relprop.LRP(model, composite)(x, 1).relevance
    torch.testing.assert_close(kept, plain, rtol=1e-5, atol=1e-6)
