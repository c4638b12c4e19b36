import numpy as np
import pytest
import torch
from PIL import Image

from relprop import viz

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def test_channel_reductions_sum_clip_and_take_absolute_values():
    relevance = torch.tensor([[[[1.0, -3.0]], [[2.0, 1.0]]]])  # (1, 2, 1, 2): two channels
    assert viz.reduce_channels(relevance, "sum").tolist() == [[[3.0, -2.0]]]
    assert viz.reduce_channels(relevance, "positive").tolist() == [[[3.0, 0.0]]]
    assert viz.reduce_channels(relevance, "absolute").tolist() == [[[3.0, 4.0]]]
    with pytest.raises(ValueError, match="sum, positive, absolute"):
        viz.reduce_channels(relevance, "max")


def test_normalisation_is_symmetric_around_zero():
    maps = np.array([[[4.0, -2.0, 0.0]], [[0.5, 0.0, -1.0]]])
    per_sample = viz.normalize(maps)
    assert per_sample[0].tolist() == [[1.0, -0.5, 0.0]]  # divided by max |value| of its own sample
    assert per_sample[1].tolist() == [[0.5, 0.0, -1.0]]
    overall = viz.normalize(maps, per_sample=False)
    assert overall[1].tolist() == [[0.125, 0.0, -0.25]]  # one scale for the batch
    assert viz.normalize(np.zeros((1, 2, 2))).tolist() == [[[0.0, 0.0], [0.0, 0.0]]]


def test_percentile_clips_outliers():
    maps = np.array([[list(range(1, 100)) + [1000.0]]])
    assert viz.normalize(maps, percentile=99)[0, 0, -1] == 1.0
    assert viz.normalize(maps, percentile=99)[0, 0, 0] > 5 * viz.normalize(maps)[0, 0, 0]


def test_heatmap_colours_positive_red_negative_blue_zero_white():
    relevance = torch.zeros(1, 3, 4, 4)
    relevance[0, 0, 1, 2] = 2.0
    relevance[0, 1, 3, 0] = -2.0
    image = viz.heatmap(relevance, cmap="bwr")
    assert image.shape == (1, 4, 4, 3) and image.dtype == np.uint8
    assert tuple(image[0, 1, 2]) == RED
    assert tuple(image[0, 3, 0]) == BLUE
    assert tuple(image[0, 0, 0]) == WHITE


def test_half_the_largest_magnitude_lands_halfway_to_the_end_colour():
    relevance = torch.tensor([[[1.0, -0.5]]])  # (C, H, W) = one image
    image = viz.heatmap(relevance, cmap="bwr")
    expected = np.round(np.array(viz.colormaps.get("bwr")(0.25)[:3]) * 255)
    assert np.abs(image[0, 0, 1].astype(int) - expected).max() <= 1


def test_overlay_keeps_image_where_relevance_is_zero_and_blends_where_it_is_largest():
    images = torch.full((1, 3, 2, 2), 0.2)
    relevance = torch.zeros(1, 3, 2, 2)
    relevance[0, :, 0, 0] = 1.0
    blended = viz.overlay(images, relevance, alpha=0.5, cmap="bwr", grayscale=False)
    assert tuple(blended[0, 1, 1]) == (51, 51, 51)
    assert tuple(blended[0, 0, 0]) == (round(0.5 * 51 + 0.5 * 255), round(0.5 * 51), round(0.5 * 51))
    flat = viz.overlay(images, relevance, alpha=0.5, cmap="bwr", by_magnitude=False, grayscale=False)
    assert tuple(flat[0, 1, 1]) == (153, 153, 153)  # constant alpha: white (zero) blended in everywhere


def test_overlay_accepts_uint8_images_and_checks_sizes():
    images = np.zeros((4, 4, 3), dtype=np.uint8)
    assert viz.overlay(images, torch.ones(3, 4, 4)).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(images, torch.ones(3, 8, 8))


def test_overlay_refuses_a_normalised_image_outside_zero_to_one_naming_the_fix():
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 4, 4)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with pytest.raises(ValueError, match=r"overlay draws float images in \[0, 1\].*x \* std \+ mean"):
        viz.overlay((pixels - mean) / std, torch.ones(1, 3, 4, 4))
    restored = (pixels - mean) / std * std + mean  # back to pixels, up to float rounding past [0, 1]
    assert viz.overlay(restored, torch.ones(1, 3, 4, 4)).shape == (1, 4, 4, 3)


def test_grid_lays_out_samples_by_methods_and_saves_png_atomically(tmp_path):
    cells = [[np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)] for _ in range(3)]
    titles = [["input", "epsilon"]] * 3
    figure = viz.grid(cells, titles, column_titles=["x", "LRP"], path=tmp_path / "grid.png")
    assert len(figure.axes) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left behind
    width, height = Image.open(tmp_path / "grid.png").size
    assert height > width  # three rows of two


def test_failed_save_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        viz.save_image(np.zeros((4, 4, 3), dtype=np.complex64), tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []


def test_save_image_enlarges_tiny_images_with_sharp_pixels(tmp_path):
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = RED
    viz.save_image(image, tmp_path / "tiny.png", scale=4)
    saved = np.asarray(Image.open(tmp_path / "tiny.png"))
    assert saved.shape == (8, 8, 3)
    assert tuple(saved[3, 3]) == RED and tuple(saved[4, 4]) == (0, 0, 0)


def test_one_dimensional_relevance_is_sent_to_charts():
    with pytest.raises(ValueError, match="viz.bars"):
        viz.heatmap(torch.ones(5))
