"""Perturbed copies (evaluate/perturb.py): baselines, patches, region sums, removal orders and the copies themselves,
each against a reference written here from its definition (numpy loops)."""
import math

import numpy as np
import pytest
import torch

from relprop.evaluate import perturb


def images(n=2, channels=3, height=4, width=6):
    return torch.randn(n, channels, height, width, dtype=torch.float64)


def test_black_white_and_mean_baselines_are_each_samples_own_minimum_maximum_and_mean():
    x = images()
    for name, reduce in (("black", np.min), ("white", np.max), ("mean", np.mean)):
        values = perturb.baseline_values(x, name, axis=1).numpy()
        for sample in range(len(x)):
            np.testing.assert_allclose(values[sample], np.full(x.shape[1:], reduce(x[sample].numpy())), rtol=1e-12)


def test_a_number_baseline_is_that_constant_everywhere_and_a_tensor_of_one_sample_is_broadcast_over_the_batch():
    x = images()
    np.testing.assert_allclose(perturb.baseline_values(x, -0.5, axis=1).numpy(), np.full(x.shape, -0.5))
    one = torch.randn(x.shape[1:], dtype=torch.float64)
    values = perturb.baseline_values(x, one, axis=1)
    for sample in range(len(x)):
        np.testing.assert_allclose(values[sample].numpy(), one.numpy())


def test_the_uniform_baseline_lies_between_each_samples_extremes_and_repeats_for_the_same_seed():
    x = images()
    first = perturb.baseline_values(x, "uniform", axis=1, seed=3)
    again = perturb.baseline_values(x, "uniform", axis=1, seed=3)
    other = perturb.baseline_values(x, "uniform", axis=1, seed=4)
    np.testing.assert_allclose(first.numpy(), again.numpy(), rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3
    for sample in range(len(x)):
        low, high = x[sample].min().item(), x[sample].max().item()
        assert low <= first[sample].min().item() and first[sample].max().item() <= high


def test_the_blur_baseline_is_a_separable_gaussian_with_replicated_edges_per_channel():
    x, sigma = images(n=1, channels=2, height=5, width=7), 1.0
    radius = math.ceil(3 * sigma)
    weights = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()

    def blur_line(line):  # replicate the edge values, then the weighted sum over the window
        padded = np.concatenate([[line[0]] * radius, line, [line[-1]] * radius])
        return np.array([np.dot(padded[i:i + 2 * radius + 1], weights) for i in range(len(line))])

    expected = x.numpy().copy()
    for channel in range(2):
        plane = expected[0, channel]
        plane = np.stack([blur_line(column) for column in plane.T], axis=1)  # along the height
        plane = np.stack([blur_line(row) for row in plane], axis=0)  # along the width
        expected[0, channel] = plane
    blurred = perturb.baseline_values(x, "blur", axis=1, blur_sigma=sigma)
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_baselines_that_cannot_apply_are_refused_with_what_to_give_instead():
    x = images()
    with pytest.raises(ValueError, match="unknown baseline 'grey'.*black"):
        perturb.baseline_values(x, "grey", axis=1)
    with pytest.raises(ValueError, match="shaped like one sample"):
        perturb.baseline_values(x, torch.zeros(3, 4), axis=1)
    with pytest.raises(ValueError, match="channels-first"):
        perturb.baseline_values(torch.randn(2, 5, dtype=torch.float64), "blur", axis=None)


def test_patches_are_numbered_in_row_major_order_over_the_grid_of_patches():
    labels = perturb.patch_labels((4, 6), (2, 3))
    expected = np.array([[(row // 2) * 2 + column // 3 for column in range(6)] for row in range(4)])
    np.testing.assert_array_equal(labels.numpy(), expected)
    assert perturb.patch_labels((4, 6), 2).max().item() == 2 * 3 - 1


def test_a_patch_size_that_does_not_tile_the_image_is_refused_naming_the_side():
    with pytest.raises(ValueError, match="5 is not a multiple of 2"):
        perturb.patch_labels((4, 5), 2)
    with pytest.raises(ValueError, match="positive int"):
        perturb.patch_labels((4, 4), 0)


def test_region_relevance_sums_or_averages_the_relevance_of_each_regions_locations():
    relevance = torch.randn(2, 4, 6, dtype=torch.float64)
    labels = perturb.patch_labels((4, 6), 2).expand(2, 4, 6)
    summed = perturb.region_relevance(relevance, labels, regions=6)
    averaged = perturb.region_relevance(relevance, labels, regions=6, reduce="mean")
    for sample in range(2):
        for region in range(6):
            inside = relevance[sample].numpy()[labels[sample].numpy() == region]
            assert summed[sample, region].item() == pytest.approx(inside.sum(), rel=1e-12, abs=1e-12)
            assert averaged[sample, region].item() == pytest.approx(inside.mean(), rel=1e-12, abs=1e-12)


def test_ranks_put_the_most_relevant_region_first_under_morf_and_last_under_lerf_ties_in_region_order():
    scores = torch.tensor([[0.5, 2.0, -1.0, 2.0], [3.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    for order, keys in (("morf", -scores.numpy()), ("lerf", scores.numpy())):
        rank = perturb.ranks(scores, order).numpy()
        for sample in range(2):
            sequence = np.argsort(keys[sample], kind="stable")  # the removal order, ties by region index
            np.testing.assert_array_equal(rank[sample][sequence], np.arange(4))
    with pytest.raises(ValueError, match="'morf'.*'lerf'"):
        perturb.ranks(scores, "random")


def test_removal_replaces_all_channels_of_the_first_regions_of_each_samples_order_and_nothing_else():
    x = images(n=2, channels=3, height=4, width=4)
    baseline = perturb.baseline_values(x, 0.0, axis=1)
    labels = perturb.patch_labels((4, 4), 2)  # four 2x2 patches
    relevance = torch.randn(2, 4, 4, dtype=torch.float64)
    rank = perturb.ranks(perturb.region_relevance(relevance, labels.expand(2, 4, 4), 4), "morf")
    counts = [0, 1, 3, 4]
    removal = perturb.Removal(x, baseline, 1, labels, rank, counts)
    rows, steps = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 2, 3])
    copies = removal(rows, steps)
    for copy, row, step in zip(copies, rows.tolist(), steps.tolist()):
        removed_regions = [region for region in range(4) if rank[row, region] < counts[step]]
        expected = x[row].numpy().copy()
        for region in removed_regions:
            expected[:, labels.numpy() == region] = 0.0
        np.testing.assert_allclose(copy.numpy(), expected, rtol=0, atol=0)
    assert x.abs().min() > 0  # (the check above would not see a removal if x held zeros)


def test_masked_copies_take_the_baseline_where_the_mask_is_set_in_every_channel():
    x = images(n=3, channels=2, height=3, width=3)
    baseline = perturb.baseline_values(x, "mean", axis=1)
    masks = torch.rand(2, 3, 3) > 0.5
    rows = torch.tensor([2, 0])
    copies = perturb.masked_copies(x, baseline, 1, rows, masks)
    for copy, row, mask in zip(copies.numpy(), rows.tolist(), masks.numpy()):
        expected = np.where(mask[None], x[row].numpy().mean(), x[row].numpy())
        np.testing.assert_allclose(copy, expected, rtol=1e-12)
