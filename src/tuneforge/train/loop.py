"""The training loop: ours, short and visible, on accelerate (devices, mixed precision, DDP).

A task supplies the examples, ``collate`` (indices -> batch), ``loss`` (model, batch -> summed loss
and the number of items it sums over) and ``evaluate``. Each micro-batch's summed loss is divided by
the item count of the whole optimizer step (all micro-batches, all processes), so gradient
accumulation is exactly a larger batch, for examples and for tokens alike.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tuneforge.data.batching import StepSampler
from tuneforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tuneforge.train.compile import compile_blocks, should_compile
from tuneforge.train.early_stopping import EarlyStopping
from tuneforge.train.memory import FALLBACK_BATCH_TOKENS
from tuneforge.train.optim import build_optimizer, build_scheduler, warmup_steps
from tuneforge.utils import console, peak_rss_mb, progress_bar

log = logging.getLogger(__name__)


class Task(Protocol):
    lengths: list[int]  # length of every training example (for grouping and token counts)
    counts: list[int]  # items each training example adds to the loss (1 per example, or its loss tokens)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]: ...
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]: ...
    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]: ...
    def save_model(self, model: torch.nn.Module, out: Path) -> None: ...
    # used around the loop: the recipe records the data summary, the run's test evaluation after training
    def data_summary(self) -> dict: ...
    def full_evaluation(self, model: torch.nn.Module, split: str = "test", baseline: bool = True) -> dict: ...


@dataclass
class FitResult:
    steps: int
    best_step: int | None
    best_metric: float | None
    stopped_early: bool
    train_seconds: float
    examples_seen: int
    tokens_seen: int
    compiled_blocks: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _count_padding(window: dict, batch: dict) -> None:
    """Add a micro-batch's positions and real tokens (this process) to the log window: the logs report the
    share of computed positions that were padding."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if ids is None or mask is None or mask.shape != ids.shape:
        return
    window["padded"] += ids.numel()
    window["real"] += int(mask.sum())


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _log(run_dir: Path, record: dict[str, Any], main: bool) -> None:
    if main:
        with open(run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, forget metrics logged after the checkpoint (they will be logged again)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        keep = [
            line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step
        ]
        path.write_text("".join(line + "\n" for line in keep))


def fit(
    task: Task,
    prepared,
    cfg,
    run_dir: Path,
    accelerator,
    resume: bool = False,
    metric: str = "loss",
    greater_is_better: bool = False,
) -> FitResult:
    t = cfg.training
    model = prepared.model
    main = accelerator.is_main_process
    sampler = StepSampler(
        task.lengths,
        t.batch_size,
        t.grad_accum,
        accelerator.num_processes,
        accelerator.process_index,
        t.seed,
        t.group_by_length,
        # "auto" is resolved by the pre-flight memory estimate; a loop started without it takes the fallback
        max_batch_tokens=FALLBACK_BATCH_TOKENS if t.max_batch_tokens == "auto" else t.max_batch_tokens,
    )
    total = sampler.total_steps(t.epochs, t.max_steps)
    optimizer = build_optimizer(prepared.param_groups, t.lr)
    scheduler = build_scheduler(
        optimizer, t.scheduler, warmup_steps(total, t.warmup_ratio, t.warmup_steps), total
    )
    trained_names = {id(p) for g in prepared.param_groups for p in g["params"]}
    trained_keys = [n for n, p in model.named_parameters() if id(p) in trained_names]
    compiled = 0
    if should_compile(t.compile, model, total, accelerator.device, cfg.task):
        compiled = compile_blocks(model)
        if main:
            console.print(
                f"[bold]torch.compile:[/bold] {compiled} transformer blocks, one shared graph (the first "
                f"compiled run of a model spends longer in its first steps; kernels are cached for later runs)"
            )
    model = accelerator.prepare(model)
    raw = accelerator.unwrap_model(model)
    eval_every = t.eval_every or sampler.steps_per_epoch
    save_every = t.save_every or eval_every
    stopper = EarlyStopping(t.early_stopping_patience, greater_is_better)
    state: dict[str, Any] = {"step": 0, "examples": 0, "tokens": 0, "seconds": 0.0}

    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        state = load_checkpoint(ckpt, raw, optimizer, scheduler)
        stopper.load_state_dict(state.get("early_stopping", {}))
        _truncate_metrics(run_dir, state["step"])
        if main:
            log.info("resumed from %s (step %d of %d)", ckpt.name, state["step"], total)

    def checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        if main:
            weights = {
                k: v.detach().cpu().clone().contiguous()
                for k, v in raw.state_dict().items()
                if k in set(trained_keys)
            }
            save_checkpoint(
                run_dir,
                step,
                raw,
                optimizer,
                scheduler,
                {**state, "early_stopping": stopper.state_dict()},
                t.keep_checkpoints,
                weights,
            )
        accelerator.wait_for_everyone()

    step = state["step"]
    stopped_early = False
    start = time.perf_counter() - state["seconds"]
    new_window = lambda: {"loss": 0.0, "items": 0, "examples": 0, "tokens": 0, "real": 0, "padded": 0}  # noqa: E731
    window = {**new_window(), "t0": time.perf_counter()}
    with progress_bar(total, main, initial=step) as bar:
        while step < total:
            epoch, in_epoch = sampler.position(step)
            if prepared.on_step is not None:
                prepared.on_step(step, epoch)
            step_indices = sampler.epoch_steps(epoch)[in_epoch]
            n_items = sum(
                task.counts[i] for i in step_indices
            )  # the loss of the whole step is a mean over these
            micro = sampler.micro_batches(step_indices)
            model.train()
            for k, idx in enumerate(micro):
                sync = nullcontext() if k == len(micro) - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    batch = task.collate(idx)
                    _count_padding(window, batch)
                    batch = {key: v.to(accelerator.device) for key, v in batch.items()}
                    loss_sum, _ = task.loss(model, batch)
                    # DDP averages gradients over processes, so scale by their number.
                    accelerator.backward(loss_sum * (accelerator.num_processes / n_items))
                window["loss"] += loss_sum.detach().float().item()
            grad_norm = None
            if t.max_grad_norm is not None:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window["items"] += n_items
            window["examples"] += len(step_indices)
            window["tokens"] += sum(task.lengths[i] for i in step_indices)
            state.update(
                step=step,
                examples=state["examples"] + len(step_indices),
                tokens=state["tokens"] + sum(task.lengths[i] for i in step_indices),
                seconds=time.perf_counter() - start,
            )
            loss_now = window["loss"] * accelerator.num_processes / max(1, window["items"])
            bar.update(step, loss=loss_now)

            if step % t.log_every == 0 or step == total:
                dt = max(1e-9, time.perf_counter() - window["t0"])
                _log(
                    run_dir,
                    {
                        "step": step,
                        "epoch": round(step / sampler.steps_per_epoch, 4),
                        "split": "train",
                        "loss": round(loss_now, 6),
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "examples_per_s": round(window["examples"] / dt, 2),
                        "tokens_per_s": round(window["tokens"] / dt, 1),
                        "tokens": window["tokens"],
                        "padding": _share(window["padded"] - window["real"], window["padded"]),
                        "seconds": round(dt, 4),
                        # task-specific training metrics since the last log (rewards, margins, KL, ...)
                        **(task.pop_train_metrics() if hasattr(task, "pop_train_metrics") else {}),
                    },
                    main,
                )
                window = {**new_window(), "t0": time.perf_counter()}

            if step % eval_every == 0 or step == total:
                eval_start = time.perf_counter()
                with (
                    accelerator.autocast()
                ):  # the precision training runs in (adapter runs may hold a bf16 base)
                    metrics = task.evaluate(raw, "validation")
                window["t0"] += (
                    time.perf_counter() - eval_start
                )  # keep evaluation out of the throughput figures
                if metrics:
                    value = metrics.get(metric, metrics.get("loss"))
                    improved = stopper.update(value, step)
                    _log(
                        run_dir,
                        {
                            "step": step,
                            "epoch": round(step / sampler.steps_per_epoch, 4),
                            "split": "validation",
                            **metrics,
                        },
                        main,
                    )
                    bar.note(
                        f"step {step}: validation "
                        + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
                    )
                    if improved and main:
                        task.save_model(raw, run_dir / "best")
                    if stopper.should_stop:
                        stopped_early = True
                        bar.note(
                            f"early stopping at step {step}: no {metric} improvement in "
                            f"{t.early_stopping_patience} evaluations (best at step {stopper.best_step})"
                        )
            if step % save_every == 0 or step == total or stopped_early:
                checkpoint(step)
            if stopped_early:
                break
    return FitResult(
        step,
        stopper.best_step,
        stopper.best,
        stopped_early,
        state["seconds"],
        state["examples"],
        state["tokens"],
        compiled,
    )


def peak_memory_mb() -> float:
    return peak_rss_mb()


__all__ = ["FitResult", "Task", "fit", "math"]
