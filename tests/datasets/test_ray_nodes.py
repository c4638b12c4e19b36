"""--engine ray on a three-process cluster on this machine (a head without CPUs, worker nodes a and b with one CPU
each): a worker node SIGKILLed mid-run, the driver SIGKILLed mid-write, a store on S3, evaluation and relevance
maximisation. One cluster serves the module; a test that kills node b gets a fresh b for the next one."""
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import relprop.datasets as datasets
from relprop.datasets import store as store_module

from tests.datasets.helpers import RAY, Node, assert_same_store, free_port, kill_once, wait_for_cpus

pytest.importorskip("ray")
pytest.importorskip("psutil")

# The data set the nodes read, steered by files in RELPROP_TEST_CONTROL so that one cluster serves every test. Only
# processes of a worker node (RELPROP_TEST_NODE=a or b, inherited by its actors) obey them:
#   hold-N        node N's readers hold at their first sample (and create held-N), until the node is killed;
#   wait-N        node N's readers, after 8 samples, wait until the file named inside exists;
#   hold-write    the first write of the chunk file whose key the file holds (e.g. output/c/3/0) holds forever
#                 (and creates held-write), once across all processes: the store is left mid-write.
DATASET = '''
import os, threading, time
from pathlib import Path

import torch
import zarr.storage._local as local_store

from relprop.demo import generate, normalize

CONTROL = Path(os.environ["RELPROP_TEST_CONTROL"]) if os.environ.get("RELPROP_TEST_CONTROL") else None
NODE = os.environ.get("RELPROP_TEST_NODE")
READS = [0]


def told(name):
    return CONTROL is not None and NODE is not None and (CONTROL / name).exists()


class Shapes(torch.utils.data.Dataset):
    classes = ["circle", "square", "triangle", "cross"]

    def __init__(self, count):
        images, labels, _ = generate(count, seed=5)
        self.images, self.labels = normalize(torch.from_numpy(images)), labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if told(f"hold-{NODE}"):
            (CONTROL / f"held-{NODE}").touch()
            threading.Event().wait()
        READS[0] += 1
        if told(f"wait-{NODE}") and READS[0] > 8:
            while not (CONTROL / (CONTROL / f"wait-{NODE}").read_text()).exists():
                time.sleep(0.05)
        if index == 5:
            raise ValueError("sample 5 is broken on purpose")
        return self.images[index], int(self.labels[index]), f"shape-{index:03d}"


def shapes():
    return Shapes(48)


unheld_put = local_store._put


def put(path, value, exclusive=False):
    if told("hold-write") and Path(path).as_posix().endswith((CONTROL / "hold-write").read_text()):
        try:
            os.close(os.open(CONTROL / "held-write", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # held once already
            pass
        else:
            threading.Event().wait()
    return unheld_put(path, value, exclusive)


local_store._put = put
'''
RUN = ["--model", "demo", "--batch-size", "4", "--chunk", "4"]


class Cluster:
    """The head and worker nodes a and b, their shared environment and the folder of control files."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.control, self.env = folder, folder / "control", env
        self.control.mkdir()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="relprop-ray-", dir="/tmp")  # Ray's socket paths stay under 108 chars
        self.nodes = {}
        self.drivers = []  # relprop processes of the running test, killed after it if still running

    def start(self):
        self.nodes["head"] = Node(["--head", "--port", str(self.port), "--temp-dir", self.temp,
                                   "--include-dashboard=false"], self.env, self.folder / "head.log", cpus=0)
        for cpus, name in enumerate(("a", "b"), 1):  # one after the other: Ray gives a node 30 s to register
            self.start_worker(name)
            wait_for_cpus(self.address, cpus, list(self.nodes.values()), self.env)

    def start_worker(self, name: str):
        self.nodes[name] = Node(["--address", self.address], dict(self.env, RELPROP_TEST_NODE=name),
                                self.folder / f"{name}-{time.monotonic_ns()}.log", cpus=1)

    def ready(self):
        """Both worker nodes up (a killed one started again) and no control files left."""
        for entry in self.control.iterdir():
            entry.unlink()
        ended = [name for name in ("a", "b") if self.nodes[name].process.poll() is not None]
        for name in ended:
            self.start_worker(name)
        if ended:
            wait_for_cpus(self.address, 2, list(self.nodes.values()), self.env)

    def stop(self):
        for node in reversed(list(self.nodes.values())):
            node.stop()
        shutil.rmtree(self.temp, ignore_errors=True)

    def relprop(self, *args, **popen):
        """relprop as a driver process on this machine, joined to the cluster where its arguments say so."""
        driver = subprocess.Popen([sys.executable, "-m", "relprop", *map(str, args)], env=self.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
        self.drivers.append(driver)
        return driver

    def end_drivers(self):
        for driver in self.drivers:
            if driver.poll() is None:  # a test that failed before its driver ended
                driver.kill()
            driver.communicate()
        self.drivers.clear()


def s3_server(folder: Path):
    """A moto S3 server with a bucket, when moto and s3fs are installed: (its environment, process) or (None, None)."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        return None, None
    from tests.datasets.test_object_store import start_s3

    return start_s3(folder)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "shapes_nodes.py").write_text(DATASET)
    s3_env, server = s3_server(folder)
    # Token authentication with a token of the test's own: Ray 2.60's `ray start --head` turns it on by itself when
    # ~/.ray/auth_token exists (a local ray.init() writes one), while `ray start --address` and a driver given an
    # address do not, so the nodes and drivers say it explicitly, and none depends on what ~/.ray holds.
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(16), RELPROP_TEST_CONTROL=str(folder / "control"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(datasets.__file__).parents[2]),
                                                        str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])),
               **(s3_env or {}))
    env.pop("RELPROP_TEST_NODE", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    made = Cluster(folder, env)
    made.s3 = s3_env
    try:
        made.start()
        yield made
    finally:
        made.end_drivers()
        made.stop()
        if server is not None:
            server.kill()
            server.wait()


@pytest.fixture
def nodes(cluster):
    cluster.ready()
    try:
        yield cluster
    finally:
        cluster.end_drivers()


@pytest.fixture(scope="module")
def local_store(cluster):
    """The uninterrupted local run every test compares with."""
    path = cluster.folder / "local.zarr"
    datasets.run("demo", f"{cluster.folder / 'shapes_nodes.py'}:shapes", path, batch_size=4, chunk=4, progress=False)
    return path


def done_samples(store) -> int:
    try:
        return int(datasets.open_store(store).done.sum())
    except Exception:  # not created yet
        return 0


def finish(process, timeout=300):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(process.communicate()[1][-3000:]) from None
    return process.returncode, stderr


@pytest.mark.slow  # the run waits for Ray to notice the dead node and maps the lost chunks again: about a minute
def test_a_worker_node_killed_mid_run_loses_its_chunks_to_the_node_left_and_the_store_is_bit_identical(
        nodes, local_store, tmp_path):
    store = tmp_path / "run.zarr"
    (nodes.control / "hold-b").touch()  # node b's actor holds its first chunk
    (nodes.control / "wait-a").write_text("held-b")  # node a does two chunks, then waits until b holds one
    run = nodes.relprop("run", f"{nodes.folder / 'shapes_nodes.py'}:shapes", *RUN, "--store", store, "--engine",
                        "ray", "--address", nodes.address)
    kill_once(run, lambda: done_samples(store) if (nodes.control / "held-b").exists() else 0, 8, timeout=300,
              kill=False)
    nodes.nodes["b"].stop()  # SIGKILL to the node's raylet, its actors and every other process it started
    code, stderr = finish(run)
    assert code == 1 and "sample 5 is broken on purpose" in stderr, stderr[-3000:]  # 1: a sample was skipped
    assert "a Ray actor was lost" in stderr and "on a new pool of the nodes left" in stderr
    assert store_module.verify(datasets.open_store(store).group) == []
    assert_same_store(local_store, store)


@pytest.mark.slow  # a run on the cluster, its driver killed, and the resume: about a minute here
def test_the_driver_killed_mid_write_leaves_that_chunk_undone_and_the_same_command_resumes_bit_identical(
        nodes, local_store, tmp_path):
    store = tmp_path / "run.zarr"
    arguments = ["run", f"{nodes.folder / 'shapes_nodes.py'}:shapes", *RUN, "--store", store, "--engine", "ray",
                 "--address", nodes.address]
    (nodes.control / "hold-write").write_text("output/c/3/0")  # chunk 3: relevance written, output held
    driver = nodes.relprop(*arguments)
    # killed once chunk 3's write is held and another chunk is done (the other node's actor goes on while chunk 3
    # holds; killed at the hold alone, a driver that had recorded no chunk yet left nothing to resume from, and the
    # rerun ran as a new run: it failed so once in three CI runs)
    kill_once(driver, lambda: int((nodes.control / "held-write").exists() and done_samples(store) > 0), 1,
              timeout=300)
    assert list((store / "relevance" / "c" / "3").rglob("*")), "chunk 3's relevance was written"
    found = datasets.open_store(store)
    assert not found.done[12:16].any()
    assert store_module.verify(found.group) == []
    code, stderr = finish(nodes.relprop(*arguments))
    assert code == 1 and "resuming" in stderr, stderr[-3000:]  # exit 1: sample 5 is listed as skipped
    assert store_module.verify(datasets.open_store(store).group) == []
    assert_same_store(local_store, store)


@pytest.mark.slow  # S3 round trips from two nodes: about 40 s here
def test_a_store_on_s3_written_by_the_cluster_equals_the_local_run(nodes, local_store, monkeypatch):
    if nodes.s3 is None:
        pytest.skip("moto[server] and s3fs are needed for an S3 store")
    url = "s3://bucket/cluster.zarr"
    code, stderr = finish(nodes.relprop("run", f"{nodes.folder / 'shapes_nodes.py'}:shapes", *RUN, "--store", url,
                                        "--engine", "ray", "--address", nodes.address))
    assert code == 1 and "sample 5 is broken on purpose" in stderr, stderr[-3000:]
    for name, value in nodes.s3.items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    assert store_module.verify(datasets.open_store(url).group) == []
    assert_same_store(local_store, url)


@pytest.mark.slow  # evaluation on the cluster and locally: about 40 s here
def test_evaluation_on_the_cluster_gives_the_local_scores(nodes, tmp_path):
    arguments = ["evaluate", "demo", "--model", "demo", "--count", "6", "--batch-size", "2", "--methods",
                 "epsilon,gradient", "--metrics", "relevance_mass_accuracy,aopc", "--patch-size", "8"]
    code, stderr = finish(nodes.relprop(*arguments, "--out", tmp_path / "ray", "--engine", "ray", "--address",
                                        nodes.address))
    assert code == 0, stderr[-3000:]
    local = subprocess.run([sys.executable, "-m", "relprop", *map(str, arguments), "--out", tmp_path / "local"],
                           env=nodes.env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    assert (tmp_path / "ray" / "scores.csv").read_text() == (tmp_path / "local" / "scores.csv").read_text()


@pytest.mark.slow  # relevance maximisation on the cluster with node b killed midway: about a minute here
def test_relevance_maximisation_with_a_worker_node_killed_mid_pass_writes_the_local_arrays(
        nodes, local_store, tmp_path):
    from relprop.concepts import maximise

    layer = "features.6"
    local, on_cluster = tmp_path / "local.zarr", tmp_path / "cluster.zarr"
    shutil.copytree(local_store, local)
    shutil.copytree(local_store, on_cluster)
    maximise(local, [layer], k=3)
    (nodes.control / "hold-b").touch()
    (nodes.control / "wait-a").write_text("held-b")
    run = nodes.relprop("concepts", "--store", on_cluster, "--layer", layer, "--top", "3", "--no-heatmaps",
                        "--engine", "ray", "--address", nodes.address, "--out", tmp_path / "atlas")

    def done():
        try:
            return int(np.asarray(datasets.open_store(on_cluster)[f"concepts/{layer}/done"][:]).sum())
        except Exception:  # not created yet
            return 0

    kill_once(run, lambda: done() if (nodes.control / "held-b").exists() else 0, 8, timeout=300, kill=False)
    nodes.nodes["b"].stop()
    code, stderr = finish(run)
    assert code == 0 and "a Ray actor was lost" in stderr, stderr[-3000:]
    for name in ("relevance", "activation", "done"):
        found = np.asarray(datasets.open_store(on_cluster)[f"concepts/{layer}/{name}"][:])
        assert found.tobytes() == np.asarray(datasets.open_store(local)[f"concepts/{layer}/{name}"][:]).tobytes()


@pytest.mark.slow  # two drivers refused by the cluster: about 20 s here
def test_a_driver_with_no_token_or_a_wrong_one_is_refused_saying_what_to_set_and_writes_nothing(nodes, tmp_path):
    env = {name: value for name, value in nodes.env.items() if name not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    for extra, said in (({}, "none"), ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}, "a wrong one")):
        refused = subprocess.run([sys.executable, "-m", "relprop", "run", "demo:8", "--model", "demo", "--store",
                                  str(tmp_path / "refused.zarr"), "--engine", "ray", "--address", nodes.address],
                                 env=dict(env, **extra), capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert f"asks for a token (Ray's token authentication) and this process gave {said}" in refused.stderr
        assert "set RAY_AUTH_MODE=token" in refused.stderr
        assert not (tmp_path / "refused.zarr").exists()


@pytest.mark.slow  # a maximisation pass on the cluster, its driver killed, and the resume: about a minute here
def test_relevance_maximisation_with_its_driver_killed_mid_write_resumes_to_the_local_arrays(
        nodes, local_store, tmp_path):
    from relprop.concepts import maximise

    layer = "features.6"
    local, on_cluster = tmp_path / "local.zarr", tmp_path / "cluster.zarr"
    shutil.copytree(local_store, local)
    shutil.copytree(local_store, on_cluster)
    maximise(local, [layer], k=3)
    arguments = ["concepts", "--store", on_cluster, "--layer", layer, "--top", "3", "--no-heatmaps", "--engine",
                 "ray", "--address", nodes.address, "--out", tmp_path / "atlas"]
    (nodes.control / "hold-write").write_text(f"concepts/{layer}/activation/c/3/0")  # relevance written, held
    kill_once(nodes.relprop(*arguments), lambda: int((nodes.control / "held-write").exists()), 1, timeout=300)
    group = datasets.open_store(on_cluster)
    assert list((on_cluster / "concepts" / layer / "relevance" / "c" / "3").rglob("*"))
    assert not np.asarray(group[f"concepts/{layer}/done"][12:16]).any()
    code, stderr = finish(nodes.relprop(*arguments))
    assert code == 0, stderr[-3000:]
    for name in ("relevance", "activation", "done"):
        found = np.asarray(datasets.open_store(on_cluster)[f"concepts/{layer}/{name}"][:])
        assert found.tobytes() == np.asarray(datasets.open_store(local)[f"concepts/{layer}/{name}"][:]).tobytes()


# evaluate.benchmark on a store's batches (the actors read each batch's inputs from the store's data set, so node b's
# readers hold as in a run), on the cluster or locally; the per-sample scores go to a JSON file
EVALUATE_STORE = '''
import json, sys
from relprop import evaluate
from relprop.demo import load

store, out, address = sys.argv[1:4]
ray = {} if address == "local" else {"engine": "ray", "address": address}
result = evaluate.benchmark(load(), evaluate.StoreBatches(store), ["gradient"], ["sparseness", "aopc"],
                            batch_size=4, options={"aopc": {"patch_size": 8}}, **ray)
json.dump({f"{method}/{metric}": values.tolist() for (method, metric), values in result.scores.items()},
          open(out, "w"))
'''


@pytest.mark.slow  # evaluation on the cluster with node b killed midway, and locally: about a minute here
def test_evaluation_with_a_worker_node_killed_mid_pass_gives_the_local_scores(nodes, local_store, tmp_path):
    import json

    script = tmp_path / "evaluate_store.py"
    script.write_text(EVALUATE_STORE)
    local = subprocess.run([sys.executable, script, local_store, tmp_path / "local.json", "local"], env=nodes.env,
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    (nodes.control / "hold-b").touch()  # node b's actor holds at its first sample
    (nodes.control / "wait-a").write_text("held-b")  # node a reads 8 samples, then waits until b holds
    driver = subprocess.Popen([sys.executable, script, local_store, tmp_path / "ray.json", nodes.address],
                              env=nodes.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    nodes.drivers.append(driver)
    kill_once(driver, lambda: int((nodes.control / "held-b").exists()), 1, timeout=300, kill=False)
    nodes.nodes["b"].stop()  # SIGKILL to the node's raylet, its actors and every other process it started
    code, stderr = finish(driver)
    assert code == 0 and "a Ray actor was lost" in stderr, stderr[-3000:]
    expected, found = (json.loads((tmp_path / name).read_text()) for name in ("local.json", "ray.json"))
    assert sorted(found) == sorted(expected) == ["gradient/aopc", "gradient/sparseness"]
    for key, values in expected.items():
        assert len(values) == 47  # every done sample of the store (sample 5 failed in the run)
        np.testing.assert_allclose(found[key], values, rtol=1e-9, atol=1e-12)
