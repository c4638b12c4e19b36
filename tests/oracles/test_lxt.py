"""AttnLRP and CP-LRP against LXT, the AttnLRP authors' efficient implementation, on LLaMA, GPT-2, BERT and ViT.

LXT 2.1 needs transformers 4.x, so the comparison runs in its own environment (scripts/lxt_venv.sh, which the test
command builds) through tests/oracles/lxt_oracle.py."""
import json
import os
import subprocess

import pytest

LXT_PYTHON = os.environ.get("RELPROP_LXT_PYTHON")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not LXT_PYTHON, reason="set RELPROP_LXT_PYTHON to .venv-lxt/bin/python, built by "
                                                       "scripts/lxt_venv.sh (scripts/test.sh does both)")


def lxt_differences(composite):
    result = subprocess.run([LXT_PYTHON, "-m", "tests.oracles.lxt_oracle", composite], capture_output=True, text=True,
                            timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_attnlrp_equals_lxt_on_llama_gpt2_and_bert():
    differences = lxt_differences("attnlrp")
    assert set(differences) == {"llama/eager", "llama/sdpa", "gpt2/eager", "gpt2/sdpa", "bert/eager"}
    # float64 throughout; LLaMA's RMSNorm computes in float32, which is what is left
    assert max(differences.values()) < 1e-6, differences


def test_cp_lrp_equals_lxt_on_llama_gpt2_and_torchvision_vit():
    differences = lxt_differences("cp_lrp")  # LXT has no CP-LRP map for BERT, and only CP-LRP for the ViT
    assert set(differences) == {"llama/eager", "llama/sdpa", "gpt2/eager", "gpt2/sdpa", "vit"}
    assert max(differences.values()) < 1e-6, differences
