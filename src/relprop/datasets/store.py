"""The explanation store: one Zarr v3 group per run, every per-sample array chunked by ``chunk`` samples.

Layout version 1 (docs/how-to/datasets.md): root attributes describe the run (model, weights hashes, dtype, method,
composite, parameters, target, keep, data, count, size, mean, std, class map, chunk, input shape, classes, class
names, skipped samples); arrays
``relevance``, ``output``, ``label``, ``target``, ``explained``, ``delta``, ``id``, ``preview``, ``done``, ``failed``
and ``extra/<name>`` have the N samples along their first dimension. A chunk's samples are marked in ``done`` only
after every other array of that chunk is written, so a reader (or a resumed run) trusts exactly the ``done`` chunks.
Writers of different chunks touch different files, which is what lets Ray actors share one store. One run writes a
store at a time: it holds a lock beside it while it writes (``writing``).

Chunks prove their data twice over: every chunk file ends with a CRC32C of its bytes (Zarr's ``crc32c`` codec, so
any reader fails on a flipped or truncated file instead of decoding it), and before a chunk is marked done its row
of ``checksum`` records a CRC32C of each array's values in it (so a chunk file that went missing, which Zarr would
read as fill values, is caught too). On a local file system the chunk files and their folders are synced to disk
before the done flags are written, so a power loss cannot leave a done chunk without its data.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NotAStore, StoreError

LAYOUT_VERSION = 1
REQUIRED = ("relevance", "output", "label", "target", "done")  # arrays every store has (a reader relies on them)
# What makes two runs the same run: every argument that changes a stored number. A store is resumed only when all
# of these agree; each is named by the argument that sets it. --batch-size and --device change only rounding (the
# same arithmetic in another order), --chunk the layout (kept), --workers, --engine and --address nothing stored.
IDENTITY = {"model": "--model", "weights_sha256": "--weights", "model_sha256": "the model's weights",
            "dtype": "the model's dtype", "method": "--method", "composite": "--composite",
            "composite_rules": "the rules of a composite given as an object", "parameters": "--param",
            "target": "--target", "keep": "--keep", "data": "DATA", "count": "DATA", "size": "--size",
            "mean": "--mean", "std": "--std", "class_map": "--class-map", "input_shape": "DATA and --size",
            "classes": "--model"}
# Why a value may differ although the command is the same.
HINTS = {"model_sha256": " (a torchvision model without --weights has new random weights in every run: pass "
                         "--weights FILE)"}


def is_remote(path) -> bool:
    """Whether path is a URL (s3://, gs://, ...) rather than a local folder.

    Args:
        path: The store's path.

    Returns:
        True or False.
    """
    return "://" in str(path)


@dataclass(frozen=True)
class Shapes:
    """What the arrays of a new store look like, known after reading one sample and running the model once."""

    count: int
    chunk: int
    input_shape: tuple
    classes: int
    preview: tuple | None  # (C, P, P) or None for non-image data
    extras: dict  # name -> (shape of one sample, numpy dtype)


def relevance_layout(keep: str, input_shape: tuple) -> tuple[tuple, str]:
    """(shape of one sample, dtype) of the stored relevance for a --keep choice."""
    if keep == "full":
        return tuple(input_shape), "float32"
    if keep == "float16":
        return tuple(input_shape), "float16"
    if keep == "channels":
        return tuple(input_shape[1:]), "float32"
    raise StoreError(f"keep must be full, channels or float16, got {keep!r}")


def check_path(path) -> None:
    """Refuse paths a store cannot be written to, before any work is done."""
    if is_remote(path):
        return
    path = Path(path)
    if not str(path) or str(path) in (".", ""):
        raise StoreError("--store needs a path for the new store, e.g. --store run.zarr")
    parent = path.resolve().parent
    if not parent.is_dir():
        # a missing folder is more often a typo or an unmounted network disk than a wish to create it
        raise StoreError(f"the folder {parent} for the store does not exist; create it first (mkdir -p {parent}) "
                         "or give another --store")
    if path.exists() and not path.is_dir():
        raise StoreError(f"--store {path} is a file, not a store; give a new path ending in .zarr")
    if not os.access(path if path.exists() else parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write to {path if path.exists() else parent} (permission denied); give a --store "
                         "in a folder you can write to")
    if path.is_dir() and any(path.iterdir()) and read_attributes(path) is None:
        raise StoreError(f"{path} is a folder that is not a relprop store; give a new --store path (relprop never "
                         "deletes folders it did not write)")


@contextlib.contextmanager
def writing(path):
    """Hold the store's writer lock while a run writes into it: a flock on a hidden file beside the store, so a
    second run (or relevance maximisation) on the same store is refused instead of interleaving with the first. The
    kernel drops the lock when its process dies, even by SIGKILL, so the next run resumes at once. Stores on S3
    hold a lease object instead (:mod:`relprop.datasets.lease`); other URLs are not locked."""
    try:
        import fcntl
    except ImportError:  # not on this platform: no lock
        fcntl = None
    if is_remote(path):
        from .lease import holding

        with holding(path):
            yield
        return
    if fcntl is None:
        yield
        return
    path = Path(path).resolve()
    lock = path.parent / f".{path.name}.lock"
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(f"{path} is being written by {holder}; wait for that run to finish (or stop it), then "
                             "run again: the store resumes where it stopped") from None
        except OSError:  # a file system without locks (some network mounts): write unlocked, as before
            handle.close()
            lock.unlink(missing_ok=True)
            yield
            return
        if lock.exists() and lock.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # the holder removed the file between our open and our lock: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"relprop (pid {os.getpid()} on {socket.gethostname()})")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def read_attributes(path) -> dict | None:
    """The root attributes of the relprop store at path, or None when there is none."""
    import zarr

    if not is_remote(path) and not (Path(path) / "zarr.json").is_file():
        return None
    try:
        attributes = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # not a Zarr group at all (FileNotFoundError, JSON or metadata errors)
        return None
    return attributes if "relprop_store" in attributes else None


def differences(stored: dict, wanted: dict) -> list[str]:
    """'name (its argument): the store has A, this run B' for every identity attribute that differs."""
    found = []
    for key, argument in IDENTITY.items():
        if key not in stored:
            if wanted.get(key) is not None:  # a record added since, which this run leaves empty, agrees
                found.append(f"{key} ({argument}): not recorded in the store (an older relprop made it), this run "
                             f"{wanted.get(key)!r}")
            continue
        if _comparable(stored[key]) != _comparable(wanted.get(key)):
            found.append(f"{key} ({argument}): the store has {stored[key]!r}, this run {wanted.get(key)!r}"
                         f"{HINTS.get(key, '')}")
    return found


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def create(path, attributes: dict, shapes: Shapes, keep: str) -> None:
    """Make an empty store with every array, written beside path and moved into place only when complete."""
    import torch
    import zarr

    from .. import __version__

    attributes = {"relprop_store": LAYOUT_VERSION, "relprop_version": __version__, "torch_version": torch.__version__,
                  **attributes, "count": shapes.count, "chunk": shapes.chunk,
                  "input_shape": list(shapes.input_shape), "classes": shapes.classes,
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "skipped": []}
    if is_remote(path):  # object stores have no rename; a half-made remote store is recreated by --overwrite
        _create_arrays(zarr.open_group(str(path), mode="w"), attributes, shapes, keep)
        return
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.resolve().parent))
    try:
        _create_arrays(zarr.open_group(str(staging), mode="w"), attributes, shapes, keep)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes the folder private; a store is an ordinary folder
        if path.exists():
            path.rmdir()  # an empty folder the user made for the store
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _create_arrays(group, attributes: dict, shapes: Shapes, keep: str) -> None:
    count, chunk = shapes.count, shapes.chunk
    relevance_shape, relevance_dtype = relevance_layout(keep, shapes.input_shape)

    def array(name, shape, dtype, fill_value):
        group.create_array(name, shape=(count, *shape), chunks=(chunk, *shape), dtype=dtype, fill_value=fill_value,
                           compressors=_compressors())

    array("relevance", relevance_shape, relevance_dtype, 0)
    array("output", (shapes.classes,), "float32", float("nan"))
    array("label", (), "int64", -1)
    array("target", (), "int64", -1)
    array("explained", (), "float32", float("nan"))
    array("delta", (), "float32", float("nan"))
    array("id", (), str, "")
    if shapes.preview is not None:
        array("preview", shapes.preview, "uint8", 0)
    array("failed", (), "bool", False)
    array("done", (), "bool", False)
    for name, (shape, dtype) in shapes.extras.items():
        array(f"extra/{name}", tuple(shape), np.dtype(dtype).name, 0)
    checked = sorted(name for name in _array_names(group) if name != "done")
    chunks = -(-count // chunk)
    group.create_array("checksum", shape=(chunks, len(checked)), chunks=(1, len(checked)), dtype="uint32",
                       fill_value=0, compressors=_compressors(), attributes={"arrays": checked})
    group.attrs.update(attributes)


def _compressors():
    """Zarr's default compression, then a CRC32C of the compressed bytes: a damaged chunk file fails to decode."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0), Crc32cCodec()]


def _array_names(group) -> list[str]:
    names = [name for name, _ in group.arrays()]
    if "extra" in group:
        names += [f"extra/{name}" for name, _ in group["extra"].arrays()]
    return sorted(names)


def remove(path) -> None:
    """Delete a relprop store (for --overwrite); refuses anything that is not one."""
    if read_attributes(path) is None:
        if is_remote(path) or not Path(path).exists() or not any(Path(path).iterdir()):
            return
        raise StoreError(f"{path} is not a relprop store; relprop deletes only stores it wrote")
    if is_remote(path):
        import zarr

        zarr.open_group(str(path), mode="w")  # mode w clears the group
        return
    shutil.rmtree(path)


def clear_partial_writes(path) -> None:
    """Remove the temporary files of writes cut short by a kill (Zarr writes to *.partial, then renames)."""
    if not is_remote(path):
        for leftover in Path(path).rglob("*.partial"):
            leftover.unlink(missing_ok=True)


# ---- reading ------------------------------------------------------------------------------------------------------
class Store:
    """A relprop store opened for reading (and for writing analysis results): arrays, attributes, progress.

    Args:
        path: The store's folder (or URL).
        mode: "r" (read) or "r+" (analyses may add groups such as analysis/).

    Raises:
        NotAStore: for a path that is not a relprop store (a StoreError and a FileNotFoundError).
        StoreError: for a store of another layout version, or one that lacks an array every store has.
    """

    def __init__(self, path, mode: str = "r"):
        import zarr

        if read_attributes(path) is None:
            raise NotAStore(f"{path} is not a relprop store (no zarr.json with relprop_store); give the path of a "
                            "store `relprop run` wrote")
        self.path = path
        self.group = zarr.open_group(str(path), mode=mode)
        version = self.attrs.get("relprop_store")
        if version != LAYOUT_VERSION:
            raise StoreError(f"{path} has store layout version {version}; this relprop reads version "
                             f"{LAYOUT_VERSION}; explain the data again with this version")
        missing = [name for name in REQUIRED if name not in self.group]
        if missing:
            raise StoreError(f"{path}: the store lacks {', '.join(missing)}; it was not written completely, run "
                             "`relprop run` again with the same arguments to finish it")

    @classmethod
    def open_for_run(cls, path, attributes: dict, shapes: Shapes, overwrite: bool = False,
                     note=None) -> tuple[Store, list[int]]:
        """The store a run writes into, and what is left to do: the first sample of each chunk not done.

        A store that does not exist is made with attributes and shapes. One that exists is resumed when it was made
        with the same arguments (every one in IDENTITY): writes cut short by a kill are removed, and every done chunk
        is checked against its checksums; a damaged one is named (note) and marked not done before anything else is
        written, so a kill now still leaves it to recompute. The caller holds the store's writer lock (writing).

        Args:
            path: The store's folder (or URL).
            attributes: What the run records: its identity (IDENTITY's keys) and the rest of the root attributes.
            shapes: The arrays of a new store; an existing store keeps its own (its chunk among them).
            overwrite: Replace an existing store made with other arguments instead of refusing.
            note: Called with one line per damaged chunk found (None: not told).

        Returns:
            (the Store, opened for writing; the first sample of each chunk left to explain, in order).

        Raises:
            StoreError: for an existing store made with other arguments (without overwrite).
        """
        existing = read_attributes(path)
        if existing is not None and overwrite:
            remove(path)
            existing = None
        if existing is not None:
            found = differences(existing, attributes)
            if found:
                raise StoreError(f"the store {path} was made with other arguments, which would mix two kinds of "
                                 f"numbers in it ({'; '.join(found)}); give the store's values to resume it (done "
                                 "or not), another --store, or --overwrite to start over")
        else:
            described = {k: v for k, v in attributes.items() if k not in ("count", "input_shape", "classes")}
            create(path, described, shapes, attributes["keep"])
        clear_partial_writes(path)
        store = cls(path, "r+")
        done = store.done
        damaged = verify(store.group, done)
        for damage in damaged:
            if note is not None:
                note(f"{path}: {damage}; explaining this chunk again")
        for start in sorted({damage.start for damage in damaged}):
            stop = min(start + store.chunk, store.count)
            store.group["done"][start:stop] = np.zeros(stop - start, dtype=bool)
            done[start:stop] = False
        return store, [start for start in range(0, store.count, store.chunk)
                       if not done[start:start + store.chunk].all()]

    @property
    def shapes(self) -> Shapes:
        """What the store's arrays look like (count, chunk, input shape, classes, preview, extras)."""
        extras = {name.removeprefix("extra/"): (tuple(self[name].shape[1:]), self[name].dtype)
                  for name in self.arrays() if name.startswith("extra/")}
        return Shapes(self.count, self.chunk, tuple(self.attrs["input_shape"]), int(self.attrs["classes"]),
                      tuple(self["preview"].shape[1:]) if "preview" in self else None, extras)

    @property
    def attrs(self) -> dict:
        """The store's root attributes: how it was made (model, data, composite or method, count, chunk, ...)."""
        return dict(self.group.attrs)

    @property
    def count(self) -> int:
        """The number of samples of the data set."""
        return int(self.attrs["count"])

    @property
    def chunk(self) -> int:
        """Samples per chunk (the unit of writing, resuming and checking)."""
        return chunk_size(self.group)

    @property
    def class_names(self) -> list | None:
        """The data set's class names, or None."""
        return self.attrs.get("class_names")

    @property
    def skipped(self) -> list[dict]:
        """Every skipped sample: {"index", "id", "error"}."""
        return list(self.attrs.get("skipped", []))

    def __getitem__(self, name: str):
        """The Zarr array by name, e.g. ``store["relevance"][10:20]`` or ``store["extra/mask"]``."""
        try:
            return self.group[name]
        except KeyError:
            raise KeyError(f"the store has no array {name!r}; it has {', '.join(self.arrays())}") from None

    def rows(self, name: str, indices) -> np.ndarray:
        """The array's rows at indices (done samples), read whole chunks at a time, each checked.

        Args:
            name: The array's name, e.g. "relevance" or "extra/mask".
            indices: Sample positions (done ones).

        Returns:
            A numpy array with one row per index.

        Raises:
            StoreError: when a chunk read is damaged.
        """
        indices = np.asarray(indices, dtype=np.int64)
        rows = None
        for start in np.unique(indices // self.chunk * self.chunk):
            stop = min(int(start) + self.chunk, self.count)
            block = read_checked(self.group, name, int(start), stop)
            if rows is None:
                rows = np.empty((len(indices), *block.shape[1:]), dtype=block.dtype)
            inside = (indices >= start) & (indices < stop)
            rows[inside] = block[indices[inside] - start]
        return rows if rows is not None else self[name][:0]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays()

    def arrays(self) -> list[str]:
        """The names of the store's arrays.

        Returns:
            A list of names.
        """
        return _array_names(self.group)

    @property
    def done(self) -> np.ndarray:
        """(count,) booleans: the samples whose chunk is done."""
        return done_mask(self.group, self.count, self.chunk)

    @property
    def failed(self) -> np.ndarray:
        """(count,) booleans: done samples that could not be explained (see skipped)."""
        return self.group["failed"][:] & self.done

    @property
    def complete(self) -> bool:
        """Whether every chunk is done."""
        return bool(self.done.all())

    @property
    def ready(self) -> np.ndarray:
        """(count,) booleans: the samples whose chunk is done and that did not fail (the failed flags checked)."""
        return ready(self.group)

    def read_chunks(self, name: str, indices):
        """Yield (positions into indices, rows of the array) one stored chunk at a time, each chunk checked.

        Args:
            name: The array's name, e.g. "relevance".
            indices: Sample positions (done ones), in any order.

        Yields:
            (positions into indices, the rows at those positions).

        Raises:
            StoreError: when a chunk read is damaged.
        """
        yield from read_chunks(self[name], indices, self.chunk)

    def chunks(self, names=("relevance", "label"), only_done: bool = True):
        """Yield (start, stop, {name: numpy array}) chunk by chunk, skipping chunks not yet done.

        Args:
            names: The arrays to read.
            only_done: Skip chunks not yet done (False: yield them too, unchecked).

        Yields:
            (start, stop, {name: numpy array}) per chunk.

        Raises:
            StoreError: when a done chunk is damaged.
        """
        done = self.done
        arrays = {name: self[name] for name in names}
        for start in range(0, self.count, self.chunk):
            stop = min(start + self.chunk, self.count)
            finished = done[start:stop].all()
            if only_done and not finished:
                continue
            # a done chunk is checked against its checksums; one not done holds no data to prove yet
            yield start, stop, {name: read_checked(self.group, name, start, stop) if finished
                                else arrays[name][start:stop] for name in arrays}

    def __repr__(self):
        done = int(self.done.sum())
        return (f"<relprop store {self.path}: {done}/{self.count} samples done, {len(self.skipped)} skipped, "
                f"model {self.attrs.get('model')}, {self.attrs.get('composite') or self.attrs.get('method')}>")


def open_store(path, mode: str = "r") -> Store:
    """Open a store `relprop run` wrote; mode "r+" lets analyses add groups such as analysis/.

    Args:
        path: The store's folder (or URL).
        mode: "r" or "r+".

    Returns:
        A Store.

    Raises:
        StoreError: for a path that is not a relprop store of this layout version.
    """
    return Store(path, mode)


def done_mask(group, count: int, chunk: int) -> np.ndarray:
    """The done flags; a chunk whose flags cannot be read (a write cut by power loss) counts as not done."""
    array = group["done"]
    try:
        return np.asarray(array[:], dtype=bool)
    except Exception:
        mask = np.zeros(count, dtype=bool)
        for start in range(0, count, chunk):
            try:
                mask[start:start + chunk] = array[start:start + chunk]
            except Exception:
                pass
        return mask


# ---- reading a group: what the analyses (SpRAy, its pages, the ViRelAy export) read --------------------------------
def chunk_size(group) -> int:
    """Samples per chunk of the per-sample arrays (the store's `chunk`, else the relevance array's chunking)."""
    return int(group.attrs.get("chunk") or group["relevance"].chunks[0])


def ready(group) -> np.ndarray:
    """Bool (N,): samples whose chunk is done and that did not fail."""
    done = done_mask(group, int(group.attrs["count"]), chunk_size(group))
    if "failed" in group:
        done &= ~np.asarray(checked_whole(group, "failed", done), dtype=bool)
    return done


def classes_of(group) -> np.ndarray:
    """(N,) the class each heatmap explains: the store's target, or the label where the target is not a class."""
    done = done_mask(group, int(group.attrs["count"]), chunk_size(group))
    target = np.asarray(checked_whole(group, "target", done), dtype=np.int64)
    label = np.asarray(checked_whole(group, "label", done), dtype=np.int64)
    return np.where(target >= 0, target, label)


def read_chunks(array, indices, chunk: int):
    """Yield (positions into indices, rows of array) for store indices, one stored chunk at a time, each checked
    against its checksum (a StoreError names a damaged chunk instead of reading it as data)."""
    import zarr

    root = zarr.open_group(array.store, mode="r")
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        return
    order = np.argsort(indices, kind="stable")
    sorted_indices = indices[order]
    chunk_of = sorted_indices // chunk
    boundaries = np.flatnonzero(np.diff(chunk_of)) + 1
    for group in np.split(np.arange(len(sorted_indices)), boundaries):
        wanted = sorted_indices[group]
        start = int(chunk_of[group[0]]) * chunk
        block = np.asarray(read_checked(root, array.path, start, min(start + chunk, array.shape[0])))
        yield order[group], block[wanted - start]


def class_names(group) -> list[str] | None:
    """The data set's class names, or None when it has none."""
    names = group.attrs.get("class_names")
    return list(names) if names else None


# ---- checksums ----------------------------------------------------------------------------------------------------
MISMATCH = "its values do not match their checksum (a changed or missing chunk file)"


@dataclass(frozen=True)
class Damage:
    """A done chunk whose data cannot be trusted: which samples, which array, why."""

    start: int
    stop: int
    array: str
    reason: str

    def __str__(self):
        return f"samples {self.start}..{self.stop - 1}, array {self.array}: {self.reason}"


def checked_names(group) -> list[str]:
    """The arrays whose values the checksum rows cover, in column order ([] for stores made before checksums)."""
    return list(group["checksum"].attrs["arrays"]) if "checksum" in group else []


def values_checksum(values, dtype) -> int:
    """CRC32C of a chunk's values as stored: the same number for the values written and the values read back."""
    import google_crc32c

    if np.dtype(dtype).kind in "OUST":  # the id strings
        data = json.dumps([str(value) for value in np.asarray(values, dtype=object).reshape(-1)]).encode()
    else:
        values = np.ascontiguousarray(np.asarray(values, dtype=dtype))
        if values.dtype.kind == "f":  # one NaN for all: Zarr reads a chunk it skipped as all-NaN as its fill NaN
            values = np.where(np.isnan(values), np.array(np.nan, dtype=values.dtype), values)
        data = values.tobytes()
    return int(google_crc32c.value(data))


def chunk_checksums(group, arrays: dict) -> np.ndarray:
    """A chunk's checksum row from the values about to be written (arrays: name -> values)."""
    names = checked_names(group)
    return np.array([values_checksum(arrays[name], group[name].dtype) for name in names], dtype=np.uint32)


def read_checked(group, name: str, start: int, stop: int):
    """An array's values in one done chunk, or StoreError naming the chunk when its bytes or values are damaged."""
    values, damage = _checked(group, name, start, stop)
    if damage is not None:
        raise StoreError(_damaged(group, damage))
    return values


def _checked(group, name: str, start: int, stop: int, row=None):
    """(values, None), or (None, the Damage found) for one array of the chunk at start; row: its checksum row."""
    try:
        values = group[name][start:stop]
    except Exception as error:
        return None, Damage(start, stop, name, _unreadable(error))
    names = checked_names(group)
    if name not in names:  # a store made before checksums: the chunk files' own CRC32C (if any) was checked
        return values, None
    if row is None:
        row = _checksum_row(group, start)
        if isinstance(row, Damage):
            return None, row
    if values_checksum(values, group[name].dtype) != int(row[names.index(name)]):
        return None, Damage(start, stop, name, MISMATCH)
    return values, None


def checked_whole(group, name: str, done: np.ndarray) -> np.ndarray:
    """A whole (small) array, its done chunks checked against their checksums; StoreError names a damaged one."""
    try:
        values = group[name][:]
        rows = group["checksum"][:] if "checksum" in group else None
    except Exception:  # a damaged chunk file somewhere: find and name it
        values = rows = None
    chunk, count = int(group.attrs["chunk"]), int(group.attrs["count"])
    names = checked_names(group)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        if not done[start:stop].all():
            continue
        if values is None:
            read_checked(group, name, start, stop)
        elif name in names and values_checksum(values[start:stop], group[name].dtype) != rows[start // chunk,
                                                                                             names.index(name)]:
            raise StoreError(_damaged(group, Damage(start, stop, name, MISMATCH)))
    return values if values is not None else group[name][:]


def _checksum_row(group, start: int):
    chunk = int(group.attrs["chunk"])
    try:
        return np.asarray(group["checksum"][start // chunk])
    except Exception as error:
        count = int(group.attrs["count"])
        return Damage(start, min(start + chunk, count), "checksum", _unreadable(error))


def _unreadable(error: Exception) -> str:
    return f"unreadable ({' '.join(str(error).split())[:200]})"


def _damaged(group, damage: Damage) -> str:
    where = group.store_path if hasattr(group, "store_path") else "the store"
    return (f"{where}: {damage}; this chunk is damaged, so it is not read as data: run `relprop run` again with the "
            "same arguments to recompute it (`relprop verify STORE` lists every damaged chunk)")


def verify(group, done=None) -> list[Damage]:
    """Every done chunk's damage: files that cannot be read, values that differ from the chunk's checksum row."""
    count, chunk = int(group.attrs["count"]), int(group.attrs["chunk"])
    if done is None:
        done = done_mask(group, count, chunk)
    names = checked_names(group) or [name for name in _array_names(group) if name != "done"]
    found = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        if not done[start:stop].all():
            continue
        row = _checksum_row(group, start) if "checksum" in group else None
        if isinstance(row, Damage):
            found.append(row)
            continue
        found += [damage for name in names if (damage := _checked(group, name, start, stop, row)[1]) is not None]
    return found


def sync_chunk(group, path, names, start: int) -> None:
    """fsync the chunk files of the chunk at start and every folder on their way up to the store (local stores):
    the data is on disk before the done flags say so. Stores behind a URL are durable once written."""
    if is_remote(path) or not hasattr(os, "O_DIRECTORY"):
        return
    root = Path(path)
    chunk = int(group.attrs["chunk"])
    folders = set()
    for name in names:
        array = group[name]
        key = array.metadata.encode_chunk_key((start // chunk, *([0] * (array.ndim - 1))))
        file = root / name / key
        try:
            _fsync(file, os.O_RDONLY)
        except FileNotFoundError:  # Zarr writes no file for a chunk of fill values only
            continue
        folder = file.parent
        while folder != root and folder not in folders:
            folders.add(folder)
            folder = folder.parent
    for folder in sorted(folders, key=lambda f: -len(f.parts)):  # new folders first, then what holds them
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path, flags: int) -> None:
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def size_on_disk(path) -> int | None:
    """The bytes a local store takes on disk, or None for a remote one.

    Args:
        path: The store's path.

    Returns:
        A number of bytes, or None.
    """
    if is_remote(path):
        return None
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def record_failures(group, failures: list, start: int, stop: int) -> None:
    """Set the entries of samples start..stop-1 in the store's skipped list (rewriting zarr.json only when they change).

    Args:
        group: The store's root group.
        failures: The chunk's failed samples: {"index", "id", "error"} each.
        start: The chunk's first sample.
        stop: One past its last sample.
    """
    listed = list(group.attrs.get("skipped", []))
    kept = [entry for entry in listed if not start <= entry["index"] < stop]
    if not failures and len(kept) == len(listed):
        return
    group.attrs["skipped"] = sorted(kept + list(failures), key=lambda entry: entry["index"])
