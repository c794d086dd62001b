"""What trains: one method name -> one function that prepares the model.

    full      every weight trains
    freeze    the base is frozen (or only its lowest N layers); the new head trains
    unfreeze  gradual unfreezing (ULMFiT): the head first, then one more layer from the top at a time
    lora/dora/ia3/prefix/prompt   parameter-efficient adapters through PEFT

Every method returns a ``Prepared`` (the model to train, the parameter groups for the optimizer and
an optional per-step hook) and the trainable parameter count is always logged.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.methods.common import Prepared, count_parameters
from tuneforge.methods.freeze import prepare_freeze, prepare_full, prepare_unfreeze
from tuneforge.methods.peft_methods import prepare_peft

REGISTRY: dict[str, Callable[..., Prepared]] = {
    "full": prepare_full,
    "freeze": prepare_freeze,
    "unfreeze": prepare_unfreeze,
    "lora": prepare_peft,
    "dora": prepare_peft,
    "ia3": prepare_peft,
    "prefix": prepare_peft,
    "prompt": prepare_peft,
}


def prepare(model, method_cfg, training_cfg, task: str) -> Prepared:
    """Apply ``method_cfg.name`` to ``model`` for ``task`` ("classification", "sft", ...)."""
    return REGISTRY[method_cfg.name](model, method_cfg, training_cfg, task)


__all__ = ["Prepared", "REGISTRY", "count_parameters", "prepare"]
