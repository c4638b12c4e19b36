"""Fine-tuning away an artifact: A-ClArC (Anders et al. 2022) and RR-ClArC (Dreyer et al., AAAI 2024).

Both train a copy of the model on labelled samples with cross-entropy, the CAV's layer changed as each method says:

- **A-ClArC** adds the artifact in activation space: for a random ``share`` of each batch, of every class, the
  layer's activation is moved along the CAV to the artifact samples' level, h' = h - (v . h - v . mean(artifact)) v,
  while the labels stay; the model learns that the direction says nothing about the class. At inference the model
  runs as it is (no hook).
- **RR-ClArC** penalises the output's sensitivity along the CAV: loss = CE + ``penalty`` * mean_i (d y_i / d t)^2,
  with y_i the logit of sample i's label and t a shift of the layer's activation along v (the directional derivative
  of y_i along the CAV, as TCAV reads it).

A-ClArC trains only the layers after the CAV's by default (``train="after"``, as its paper): were the layers before
it free, they could carry the artifact along another direction the CAV no longer describes. RR-ClArC trains all
(``train="all"``), as its penalty holds the direction at the layer itself.
The model is fine-tuned in eval mode (batch-norm statistics and dropout stay as trained), with SGD and momentum.
Runs are seeded: the order of samples and A-ClArC's choice of samples come from (seed, epoch), so a run resumed
from its checkpoint (written after each epoch into ``out/checkpoint``) ends with the weights of an uninterrupted
one. The result is written to ``out/weights.safetensors``; the given model object is never changed.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from .cav import CAV, layer_module
from .clarc import Shift, move_to_level

METHODS = ("a-clarc", "rr-clarc")
# What each trains by default. A-ClArC, as its paper: the layers after the CAV's. RR-ClArC: all of them; the penalty
# holds the direction at the layer, and on the demo's watermark model training all removed 99.9% of the mark's effect
# where training only the classifier after a global max-pool could not (scripts/correct_watermark.py).
DEFAULT_TRAIN = {"a-clarc": "after", "rr-clarc": "all"}
WEIGHTS = "weights.safetensors"


def finetune(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, cav: CAV, method: str, out,
             epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, share: float = 0.5, penalty: float = 1.0,
             seed: int = 0, train: str | None = None,
             progress: Callable[[dict], None] | None = None) -> torch.nn.Module:
    """A fine-tuned copy of the model (its weights also in out/weights.safetensors).

    An interrupted run with the same settings is resumed from out/checkpoint.

    Args:
        model: The model (not changed).
        x: The training inputs.
        labels: Their labels.
        cav: The artifact's CAV.
        method: "a-clarc" or "rr-clarc".
        out: The folder for weights and checkpoints.
        epochs: Passes over the samples.
        lr: SGD's learning rate.
        batch_size: Samples per step.
        share: A-ClArC: the share of each batch given the artifact, in (0, 1].
        penalty: RR-ClArC: the weight of the sensitivity penalty.
        seed: Seeds sample order and A-ClArC's choice of samples.
        train: "after" (the layers after the CAV's) or "all"; None: the method's default.
        progress: Called with a dict after each epoch.

    Returns:
        The fine-tuned model.

    Raises:
        ValueError: for an unknown method or train, labels that do not match the samples, settings out of range, or
            no parameters after the layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose from {', '.join(METHODS)}")
    if len(x) != len(labels) or len(x) == 0:
        raise ValueError(f"give as many labels as samples (got {len(x)} samples, {len(labels)} labels), at least one")
    train = train or DEFAULT_TRAIN[method if method in DEFAULT_TRAIN else "a-clarc"]
    if train not in ("after", "all"):
        raise ValueError(f"train must be 'after' (the layers after the CAV's, as ClArC does) or 'all', got {train!r}")
    if epochs < 1 or lr <= 0 or batch_size < 1 or not 0 < share <= 1 or penalty < 0:
        raise ValueError("epochs and batch_size must be at least 1, lr positive, share in (0, 1], penalty >= 0")
    layer_module(model, cav.layer)
    trained = copy.deepcopy(model).eval()
    module = layer_module(trained, cav.layer)
    device = next(trained.parameters()).device
    trainable = _after_layer(trained, module, x[:1].to(device)) if train == "after" else list(trained.parameters())
    if not trainable:
        raise ValueError(f"no parameters run after layer {cav.layer!r}; pick an earlier layer, or train='all'")
    optimiser = torch.optim.SGD(trainable, lr=lr, momentum=0.9)
    settings = {"method": method, "epochs": epochs, "lr": lr, "batch_size": batch_size, "share": share,
                "penalty": penalty, "seed": seed, "train": train, "samples": len(x), "layer": cav.layer,
                "cav": [round(float(v), 6) for v in cav.direction[:8]]}
    out = Path(out)
    checkpoint = out / "checkpoint"
    start = _resume(checkpoint, settings, trained, optimiser)
    labels = torch.as_tensor(labels, dtype=torch.long)
    for epoch in range(start, epochs):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(x), generator=generator)
        total, batches = 0.0, 0
        for first in range(0, len(x), batch_size):
            batch = order[first:first + batch_size]
            inputs, targets = x[batch].to(device), labels[batch].to(device)
            if method == "a-clarc":
                chosen = (torch.rand(len(batch), generator=generator) < share).to(device)
                loss = _a_clarc_loss(trained, module, cav, inputs, targets, chosen)
            else:
                loss = _rr_clarc_loss(trained, module, cav, inputs, targets, penalty)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + float(loss.detach()), batches + 1
        _save_checkpoint(checkpoint, settings, trained, optimiser, epoch + 1)
        if progress is not None:
            progress({"epoch": epoch + 1, "epochs": epochs, "loss": total / batches})
    _save_weights(trained, out / WEIGHTS)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return trained


def _after_layer(model, layer, example) -> list:
    """The parameters of the modules that first run after the layer (one forward pass of an example tells)."""
    order: list = []
    handles = [module.register_forward_hook(lambda module, arguments, output: order.append(module))
               for module in model.modules() if not list(module.children())]
    handles.append(layer.register_forward_hook(lambda module, arguments, output: order.append(layer)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    position = len(order) - 1 - order[::-1].index(layer)
    before = {id(p) for module in order[:position + 1] for p in module.parameters()}
    after = {id(p) for module in order[position + 1:] for p in module.parameters()}
    return [p for p in model.parameters() if id(p) in after - before]


def _a_clarc_loss(model, module, cav, inputs, targets, chosen):
    def add_artifact(module, arguments, output):
        levels = torch.where(chosen, cav.artifact_level.to(output), cav.clean_level.to(output))
        return move_to_level(output, cav, levels)

    handle = module.register_forward_hook(add_artifact)
    try:
        return torch.nn.functional.cross_entropy(model(inputs), targets)
    finally:
        handle.remove()


def _rr_clarc_loss(model, module, cav, inputs, targets, penalty):
    shift = Shift(cav)
    handle = module.register_forward_hook(shift, prepend=True)
    try:
        output = model(inputs)
    finally:
        handle.remove()
    picked = output.gather(1, targets[:, None]).sum()
    (derivative,) = torch.autograd.grad(picked, shift.amount, create_graph=True)
    return torch.nn.functional.cross_entropy(output, targets) + penalty * (derivative ** 2).mean()


# ---- checkpoints --------------------------------------------------------------------------------------------------
def _resume(checkpoint: Path, settings: dict, model, optimiser) -> int:
    """The epoch to start from: 0, or the one after the checkpoint's when its settings are these."""
    old = checkpoint.with_name(checkpoint.name + ".old")
    if old.is_dir() and not checkpoint.exists():  # killed between the two renames of _save_checkpoint
        old.rename(checkpoint)
    state_file = checkpoint / "state.json"
    if not state_file.is_file():
        return 0
    state = json.loads(state_file.read_text())
    if state["settings"] != settings:
        changed = sorted(key for key in settings if state["settings"].get(key) != settings[key])
        raise ValueError(f"{checkpoint} is from a run with other settings ({', '.join(changed)}); rerun with the "
                         f"same ones to resume it, or delete {checkpoint} to start over")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    optimiser.load_state_dict(torch.load(checkpoint / "optimiser.pt", weights_only=True))
    return int(state["epoch"])


def _save_checkpoint(checkpoint: Path, settings: dict, model, optimiser, epoch: int) -> None:
    """Write the checkpoint into a new folder and swap it in, so a kill leaves the old one or the new one whole."""
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _save_weights(model, partial / "model.safetensors")
    torch.save(optimiser.state_dict(), partial / "optimiser.pt")
    (partial / "state.json").write_text(json.dumps({"epoch": epoch, "settings": settings}))
    old = checkpoint.with_name(checkpoint.name + ".old")
    if checkpoint.exists():
        checkpoint.rename(old)
    partial.rename(checkpoint)
    shutil.rmtree(old, ignore_errors=True)


def _save_weights(model, path: Path) -> None:
    from safetensors.torch import save_file

    from ..viz.save import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(temporary))


__all__ = ["finetune", "METHODS", "WEIGHTS"]
