"""Writing files whole or not at all: each is written to a temporary file beside it, then renamed into place."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on error it is removed.

    Args:
        path: The file to write.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes files private; results are ordinary files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_image(image: np.ndarray, path, scale: int = 1) -> Path:
    """Save an (H, W, 3) uint8 image as PNG; scale > 1 enlarges it with sharp pixels (for tiny inputs).

    Args:
        image: (H, W, 3) uint8.
        path: The file to write.
        scale: Enlarge by this integer factor.

    Returns:
        The path.
    """
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    with atomic_path(path) as temporary:
        picture.save(temporary, format="PNG")
    return Path(path)


def save_figure(figure, path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG.

    Args:
        figure: The matplotlib Figure.
        path: The file to write.
        dpi: Dots per inch.

    Returns:
        The path.
    """
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def save_text(text: str, path) -> Path:
    """Save text as a UTF-8 file, whole or not at all.

    Args:
        text: The text.
        path: The file to write.

    Returns:
        The path.
    """
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
