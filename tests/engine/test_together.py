"""Several chain steps in one pass give each step its own plain pass's output and leave the last step's base; a pass
that cannot run so is given up with every kept output as it was."""
import pytest
import torch
from torch import nn

from relprop import evaluate
from relprop.engine import together
from relprop.engine.incremental import _Diverged, Incremental
from tests.engine.test_incremental import Onednn, Residual, models, patched
from tests.models import Block, TinyResNet, with_biases


class Segmenter(nn.Module):
    """Convolutions, batch norm and a residual block down to a map: no op runs in full, so a pass has no cut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.block = Block(6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def chain(x, steps, start=0):
    return [x := patched(x, start + step) for step in range(steps)]


def kept(model, shape, seed=0):
    """An Incremental of model after a kept pass of a seeded random batch, and that batch."""
    torch.manual_seed(seed)
    x = torch.rand(shape)
    engine = Incremental(model)
    engine(x)
    return engine, x


def assert_plain(model, outputs, steps):
    with torch.inference_mode():
        for output, batch in zip(outputs, steps, strict=True):
            torch.testing.assert_close(output, model(batch), rtol=1e-5, atol=1e-6)


def written(engine, output):
    """Whether output is a kept output a later pass may read (not one left outdated on purpose: Incremental.stale)."""
    return output is not None and id(output) not in engine.stale


CASES = {**{name: value for name, value in models().items()},
         "residual_in_place": (with_biases(Residual(in_place=True)).eval(), (2, 3, 16, 16)),
         "segmenter": (with_biases(Segmenter()).eval(), (2, 3, 12, 12))}


@pytest.mark.parametrize("name", list(CASES))
def test_steps_in_one_pass_give_each_step_its_plain_output_and_the_last_step_s_base(name):
    model, shape = CASES[name]
    engine, x = kept(model, shape)
    alone = Incremental(model)
    alone.stepwise = False
    alone(x)
    steps = chain(x, 5)
    with torch.inference_mode():
        expected = [model(batch) for batch in steps]
    outputs, one_by_one = together.steps(engine, steps), together.steps(alone, steps)
    for output, single, plain in zip(outputs, one_by_one, expected):
        torch.testing.assert_close(output, plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(output, single, rtol=1e-5, atol=1e-6)
    assert engine.together_passes == 1 and alone.together_passes == 0
    # one by one, a step may find an output an earlier step left outdated and run in full; together, none is earlier
    assert engine.passes == {"full": 1, "incremental": 5} and sum(alone.passes.values()) == 6
    if alone.passes["full"] == 1:  # the same base, output by output (where both keep one: their cuts may differ)
        pairs = [(mine, theirs) for (_, mine), (_, theirs) in zip(engine.kept, alone.kept, strict=True)
                 if written(engine, mine) and written(alone, theirs)]
        assert pairs
        for mine, theirs in pairs:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    later = patched(steps[-1], 9)  # the next pass goes on from the last step's base
    with torch.inference_mode():
        torch.testing.assert_close(engine(later), model(later), rtol=1e-5, atol=1e-6)


def test_a_residual_block_reads_its_input_step_by_step_twice_and_a_map_comes_out_per_step():
    """The block's input is read by its first convolution's crops and again by the sum: each reader sees each step's
    values (the kept output wound back between them), and with no cut each step's map is read from the last op."""
    model = with_biases(Segmenter()).eval()
    engine, x = kept(model, (3, 3, 16, 16), seed=1)
    steps = chain(x, 6)
    assert_plain(model, together.steps(engine, steps), steps)
    assert engine.together_passes == 1


def test_strided_crops_of_16_rows_or_more_run_by_torch_s_own_unfolding_not_nnpack():
    """With oneDNN off, torch gives a batch of 16 rows or more to NNPACK (several times slower on ResNet-50's strided
    crops): a pass of 4 steps of 8 samples makes such batches, and runs them with both off."""
    torch.manual_seed(0)
    model = with_biases(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.Flatten(), nn.Linear(8 * 16 * 16, 2))).eval()
    engine, x = kept(model, (8, 3, 32, 32))
    steps = chain(x, 4)
    nnpack = torch._C._get_nnpack_enabled()
    with Onednn() as seen:
        outputs = together.steps(engine, steps)
    assert_plain(model, outputs, steps)
    assert engine.together_passes == 1
    strided = [(rows, enabled) for rows, stride, enabled in seen.rows if stride == 2 and rows >= 16]
    assert strided and not any(enabled for _, enabled in strided)
    assert all(enabled == nnpack for rows, stride, enabled in seen.rows if stride == 1)
    assert torch._C._get_nnpack_enabled() == nnpack and torch._C._get_mkldnn_enabled()


def test_more_steps_than_one_pass_takes_run_in_passes_of_max_steps(monkeypatch):
    monkeypatch.setattr(together, "MAX_STEPS", 3)
    model = with_biases(TinyResNet()).eval()
    engine, x = kept(model, (2, 3, 16, 16))
    steps = chain(x, 7)
    assert_plain(model, together.steps(engine, steps), steps)
    assert engine.together_passes == 2  # 3 and 3 steps; the seventh alone, as a single pass
    assert engine.passes == {"full": 1, "incremental": 7}


def test_a_pass_takes_as_many_steps_as_keep_what_it_holds_within_together_bytes():
    model = with_biases(TinyResNet()).eval()
    engine, x = kept(model, (2, 3, 16, 16))
    steps = chain(x, 9)
    engine.together_bytes = 3 * engine.kept_bytes()  # before any such pass, a step counts as the whole base: 3 steps
    assert_plain(model, together.steps(engine, steps[:3]), steps[:3])
    assert engine.together_passes == 1 and 0 < engine.step_bytes < engine.kept_bytes()
    engine.together_bytes = 2 * engine.step_bytes  # then as measured: the 6 steps left in passes of 2
    assert_plain(model, together.steps(engine, steps[3:]), steps[3:])
    assert engine.together_passes == 4 and engine.passes == {"full": 1, "incremental": 9}


def test_a_pass_given_up_leaves_every_kept_output_as_it_was_and_the_steps_run_one_by_one(monkeypatch):
    model = with_biases(TinyResNet()).eval()
    engine, x = kept(model, (2, 3, 16, 16))
    before = [output.clone() for _, output in engine.kept if output is not None]
    stale = dict(engine.stale)
    given_up = []

    def diverges(self, later):
        given_up.append(sum(len(entry[3]) for entry in self.versions.values()))  # boxes written over kept outputs
        raise _Diverged

    monkeypatch.setattr(together._Steps, "captures", diverges)
    steps = chain(x, 4)
    assert together.together(engine, steps) is None
    assert given_up and given_up[0] > 0  # the pass had written boxes before it gave up
    after = [output for _, output in engine.kept if output is not None]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # copies back, no arithmetic
    assert engine.stale == stale and engine.together_passes == 0
    assert_plain(model, together.steps(engine, steps), steps)  # given up again, so one by one
    assert engine.passes == {"full": 1, "incremental": 4} and engine.together_passes == 0


def test_a_checkpoint_taken_before_steps_run_together_brings_the_base_back():
    model = with_biases(TinyResNet()).eval()
    engine, x = kept(model, (2, 3, 16, 16))
    engine.checkpoint()
    base = [output.clone() for _, output in engine.kept if output is not None]
    together.steps(engine, chain(x, 4))
    assert engine.together_passes == 1 and engine.rollback()
    assert all(torch.equal(a, b) for a, b in zip(base, [o for _, o in engine.kept if o is not None]))
    again = chain(x, 3, start=5)
    assert_plain(model, together.steps(engine, again), again)


@pytest.mark.parametrize("metric", ["region_perturbation", "irof"])
def test_metrics_score_the_same_with_steps_together_as_one_by_one(metric):
    torch.manual_seed(0)
    model = with_biases(TinyResNet()).eval()
    x = torch.rand(3, 3, 24, 24)
    relevance = torch.randn_like(x)
    target = torch.tensor([0, 1, 2])
    segments = (torch.arange(24)[:, None] // 6 * 4 + torch.arange(24)[None] // 6).expand(3, 24, 24)
    results = []
    for stepwise in (True, False):
        runner = evaluate.Runner(model, x, target, chains=True, incremental=True)
        runner.incremental.stepwise = stepwise
        if metric == "irof":
            result = evaluate.irof(runner, x, relevance, target, segments=segments, baseline=0.0)
        else:
            result = evaluate.region_perturbation(runner, x, relevance, target, patch_size=4, steps=10)
        results.append((result, runner.incremental.together_passes))
    (together_, passes), (alone, none) = results
    assert passes > 0 and none == 0
    torch.testing.assert_close(together_.scores, alone.scores, rtol=1e-5, atol=1e-6)
    for order in together_.curves:
        torch.testing.assert_close(together_.curves[order], alone.curves[order], rtol=1e-5, atol=1e-6)
