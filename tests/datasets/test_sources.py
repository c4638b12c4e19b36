"""DATA specs: image folders (with and without classes), demo[:N], file.py:factory, and their errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from relprop.datasets import sources
from relprop.datasets.sources import Demo, open_source
from relprop.demo import generate, shapes
from relprop.loading import LoadError, Preprocessing, open_image


def save(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)


def test_folder_of_class_folders_reads_like_torchvision_image_folder(tmp_path):
    save(tmp_path / "dog" / "b.png", 1)
    save(tmp_path / "cat" / "z.png", 2)
    save(tmp_path / "cat" / "nested" / "a.png", 3)
    preprocessing = Preprocessing(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    source = open_source(str(tmp_path), preprocessing)
    assert source.class_names == ["cat", "dog"] and len(source) == 3
    assert [source.id(i) for i in range(3)] == ["cat/nested/a.png", "cat/z.png", "dog/b.png"]
    sample = source.read(2)
    pixels = preprocessing.pixels(open_image(tmp_path / "dog" / "b.png"))  # as `relprop explain` reads it
    assert sample.label == 1 and torch.equal(sample.pixels, pixels)
    assert torch.equal(sample.x, (pixels - 0.5) / 0.25) and sample.x.shape == (3, 24, 24)


def test_flat_folder_has_no_labels(tmp_path):
    save(tmp_path / "a.png", 1)
    save(tmp_path / "b.jpg", 2)
    source = open_source(tmp_path)
    assert source.class_names is None and [source.read(i).label for i in range(2)] == [-1, -1]


def test_folder_with_loose_images_and_class_folders_is_refused(tmp_path):
    save(tmp_path / "a.png", 1)
    save(tmp_path / "cat" / "b.png", 2)
    with pytest.raises(LoadError, match="both images and class sub-folders"):
        open_source(tmp_path)


def test_unreadable_image_raises_value_error_for_the_run_to_skip(tmp_path):
    save(tmp_path / "a.png", 1)
    (tmp_path / "b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        open_source(tmp_path).read(1)


def test_demo_samples_are_deterministic_and_independent_of_the_count():
    small, large = open_source("demo:3"), open_source("demo:50")
    assert len(small) == 3 and len(open_source("demo")) == sources.DEMO_COUNT
    for index in range(3):
        a, b = small.read(index), large.read(index)
        assert torch.equal(a.x, b.x) and a.label == b.label and np.array_equal(a.extra["mask"], b.extra["mask"])
    images, labels, masks = generate(1, seed=(sources.DEMO_SEED, 2))
    sample = small.read(2)
    assert torch.equal(sample.pixels, torch.from_numpy(images[0])) and sample.label == labels[0]
    assert np.array_equal(sample.extra["mask"], masks[0]) and small.extras == {"mask": ((32, 32), "bool")}
    assert small.class_names == list(shapes.KINDS) and small.id(2) == "demo:2"


def test_demo_watermark_samples_carry_the_mark_and_say_so():
    from relprop.demo import watermark

    source = open_source("demo-watermark:40")
    assert len(source) == 40 and source.spec == "demo-watermark:40" and source.id(7) == "demo-watermark:7"
    assert source.extras == {"mask": ((32, 32), "bool"), "watermark": ((), "bool")}
    marked = []
    for index in range(40):
        images, labels, masks, flags = watermark.generate(1, seed=(sources.DEMO_SEED, index))
        sample = source.read(index)
        assert torch.equal(sample.pixels, torch.from_numpy(images[0])) and sample.label == labels[0]
        assert np.array_equal(sample.extra["mask"], masks[0]) and sample.extra["watermark"] == flags[0]
        marked.append(bool(flags[0]))
        rows, columns = watermark.mark_region()
        checker = sample.pixels[:, rows, columns]
        assert bool(((checker == 0) | (checker == 1)).all()) == bool(flags[0])  # the painted checkerboard
    assert 0 < sum(marked) < 40


@pytest.mark.parametrize("spec", ["demo:0", "demo:x", "demo:-1", "demo-watermark:0"])
def test_demo_count_must_be_positive(spec):
    with pytest.raises(LoadError, match="e.g. demo(-watermark)?:1000"):
        open_source(spec)


def test_factory_file_gives_samples_ids_and_class_names(dataset_file):
    source = open_source(f"{dataset_file}:quick")
    assert len(source) == 24 and source.class_names == ["circle", "square", "triangle", "cross"]
    sample = source.read(3)
    assert source.id(3) == "shape-003" and sample.x.shape == (3, 32, 32)
    assert sample.pixels.min() == 0 and sample.pixels.max() == 1  # min-max scaled for display
    with pytest.raises(ValueError, match="broken on purpose"):
        source.read(5)


def test_factory_source_pickles_as_its_spec(dataset_file):
    import pickle

    source = pickle.loads(pickle.dumps(open_source(f"{dataset_file}:quick")))
    assert len(source) == 24 and source.read(0).label == open_source(f"{dataset_file}:quick").read(0).label


@pytest.mark.parametrize("spec, message", [("missing.py:make", "data set file not found"),
                                           ("{file}:nothing", "has no function 'nothing'"),
                                           ("no/such/folder", "neither a folder nor a known data set"),
                                           ("{file}", "is a file")])
def test_bad_specs_name_the_fix(dataset_file, spec, message):
    with pytest.raises(LoadError, match=message):
        open_source(spec.format(file=dataset_file))


def test_items_that_are_not_pairs_are_refused():
    source = open_source(torch.utils.data.TensorDataset(torch.zeros(2, 3)))
    with pytest.raises(LoadError, match=r"return \(x, label\) or \(x, label, id\)"):
        source.read(0)
    assert source.spec == "python:TensorDataset"


def test_a_store_s_data_set_is_reopened_with_the_run_s_size_mean_and_std(tmp_path):
    from relprop.datasets import open_store, run
    from relprop.datasets.sources import open_recorded_source
    from relprop.demo.model import ShapeNet

    for index in range(3):
        save(tmp_path / "images" / f"{index}.png", index)
    used = Preprocessing(32, (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))  # the run's --size/--mean/--std, not the model's
    source = open_source(str(tmp_path / "images"), used)
    torch.manual_seed(0)
    run(ShapeNet().eval(), source, tmp_path / "run.zarr", batch_size=3, progress=False)
    attrs = open_store(tmp_path / "run.zarr").attrs
    models_own = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    reopened = open_recorded_source(attrs, models_own)
    for index in range(3):
        torch.testing.assert_close(reopened.read(index).x, source.read(index).x, rtol=0, atol=0)
    assert open_recorded_source({"data": str(tmp_path / "images")}, models_own).read(0).x.shape == (3, 224, 224)
