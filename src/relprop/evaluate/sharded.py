"""benchmark(engine="ray"): a data set's batches spread over Ray actors by the engine of ``relprop run``.

The batches are numbered 0..B-1 and mapped like ``relprop run``'s chunks (datasets/ray_engine.map_on_actors): each
actor loads the model once (a model spec loads itself; a module travels pickled) and reads its batches from the data
itself, so only batch numbers and per-sample scores and curves pass through the driver. The data must therefore
offer ``batch(index, batch_size)`` and ``batch_count(batch_size)``, as the sources of batches.py and a tuple of
tensors do. The driver adds each batch's results in batch order, exactly as the local engine does, so both give
the same table, curves and errors.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .result import Result

if TYPE_CHECKING:  # benchmark() imports this module when it runs on Ray: no import back at run time
    from .benchmark import Plan


@dataclass
class Job:
    model: object  # an nn.Module, or a ModelSpec each actor loads itself
    data: object
    plan: Plan


class BatchActor:
    """Ray Data's callable class: built once per actor, called with batch numbers."""

    def __init__(self, job: Job):
        import ray
        import torch

        self.model = job.model.load() if hasattr(job.model, "load") else job.model
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else None
        if self.device is not None:
            self.model.to(self.device)
        self.data, self.plan, self.explainers = job.data, job.plan, job.plan.explainers()

    def __call__(self, rows: dict) -> dict:
        payloads = []
        for index in rows["index"]:
            failed = getattr(self.data, "failed", [])
            before = len(failed)
            batch = self.data.batch(int(index), self.plan.batch_size)
            outcomes = {} if batch is None else self.plan.evaluate(self.model, self.explainers, batch, self.device)
            payloads.append(pickle.dumps(({key: _compact(value) for key, value in outcomes.items()},
                                          failed[before:])))
        return {"index": rows["index"], "payload": payloads}


def _compact(outcome):
    """What the driver's accumulators read of a Result (scores, curves, direction), on the CPU."""
    if isinstance(outcome, str):
        return outcome
    return Result(outcome.metric, outcome.scores.detach().cpu(), outcome.higher_is_better,
                  curves={name: curve.detach().cpu() for name, curve in outcome.curves.items()})


def evaluate_on_ray(model, data, plan: Plan, workers, address, on_batch):
    """Each batch's outcomes ((method, metric) -> Result or message), in batch order, computed by Ray actors.

    data offers batch(index, batch_size) and batch_count(batch_size) (benchmark() wraps a tuple of tensors in
    TensorBatches before it calls this)."""
    from ..datasets.ray_engine import check_reachable, map_on_actors

    if not (hasattr(data, "batch") and hasattr(data, "batch_count")):
        raise ValueError(f"engine='ray' needs data whose batches the actors can read by number (batch(index, "
                         f"batch_size)): a tuple of tensors, DemoImages, ImageFiles or StoreBatches; "
                         f"{type(data).__name__} has none, so use engine='local' for it")
    if address:
        check_reachable(address)  # before any work: a wrong address fails in seconds
    count = data.batch_count(plan.batch_size)
    if count == 0:
        return
    done = {}

    def collect(row):
        done[int(row["index"])] = pickle.loads(row["payload"])
        on_batch()

    map_on_actors(BatchActor, Job(model, data, plan), [{"index": index} for index in range(count)], workers,
                  address, collect, "nothing was kept; run it again")
    for index in range(count):
        outcomes, failed = done[index]
        if failed:
            data.failed.extend(failed)  # the files an actor could not read, as the local engine lists them
        yield outcomes
