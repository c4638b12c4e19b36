"""What sets SpRAy's clusters apart: NEON on k-means over pooled heatmaps, started from the clusters."""
import os
import subprocess
import sys

import numpy as np
import pytest

from relprop.analysis import apart

pytest.importorskip("sklearn")


def two_strategies(count=30, seed=0):
    """Pooled 4 x 4 heatmaps, unit norm as SpRAy pools: every sample has relevance on the object (the centre), the
    first 18 also on a mark in the top-right corner."""
    rng = np.random.default_rng(seed)
    maps = rng.uniform(0, 0.05, (count, 4, 4))
    maps[:, 1:3, 1:3] += 1.0
    maps[:18, 0, 3] += 1.0
    flat = maps.reshape(count, -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_the_cell_that_tells_the_clusters_apart_carries_most_of_their_relevance():
    features = two_strategies()
    labels = np.r_[np.full(18, 3), np.full(12, 5)]  # SpRAy's cluster numbers need not start at 0
    evidence = apart.explain_clusters(features, labels, (4, 4))
    assert evidence.clusters == [3, 5] and evidence.members == [18, 12] and evidence.agreement == 1.0
    for relevance in evidence.maps:  # the mark: present in one cluster, absent in the other
        assert np.unravel_index(np.abs(relevance).argmax(), (4, 4)) == (0, 3)
        assert relevance[0, 3] > 0.5 * relevance.sum() > 0


def test_the_relevance_of_each_cluster_adds_up_to_its_mean_membership():
    from sklearn.cluster import KMeans

    from relprop.neuralize import neuralize

    features = two_strategies(seed=1)
    labels = np.r_[np.zeros(18, int), np.ones(12, int)]
    evidence = apart.explain_clusters(features, labels, (4, 4))
    starts = np.stack([features[labels == c].mean(0) for c in (0, 1)])
    kmeans = KMeans(2, init=starts, n_init=1, random_state=0).fit(features)
    import torch

    f = neuralize(kmeans)(torch.from_numpy(features)).detach().numpy()
    for c in (0, 1):
        inside = kmeans.labels_ == c
        np.testing.assert_allclose(evidence.maps[c].sum(), f[inside, c].mean(), rtol=1e-9)  # NEON conserves


def test_noise_is_left_out_and_a_single_cluster_is_refused():
    features = two_strategies()
    labels = np.r_[np.full(18, 0), np.full(10, 1), -1, -1]
    assert apart.explain_clusters(features, labels, (4, 4)).members == [18, 10]
    with pytest.raises(ValueError, match="1 cluster.*nothing sets one apart"):
        apart.explain_clusters(features, np.r_[np.zeros(28, int), -1, -1], (4, 4))


def test_pooled_cells_follow_spray_pooling():
    assert apart.pooled_cells((3, 32, 32), 8) == (8, 8)
    assert apart.pooled_cells((5, 6), 8) == (5, 6)
    assert apart.pooled_cells((10,), 8) == (10,)


def test_with_two_clusters_both_maps_are_the_squared_difference_of_the_centroids():
    # f_0 = -f_1 and a converged centroid is its members' mean: the mean midpoint-rule relevance of each cluster is
    # (mu_0 - mu_1)^2 per cell, the same for both (what tells them apart, whichever side one stands on)
    from sklearn.cluster import KMeans

    features = two_strategies(seed=2)
    labels = np.r_[np.zeros(18, int), np.ones(12, int)]
    evidence = apart.explain_clusters(features, labels, (4, 4))
    starts = np.stack([features[labels == c].mean(0) for c in (0, 1)])
    centres = KMeans(2, init=starts, n_init=1, random_state=0).fit(features).cluster_centers_
    expected = ((centres[0] - centres[1]) ** 2).reshape(4, 4)
    np.testing.assert_allclose(evidence.maps[0], expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(evidence.maps[1], expected, rtol=1e-6, atol=1e-12)


def test_large_clusters_are_explained_on_a_seeded_draw_of_their_members_close_to_all_of_them():
    features = np.concatenate([two_strategies(seed=seed) for seed in range(20)])  # 600 samples, 360 with the mark
    labels = np.tile(np.r_[np.zeros(18, int), np.ones(12, int)], 20)
    everyone = apart.explain_clusters(features, labels, (4, 4), explained=None)
    drawn = apart.explain_clusters(features, labels, (4, 4), explained=60)
    assert drawn.members == everyone.members == [360, 240]  # counts and agreement come from every sample
    assert drawn.agreement == everyone.agreement
    assert not np.allclose(drawn.maps, everyone.maps, rtol=1e-9, atol=0)  # a draw, not everyone again
    np.testing.assert_allclose(drawn.maps, everyone.maps, rtol=0.1, atol=0.02 * np.abs(everyone.maps).max())
    again = apart.explain_clusters(features, labels, (4, 4), explained=60)
    np.testing.assert_allclose(again.maps, drawn.maps, rtol=1e-12, atol=0)  # seeded: the same draw each time
    whole = apart.explain_clusters(features, labels, (4, 4), explained=1000)  # more than any cluster has: all
    np.testing.assert_allclose(whole.maps, everyone.maps, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta", [0.0, 1.0, 7.5])
def test_numpy_neon_gives_the_numbers_of_lrp_on_the_neuralized_k_means(beta):
    torch = pytest.importorskip("torch")
    from relprop.attribution import lrp
    from relprop.neuralize import neuralize

    rng = np.random.default_rng(3)
    centroids = rng.integers(-3, 4, size=(4, 6)).astype(float)  # integers: the midpoint below is exactly on the boundary
    x = np.concatenate([centroids[k] + 0.4 * rng.normal(size=(25, 6)) for k in range(4)])
    nearest = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    x[0] = (centroids[0] + centroids[1]) / 2  # on the boundary: h_01 = 0 carries no share
    nearest[0] = 0
    expected = lrp.explain(neuralize(torch.from_numpy(centroids)), torch.from_numpy(x),
                           target=torch.from_numpy(nearest), composite="neon", beta=beta).relevance.numpy()
    relevance = apart.neon_relevance(centroids, x, nearest, beta)
    np.testing.assert_allclose(relevance, expected, rtol=1e-9, atol=1e-12)
    f = np.stack([np.min([((x - centroids[k]) ** 2).sum(1) - ((x - centroids[c]) ** 2).sum(1)
                          for k in range(4) if k != c], axis=0) for c in range(4)], 1)
    np.testing.assert_allclose(relevance.sum(1), f[np.arange(len(x)), nearest], rtol=1e-9, atol=1e-12)


def test_what_sets_clusters_apart_never_imports_torch(tmp_path):
    code = ("import sys, numpy as np; from relprop.analysis import apart\n"
            "from tests.analysis.test_apart import two_strategies\n"
            "apart.explain_clusters(two_strategies(), np.r_[np.zeros(18, int), np.ones(12, int)], (4, 4))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(root, "src"), root]))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
