"""--engine ray: the same store bit for bit as --engine local (Ray started locally with 2 CPUs), and bad addresses."""
import os
import re
import socket
import subprocess
import sys

import pytest

import relprop.datasets as datasets
from relprop.datasets.ray_engine import CONNECT_TIMEOUT_S, check_reachable
from relprop.datasets.work import RunError
from relprop.demo import load

from tests.datasets.helpers import assert_same_store

pytest.importorskip("ray")


def test_ray_run_with_two_actors_writes_the_same_store_as_the_local_engine(dataset_file, tmp_path):
    arguments = [f"{dataset_file}:quick", "--model", "demo", "--batch-size", "2", "--chunk", "4", "--keep", "channels"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ray_run = subprocess.run([sys.executable, "-m", "relprop", "run", *map(str, arguments), "--store",
                              tmp_path / "ray.zarr", "--engine", "ray", "--workers", "2"], capture_output=True,
                             text=True, env=env, timeout=600)  # a bound for a hang: Ray starts slowly on a busy machine
    assert ray_run.returncode == 1, ray_run.stderr[-3000:]  # sample 5 is unreadable on purpose
    assert "relprop: skipped 5 (sample 5): sample 5 is broken on purpose" in ray_run.stderr
    # a run that worked prints no error: no Ray error line (`[date time,ms E pid tid] file.cc:line: ...`), no warning
    errors = [line for line in ray_run.stderr.splitlines() if re.match(r"\[[^]]* E \d+ \d+\]", line)
              or "Warning" in line or "core_worker" in line]
    assert not errors, errors
    assert "explained 23 of 24 samples" in ray_run.stdout
    datasets.run("demo", f"{dataset_file}:quick", tmp_path / "local.zarr", batch_size=2, chunk=4, keep="channels",
                 progress=False)
    assert_same_store(tmp_path / "local.zarr", tmp_path / "ray.zarr")


def test_ray_address_that_does_not_answer_fails_by_a_short_connect_before_ray_is_asked(tmp_path, monkeypatch):
    import ray

    tries = []
    connect = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: tries.append(k.get("timeout")) or connect(*a, **k))
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray's own minute of retries was started"))
    with pytest.raises(RunError, match="no Ray cluster answers at 127.0.0.1:9 .*ray start --head"):
        datasets.run(load(), "demo:2", tmp_path / "run.zarr", engine="ray", address="127.0.0.1:9", progress=False)
    assert tries == [CONNECT_TIMEOUT_S]
    assert not (tmp_path / "run.zarr").exists()  # checked before any work


def test_a_ray_cluster_that_is_not_there_leaves_nothing_on_disk(tmp_path, monkeypatch):
    import ray

    def no_cluster(*args, **kwargs):  # what ray.init(address="auto") raises when no cluster runs here
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(RunError, match="cannot join the Ray cluster at auto: Could not find any running Ray"):
        datasets.run(load(), "demo:2", tmp_path / "run.zarr", engine="ray", address="auto", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no store, no staging folder, no lock


@pytest.mark.parametrize("address", ["nonsense", "host:port", "ray://:10001"])
def test_ray_address_without_host_and_port_is_refused(address):
    with pytest.raises(RunError, match="is not HOST:PORT"):
        check_reachable(address)


def test_a_lost_actor_or_node_is_told_from_work_that_failed_through_the_causes_ray_data_wraps_it_in():
    import ray.exceptions as errors

    from relprop.datasets.ray_engine import _lost_actor

    assert _lost_actor(errors.ActorDiedError())
    assert _lost_actor(errors.NodeDiedError("node 1 died"))
    try:  # Ray Data raises its own error from the one the actor's task ended with
        try:
            raise errors.ActorUnavailableError("The actor is temporarily unavailable: Socket closed", b"\0" * 16)
        except errors.RayError as lost:
            raise errors.RayError("the operator failed") from lost
    except errors.RayError as wrapped:
        assert _lost_actor(wrapped)
    assert not _lost_actor(errors.RayTaskError("__call__", "Traceback ...", RunError("label 9, 4 classes")))
    assert not _lost_actor(errors.GetTimeoutError("Timed out while starting actors"))


def test_a_token_the_cluster_refuses_is_told_from_other_failures_to_join():
    from relprop.datasets.ray_engine import _refused_token

    try:  # what Ray 2.60's ray.init(address=...) raises when the GCS refuses the token
        try:
            raise RuntimeError("Failed to connect to GCS: RpcError: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause
    except ConnectionError as error:
        assert _refused_token(error)
    assert not _refused_token(ConnectionError("Could not find any running Ray instance"))


GIVES_UP = """
import os, sys
from relprop.datasets import ray_engine
from relprop.datasets.work import RunError

ray_engine.PASSES_AFTER_LOSS = 1


class Dies:  # every actor's process ends as a killed node's would, before any result
    def __init__(self, job):
        pass

    def __call__(self, batch):
        os._exit(1)


rows = []
try:
    ray_engine.map_on_actors(Dies, None, [{"start": 0}, {"start": 4}], 1, None, rows.append,
                             "chunks finished so far are kept", gpus=False)
except RunError as error:
    print("gave up:", error)
    sys.exit(3 if rows else 0)
sys.exit(4)
"""


def test_a_run_whose_actors_keep_dying_gives_up_after_its_passes_saying_what_is_kept(tmp_path):
    done = subprocess.run([sys.executable, "-c", GIVES_UP], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.count("relprop: a Ray actor was lost") == 1  # one new pool (PASSES_AFTER_LOSS = 1), no more
    assert "mapping the 2 of 2 chunks without a result on a new pool of the nodes left (pass 2 of at most 2)" \
        in done.stderr
    assert "gave up: the Ray run failed:" in done.stdout and "chunks finished so far are kept" in done.stdout
