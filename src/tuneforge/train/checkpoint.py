"""Resumable checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step-N`` holding the trainable weights (safetensors), the
optimizer and scheduler states, every RNG state and the trainer state (step, data position, best
metric). It is written under a temporary name and renamed into place, and only then does the
``checkpoints/latest`` pointer move (also by an atomic rename): a crash at any moment leaves the
previous checkpoint whole and pointed to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that may train (requires_grad now, or later for gradual unfreezing) and buffers."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(weights if weights is not None else trainable_state(model), tmp / "weights.safetensors")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        tmp / "state.pt",
    )
    _atomic_write_text(tmp / "trainer_state.json", json.dumps(trainer_state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    # Prune old checkpoints (never the one just written).
    kept = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "trainer_state.json").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states; returns the trainer state."""
    weights = load_file(path / "weights.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise RuntimeError(f"{path}: checkpoint has weights this model lacks: {unexpected[:5]}")
    state = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer_state.json").read_text())
