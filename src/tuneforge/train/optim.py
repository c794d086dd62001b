"""AdamW and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(param_groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW; the fused kernel (one pass over all parameters, CPU and GPU) where this torch has it."""
    try:
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_steps(total_steps: int, warmup_ratio: float | None, warmup_steps: int | None) -> int:
    if warmup_steps is not None:
        return warmup_steps
    return int(math.ceil(total_steps * (0.06 if warmup_ratio is None else warmup_ratio)))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int) -> LambdaLR:
    """Linear warmup to the peak, then linear or cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(1.0, progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return LambdaLR(optimizer, factor)
