"""Full fine-tuning, frozen base layers with a new head, and gradual unfreezing (ULMFiT)."""

from __future__ import annotations

import logging

from torch import nn

from tuneforge.methods.common import Prepared, find_layers, is_head, layer_index, param_groups

log = logging.getLogger(__name__)


def prepare_full(model: nn.Module, m, t, head: bool) -> Prepared:
    for p in model.parameters():
        p.requires_grad_(True)
    groups = param_groups(model, t.lr, t.weight_decay, t.head_lr, m.layer_lr_decay)
    return Prepared(model, groups)


def _freeze_all_but_head(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(is_head(name))


def prepare_freeze(model: nn.Module, m, t, head: bool) -> Prepared:
    """Freeze the base (or its embeddings and lowest ``freeze_layers`` blocks); the rest trains."""
    prefix, layers = find_layers(model)
    if m.freeze_layers is None:
        if not head:
            raise ValueError(
                "method 'freeze' without freeze_layers leaves nothing to train in a language model: "
                "set method.freeze_layers to the number of lowest layers to freeze."
            )
        _freeze_all_but_head(model)
    else:
        if m.freeze_layers > len(layers):
            raise ValueError(
                f"method.freeze_layers={m.freeze_layers} but the model has {len(layers)} layers."
            )
        for name, p in model.named_parameters():
            i = layer_index(name, prefix)
            if is_head(name) and head:
                frozen = False
            elif (
                i is None
            ):  # embeddings and anything before the blocks are frozen; final norms / lm_head train
                frozen = "embed" in name or "wte" in name or "wpe" in name or name.endswith("shared.weight")
            else:
                frozen = i < m.freeze_layers
            p.requires_grad_(not frozen)
    return Prepared(model, param_groups(model, t.lr, t.weight_decay, t.head_lr))


class Unfreezer:
    """ULMFiT gradual unfreezing: the head trains from the start; every ``every`` steps (or each epoch)
    one more block is unfrozen from the top, and after all blocks the embeddings.

    A language model's head is its output layer, found by identity: with tied weights (most small chat
    models) it is the embedding matrix, which therefore trains from the start too.
    """

    def __init__(self, model: nn.Module, every: str | int, head: bool):
        self.model = model
        self.prefix, layers = find_layers(model)
        self.n_layers = len(layers)
        self.every = every
        self.head = head
        output = (
            model.get_output_embeddings() if not head and hasattr(model, "get_output_embeddings") else None
        )
        self.output = {id(p) for p in output.parameters()} if output is not None else set()
        self.unfrozen = -1

    def stage(self, step: int, epoch: int) -> int:
        return epoch if self.every == "epoch" else step // int(self.every)

    def __call__(self, step: int, epoch: int) -> None:
        k = self.stage(step, epoch)  # blocks unfrozen from the top
        if k == self.unfrozen:
            return
        self.unfrozen = k
        for name, p in self.model.named_parameters():
            i = layer_index(name, self.prefix)
            if is_head(name) or id(p) in self.output or (not self.head and "lm_head" in name):
                trains = True
            elif i is not None:
                trains = i >= self.n_layers - k
            else:  # embeddings, final norms
                trains = k > self.n_layers or ("norm" in name and "embed" not in name and k > 0)
            p.requires_grad_(trains)
        log.info(
            "unfreeze: %d of %d blocks trainable (step %d, epoch %d)",
            min(k, self.n_layers),
            self.n_layers,
            step,
            epoch,
        )


def prepare_unfreeze(model: nn.Module, m, t, head: bool) -> Prepared:
    # Every parameter is in the optimizer from the start; frozen ones simply have no gradient (AdamW skips them).
    for p in model.parameters():
        p.requires_grad_(True)
    groups = param_groups(model, t.lr, t.weight_decay, t.head_lr, m.layer_lr_decay)
    hook = Unfreezer(model, m.unfreeze_every, head)
    hook(0, 0)
    return Prepared(model, groups, on_step=hook, info={"n_layers": hook.n_layers})
