"""SpRAy: each step against a reference written from its formula, and the whole analysis over a store."""
import numpy as np
import pytest
import zarr

from relprop.analysis import spray
from relprop.datasets import store as stores

from .stores import write_store


def blobs(sizes, dim=6, spread=0.05, seed=0):
    """Points around well-separated centres, with the true group of each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(sizes), dim)) * 3
    points = np.concatenate([c + spread * rng.normal(0, 1, (s, dim)) for c, s in zip(centres, sizes)])
    return points.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def dense_affinity(points, k):
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :k]
    adjacency = np.zeros((len(points), len(points)))
    adjacency[np.repeat(np.arange(len(points)), k), nearest.ravel()] = 1
    return np.maximum(adjacency, adjacency.T)


def test_pooling_sums_channels_averages_blocks_takes_signed_powers_and_scales_to_unit_length():
    heatmaps = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    expected = heatmaps.sum(1).reshape(3, 4, 2, 4, 2).mean((2, 4)).reshape(3, -1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(spray.pool(heatmaps, 4), expected, rtol=1e-5, atol=1e-6)
    assert spray.pool(heatmaps[:, 0], 16).shape == (3, 64)  # smaller than size: kept as is
    assert np.all(spray.pool(np.zeros((2, 4, 4)), 2) == 0)  # an empty heatmap stays zero, no NaN
    rooted = np.sign(expected) * np.sqrt(np.abs(expected))
    rooted /= np.linalg.norm(rooted, axis=1, keepdims=True)
    np.testing.assert_allclose(spray.pool(heatmaps, 4, power=0.5), rooted, rtol=1e-5, atol=1e-6)


def test_pooling_windows_that_do_not_divide_the_map_are_cut_as_adaptive_average_pooling_cuts_them():
    import torch

    maps = np.random.default_rng(3).normal(size=(4, 7, 10)).astype(np.float32)
    for rows, columns in ((3, 3), (3, 4), (7, 10), (2, 6)):
        expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None], (rows, columns))[:, 0]
        np.testing.assert_allclose(spray.adaptive_average(maps, rows, columns), expected.numpy(), rtol=1e-6,
                                   atol=1e-6)
    # by hand: the middle one of 3 rows over 7 spans rows 2..4 (floor(7/3) = 2 to ceil(14/3) = 5)
    np.testing.assert_allclose(spray.adaptive_average(maps, 3, 1)[:, 1, 0], maps[:, 2:5].mean((1, 2)), rtol=1e-6)


def test_knn_graph_equals_brute_force_neighbours_made_symmetric():
    points = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    graph = spray.knn_affinity(points, 4)
    np.testing.assert_array_equal(graph.toarray(), dense_affinity(points, 4))
    assert graph.nnz <= 2 * 4 * 40


def test_laplacian_equals_its_dense_formula():
    points = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    adjacency = dense_affinity(points, 5)
    degree = adjacency.sum(1)
    expected = np.eye(30) - adjacency / np.sqrt(np.outer(degree, degree))
    np.testing.assert_allclose(spray.normalized_laplacian(spray.knn_affinity(points, 5)).toarray(), expected,
                               atol=1e-12)


def test_sparse_eigenpairs_match_a_dense_eigendecomposition_on_50_points():
    points, _ = blobs([20, 15, 15], spread=0.8, seed=3)
    adjacency = dense_affinity(points, 6)
    degree = adjacency.sum(1)
    laplacian = np.eye(50) - adjacency / np.sqrt(np.outer(degree, degree))
    reference_values, reference_vectors = np.linalg.eigh(laplacian)
    values, vectors = spray.smallest_eigenpairs(spray.knn_affinity(points, 6), 8)
    np.testing.assert_allclose(values, reference_values[:8], atol=1e-7)
    np.testing.assert_allclose(laplacian @ vectors, vectors * values, atol=1e-6)  # each pair is an eigenpair
    for i in range(8):  # eigenvalues here are distinct, so each eigenvector is unique up to its sign
        if min(abs(reference_values[i] - reference_values[j]) for j in range(9) if j != i) > 1e-4:
            assert abs(reference_vectors[:, i] @ vectors[:, i]) == pytest.approx(1, abs=1e-6)


def test_eigengap_counts_connected_components_before_any_later_gap():
    # the spectrum at 10,000 maps: 4 components, then a larger absolute gap further on
    spectrum = np.array([0, 0, 0, 0, 0.00119, 0.00228, 0.004, 0.006, 0.05, 0.3])
    assert spray.eigengap(spectrum) == 4
    assert spray.eigengap(np.array([0.0, 0.0, 0.01, 0.6, 0.65, 0.7])) == 2
    assert spray.eigengap(np.zeros(12), max_clusters=10) == 10  # more components than clusters allowed


def test_eigengap_in_a_connected_graph_takes_the_largest_relative_gap():
    # absolute gaps: 0.29 after 2, 0.64 after 4; relative: 0.97 after 2, 0.67 after 4
    assert spray.eigengap(np.array([0.0, 0.01, 0.3, 0.31, 0.95])) == 2
    # a jump from 0.001 to 0.02 after 3 beats the absolute 0.1 from 0.2 to 0.3 (relative 0.33)
    assert spray.eigengap(np.array([0.0, 0.0008, 0.001, 0.02, 0.2, 0.3])) == 3
    assert spray.eigengap(np.array([0.0, 0.0008, 0.001, 0.02, 0.2, 0.3]), max_clusters=2) == 2
    assert spray.eigengap(np.array([0.0, 0.5])) == 1  # two eigenvalues: no gap to compare


@pytest.mark.parametrize("count, strategies", [(300, 2), (1000, 3), (3000, 4), (2000, 6),
                                              pytest.param(10000, 4, marks=pytest.mark.slow)])
def test_planted_strategies_are_suggested_and_found_by_the_chosen_clustering(count, strategies):
    from sklearn.metrics import adjusted_rand_score

    from .planted import CENTRES, strategy_maps

    shares = np.arange(strategies, 0, -1)  # e.g. 40/30/20/10% for four
    maps, truth = strategy_maps(count, CENTRES[:strategies], shares, seed=count + strategies)
    result = spray.analyse(spray.pool(maps, 3, 0.5), np.arange(count), "class-0", embeddings=(),
                           algorithms=("kmeans",))  # the features of `relprop spray`'s defaults
    assert result.suggested == strategies
    assert adjusted_rand_score(truth, result.clusters[result.chosen]) >= 0.9


@pytest.mark.parametrize("count, strategies", [(2000, 4), (3000, 6)])
def test_the_approximate_neighbour_graph_recovers_planted_strategies(count, strategies):
    from sklearn.metrics import adjusted_rand_score

    from .planted import CENTRES, strategy_maps

    maps, truth = strategy_maps(count, CENTRES[:strategies], np.arange(strategies, 0, -1), seed=count + 7)
    result = spray.analyse(spray.pool(maps, 3, 0.5), np.arange(count), "class-0", embeddings=(),
                           search="approximate")
    assert result.parameters["neighbor_search"] == "approximate"
    assert "approximate neighbour search (as asked" in result.notes[-1]
    assert adjusted_rand_score(truth, result.clusters[result.chosen]) >= 0.9


def test_approximate_neighbours_are_nearly_the_exact_ones():
    from .planted import CENTRES, strategy_maps

    maps, _ = strategy_maps(4000, CENTRES[:4], (4, 3, 2, 1), seed=11)
    features = spray.pool(maps, 3, 0.5)
    exact = spray.nearest_neighbors(features, 11, "exact")
    approximate = spray.nearest_neighbors(features, 11, "approximate")
    assert approximate.shape == exact.shape and approximate.min() >= 0
    recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(exact, approximate)])
    assert recall >= 0.95
    np.testing.assert_array_equal(approximate, spray.nearest_neighbors(features, 11, "approximate"))  # seeded
    graph = spray.knn_affinity(features, 10, "approximate")
    assert graph.diagonal().sum() == 0 and (graph != graph.T).nnz == 0 and graph.getnnz(axis=1).min() >= 10


def test_auto_searches_exactly_below_the_threshold_and_approximately_from_it(monkeypatch):
    assert spray.neighbor_search(spray.APPROXIMATE_FROM - 1) == "exact"
    assert spray.neighbor_search(spray.APPROXIMATE_FROM) == "approximate"
    assert spray.neighbor_search(10, "approximate") == "approximate"
    assert spray.neighbor_search(10 ** 7, "exact") == "exact"
    assert spray.eigenpair_count(spray.APPROXIMATE_FROM - 1) == 32
    assert spray.eigenpair_count(spray.APPROXIMATE_FROM, max_clusters=10) == 12
    monkeypatch.setattr(spray, "APPROXIMATE_FROM", 300)  # the switch as `analyse` applies it, on small sets
    points, truth = blobs([150, 100, 50], seed=9)
    below = spray.analyse(points[:299], np.arange(299), "all", embeddings=())
    at = spray.analyse(points, np.arange(300), "all", embeddings=())
    assert below.parameters["neighbor_search"] == "exact" and len(below.eigenvalues) == 32
    assert at.parameters["neighbor_search"] == "approximate" and len(at.eigenvalues) == 12
    assert "exact neighbour search (auto: exact below 300 samples" in below.notes[-1]
    assert at.suggested == 3 and len({(a, b) for a, b in zip(at.clusters[at.chosen], truth)}) == 3


def test_a_bad_neighbour_search_or_a_missing_faiss_names_the_fix(monkeypatch):
    points, _ = blobs([20, 20], seed=10)
    with pytest.raises(ValueError, match="unknown neighbour search 'fast'; choose from auto, exact, approximate"):
        spray.analyse(points, np.arange(40), "all", search="fast")
    with pytest.raises(ValueError, match="eigenvalues must be"):
        spray.analyse(points, np.arange(40), "all", eigenvalues=1)
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ValueError, match=r"needs faiss-cpu \(pip install 'relprop\[analysis\]'"):
        spray.knn_affinity(points, 5, "approximate")


def test_separate_groups_give_zero_eigenvalues_and_kmeans_finds_them():
    points, truth = blobs([40, 30, 30], seed=4)
    result = spray.analyse(points, np.arange(100), "all", neighbors=5, eigenvalues=8, embeddings=("spectral",),
                           algorithms=("kmeans", "hdbscan", "dbscan"))
    assert result.suggested == 3 and np.all(result.eigenvalues[:3] < 1e-8) and result.eigenvalues[3] > 0.05
    found = result.clusters["kmeans-3"]
    assert len({(a, b) for a, b in zip(found, truth)}) == 3  # a one-to-one match of clusters and groups
    assert result.chosen == "kmeans-3"
    density = next(labels for name, labels in result.clusters.items() if name.startswith("hdbscan-"))
    assert len({(a, b) for a, b in zip(density, truth) if a >= 0}) == 3
    assert result.embeddings["spectral"].shape == (100, 2)


def test_tsne_embedding_keeps_groups_apart():
    points, truth = blobs([30, 30], seed=5)
    values, vectors = spray.smallest_eigenpairs(spray.knn_affinity(points, 5), 6)
    picture = spray.embed(values, vectors, "tsne")
    centres = np.stack([picture[truth == g].mean(0) for g in (0, 1)])
    spread = max(np.linalg.norm(picture[truth == g] - centres[g], axis=1).max() for g in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread


def planted_store(path, chunk=7):
    """60 heatmaps of class 1: two strategies (relevance top-left or bottom-right), 20 of class 0; all 8x8."""
    rng = np.random.default_rng(6)
    relevance = rng.uniform(0, 0.1, (80, 3, 8, 8)).astype(np.float32)
    labels = np.array([1] * 60 + [0] * 20)
    strategy = np.arange(80) % 3 == 0
    relevance[strategy & (labels == 1), :, :3, :3] += 1
    relevance[~strategy & (labels == 1), :, 5:, 5:] += 1
    relevance[labels == 0, :, 3:5, 3:5] += 1
    output = np.eye(2, dtype=np.float32)[labels] * 5
    return write_store(path, relevance, labels, output, chunk=chunk), relevance, labels, strategy


def test_store_features_are_read_chunk_by_chunk_and_equal_pooling_everything(tmp_path, monkeypatch):
    store, relevance, labels, _ = planted_store(tmp_path / "run.zarr")
    root = stores.open_store(store).group
    reads = []
    original = stores.read_chunks

    def counting(array, indices, chunk):
        for positions, block in original(array, indices, chunk):
            reads.append(len(block))
            yield positions, block

    monkeypatch.setattr(stores, "read_chunks", counting)
    sets = {"class-1": np.flatnonzero(labels == 1)[::-1].copy(), "class-0": np.flatnonzero(labels == 0)}
    features = spray.store_features(root, sets, 4)
    assert max(reads) <= 7 and len(reads) == 12  # ceil(80 / 7) chunks, each read once
    for name, members in sets.items():
        np.testing.assert_allclose(features[name], spray.pool(relevance[members], 4), rtol=1e-6)


def test_run_writes_each_class_analysis_into_the_store_layout(tmp_path):
    store, _, labels, strategy = planted_store(tmp_path / "run.zarr")
    spray.run(store, clusters=[2, 3], neighbors=5, eigenvalues=6, embeddings=("spectral",), algorithms=("kmeans",))
    assert spray.stored(store) == ["class-0", "class-1"]
    group = zarr.open_group(str(store / "analysis" / "class-1"), mode="r")
    assert group["index"].dtype == np.int64 and list(group["index"][:]) == list(np.flatnonzero(labels == 1))
    assert group["eigenvalues"].shape == (6,) and group["eigenvectors"].shape == (60, 6)
    assert sorted(group["clusters"].array_keys()) == ["kmeans-2", "kmeans-3"]
    assert group["embedding/spectral"].shape == (60, 2) and group["embedding/spectral"].dtype == np.float32
    assert "features" not in group
    assert group.attrs["parameters"]["neighbors"] == 5 and group.attrs["suggested_clusters"] == 2
    found = spray.read(store, "class-1").clusters["kmeans-2"]
    assert len({(a, b) for a, b in zip(found, strategy[labels == 1])}) == 2  # the two planted strategies
    assert not list((store / "analysis").glob(".*"))  # no partial group left behind


def test_run_again_replaces_the_older_analysis(tmp_path):
    store, *_ = planted_store(tmp_path / "run.zarr")
    spray.run(store, classes=[1], clusters=[2, 3], neighbors=5, eigenvalues=6, embeddings=(), algorithms=("kmeans",))
    spray.run(store, classes=[1], clusters=[4], neighbors=5, eigenvalues=6, embeddings=(), algorithms=("kmeans",))
    assert list(spray.read(store, "class-1").clusters) == ["kmeans-4"]


def test_only_done_samples_are_analysed(tmp_path):
    rng = np.random.default_rng(7)
    done = np.arange(40) < 30
    store = write_store(tmp_path / "run.zarr", rng.normal(size=(40, 1, 4, 4)), np.zeros(40), np.ones((40, 2)),
                        chunk=10, done=done)
    spray.run(store, clusters=[2], neighbors=3, eigenvalues=4, embeddings=(), algorithms=("kmeans",))
    assert list(spray.read(store, "class-0").index) == list(range(30))


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="relprop run"):
        spray.run(tmp_path / "missing.zarr")
    store, *_ = planted_store(tmp_path / "run.zarr")
    with pytest.raises(ValueError, match="class 5 is out of range"):
        spray.run(store, classes=[5])
    with pytest.raises(ValueError, match="unknown embedding"):
        spray.run(store, embeddings=("pca",))
    with pytest.raises(KeyError, match="relprop spray"):
        spray.read(store, "class-1")


def store_with_small_classes(path):
    """Class 0: 40 samples in two strategies; class 1: 4 samples; class 2: 2 samples; class 3: none."""
    rng = np.random.default_rng(8)
    labels = np.array([0] * 40 + [1] * 4 + [2] * 2)
    relevance = rng.uniform(0, 0.1, (46, 1, 8, 8)).astype(np.float32)
    relevance[:20, :, :3, :3] += 1
    relevance[20:, :, 5:, 5:] += 1
    return write_store(path, relevance, labels, np.eye(4, dtype=np.float32)[labels], chunk=8)


def test_a_class_of_four_samples_is_analysed_without_density_clustering_and_says_so(tmp_path):
    store = store_with_small_classes(tmp_path / "run.zarr")
    results = spray.run(store, embeddings=("spectral",), algorithms=("kmeans", "hdbscan"))
    assert sorted(results) == ["class-0", "class-1"]
    assert any(name.startswith("hdbscan-") for name in results["class-0"].clusters)
    assert not any(name.startswith("hdbscan-") for name in results["class-1"].clusters)
    assert results["class-1"].notes and "hdbscan skipped: 4 samples" in results["class-1"].notes[0]
    assert spray.read(store, "class-1").notes == results["class-1"].notes  # stored for the report


def test_classes_with_too_few_samples_are_named_as_skipped(tmp_path):
    store = store_with_small_classes(tmp_path / "run.zarr")
    spray.run(store, embeddings=(), algorithms=("kmeans",))
    assert spray.skipped_sets(store) == {"class-2": 2}  # class 3 has no samples at all: nothing to skip
    assert "class-2 (2)" in spray.skipped_message(spray.skipped_sets(store))
    spray.run(store, classes=[0], embeddings=(), algorithms=("kmeans",))  # classes asked for by name: none skipped
    assert spray.skipped_sets(store) == {}


@pytest.mark.parametrize("mark", ["checkerboard 6x6 bottom-right", "square 3x3 top-left", "bar 2x9 left edge",
                                  "ring 5x5 top middle", "dot 2x2 right edge"])
def test_defaults_find_a_small_local_mark_on_a_third_of_the_class_and_open_on_it(mark, tmp_path):
    """A mark holding 40% of the object's relevance on 35% of the maps: the clustering the report opens on (with
    the defaults of `relprop spray`) holds the marked maps in one cluster, with few others (3x3 pooling shares an
    edge's middle cell with the tail of an object off centre: purity 0.86 for the bar, 1.00 in a corner)."""
    from relprop.tour.shortcut import marked_cluster

    from .planted import MARKS, shortcut_maps

    maps, marked = shortcut_maps(400, *MARKS[mark], mark_fraction=0.4, seed=1)
    store = write_store(tmp_path / "run.zarr", maps[:, None], np.zeros(400), np.ones((400, 2)), chunk=100)
    result = spray.run(store, embeddings=())["class-0"]
    _, purity, recall = marked_cluster(result.clusters[result.chosen], marked)
    assert purity >= 0.85 and recall >= 0.95, (result.chosen, purity, recall)


def test_conductance_equals_its_dense_formula_and_the_chosen_clustering_has_the_lowest():
    points, truth = blobs([40, 40, 20], seed=9)
    points[truth == 1] = points[truth == 0][:40] + 0.4 * (points[truth == 1] - points[truth == 1].mean(0))
    result = spray.analyse(points, np.arange(100), "all", clusters=[2, 3, 4], neighbors=5, eigenvalues=8,
                           embeddings=())
    adjacency = dense_affinity(points, 5)
    for name, labels in result.clusters.items():
        shares = []
        for cluster in np.unique(labels):
            inside = labels == cluster
            leaving = adjacency[inside][:, ~inside].sum()
            shares.append(leaving / min(adjacency[inside].sum(), adjacency[~inside].sum()))
        assert result.conductance[name] == pytest.approx(np.mean(shares), abs=1e-12)
    assert result.chosen == min(result.conductance, key=result.conductance.get)
    result.conductance = {"kmeans-2": 0.0, "kmeans-3": 0.0, "kmeans-4": 0.1}
    assert result.chosen == "kmeans-3"  # a tie goes to the larger k: the finer split crossed no more edges
    labels = np.array([0] * 50 + [-1] * 50)
    assert np.isnan(spray.conductance(spray.knn_affinity(points, 5), labels))  # one cluster: undefined


def test_hdbscan_does_not_split_a_small_class_into_many_clusters():
    """305 maps in 2 strategies with a mark as in the demo: HDBSCAN on them finds the 2, not tens of splinters."""
    from sklearn.metrics import adjusted_rand_score

    from .planted import MARKS, shortcut_maps

    maps, marked = shortcut_maps(305, *MARKS["checkerboard 6x6 bottom-right"], mark_fraction=0.4, seed=3)
    result = spray.analyse(spray.pool(maps, 3, 0.5), np.arange(305), "class-0", embeddings=(),
                           algorithms=("kmeans", "hdbscan"))
    density = next(labels for name, labels in result.clusters.items() if name.startswith("hdbscan-"))
    assert len(set(density.tolist()) - {-1}) <= 3
    kept = density >= 0
    assert kept.mean() >= 0.8 and adjusted_rand_score(marked[kept], density[kept]) >= 0.7


def test_hdbscan_above_its_sample_limit_clusters_a_subset_and_labels_the_rest_by_their_nearest(monkeypatch):
    from sklearn.cluster import HDBSCAN
    from sklearn.neighbors import NearestNeighbors

    points, _ = blobs([150, 100, 50], dim=3, spread=0.3, seed=10)
    monkeypatch.setattr(spray, "DENSITY_SAMPLE", 120)
    labels = spray.density_clusters(points, 3, "hdbscan", min_size=10, seed=4)
    rows = spray.spectral_rows(points, 3)
    subset = np.sort(np.random.default_rng(4).choice(300, 120, replace=False))
    expected = HDBSCAN(min_cluster_size=4, min_samples=20, copy=True).fit_predict(rows[subset])  # 4 = 10 * 120 / 300
    np.testing.assert_array_equal(labels[subset], expected)
    nearest = NearestNeighbors(n_neighbors=1).fit(rows[subset]).kneighbors(rows, return_distance=False)[:, 0]
    np.testing.assert_array_equal(labels, expected[nearest])
