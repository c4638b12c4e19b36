import copy

import pytest
import torch
from safetensors.torch import load_file

from relprop import correct
from relprop.correct.finetune import finetune

from . import planted


def _setup():
    net = planted.trained()
    images, labels, marked = planted.generate(400, 3)
    cav = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    return net, images, labels, cav


def test_rr_clarc_removes_the_planted_dependence_keeps_clean_accuracy_and_leaves_the_model_untouched(tmp_path):
    net, images, labels, cav = _setup()
    before = copy.deepcopy(net.state_dict())
    reports = []
    fixed = finetune(net, images, labels, cav, "rr-clarc", tmp_path, epochs=3, lr=1e-2, penalty=10.0, train="after",
                     progress=reports.append)
    x, y = planted.unmarked(400, 7)
    marked = planted.add_artifact(x)
    sensitivity = [correct.artifact_sensitivity(m, x, marked, 1).mean() for m in (net, fixed)]
    assert sensitivity[1].abs() < 0.2 * sensitivity[0]
    assert correct.accuracy(fixed, x, y) >= correct.accuracy(net, x, y) - 0.03
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert [report["epoch"] for report in reports] == [1, 2, 3] and all("loss" in r for r in reports)
    written = load_file(str(tmp_path / "weights.safetensors"))
    for key, value in fixed.state_dict().items():
        torch.testing.assert_close(written[key], value)
    assert not (tmp_path / "checkpoint").exists()  # removed once the weights are written


def test_a_clarc_lowers_the_planted_dependence(tmp_path):
    net, images, labels, cav = _setup()
    fixed = finetune(net, images, labels, cav, "a-clarc", tmp_path, epochs=3, lr=1e-2)
    x, y = planted.unmarked(400, 7)
    marked = planted.add_artifact(x)
    sensitivity = [correct.artifact_sensitivity(m, x, marked, 1).mean() for m in (net, fixed)]
    assert sensitivity[1] < 0.7 * sensitivity[0]
    assert correct.accuracy(fixed, x, y) >= correct.accuracy(net, x, y) - 0.03


@pytest.mark.parametrize("method", ["a-clarc", "rr-clarc"])
def test_fine_tuning_is_seeded_and_a_killed_run_resumes_to_the_same_weights(tmp_path, method):
    net, images, labels, cav = _setup()
    images, labels = images[:128], labels[:128]
    whole = finetune(net, images, labels, cav, method, tmp_path / "whole", epochs=2, lr=1e-2, seed=3)
    again = finetune(net, images, labels, cav, method, tmp_path / "again", epochs=2, lr=1e-2, seed=3)

    def stop_after_first(report):
        if report["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(net, images, labels, cav, method, tmp_path / "killed", epochs=2, lr=1e-2, seed=3,
                 progress=stop_after_first)
    assert (tmp_path / "killed" / "checkpoint" / "state.json").is_file()
    assert not (tmp_path / "killed" / "weights.safetensors").exists()
    reports = []
    resumed = finetune(net, images, labels, cav, method, tmp_path / "killed", epochs=2, lr=1e-2, seed=3,
                       progress=reports.append)
    assert [report["epoch"] for report in reports] == [2]  # the first epoch was not run again
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
        torch.testing.assert_close(resumed.state_dict()[key], value)


def test_a_checkpoint_of_other_settings_is_refused_instead_of_mixed_in(tmp_path):
    net, images, labels, cav = _setup()

    def stop(report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(net, images[:64], labels[:64], cav, "rr-clarc", tmp_path, epochs=2, lr=1e-2, progress=stop)
    with pytest.raises(ValueError, match="other settings \\(lr\\).*delete"):
        finetune(net, images[:64], labels[:64], cav, "rr-clarc", tmp_path, epochs=2, lr=1e-3)


def test_unknown_method_and_a_layer_without_parameters_after_it_are_refused(tmp_path):
    net, images, labels, cav = _setup()
    with pytest.raises(ValueError, match="unknown fine-tuning method 'p-clarc'"):
        finetune(net, images, labels, cav, "p-clarc", tmp_path)
    last = correct.from_inputs(net, images[:4], images[4:8], "head")
    with pytest.raises(ValueError, match="no parameters run after layer 'head'"):
        finetune(net, images, labels, last, "a-clarc", tmp_path)
