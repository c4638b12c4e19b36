"""relprop as users install it: the wheel goes into an environment that already has the oldest torch relprop supports
(.venv-oldest, built by scripts/oldest_venv.sh), keeps that torch, and the core tests and the demo run from the
installed wheel, outside the repository."""
import json
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
OLDEST_PYTHON = os.environ.get("RELPROP_OLDEST_PYTHON")
pytestmark = pytest.mark.skipif(not OLDEST_PYTHON, reason="set RELPROP_OLDEST_PYTHON to .venv-oldest/bin/python, "
                                "built by scripts/oldest_venv.sh (the test command does both)")
# the core of the engine: rules, composites, conservation on torchvision architectures, canonizers, the op families
CORE = ["test_rules.py", "test_composites.py", "test_lrp.py", "test_canonizers.py", "engine/test_session.py",
        "test_architectures.py", "test_explanation.py", "ops/test_elementwise.py", "ops/test_recurrent.py",
        "ops/test_custom.py", "ops/test_kept.py", "ops/test_table.py"]


def oldest(*arguments, cwd, env=None, timeout=900):
    result = subprocess.run([OLDEST_PYTHON, *arguments], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": "", **(env or {})})  # the checkout's src/ never leaks in
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-4000:])
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A folder holding relprop installed from a wheel built from this checkout, for the oldest environment."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(folder / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((folder / "dist").glob("relprop-*.whl"))
    # what pip would do to the user's environment: with the dependencies already there, it installs relprop alone
    report = folder / "report.json"
    oldest("-m", "pip", "install", "-q", "--dry-run", "--no-index", "--report", str(report), str(wheel), cwd=folder)
    would_install = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert would_install == ["relprop"], would_install
    oldest("-m", "pip", "install", "-q", "--no-deps", "--target", str(folder / "site"), str(wheel), cwd=folder)
    return folder


def test_the_declared_torch_range_starts_at_the_torch_of_the_oldest_environment():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_range = next(item for item in dependencies if item.startswith("torch"))
    version = oldest("-c", "import torch; print(torch.__version__.split('+')[0])", cwd=ROOT).strip()
    assert torch_range.startswith(f"torch>={version},"), (torch_range, version)


def test_the_core_tests_pass_on_the_oldest_torch_from_the_installed_wheel(installed):
    # the tests are copied out so that nothing of the checkout's src/ can be imported by accident
    # (with pyproject.toml for pytest's settings: markers, warnings that are errors)
    subprocess.run(["cp", "-r", str(ROOT / "tests"), str(ROOT / "pyproject.toml"), str(installed)], check=True)
    output = oldest("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                    *[f"tests/{name}" for name in CORE], cwd=installed, env={"PYTHONPATH": str(installed / "site")})
    summary = output.splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, output[-2000:]
    assert int(summary.split(" passed")[0].split()[-1]) > 300, summary  # the whole core ran, not a few files
    where = oldest("-c", "import relprop; print(relprop.__file__)", cwd=installed,
                   env={"PYTHONPATH": str(installed / "site")})
    assert where.startswith(str(installed / "site")), where


def test_the_demo_and_one_explanation_run_from_the_installed_wheel(installed):
    script = ("import torch, torchvision, relprop\n"
              "from relprop.tour import showcase\n"
              "result = showcase.run('demo', count=4, shortcut=False)\n"
              "model = torchvision.models.resnet18().eval()\n"
              "expl = relprop.explain(model, torch.randn(1, 3, 64, 64), target=3)\n"
              "print(torch.__version__, expl.relevance.shape[1:] == (3, 64, 64), sorted(result)[:1])\n")
    output = oldest("-c", script, cwd=installed, env={"PYTHONPATH": str(installed / "site")})
    assert output.startswith("2.4.1") and " True " in output, output
    assert (installed / "demo" / "demo.png").is_file() and (installed / "demo" / "index.html").is_file()
