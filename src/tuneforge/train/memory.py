"""Pre-flight memory estimate: weights, trainable state, activations and logits at the run's largest micro-batch.

Activations are measured, not guessed from a formula: three short probe forwards of the prepared model
(under the run's precision, in training mode) count the bytes that autograd keeps for the backward
pass (``saved_tensors_hooks``, each storage once, parameters excluded). Per sequence of length T those
bytes are ``a + b*T + c*T^2`` (``c`` is non-zero where attention keeps its T x T probabilities), so
three lengths fix the curve and the run's largest micro-batch follows from it. Weights, gradients
and the AdamW moments are counted from the parameters; the output layer's float32 logits (plus their
log-softmax and gradient) are added for language-model tasks. On a CPU the process's resident memory
now (Python, libraries, the loaded weights) is the starting point; on a GPU the weights are, plus the CUDA
context (the driver's memory outside PyTorch's allocator, measured where a context exists) and the caching
allocator's reserve (blocks it holds beyond the live tensors: ``CUDA_ALLOCATOR_RESERVE`` of them).

Under FSDP (``shards`` > 1) each process holds 1/N of the weights, gradients and optimizer state, plus the
gathered weights of the two blocks in flight; activations are per process as under DDP. Gradient
checkpointing, when the model has it switched on, is measured by the probe itself (it stores block inputs).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tuneforge.config import PEFT_METHODS

GB = 1024**3


@dataclass
class MemoryEstimate:
    device: str
    weights: int  # bytes of parameters and buffers
    gradients: int  # trainable parameters' gradients
    optimizer: int  # AdamW's two moments
    activations: int  # saved for backward at the largest micro-batch
    logits: int  # output-layer logits of the loss positions (language models)
    runtime: int  # Python, libraries and allocator (CPU: resident memory besides the weights)
    micro_batch: tuple[int, int]  # (sequences, tokens each) of the largest micro-batch
    batch_tokens: int | None  # the token cap per micro-batch the run uses (max_batch_tokens resolved)
    available: int | None  # bytes this run may use (CPU: available RAM; GPU: device memory)
    processes: int = 1  # processes sharing this machine's RAM (DDP on CPU)
    shards: int = 1  # FSDP: processes the weights, gradients and optimizer state are sharded over
    block: int = 0  # FSDP: bytes of the largest transformer block (gathered whole while it runs)

    @property
    def per_process(self) -> int:
        """Bytes one process needs (its shard of the model state under FSDP)."""
        state = self.weights + self.gradients + self.optimizer
        if self.shards > 1:
            state = state // self.shards + 2 * self.block  # this block and the next one's prefetch
        return state + self.activations + self.logits + self.runtime

    @property
    def total(self) -> int:
        return self.per_process * self.processes

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def to_dict(self) -> dict:
        out = {
            k: (round(v / 2**20, 1) if isinstance(v, int) and k not in ("processes", "batch_tokens") else v)
            for k, v in asdict(self).items()
        }
        out["total"] = round(self.total / 2**20, 1)
        out["unit"] = "MB"
        return out

    def line(self) -> str:
        n, t = self.micro_batch
        parts = [
            f"weights {self.weights / GB:.2f}",
            f"gradients+optimizer {(self.gradients + self.optimizer) / GB:.2f}",
            f"activations {self.activations / GB:.2f} ({n} x {t} tokens"
            + (f"; micro-batches up to {self.batch_tokens} tokens)" if self.batch_tokens else ")"),
        ]
        if self.logits:
            parts.append(f"logits {self.logits / GB:.2f}")
        parts.append(f"runtime {self.runtime / GB:.2f}")
        avail = f" of {self.available / GB:.1f} GB available" if self.available else ""
        procs = f" ({self.processes} processes)" if self.processes > 1 else ""
        if self.shards > 1:
            procs += f", weights/gradients/optimizer sharded over {self.shards} (FSDP)"
        return f"~{self.total / GB:.2f} GB peak{procs}{avail}: " + ", ".join(parts) + " (GB)"


def saved_bytes(model: torch.nn.Module, inputs: dict, autocast) -> int:
    """Bytes autograd keeps for backward after one training-mode forward of ``inputs``."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    held: list[torch.Tensor] = []  # alive until the probe ends, so no storage address is reused mid-count

    def pack(t: torch.Tensor) -> None:
        # Count and hold here, hand autograd nothing (the probe never runs backward). autograd keeps this
        # hook with every saved tensor, so ``held`` is emptied when the probe ends: a saved output that
        # stayed reachable from its own graph would be a cycle through C++ that Python's garbage collector
        # cannot see, and would keep the probes' activations for the whole run.
        nonlocal total
        try:
            ptr = t.untyped_storage().data_ptr()
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return None
        held.append(t)
        if ptr and ptr not in seen and t.data_ptr() not in params:
            seen.add(ptr)
            total += size
        return None

    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), autocast(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            out = model(**inputs)
            del out
    finally:
        held.clear()
        model.train(was_training)
    return total


def _probe_body(model: torch.nn.Module, language_model: bool) -> torch.nn.Module:
    """What to probe: for a causal LM the transformer body (its logits are counted apart), else the model."""
    if language_model:
        from tuneforge.train.lm_loss import _body_and_head

        parts = _body_and_head(model)
        if parts is not None:
            return parts[0]
    return model


def activation_curve(
    model, language_model: bool, device, autocast, max_len: int
) -> tuple[float, float, float]:
    """(a, b, c) of bytes(T) = a + b*T + c*T^2 for one sequence of T tokens, from three probe lengths."""
    body = _probe_body(model, language_model)
    config = getattr(model, "config", None) or getattr(getattr(model, "base_model", None), "config", None)
    vocab = int(getattr(config, "vocab_size", 1000) or 1000)
    top = max(12, min(64, max_len))
    lengths = [top // 4, top // 2, top]
    ys = []
    g = torch.Generator().manual_seed(0)
    for t in lengths:
        ids = torch.randint(3, max(4, vocab - 1), (1, t), generator=g).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(config, "is_encoder_decoder", False):  # seq2seq: a target as long as the source
            inputs["decoder_input_ids"] = ids
        if body is not model:
            inputs["use_cache"] = False
        ys.append(saved_bytes(body, inputs, autocast))
    (t1, t2, t3), (y1, y2, y3) = lengths, ys
    # exact quadratic through the three points (Newton's divided differences)
    d12, d23 = (y2 - y1) / (t2 - t1), (y3 - y2) / (t3 - t2)
    c = max(0.0, (d23 - d12) / (t3 - t1))
    b = max(0.0, d12 - c * (t1 + t2))
    a = max(0.0, y1 - b * t1 - c * t1 * t1)
    return a, b, c


def largest_micro_batch(lengths: list[int], batch_size: int, max_batch_tokens: int | None) -> tuple[int, int]:
    """(sequences, padded length) of the micro-batch the estimate sizes: the longest sequence with as many
    others as ``max_batch_tokens`` lets share its width (the sampler never puts more beside it)."""
    longest = max(lengths) if lengths else 1
    n = batch_size
    if max_batch_tokens:
        n = max(1, min(batch_size, max_batch_tokens // longest))
    return min(n, max(1, len(lengths))), longest


CPU_ACTIVATION_BUDGET = 512 * 2**20
FALLBACK_BATCH_TOKENS = 1024


def activation_budget(device: torch.device) -> int:
    """Activation bytes one micro-batch may take under max_batch_tokens=auto: 512 MB on a CPU (larger
    micro-batches run no faster there, the matmuls are already at full efficiency) and a quarter of
    a GPU (where larger matmuls do pay)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1] // 4
    return CPU_ACTIVATION_BUDGET


def auto_batch_tokens(curve: tuple[float, float, float], lengths: list[int], budget: int) -> int:
    """The largest padded micro-batch (tokens) whose activations stay under ``budget``, at the data's
    median length (a longer example still trains, alone in its micro-batch)."""
    a, b, c = curve
    typical = sorted(lengths)[len(lengths) // 2] if lengths else 1
    per_token = b + c * typical
    if per_token <= 0:
        return 1 << 20
    return max(64, int((budget - a) // per_token))


def resolve_batch_tokens(setting, curve, lengths: list[int], device: torch.device) -> int | None:
    """training.max_batch_tokens as the sampler takes it: a number or None."""
    if setting != "auto":
        return setting
    if curve is None:
        return FALLBACK_BATCH_TOKENS
    return auto_batch_tokens(curve, lengths, activation_budget(device))


def available_bytes(device: torch.device) -> int | None:
    """Memory this process may still use: free RAM (and the cgroup limit) on CPU, total memory on a GPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail or int(limit), int(limit) - used)
    except (OSError, ValueError):
        pass
    return None if avail is None else avail + current_rss()


def current_rss() -> int:
    """Resident memory of this process now (bytes)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        from tuneforge.utils import peak_rss_mb

        return int(peak_rss_mb() * 2**20)


def estimate(
    model: torch.nn.Module,
    lengths: list[int],
    cfg,
    device: torch.device,
    autocast,
    processes: int = 1,
    language_model: bool = False,
    chunked_loss: bool = False,
) -> MemoryEstimate:
    """The peak memory of training ``model`` as ``cfg`` says, before the first step.

    ``language_model``: the output layer's logits are counted apart from the body's activations;
    ``chunked_loss``: the loss holds one chunk of them at a time (``train/lm_loss.py``).
    """
    t = cfg.training
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = 2 * sum(p.numel() * 4 for p in trainable)  # AdamW: exp_avg and exp_avg_sq in fp32
    probe_device = next(model.parameters()).device
    longest = max(lengths) if lengths else 1
    a, b, c = activation_curve(model, language_model, probe_device, autocast, longest)
    batch_tokens = resolve_batch_tokens(t.max_batch_tokens, (a, b, c), lengths, device)
    n, length = largest_micro_batch(lengths, t.batch_size, batch_tokens)
    activations = int(a + n * (b * length + c * length * length))
    logits = 0
    if language_model:
        config = getattr(model, "config", None)
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if chunked_loss:
            from tuneforge.train.lm_loss import ce_chunk_rows

            # the chunked loss holds one chunk of float32 logits and its softmax gradient at a time
            logits = min(n * length, ce_chunk_rows(vocab)) * vocab * (4 + 2)
        else:
            # float32 logits of every position, their log-softmax and their gradient
            logits = n * length * vocab * 4 * 3
    if device.type == "cuda":
        runtime = cuda_runtime_bytes(device, weights + gradients + optimizer + activations + logits)
    else:
        runtime = max(0, current_rss() - weights)
    return MemoryEstimate(
        device=device.type,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        logits=logits,
        runtime=runtime,
        micro_batch=(n, length),
        batch_tokens=batch_tokens,
        available=available_bytes(device),
        processes=processes if device.type == "cpu" else 1,
    )


CUDA_CONTEXT_DEFAULT = 600 * 2**20  # a CUDA context with cuBLAS/cuDNN loaded, before one is created
CUDA_ALLOCATOR_RESERVE = 0.10  # the caching allocator's cached-but-free blocks, as a share of live tensors


def cuda_runtime_bytes(device: torch.device, tensor_bytes: int) -> int:
    """Memory a GPU run needs besides its tensors: the CUDA context (measured as the device's used memory
    outside PyTorch's allocator when this process has a context, else ``CUDA_CONTEXT_DEFAULT``) and the
    caching allocator's reserve (``CUDA_ALLOCATOR_RESERVE`` of the live tensors)."""
    context = CUDA_CONTEXT_DEFAULT
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info(device)
        outside = total - free - torch.cuda.memory_reserved(device)  # context (and other processes' use)
        context = max(context // 2, outside)
    return int(context + CUDA_ALLOCATOR_RESERVE * tensor_bytes)


def largest_block_bytes(model: torch.nn.Module) -> int:
    """Bytes of the largest transformer block's parameters (FSDP gathers one block whole at a time)."""
    from tuneforge.methods.common import find_layers

    try:
        _, layers = find_layers(model)
    except ValueError:
        return 0
    return max(sum(p.numel() * p.element_size() for p in block.parameters()) for block in layers)


def too_big_message(est: MemoryEstimate, cfg) -> str:
    n, length = est.micro_batch
    fixes = [
        f"training.max_batch_tokens={max(64, (n * length) // 2)} (smaller micro-batches, same gradient)",
        "data.max_length=... (shorter sequences)",
    ]
    if cfg.method.name not in PEFT_METHODS:
        fixes.append(
            "method.name=lora (trains a small adapter: no gradients or optimizer state for the base)"
        )
    if cfg.training.precision == "fp32":
        fixes.append("training.precision=auto (bf16 where supported)")
    return (
        f"memory estimate: this run needs about {est.total / GB:.1f} GB but {est.available / GB:.1f} GB are "
        f"available ({est.line()}). Try "
        + "; ".join(fixes)
        + ", or set training.memory_check=false to start anyway."
    )
