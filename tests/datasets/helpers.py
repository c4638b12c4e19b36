"""Helpers for the data-set tests (and benchmarks/bench_dataset.py): reading whole stores and comparing them bit for
bit, killing runs midway, Ray nodes as separate processes."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import zarr

import relprop.datasets as datasets


def read_store(path) -> dict:
    """Every array of a store as numpy, by its path in the group (extra/mask, ...)."""
    group = zarr.open_group(str(path), mode="r")
    found = {}
    for name, array in group.arrays():
        found[name] = array[:]
    for name, subgroup in group.groups():
        if name != "analysis":
            for inner, array in subgroup.arrays():
                found[f"{name}/{inner}"] = array[:]
    return found


def assert_same_store(a, b):
    """Bit for bit: the same arrays with the same bytes, the same run attributes and skipped samples."""
    first, second = read_store(a), read_store(b)
    assert sorted(first) == sorted(second)
    for name in first:
        x, y = first[name], second[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind in "fiub":
            assert x.tobytes() == y.tobytes(), f"{name} differs"
        else:
            assert x.tolist() == y.tolist(), f"{name} differs"
    attributes = [{k: v for k, v in datasets.open_store(p).attrs.items() if k != "created"} for p in (a, b)]
    assert attributes[0] == attributes[1]


def kill_once(process, progress, at_least: int, timeout: float = 180.0, kill: bool = True) -> int:
    """SIGKILL a running process once progress() (samples done so far) reaches at_least; returns that count.

    kill=False only waits for it. timeout is a bound for a hung test, not part of the handshake: callers make the
    process wait at a gate it cannot pass, so it is still running when at_least is reached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        done = progress()
        if done >= at_least:
            if kill:
                process.send_signal(signal.SIGKILL)
                process.wait()
            return done
        time.sleep(0.02)
    raise AssertionError(f"the process ended before {at_least} samples were done: {process.communicate()}")


def damage_chunks(path) -> list[tuple[str, int]]:
    """Damage a finished demo store (chunks of 8 samples) three ways; returns (array, first sample) of each damage.

    Two bytes of a relevance chunk flipped, an output chunk cut to half its length, a label chunk file deleted
    (Zarr alone would read the last as fill values)."""
    flipped = Path(path) / "relevance" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = Path(path) / "output" / "c" / "2" / "0"
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    (Path(path) / "label" / "c" / "0").unlink()
    return [("label", 0), ("relevance", 8), ("output", 16)]


RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Node:
    """One `ray start --block` in a session of its own, so that it and every process it starts can be stopped."""

    def __init__(self, arguments, env, log, cpus: int = 1):
        self.process = subprocess.Popen([RAY, "start", "--block", "--num-cpus", str(cpus), "--node-ip-address",
                                         "127.0.0.1", "--object-store-memory", str(80 * 2 ** 20), *arguments],
                                        env=env, start_new_session=True, stdout=open(log, "w"),
                                        stderr=subprocess.STDOUT)

    def processes(self) -> list:
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def raylet(self):
        return next((p for p in self.processes() if p.name() == "raylet"), None)

    def stop(self):
        started = self.processes()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself
            pass
        for process in started:  # workers the raylet started, if any left the session
            try:
                process.kill()
            except Exception:  # gone already
                pass
        self.process.wait()


def wait_for_cpus(address: str, cpus: int, nodes: list, env: dict, timeout: float = 180.0) -> None:
    """Until the cluster at address has cpus CPUs (every node registered); AssertionError if a node ends first."""
    deadline = time.monotonic() + timeout  # bounded: nodes register within a minute even on a loaded machine
    while time.monotonic() < deadline:
        ended = [node.process.args for node in nodes if node.process.poll() is not None]
        assert not ended, f"a Ray node ended: {ended}"
        status = subprocess.run([RAY, "status", "--address", address], capture_output=True, text=True, env=env)
        if f"/{cpus}.0 CPU" in status.stdout:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster did not reach {cpus} CPUs: {status.stdout} {status.stderr}")
