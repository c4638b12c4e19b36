import pickle

import numpy as np

import pytest
import torch
from PIL import Image

from relprop.loading import (LoadError, Preprocessing, collect_images, find_images, load_model, open_image,
                             read_weights)


def test_preprocessing_resizes_the_shorter_side_and_crops_the_centre():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.putpixel((20, 10), (0, 0, 255))
    pixels = Preprocessing(size=10).pixels(image)
    assert pixels.shape == (3, 10, 10)
    assert pixels[0, 0, 0] == 1.0 and pixels[2, 0, 0] == 0.0


def test_normalisation_and_pixel_bounds():
    preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert preprocessing.normalize(torch.ones(1, 3, 1, 1)).flatten().tolist() == [2.0, 2.0, 2.0]
    low, high = preprocessing.bounds()
    assert low.shape == (3, 1, 1) and low.flatten().tolist() == [-2.0] * 3 and high.flatten().tolist() == [2.0] * 3


def test_override_checks_values():
    with pytest.raises(LoadError, match="--mean has 2 values"):
        Preprocessing().override(mean=(0.1, 0.2))
    with pytest.raises(LoadError, match="--std must be positive"):
        Preprocessing().override(std=(0.0,))


def test_weights_are_never_unpickled(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(Preprocessing()))  # an arbitrary object, not tensors
    with pytest.raises(LoadError, match="never unpickles"):
        read_weights(path)


def test_checkpoint_layouts_and_data_parallel_prefixes_are_unwrapped(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"module.weight": torch.ones(2)}, "epoch": 3}, path)
    assert list(read_weights(path)) == ["weight"]


def test_single_channel_models_read_grey_images(tmp_path):
    factory = tmp_path / "grey.py"
    factory.write_text("import torch\ndef make():\n    return torch.nn.Conv2d(1, 2, 3)\n")
    loaded = load_model(f"{factory}:make")
    assert loaded.preprocessing.channels == 1 and loaded.preprocessing.mean == (0.0,)


def test_factory_errors_name_the_file_and_what_it_defines(tmp_path):
    factory = tmp_path / "models.py"
    factory.write_text("def build():\n    return 3\n")
    with pytest.raises(LoadError, match="has no function 'make'; it defines build"):
        load_model(f"{factory}:make")
    with pytest.raises(LoadError, match="returned int; it must return a torch.nn.Module"):
        load_model(f"{factory}:build")
    with pytest.raises(LoadError, match="model file not found"):
        load_model(f"{tmp_path / 'missing.py'}:build")


def test_folders_give_their_images_and_broken_files_fail_on_reading(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in collect_images([tmp_path])] == ["a.jpg", "b.png"]
    with pytest.raises(ValueError, match="not a readable image"):
        open_image(tmp_path / "a.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="no images in folder"):
        collect_images([empty])


# ---- bit depth, orientation, folders ------------------------------------------------------------------------------
def _png_rgb16(path, values):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_grey_png_is_read_at_its_range_not_saturated_when_read_for_grey_and_rgb_models(tmp_path, channels):
    values = np.random.default_rng(0).integers(0, 65536, size=(12, 20), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image = open_image(tmp_path / "grey16.png")
    assert image.mode == "I;16"
    pixels = Preprocessing(channels=channels, mean=(0.0,) * channels, std=(1.0,) * channels).pixels(image)
    expected = values.astype(np.float64) / 65535
    assert pixels.shape == (channels, 12, 20)
    for plane in pixels:
        np.testing.assert_allclose(plane.numpy(), expected, atol=1e-6)


def test_16_bit_rgb_png_is_read_at_its_range(tmp_path):
    values = np.random.default_rng(1).integers(0, 65536, size=(6, 7, 3), dtype=np.uint16)
    _png_rgb16(tmp_path / "rgb16.png", values)
    pixels = Preprocessing().pixels(open_image(tmp_path / "rgb16.png"))
    # Pillow keeps the high byte of each 16-bit value: the range is exact, the precision 8 bits
    np.testing.assert_allclose(pixels.numpy(), values.transpose(2, 0, 1) / 65535, atol=1 / 255)


def test_integer_tiffs_are_scaled_by_their_bit_depth_and_float_tiffs_kept_or_stretched(tmp_path):
    rng = np.random.default_rng(2)
    sixteen = rng.integers(0, 4096, size=(5, 6), dtype=np.uint16)  # 12-bit data in a 16-bit file
    Image.fromarray(sixteen).save(tmp_path / "sixteen.tif")
    grey = Preprocessing(channels=1, mean=(0.0,), std=(1.0,))
    np.testing.assert_allclose(grey.pixels(open_image(tmp_path / "sixteen.tif"))[0].numpy(), sixteen / 65535,
                               atol=1e-6)
    wide = rng.integers(0, 2 ** 31 - 1, size=(5, 6), dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    image = open_image(tmp_path / "wide.tif")
    assert image.mode == "I" and image.info["bits_per_sample"] == 32
    np.testing.assert_allclose(grey.pixels(image)[0].numpy(), wide / (2.0 ** 32 - 1), rtol=1e-6)
    unit = rng.random((5, 6), dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    np.testing.assert_allclose(grey.pixels(open_image(tmp_path / "unit.tif"))[0].numpy(), unit, atol=1e-7)
    physical = unit * 500 - 100  # values in physical units: stretched from their min..max
    Image.fromarray(physical).save(tmp_path / "physical.tif")
    stretched = (physical - physical.min()) / (physical.max() - physical.min())
    np.testing.assert_allclose(grey.pixels(open_image(tmp_path / "physical.tif"))[0].numpy(), stretched, atol=1e-6)
    broken = unit.copy()
    broken[0, 0] = np.nan
    Image.fromarray(broken).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN"):
        grey.pixels(open_image(tmp_path / "nan.tif"))


def test_16_bit_images_are_resized_as_floats_without_losing_their_range(tmp_path):
    values = np.full((40, 20), 30000, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "flat.png")
    pixels = Preprocessing(size=10).pixels(open_image(tmp_path / "flat.png"))
    assert pixels.shape == (3, 10, 10)
    np.testing.assert_allclose(pixels.numpy(), 30000 / 65535, atol=1e-6)


def test_exif_orientation_is_applied_so_images_read_as_viewers_show_them(tmp_path):
    stored = np.zeros((60, 120, 3), dtype=np.uint8)  # 120 wide, 60 high: left half red, right half blue
    stored[:, :60, 0] = 255
    stored[:, 60:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: viewers turn it 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = open_image(tmp_path / "phone.jpg")
    assert image.size == (60, 120)  # (width, height) as shown
    pixels = Preprocessing().pixels(image)
    assert pixels.shape == (3, 120, 60)
    assert pixels[0, :50].mean() > 0.9 and pixels[2, :50].mean() < 0.1  # the red half is on top
    assert pixels[2, 70:].mean() > 0.9 and pixels[0, 70:].mean() < 0.1
    cropped = Preprocessing(size=30).pixels(image)  # shorter side (width) to 30, the centre of the height kept
    assert cropped.shape == (3, 30, 30)


def test_folders_are_searched_with_their_sub_folders_and_outputs_mirror_them(tmp_path):
    for name in ("top.png", "cats/a.png", "cats/young/b.jpg", ".hidden/c.png", "out/old.png", "cats/.d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    single = tmp_path / "top.png"
    found = find_images([tmp_path, single], exclude=tmp_path / "out")
    assert [(p.relative_to(tmp_path).as_posix(), name.as_posix()) for p, name in found] == [
        ("cats/a.png", "cats/a.png"), ("cats/young/b.jpg", "cats/young/b.jpg"), ("top.png", "top.png"),
        ("top.png", "top.png")]
    assert collect_images([tmp_path / "cats"]) == [tmp_path / "cats" / "a.png", tmp_path / "cats/young/b.jpg"]
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(LoadError, match="no images in folder .*empty or its sub-folders"):
        find_images([tmp_path / "empty"])


def test_the_watermark_demo_model_loads_by_its_spec_with_the_demo_preprocessing():
    from safetensors.torch import load_file

    from relprop.demo import watermark

    loaded = load_model("demo-watermark")
    shipped = load_file(str(watermark.WEIGHTS))
    assert all(torch.equal(loaded.model.state_dict()[key], value) for key, value in shipped.items())
    assert loaded.preprocessing == load_model("demo").preprocessing and not loaded.model.training
    assert loaded.labels == ["circle", "square", "triangle", "cross"]
