"""Helpers for tests that train tiny models."""

from __future__ import annotations

import torch


def tiny_cfg(model_path: str, data_path: str, out_dir, **sections) -> dict:
    """A quick classification run config for a tiny model (no dropout, so runs are exactly comparable)."""
    cfg = {
        "task": "classification",
        "model": {"name": model_path, "dropout": 0.0},
        "data": {
            "train": data_path,
            "max_length": 32,
            "validation_fraction": 0.1,
            "test_fraction": 0.1,
            "audit": False,
        },
        "method": {"name": "full"},
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "lr": 1e-3,
            "eval_every": 6,
            "log_every": 2,
            "warmup_steps": 0,
            "precision": "fp32",
        },
        "eval": {"batch_size": 32},
        "output": {"dir": str(out_dir), "name": "run", "overwrite": True},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
