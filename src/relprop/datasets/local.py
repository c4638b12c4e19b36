"""The local engine: one process; sample reading and store writes overlap with explaining.

While chunk k is explained, a thread pool reads chunk k+1 and one writer thread writes chunk k-1, so the store and
data loading add little to the bare explanation time when the model is the slow part.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .work import ChunkWorker


def explain_chunks(worker: ChunkWorker, starts: list[int], workers: int, record_failures, on_done,
                   on_batch=None) -> None:
    """Explain the chunks starting at starts, in order; record_failures(chunk) runs before a chunk is marked done,
    on_done(samples, failures) after, on_batch(samples) after each batch."""
    if not starts:
        return
    # workers threads read samples; one more thread gathers the next chunk's samples while this one is explained
    readers = ThreadPoolExecutor(workers, thread_name_prefix="relprop-read") if workers else None
    ahead = ThreadPoolExecutor(1, thread_name_prefix="relprop-ahead") if workers else None
    writer = ThreadPoolExecutor(1, thread_name_prefix="relprop-write")
    pending_write = None
    try:
        upcoming = _read_ahead(worker, starts[0], readers, ahead)
        for position, start in enumerate(starts):
            items = upcoming.result() if readers else upcoming
            if position + 1 < len(starts):
                upcoming = _read_ahead(worker, starts[position + 1], readers, ahead)
            chunk = worker.explain(start, items, on_batch)
            if pending_write is not None:
                on_done(*pending_write.result())  # at most one chunk waits in memory for its write
            pending_write = writer.submit(_write, worker, chunk, record_failures)
        on_done(*pending_write.result())
        pending_write = None
    finally:
        if pending_write is not None:  # an error while explaining: the chunk already explained is still kept
            try:
                pending_write.result()
            except Exception:
                pass
        writer.shutdown(wait=True)
        if readers is not None:
            ahead.shutdown(wait=True, cancel_futures=True)
            readers.shutdown(wait=True, cancel_futures=True)


def _read_ahead(worker: ChunkWorker, start: int, readers, ahead):
    if readers is None:
        return worker.read(start)
    return ahead.submit(worker.read, start, readers)


def _write(worker: ChunkWorker, chunk, record_failures):
    worker.write(chunk, before_done=record_failures)
    return len(chunk.arrays["id"]), chunk.failures
