"""Memory estimates: counted on meta tensors (nothing allocated), checked against sizes computed by hand."""
import torch
import torchvision

from relprop import LRP, memory
from relprop.attribution import DeepLift, ExcitationBackprop, Gradient, IntegratedGradients, Occlusion, SmoothGrad
from relprop.attribution.base import Attribution


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 5)).eval()
    for layer in (model[0], model[3]):
        torch.nn.init.uniform_(layer.bias, 0.1, 0.2)
    return model


def test_footprint_counts_each_new_tensor_once_and_leaves_out_views():
    found = memory.footprint(small_model(), (3, 8, 8))
    floats = 3 * 8 * 8 + 4 * 8 * 8 + 4 * 8 * 8 + 5  # input, convolution, ReLU (flatten is a view), linear
    assert found == memory.Footprint(total=floats * 4, largest=4 * 8 * 8 * 4)


def test_footprint_leaves_the_model_unchanged_and_gives_none_for_models_meta_tensors_cannot_run():
    model = small_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    memory.footprint(model, (3, 8, 8))
    assert all(torch.equal(before[name], value) and value.device.type == "cpu"
               for name, value in model.state_dict().items())

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x  # reads a value: impossible on meta tensors

    assert memory.footprint(DataDependent(), (3, 8, 8)) is None


def test_needed_bytes_follow_the_formula_per_method():
    model = small_model()
    found = memory.footprint(model, (3, 8, 8))
    images, pixels = 6, 3 * 8 * 8 * 4
    kept = images * memory.IMAGE_COPIES * pixels
    gradient = images * (found.total + 2 * found.largest) + kept
    assert memory.needed_bytes(Gradient(model), found, images, (3, 8, 8)) == gradient
    lrp = images * (1.5 * found.total + 2 * found.largest) + kept
    assert memory.needed_bytes(LRP(model), found, images, (3, 8, 8)) == int(lrp)
    # 4 windows of 4x4 per image, all in one pass without gradients
    occlusion = images * 4 * 3 * found.largest + kept
    assert memory.needed_bytes(Occlusion(model, window=(4, 4)), found, images, (3, 8, 8)) == occlusion
    # path points run in passes of a bounded number of rows
    integrated = IntegratedGradients(model, steps=50, batch_size=7)
    assert memory.needed_bytes(integrated, found, images, (3, 8, 8)) == 7 * (found.total + 2 * found.largest) + kept

    # each input beside its reference; LRP underneath keeps its modified pre-activations too
    assert memory.needed_bytes(DeepLift(model), found, images, (3, 8, 8)) == gradient + images * (
        found.total + 2 * found.largest)
    assert memory.needed_bytes(ExcitationBackprop(model), found, images, (3, 8, 8)) == int(lrp)
    smooth_lrp = SmoothGrad(model, n_samples=3, composite="epsilon", batch_size=10)
    smooth_lrp_bytes = 10 * (1.5 * found.total + 2 * found.largest) + kept  # 18 copies, passes of 10
    assert memory.needed_bytes(smooth_lrp, found, images, (3, 8, 8)) == int(smooth_lrp_bytes)


def test_a_new_method_declares_its_passes_and_the_estimate_follows_without_changes_elsewhere():
    class Triplets(Attribution):
        """Explains three copies of each input, in passes of rows_per_pass, forward only."""

        keeps_graph, copies_in_passes = False, True

        def copies_per_input(self, sample_shape):
            return 3

    model = small_model()
    method = Triplets(model, batch_size=4)
    assert memory.rows_per_pass(method, 1, (3, 8, 8)) == (3, False)
    assert memory.rows_per_pass(method, 6, (3, 8, 8)) == (4, False)
    found = memory.footprint(model, (3, 8, 8))
    kept = 6 * memory.IMAGE_COPIES * 3 * 8 * 8 * 4
    assert memory.needed_bytes(method, found, 6, (3, 8, 8)) == 4 * 3 * found.largest + kept

def test_a_3000_pixel_image_batch_on_resnet50_is_estimated_far_beyond_a_machine():
    model = torchvision.models.resnet50().eval()
    at_224 = memory.footprint(model, (3, 224, 224))
    at_3000 = memory.footprint(model, (3, 3000, 3000))
    assert 50 * 2 ** 20 < at_224.total < 200 * 2 ** 20  # resnet50 creates about 86 MiB per 224x224 image
    assert 150 < at_3000.total / at_224.total < 200  # activations grow with the pixels: (3000 / 224) ** 2 = 179
    assert memory.needed_bytes(LRP(model), at_3000, 16, (3, 3000, 3000)) > 256 * 2 ** 30


def test_a_budget_splits_batches_to_what_fits_and_its_refusal_names_the_callers_knobs(monkeypatch):
    model = small_model()
    monkeypatch.setattr(memory, "available", lambda device: None)
    assert memory.Budget(Gradient(model), model, "cpu").fitting((3, 8, 8), 7) == 7  # unknown memory: all at once
    attributor = Gradient(model)
    one = memory.needed_bytes(attributor, memory.footprint(model, (3, 8, 8)), 1, (3, 8, 8))
    two = memory.needed_bytes(attributor, memory.footprint(model, (3, 8, 8)), 2, (3, 8, 8))
    monkeypatch.setattr(memory, "available", lambda device: two)
    budget = memory.Budget(attributor, model, "cpu", knobs=("--batch-size", "--size"))
    assert budget.fitting((3, 8, 8), 5) == 2
    assert budget.refusal((3, 8, 8), 5).endswith("are available on cpu; use --batch-size 2 or a smaller --size")
    assert "use batch_size 2 or a smaller size" in memory.Budget(attributor, model, "cpu").refusal((3, 8, 8), 5)
    monkeypatch.setattr(memory, "available", lambda device: 1)
    assert memory.Budget(attributor, model, "cpu").refusal((3, 8, 8), 1).endswith(
        "use a smaller size (or explain on a device with more memory)")
