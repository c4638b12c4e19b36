"""Localisation metrics against numpy references from the formulas (Arras et al. 2022 and others)."""
import numpy as np
import pytest
import torch

from relprop import evaluate


@pytest.fixture
def case():
    torch.manual_seed(1)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    relevance = torch.randn_like(x)
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 4:, :] = True
    masks[2, 0, 0] = True
    return x, relevance, masks


POOLINGS = {"sum": lambda r: r.sum(0), "sum_abs": lambda r: np.abs(r).sum(0), "sum_pos": lambda r: np.clip(r, 0, None).sum(0),
            "max_norm": lambda r: np.abs(r).max(0), "l1": lambda r: np.abs(r).sum(0),
            "l2": lambda r: np.sqrt((r ** 2).sum(0)), "l2_squared": lambda r: (r ** 2).sum(0)}


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_relevance_mass_and_rank_accuracy_follow_arras_for_every_pooling(case, pooling):
    x, relevance, masks = case
    mass = evaluate.relevance_mass_accuracy(x, relevance, masks, pooling=pooling)
    rank = evaluate.relevance_rank_accuracy(x, relevance, masks, pooling=pooling)
    for n in range(3):
        r, gt = POOLINGS[pooling](relevance[n].numpy()), masks[n].numpy()
        assert mass.scores[n].item() == pytest.approx(r[gt].sum() / r.sum())
        k = gt.sum()
        top = np.argsort(-r.flatten(), kind="stable")[:k]
        assert rank.scores[n].item() == pytest.approx(gt.flatten()[top].sum() / k)


def test_pointing_game_hits_where_the_maximum_lies_in_the_mask_or_within_tolerance(case):
    x, relevance, masks = case
    relevance = relevance.clone()
    relevance[0, :, 2, 2] = 10.0  # inside sample 0's mask
    relevance[1, :, 0, 0] = 10.0  # far outside sample 1's mask (rows 4, 5)
    relevance[2, :, 1, 1] = 10.0  # one location from sample 2's mask
    assert evaluate.pointing_game(x, relevance, masks).scores.tolist() == [1.0, 0.0, 0.0]
    assert evaluate.pointing_game(x, relevance, masks, tolerance=1).scores.tolist() == [1.0, 0.0, 1.0]


def test_attribution_localisation_and_its_weighted_form(case):
    x, relevance, masks = case
    plain = evaluate.attribution_localisation(x, relevance, masks)
    weighted = evaluate.attribution_localisation(x, relevance, masks, weighted=True)
    for n in range(3):
        r, gt = np.clip(relevance[n].numpy().sum(0), 0, None), masks[n].numpy()
        mu = r[gt].sum() / r.sum()
        assert plain.scores[n].item() == pytest.approx(mu)
        assert weighted.scores[n].item() == pytest.approx(mu * gt.size / gt.sum())


def test_top_k_intersection_counts_the_k_most_relevant_inside_the_mask(case):
    x, relevance, masks = case
    result = evaluate.top_k_intersection(x, relevance, masks, k=5)
    influence = evaluate.top_k_intersection(x, relevance, masks, k=5, concept_influence=True)
    for n in range(3):
        r, gt = relevance[n].numpy().sum(0).flatten(), masks[n].numpy().flatten()
        share = gt[np.argsort(-r, kind="stable")[:5]].sum() / 5
        assert result.scores[n].item() == pytest.approx(share)
        assert influence.scores[n].item() == pytest.approx(share * gt.size / gt.sum())


def test_auc_is_the_probability_that_a_mask_location_outranks_another_ties_half(case):
    x, relevance, masks = case
    relevance = relevance.round(decimals=0)  # many ties
    result = evaluate.auc(x, relevance, masks)
    for n in range(3):
        r, gt = relevance[n].numpy().sum(0).flatten(), masks[n].numpy().flatten()
        inside, outside = r[gt], r[~gt]
        wins = (inside[:, None] > outside[None]).sum() + 0.5 * (inside[:, None] == outside[None]).sum()
        assert result.scores[n].item() == pytest.approx(wins / (len(inside) * len(outside)))


def test_masks_of_the_wrong_shape_or_empty_get_a_clear_message(case):
    x, relevance, masks = case
    with pytest.raises(ValueError, match=r"masks have shape \(3, 5, 6\).*shaped \(3, 6, 6\)"):
        evaluate.relevance_mass_accuracy(x, relevance, masks[:, :5])
    empty = masks.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"masks of samples \[1\] are empty"):
        evaluate.pointing_game(x, relevance, empty)
    with pytest.raises(ValueError, match="cover the whole input"):
        evaluate.auc(x, relevance, torch.ones_like(masks))


def test_masks_shaped_like_the_input_count_where_any_channel_is_set(case):
    x, relevance, masks = case
    per_channel = torch.zeros_like(x, dtype=torch.bool)
    per_channel[:, 1] = masks
    assert torch.equal(evaluate.relevance_mass_accuracy(x, relevance, per_channel).scores,
                       evaluate.relevance_mass_accuracy(x, relevance, masks).scores)


@pytest.mark.parametrize("height, width", [(6, 6), (6, 10), (7, 5)])
def test_focus_is_the_positive_relevance_share_of_the_target_quadrants_also_on_non_square_mosaics(height, width):
    torch.manual_seed(2)
    x = torch.randn(4, 3, height, width, dtype=torch.float64)
    relevance = torch.randn_like(x)
    quadrants = [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 0]]
    scores = evaluate.focus(x, relevance, quadrants).scores
    for n, marks in enumerate(quadrants):
        r = np.clip(relevance[n].numpy().sum(0), 0, None)
        half_h, half_w = height // 2, width // 2  # rows first: height splits top from bottom
        blocks = [r[:half_h, :half_w], r[:half_h, half_w:], r[half_h:, :half_w], r[half_h:, half_w:]]
        assert scores[n].item() == pytest.approx(sum(b.sum() for b, m in zip(blocks, marks) if m) / r.sum())
    with pytest.raises(ValueError, match="at least one quadrant of the target class and one of another"):
        evaluate.focus(x, relevance, [[1, 1, 1, 1]] + quadrants[1:])


def test_focus_counts_relevance_on_the_tile_a_mosaic_put_in_each_quadrant():
    tiles = torch.zeros(1, 4, 1, 2, 3)
    for position in range(4):
        tiles[0, position] = position + 1.0
    image = evaluate.mosaic(tiles)
    assert image.shape == (1, 1, 4, 6)
    assert image[0, 0].tolist() == [[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2
    # relevance equal to the image: the bottom-right tile holds 4 / (1 + 2 + 3 + 4) of it
    assert evaluate.focus(image, image, [[0, 0, 0, 1]]).scores.item() == pytest.approx(0.4)


def test_focus_refuses_bad_quadrants_and_inputs_without_two_location_dimensions(case):
    x, relevance, _ = case
    with pytest.raises(ValueError, match=r"quadrants must be \(N, 4\) flags"):
        evaluate.focus(x, relevance, [[1, 0, 0]] * 3)
    with pytest.raises(ValueError, match="quadrants has 2 rows for 3 mosaics"):
        evaluate.focus(x, relevance, [[1, 0, 0, 0]] * 2)
    with pytest.raises(ValueError, match="needs images"):
        evaluate.focus(x[:, :, 0], relevance[:, :, 0], [[1, 0, 0, 0]] * 3)
    with pytest.raises(ValueError, match="four images per mosaic"):
        evaluate.mosaic(x)
