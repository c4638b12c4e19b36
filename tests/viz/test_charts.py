import numpy as np
import pytest
from matplotlib.colors import to_hex

from relprop import viz


def test_bars_are_red_for_positive_blue_for_negative_largest_on_top():
    ax = viz.bars([0.5, -2.0, 1.0], names=["age", "income", "debt"])
    patches = ax.patches
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert labels == ["income", "age", "debt"]  # bottom to top: ascending, so the largest is on top
    colours = [to_hex(p.get_facecolor()) for p in patches]
    assert colours == [viz.charts.NEGATIVE, viz.charts.POSITIVE, viz.charts.POSITIVE]


def test_bars_top_keeps_largest_magnitudes():
    ax = viz.bars(np.array([0.1, -5.0, 3.0, 0.2]), top=2)
    assert sorted(tick.get_text() for tick in ax.get_yticklabels()) == ["x[1]", "x[2]"]


def test_bars_need_one_name_per_value():
    with pytest.raises(ValueError, match="2 names for 3"):
        viz.bars([1.0, 2.0, 3.0], names=["a", "b"])


def test_line_fills_above_and_below_zero(tmp_path):
    ax = viz.line(np.sin(np.linspace(0, 6.28, 50)), title="signal")
    assert len(ax.collections) == 2 and ax.get_title() == "signal"
    viz.save_figure(ax.figure, tmp_path / "line.png")
    assert (tmp_path / "line.png").stat().st_size > 0
