import pickle

import pytest
import torch
from PIL import Image

from relprop.loading import LoadError, Preprocessing, collect_images, load_model, open_image, read_weights


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
