"""The registry of methods by name: every caller that builds a method from its name gets the same method with the
same defaults (the command line, relprop.datasets.run's worker and the evaluation)."""
import inspect

import pytest
import torch

from relprop import LRP, attribution
from relprop.attribution import Occlusion, registry


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 16 * 16, 3)).eval()


def test_every_name_builds_its_class_with_the_defaults_of_its_name():
    model = small_model()
    for name in registry.names():
        built = registry.build(name, model)
        assert type(built) is registry.get(name).constructor, name
    assert registry.names()[0] == "lrp" and isinstance(registry.build("lrp", model), LRP)
    assert registry.names(lrp=False) == list(attribution.BY_NAME)
    assert registry.build("occlusion", model).window == (8, 8)
    assert registry.build("occlusion", model, window=(4, 4)).window == (4, 4)


def test_the_three_builders_by_name_give_occlusion_the_same_8x8_windows():
    from relprop.cli.options import build_method
    from relprop.datasets.work import Settings, build_attributor
    from relprop.evaluate.methods import explainer

    model = small_model()
    from_cli, used = build_method("occlusion", "epsilon_plus_flat", {}, model, None)
    from_run = build_attributor(model, Settings(method="occlusion", composite=None))
    assert from_cli.window == from_run.window == (8, 8) and used["window"] == [8, 8]
    built = []
    original = registry.Method.build

    def spy(self, model, **values):
        built.append(original(self, model, **values))
        return built[-1]
    x = torch.rand(1, 3, 16, 16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry.Method, "build", spy)
        explainer("occlusion")(model, x, None)
    assert isinstance(built[0], Occlusion) and built[0].window == (8, 8)


def test_parameters_by_name_leave_out_what_is_given_apart_and_lrp_takes_its_composites():
    parameters = registry.get("integrated_gradients").parameters()
    assert list(parameters) == ["baseline", "steps", "method"]
    assert all(isinstance(parameter, inspect.Parameter) for parameter in parameters.values())
    assert "window" in registry.get("occlusion").parameters() and "output" not in registry.get("occlusion").parameters()
    assert registry.get("lrp").parameters() == {}


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown method 'gradcam'; choose one of lrp, gradient"):
        registry.get("gradcam")


def test_each_method_states_what_the_memory_estimate_reads():
    assert registry.get("occlusion").memory() == {"keeps_graph": False, "copies_in_passes": True,
                                                   "saved_per_activation": 1.0}
    assert registry.get("lrp").memory()["saved_per_activation"] == LRP.saved_per_activation
    assert registry.get("smoothgrad").memory()["copies_in_passes"] is True


def test_defaults_cannot_be_changed_by_a_caller():
    with pytest.raises(TypeError):
        registry.get("occlusion").defaults["window"] = (2, 2)


def test_relprop_evaluate_keeps_its_4x4_occlusion_windows_and_says_so_to_the_benchmark(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from relprop import evaluate
    from relprop.cli import main

    given = {}

    def benchmark(model, source, methods, metrics, **options):
        given.update(options["method_options"])
        raise RuntimeError("stopped here")
    monkeypatch.setattr(evaluate, "benchmark", benchmark)
    result = CliRunner().invoke(main, ["evaluate", "demo", "--model", "demo", "--methods", "occlusion,gradient",
                                       "--metrics", "aopc", "--count", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "stopped here" in result.stderr
    assert given == {"occlusion": {"window": (4, 4)}}
