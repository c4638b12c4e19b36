"""From a store and a SpRAy cluster to a corrected model and its verification: what ``relprop correct`` runs.

The cluster's samples carry the artifact, the rest of its class does not: they give the CAV at the layer. The
artifact is localised in the cluster's samples by the CAV's conditional relevance; the explained samples outside
the cluster are the clean ones. P-ClArC needs no training; A-ClArC and RR-ClArC fine-tune on the store's explained
samples (read into memory). Written into ``out``: ``cav.safetensors``, ``model.json`` (usable as --model),
``weights.safetensors`` (fine-tuning), ``report/index.html`` and ``verification.json``.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import saved
from .cav import cluster_samples, from_inputs, read_inputs, store_model_and_source
from .clarc import p_clarc
from .finetune import finetune
from .localise import localise
from .verify import METRICS, Probe, measure, report

METHODS = ("p-clarc", "a-clarc", "rr-clarc")
# Fine-tuning settings where none are given: those measured on the demo's watermark model (docs/how-to/clarc.md);
# a model of its own may need others.
TRAINING_DEFAULTS = {"a-clarc": {"epochs": 5, "lr": 1e-2, "penalty": 0.0},
                     "rr-clarc": {"epochs": 3, "lr": 1e-3, "penalty": 100.0}}


def run(store, class_index: int, cluster: int, layer: str, method: str, out, model=None, model_spec=None,
        weights=None, source=None, clustering=None, kind="pattern", pooling="none", epochs: int | None = None,
        lr: float | None = None, penalty: float | None = None, share: float = 0.5, batch_size: int = 64, seed: int = 0,
        train=None, training=None, verify_samples: int = 1000, donors: int = 64, threshold: float = 0.5,
        composite="epsilon_plus_flat", progress=None) -> dict:
    """Correct and verify; returns {"metrics": {"before": ..., "after": ...}, ...}. training: the folder that
    keeps the fine-tuning checkpoint between interrupted runs (default out/training)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    from ..datasets.store import open_store

    say = progress or (lambda text: None)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    attrs = open_store(store).attrs
    model, source = store_model_and_source(store, model, source)
    model.eval()
    samples = cluster_samples(store, class_index, cluster, clustering)
    artifact, _ = read_inputs(source, samples.artifact)
    clean_of_class, _ = read_inputs(source, samples.clean)
    say(f"CAV at {layer} from {len(artifact)} samples of cluster {cluster} ({samples.clustering}) and "
        f"{len(clean_of_class)} other samples of class {class_index}")
    cav = from_inputs(model, artifact, clean_of_class, layer, kind=kind, pooling=pooling, seed=seed)
    cav.save(out / "cav.safetensors")

    usable = np.flatnonzero(open_store(store).ready)
    outside = np.setdiff1d(usable, samples.artifact)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(outside, min(verify_samples, len(outside)), replace=False))
    clean, labels = read_inputs(source, chosen)
    donor_positions = samples.artifact[:donors]
    donor_inputs = artifact[:donors]
    pixels = [source.read(int(i)).pixels for i in donor_positions]
    masks = localise(model, donor_inputs, cav, threshold, composite)
    probe = Probe(clean, labels, donor_inputs, masks, int(class_index), cav,
                  torch.stack(pixels) if all(p is not None for p in pixels) else None)

    settings = {"class": int(class_index), "cluster": int(cluster), "clustering": samples.clustering,
                "layer": layer, "kind": kind, "pooling": pooling, "seed": seed, "store": str(store)}
    spec = model_spec or attrs["model"]
    if method == "p-clarc":
        corrected = p_clarc(model, cav)
        saved.write(out, method, spec, weights, cav="cav.safetensors", settings=settings)
    else:
        given = {"epochs": epochs, "lr": lr, "penalty": penalty}
        epochs, lr, penalty = (TRAINING_DEFAULTS[method][key] if value is None else value
                               for key, value in given.items())
        x, y = read_inputs(source, usable)
        say(f"{method}: fine-tuning on {len(x)} samples for {epochs} epochs")
        training = Path(training) if training is not None else out / "training"
        corrected = finetune(model, x, y, cav, method, training, epochs=epochs, lr=lr, batch_size=batch_size,
                             share=share, penalty=penalty, seed=seed, train=train,
                             progress=lambda r: say(f"{method}: epoch {r['epoch']}/{r['epochs']}, loss "
                                                    f"{r['loss']:.4f}"))
        (training / "weights.safetensors").replace(out / "weights.safetensors")
        shutil.rmtree(training, ignore_errors=True)
        settings.update(epochs=epochs, lr=lr, penalty=penalty, share=share, batch_size=batch_size, train=train)
        saved.write(out, method, spec, weights, finetuned="weights.safetensors", settings=settings)
    corrected.eval()
    say("verifying")
    results = {"before": measure(model, probe, composite), f"after ({method})": measure(corrected, probe, composite)}
    report(out / "report", results, probe, title=f"relprop correct: {method} on class {class_index}")
    figures = {name: {metric: result[metric] for metric in METRICS} for name, result in results.items()}
    summary = {"method": method, "settings": settings, "metrics": figures,
               "seconds": round(time.perf_counter() - started, 2)}
    (out / "verification.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["run", "METHODS"]
