import sys

import pytest
import torch

import relprop
from relprop.comparison import COLUMNS

FEATURES = ["age", "income", "debt"]
# Two composites that differ on a dense model (z+ and alpha-beta act on convolutions: epsilon_plus is epsilon there)
DIFFERENT = {"epsilon": "epsilon", "epsilon=0.5": relprop.composites.Epsilon(epsilon=0.5)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()


def test_one_row_per_composite_and_sample_with_sums_residuals_and_features(model):
    x = torch.randn(4, 3)
    table = relprop.compare(model, x, composites=DIFFERENT, target=0, feature_names=FEATURES, k=2)
    assert len(table) == 8
    assert [row["composite"] for row in table] == ["epsilon"] * 4 + ["epsilon=0.5"] * 4
    assert all(row["same_as"] == [] for row in table) and table.groups == [["epsilon"], ["epsilon=0.5"]]
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
    table = relprop.compare(model, torch.randn(2, 3), composites=DIFFERENT, feature_names=FEATURES)
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
    assert listed == ["epsilon", "attnlrp", "cp_lrp", "epsilon_alpha2_beta1", "epsilon_plus"]  # the default's first
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


def test_composites_that_coincide_on_a_dense_model_are_listed_once_and_named(model):
    # compare(mlp, rows) printed five identical blocks: on a dense model every default composite is epsilon (z+ and
    # alpha-beta act on convolutions; attnlrp's LRP-0 is epsilon=1e-6 to 1e-5 of the relevance in float32)
    x = torch.randn(3, 3)
    table = relprop.compare(model, x, target=0, feature_names=FEATURES)
    others = ["attnlrp", "cp_lrp", "epsilon_alpha2_beta1", "epsilon_plus"]
    assert table.groups == [["epsilon", *others]]
    assert [row["composite"] for row in table] == ["epsilon"] * 3 and all(row["same_as"] == others for row in table)
    assert f"epsilon stands for {', '.join(others)}: relevance within 0.0001 of each sample's largest" in str(table)
    for label in others:  # every composite was explained; the rows stand for them within the tolerance
        reference, merged = table.explanations["epsilon"].relevance, table.explanations[label].relevance
        scale = reference.abs().amax(1, keepdim=True)
        assert bool(((merged - reference).abs() <= 1e-4 * scale).all()), label
    asked = relprop.compare(model, x, composites=["epsilon_plus", "epsilon"], target=0)
    assert asked.groups == [["epsilon_plus", "epsilon"]] and len(asked) == 3  # the first given stands for the rest
    every = relprop.compare(model, x, composites=["epsilon_plus", "epsilon"], target=0, merge=False)
    assert every.groups == [["epsilon_plus"], ["epsilon"]] and len(every) == 6 and "stands for" not in str(every)


def test_composites_coincide_by_their_relevance_on_the_model_at_hand():
    torch.manual_seed(0)
    # One convolution, the first layer: the flat composites differ only on later convolutions, so here they coincide
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8, 2)).eval()
    x = torch.randn(2, 1, 4, 4)
    names = ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_plus", "epsilon_alpha2_beta1"]
    assert relprop.compare(cnn, x, composites=names, target=0).groups == [names[:2], [names[2]], [names[3]]]
    deeper = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1),
                                 torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    with torch.no_grad():
        deeper[2].bias.fill_(0.3)  # a positive bias: z+ and alpha-beta then differ on the second convolution
    assert relprop.compare(deeper, x, composites=names[:2], target=0).groups == [names[:1], names[1:2]]
