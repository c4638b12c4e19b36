"""What a chunk stores, checked against the explanation computed directly and the layout's formulas in numpy."""
import numpy as np
import pytest
import torch
from PIL import Image

import relprop
import relprop.datasets as datasets
from relprop.datasets.sources import Demo
from relprop.datasets.work import preview
from relprop.demo import load


def direct(model, count, batch_size, composite="epsilon_plus_flat"):
    """Each batch of a chunk explained with relprop.explain, as a user would in a loop."""
    samples = [Demo(count).read(i) for i in range(count)]
    parts = []
    for first in range(0, count, batch_size):
        batch = samples[first:first + batch_size]
        x = torch.stack([s.x for s in batch])
        labels = torch.tensor([s.label for s in batch])
        parts.append((x, labels, relprop.explain(model, x, labels, composite)))
    return samples, parts


@pytest.mark.parametrize("keep", ["full", "channels", "float16"])
def test_stored_numbers_equal_a_direct_explanation_under_each_keep(tmp_path, keep):
    model = load()
    datasets.run(model, "demo:10", tmp_path / "run.zarr", batch_size=4, keep=keep, workers=0, progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    samples, parts = direct(model, 10, 4)
    relevance = np.concatenate([e.relevance.numpy() for _, _, e in parts])
    x = torch.cat([x for x, _, _ in parts])
    labels = np.concatenate([l.numpy() for _, l, _ in parts])
    with torch.no_grad():
        logits = model(x).numpy()
    expected = {"full": relevance, "channels": relevance.sum(1), "float16": relevance.astype(np.float16)}[keep]
    stored = opened["relevance"][:]
    assert stored.dtype == expected.dtype and stored.shape == expected.shape
    np.testing.assert_array_equal(stored, expected)
    np.testing.assert_allclose(opened["output"][:], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(opened["label"][:], labels)
    np.testing.assert_array_equal(opened["target"][:], labels)
    np.testing.assert_allclose(opened["explained"][:], logits[np.arange(10), labels], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opened["delta"][:], opened["explained"][:] - relevance.reshape(10, -1).sum(1),
                               rtol=1e-4, atol=1e-5)
    pixels = np.stack([s.pixels.numpy() for s in samples])
    np.testing.assert_array_equal(opened["preview"][:], np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(opened["extra/mask"][:], np.stack([s.extra["mask"] for s in samples]))
    assert opened["id"][:].tolist() == [f"demo:{i}" for i in range(10)]
    assert opened.done.all() and not opened.failed.any()


def test_target_class_index_explains_that_class_for_every_sample(tmp_path):
    model = load()
    datasets.run(model, "demo:4", tmp_path / "run.zarr", target=2, batch_size=4, progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    x = torch.stack([Demo(4).read(i).x for i in range(4)])
    expected = relprop.explain(model, x, 2).relevance.numpy()
    np.testing.assert_array_equal(opened["relevance"][:], expected)
    assert opened["target"][:].tolist() == [2, 2, 2, 2] and opened.attrs["target"] == 2


def test_preview_shrinks_large_images_to_64_pixels_by_block_means():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, (3, 128, 128)).astype(np.float32)
    expected = pixels.reshape(3, 64, 2, 64, 2).mean((2, 4))
    np.testing.assert_array_equal(preview(torch.from_numpy(pixels), 64),
                                  np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8))


def test_image_folder_previews_are_the_display_pixels_at_most_64_wide(tmp_path):
    folder = tmp_path / "images" / "circle"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(picture).save(folder / "a.png")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    torch.nn.init.uniform_(model[0].bias, 0.1, 0.2)
    datasets.run(model, tmp_path / "images", tmp_path / "run.zarr", target="predicted", progress=False)
    opened = datasets.open_store(tmp_path / "run.zarr")
    assert opened["preview"].shape == (1, 3, 64, 64) and opened.class_names == ["circle"]
    # the folder is read without resizing (no preprocessing given), so the preview is 96 -> 64 by area: output
    # pixel i averages input pixels floor(1.5 i) .. ceil(1.5 (i + 1)) - 1
    image = picture.transpose(2, 0, 1).astype(np.float32) / 255
    spans = [(int(np.floor(i * 1.5)), int(np.ceil((i + 1) * 1.5))) for i in range(64)]
    reference = np.array([[[image[c, a:b, e:f].mean() for e, f in spans] for a, b in spans] for c in range(3)])
    stored = opened["preview"][0].astype(int)
    assert np.abs(stored - np.round(reference * 255)).max() <= 1  # float32 sums in another order may round apart
    assert opened["id"][:].tolist() == ["circle/a.png"]
