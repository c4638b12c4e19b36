"""The SpRAy report: its files, its numbers, and the page in headless Chromium (a click shows a sample)."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from relprop.analysis import pages, spray

from .stores import write_store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """40 samples of one class in two strategies (relevance left or right), previews included, analysed."""
    folder = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    relevance = rng.uniform(0, 0.05, (40, 3, 16, 16)).astype(np.float32)
    left = np.arange(40) < 25
    relevance[left, :, :, :8] += 1
    relevance[~left, :, :, 8:] += 1
    preview = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)
    store = write_store(folder / "run.zarr", relevance, np.zeros(40), np.ones((40, 2)), chunk=8, preview=preview,
                        class_names=["cat", "dog"])
    spray.run(store, clusters=[2, 3], neighbors=5, eigenvalues=6, embeddings=("spectral", "tsne"),
              algorithms=("kmeans",))
    out = folder / "report"
    pages.write(store, out, max_samples=30, typical=3)
    return store, out, relevance, left


def test_report_has_a_picture_per_shown_sample_and_a_mean_heatmap_per_cluster(analysed):
    store, out, _, left = analysed
    page = (out / "index.html").read_text()
    sets = json.loads(re.search(r"const SETS = (.*);\n", page).group(1))
    assert [s["name"] for s in sets] == ["class-0"] and sets[0]["title"] == "class-0 (cat)"
    shown = sets[0]["index"]
    assert 30 <= len(shown) <= 36  # the seeded subset plus the typical samples
    assert sorted(int(p.stem) for p in (out / "samples").iterdir()) == sorted(shown)
    assert sorted(p.name for p in (out / "means").iterdir()) == ["class-0-0-apart.png", "class-0-0.png",
                                                                "class-0-1-apart.png", "class-0-1.png"]
    assert sets[0]["chosen"] == "kmeans-2" and sorted(sets[0]["sizes"]["kmeans-2"].values()) == [15, 25]
    for cluster, members in sets[0]["typical"].items():  # typical samples are of their cluster's strategy
        assert len({bool(left[i]) for i in members}) == 1 and len(members) == 3


def test_report_shows_what_sets_each_cluster_apart_and_says_what_is_explained(analysed):
    from PIL import Image

    _, out, _, _ = analysed
    page = (out / "index.html").read_text()
    sets = json.loads(re.search(r"const SETS = (.*);\n", page).group(1))
    assert sorted(sets[0]["apart"]) == ["0", "1"]
    assert "cannot be neuralized" in sets[0]["apart_note"] and "100% of samples keep" in sets[0]["apart_note"]
    for path in sets[0]["apart"].values():
        assert Image.open(out / path).size[0] >= 16  # one picture of the pooled cells per cluster


def test_mean_heatmap_is_the_mean_of_normalised_member_heatmaps(analysed):
    from PIL import Image

    from relprop import viz

    store, out, relevance, _ = analysed
    result = spray.read(store, "class-0")
    members = result.index[result.clusters["kmeans-2"] == 0]
    maps = relevance[members].sum(1)
    maps /= np.abs(maps).reshape(len(maps), -1).max(1)[:, None, None]
    expected = viz.heatmap(maps.mean(0))[0]
    written = np.asarray(Image.open(out / "means" / "class-0-0.png").convert("RGB"))[::6, ::6]  # saved 6x enlarged
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1


def test_report_without_analysis_says_to_run_spray(tmp_path):
    store = write_store(tmp_path / "run.zarr", np.ones((4, 1, 4, 4)), np.zeros(4), np.ones((4, 2)))
    with pytest.raises(ValueError, match="relprop spray"):
        pages.write(store, tmp_path / "out")


def test_clicking_a_point_in_headless_chromium_shows_that_sample(analysed):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the page check needs a browser")
    store, out, _, _ = analysed
    sets = json.loads(re.search(r"const SETS = (.*);\n", (out / "index.html").read_text()).group(1))
    index = sets[0]["index"][7]
    # The harness clicks where the page draws that sample's point, then logs the panel once its picture loaded.
    harness = out / "harness.html"
    harness.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>h</title></head><body>'
        '<iframe src="index.html" width="1200" height="900" onload="\n'
        "const w = this.contentWindow, d = this.contentDocument;\n"
        f"const p = w.spray.point('class-0', {index});\n"
        "const canvas = d.querySelector('canvas.embedding');\n"
        "canvas.dispatchEvent(new w.MouseEvent('click', {clientX: p.x, clientY: p.y, bubbles: true}));\n"
        "const image = d.querySelector('.panel img.sample');\n"
        "const report = () => console.log('shown ' + image.getAttribute('src') + ' width ' + image.naturalWidth + "
        "' caption ' + d.querySelector('.panel .caption').textContent);\n"
        'image.complete ? report() : (image.onload = report);"></iframe></body></html>')
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                             harness.as_uri()], capture_output=True, text=True, timeout=60)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1, console  # any other console line is an error on the page
    shown = re.search(r'"shown samples/(\d+)\.png width (\d+) caption sample (\d+) ', console[0])
    assert shown, console[0]
    assert int(shown.group(1)) == index and int(shown.group(3)) == index and int(shown.group(2)) > 50
    # and the address form: #sample=INDEX opens the page with that sample shown
    page = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=3000", "--dump-dom",
                           (out / "index.html").as_uri() + f"#sample={index}"],
                          capture_output=True, text=True, timeout=60).stdout
    assert f'src="samples/{index}.png"' in page and f"sample {index} (demo:{index})" in page


def test_samples_without_model_outputs_show_an_unknown_prediction(tmp_path):
    rng = np.random.default_rng(3)
    relevance = rng.uniform(0, 0.05, (20, 1, 8, 8)).astype(np.float32)
    relevance[:10, :, :4] += 1
    relevance[10:, :, 4:] += 1
    store = write_store(tmp_path / "run.zarr", relevance, np.zeros(20), np.full((20, 2), np.nan))
    spray.run(store, clusters=[2], neighbors=4, embeddings=("spectral",))
    page = pages.write(store, tmp_path / "report").read_text()
    sets = json.loads(re.search(r"const SETS = (.*);\n", page).group(1))
    assert set(sets[0]["predicted"]) == {"?"}


def test_an_address_naming_a_sample_in_no_analysed_set_says_so_on_the_page(analysed):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the page check needs a browser")
    _, out, _, _ = analysed
    page = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=3000", "--dump-dom", (out / "index.html").as_uri() + "#sample=987654"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "sample 987654 is in no analysed set" in page
