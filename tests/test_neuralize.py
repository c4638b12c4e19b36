"""Neuralized k-means against Kauffmann et al. (2022)'s equations, written here in numpy (float64)."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.composites import Composite
from relprop.neuralize import LogMeanExpPool, MinPool, NeuralizedKMeans, neuralize

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def blobs(count=300, features=4, clusters=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(clusters, features))
    return centres[rng.integers(clusters, size=count)] + rng.normal(size=(count, features))


def discriminants_reference(x, centroids):
    """h[n, c, j] = ||x - mu_k||^2 - ||x - mu_c||^2 for the j-th competitor k != c, in increasing k."""
    distances = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)  # (N, K)
    K = len(centroids)
    return np.stack([np.stack([distances[:, k] - distances[:, c] for k in range(K) if k != c], -1)
                     for c in range(K)], 1)


def neon_reference(x, centroids, c, beta):
    """The paper's relevance of f_c: soft-min over competitors, then the midpoint rule on each h_ck."""
    K = len(centroids)
    competitors = [k for k in range(K) if k != c]
    h = discriminants_reference(x, centroids)[:, c]  # (N, K - 1)
    f = h.min(-1)
    weights = np.exp(-beta * (h - h.min(-1, keepdims=True)))
    share = weights / weights.sum(-1, keepdims=True) * f[:, None]  # R_ck
    relevance = np.zeros_like(x)
    for j, k in enumerate(competitors):
        w = 2 * (centroids[c] - centroids[k])
        midpoint = (centroids[c] + centroids[k]) / 2
        relevance += (x - midpoint) * w * (share[:, j] / h[:, j])[:, None]
    return relevance, f


# ---- the discriminants and the assignment ---------------------------------------------------------------------------
def test_discriminants_equal_differences_of_squared_distances_and_f_is_their_min():
    X = blobs()
    centroids = np.random.default_rng(1).normal(size=(4, 4))
    model = NeuralizedKMeans(torch.tensor(centroids))
    h = model[0](torch.tensor(X)).numpy()
    np.testing.assert_allclose(h, discriminants_reference(X, centroids), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model(torch.tensor(X)).numpy(), h.min(-1), rtol=1e-12)


@pytest.mark.parametrize("estimator", ["KMeans", "MiniBatchKMeans"])
@pytest.mark.parametrize("clusters", [2, 5])
def test_argmax_of_the_discriminants_is_the_kmeans_assignment_on_random_data(estimator, clusters):
    X = blobs(clusters=clusters)
    kmeans = getattr(sklearn_cluster, estimator)(clusters, n_init=2, random_state=0).fit(X)
    probe = np.random.default_rng(5).normal(scale=4.0, size=(2000, 4))  # points anywhere, not only training data
    model = neuralize(kmeans)
    np.testing.assert_array_equal(model(torch.tensor(probe)).argmax(1).numpy(), kmeans.predict(probe))
    np.testing.assert_array_equal(model.assign(torch.tensor(probe)).numpy(), kmeans.predict(probe))


def test_two_clusters_have_opposite_discriminants():
    model = neuralize(torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64))
    out = model(torch.randn(10, 2, dtype=torch.float64))
    np.testing.assert_allclose(out[:, 0].numpy(), -out[:, 1].numpy(), rtol=1e-12)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval().double()


def test_argmax_equals_kmeans_on_a_small_models_features():
    features = small_cnn()
    images = torch.rand(120, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embedded = features(images)
    kmeans = sklearn_cluster.KMeans(3, n_init=2, random_state=0).fit(embedded.numpy())
    deep = nn.Sequential(features, neuralize(kmeans))
    with torch.no_grad():
        np.testing.assert_array_equal(deep(images).argmax(1).numpy(), kmeans.predict(embedded.numpy()))


# ---- min and soft-min pooling ---------------------------------------------------------------------------------------
def test_log_mean_exp_pooling_approaches_the_min_as_beta_goes_to_minus_infinity_and_the_mean_at_zero():
    s = torch.tensor([[0.3, -1.2, 2.0, 0.7]], dtype=torch.float64)
    for beta in (-10.0, -100.0, -1000.0):
        gap = (LogMeanExpPool(beta)(s) - s.min()).item()
        assert 0 <= gap <= np.log(4) / -beta + 1e-12  # between the min and min + log(K) / |beta|
    np.testing.assert_allclose(LogMeanExpPool(-1e-7)(s).item(), s.mean().item(), atol=1e-6)
    np.testing.assert_allclose(MinPool()(s).item(), -1.2)


def test_soft_min_rule_gives_the_winner_everything_as_beta_grows_and_shares_evenly_at_zero():
    centroids = torch.tensor(np.random.default_rng(2).normal(size=(4, 3)))
    model, x = NeuralizedKMeans(centroids), torch.tensor(blobs(8, 3, seed=4))
    explain = lambda rule: relprop.explain(model, x, target=1, composite=Composite(
        layer_map={"min_pool": rule, "discriminant": rules.Midpoint()}))
    winner = explain(rules.WinnerTakeAll())
    stiff = explain(rules.SoftMin(1e4))
    np.testing.assert_allclose(stiff.relevance.numpy(), winner.relevance.numpy(), rtol=1e-9, atol=1e-9)
    even, _ = neon_reference(x.numpy(), centroids.numpy(), 1, 0.0)
    np.testing.assert_allclose(explain(rules.SoftMin(0.0)).relevance.numpy(), even, rtol=1e-9, atol=1e-12)


def test_log_mean_exp_pooling_shares_relevance_by_its_gradient_by_default():
    centroids = torch.tensor(np.random.default_rng(6).normal(size=(3, 2)))
    x = torch.tensor(blobs(5, 2, seed=7))
    model = NeuralizedKMeans(centroids, beta=-2.0)
    expl = relprop.explain(model, x, target=0, composite=Composite(layer_map={"discriminant": rules.Midpoint()}))
    # softmax(beta h) is the paper's soft-min of stiffness -beta, applied to the pool's own output
    relevance, _ = neon_reference(x.numpy(), centroids.numpy(), 0, 2.0)
    h = discriminants_reference(x.numpy(), centroids.numpy())[:, 0]
    smooth = (np.log(np.exp(-2.0 * h).mean(-1)) / -2.0)
    np.testing.assert_allclose(expl.explained.numpy(), smooth, rtol=1e-12)
    _, f = neon_reference(x.numpy(), centroids.numpy(), 0, 2.0)
    np.testing.assert_allclose(expl.relevance.numpy(), relevance * (smooth / f)[:, None], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(expl.delta.numpy(), 0, atol=1e-12)


# ---- the neon composite ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_neon_equals_the_papers_equations_and_conserves(beta):
    X = blobs(40, 5, clusters=4, seed=9)
    kmeans = sklearn_cluster.KMeans(4, n_init=2, random_state=0).fit(X)
    model = neuralize(kmeans)
    x = torch.tensor(X[:12])
    for c in range(4):
        expl = relprop.explain(model, x, target=c, composite="neon", beta=beta)
        expected, f = neon_reference(X[:12], kmeans.cluster_centers_, c, beta)
        np.testing.assert_allclose(expl.explained.numpy(), f, rtol=1e-12)
        np.testing.assert_allclose(expl.relevance.numpy(), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(expl.relevance.sum(1).numpy(), f, rtol=1e-10)  # conserved
        np.testing.assert_allclose(expl.delta.numpy(), 0, atol=1e-10)


def test_neon_report_names_the_papers_rules():
    model = neuralize(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64))
    rows = relprop.LRP(model, "neon").report(torch.randn(3, 2, dtype=torch.float64), target=0).rows
    assert [(row.op, row.rule) for row in rows] == [("Discriminants (neuralized k-means)", "Midpoint"),
                                                   ("MinPool (neuralized k-means)", "SoftMin")]


@pytest.mark.parametrize("site, rule", [("min_pool", rules.Epsilon()), ("min_pool", rules.Flat()),
                                        ("discriminant", rules.SoftMin()), ("discriminant", rules.Epsilon())])
def test_a_rule_the_cluster_modules_cannot_take_is_refused_by_name(site, rule):
    model = neuralize(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(TypeError, match=rf"{rule.name}.*(Midpoint|SoftMin)"):
        relprop.explain(model, torch.randn(3, 2), target=0, composite=Composite(layer_map={site: rule}))


# ---- bad input ------------------------------------------------------------------------------------------------------
def test_one_cluster_is_refused_as_nothing_to_explain():
    with pytest.raises(ValueError, match="1 cluster.*nothing to explain.*n_clusters >= 2"):
        neuralize(torch.zeros(1, 3))
    kmeans = sklearn_cluster.KMeans(1, n_init=1, random_state=0).fit(blobs(20))
    with pytest.raises(ValueError, match="nothing to explain"):
        neuralize(kmeans)


def test_an_empty_clusters_nan_centroid_is_refused_and_a_cluster_without_samples_is_warned_about():
    centroids = torch.tensor([[0.0, 0.0], [float("nan"), float("nan")], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"centroids \[1\] are not finite.*empty cluster"):
        neuralize(centroids)
    kmeans = sklearn_cluster.KMeans(3, n_init=1, random_state=0).fit(blobs(30, clusters=3))
    kmeans.labels_ = np.where(kmeans.labels_ == 2, 0, kmeans.labels_)  # as if cluster 2 had lost its samples
    with pytest.warns(UserWarning, match=r"clusters \[2\].*no training sample"):
        neuralize(kmeans)


def test_duplicate_centroids_are_refused_by_index():
    with pytest.raises(ValueError, match="centroids 0 and 2 are identical.*drop one"):
        neuralize(torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 2.0]]))


def test_mismatched_feature_sizes_are_refused_with_both_sizes():
    model = neuralize(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="input has 4 features.*centroids 3"):
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="input has 4 features.*centroids 3"):
        relprop.explain(model, torch.randn(2, 4), target=0, composite="neon")


def test_an_input_of_another_dtype_than_the_centroids_is_refused_with_the_fix():
    model = neuralize(torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input is torch.float32.*centroids torch.float64.*\.to\(torch.float32\)"):
        model(torch.randn(2, 2))


def test_unfitted_kmeans_and_other_shapes_are_refused():
    with pytest.raises(ValueError, match="not fitted.*fit"):
        neuralize(sklearn_cluster.KMeans(3))
    with pytest.raises(ValueError, match=r"\(clusters, features\) matrix"):
        neuralize(torch.zeros(3))
    with pytest.raises(ValueError, match="non-zero beta"):
        LogMeanExpPool(0.0)


def test_neuralizing_leaves_the_kmeans_model_untouched():
    kmeans = sklearn_cluster.KMeans(3, n_init=1, random_state=0).fit(blobs(30, clusters=3))
    before = kmeans.cluster_centers_.copy()
    model = neuralize(kmeans)
    model[0].centroids.add_(1.0)
    np.testing.assert_array_equal(kmeans.cluster_centers_, before)


# ---- deep clusters: k-means on a CNN's features, explained in pixels ------------------------------------------------
def test_deep_clusters_of_the_demo_models_features_are_explained_by_pixel_maps_on_the_deciding_shape():
    from relprop.demo import model as demo, shapes
    from relprop.tour.showcase import positive_share_in_mask

    net = demo.load()
    images, _, masks = shapes.generate(48, seed=0)
    x = demo.normalize(torch.from_numpy(images))
    features = nn.Sequential(net.features, net.pool, nn.Flatten())
    with torch.no_grad():
        embedded = features(x).double().numpy()
    kmeans = sklearn_cluster.KMeans(4, n_init=4, random_state=0).fit(embedded)
    deep = nn.Sequential(features, neuralize(kmeans).float())
    with torch.no_grad():
        np.testing.assert_array_equal(deep(x).argmax(1).numpy(), kmeans.labels_)
    clusters = torch.as_tensor(kmeans.labels_[:6])
    expl = relprop.explain(deep, x[:6], target=clusters, composite="neon")
    assert expl.relevance.shape == x[:6].shape
    with torch.no_grad():
        np.testing.assert_allclose(expl.explained.numpy(), deep(x[:6])[torch.arange(6), clusters].numpy(), rtol=1e-5)
    # biases and features at zero absorb a little (delta); the rest reaches the pixels
    assert (expl.delta.abs() < 0.05 * expl.explained.abs()).all()
    # the coloured shape (about 5% of the pixels) decides the class, and so the cluster: most evidence lies on it
    assert (positive_share_in_mask(expl.relevance, torch.from_numpy(masks[:6])) > 0.6).all()


# ---- a model computing torch.cdist(x, centroids).argmin(), found by data flow ---------------------------------------
class Assigner(nn.Module):
    """A user's k-means model: features, then the nearest centroid."""

    def __init__(self, features, centroids):
        super().__init__()
        self.features = features
        self.register_buffer("centroids", centroids)

    def forward(self, x):
        return torch.cdist(self.features(x), self.centroids).argmin(-1)


def test_a_model_returning_cdist_argmin_is_neuralized_by_data_flow_and_left_unchanged():
    torch.manual_seed(4)
    features = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    model = Assigner(features, torch.randn(4, 3, dtype=torch.float64)).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(200, 5, dtype=torch.float64)
    neuralized = neuralize(model, example=x[:2])
    np.testing.assert_array_equal(neuralized(x).argmax(1).numpy(), model(x).numpy())
    assert model(x).dtype == torch.int64  # the user's model still assigns
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    expl = relprop.explain(neuralized, x[:4], target=1, composite="neon")
    assert expl.relevance.shape == (4, 5)
    np.testing.assert_allclose(expl.explained.numpy(), neuralized(x[:4])[:, 1].detach().numpy(), rtol=1e-12)


def test_a_cdist_argmin_model_on_raw_features_is_explained_exactly_as_neuralized_centroids():
    centroids = torch.tensor(np.random.default_rng(8).normal(size=(3, 4)))
    model = Assigner(nn.Identity(), centroids)
    x = torch.tensor(blobs(6, 4, seed=2))
    expl = relprop.explain(neuralize(model, example=x), x, target=2, composite="neon", beta=2.0)
    expected, _ = neon_reference(x.numpy(), centroids.numpy(), 2, 2.0)
    np.testing.assert_allclose(expl.relevance.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_models_that_do_not_return_a_kmeans_assignment_are_refused_with_the_reason():
    centroids = torch.randn(3, 2)

    class Distances(nn.Module):
        def forward(self, x):
            return torch.cdist(x, centroids)  # no argmin

    class FromInput(nn.Module):
        def forward(self, x):
            return torch.cdist(x, x[:3]).argmin(-1)  # "centroids" computed from the input

    class Manhattan(nn.Module):
        def forward(self, x):
            return torch.cdist(x, centroids, p=1).argmin(-1)

    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="does not return torch.cdist.*argmin"):
        neuralize(Distances(), example=x)
    with pytest.raises(ValueError, match="centroids .* depend on its input"):
        neuralize(FromInput(), example=x)
    with pytest.raises(ValueError, match="p=1"):
        neuralize(Manhattan(), example=x)
    with pytest.raises(TypeError, match="example input"):
        neuralize(Distances())
    with pytest.raises(ValueError, match="training mode.*eval"):
        neuralize(Assigner(nn.Sequential(nn.Linear(2, 2), nn.Dropout()), centroids).train(), example=x)
