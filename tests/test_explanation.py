import sys

import pytest
import torch

import relprop

FEATURES = ["age", "income", "debt", "tenure"]


@pytest.fixture(scope="module")
def tabular():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(5, 4)
    explanation = relprop.explain(model, x, target=1, composite="epsilon")
    explanation.feature_names = FEATURES
    return model, x, explanation


def test_indexing_gives_the_samples_of_the_batch_explanation(tabular):
    model, x, explanation = tabular
    second = explanation[1]
    assert isinstance(second, relprop.Explanation) and len(second) == 1
    assert torch.equal(second.relevance, explanation.relevance[1:2])
    assert torch.equal(second.output, explanation.output[1:2])
    assert second.delta.tolist() == explanation.delta[1:2].tolist()
    assert second.target.tolist() == [1] and second.feature_names == FEATURES
    assert torch.equal(explanation[-1].relevance, explanation.relevance[4:5])
    assert len(explanation[1:4]) == 3 and len(explanation[[0, 2]]) == 2
    assert len(explanation[explanation.relevance_sum > 1e9]) == 0


def test_one_batched_call_matches_explaining_each_row_alone(tabular):
    model, x, explanation = tabular
    for i, sample in enumerate(explanation):
        alone = relprop.explain(model, x[i:i + 1], target=1, composite="epsilon")
        torch.testing.assert_close(sample.relevance, alone.relevance)
    assert len(list(explanation)) == 5


def test_out_of_range_and_odd_indices_are_refused(tabular):
    _, _, explanation = tabular
    with pytest.raises(IndexError, match="sample 5 out of range"):
        explanation[5]
    with pytest.raises(TypeError, match="index an Explanation"):
        explanation["age"]


def test_top_lists_features_by_relevance_per_sample(tabular):
    _, _, explanation = tabular
    top = explanation.top(2)
    assert len(top) == 5 and all(len(row) == 2 for row in top)
    for row, relevance in zip(top, explanation.relevance):
        best = relevance.argsort(descending=True)[:2].tolist()
        assert [name for name, _ in row] == [FEATURES[i] for i in best]
        assert [value for _, value in row] == pytest.approx(relevance[best].tolist())
    by_magnitude = explanation.top(1, absolute=True)
    assert [row[0][0] for row in by_magnitude] == [FEATURES[int(r.abs().argmax())] for r in explanation.relevance]


def test_features_without_names_are_named_by_position():
    explanation = relprop.Explanation(torch.tensor([[[0.0, 3.0], [1.0, 0.0]]]), torch.zeros(1, 2),
                                      torch.ones(1), torch.zeros(1))
    assert explanation.top(2) == [[("x[0, 1]", 3.0), ("x[1, 0]", 1.0)]]
    explanation.feature_names = ["a", "b"]  # names for the last dimension: the position of the rest is kept
    assert explanation.feature_labels() == ["a[0]", "b[0]", "a[1]", "b[1]"]
    explanation.feature_names = ["a", "b", "c"]
    with pytest.raises(ValueError, match="3 feature names for samples shaped"):
        explanation.top()


def test_to_dataframe_without_pandas_says_how_to_install_it(tabular, monkeypatch):
    _, _, explanation = tabular
    monkeypatch.setitem(sys.modules, "pandas", None)  # importing pandas now fails, installed or not
    with pytest.raises(ImportError, match="pip install pandas"):
        explanation.to_dataframe()


def test_to_dataframe_has_a_row_per_sample_and_a_column_per_feature(tabular):
    pytest.importorskip("pandas")
    _, _, explanation = tabular
    frame = explanation.to_dataframe()
    assert list(frame.columns) == FEATURES and len(frame) == 5
    assert frame.loc[2, "debt"] == pytest.approx(float(explanation.relevance[2, 2]))


def test_plot_draws_named_bars_for_a_table_row(tabular):
    _, _, explanation = tabular
    ax = explanation.plot(sample=3)
    assert sorted(tick.get_text() for tick in ax.get_yticklabels()) == sorted(FEATURES)
    heights = sorted(patch.get_width() for patch in ax.patches)
    assert heights == pytest.approx(sorted(explanation.relevance[3].tolist()))


def test_plot_picks_line_for_signals_and_heatmap_for_images():
    signal = relprop.Explanation(torch.randn(2, 1, 200), torch.zeros(2, 2), torch.ones(2), torch.zeros(2))
    assert len(signal.plot().collections) == 2  # relevance above and below zero, filled
    image = relprop.Explanation(torch.randn(1, 3, 8, 8), torch.zeros(1, 2), torch.ones(1), torch.zeros(1))
    assert len(image.plot().images) == 1


def test_class_names_name_the_explained_class_of_each_sample_and_survive_indexing():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(3, 4)
    explanation = relprop.explain(model, x, target=[2, 0, 1], composite="epsilon", class_names=["cat", "dog", "bird"])
    assert explanation.target_names == ["bird", "cat", "dog"]
    assert explanation[1:].target_names == ["cat", "dog"]
    unnamed = relprop.explain(model, x, target=[2, 0, 1], composite="epsilon")
    assert unnamed.target_names == ["class_2", "class_0", "class_1"]
    assert relprop.explain(model, x, target=lambda out: out, composite="epsilon").target_names is None
    with pytest.raises(ValueError, match="one name per output class"):
        relprop.explain(model, x, target=2, composite="epsilon", class_names=["cat", "dog"]).target_names


def _images_in(page: str) -> list:
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_an_explanation_of_images_draws_each_samples_heatmap_in_a_notebook():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    expl = relprop.explain(model, torch.randn(3, 3, 6, 6), target=[0, 1, 2])
    page = expl._repr_html_()
    pictures = _images_in(page)
    assert len(pictures) == 3 and all(picture.shape == (6, 6, 3) for picture in pictures)
    expected = relprop.viz.heatmap(expl.relevance)
    for picture, heatmap in zip(pictures, expected):
        assert (picture == heatmap).all()  # the PNG round trip is lossless: the same uint8 pixels
    assert page.count("<tr>") == 4 and f"{expl.delta[2].item():.3g}" in page and "class_2" in page


def test_an_explanation_of_table_rows_shows_its_numbers_without_pictures_and_says_what_it_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    torch.manual_seed(0)
    expl = relprop.explain(model, torch.randn(10, 4), target=1)
    page = expl._repr_html_()
    assert "<img" not in page and page.count("<tr>") == 1 + 8 and "2 more samples not shown" in page


def test_a_report_in_a_notebook_is_a_table_of_every_op_with_leaks_marked():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()
    report = relprop.LRP(model, composite="epsilon").report(torch.randn(2, 4), target=0)
    page = report._repr_html_()
    assert page.count("<tr") == 1 + len(report)
    assert page.count("background:#fde0dd") == len(report.leaks())
    assert str(report).splitlines()[-1] in page
