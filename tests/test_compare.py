import sys

import pytest
import torch

import relprop
from relprop.compare import COLUMNS

FEATURES = ["age", "income", "debt"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()


def test_one_row_per_composite_and_sample_with_sums_residuals_and_features(model):
    x = torch.randn(4, 3)
    table = relprop.compare(model, x, composites=["epsilon", "epsilon_plus"], target=0, feature_names=FEATURES, k=2)
    assert len(table) == 8
    assert [row["composite"] for row in table] == ["epsilon"] * 4 + ["epsilon_plus"] * 4
    for row in table:
        explanation = table.explanations[row["composite"]]
        sample = row["sample"]
        assert row["target"] == 0
        assert row["relevance_sum"] == pytest.approx(float(explanation.relevance[sample].sum()))
        assert row["residual"] == pytest.approx(row["explained"] - row["relevance_sum"], abs=1e-5)
        assert [row[name] for name in FEATURES] == pytest.approx(explanation.relevance[sample].tolist())
        assert len(row["top"]) == 2 and row["top"][0][0] in FEATURES
        assert explanation.feature_names == FEATURES


def test_each_composite_explains_the_whole_batch_in_one_call(model, monkeypatch):
    calls = []
    original = relprop.LRP.__call__

    def counted(self, x, *args, **kwargs):
        calls.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(relprop.LRP, "__call__", counted)
    relprop.compare(model, torch.randn(6, 3), composites=["epsilon", "epsilon_plus_flat", "epsilon_gamma_box"])
    assert calls == [6, 6, 6]


def test_composite_objects_and_labels(model):
    composite = relprop.composites.Epsilon(epsilon=0.1)
    table = relprop.compare(model, torch.randn(2, 3), composites={"eps 0.1": composite, "plain": "epsilon"})
    assert {row["composite"] for row in table} == {"eps 0.1", "plain"}
    assert "eps 0.1" in str(table) and "top features" in str(table)


def test_feature_named_like_a_column_keeps_both(model):
    table = relprop.compare(model, torch.randn(1, 3), composites=["epsilon"], feature_names=["target", "b", "c"])
    assert table[0]["target"] is not None and "relevance[target]" in table[0]
    assert set(COLUMNS) <= set(table[0])


def test_dataframe_needs_pandas_and_says_so(model, monkeypatch):
    table = relprop.compare(model, torch.randn(1, 3), composites=["epsilon"])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        table.to_dataframe()


def test_dataframe_side_by_side(model):
    pytest.importorskip("pandas")
    table = relprop.compare(model, torch.randn(2, 3), composites=["epsilon", "epsilon_plus"], feature_names=FEATURES)
    frame = table.to_dataframe()
    assert len(frame) == 4 and set(FEATURES) <= set(frame.columns)


def test_wrong_number_of_feature_names_is_refused(model):
    with pytest.raises(ValueError, match="2 feature names"):
        relprop.compare(model, torch.randn(1, 3), composites=["epsilon"], feature_names=["a", "b"])


def test_by_default_a_dense_first_model_is_not_compared_under_image_first_layer_rules(model, monkeypatch):
    calls = []
    original = relprop.LRP.__call__

    def counted(self, x, *args, **kwargs):
        explanation = original(self, x, *args, **kwargs)
        calls.append(explanation.composite["name"])
        return explanation

    monkeypatch.setattr(relprop.LRP, "__call__", counted)
    x = torch.randn(2, 3)
    table = relprop.compare(model, x, target=0)
    listed = list(table.explanations)
    assert listed == ["attnlrp", "cp_lrp", "epsilon", "epsilon_alpha2_beta1", "epsilon_plus"]
    assert sorted(calls) == sorted(listed)  # the default's run is the epsilon column, not a run of its own
    torch.testing.assert_close(table.explanations["epsilon"].relevance,
                               original(relprop.LRP(model, "epsilon"), x, 0).relevance)


def test_by_default_a_conv_first_model_is_compared_under_every_composite():
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8, 2)).eval()
    table = relprop.compare(cnn, torch.randn(1, 1, 4, 4), target=0)
    assert sorted(table.explanations) == [name for name in relprop.composites.names()
                                          if name not in relprop.composites.PRESETS]


def test_absolute_ranks_top_features_by_magnitude_and_class_names_label_rows(model):
    torch.manual_seed(2)
    x = torch.randn(3, 3)
    table = relprop.compare(model, x, composites=["epsilon"], target=1, feature_names=FEATURES, k=3, absolute=True,
                            class_names=["no", "yes"])
    for row in table:
        magnitudes = [abs(value) for _, value in row["top"]]
        assert magnitudes == sorted(magnitudes, reverse=True) and row["class"] == "yes"
    assert relprop.compare(model, x, composites=["epsilon"], target=1)[0]["class"] == "class_1"
