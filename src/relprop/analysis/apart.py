"""What sets each SpRAy cluster apart: neuralized k-means (NEON) on the pooled heatmaps.

SpRAy's k-means runs on spectral embeddings, which come from the whole k-nearest-neighbour graph and have no
formula for one sample, so they cannot be neuralized. The closest honest thing, and what is explained here: k-means
on SpRAy's own pooled heatmap features (step 1 of relprop.analysis.spray), started from the means of SpRAy's
clusters and refined; neuralized (relprop.neuralize), each sample's membership f_c of its refined cluster c is
explained over the heatmap cells by the neon rules (exact: the features are the model input; computed in NumPy by
neon_relevance, which gives the numbers of relprop's LRP of the neuralized k-means without importing torch), and
the relevance is averaged over the cluster's members. A cell with positive mean relevance is where that cluster's heatmaps differ
from those of its nearest competing clusters in the direction that puts samples into it: relevance there that the
others' heatmaps lack, or a lack of relevance the others have (a mark present in one cluster is red in both). The
agreement, the share of samples whose refined cluster is their SpRAy cluster, says how closely the explained
k-means follows SpRAy's clusters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOTE = ("what sets it apart: mean NEON relevance of membership in the cluster, over the pooled heatmap cells, for "
        "k-means on the pooled heatmaps started from these clusters (SpRAy's own spectral clusters cannot be "
        "neuralized); red: cells whose heatmap values put samples into this cluster rather than its nearest "
        "competitors, by relevance the others lack there or by lacking relevance the others have (compare the mean "
        "heatmap)")


EXPLAINED_PER_CLUSTER = 2000  # members per cluster whose relevance is averaged (explain_clusters)


@dataclass
class ClusterEvidence:
    """Per SpRAy cluster (noise left out), the mean relevance of its k-means membership over the pooled cells.

    Attributes:
        clusters: The SpRAy cluster labels.
        maps: (clusters, *cells) mean relevance of f_c over the samples refined into cluster c.
        members: Samples in each refined cluster.
        agreement: Share of samples whose refined cluster is their SpRAy cluster.
    """

    clusters: list[int]
    maps: np.ndarray  # (clusters, *cells): mean relevance of f_c over the samples refined into cluster c
    members: list[int]  # samples in each refined cluster
    agreement: float  # share of samples whose refined cluster is their SpRAy cluster


def explain_clusters(features: np.ndarray, labels: np.ndarray, cells: tuple[int, ...], beta: float = 1.0,
                     seed: int = 0, explained: int | None = EXPLAINED_PER_CLUSTER) -> ClusterEvidence:
    """NEON on k-means over pooled heatmaps (n, d), started from the clusters in labels (-1: noise, left out).

    Args:
        features: (n, d) pooled heatmaps (spray.pool).
        labels: (n,) SpRAy cluster labels, -1 for noise.
        cells: The shape of one sample's pooled features (pooled_cells).
        beta: NEON's stiffness.
        seed: Seeds k-means and the members drawn for the explanation.
        explained: The most members of each refined cluster whose relevance is averaged (drawn at random, seeded;
            k-means and the agreement still use every sample); None: all of them. A mean over 2,000 samples is
            within about 2% of the whole cluster's (standard error), and at 100,000 samples explaining all of them
            cost 6.6 s and 270 MiB of a report's 22 s and 1 GiB.

    Returns:
        A ClusterEvidence.

    Raises:
        ValueError: for fewer than two clusters outside noise.
    """
    from sklearn.cluster import KMeans


    labels = np.asarray(labels)
    kept = labels >= 0
    clusters = sorted({int(label) for label in labels[kept]})
    if len(clusters) < 2:
        raise ValueError(f"{len(clusters)} cluster(s) outside noise: nothing sets one apart from another")
    points = np.asarray(features, dtype=np.float64)[kept]
    starts = np.stack([points[labels[kept] == cluster].mean(0) for cluster in clusters])
    kmeans = KMeans(len(clusters), init=starts, n_init=1, random_state=seed).fit(points)
    spray_position = np.searchsorted(clusters, labels[kept])
    refined = kmeans.labels_
    rng = np.random.default_rng(seed)
    drawn = []
    for position in range(len(clusters)):
        inside = np.flatnonzero(refined == position)
        if explained is not None and len(inside) > explained:
            inside = np.sort(rng.choice(inside, explained, replace=False))
        drawn.append(inside)
    chosen = np.concatenate(drawn)
    relevance = neon_relevance(kmeans.cluster_centers_, points[chosen], refined[chosen], beta)
    maps = np.zeros((len(clusters),) + tuple(cells))
    members = [int((refined == position).sum()) for position in range(len(clusters))]
    start = 0
    for position, inside in enumerate(drawn):
        if len(inside):
            maps[position] = relevance[start:start + len(inside)].mean(0).reshape(cells)
        start += len(inside)
    return ClusterEvidence(clusters, maps, members, float((refined == spray_position).mean()))


def neon_relevance(centroids: np.ndarray, x: np.ndarray, clusters: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """NEON relevance of each sample's membership f_c in its cluster c over its features, in NumPy.

    The same numbers as ``lrp.explain(neuralize(centroids), x, target=clusters, composite="neon", beta=beta)``
    (relprop.neuralize, ops/clusters.py), written out so that a SpRAy report never imports torch, which alone costs
    about 470 MiB of memory: with h_ck = w_ck . x + b_ck, f_c = min_k h_ck is shared over the competitors k by
    softmax(-beta h_c.), and each share R_ck goes to the features by the midpoint rule,
    R_i = sum_k (x - m_ck)_i w_ck,i R_ck / h_ck, m_ck = (mu_c + mu_k) / 2 (a share whose h_ck is 0 carries none).

    Args:
        centroids: (K, D) cluster centroids.
        x: (n, D) samples.
        clusters: (n,) the cluster c of each sample whose membership is explained.
        beta: NEON's stiffness, at least 0.

    Returns:
        (n, D) relevance; each row sums to f_c of its sample.
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    clusters = np.asarray(clusters)
    relevance = np.zeros_like(x)
    for cluster in np.unique(clusters):
        rows = np.flatnonzero(clusters == cluster)
        own, competitors = centroids[cluster], np.delete(centroids, cluster, axis=0)
        weight = 2 * (own - competitors)  # (K - 1, D)
        midpoints = (own + competitors) / 2
        h = x[rows] @ weight.T + ((competitors ** 2).sum(1) - (own ** 2).sum())  # (n_c, K - 1)
        shares = np.exp(-beta * (h - h.min(1, keepdims=True)))
        shares *= h.min(1, keepdims=True) / shares.sum(1, keepdims=True)  # R_ck = softmin share of f_c
        g = np.divide(shares, h, out=np.zeros_like(h), where=h != 0)
        relevance[rows] = x[rows] * (g @ weight) - g @ (midpoints * weight)
    return relevance


def pooled_cells(relevance_shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The shape of one sample's pooled features (spray.pool): size x size cells of an image, or the vector.

    Args:
        relevance_shape: One sample's relevance shape.
        size: The pooling size (spray.pool).

    Returns:
        A shape tuple.
    """
    if len(relevance_shape) >= 2:
        height, width = relevance_shape[-2:]
        return (min(size, height), min(size, width))
    return tuple(relevance_shape)


__all__ = ["ClusterEvidence", "explain_clusters", "neon_relevance", "pooled_cells", "NOTE", "EXPLAINED_PER_CLUSTER"]
