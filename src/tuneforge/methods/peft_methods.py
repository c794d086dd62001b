"""Parameter-efficient methods through the PEFT library: LoRA, DoRA, IA3, prefix and prompt tuning.

A classifier's new head (and a BERT pooler) is always trained and saved with the adapter
(``modules_to_save``); the result is a standard PEFT adapter folder.
"""

from __future__ import annotations

from torch import nn

from tuneforge.methods.common import Prepared, find_layers, head_module_names, param_groups


def linear_targets(model: nn.Module, exclude: list[str]) -> list[str]:
    """Leaf names of every nn.Linear inside the transformer blocks (the 'all-linear' default)."""
    prefix, _ = find_layers(model)
    names = set()
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.Linear)
            and name.startswith(prefix + ".")
            and not any(name.startswith(e) for e in exclude)
        ):
            names.add(name.split(".")[-1])
    return sorted(names)


def saved_modules(model: nn.Module, heads: list[str]) -> list[str]:
    """``modules_to_save``: each head module, or for one without a weight of its own (BERT's pooler: a Linear
    and an activation) its layers that hold weights. PEFT's IA3 merge reads ``.weight`` off every saved module
    it unloads, so a container there makes ``merge_and_unload`` (and export) fail."""
    out = []
    for name in heads:
        module = model.get_submodule(name)
        if hasattr(module, "weight"):
            out.append(name)
        else:
            out += [
                f"{name}.{sub}"
                for sub, m in module.named_modules()
                if sub and next(m.parameters(recurse=False), None) is not None
            ]
    return out


def peft_config(model: nn.Module, m, head: bool):
    """The PEFT config of method ``m``; ``head``: the model has a new classification head (trained and saved)."""
    import peft

    seq2seq = getattr(
        getattr(model, "config", None), "is_encoder_decoder", False
    )  # T5, BART, EncoderDecoderModel
    task_type = "SEQ_CLS" if head else "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    heads = head_module_names(model) if task_type == "SEQ_CLS" else []
    targets = linear_targets(model, heads) if m.target_modules == "all-linear" else m.target_modules
    save = saved_modules(model, heads) or None
    if m.name in ("lora", "dora"):
        return peft.LoraConfig(
            task_type=task_type,
            r=m.r,
            lora_alpha=m.alpha,
            lora_dropout=m.lora_dropout,
            target_modules=targets,
            use_dora=m.name == "dora",
            modules_to_save=save,
        )
    if m.name == "ia3":
        if (
            m.target_modules == "all-linear"
        ):  # PEFT's per-architecture defaults (keys, values, feed-forward output)
            return peft.IA3Config(task_type=task_type, modules_to_save=save)
        ff = [t for t in targets if t in ("down_proj", "fc2", "c_proj", "output.dense", "w2")]
        return peft.IA3Config(
            task_type=task_type, target_modules=targets, feedforward_modules=ff, modules_to_save=save
        )
    if m.name == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "prompt":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    raise ValueError(f"not a PEFT method: {m.name}")


def prepare_peft(model: nn.Module, m, t, head: bool) -> Prepared:
    import peft

    config = peft_config(model, m, head)
    model = peft.get_peft_model(model, config)
    return Prepared(
        model, param_groups(model, t.lr, t.weight_decay, t.head_lr), info={"peft": config.peft_type.value}
    )
