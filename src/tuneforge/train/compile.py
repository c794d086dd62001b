"""Speed choices made once per run: torch.compile of the transformer blocks, and the attention kernel.

Compilation is regional: each repeated block (decoder/encoder layer) is compiled in place with
dynamic shapes, so every layer shares one compiled graph (forward and backward), variable sequence
lengths do not recompile, and the module tree, ``state_dict`` and saved folders stay exactly those of
the plain model. Inductor fuses the elementwise work around the matmuls (norms, rotary embeddings,
activations, the LoRA scale-and-add) and recomputes cheap values in the backward pass instead of
storing them, which also lowers peak memory. Compiled kernels are cached on disk
(``/tmp/torchinductor_<user>``): the first compiled run of a model spends tens of seconds compiling,
later runs a few. The process-wide settings this needs (``compile_settings``) hold for one run only.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)

MIN_BLOCK_PARAMETERS = 5_000_000  # below this the compile time is not won back (tiny test models)
MIN_STEPS = 20
# A task that samples inside its steps (GRPO) compiles its update under auto from this many steps: on the
# shipped SmolLM2-135M GRPO config its first compile takes ~75 s here (cold disk cache) and saves ~1 s a step
SAMPLING_MIN_STEPS = 100
EAGER_ATTENTION_MAX_TOKENS = 1024
# torch's partitioner decides what the compiled backward recomputes instead of storing. At 0.7 of its
# speed-first choice it recomputes the cheap elementwise values (norms, activations, casts): measured on
# SmolLM2-135M LoRA, 36% less activation memory at the same step time (0.5: 48% less, 9% slower).
ACTIVATION_MEMORY_BUDGET = 0.7


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's layers (``methods.common.find_layers``), or none when it has no layer list."""
    from tuneforge.methods.common import find_layers

    try:
        return list(find_layers(model)[1])
    except ValueError:
        return []


def can_compile(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can build kernels here, and why not."""
    if sys.platform == "win32":
        return False, "torch.compile is not supported on Windows"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "triton is not installed"
        return True, ""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return False, "no C++ compiler on PATH (install g++)"
    return True, ""


def should_compile(
    setting: str | bool,
    model: torch.nn.Module,
    steps: int,
    device: torch.device,
    samples_during_training: bool = False,
) -> bool:
    """training.compile: true, false, or auto (compile when the run is long and the model big enough).

    A task that samples during training (GRPO) decodes eagerly whatever is compiled (the engine's steps run
    under ``force_eager``: each token meets a new cache length); auto compiles its update only for runs of
    ``SAMPLING_MIN_STEPS`` steps or more, where the longer first compile is won back.
    """
    if setting in (False, "false"):
        return False
    if setting == "auto" and samples_during_training and steps < SAMPLING_MIN_STEPS:
        return False
    ok, why = can_compile(device)
    if setting in (True, "true"):
        if not ok:
            log.warning("training.compile=true but %s: running without compilation", why)
        return ok
    blocks = repeated_blocks(model)
    size = sum(p.numel() for b in blocks for p in b.parameters())
    # Measured on CPU: compiled blocks are faster when the base is frozen (adapter methods: 1.2-1.4x on
    # SmolLM2 LoRA) but slower when the blocks' own weights train (MiniLM full fine-tuning: 0.8x), where
    # inductor's weight-gradient kernels lose to oneDNN's. auto compiles the first case only.
    frozen = not any(
        p.requires_grad
        for b in blocks
        for n, p in b.named_parameters()
        if "lora_" not in n and "ia3_" not in n
    )
    return ok and frozen and size >= MIN_BLOCK_PARAMETERS and steps >= MIN_STEPS


@contextmanager
def compile_settings(
    memory_budget: float = ACTIVATION_MEMORY_BUDGET, suppress_errors: bool = True, cache_size_limit: int = 64
) -> Iterator[None]:
    """torch's process-wide compile settings for one run, restored on exit (a notebook's next run starts clean).

    Sets dynamo's ``suppress_errors`` (a kernel that fails to build runs uncompiled instead of crashing), a
    recompile cache of at least ``cache_size_limit`` entries per block (one per variant: training and
    evaluation, first layer without an input gradient, batch of one) and the partitioner's activation memory
    budget, unless the user chose their own budget (anything but torch's default of 1.0).
    Compiled blocks (re)compile lazily on their first call with each new variant, so everything that calls
    them (training, evaluation, probes) should run inside.
    """
    import torch._dynamo
    import torch._functorch.config as functorch_config

    dynamo = torch._dynamo.config
    saved = (dynamo.suppress_errors, dynamo.cache_size_limit, functorch_config.activation_memory_budget)
    dynamo.suppress_errors = suppress_errors
    dynamo.cache_size_limit = max(dynamo.cache_size_limit, cache_size_limit)
    if functorch_config.activation_memory_budget == 1.0:  # torch's default: leave a user's own choice alone
        functorch_config.activation_memory_budget = memory_budget
    try:
        yield
    finally:
        dynamo.suppress_errors, dynamo.cache_size_limit, functorch_config.activation_memory_budget = saved


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile each repeated block in place (one shared graph, dynamic shapes); returns how many.

    Changes no process-wide setting: run the model inside ``compile_settings()``.
    """
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def choose_attention(setting: str, model: torch.nn.Module, longest: int, device: torch.device) -> str | None:
    """model.attn_implementation: auto picks tuneforge's attention (``models/attention.py``: eager
    attention without repeated keys/values, long queries recomputed in backward) for CPU training on
    sequences up to 1,024 tokens, where eager attention's backward is faster than SDPA's CPU flash
    kernel, and leaves the model's default (SDPA) otherwise. Returns the implementation set, or None
    when unchanged."""
    if setting == "auto":
        if device.type != "cpu" or longest > EAGER_ATTENTION_MAX_TOKENS:
            return None
        setting = "tuneforge"
    if setting == "tuneforge":
        from tuneforge.models.attention import register

        register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "set_attn_implementation"):
        return None
    if getattr(base.config, "_attn_implementation", None) == setting:
        return setting
    try:
        base.set_attn_implementation(setting)
    except (ValueError, ImportError) as e:
        if setting not in ("eager", "tuneforge"):
            raise
        log.info("keeping the model's attention (%s)", e)
        return None
    return setting
