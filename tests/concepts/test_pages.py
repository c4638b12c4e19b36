import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from relprop import viz
from relprop.cli import main
from relprop.demo.shapes import generate
from tests.browser import rendered

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A demo image page with reference samples from a small demo store, and that store's atlas, by the CLI."""
    folder = tmp_path_factory.mktemp("concepts")
    images, labels, _ = generate(1, seed=(3, 1))
    Image.fromarray((images[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / "shape.png")
    runner = CliRunner()
    store = folder / "demo.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture does, which a module fixture cannot use (tests/conftest.py)
    try:
        for command in (["run", "demo:12", "--model", "demo", "--store", str(store), "--batch-size", "6"],
                        ["concepts", "--store", str(store), "--layer", "features.6", "--top", "3", "--out",
                         str(folder / "atlas")],
                        ["concepts", str(folder / "shape.png"), "--model", "demo", "--layer", "features.6", "--top",
                         "4", "--store", str(store), "--lower", "features.2", "--out", str(folder / "page")]):
            result = runner.invoke(main, command, catch_exceptions=False)
            assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)
    return folder, int(labels[0])


def test_the_image_page_shows_the_top_concepts_with_heatmaps_and_reference_samples_beside_theirs(pages):
    folder, _ = pages
    page = (folder / "page" / "index.html").read_text()
    assert page.count("<tr>") == 5 + 1 + 4 * 3  # concepts: header and four; graph: header, three edges each
    assert page.count("<svg") == 1 and page.count("<line") == 4 * 3
    names = re.findall(r'src="([^"]+)"', page)
    assert "image.png" in names and "heatmap.png" in names
    assert sum(name.startswith("concept-") for name in names) == 4
    assert sum(bool(re.fullmatch(r"reference-\d+-\d+\.png", name)) for name in names) == 4 * 3  # crops ...
    assert sum(bool(re.fullmatch(r"reference-\d+-\d+-heatmap\.png", name)) for name in names) == 4 * 3  # ... heatmaps
    assert all((folder / "page" / name).is_file() for name in names)
    for name in names:  # the store's references are drawn as the atlas draws them
        if name.startswith("reference-"):
            atlas = folder / "atlas" / name.replace("reference-", "relevance-")
            np.testing.assert_array_equal(np.asarray(Image.open(folder / "page" / name)), np.asarray(Image.open(atlas)))


def test_the_atlas_shows_every_channel_with_its_reference_samples_and_their_heatmaps(pages):
    folder, _ = pages
    page = (folder / "atlas" / "index.html").read_text()
    assert page.count("<tr>") == 1 + 32
    assert page.count("<td>circle</td>") + page.count("<td>square</td>") + page.count("<td>triangle</td>") + \
        page.count("<td>cross</td>") == 32  # the class each channel serves most
    assert len(re.findall(r'src="relevance-\d+-\d+.png"', page)) == 32 * 3  # each reference's crop ...
    assert len(re.findall(r'src="relevance-\d+-\d+-heatmap.png"', page)) == 32 * 3  # ... beside its heatmap
    assert len(re.findall(r'src="activation-', page)) == 32 * 3
    assert all((folder / "atlas" / name).is_file() for name in re.findall(r'src="([^"]+)"', page))


def enlarged(path, image):
    """The PNG at path as the (H, W, 3) image it enlarges with sharp pixels, checking the enlargement."""
    saved = np.asarray(Image.open(path).convert("RGB"))
    scale = saved.shape[0] // image.shape[0]
    assert scale >= 1 and saved.shape[:2] == (image.shape[0] * scale, image.shape[1] * scale)
    return saved[::scale, ::scale]


def test_the_atlas_heatmaps_are_the_reference_heatmaps_cut_to_the_receptive_field_beside_the_same_crop(pages):
    from relprop.concepts import reference_heatmaps
    from relprop.concepts.maximisation import receptive_field, store_attributor, store_recipe
    from relprop.datasets import open_store

    folder, _ = pages
    opened = open_store(folder / "demo.zarr")
    model, source = store_recipe(opened, None, None)
    lrp = store_attributor(opened, model)
    targets = np.asarray(opened["target"][:])
    index = np.asarray(opened.group["concepts/features.6/relevance_index"][:])
    for channel in (0, 17, 31):
        samples = index[channel]
        cropped = reference_heatmaps(lrp, source, "features.6", channel, samples, targets[samples], crop=True)
        for heatmap, i in zip(cropped, samples):
            assert heatmap.shape[-2:] != (32, 32)  # a receptive field, not the whole image
            stem = folder / "atlas" / f"relevance-{channel}-{i}"
            colours = viz.heatmap(heatmap)[0]
            np.testing.assert_array_equal(enlarged(f"{stem}-heatmap.png", colours), colours)
            region = receptive_field(lrp, source.read(int(i)).x[None], int(targets[i]), "features.6", channel)
            pixels = (source.read(int(i)).pixels[(...,) + region].numpy() * 255).round().astype(np.uint8)
            pixels = pixels.transpose(1, 2, 0)
            np.testing.assert_array_equal(enlarged(f"{stem}.png", pixels), pixels)


def test_the_atlas_without_heatmaps_shows_the_previews_only(pages, tmp_path):
    folder, _ = pages
    result = CliRunner().invoke(main, ["concepts", "--store", str(folder / "demo.zarr"), "--layer", "features.6",
                                       "--top", "3", "--no-heatmaps", "--out", str(tmp_path / "atlas")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "atlas" / "index.html").read_text()
    assert "heatmap" not in page and len(re.findall(r'src="relevance-', page)) == 32 * 3


def test_the_command_needs_an_image_or_a_store(tmp_path):
    result = CliRunner().invoke(main, ["concepts", "--layer", "features.6", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "give an IMAGE with --model" in result.output
    result = CliRunner().invoke(main, ["concepts", "--store", str(tmp_path / "none.zarr"), "--layer", "features.6",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "not a relprop store" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, rows", [("page", 18), ("atlas", 33)])
def test_concept_pages_open_in_headless_chromium_without_console_errors(pages, name, rows):
    loaded, total, found = rendered(pages[0] / name)
    assert loaded == total > 0 and found == rows
