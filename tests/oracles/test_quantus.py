"""relprop.evaluate against Quantus 0.6 on the same model, inputs, relevance and baseline.

Quantus needs NumPy below 2.4 (it calls np.trapz), so the comparison runs in its own environment
(scripts/quantus_venv.sh, which the test command builds) through tests/oracles/quantus_oracle.py. Where Quantus is
wrong, the test says so; relprop's own value is checked against the formula in tests/evaluate/."""
import functools
import json
import os
import subprocess

import pytest

QUANTUS_PYTHON = os.environ.get("RELPROP_QUANTUS_PYTHON")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not QUANTUS_PYTHON, reason="set RELPROP_QUANTUS_PYTHON to .venv-quantus/bin/python, "
                                                           "built by scripts/quantus_venv.sh (scripts/test.sh does both)")


@functools.lru_cache(maxsize=1)
def oracle():
    result = subprocess.run([QUANTUS_PYTHON, "-m", "tests.oracles.quantus_oracle"], capture_output=True, text=True,
                            timeout=900, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_metrics_both_define_equal_quantus():
    gaps = oracle()["gaps"]
    assert set(gaps) == {"pixel_flipping", "region_perturbation_morf", "region_perturbation_lerf", "selectivity",
                         "faithfulness_estimate", "irof", "sufficiency", "relevance_mass_accuracy",
                         "relevance_rank_accuracy", "pointing_game", "attribution_localisation", "top_k_intersection",
                         "auc", "focus", "focus_non_square", "sparseness", "complexity", "effective_complexity", "noisy_linear_imputation"}
    # float32 models: what is left is the order of float32 sums in batches of different make-up
    assert max(gaps.values()) < 1e-5, gaps


def test_road_equals_quantus_on_single_channel_images_where_quantus_runs():
    notes = oracle()["notes"]
    # Quantus 0.6's ROAD indexes pixels by positions in the channel-broadcast relevance and fails (IndexError) on
    # colour images; on one channel, without noise, both give the same accuracy per percentage
    assert list(notes["quantus_road"].values()) == notes["relprop_road"]


def test_quantus_monotonicity_never_restores_the_input_so_every_sample_passes():
    notes = oracle()["notes"]
    # Quantus 0.6 writes the baseline into the all-baseline input instead of x's values: its curve is flat and it
    # reports True for every sample; relprop restores x (checked against the formula in evaluate/test_faithfulness)
    assert notes["quantus_monotonicity"] == [1.0] * 4
    assert notes["relprop_monotonicity"] == [0.0] * 4
