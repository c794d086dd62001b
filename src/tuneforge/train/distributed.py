"""Sharded training with PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``), as torchtune does.

``training.distributed`` chooses how several processes train one model:

    ddp   every process holds the whole model, its gradients and optimizer state (accelerate's DDP)
    fsdp  each process holds 1/N of every weight, gradient and AdamW moment; a block's weights are
          all-gathered just before its forward (and backward) and freed after, gradients reduce-scattered
    auto  DDP when weights + gradients + optimizer state + activations fit one process (the pre-flight
          memory estimate), FSDP otherwise

Everything here runs on CPUs over gloo as well as on GPUs over NCCL, so every path is tested without a GPU.
The loop stays the same: FSDP2, like DDP, averages gradients over the processes, so the loss scaling,
the exact accumulation and the clipping (``clip_grad_norm_`` on DTensor gradients) carry over.

Also here: gradient checkpointing (``training.gradient_checkpointing``) and Liger kernels (``training.liger``),
the two switches that change how a model's blocks run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tuneforge.errors import ConfigError, TuneforgeError

log = logging.getLogger(__name__)

MODES = ("auto", "ddp", "fsdp")


# ---- choosing


def resolve_mode(setting: str, world: int, per_process_bytes: int | None, available: int | None) -> str:
    """``training.distributed`` as the run uses it: 'ddp' or 'fsdp'.

    ``per_process_bytes``: the memory estimate of one process holding the whole model (weights, gradients,
    optimizer state, activations, runtime); ``available``: the bytes one process may use (a GPU's memory,
    or the machine's RAM divided among its local processes). ``auto`` shards only when the whole model does
    not fit one process, or on one process never (there is nothing to shard over)."""
    if setting not in MODES:
        raise ConfigError(f"training.distributed: {setting!r} is not one of {', '.join(MODES)}.")
    if setting != "auto":
        return setting
    if world <= 1 or per_process_bytes is None or available is None:
        return "ddp"
    return "ddp" if per_process_bytes <= available else "fsdp"


# ---- wrapping


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks, each one FSDP unit (the longest ModuleList, as ``methods.common.find_layers``)."""
    from tuneforge.methods.common import find_layers

    try:
        return list(find_layers(model)[1])
    except ValueError:
        return []


def mixed_precision_policy(precision: str):
    """FSDP2's policy for ``training.precision``: bf16 compute and all-gathers with float32 gradient reduction
    (the sharded master weights and optimizer stay float32), or none for fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """Shard ``model`` in place over every process: one FSDP unit per transformer block, then the root (the
    embeddings, the final norm, the output layer or head, and anything outside the blocks). Frozen weights
    are sharded like trainable ones (they have no gradient; FSDP skips them in the reduce-scatter).

    Parameters become DTensors: build the optimizer after this, from ``model.parameters()``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise TuneforgeError(
            "training.distributed=fsdp needs several processes: start with `tuneforge train CONFIG --nproc N` "
            "(or --nnodes), or set training.distributed=ddp."
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    dtypes = {p.dtype for p in model.parameters()}
    if precision != "bf16" and len(dtypes) > 1:
        names = ", ".join(sorted(str(d) for d in dtypes))
        raise TuneforgeError(
            f"training.distributed=fsdp shards weights of one dtype per block, but this model holds {names} "
            f"weights: load it with model.dtype=float32 or train with training.precision=bf16."
        )
    policy = mixed_precision_policy(precision)
    blocks = transformer_blocks(model)
    for block in blocks:
        # the last block's weights are needed again at once by backward: keep them gathered
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=block is not blocks[-1])
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def regroup(param_groups: list[dict], before: dict[int, str], model: nn.Module) -> list[dict]:
    """The optimizer's parameter groups with every parameter replaced by its sharded counterpart.

    ``before``: id(parameter) -> name, taken before sharding (``fully_shard`` replaces each parameter)."""
    after = dict(model.named_parameters(remove_duplicate=False))
    groups = []
    for g in param_groups:
        params = [after[before[id(p)]] for p in g["params"]]
        groups.append({**g, "params": params})
    return groups


def names_by_id(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}


def grad_norm_value(norm: Any) -> float:
    """A float from what ``clip_grad_norm_`` returned (a DTensor under FSDP: reduced over the shards)."""
    from torch.distributed.tensor import DTensor

    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


# ---- state dicts


def _options(full: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict gathered onto the CPU of rank 0 (every rank must call it; the others get
    an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


@contextmanager
def gathered(model: nn.Module, full: dict[str, torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """``model`` as a plain transformers/PEFT model for as long as the block lasts: its DTensor parameters
    replaced by the gathered full tensors and its classes by the model's own, so ``save_pretrained`` writes
    the usual folder (the architecture named as always). Call on every rank; inside the block only rank 0's
    model holds the weights (``full``: a state dict already gathered). The model is sharded again after."""
    restore = unshard_for_saving(model, full)
    try:
        yield model
    finally:
        restore()


def unshard_for_saving(model: nn.Module, full: dict[str, torch.Tensor] | None = None):
    """Gather ``model``'s weights (every rank calls it) and put them, as plain tensors, into rank 0's model;
    returns the function that puts the shards back. For saving only: the model must not run a forward
    until the shards are back."""
    import torch.distributed as dist

    full = full_state_dict(model) if full is None else full
    if dist.get_rank() != 0:
        return lambda: None
    by_id = {id(p): full[n] for n, p in model.named_parameters(remove_duplicate=False) if n in full}
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    classes: list[tuple[nn.Module, type]] = []
    plain: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or id(p) not in by_id:
                continue
            if id(p) not in plain:  # tied weights stay tied
                plain[id(p)] = nn.Parameter(by_id[id(p)], requires_grad=p.requires_grad)
            swapped.append((module, name, p))
            module._parameters[name] = plain[id(p)]
        own = _unwrapped_class(type(module))
        if own is not type(module):
            classes.append((module, type(module)))
            module.__class__ = own

    def restore() -> None:
        for module, name, p in swapped:
            module._parameters[name] = p
        for module, cls in classes:
            module.__class__ = cls

    return restore


def _unwrapped_class(cls: type) -> type:
    """The model's own class behind FSDP2's ``FSDP<Class>`` subclass (the class itself when not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    if issubclass(cls, FSDPModule):
        return next(b for b in cls.__bases__ if b is not FSDPModule)
    return cls


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def sharded_state(model: nn.Module, optimizer) -> dict[str, Any]:
    """This rank's shards of the model and optimizer states, for ``torch.distributed.checkpoint``."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, _inner(optimizer), options=_options(False))
    return {"model": weights, "optimizer": optim}


def load_sharded_state(model: nn.Module, optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(
        model,
        _inner(optimizer),
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_options(False),
    )


# ---- block-level switches: gradient checkpointing, Liger kernels


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block's activations in backward instead of storing them (non-reentrant
    ``torch.utils.checkpoint`` through transformers): the stored activations shrink to each block's input,
    the gradients are the same, a step costs about one more forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"training.gradient_checkpointing: {type(base).__name__} does not support gradient checkpointing; "
            f"set training.gradient_checkpointing=false (or lower training.max_batch_tokens to save memory)."
        )
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers' newer name for the same switch
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(base.config, "use_cache", False):
        base.config.use_cache = False  # a cache is never used in training, and checkpointing refuses it


def apply_liger(model: nn.Module, device: torch.device) -> str:
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, ...) patched into the model's blocks in place; the loss
    stays tuneforge's. Needs a CUDA GPU and ``pip install liger-kernel``. Returns the model type patched."""
    if device.type != "cuda":
        raise ConfigError(
            "training.liger: Liger's kernels are Triton kernels that need a CUDA GPU; this run is on "
            f"{device.type}. Set training.liger=false (or train on a GPU)."
        )
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise ConfigError(
            "training.liger: liger-kernel is not installed: `pip install liger-kernel`, or set "
            "training.liger=false."
        ) from None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = getattr(base.config, "model_type", "?")
    try:
        _apply_liger_kernel_to_instance(model=base, cross_entropy=False, fused_linear_cross_entropy=False)
    except Exception as e:  # noqa: BLE001 - an unsupported architecture says so
        raise ConfigError(
            f"training.liger: Liger has no kernels for {kind} models ({e}); set training.liger=false."
        ) from None
    return kind


def setup_blocks(model: nn.Module, training_cfg, device: torch.device) -> list[str]:
    """Apply the block-level switches of ``training`` to ``model`` (before the memory estimate measures it);
    returns what was applied, for the log."""
    applied = []
    if training_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
        applied.append("gradient checkpointing")
    if getattr(training_cfg, "liger", False):
        applied.append(f"Liger kernels ({apply_liger(model, device)})")
    return applied


def choose_for_estimate(training_cfg, est, world: int, model: nn.Module):
    """Resolve ``training.distributed`` (in place on ``training_cfg``) from the pre-flight memory estimate
    ``est`` (a ``train.memory.MemoryEstimate`` of one process holding the whole model) and return the
    estimate as the run will use memory: with FSDP's shards counted when it shards."""
    from dataclasses import replace

    from tuneforge.train.memory import largest_block_bytes

    local = max(1, est.processes)  # processes sharing this machine's RAM (CPU) or 1 (one GPU each)
    available = None if est.available is None else est.available // local
    mode = resolve_mode(training_cfg.distributed, world, est.per_process, available)
    training_cfg.distributed = mode
    if mode == "fsdp" and world > 1:
        return replace(est, shards=world, block=largest_block_bytes(model))
    return est
