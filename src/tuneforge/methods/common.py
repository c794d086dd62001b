"""Helpers shared by the methods: finding layers and heads, parameter groups, counting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

HEAD_NAMES = ("classifier", "score", "pooler")  # new or never-trained output layers of a classifier


@dataclass
class Prepared:
    """A model ready to train: its optimizer parameter groups and an optional hook run before each step."""

    model: nn.Module
    param_groups: list[dict]
    on_step: Callable[[int, int], None] | None = None  # (global_step, epoch) -> None
    info: dict = field(default_factory=dict)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting shared tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ModuleList in the model (encoder.layer, model.layers, h, ...)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (best is None or len(module) > len(best[1]))
        ):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__}: cannot find its transformer layers")
    return best


def is_head(name: str) -> bool:
    parts = name.split(".")
    return any(p in HEAD_NAMES for p in parts)


def head_module_names(model: nn.Module) -> list[str]:
    """Top-level names of the classification head modules (e.g. ['classifier'] or ['score'], plus 'bert.pooler')."""
    names = []
    for name, _ in model.named_children():
        if name in HEAD_NAMES:
            names.append(name)
    for name, module in model.named_modules():
        if name.endswith("pooler") and module is not None and any(True for _ in module.parameters()):
            names.append(name)
    return names


def layer_index(name: str, layers_prefix: str) -> int | None:
    """Index of the transformer block a parameter belongs to, or None."""
    prefix = layers_prefix + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".")[0])


NO_DECAY = ("bias", "LayerNorm.weight", "layernorm.weight", "norm.weight", "ln_", "layer_norm")


def no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or any(k in name for k in NO_DECAY)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr: float | None = None,
    layer_lr_decay: float = 1.0,
    include_frozen: bool = False,
) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; optional head learning rate and layer-wise decay.

    Layer-wise decay gives block i (of L) ``lr * decay ** (L - i)``; embeddings get ``lr * decay ** (L + 1)``
    and the head ``head_lr`` (or ``lr``).
    """
    try:
        prefix, layers = find_layers(model)
        n_layers = len(layers)
    except ValueError:
        prefix, n_layers = "", 0
    groups: dict[tuple[float, bool], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or (not p.requires_grad and not include_frozen):
            continue
        seen.add(id(p))
        if is_head(name):
            plr = head_lr if head_lr is not None else lr
        elif layer_lr_decay != 1.0 and n_layers:
            i = layer_index(name, prefix)
            depth = (n_layers - i) if i is not None else n_layers + 1
            plr = lr * layer_lr_decay**depth
        else:
            plr = lr
        nd = no_decay(name, p)
        groups.setdefault((plr, nd), []).append(p)
    return [
        {"params": ps, "lr": plr, "weight_decay": 0.0 if nd else weight_decay}
        for (plr, nd), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]
