"""A corrected model on disk: ``model.json`` beside its CAV and weights, usable as ``--model path/model.json``.

The file names the model it corrects (its --model spec and --weights), the method, and the files that hold the
correction: the CAV (P-ClArC, applied as a hook when loaded) or the fine-tuned weights (A-ClArC, RR-ClArC). Paths
are relative to the file's folder, so the folder can be moved whole.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..loading import LoadError, load_model, register_model_file

MANIFEST = "model.json"
FORMAT = 1


def write(out, method: str, model_spec: str, weights=None, cav: str | None = None, finetuned: str | None = None,
          settings: dict | None = None) -> Path:
    """Write out/model.json; weights is the base model's weights file (absolute), or None."""
    from ..viz.save import save_text

    record = {"relprop_corrected": FORMAT, "method": method, "model": model_spec,
              "weights": None if weights is None else str(Path(weights).resolve()), "cav": cav,
              "finetuned": finetuned, "settings": settings or {}}
    return save_text(json.dumps(record, indent=2), Path(out) / MANIFEST)


def is_manifest(spec: str) -> bool:
    return str(spec).endswith(".json")


def load(path, weights=None):
    """The corrected model a model.json describes, as relprop.loading.LoadedModel (weights, if given, replace the
    base model's)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"cannot read the corrected model {path} ({error}); give the model.json that `relprop "
                        "correct` wrote") from None
    if not isinstance(record, dict) or record.get("relprop_corrected") != FORMAT:
        raise LoadError(f"{path} is not a corrected model written by `relprop correct` (no relprop_corrected: "
                        f"{FORMAT})")
    folder = path.parent
    base = weights if weights is not None else (
        folder / record["finetuned"] if record.get("finetuned") else record.get("weights"))
    loaded = load_model(record["model"], base)
    if record.get("cav"):
        from .cav import CAV
        from .clarc import attach

        attach(loaded.model, CAV.load(folder / record["cav"]))
    loaded.spec = str(path)
    return loaded


register_model_file(".json", load)  # `--model path/model.json` anywhere a model spec is read

__all__ = ["write", "load", "is_manifest", "MANIFEST"]
