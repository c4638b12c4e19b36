"""Output folders written whole: a hidden staging folder beside the destination that replaces it in one step.

A command (or a script) writes everything into :class:`Staging`'s ``path``; :meth:`Staging.commit` puts that folder
in place of the destination as a whole, with one atomic exchange where the system has one (Linux ``renameat2`` with
``RENAME_EXCHANGE``), else with two renames (the destination is missing for a moment in between). Leaving the
``with`` block without committing removes the staging folder: a failed run leaves the earlier output as it was.

Example:
    >>> import pathlib, tempfile
    >>> from relprop.outputs import Staging
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with Staging(out) as staging:
    ...     _ = (staging.path / "summary.json").write_text("{}")
    ...     staging.commit()
    >>> sorted(path.name for path in out.iterdir())
    ['.relprop-output', 'summary.json']
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

MARKER = ".relprop-output"  # the file that marks a folder relprop wrote (and may replace)


class OutputError(Exception):
    """The destination cannot be replaced (it is a file, the current folder, or holds files relprop did not write);
    the message starts with the destination and names the fix."""


class Staging:
    """A hidden folder beside ``out`` to write into; ``commit`` puts it in place of ``out`` as a whole (one atomic
    exchange where the system has one), else it vanishes.

    Its name holds this process's id, so a later run removes the folders that killed runs left. An existing ``out``
    is replaced only when it is empty or written by relprop (it holds the MARKER file): a mistyped destination never
    deletes anyone's files.

    Args:
        out: The destination folder (created if missing, replaced as a whole by ``commit``).

    Raises:
        OutputError: when ``out`` is the current folder or holds it, is a file, or holds files relprop did not write.
    """

    MARKER = MARKER

    def __init__(self, out: Path):
        out = Path(out)
        if out.resolve() == Path.cwd() or out.resolve() in Path.cwd().parents:  # it is replaced, so never these
            raise OutputError(f"{out} is the current folder or contains it; give a sub-folder such as relprop-out")
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} is a file; give a folder (it is created if missing)")
        if out.is_dir():
            entries = sorted(entry.name for entry in out.iterdir())
            if entries and self.MARKER not in entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputError(f"{out} holds files relprop did not write ({shown}); give a new or empty "
                                  "folder, or one an earlier relprop run wrote (it is replaced as a whole)")
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        self.path = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}.", dir=out.parent))
        (self.path / self.MARKER).write_text("written by relprop: the next run into this folder replaces it whole\n")

    def commit(self):
        """Put the staging folder in place of ``out``; the old content (if any) is removed on leaving the block."""
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp makes the folder private; the result is an ordinary one
        if not self.out.exists():
            os.rename(self.path, self.out)
        elif not _exchange(self.path, self.out):  # two renames: out is missing for a moment in between
            aside = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(self.out)}{os.getpid()}.", dir=self.out.parent))
            os.rename(self.out, aside / "old")
            os.rename(self.path, self.out)
            os.rename(aside, self.path)
        # self.path now holds the old content (if any); __exit__ removes it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.pid"


def remove_stale_staging(out: Path) -> None:
    """Remove the staging folders beside ``out`` whose process no longer runs (a run that was killed).

    Args:
        out: The destination folder whose staging folders are looked for.
    """
    pattern = re.compile(re.escape(_staging_prefix(out)) + r"(\d+)\.[^.]+")
    for folder in out.parent.iterdir():
        match = pattern.fullmatch(folder.name)
        if match and folder.is_dir() and not _running(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists under another user, or cannot tell: keep its folder
    return True


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    import ctypes
    import errno

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))


__all__ = ["Staging", "OutputError", "remove_stale_staging", "MARKER"]
