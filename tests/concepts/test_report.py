import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

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
    for command in (["run", "demo:12", "--model", "demo", "--store", str(store), "--batch-size", "6"],
                    ["concepts", "--store", str(store), "--layer", "features.6", "--top", "3", "--out",
                     str(folder / "atlas")],
                    ["concepts", str(folder / "shape.png"), "--model", "demo", "--layer", "features.6", "--top", "4",
                     "--store", str(store), "--lower", "features.2", "--out", str(folder / "page")]):
        result = runner.invoke(main, command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return folder, int(labels[0])


def test_the_image_page_shows_the_top_concepts_with_heatmaps_and_reference_samples(pages):
    folder, _ = pages
    page = (folder / "page" / "index.html").read_text()
    assert page.count("<tr>") == 5 + 1 + 4 * 3  # concepts: header and four; graph: header, three edges each
    assert page.count("<svg") == 1 and page.count("<line") == 4 * 3
    names = re.findall(r'src="([^"]+)"', page)
    assert "image.png" in names and "heatmap.png" in names
    assert sum(name.startswith("concept-") for name in names) == 4
    assert sum(name.startswith("reference-") for name in names) == 4 * 3
    assert all((folder / "page" / name).is_file() for name in names)


def test_the_atlas_shows_every_channel_with_its_reference_samples(pages):
    folder, _ = pages
    page = (folder / "atlas" / "index.html").read_text()
    assert page.count("<tr>") == 1 + 32
    assert page.count("<td>circle</td>") + page.count("<td>square</td>") + page.count("<td>triangle</td>") + \
        page.count("<td>cross</td>") == 32  # the class each channel serves most
    assert len(re.findall(r'src="relevance-', page)) == 32 * 3 and len(re.findall(r'src="activation-', page)) == 32 * 3


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
