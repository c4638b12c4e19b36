import numpy as np
import pytest
import torch

from relprop import correct
from relprop.analysis import spray
from relprop.correct import cav as cavs

from analysis.stores import write_store
from . import planted


def test_pattern_cav_is_the_unit_difference_of_the_groups_means():
    rng = np.random.default_rng(0)
    artifact, clean = rng.normal(1.0, 1.0, (9, 2, 3, 3)), rng.normal(0.0, 1.0, (7, 2, 3, 3))
    cav = correct.from_activations(torch.tensor(artifact), torch.tensor(clean), "x")
    difference = artifact.reshape(9, -1).mean(0) - clean.reshape(7, -1).mean(0)
    np.testing.assert_allclose(cav.direction.numpy(), difference / np.linalg.norm(difference), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cav.clean_mean.numpy(), clean.reshape(7, -1).mean(0), rtol=1e-5, atol=1e-6)
    pooled = correct.from_activations(torch.tensor(artifact), torch.tensor(clean), "x", pooling="mean")
    channels = artifact.mean((0, 2, 3)) - clean.mean((0, 2, 3))
    np.testing.assert_allclose(pooled.direction.numpy(), channels / np.linalg.norm(channels), rtol=1e-5, atol=1e-6)
    assert cav.counts == (9, 7) and cav.shape == (2, 3, 3)


def test_filter_cav_separates_the_groups_and_points_towards_the_artifact():
    rng = np.random.default_rng(1)
    clean = rng.normal(0, 1, (40, 5))
    artifact = rng.normal(0, 1, (40, 5))
    artifact[:, 2] += 4.0  # the artifact lives in feature 2
    cav = correct.from_activations(torch.tensor(artifact), torch.tensor(clean), kind="filter")
    assert cav.kind == "filter" and abs(float(cav.direction.norm()) - 1) < 1e-5
    assert int(cav.direction.abs().argmax()) == 2 and cav.direction[2] > 0
    assert float(cav.artifact_level) > float(cav.clean_level)


def test_too_few_samples_are_refused_per_group():
    with pytest.raises(ValueError, match="1 sample.*with the artifact.*at least 2"):
        correct.from_activations(torch.randn(1, 4), torch.randn(5, 4))
    with pytest.raises(ValueError, match="0 sample.*without it"):
        correct.from_inputs(planted.trained(), torch.randn(3, 1, 8, 8), torch.randn(0, 1, 8, 8), planted.LAYER)


def test_a_layer_that_does_not_exist_is_refused_with_the_closest_names():
    with pytest.raises(ValueError, match="no module named 'body.7'.*did you mean"):
        correct.from_inputs(planted.trained(), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), "body.7")


def test_a_layer_output_that_changes_shape_with_the_input_is_refused():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x).amax((2, 3))

    net = Net()
    with pytest.raises(ValueError, match="changes shape.*pooling='mean'"):
        correct.from_activations(torch.randn(3, 2, 8, 8), torch.randn(3, 2, 6, 6), "conv")
    cav = correct.from_activations(torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8) + 1, "conv")
    fixed = correct.p_clarc(net, cav)
    with pytest.raises(ValueError, match=r"shape \(2, 6, 6\).*\(2, 8, 8\)"):
        fixed(torch.randn(1, 1, 6, 6))


def test_save_and_load_give_the_same_cav(tmp_path):
    cav = correct.from_activations(torch.randn(4, 3, 2, 2) + 1, torch.randn(5, 3, 2, 2), "body.1", pooling="mean")
    back = correct.CAV.load(cav.save(tmp_path / "cav.safetensors"))
    assert (back.layer, back.pooling, back.kind, back.shape, back.counts) == ("body.1", "mean", "pattern",
                                                                             (3, 2, 2), (4, 5))
    torch.testing.assert_close(back.direction, cav.direction)
    torch.testing.assert_close(back.clean_mean, cav.clean_mean)


# ---- from a SpRAy cluster in a store ----------------------------------------------------------------------------
class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def _store_with_clusters(tmp_path, with_spray=True):
    """A store of 80 planted samples whose class-1 SpRAy result puts the marked ones in cluster 1 of kmeans-2."""
    images, labels, marked = planted.generate(80, 7)
    relevance = np.zeros((80, 1, 8, 8), np.float32)
    path = write_store(tmp_path / "run.zarr", relevance, labels.numpy(), np.eye(2)[labels.numpy()])
    if with_spray:
        members = np.flatnonzero(labels.numpy() == 1)
        clusters = {"kmeans-2": marked.numpy()[members].astype(np.int64)}
        spray.write(path, spray.Analysis("class-1", members, np.zeros(3), np.zeros((len(members), 3)), 2,
                                         clusters))
    return path, Images(images, labels), images, labels, marked


def test_cav_from_a_spray_cluster_equals_the_cav_from_its_samples(tmp_path):
    path, dataset, images, labels, marked = _store_with_clusters(tmp_path)
    net = planted.trained()
    from relprop.datasets import open_source

    cav = correct.from_spray(path, 1, 1, planted.LAYER, model=net, source=open_source(dataset))
    direct = correct.from_inputs(net, images[marked & (labels == 1)], images[~marked & (labels == 1)], planted.LAYER)
    torch.testing.assert_close(cav.direction, direct.direction)
    assert cav.counts == direct.counts
    by_ids = correct.from_ids(net, open_source(dataset), np.flatnonzero(marked & (labels == 1)).tolist(),
                              np.flatnonzero(~marked & (labels == 1)).tolist(), planted.LAYER)
    torch.testing.assert_close(by_ids.direction, direct.direction)


def test_a_cluster_id_that_does_not_exist_is_refused_with_the_ids_there_are(tmp_path):
    path, *_ = _store_with_clusters(tmp_path)
    with pytest.raises(ValueError, match="no cluster 5; its clusters are 0, 1"):
        correct.cluster_samples(path, 1, 5)
    with pytest.raises(ValueError, match="no clustering 'kmeans-3'; it has kmeans-2"):
        correct.cluster_samples(path, 1, 1, "kmeans-3")


def test_a_store_without_spray_results_is_refused_with_the_command_to_run(tmp_path):
    path, *_ = _store_with_clusters(tmp_path, with_spray=False)
    with pytest.raises(ValueError, match="no SpRAy results for class 1.*relprop spray"):
        correct.cluster_samples(path, 1, 0)


def test_a_crp_concept_gives_a_cav_along_its_channels_with_levels_from_the_samples():
    net = planted.trained()
    images, labels, marked = planted.generate(200, 3)
    artifact, clean = images[marked & (labels == 1)], images[~marked & (labels == 1)]
    cav = correct.from_concept(net, planted.LAYER, [1, 4], artifact, clean)
    expected = torch.zeros(6)
    expected[[1, 4]] = 2 ** -0.5
    torch.testing.assert_close(cav.direction, expected)
    activation = cavs.activations(net, clean, planted.LAYER)
    torch.testing.assert_close(cav.clean_mean, activation.mean((0, 2, 3)))
    assert (cav.pooling, cav.kind, cav.shape) == ("mean", "concept", (6, 8, 8))
    projected = correct.project(cavs.activations(net, artifact, planted.LAYER), cav)
    torch.testing.assert_close(cav.coordinate(projected), cav.clean_level.expand(len(artifact)), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="channels \\[9\\] do not fit layer 'body.1', which has 6 channels"):
        correct.from_concept(net, planted.LAYER, 9, artifact, clean)
