"""The perturbation runner (evaluate/runner.py): copies scored in bounded passes, clean and repeated copies not run
again, targets, softmax scores, and the checks on what the model returns."""
import pytest
import torch

from relprop.evaluate import runner as runner_module
from relprop.evaluate.runner import Runner, pair_generator


class Counting(torch.nn.Module):
    """A linear classifier with non-zero biases that remembers how many rows each forward pass held."""

    def __init__(self, features=6, classes=3):
        super().__init__()
        self.linear = torch.nn.Linear(features, classes).double()
        with torch.no_grad():
            self.linear.bias.copy_(torch.tensor([0.5, -0.25, 1.0][:classes], dtype=torch.float64))
        self.passes = []

    def forward(self, x):
        self.passes.append(len(x))
        return self.linear(x.flatten(1))


def scaled_copies(x):
    """perturb(rows, steps): sample row times (1 - step / 10), so every copy but step 0 differs from its sample."""
    return lambda rows, steps: x[rows] * (1 - steps.double() / 10).view(-1, 1)


def test_scores_are_the_targets_logits_on_every_copy_in_passes_of_at_most_batch_size_rows():
    x = torch.randn(5, 6, dtype=torch.float64)
    model = Counting()
    runner = Runner(model, x, target=[0, 1, 2, 0, 1], batch_size=4)
    scores = runner.scores(3, scaled_copies(x))
    weight, bias = model.linear.weight.detach(), model.linear.bias.detach()
    for sample, target in enumerate([0, 1, 2, 0, 1]):
        for step in range(3):
            copy = x[sample] * (1 - step / 10)
            expected = (weight[target] @ copy + bias[target]).item()  # f(x) = W x + b, the target's row
            assert scores[sample, step].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # the clean pass in passes of 4 and 1; then the 15 (sample, step) pairs in chunks of 4, of which only the copies
    # that differ from their sample run (step 0 equals it): pairs 0-3 hold 2 such, 4-7 and 8-11 hold 3, 12-14 hold 2
    assert model.passes == [4, 1, 2, 3, 3, 2] and runner.forward_passes == 6


def test_a_copy_equal_to_its_sample_or_scored_before_takes_that_score_without_a_forward_pass():
    x = torch.randn(3, 6, dtype=torch.float64)
    model = Counting()
    runner = Runner(model, x, target=1)
    unchanged = runner.scores(2, lambda rows, steps: x[rows].clone())
    assert runner.forward_passes == 1  # the clean pass only
    torch.testing.assert_close(unchanged, runner.clean.view(-1, 1).expand(3, 2), rtol=0, atol=0)
    first = runner.scores(2, scaled_copies(x))
    passes = runner.forward_passes
    again = runner.scores(2, scaled_copies(x))
    assert runner.forward_passes == passes  # every copy was scored before
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(runner_module._HASHES))
def test_copies_are_keyed_by_sample_and_a_128_bit_hash_of_their_bytes_in_either_hash(monkeypatch, name):
    assert runner_module._hash() in runner_module._HASHES.values()  # the faster on this CPU, chosen once
    monkeypatch.setattr(runner_module, "_CHOSEN", [runner_module._HASHES[name]])
    copies = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(4))
    flipped = copies.clone()
    flipped.view(torch.int32)[1, 1, 4] ^= 1  # the lowest bit of one float
    keys, again, other = (runner_module._digests(torch.tensor([0, 1, 1]), c) for c in (copies, copies.clone(), flipped))
    assert keys == again and all(len(digest) == 16 for _, digest in keys)
    assert [row for row, _ in keys] == [0, 1, 1] and keys[1][1] != keys[2][1]
    assert other[0] == keys[0] and other[2] == keys[2] and other[1] != keys[1]
    x = torch.randn(3, 6, dtype=torch.float64)
    runner = Runner(Counting(), x, target=1)
    first = runner.scores(2, scaled_copies(x))
    passes = runner.forward_passes
    torch.testing.assert_close(runner.scores(2, scaled_copies(x)), first, rtol=0, atol=0)
    assert runner.forward_passes == passes


def test_softmax_scores_are_the_targets_probability_and_predicted_takes_the_argmax():
    x = torch.randn(4, 6, dtype=torch.float64)
    model = Counting()
    logits = model(x).detach()
    runner = Runner(model, x, target="predicted", softmax=True)
    expected = logits.softmax(1).gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
    torch.testing.assert_close(runner.target, logits.argmax(1))
    torch.testing.assert_close(runner.clean, expected, rtol=1e-12, atol=1e-12)


def test_targets_outside_the_classes_or_of_the_wrong_count_are_refused():
    x = torch.randn(2, 6, dtype=torch.float64)
    runner = Runner(Counting(), x, target=3)  # the class count is known from the first pass, which runs when needed
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        runner.output
    with pytest.raises(ValueError, match="3 class indices for 2 samples"):
        Runner(Counting(), x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Runner(Counting(), x, target=0, batch_size=0)


class Named(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Counting()

    def forward(self, x):
        return {"logits": self.inner(x)}


def test_a_model_returning_no_tensor_needs_output_to_pick_the_scores_which_then_works():
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match="returned dict, not a tensor; pass output="):
        Runner(Named(), x, target=0).clean
    model = Named()
    runner = Runner(model, x, target=0, output=lambda out: out["logits"])
    torch.testing.assert_close(runner.clean, model.inner(x)[:, 0].detach(), rtol=1e-12, atol=1e-12)


def test_an_output_that_is_not_rows_by_classes_is_refused():
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 1\).*\(batch, classes\)"):
        Runner(Counting(), x, target=0, output=lambda out: out.unsqueeze(-1)).clean


def test_of_returns_a_given_runner_for_the_same_input_and_refuses_it_for_another():
    x = torch.randn(2, 6, dtype=torch.float64)
    runner = Runner(Counting(), x, target=0)
    assert Runner.of(runner, x, target=0) is runner
    with pytest.raises(ValueError, match="built for another input x"):
        Runner.of(runner, x + 1, target=0)
    with pytest.raises(ValueError, match="explains other targets"):
        Runner.of(runner, x, target=1)


def test_pair_generators_draw_the_same_numbers_for_a_pair_whatever_was_drawn_before_and_others_for_another_pair():
    first = torch.rand(4, generator=pair_generator(7, sample=2, step=5, device="cpu"))
    pair_generator(7, sample=0, step=0, device="cpu")  # another pair's generator in between changes nothing
    again = torch.rand(4, generator=pair_generator(7, sample=2, step=5, device="cpu"))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    for other in ((7, 2, 6), (7, 3, 5), (8, 2, 5)):
        seed, sample, step = other
        drawn = torch.rand(4, generator=pair_generator(seed, sample, step, "cpu"))
        assert (drawn - first).abs().max() > 1e-3, other


class ThreadsSeen(torch.nn.Module):
    """A small CNN that remembers how many threads torch was set to when each pass began."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                          torch.nn.Linear(4 * 12 * 12, 3))
        self.threads = []

    def forward(self, x):
        self.threads.append(torch.get_num_threads())
        return self.layers(x)


class BusyMachine:
    """Stands in for engine.cores.FreeCores where another process holds every core but one."""

    def look(self):
        return 1.0

    def threads(self, most):
        return 1


def test_a_chain_builds_its_copies_on_one_thread_runs_full_passes_on_torchs_threads_and_gives_the_count_back():
    torch.manual_seed(0)
    model = ThreadsSeen().eval()
    x = torch.rand(2, 3, 12, 12)
    perturb_threads = []

    def remove_patches(rows, steps):  # step k removes the first k + 1 patches of 4x4
        perturb_threads.append(torch.get_num_threads())
        copies = x[rows].clone()
        for copy, step in zip(copies, steps.tolist()):
            for patch in range(step + 1):
                copy[:, 4 * (patch // 3):4 * (patch // 3 + 1), 4 * (patch % 3):4 * (patch % 3 + 1)] = 0
        return copies

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner = Runner(model, x, target=0, batch_size=2, incremental=True)
        runner.incremental.cores = BusyMachine()  # the steps' crops then run on one thread, whatever this machine does
        scores = runner.scores(4, remove_patches, chain=True)
        assert torch.get_num_threads() == 2
        assert runner.incremental.threads is None
    finally:
        torch.set_num_threads(before)
    assert perturb_threads and set(perturb_threads) == {1}  # the chain's own work: one thread
    # the kept clean pass and the stacked tail run as torch was set, the incremental steps' crops on the one core
    # another process leaves free
    assert model.threads[0] == 2 and 2 in model.threads[1:] and 1 in model.threads
    plain = Runner(model, x, target=0, batch_size=8, incremental=False).scores(4, remove_patches)
    torch.testing.assert_close(scores, plain, rtol=1e-5, atol=1e-7)


def test_a_runner_whose_model_changed_after_it_was_built_is_refused_by_the_next_metric():
    # its kept scores (and clean pass) are the old model's: a metric given it would have mixed the two models' numbers
    from relprop import evaluate

    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64)
    model = Counting()
    runner = Runner(model, x, target=1)
    relevance = torch.randn(3, 6, dtype=torch.float64)
    first = evaluate.pixel_flipping(runner, x, relevance, steps=2)
    again = evaluate.pixel_flipping(runner, x, relevance, steps=2)  # unchanged: accepted, the same numbers
    torch.testing.assert_close(torch.as_tensor(again.scores), torch.as_tensor(first.scores), rtol=0, atol=0)
    with torch.no_grad():
        model.linear.weight.add_(0.5)  # an optimizer step, say
    with pytest.raises(ValueError, match="parameters changed since this Runner was built.*build a new Runner"):
        evaluate.pixel_flipping(runner, x, relevance, steps=2)
    model.linear.weight = torch.nn.Parameter(model.linear.weight.detach().clone())  # replaced
    with pytest.raises(ValueError, match="parameters changed"):
        evaluate.pixel_flipping(Runner.of(runner, x, target=1), x, relevance, steps=2)
