"""The Ray engine: the chunks to explain become a Ray Data set mapped by a pool of actors.

Each actor loads the model once (one actor per GPU when the cluster has GPUs, else one per CPU slot), explains
whole chunks with the same code as the local engine and writes them straight into the store, which must therefore
be on storage every node sees (a network file system, or an object store through Zarr's fsspec support). The
driver only collects each chunk's failures into the store's ``skipped`` list and shows progress. Ray is imported
here and nowhere else; ``map_on_actors`` (the pool itself) also spreads ``relprop evaluate``'s batches
(evaluate/sharded.py) and relevance maximisation's chunks (concepts/maximisation.py).

A node that dies takes its actors and the items they held with it. Ray does not restart them (see NO_RESTARTS):
map_on_actors itself maps the items whose results had not come back again, on a new pool over the nodes left. That
is safe because an item's work is all or nothing as seen from outside: a chunk is marked done only after its data
and checksums are written and synced, and a chunk written twice gets the same bytes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass

from .store import Shapes, record_failures
from .work import ChunkWorker, RunError, Settings

CONNECT_TIMEOUT_S = 5
OBJECT_STORE_BYTES = 128 * 2 ** 20  # a local run passes only chunk numbers and failures through the object store
# Ray Data keeps each actor's constructor arguments in the object store, from which Ray cannot reliably rebuild a
# restarted actor (ray-project/ray#53727; with restarts on, Ray logs an error line on every run), and a restarted
# actor waits for room on the nodes left. A lost actor's items are mapped again by map_on_actors instead.
NO_RESTARTS = {"max_restarts": 0, "max_task_retries": 0}
PASSES_AFTER_LOSS = 3  # new pools after lost actors (a node each, typically) before the run gives up
LOST_NODE_WAIT_S = 300  # how long a pool after a loss waits for its first actor (a node may be joining)
NOUNS = {"start": "chunks", "index": "batches"}  # what map_on_actors's items are, by their key


def _lost_actor(error: BaseException) -> bool:
    """True when error (or what caused it) says an actor, its worker or its node is gone, not that the work failed."""
    import ray.exceptions as errors

    lost = (errors.RayActorError, errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError,
            errors.ObjectLostError)
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, lost):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


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

    def finished(row):
        start, count = int(row["start"]), int(row["count"])
        failures = json.loads(row["failures"])
        record_failures(driver.group, failures, start, start + count)
        on_batch(count)
        on_done(count, failures)

    job = Job(model, source, settings, str(store), shapes)  # small: a model travels as its spec when it has one
    map_on_actors(ChunkActor, job, [{"start": start} for start in starts], workers, address, finished,
                  "chunks finished so far are kept, so the same command resumes")


def map_on_actors(actor, job, items: list[dict], workers, address, on_row, after_failure: str,
                  gpus: bool = True) -> None:
    """Each item (a small dict) through actor(job) on a pool of Ray actors; on_row(row) on the driver per result.

    One actor per GPU when the cluster has GPUs, else one per CPU slot, never more than items; workers overrides.
    Rows come back in the order they finish, each once; a row names its item by the item's first key. When actors
    are lost (a node died), the items without a row go to a new pool on the nodes left, up to PASSES_AFTER_LOSS
    times. after_failure completes the message of a failed run; gpus=False for actors that compute on the CPU."""
    import ray
    import ray.data

    key = next(iter(items[0])) if items else None
    with pass_on_ray(address, workers, after_failure):
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # relprop shows its own progress
        waited = context.wait_for_min_actors_s
        delivered = set()
        try:
            for attempt in range(PASSES_AFTER_LOSS + 1):
                left = [item for item in items if item[key] not in delivered]
                if not left:
                    return
                try:
                    for row in _one_pool(ray, actor, job, left, workers, gpus, after_loss=attempt > 0).iter_rows():
                        delivered.add(row[key].item() if hasattr(row[key], "item") else row[key])
                        on_row(row)
                    return
                except ray.exceptions.RayError as error:
                    if attempt == PASSES_AFTER_LOSS or not _lost_actor(error):
                        raise
                    # a pool after a loss fails (Ray Data's GetTimeoutError, not retried) when no node left
                    # starts one actor within LOST_NODE_WAIT_S
                    context.wait_for_min_actors_s = LOST_NODE_WAIT_S
                    _say_lost(error, len(items) - len(delivered), len(items), key, attempt)
        finally:
            context.wait_for_min_actors_s = waited


def _say_lost(error, missing: int, total: int, key, attempt: int) -> None:
    print(f"relprop: a Ray actor was lost ({type(error).__name__}: {' '.join(str(error).split())[:300]}); mapping "
          f"the {missing} of {total} {NOUNS.get(key, 'items')} without a result on a new pool of the nodes left "
          f"(pass {attempt + 2} of at most {PASSES_AFTER_LOSS + 1})", file=sys.stderr, flush=True)


def _one_pool(ray, actor, job, items: list[dict], workers, use_gpus: bool, after_loss: bool):
    """The lazily mapped data set of items on one actor pool. After a loss the pool starts with what fits (one
    actor) and grows to its size as the nodes left allow, instead of waiting for the dead node's slots."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if use_gpus else 0
    actors = workers or gpus or max(1, int(resources.get("CPU", 1)))
    actors = max(1, min(actors, len(items)))
    compute = (ray.data.ActorPoolStrategy(min_size=1, max_size=actors) if after_loss
               else ray.data.ActorPoolStrategy(size=actors))
    rows = ray.data.from_items(items, override_num_blocks=len(items))
    with warnings.catch_warnings():
        # Ray Data takes actor options only as extra keyword arguments, which it marks deprecated (for 2.64)
        # without a named replacement for max_restarts yet
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return rows.map_batches(actor, fn_constructor_kwargs={"job": job}, batch_size=1, compute=compute,
                                num_gpus=1 if gpus else 0, num_cpus=0.5 if gpus else 1, **NO_RESTARTS)


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
            if not _refused_token(error):
                raise RunError(f"cannot join the Ray cluster at {address}: {' '.join(str(error).split())}; check "
                               "the address (`ray status` on the head node shows it) and that the Ray versions "
                               "match") from None
            raise RunError(f"the Ray cluster at {address} asks for a token (Ray's token authentication) and this "
                           f"process gave {'a wrong one' if _token_mode() else 'none'}: set RAY_AUTH_MODE=token here "
                           "and give the cluster's token (`ray get-auth-token` on the head node prints it) in "
                           "~/.ray/auth_token or RAY_AUTH_TOKEN. Ray turns tokens on for `ray start --head` by "
                           "itself when ~/.ray/auth_token exists, but never for a driver or node given an address"
                           ) from None
        return True
    ray.init(num_cpus=workers or os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


def _token_mode() -> bool:
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


def _refused_token(error: BaseException) -> bool:
    """Whether joining failed for the token: Ray 2.60 raises a ConnectionError whose cause quotes the GCS's
    InvalidAuthToken (an AuthenticationError where it checks the token itself)."""
    import ray.exceptions

    while error is not None:
        if isinstance(error, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


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
