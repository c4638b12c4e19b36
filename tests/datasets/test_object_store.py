"""`relprop run --store s3://...` against a local S3-compatible server (moto's server mode on 127.0.0.1)."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from tests.datasets.helpers import assert_same_store  # noqa: E402


def start_s3(folder):
    """A moto server on a free loopback port with an empty bucket: (the environment that reaches it, its process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(folder / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    log.close()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        for _ in range(600):  # bounded: the server answers within seconds even on a loaded machine
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the moto server did not start")
        import s3fs

        s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="test", secret="test",
                          skip_instance_cache=True).mkdir("bucket")
    except BaseException:
        server.kill()
        server.wait()
        raise
    return env, server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An empty bucket on a moto server this module starts on a free loopback port (and stops)."""
    env, server = start_s3(tmp_path_factory.mktemp("moto"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            yield env
    finally:
        server.kill()
        server.wait()


def relprop(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "relprop", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow  # about 45 s on the loaded 2-core machine: S3 round trips per chunk file
def test_a_store_on_s3_equals_a_local_run_verifies_and_refuses_other_arguments(s3, tmp_path):
    import relprop.datasets as datasets

    arguments = ["demo:16", "--model", "demo", "--batch-size", "4", "--chunk", "8"]
    local = tmp_path / "local.zarr"
    datasets.run("demo", "demo:16", local, batch_size=4, chunk=8, progress=False)
    made = relprop("run", *arguments, "--store", "s3://bucket/run.zarr")
    assert made.returncode == 0, made.stderr
    assert_same_store(local, "s3://bucket/run.zarr")
    verified = relprop("verify", "s3://bucket/run.zarr")
    assert verified.returncode == 0 and "all 2 done chunks match their checksums" in verified.stdout
    other = relprop("run", *arguments, "--store", "s3://bucket/run.zarr", "--composite", "epsilon")
    assert other.returncode == 2 and "composite (--composite)" in other.stderr


def test_one_writer_holds_the_lease_a_second_is_refused_and_an_expired_one_is_taken_over(s3, monkeypatch, capsys):
    import s3fs

    from relprop.datasets import lease, store as store_module

    files = s3fs.S3FileSystem()
    with store_module.writing("s3://bucket/leased.zarr"):
        assert files.exists("bucket/.leased.zarr.lease")
        with pytest.raises(store_module.StoreError, match=rf"being written by relprop \(pid {os.getpid()} .*renewed"):
            with store_module.writing("s3://bucket/leased.zarr"):
                pass
        monkeypatch.setattr(lease, "LEASE_SECONDS", 0.0)  # every lease now counts as expired
        with store_module.writing("s3://bucket/leased.zarr"):
            assert "took over the lease of s3://bucket/leased.zarr" in capsys.readouterr().err
    files.invalidate_cache()
    assert not files.exists("bucket/.leased.zarr.lease")  # released on exit, by the run that held it last


@pytest.mark.slow  # subprocess runs against S3: about a minute on the loaded 2-core machine
def test_a_run_on_s3_killed_midway_is_refused_while_its_lease_lives_then_resumes_bit_identical(s3, dataset_file,
                                                                                                tmp_path, monkeypatch):
    import relprop.datasets as datasets
    from relprop.datasets import store as stores
    from relprop.datasets import lease

    from tests.datasets.helpers import kill_once

    data, url = f"{dataset_file}:quick", "s3://bucket/killed.zarr"
    arguments = [data, "--model", "demo", "--batch-size", "4", "--chunk", "8", "--store", url]
    local = tmp_path / "local.zarr"
    datasets.run("demo", data, local, batch_size=4, chunk=8, progress=False)

    def done():
        try:
            return int(datasets.open_store(url).done.sum())
        except Exception:  # not created yet
            return 0

    env = dict(os.environ, OMP_NUM_THREADS="1", SHAPES_DELAY="0", SHAPES_STOP_AT="16")  # holds at sample 16
    killed = subprocess.Popen([sys.executable, "-m", "relprop", "run", *arguments], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert kill_once(killed, done, 16) == 16
    refused = relprop("run", *arguments)
    assert refused.returncode == 2 and f"being written by relprop (pid {killed.pid}" in refused.stderr
    monkeypatch.setattr(lease, "LEASE_SECONDS", 0.0)  # as if its 60 s had passed
    summary = datasets.run("demo", data, url, batch_size=4, chunk=8, progress=False)
    assert summary.already_done == 16 and summary.explained == 8  # the last chunk (5, unreadable, was done)
    assert_same_store(local, url)
    root = stores.open_store(url).group  # what SpRAy reads, chunk by chunk and checked
    ready = stores.ready(root)
    assert ready.sum() == 23
    read = np.concatenate([block for _, block in stores.read_chunks(root["relevance"], np.flatnonzero(ready), 8)])
    assert read.tobytes() == datasets.open_store(local)["relevance"][:][ready].tobytes()
