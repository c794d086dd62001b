"""QLoRA: LoRA adapters on a frozen base whose linear layers are stored in 4-bit NF4 (bitsandbytes).

The base model, loaded as usual, has every ``nn.Linear`` inside its transformer blocks replaced by a
``bitsandbytes.nn.Linear4bit`` (NF4 with double quantisation, bf16 compute), quantised as it moves to the
GPU; the embeddings, norms and output layer stay as they are. LoRA (``method.r``, ``alpha``,
``target_modules``) then trains on top in float32, through PEFT, exactly as ``method.name: lora``: the saved
folder is a standard PEFT adapter.

Export (``tuneforge export RUN OUT --merge``) merges the adapter into the base loaded again from disk in
full precision: the dequantised weights, not the 4-bit ones, so the merged model has no quantisation error
beyond what the adapter learned to compensate. Needs a CUDA GPU and ``pip install bitsandbytes``.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.methods.common import Prepared, find_layers


def check_available() -> None:
    """Raise a ConfigError naming the fix when there is no CUDA GPU or no bitsandbytes."""
    if not torch.cuda.is_available():
        raise ConfigError(
            "method.name=qlora stores the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; none "
            "is visible here. Use method.name=lora (the same adapter on a full-precision base) on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "method.name=qlora needs bitsandbytes: `pip install bitsandbytes` (or use method.name=lora)."
        ) from None


def quantize_blocks(model: nn.Module, device: torch.device, compute_dtype=torch.bfloat16) -> int:
    """Replace every ``nn.Linear`` in the transformer blocks by a 4-bit NF4 ``Linear4bit`` on ``device``;
    returns how many were replaced. The rest of the model moves to ``device`` unchanged."""
    import bitsandbytes as bnb

    prefix, _ = find_layers(model)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith(prefix + ".")
    ]
    for name, linear in targets:
        parent_name, _, leaf = name.rpartition(".")
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,  # double quantisation of the scales
            quant_type="nf4",
        )
        q.weight = bnb.nn.Params4bit(
            linear.weight.data.to(torch.float16),
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=True,
        )
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
        setattr(model.get_submodule(parent_name), leaf, q)
    model.to(device)  # Params4bit quantise here
    return len(targets)


def prepare_qlora(model: nn.Module, m, t, head: bool) -> Prepared:
    """``method.name: qlora``: quantise the base's blocks to NF4 on the GPU, then LoRA on top (PEFT)."""
    from dataclasses import replace

    import peft

    from tuneforge.methods.peft_methods import prepare_peft

    check_available()
    n = quantize_blocks(model, torch.device("cuda"))
    for p in model.parameters():
        p.requires_grad_(False)
    # casts norms to float32 and makes the input embeddings' output require grad (for checkpointing)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
    prepared = prepare_peft(model, replace(m, name="lora"), t, head)
    prepared.info.update(quantized_linear=n, quant_type="nf4", compute_dtype="bfloat16")
    return prepared
