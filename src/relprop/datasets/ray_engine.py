"""The Ray engine: the chunks to explain become a Ray Data set mapped by a pool of actors.

Each actor loads the model once (one actor per GPU when the cluster has GPUs, else one per CPU slot), explains
whole chunks with the same code as the local engine and writes them straight into the store, which must therefore
be on storage every node sees (a network file system, or an object store through Zarr's fsspec support). The
driver only collects each chunk's failures into the store's ``skipped`` list and shows progress. Ray is imported
here and nowhere else; ``map_on_actors`` (the pool itself) also spreads ``relprop evaluate``'s batches
(evaluate/sharded.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import warnings
from dataclasses import dataclass

from .store import Shapes
from .work import ChunkWorker, RunError, Settings

CONNECT_TIMEOUT_S = 5
OBJECT_STORE_BYTES = 128 * 2 ** 20  # a local run passes only chunk numbers and failures through the object store
# Ray Data keeps each actor's constructor arguments in the object store, from which Ray cannot reliably rebuild a
# restarted actor (ray-project/ray#53727; with restarts on, Ray logs an error line on every run). A lost actor fails
# the run instead, and the same command resumes the chunks it had not finished.
NO_RESTARTS = {"max_restarts": 0, "max_task_retries": 0}


@dataclass
class Job:
    model: object  # an nn.Module, or a ModelSpec each actor loads itself
    source: object
    settings: Settings
    store: str
    shapes: Shapes


class ChunkActor:
    """Ray Data's callable class: built once per actor, called with batches of chunk starts."""

    def __init__(self, job: Job):
        import ray
        import torch

        model = job.model.load() if hasattr(job.model, "load") else job.model
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        model.to(device)
        self.worker = ChunkWorker(model, job.source, job.settings, job.store, job.shapes, device)

    def __call__(self, batch: dict) -> dict:
        counts, failures = [], []
        for start in batch["start"]:
            chunk = self.worker.explain(int(start), self.worker.read(int(start)))
            self.worker.write(chunk)
            counts.append(len(chunk.arrays["id"]))
            failures.append(json.dumps(chunk.failures))
        return {"start": batch["start"], "count": counts, "failures": failures}


def explain_chunks(model, source, settings: Settings, store, shapes: Shapes, starts: list[int], workers, address,
                   driver: ChunkWorker, on_done, on_batch) -> None:
    """Explain the chunks starting at starts with a pool of actors; progress comes chunk by chunk."""
    if not starts:
        return
    from .runner import record_failures

    def finished(row):
        start, count = int(row["start"]), int(row["count"])
        failures = json.loads(row["failures"])
        record_failures(driver.group, failures, start, start + count)
        on_batch(count)
        on_done(count, failures)

    job = Job(model, source, settings, str(store), shapes)  # small: a model travels as its spec when it has one
    map_on_actors(ChunkActor, job, [{"start": start} for start in starts], workers, address, finished,
                  "chunks finished so far are kept, so the same command resumes")


def map_on_actors(actor, job, items: list[dict], workers, address, on_row, after_failure: str) -> None:
    """Each item (a small dict) through actor(job) on a pool of Ray actors; on_row(row) on the driver per result.

    One actor per GPU when the cluster has GPUs, else one per CPU slot, never more than items; workers overrides.
    Rows come back in the order they finish. after_failure completes the message of a failed run."""
    import ray
    import ray.data

    with pass_on_ray(address, workers, after_failure):
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        actors = workers or gpus or max(1, int(resources.get("CPU", 1)))
        actors = max(1, min(actors, len(items)))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # relprop shows its own progress
        rows = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():
            # Ray Data takes actor options only as extra keyword arguments, which it marks deprecated (for 2.64)
            # without a named replacement for max_restarts yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            results = rows.map_batches(actor, fn_constructor_kwargs={"job": job}, batch_size=1,
                                       compute=ray.data.ActorPoolStrategy(size=actors),
                                       num_gpus=1 if gpus else 0, num_cpus=0.5 if gpus else 1, **NO_RESTARTS)
        for row in results.iter_rows():
            on_row(row)


@contextlib.contextmanager
def pass_on_ray(address: str | None, workers, after_failure: str):
    """Ray joined or started for one pass (stopped after, if started here); its errors become a RunError ending
    with after_failure (what is kept, how to resume)."""
    import ray

    # Ray Data's lines about execution plans and progress bars would bury relprop's own progress lines
    quiet = {name: logging.getLogger(name) for name in ("ray", "ray.data")}
    levels = {name: logger.level for name, logger in quiet.items()}
    for logger in quiet.values():
        logger.setLevel(logging.ERROR)
    started = _connect(ray, address, workers)
    try:
        yield
    except ray.exceptions.RayError as error:
        raise RunError(f"the Ray run failed: {' '.join(str(error).split())[:2000]}; {after_failure}") from error
    finally:
        if started:
            ray.shutdown()
        for name, logger in quiet.items():
            logger.setLevel(levels[name])


def _connect(ray, address: str | None, workers) -> bool:
    """Join the cluster at address, or start a local Ray; True when this run started Ray (and must stop it)."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as error:
            raise RunError(f"cannot join the Ray cluster at {address}: {' '.join(str(error).split())}; check the "
                           "address (`ray status` on the head node shows it) and that the Ray versions match") from None
        return True
    ray.init(num_cpus=workers or os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


def check_reachable(address: str) -> None:
    """A quick TCP connect, so a wrong address fails in seconds instead of after Ray's minute of retries."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001) nor "
                       "auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise RunError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one there with "
                       "`ray start --head`, check the address, or leave out --address to run Ray on this "
                       "machine") from None
