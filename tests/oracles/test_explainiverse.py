"""relprop's "explainiverse" composite against explainiverse 0.8.1's LRPExplainer, feature by feature, on an MLP
with leaky activations (negative inputs to inner layers) and a CNN with max-pooling.

explainiverse pins numpy < 2, shap < 0.49 and scikit-learn < 1.6, so the comparison runs in its own environment
(scripts/explainiverse_venv.sh, which the test command builds) through tests/oracles/explainiverse_oracle.py. It
computes in float32; relprop runs on the same float32 model, so the differences left are float32 rounding (relprop's
own float32 and float64 results differ by up to 1.3e-5 on the CNN's gamma case, whose denominators come near zero).
"""
import json
import os
import subprocess

import pytest

EXPLAINIVERSE_PYTHON = os.environ.get("RELPROP_EXPLAINIVERSE_PYTHON")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = ("epsilon", "gamma", "z_plus", "alpha_beta", "composite")
MODELS = ("mlp", "cnn")
FLOAT32 = 1e-4

pytestmark = pytest.mark.skipif(not EXPLAINIVERSE_PYTHON, reason="set RELPROP_EXPLAINIVERSE_PYTHON to "
                                ".venv-explainiverse/bin/python, built by scripts/explainiverse_venv.sh "
                                "(scripts/test.sh does both)")


@pytest.fixture(scope="module")
def results():
    result = subprocess.run([EXPLAINIVERSE_PYTHON, "-m", "tests.oracles.explainiverse_oracle"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def feature(results, name):
    found = {key: value for key, value in results.items() if key.endswith("/" + name)}
    assert set(found) == {f"{model}/{rule}/{name}" for model in MODELS for rule in RULES}, found
    return found


@pytest.mark.parametrize("name", ["explain", "explain_predicted"])
def test_explain_equals_explainiverse_for_every_rule_and_the_composite_rule(results, name):
    differences = feature(results, name)
    assert max(differences.values()) < FLOAT32, differences


def test_convergence_delta_equals_explainiverse_as_explained_sum_and_absolute_delta(results):
    differences = feature(results, "convergence_delta")
    assert max(differences.values()) < FLOAT32, differences


def test_explain_batch_equals_explainiverse_sample_by_sample(results):
    differences = feature(results, "explain_batch")
    assert max(differences.values()) < FLOAT32, differences


def test_recorded_layers_equal_explainiverse_layer_relevances(results):
    differences = feature(results, "layer_relevances")
    assert max(differences.values()) < FLOAT32, differences


def test_feature_names_and_class_names_match_explainiverse_labels(results):
    assert all(feature(results, "names").values())


def test_compare_equals_explainiverse_compare_rules_with_its_top_feature(results):
    assert max(results[f"{model}/compare_rules"] for model in MODELS) < FLOAT32, results
    assert all(results[f"{model}/compare_rules_top"] for model in MODELS)


def test_no_target_without_class_names_explains_the_whole_output_as_explainiverse_does(results):
    assert results["mlp/whole_output"] < FLOAT32


def test_a_softmax_output_gives_explainiverse_numbers_from_a_probability_target(results):
    assert results["mlp/softmax_output"] < FLOAT32
