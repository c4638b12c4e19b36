"""Spectral Relevance Analysis (SpRAy, Lapuschkin et al. 2019): which strategies does a model use for a class?

For each analysed set S of n heatmaps (one class, or all samples):

1. **Features.** Each heatmap is summed over channels, average-pooled to ``size`` x ``size`` cells
   (``F.adaptive_avg_pool2d``; inputs smaller than ``size`` keep their size), raised to ``power`` keeping signs
   (sign(v) |v|^power; the default 0.5 lets a small mark with a third of the relevance count beside a peak on the
   object, where 1 lets the peak decide distances: with 1, no pooling size from 3 to 8 found the watermark demo's
   mark) and scaled to unit L2 norm, so two samples compare by where relevance lies, not by how much there is.
   Read from the store chunk by chunk. An odd ``size`` puts a centred object inside one cell instead of across
   four; the default 3 keeps an object near the centre in the middle cell whatever its exact place, and a mark by
   an edge or in a corner in a cell of its own: on the watermark demo's crosses, k = 2 held the marked ones at
   every data-set size tried (123 to 299 crosses, recall >= 0.99), where 8 split them by where the object lies
   (recall 0.2-0.4 below 299).
2. **Affinity.** A symmetric k-nearest-neighbour graph: a_ij = 1 when j is among the ``neighbors`` nearest
   (Euclidean) features of i or i among those of j, else 0. Sparse: n * neighbors entries at most per direction.
   The neighbours are exact below ``APPROXIMATE_FROM`` samples (200,000) and approximate from there (faiss's
   inverted-file search, ~99% of the exact neighbours at 100k to 1M maps); ``search`` forces either, and the
   output and the report say which was used.
3. **Laplacian.** L = I - D^{-1/2} A D^{-1/2} with d_i = sum_j a_ij (every node has neighbours, so d_i > 0).
   Its eigenvalues lie in [0, 2]; as many are 0 as the graph has connected components, and small ones that stand
   apart mark groups of samples that are well connected inside and weakly to the rest: distinct strategies.
4. **Eigenpairs.** The ``eigenvalues`` smallest of L (default 32; from ``APPROXIMATE_FROM`` samples the
   max_clusters + 2 the eigengap needs, as the solver's restarts cost n times the square of the count): 0 once
   per connected component (eigenvector D^{1/2} 1_C), the others as the largest of M = D^{-1/2} A D^{-1/2}
   (lambda = 1 - mu) away from those, by a sparse Lanczos solver (scipy's ``eigsh``): nothing of size n x n is
   ever formed.
5. **Eigengap.** With lambda_1 <= ... <= lambda_m: when c >= 2 of them are 0 (below ``ZERO``), the kNN graph has
   c connected components, groups with no edge between them, and c is the suggestion (at most ``max_clusters``);
   the first gap after the zeros is the one that counts, however large later ones are. In a connected graph, the
   k in [2, min(m - 1, ``max_clusters``)] with the largest relative gap (lambda_{k+1} - lambda_k) / lambda_{k+1}:
   a jump from 0.001 to 0.01 says more than one from 0.30 to 0.33, which an absolute gap would rank higher.
   Never 1: a split is always shown, and its conductance (step 6) says whether it is real (high: it is not).
6. **Clusters.** k-means on the rows of the first k eigenvectors scaled to unit length (Ng, Jordan and Weiss 2001),
   stored as ``kmeans-<k>`` for each k asked for ("auto": every k from 2 to the suggestion); HDBSCAN and DBSCAN
   (scikit-learn, on request) on the same rows with k the suggested number, stored as ``hdbscan-<found>`` /
   ``dbscan-<found>`` (noise is -1). Each clustering gets its **conductance** on the kNN graph of step 2 (the same
   graph for every clustering, no ground truth): per cluster C, the edges leaving C over min(vol C, vol rest), vol
   the sum of degrees, i.e. the share of its neighbour links that cross to other clusters; averaged over the
   clusters. The k-means clustering with the lowest is the **chosen** one, the one reports open on: the most
   separated (on a tie, the larger k: splitting further cost no crossing edge). A mark against the rest can cross
   fewer edges than the eigengap's finer split of the same samples, which an eigengap cannot tell.
7. **Embeddings** in 2-D: ``spectral`` (eigenvectors 2 and 3), ``tsne`` (scikit-learn's Barnes-Hut t-SNE on the
   m-dimensional spectral embedding) and ``umap`` (umap-learn, where installed).

Results go into the store's ``analysis/<set>`` group (``class-<k>`` or ``all``), as the store layout says.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..datasets import store as stores

EMBEDDINGS = ("spectral", "tsne", "umap")
TSNE_AUTO_LIMIT = 5_000  # embeddings="auto" adds t-SNE up to this many samples (10k took 9 min on one busy core)
ALGORITHMS = ("kmeans", "hdbscan", "dbscan")
DENSITY_NEIGHBORS = 20  # HDBSCAN's min_samples
DENSITY_SAMPLE = 10_000  # HDBSCAN clusters at most this many samples and labels the rest by their nearest
KNN_WORKING_MIB = 128  # the exact neighbour search's distance blocks (scikit-learn's default, 1 GiB, was the peak)
ZERO = 1e-8  # an eigenvalue below this counts as 0: one per connected component of the kNN graph
MIN_SAMPLES = 3  # the least a set needs for a kNN graph with an eigengap; fewer are skipped and named
SEARCHES = ("auto", "exact", "approximate")
# "auto" searches neighbours approximately from this many samples: on pooled planted maps (one thread, loaded
# machine) the exact search took 10 s of CPU at 100k, 26 s at 200k, 51 s at 300k and 1,293 s of wall time at 1M;
# the approximate one 1.1, 3.2, 4.6 and ~40 s of CPU, finding 99% of the exact neighbours
# (docs/benchmarks-spray-crp.md)
APPROXIMATE_FROM = 200_000
APPROXIMATE_PROBES = 8  # cells the approximate search looks into: recall 0.988 at 100k and 0.995 at 1M maps


# ---- the steps, each on plain arrays ------------------------------------------------------------------------------
def pool(relevance: np.ndarray, size: int, power: float = 1.0) -> np.ndarray:
    """(n, features) float32: heatmaps (n, C, H, W), (n, H, W) or vectors (n, D) reduced as step 1 says.

    Args:
        relevance: Heatmaps (n, C, H, W), (n, H, W) or vectors (n, D).
        size: The side of the pooled grid (step 1).
        power: The power applied to pooled values, signs kept (step 1).

    Returns:
        (n, features) float32, rows of unit L2 norm (zero rows stay zero).

    Raises:
        ValueError: for relevance of another shape.
    """
    values = np.asarray(relevance, dtype=np.float32)
    if values.ndim == 4:
        values = values.sum(1, dtype=np.float32)
    if values.ndim == 3:
        height, width = values.shape[1:]
        values = adaptive_average(values, min(size, height), min(size, width))
    elif values.ndim != 2:
        raise ValueError(f"SpRAy pools heatmaps (n, C, H, W), (n, H, W) or vectors (n, D); got {values.shape}")
    flat = values.reshape(len(values), -1)
    if power != 1.0:
        flat = np.sign(flat) * np.abs(flat) ** np.float32(power)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norm > 0, norm, np.float32(1))).astype(np.float32, copy=False)


def adaptive_average(maps: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(n, rows, columns): each cell the mean of its window of (n, H, W) maps, windows as adaptive average pooling
    cuts them (cell i spans floor(i H / rows) to ceil((i + 1) H / rows)). NumPy, so reading a store's heatmaps never
    imports torch.

    Args:
        maps: (n, H, W) maps.
        rows: Output rows.
        columns: Output columns.

    Returns:
        (n, rows, columns) float32.
    """
    height, width = maps.shape[1:]
    pooled = np.empty((len(maps), rows, columns), dtype=np.float32)
    for i in range(rows):
        top, bottom = (i * height) // rows, -((-(i + 1) * height) // rows)
        for j in range(columns):
            left, right = (j * width) // columns, -((-(j + 1) * width) // columns)
            pooled[:, i, j] = maps[:, top:bottom, left:right].mean((1, 2), dtype=np.float32)
    return pooled


def neighbor_search(n: int, search: str = "auto") -> str:
    """The neighbour search SpRAy's kNN graph of n samples uses.

    Args:
        n: The number of samples.
        search: "exact" or "approximate" (taken as asked), or "auto": exact below ``APPROXIMATE_FROM`` samples and
            approximate from there.

    Returns:
        "exact" or "approximate".

    Raises:
        ValueError: for an unknown search.
    """
    if search not in SEARCHES:
        raise ValueError(f"unknown neighbour search {search!r}; choose from {', '.join(SEARCHES)}")
    if search != "auto":
        return search
    return "approximate" if n >= APPROXIMATE_FROM else "exact"


def search_note(searched: str, asked: str, n: int) -> str:
    """The line the output and the report give on the neighbour search a set's graph was built with.

    Args:
        searched: The search used, "exact" or "approximate".
        asked: The search asked for ("auto", "exact" or "approximate").
        n: The number of samples in the graph.

    Returns:
        One line of text.
    """
    why = (f"auto: exact below {APPROXIMATE_FROM:,} samples, approximate from there" if asked == "auto"
           else "as asked")
    other = "approximate" if searched == "exact" else "exact"
    return f"kNN graph of {n:,} samples: {searched} neighbour search ({why}; --neighbor-search {other} for the other)"


def nearest_neighbors(features: np.ndarray, count: int, search: str = "exact") -> np.ndarray:
    """Each row's nearest rows (Euclidean), itself usually first.

    Args:
        features: (n, d) features.
        count: How many neighbours to find per row.
        search: "exact" (scikit-learn's tree search) or "approximate" (faiss's inverted file, ``IndexIVFFlat``:
            4 sqrt(n) cells trained by k-means on a seeded sample, the nearest ``APPROXIMATE_PROBES`` cells
            searched).

    Returns:
        (n, count) indices; -1 where an approximate search found fewer.

    Raises:
        ValueError: for an unknown search, or an approximate one without faiss installed.
    """
    if search == "exact":
        import sklearn
        from sklearn.neighbors import NearestNeighbors

        with sklearn.config_context(working_memory=KNN_WORKING_MIB):
            return NearestNeighbors(n_neighbors=count).fit(features).kneighbors(features, return_distance=False)
    if search != "approximate":
        raise ValueError(f"unknown neighbour search {search!r}; choose exact or approximate")
    try:
        import faiss
    except ImportError:
        raise ValueError("the approximate neighbour search needs faiss-cpu (pip install 'relprop[analysis]' or "
                         "pip install faiss-cpu); or ask for the exact one (--neighbor-search exact)") from None
    values = np.ascontiguousarray(features, dtype=np.float32)
    n, dimensions = values.shape
    cells = int(max(1, min(4 * np.sqrt(n), n // 39)))  # faiss's k-means wants at least 39 points per cell
    quantizer = faiss.IndexFlatL2(dimensions)
    index = faiss.IndexIVFFlat(quantizer, dimensions, cells)
    index.cp.seed = 0
    sample = np.random.default_rng(0).choice(n, min(n, 50 * cells), replace=False)
    index.train(values[np.sort(sample)])
    index.add(values)
    index.nprobe = min(APPROXIMATE_PROBES, cells)
    _, found = index.search(values, count)
    return found


def knn_affinity(features: np.ndarray, neighbors: int, search: str = "exact"):
    """Sparse symmetric 0/1 affinity (scipy CSR) of the k-nearest-neighbour graph, self-loops excluded.

    Args:
        features: (n, d) features.
        neighbors: How many nearest neighbours each sample links to.
        search: "exact" or "approximate" (see ``nearest_neighbors``).

    Returns:
        A scipy CSR matrix (n, n).

    Raises:
        ValueError: when neighbors is not between 1 and n - 1.
    """
    from scipy import sparse

    n = len(features)
    if not 1 <= neighbors < n:
        raise ValueError(f"neighbors must be between 1 and n - 1 = {n - 1} for {n} samples, got {neighbors}")
    found = nearest_neighbors(features, neighbors + 1, search)
    rows = np.repeat(np.arange(n), neighbors + 1)
    columns = found.ravel()
    kept = columns >= 0  # an approximate search marks missing neighbours with -1
    graph = sparse.csr_matrix((np.ones(int(kept.sum()), dtype=np.float64), (rows[kept], columns[kept])),
                              shape=(n, n))
    graph.setdiag(0)  # a point is its own nearest neighbour (or ties with a duplicate): never an edge to itself
    graph.eliminate_zeros()
    graph.data[:] = 1.0
    return graph.maximum(graph.T).tocsr()


def normalized_laplacian(affinity):
    """L = I - D^{-1/2} A D^{-1/2} as a sparse matrix.

    Args:
        affinity: The kNN graph's sparse 0/1 affinity (knn_affinity).

    Returns:
        A scipy sparse matrix (n, n).

    Raises:
        ValueError: when a sample has no neighbour.
    """
    from scipy import sparse

    scale = _inverse_sqrt_degree(affinity)
    walk = sparse.diags(scale) @ affinity @ sparse.diags(scale)
    return (sparse.identity(affinity.shape[0], format="csr") - walk).tocsr()


def _inverse_sqrt_degree(affinity) -> np.ndarray:
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    if (degree <= 0).any():
        raise ValueError("the affinity graph has isolated samples (no neighbours); a kNN graph never does")
    return 1.0 / np.sqrt(degree)


def smallest_eigenpairs(affinity, count: int, seed: int = 0):
    """(eigenvalues (m,) ascending, eigenvectors (n, m)) of the normalised Laplacian, m = min(count, n - 1).

    Each connected component C gives eigenvalue 0 with eigenvector D^{1/2} 1_C (normalised); those are set
    directly, because a Lanczos solver started from one vector can miss copies of a repeated eigenvalue. The rest
    are the largest eigenpairs of P (M + I) P, with P the projection away from those vectors.

    Args:
        affinity: The kNN graph's sparse 0/1 affinity (knn_affinity).
        count: How many eigenpairs are wanted.
        seed: Seeds every random choice, so results repeat.

    Returns:
        A pair (eigenvalues, eigenvectors).
    """
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = affinity.shape[0]
    count = min(count, n - 1)
    scale = _inverse_sqrt_degree(affinity)
    walk = (sparse.diags(scale) @ affinity @ sparse.diags(scale)).tocsr()
    components, member_of = connected_components(affinity, directed=False)
    null = np.zeros((n, components))
    null[np.arange(n), member_of] = 1.0 / scale  # D^{1/2} 1_C
    null /= np.linalg.norm(null, axis=0)
    if components >= count:
        return np.zeros(count), null[:, :count]

    def project(vectors):
        return vectors - null @ (null.T @ vectors)

    def apply(vectors):
        vectors = project(vectors.reshape(n, -1))
        return project(walk @ vectors + vectors)

    operator = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    start = project(np.random.default_rng(seed).uniform(0.5, 1.5, (n, 1))).ravel()  # fixed: the same answer each run
    values, vectors = eigsh(operator, k=count - components, which="LA", v0=start, tol=1e-10)
    order = np.argsort(-values)
    eigenvalues = np.concatenate([np.zeros(components), np.clip(2.0 - values[order], 0.0, 2.0)])
    vectors = np.concatenate([null, vectors[:, order]], axis=1)
    # an eigenvector's sign is arbitrary; fix it so the largest entry is positive (results repeat bit for bit)
    flip = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    return eigenvalues, vectors * np.where(flip == 0, 1.0, flip)


def eigengap(eigenvalues: np.ndarray, max_clusters: int | None = None) -> int:
    """The number of clusters the spectrum suggests: the connected components where there are several, else the
    k >= 2 with the largest relative gap (lambda_{k+1} - lambda_k) / lambda_{k+1} (step 5).

    Args:
        eigenvalues: The eigenvalues, ascending.
        max_clusters: The most clusters the eigengap may suggest.

    Returns:
        The suggested k (at least 2 when there are three or more eigenvalues).
    """
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    cap = len(values) if max_clusters is None else min(len(values), max_clusters)
    components = int((values < ZERO).sum())
    if components >= 2:
        return min(components, max(cap, 2))
    limit = min(len(values), cap + 1)
    if limit < 3:
        return 1
    above = values[1:limit]  # lambda_2 .. lambda_limit, all > 0 in a connected graph
    relative = (above[1:] - above[:-1]) / above[1:]
    return int(np.argmax(relative)) + 2


def spectral_rows(eigenvectors: np.ndarray, k: int) -> np.ndarray:
    """The first k eigenvectors' rows scaled to unit length: the space the clusterings work in.

    Args:
        eigenvectors: (n, m) eigenvectors of the Laplacian, columns by ascending eigenvalue.
        k: The number of clusters.

    Returns:
        (n, k) float64 rows.
    """
    rows = np.asarray(eigenvectors[:, :k], dtype=np.float64)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norm > 0, norm, 1.0)


def kmeans(eigenvectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels (n,) int64 by k-means on the spectral rows.

    Args:
        eigenvectors: (n, m) eigenvectors of the Laplacian, columns by ascending eigenvalue.
        k: The number of clusters.
        seed: Seeds every random choice, so results repeat.

    Returns:
        (n,) int64 labels.
    """
    from sklearn.cluster import KMeans

    rows = spectral_rows(eigenvectors, k)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(rows).astype(np.int64)


def density_min_size(n: int) -> int:
    """The least cluster size HDBSCAN and DBSCAN are given for a set of n samples: 5% of them, at least 10 (5 let
    HDBSCAN cut 299 heatmaps of the watermark demo into 12 clusters; 5% with 20 neighbours made it 3).

    Args:
        n: The number of samples.

    Returns:
        The least cluster size.
    """
    return max(10, n // 20)


def density_clusters(eigenvectors: np.ndarray, k: int, algorithm: str, min_size: int, seed: int = 0) -> np.ndarray:
    """Cluster labels (n,) int64 by HDBSCAN or DBSCAN on the spectral rows (noise -1).

    HDBSCAN's density is that of the ``DENSITY_NEIGHBORS``-th neighbour (scikit-learn takes it from min_size
    otherwise: 1,000-neighbour distances at 100,000 samples); its spanning tree costs time quadratic in the samples,
    so above ``DENSITY_SAMPLE`` it clusters a seeded subset and each other sample takes the label of its nearest
    subset member in the spectral rows.

    Args:
        eigenvectors: (n, m) eigenvectors of the Laplacian, columns by ascending eigenvalue.
        k: The number of clusters.
        algorithm: "hdbscan" or "dbscan".
        min_size: The least cluster size (density_min_size).
        seed: Seeds every random choice, so results repeat.

    Returns:
        (n,) int64 labels, -1 for noise.
    """
    rows = spectral_rows(eigenvectors, max(k, 2))
    if algorithm == "hdbscan":
        from sklearn.cluster import HDBSCAN
        from sklearn.neighbors import NearestNeighbors

        density = HDBSCAN(min_cluster_size=min_size, min_samples=DENSITY_NEIGHBORS, copy=True)
        if len(rows) <= DENSITY_SAMPLE:
            return density.fit_predict(rows).astype(np.int64)
        subset = np.sort(np.random.default_rng(seed).choice(len(rows), DENSITY_SAMPLE, replace=False))
        density.min_cluster_size = max(2, round(min_size * DENSITY_SAMPLE / len(rows)))
        found = density.fit_predict(rows[subset]).astype(np.int64)
        nearest = NearestNeighbors(n_neighbors=1).fit(rows[subset]).kneighbors(rows, return_distance=False)
        return found[nearest[:, 0]]
    if algorithm == "dbscan":
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import NearestNeighbors

        # eps: the median distance to the min_size-th neighbour, the density a cluster must reach
        distances, _ = NearestNeighbors(n_neighbors=min(min_size, len(rows) - 1) + 1).fit(rows).kneighbors(rows)
        eps = float(np.median(distances[:, -1])) or 1e-12
        return DBSCAN(eps=eps, min_samples=min_size).fit_predict(rows).astype(np.int64)
    raise ValueError(f"unknown clustering {algorithm!r}; choose from {', '.join(ALGORITHMS)}")


def embed(eigenvalues: np.ndarray, eigenvectors: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, 2) float32: a 2-D picture of the samples from their spectral embedding.

    Args:
        eigenvalues: The eigenvalues, ascending.
        eigenvectors: (n, m) eigenvectors of the Laplacian, columns by ascending eigenvalue.
        method: "spectral", "tsne" or "umap".
        seed: Seeds every random choice, so results repeat.

    Returns:
        (n, 2) float32 coordinates.

    Raises:
        ValueError: for an unknown method, or umap without umap-learn.
    """
    n, m = eigenvectors.shape
    if method == "spectral":
        columns = [1, 2] if m >= 3 else [0, min(1, m - 1)]
        return eigenvectors[:, columns].astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            eigenvectors.astype(np.float64)).astype(np.float32)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("--embed umap needs umap-learn (pip install umap-learn); or use --embed tsne") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(eigenvectors).astype(np.float32)
    raise ValueError(f"unknown embedding {method!r}; choose from {', '.join(EMBEDDINGS)}")


# ---- one analysed set ------------------------------------------------------------------------------------------
@dataclass
class Analysis:
    """SpRAy's result for one set of samples (store positions in ``index``).

    Attributes:
        name: The set: "class-<k>" or "all".
        index: The store positions of its samples.
        eigenvalues: The smallest eigenvalues of the Laplacian, ascending.
        eigenvectors: Their eigenvectors (n, m).
        suggested: The eigengap's number of clusters.
        clusters: Clustering name ("kmeans-3", "hdbscan-4") -> (n,) labels.
        embeddings: Method -> (n, 2) coordinates.
        parameters: The settings the analysis ran with.
        notes: What was left out and why, for the output and the report.
        conductance: Clustering name -> mean conductance (step 6).
    """

    name: str
    index: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    suggested: int
    clusters: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was left out and why, for the output and the report
    conductance: dict[str, float] = field(default_factory=dict)  # per clustering, step 6

    @property
    def chosen(self) -> str:
        """The clustering reports open on: the k-means one with the lowest conductance (the larger k on a tie);
        without conductances (older stores), the one whose k is closest to the eigengap's suggestion."""
        ks = {name: int(name.split("-")[1]) for name in self.clusters if name.startswith("kmeans-")}
        if not ks:
            return next(iter(self.clusters))
        scored = {name: self.conductance[name] for name in ks if np.isfinite(self.conductance.get(name, np.nan))}
        if scored:
            return min(scored, key=lambda name: (round(scored[name], 6), -ks[name]))
        return min(ks, key=lambda name: (abs(ks[name] - self.suggested), ks[name]))


def conductance(affinity, labels: np.ndarray) -> float:
    """Mean conductance of a clustering on the kNN graph (step 6): per cluster, its edges to other samples (noise
    included) over min(its volume, the rest's); NaN where undefined (fewer than two clusters).

    Args:
        affinity: The kNN graph's sparse 0/1 affinity (knn_affinity).
        labels: (n,) cluster labels, -1 for noise.

    Returns:
        The mean conductance, or NaN.
    """
    labels = np.asarray(labels)
    rows, columns = affinity.nonzero()
    found = np.unique(labels[labels >= 0])
    if len(found) < 2:
        return float("nan")
    shift = labels + 1  # noise (-1) gets bin 0
    volume = np.bincount(shift[rows], minlength=shift.max() + 1).astype(np.float64)
    inside = np.bincount(shift[rows][shift[rows] == shift[columns]], minlength=len(volume)).astype(np.float64)
    bins = found + 1
    smaller = np.minimum(volume[bins], volume.sum() - volume[bins])
    return float(np.mean((volume[bins] - inside[bins]) / np.where(smaller > 0, smaller, np.nan)))


def eigenpair_count(n: int, max_clusters: int = 10) -> int:
    """How many eigenpairs "auto" computes for n samples.

    32 (the spectrum the report plots), or from ``APPROXIMATE_FROM`` samples the max_clusters + 2 the eigengap needs:
    the Lanczos solver's restarts cost n x (2 count)^2, and 32 took 84 s of CPU at 300,000 maps where 12 took 21 s.

    Args:
        n: The number of samples.
        max_clusters: The most clusters the eigengap may suggest.

    Returns:
        The number of eigenpairs.
    """
    return max(max_clusters + 2, 3) if n >= APPROXIMATE_FROM else 32


def analyse(features: np.ndarray, index: np.ndarray, name: str, clusters="auto", neighbors: int = 10,
            eigenvalues: int | str = "auto", embeddings=("spectral", "tsne"), algorithms=("kmeans",),
            max_clusters: int = 10, seed: int = 0, parameters: dict | None = None,
            search: str = "auto") -> Analysis:
    """Steps 2 to 7 on pooled features (n, d) of one set; ``clusters`` is "auto" or a sequence of k.

    Args:
        features: (n, d) pooled features of one set (pool).
        index: The store positions of its samples.
        name: The set's name.
        clusters: "auto" (every k from 2 to the eigengap's suggestion) or a sequence of k.
        neighbors: The neighbours per sample in the kNN graph (step 2).
        eigenvalues: How many of the smallest eigenpairs are computed, or "auto" (``eigenpair_count``: fewer on
            large sets).
        embeddings: 2-D pictures to make: "spectral", "tsne", "umap".
        algorithms: Clusterings to run: "kmeans", "hdbscan", "dbscan".
        max_clusters: The most clusters the eigengap may suggest.
        seed: Seeds every random choice, so results repeat.
        parameters: More settings to record with the result.
        search: The neighbour search: "auto", "exact" or "approximate" (``neighbor_search``).

    Returns:
        An Analysis.

    Raises:
        ValueError: for an unknown clustering or embedding, or too few samples.
    """
    n = len(features)
    if n < 3:
        raise ValueError(f"{name}: {n} explained samples; SpRAy needs at least 3 (better hundreds)")
    neighbors = min(neighbors, n - 1)
    searched = neighbor_search(n, search)
    if eigenvalues == "auto":
        eigenvalues = eigenpair_count(n, max_clusters)
    elif isinstance(eigenvalues, bool) or not isinstance(eigenvalues, int) or eigenvalues < 2:
        raise ValueError(f"eigenvalues must be \"auto\" or a count of at least 2, got {eigenvalues!r}")
    affinity = knn_affinity(features, neighbors, searched)
    values, vectors = smallest_eigenpairs(affinity, eigenvalues, seed)
    suggested = eigengap(values, max_clusters)
    # auto: every k up to the suggestion, so a coarser split (the mark against the rest) can be chosen over a finer one
    ks = list(range(2, max(2, suggested) + 1)) if clusters == "auto" else sorted({int(k) for k in clusters})
    ks = [k for k in ks if 2 <= k <= min(n - 1, vectors.shape[1])]
    if not ks:
        raise ValueError(f"{name}: no number of clusters in {clusters!r} fits {n} samples and "
                         f"{vectors.shape[1]} eigenvectors")
    result = Analysis(name, np.asarray(index, dtype=np.int64), values, vectors, suggested,
                      parameters=dict(parameters or {}, neighbors=neighbors, neighbor_search=searched,
                                      eigenvalues=len(values), seed=seed,
                                      max_clusters=max_clusters))
    for algorithm in algorithms:
        if algorithm == "kmeans":
            for k in ks:
                result.clusters[f"kmeans-{k}"] = kmeans(vectors, k, seed)
            continue
        min_size = density_min_size(n)
        if n < 2 * min_size:  # not even two clusters of the least size fit: nothing to find, and HDBSCAN refuses
            result.notes.append(f"{algorithm} skipped: {n} samples are fewer than two clusters of its least size "
                                f"({min_size})")
            continue
        labels = density_clusters(vectors, max(2, suggested), algorithm, min_size=min_size, seed=seed)
        result.clusters[f"{algorithm}-{len(set(labels.tolist()) - {-1})}"] = labels
    result.conductance = {name: conductance(affinity, labels) for name, labels in result.clusters.items()}
    result.notes.append(search_note(searched, search, n))
    for method in embeddings:
        result.embeddings[method] = embed(values, vectors, method, seed)
    return result


# ---- over a store --------------------------------------------------------------------------------------------------
def store_features(root, sets: dict[str, np.ndarray], size: int, power: float = 1.0) -> dict[str, np.ndarray]:
    """Pooled features per set, reading relevance one stored chunk at a time (never all heatmaps at once).

    Args:
        root: The opened store (a zarr group).
        sets: Set name -> store positions.
        size: The side of the pooled grid (step 1).
        power: The power applied to pooled values, signs kept (step 1).

    Returns:
        Set name -> (n, features) pooled features.
    """
    wanted = np.unique(np.concatenate(list(sets.values()))) if sets else np.empty(0, np.int64)
    pooled = None
    for positions, block in stores.read_chunks(root["relevance"], wanted, stores.chunk_size(root)):
        features = pool(block, size, power)
        if pooled is None:
            pooled = np.empty((len(wanted), features.shape[1]), dtype=np.float32)
        pooled[positions] = features
    if pooled is None:
        return {}
    return {name: pooled[np.searchsorted(wanted, members)] for name, members in sets.items()}


def select_sets(root, classes=None, over_all: bool = False, min_samples: int = MIN_SAMPLES) -> dict[str, np.ndarray]:
    """{set name: store positions}: each class with enough explained samples (or the given ones), or all.

    Args:
        root: The opened store (a zarr group).
        classes: The class indices to analyse; None: each class with at least min_samples explained samples.
        over_all: Analyse all explained samples as one set instead of by class.
        min_samples: The least explained samples a class needs.

    Returns:
        Set name -> store positions.

    Raises:
        ValueError: when a class asked for has fewer than min_samples explained samples.
    """
    ready = stores.ready(root)
    if over_all:
        return {"all": np.flatnonzero(ready)}
    of_class = stores.classes_of(root)
    count = _class_count(root, of_class)
    if classes is None:
        classes = [k for k in range(count) if (ready & (of_class == k)).sum() >= min_samples]
    sets = {}
    for k in classes:
        if not 0 <= int(k) < max(count, 1):
            raise ValueError(f"class {k} is out of range: the store's model has {count} classes (0..{count - 1})")
        members = np.flatnonzero(ready & (of_class == int(k)))
        if len(members) < min_samples:
            raise ValueError(f"class {k} has {len(members)} explained samples in the store; SpRAy needs at least "
                             f"{min_samples}; leave it out of --classes")
        sets[f"class-{int(k)}"] = members
    if not sets:
        raise ValueError("no class has enough explained samples; is the store finished? (`relprop run` resumes it)")
    return sets


def _class_count(root, of_class: np.ndarray) -> int:
    return int(root.attrs.get("classes") or (of_class.max() + 1 if len(of_class) else 0))


def too_small(root, min_samples: int = MIN_SAMPLES) -> dict[str, int]:
    """{class-<k>: explained samples} of the classes with some explained samples but fewer than SpRAy needs.

    Args:
        root: The opened store (a zarr group).
        min_samples: The least explained samples a class needs.

    Returns:
        Set name -> its count of explained samples.
    """
    ready = stores.ready(root)
    of_class = stores.classes_of(root)
    counts = np.bincount(of_class[ready & (of_class >= 0)], minlength=_class_count(root, of_class))
    return {f"class-{k}": int(counts[k]) for k in np.flatnonzero((counts > 0) & (counts < min_samples))}


def run(store, classes=None, over_all: bool = False, clusters="auto", neighbors: int = 10,
        eigenvalues: int | str = "auto", embeddings="auto", algorithms=("kmeans",), size: int = 3, power: float = 0.5,
        max_clusters: int = 10, seed: int = 0, progress=None, search: str = "auto") -> dict[str, Analysis]:
    """Analyse the store's classes (or all samples) and write each result into ``analysis/<set>``.

    Args:
        store: The store's path.
        classes: The class indices to analyse; None: each class with enough explained samples.
        over_all: Analyse all explained samples as one set.
        clusters: "auto" (every k from 2 to the eigengap's suggestion) or a sequence of k.
        neighbors: The neighbours per sample in the kNN graph (step 2).
        eigenvalues: How many of the smallest eigenpairs are computed, or "auto" (``eigenpair_count``).
        embeddings: "auto" (the spectral picture, and t-SNE for sets of up to TSNE_AUTO_LIMIT samples) or a sequence
            of "spectral", "tsne", "umap".
        algorithms: Clusterings to run: "kmeans", "hdbscan", "dbscan".
        size: The side of the pooled grid (step 1).
        power: The power applied to pooled values, signs kept (step 1).
        max_clusters: The most clusters the eigengap may suggest.
        seed: Seeds every random choice, so results repeat.
        progress: A function called with a line per set, or None.
        search: The neighbour search of the kNN graph: "auto" (exact below ``APPROXIMATE_FROM`` samples, approximate
            from there), "exact" or "approximate".

    Returns:
        Set name -> Analysis.

    Raises:
        ValueError: for an unknown embedding or clustering, none asked for, a power that is not positive, or a
            class asked for without enough explained samples.
    """
    automatic = embeddings == "auto"
    embeddings = ("spectral", "tsne") if automatic else tuple(embeddings)
    for method in embeddings:
        if method not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {method!r}; choose from {', '.join(EMBEDDINGS)}")
    if not algorithms:
        raise ValueError(f"no clustering asked for; choose from {', '.join(ALGORITHMS)}")
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown clustering {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    if search not in SEARCHES:
        raise ValueError(f"unknown neighbour search {search!r}; choose from {', '.join(SEARCHES)}")
    root = stores.open_store(store, mode="r+").group
    sets = select_sets(root, classes, over_all)
    skipped = too_small(root) if classes is None and not over_all else {}
    if power <= 0:
        raise ValueError(f"power must be positive (1: relevance as it is, 0.5: square roots), got {power}")
    features = store_features(root, sets, size, power)
    results = {}
    for name, members in sets.items():
        if progress:
            progress(f"{name}: {len(members)} samples")
        chosen = [e for e in embeddings if not (automatic and e == "tsne" and len(members) > TSNE_AUTO_LIMIT)]
        results[name] = analyse(features[name], members, name, clusters, neighbors, eigenvalues, chosen,
                                algorithms, max_clusters, seed, parameters={"size": size, "power": power, "features":
                                "channel sum, adaptive average pool, signed power, unit L2 norm",
                                "affinity": "symmetric kNN, 0/1"}, search=search)
        write(store, results[name])
    _record_skipped(store, skipped)
    return results


def skipped_message(skipped: dict[str, int]) -> str:
    """One line naming the classes left out for having too few explained samples.

    Args:
        skipped: Set name -> its count of explained samples (too_small).

    Returns:
        The line.
    """
    listed = ", ".join(f"{name} ({count})" for name, count in skipped.items())
    return f"skipped, fewer than {MIN_SAMPLES} explained samples: {listed}"


def _record_skipped(store, skipped: dict[str, int]) -> None:
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    group = root["analysis"] if "analysis" in root else root.create_group("analysis")
    group.attrs["skipped"] = skipped


def skipped_sets(store) -> dict[str, int]:
    """{class-<k>: explained samples} the last `run` over every class left out for having too few.

    Args:
        store: The store's path.

    Returns:
        Set name -> its count of explained samples.
    """
    root = stores.open_store(store).group
    return dict(root["analysis"].attrs.get("skipped", {})) if "analysis" in root else {}


def write(store, result: Analysis) -> None:
    """Write one analysis into ``analysis/<name>``, replacing an older one only once the new one is complete.

    Args:
        store: The store's path.
        result: The analysis.
    """
    import zarr

    folder = Path(store) / "analysis"
    partial, final = folder / f".{result.name}.partial", folder / result.name
    root = zarr.open_group(str(store), mode="r+")
    if "analysis" not in root:
        root.create_group("analysis")
    shutil.rmtree(partial, ignore_errors=True)
    group = zarr.open_group(str(partial), mode="w")
    group.create_array("index", data=result.index)
    group.create_array("eigenvalues", data=result.eigenvalues.astype(np.float64))
    group.create_array("eigenvectors", data=result.eigenvectors.astype(np.float32))
    group.create_group("clusters")
    group.create_group("embedding")
    for name, labels in result.clusters.items():
        group.create_array(f"clusters/{name}", data=labels.astype(np.int64))
    for name, points in result.embeddings.items():
        group.create_array(f"embedding/{name}", data=points.astype(np.float32))
    group.attrs.update(json.loads(json.dumps({
        "parameters": result.parameters, "suggested_clusters": result.suggested, "chosen": result.chosen,
        "notes": result.notes, "conductance": _finite(result.conductance), "method": "spray"})))
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)


def _finite(scores: dict[str, float]) -> dict:
    """Scores for JSON attributes: NaN (undefined) as null."""
    return {key: (round(float(value), 6) if np.isfinite(value) else None) for key, value in scores.items()}


def read(store, name: str) -> Analysis:
    """One stored analysis back (``class-<k>`` or ``all``).

    Args:
        store: The store's path.
        name: "class-<k>" or "all".

    Returns:
        The Analysis.

    Raises:
        KeyError: when the store has no such analysis (the message lists those it has).
    """
    root = stores.open_store(store).group
    if f"analysis/{name}" not in root:
        stored = sorted(root["analysis"].group_keys()) if "analysis" in root else []
        raise KeyError(f"{store} has no analysis {name!r} (it has: {', '.join(stored) or 'none'}); "
                       "run `relprop spray` first")
    group = root[f"analysis/{name}"]
    clusters = {key: np.asarray(group[f"clusters/{key}"][:]) for key in sorted(group["clusters"].array_keys())}
    embeddings = {key: np.asarray(group[f"embedding/{key}"][:]) for key in sorted(group["embedding"].array_keys())}
    attrs = dict(group.attrs)
    return Analysis(name, np.asarray(group["index"][:]), np.asarray(group["eigenvalues"][:]),
                    np.asarray(group["eigenvectors"][:]), int(attrs["suggested_clusters"]), clusters, embeddings,
                    attrs.get("parameters", {}), list(attrs.get("notes", [])),
                    {key: np.nan if value is None else float(value)
                     for key, value in attrs.get("conductance", {}).items()})


def stored(store) -> list[str]:
    """Names of the analyses in a store.

    Args:
        store: The store's path.

    Returns:
        The sorted names.
    """
    root = stores.open_store(store).group
    return sorted(root["analysis"].group_keys()) if "analysis" in root else []


__all__ = ["pool", "knn_affinity", "normalized_laplacian", "smallest_eigenpairs", "eigengap", "spectral_rows",
           "kmeans", "density_clusters", "conductance", "embed", "analyse", "Analysis", "run", "read", "write",
           "stored",
           "select_sets", "store_features", "neighbor_search", "nearest_neighbors", "eigenpair_count", "search_note",
           "SEARCHES", "APPROXIMATE_FROM", "too_small", "skipped_sets", "skipped_message", "density_min_size",
           "DENSITY_NEIGHBORS", "DENSITY_SAMPLE", "EMBEDDINGS", "ALGORITHMS", "MIN_SAMPLES"]
