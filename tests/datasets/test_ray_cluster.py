"""--engine ray on a cluster of separate processes on this machine: a head and a worker node, the worker killed."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import relprop.datasets as datasets
from relprop.datasets import store as store_module

from tests.datasets.helpers import RAY, Node, assert_same_store, free_port, kill_once, wait_for_cpus

pytest.importorskip("ray")
pytest.importorskip("psutil")


@pytest.fixture
def cluster(tmp_path, dataset_file):
    """A head and a worker node (1 CPU each) on loopback. The worker node's actor holds at the data set's gate on
    the first sample it reads (and says so in tmp_path/held); the head's reads 0.3 s a sample, so that the worker's
    actor is up before the head's has taken every chunk."""
    port = free_port()
    # token authentication said explicitly: with it left unset, the worker node did not present the head's token
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", SHAPES_DELAY="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(datasets.__file__).parents[2]),
                                                        str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])))
    env.pop("SHAPES_STOP_AT", None)
    temp = tempfile.mkdtemp(prefix="relprop-ray-", dir="/tmp")  # Ray's socket paths must stay under 108 characters
    nodes = [Node(["--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard=false"],
                  dict(env, SHAPES_DELAY="0.3"), tmp_path / "head.log")]
    try:
        nodes.append(Node(["--address", f"127.0.0.1:{port}"],
                          dict(env, SHAPES_STOP_AT="0", SHAPES_HELD=str(tmp_path / "held")), tmp_path / "worker.log"))
        wait_for_cpus(f"127.0.0.1:{port}", 2, nodes, env)
        yield f"127.0.0.1:{port}", nodes, env
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # two Ray nodes start, a node and a driver are killed, the store is resumed: about 80 s here
def test_a_worker_node_then_a_driver_killed_mid_run_lose_only_unfinished_chunks_and_the_store_ends_bit_identical(
        cluster, dataset_file, tmp_path):
    address, (_, worker), env = cluster
    data, store = f"{dataset_file}:quick", tmp_path / "run.zarr"
    arguments = [data, "--model", "demo", "--batch-size", "4", "--chunk", "4", "--store", store]
    run = subprocess.Popen([sys.executable, "-m", "relprop", "run", *map(str, arguments), "--engine", "ray",
                            "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    kill_once(run, lambda: int((tmp_path / "held").exists()), 1, timeout=300, kill=False)  # the worker holds a chunk
    worker.raylet().send_signal(signal.SIGKILL)
    try:
        _, stderr = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # e.g. Ray waiting for a replacement actor the cluster has no room for
        status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=env)
        run.kill()
        raise AssertionError(status.stdout[-2000:] + run.communicate()[1][-3000:]) from None
    # Ray either finishes the lost chunk on the head node or stops the run saying how to resume
    assert run.returncode == 0 or (run.returncode == 2 and "the Ray run failed" in stderr
                                   and "the same command resumes" in stderr), stderr[-3000:]
    found = datasets.open_store(store)
    assert store_module.verify(found.group) == []  # nothing marked done without its data
    # the same command on what is left (the head node), its driver SIGKILLed once it says it resumes
    driver = subprocess.Popen([sys.executable, "-m", "relprop", "run", *map(str, arguments), "--engine", "ray",
                               "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    said = []
    for line in driver.stderr:  # ends at the driver's exit if it never says so
        said.append(line)
        if "resuming" in line:
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert any("resuming" in line for line in said), said
    found = datasets.open_store(store)
    assert store_module.verify(found.group) == []
    finished = int(found.done.sum())
    local = tmp_path / "local.zarr"
    datasets.run("demo", data, local, batch_size=4, chunk=4, progress=False)
    resumed = datasets.run("demo", data, store, batch_size=4, chunk=4, progress=False)
    assert resumed.already_done == finished < 24  # the chunk the killed node held was not marked done
    assert_same_store(local, store)
