"""One writer at a time for stores on S3: a lease object beside the store, made with a conditional create.

S3 (and S3-compatible servers that implement conditional writes) creates an object with ``If-None-Match: *`` only
when none exists, and replaces or deletes one with ``If-Match: ETAG`` only when it is still that version. So:

- taking the lease is a conditional create of ``.NAME.lease`` beside the store: of two runs, exactly one succeeds;
- the holder renews it every LEASE_SECONDS / 4 by a conditional replace of its own version;
- a lease whose last renewal is older than LEASE_SECONDS (by the server's clock: its Last-Modified against the Date
  of the server's answer, so clocks of other machines do not matter) belongs to a run that died, e.g. by SIGKILL;
  it is taken over by a conditional replace of the version found, so of two runs taking it over one wins;
- the holder deletes it on exit, conditionally on its own version, so it never deletes a lease another run took.

What is guaranteed: two runs never hold the lease at once while the holder renews within LEASE_SECONDS; a holder
stalled longer than that (suspended, cut off from the server) can lose it to another run, and is told so on
stderr when its next renewal fails. Stores on other fsspec file systems (without conditional writes) are written
unlocked.
"""
from __future__ import annotations

import contextlib
import email.utils
import json
import os
import socket
import sys
import threading

from .errors import StoreError

LEASE_SECONDS = 60.0  # a lease not renewed for this long is taken over
ATTEMPTS = 3  # bounded: each attempt either takes the lease, meets a live holder, or lost a race to another taker


class LeaseHeld(StoreError):
    """Another live run holds the lease; the message names it."""


@contextlib.contextmanager
def holding(path):
    """Hold the lease of the S3 store at path while the body runs (no lease for other URL schemes)."""
    import fsspec

    fs, store_key = fsspec.core.url_to_fs(str(path))
    if type(fs).__name__ != "S3FileSystem":
        yield
        return
    bucket, _, key = store_key.rstrip("/").partition("/")
    folder, _, name = key.rpartition("/")
    lease = Lease(fs, bucket, f"{folder}/.{name}.lease" if folder else f".{name}.lease", str(path))
    lease.take()
    try:
        yield
    finally:
        lease.release()


class Lease:
    """The lease object of one store and this run's version of it (its ETag)."""

    def __init__(self, fs, bucket: str, key: str, store: str):
        self.fs, self.bucket, self.key, self.store = fs, bucket, key, store
        self.holder = f"relprop (pid {os.getpid()} on {socket.gethostname()})"
        self.etag = None
        self.stop = threading.Event()
        self.renewer = None

    def take(self) -> None:
        for _ in range(ATTEMPTS):
            try:
                self.etag = self._put(IfNoneMatch="*")
                break
            except Exception as error:
                if not _precondition_failed(error):
                    raise
            found = self._found()
            if found is None:  # released between our create and our look: create again
                continue
            etag, age, holder = found
            if age < LEASE_SECONDS:
                raise LeaseHeld(f"{self.store} is being written by {holder} (its lease was renewed {age:.0f} s ago); "
                                "wait for that run to finish (or stop it), then run again: the store resumes where "
                                f"it stopped; a lease not renewed for {LEASE_SECONDS:.0f} s (a killed run) is taken "
                                "over")
            try:
                self.etag = self._put(IfMatch=etag)
            except Exception as error:
                if not _precondition_failed(error):
                    raise
                continue  # another run took it over or renewed it first: look again
            print(f"relprop: note: took over the lease of {self.store} from {holder}, not renewed for {age:.0f} s "
                  "(a run that was killed)", file=sys.stderr, flush=True)
            break
        else:
            raise LeaseHeld(f"{self.store}: other runs kept taking its lease; run again when they have finished")
        self.renewer = threading.Thread(target=self._renew, name="relprop-lease", daemon=True)
        self.renewer.start()

    def release(self) -> None:
        self.stop.set()
        if self.renewer is not None:
            self.renewer.join()
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except Exception as error:
            if not _precondition_failed(error) and not isinstance(error, FileNotFoundError):
                raise

    def _renew(self) -> None:
        while not self.stop.wait(max(LEASE_SECONDS / 4, 0.1)):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as error:
                lost = "another run took it over" if _precondition_failed(error) else " ".join(str(error).split())
                print(f"relprop: warning: could not renew the lease of {self.store} ({lost}); chunks this run "
                      "writes still carry their checksums, check the store with `relprop verify`", file=sys.stderr,
                      flush=True)
                return

    def _put(self, **condition) -> str:
        body = json.dumps({"holder": self.holder}).encode()
        answer = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return answer["ETag"]

    def _found(self):
        """(ETag, seconds since its last renewal by the server's clock, holder) of the lease, or None if gone."""
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        now = email.utils.parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - head["LastModified"]).total_seconds()
        try:
            holder = json.loads(self.fs.cat_file(f"{self.bucket}/{self.key}"))["holder"]
        except Exception:  # replaced or unreadable meanwhile: the message only names it
            holder = "another run"
        return head["ETag"], age, holder


def _precondition_failed(error: Exception) -> bool:
    """Whether the server refused a conditional write because its condition did not hold (HTTP 412 or 409)."""
    while error is not None:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return True
        error = error.__cause__ or error.__context__
    return False
