"""What trains: one method name -> one function that prepares the model.

    full      every weight trains
    freeze    the base is frozen (or only its lowest N layers); the new head trains
    unfreeze  gradual unfreezing (ULMFiT): the head first, then one more layer from the top at a time
    lora/dora/ia3/prefix/prompt   parameter-efficient adapters through PEFT
    houlsby/pfeiffer  bottleneck adapters, a PEFT method of ours (methods/bottleneck.py)
    qlora     LoRA on a base stored in 4-bit NF4 (bitsandbytes, CUDA)

Every method returns a ``Prepared`` (the model to train, the parameter groups for the optimizer and
an optional per-step hook) and the trainable parameter count is always logged.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.methods.common import Prepared, count_parameters
from tuneforge.methods.freeze import prepare_freeze, prepare_full, prepare_unfreeze
from tuneforge.methods.peft_methods import prepare_peft
from tuneforge.methods.peft_registry import prepare_bottleneck
from tuneforge.methods.qlora import prepare_qlora

REGISTRY: dict[str, Callable[..., Prepared]] = {
    "full": prepare_full,
    "freeze": prepare_freeze,
    "unfreeze": prepare_unfreeze,
    "lora": prepare_peft,
    "dora": prepare_peft,
    "ia3": prepare_peft,
    "prefix": prepare_peft,
    "prompt": prepare_peft,
    "houlsby": prepare_bottleneck,  # bottleneck adapters, a PEFT method of ours (methods/bottleneck.py)
    "pfeiffer": prepare_bottleneck,
    "qlora": prepare_qlora,  # LoRA on a 4-bit NF4 base (CUDA + bitsandbytes)
}


def prepare(model, method_cfg, training_cfg, head: bool) -> Prepared:
    """Apply ``method_cfg.name`` to ``model``; ``head``: the model has a new output head that must train
    (classifiers and reward models), else it is a language model whose output layer is its own."""
    return REGISTRY[method_cfg.name](model, method_cfg, training_cfg, head)


__all__ = ["Prepared", "REGISTRY", "count_parameters", "prepare"]
