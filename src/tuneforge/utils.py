"""Small shared helpers: console, progress bar, memory, quiet third-party logging."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# messages to a terminal wrap at its width; to a log file or pipe each stays on one line (grep finds it)
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
# tables and results a user may pipe (`tuneforge models | grep ...`): wide when not a terminal, so nothing is cut
stdout = Console(width=None if sys.stdout.isatty() else 1000)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def bf16_native(cuda: bool) -> bool:
    """Whether the device multiplies bf16 matrices natively: a GPU that supports bf16, or a CPU with
    oneDNN's bf16 kernels (AMX / AVX512-BF16): there bf16 matmuls run about 2x fp32."""
    import torch

    if cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_LIBC = None


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    PyTorch's CPU tensors come from ``malloc``. glibc keeps the blocks a training step freed (its mmap
    threshold rises to the size of the tensors freed, so later ones come from the heap) and reuses them next
    step, which is fast; but a phase with other shapes, such as an evaluation pass, then grows the heap
    beyond the training steps' peak. Called between phases (before evaluating), where it costs one pass
    over the heap."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        _LIBC = False


# oneDNN (bf16 matmuls on CPU) keeps a compiled kernel for every matmul shape it has seen, in two caches
# of 1,024 entries each. Training with dynamic padding sees a new shape at almost every step, so by
# default those caches grow for the whole run: ~16 MB per new sequence length on SmolLM2-135M, 0.4 GB
# after 30 steps. 128 entries hold several micro-batches' shapes (one micro-batch uses ~40), measured
# at the same speed.
KERNEL_CACHE_ENTRIES = 128


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> None:
    """Cap oneDNN's kernel caches (ONEDNN_PRIMITIVE_CACHE_CAPACITY, LRU_CACHE_CAPACITY) unless the user set
    them. Read by oneDNN when it first runs, so this must happen before the first bf16 matmul: tuneforge
    calls it when imported."""
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(var, str(entries))


def quiet_libraries() -> None:
    """Silence transformers/datasets load reports and their progress bars; we show our own."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present in practice
        pass
    for name in ("transformers", "peft", "accelerate", "datasets", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    # Harmless library chatter: PEFT calls a renamed transformers method, and generation passes position
    # ids that PEFT's prompt/prefix tuning ignores.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")


def text_lines(path: str, what: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, or of standard input for '-' (prompts or texts, one per line).
    A named pipe, socket or device is refused, not read: a pipe with no writer would wait forever."""
    import stat
    from pathlib import Path

    from tuneforge.errors import TuneforgeError

    if path == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise TuneforgeError(
            f"--file {path}: not a regular file (a named pipe, socket or device); save the {what}s to a file, "
            f"or pipe them to standard input with --file -."
        )
    if not p.is_file():
        state = "is a folder" if p.is_dir() else "not found"
        raise TuneforgeError(
            f"--file {path}: {state}; give a text file, one {what} per line (or - for standard input)."
        )
    try:
        return [line for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise TuneforgeError(f"--file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8.") from None


class _Bar:
    def __init__(self, progress: Progress | None, task_id, total: int):
        self.progress, self.task_id, self.total = progress, task_id, total
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, rate: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=step, loss=f"{loss:.4f}", rate=rate)

    def note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)


_SHOWING = [0]  # bars on screen now (rich shows one live display at a time)


def new_progress(*middle, transient: bool = True) -> Progress:
    """tuneforge's progress display: description, bar, count, ``middle`` columns, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *middle,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def _bars_enabled() -> bool:
    return not os.environ.get("TUNEFORGE_NO_PROGRESS") and os.environ.get("RANK", "0") == "0"


def tracked(items, description: str, total: int | None = None, unit: str = "batches"):
    """Iterate over ``items`` with a rich bar (count, elapsed, ETA) for long work outside the training bar:
    evaluation, sample answers, probes. Plain iteration when another bar is showing (validation inside
    training), on other processes than the first, or with TUNEFORGE_NO_PROGRESS."""
    if _SHOWING[0] or not _bars_enabled():
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    progress = new_progress(TextColumn(unit))
    _SHOWING[0] += 1
    try:
        with progress:
            task_id = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task_id)
    finally:
        _SHOWING[0] -= 1


@contextmanager
def progress_bar(total: int, enabled: bool = True, initial: int = 0, description: str = "train"):
    """A rich progress bar with step count, loss, elapsed time and ETA (only on the main process)."""
    if not enabled or not _bars_enabled() or _SHOWING[0]:
        yield _Bar(None, None, total)
        return
    progress = new_progress(
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"), transient=False
    )
    _SHOWING[0] += 1
    try:
        with progress:
            task_id = progress.add_task(description, total=total, completed=initial, loss="-", rate="")
            yield _Bar(progress, task_id, total)
    finally:
        _SHOWING[0] -= 1
