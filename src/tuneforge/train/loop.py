"""The training loop: ours, short and visible, on accelerate (devices, mixed precision, DDP) or FSDP2.

A task (``tasks.base.Task``) supplies the examples, ``collate`` (indices -> batch), ``loss`` (model, batch ->
summed loss and the number of items it sums over) and ``evaluate``. Each micro-batch's summed loss is
divided by the item count of the whole optimizer step (all micro-batches, all processes), so gradient
accumulation is exactly a larger batch, for examples and for tokens alike.

``fit`` is the step, top to bottom; logging, evaluation with early stopping, and checkpoints are the helpers
below it. With several processes every decision (early stopping, a stop signal) is taken once and shared,
logged figures are sums over all processes, and each process's RNG state is saved. Under
``training.distributed: fsdp`` (``train/distributed.py``) the model is sharded before the optimizer is built,
every process runs validation (the forward gathers each block from all of them), checkpoints are sharded and
the final weights are gathered onto rank 0 for saving.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.data.batching import StepSampler
from tuneforge.errors import TuneforgeError
from tuneforge.models.save import MODEL_STEP_FILE
from tuneforge.threads import rebalance
from tuneforge.train.checkpoint import (
    find_resumable,
    load_checkpoint,
    load_sharded_checkpoint,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from tuneforge.train.compile import compile_blocks, compile_settings, should_compile
from tuneforge.train.distributed import (
    gathered,
    grad_norm_value,
    names_by_id,
    regroup,
    shard_model,
    unshard_for_saving,
)
from tuneforge.train.early_stopping import EarlyStopping
from tuneforge.train.memory import FALLBACK_BATCH_TOKENS
from tuneforge.train.optim import build_optimizer, build_scheduler, warmup_steps
from tuneforge.train.runfolder import MetricsLog
from tuneforge.train.signals import GracefulStop
from tuneforge.utils import console, progress_bar, release_free_memory

log = logging.getLogger(__name__)


class Interrupted(TuneforgeError):
    """Training stopped by a signal after saving a checkpoint (or before the first step)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


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
    model: Any = None  # the trained model (wrapped for DDP)


def fit(task, prepared, cfg, run_dir: Path, accelerator, resume: bool = False, metric=None) -> FitResult:
    """Train ``prepared.model`` on ``task`` as ``cfg.training`` says; ``metric`` (a ``tasks.base.Metric``)
    picks the best step and drives early stopping."""
    t, main = cfg.training, accelerator.is_main_process
    metric = metric or task.default_metric()
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
    fsdp = accelerator.num_processes > 1 and getattr(t, "distributed", "ddp") == "fsdp"
    with compile_settings():
        compiled = 0
        if should_compile(t.compile, prepared.model, total, accelerator.device, task.samples_during_training):
            compiled = compile_blocks(prepared.model)
            if main:
                console.print(
                    f"[bold]torch.compile:[/bold] {compiled} transformer blocks, one shared graph (the first "
                    f"compiled run of a model spends longer in its first steps; kernels are cached for later runs)"
                )
        groups = prepared.param_groups
        if fsdp:  # parameters become DTensor shards: the optimizer is built on them
            before = names_by_id(prepared.model)
            shard_model(prepared.model, t.precision, accelerator.device)
            groups = regroup(groups, before, prepared.model)
        optimizer = build_optimizer(groups, t.lr)
        scheduler = build_scheduler(
            optimizer, t.scheduler, warmup_steps(total, t.warmup_ratio, t.warmup_steps), total
        )
        if fsdp:  # the optimizer still passes through accelerate (its wrapper), the model is FSDP's own
            model, optimizer = prepared.model, accelerator.prepare_optimizer(optimizer)
        else:
            model, optimizer = accelerator.prepare(prepared.model, optimizer)
        if accelerator.num_processes > 1:
            # Each process its own random stream (seed + rank), as one process draws fresh dropout masks and
            # samples for every micro-batch; the weights stay identical (DDP copied rank 0's in prepare).
            from accelerate.utils import set_seed

            set_seed(t.seed, device_specific=True)
        loop = _Loop(
            task, prepared, cfg, run_dir, accelerator, model, optimizer, scheduler, sampler, total, metric
        )
        if resume:
            loop.restore()
        loop.run()
        if fsdp:  # rank 0's model holds the gathered weights from now on: it is saved, never trained again
            unshard_for_saving(model)
    return FitResult(
        loop.state["step"],
        loop.stopper.best_step,
        loop.stopper.best,
        loop.stopped_early,
        loop.state["seconds"],
        loop.state["examples"],
        loop.state["tokens"],
        compiled,
        model,
    )


def _count_padding(window: dict, batch: dict) -> None:
    """Add a micro-batch's positions and real tokens to the log window: the logs report the share of computed
    positions that were padding."""
    ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    if ids is not None and mask is not None and mask.shape == ids.shape:
        window["padded"] += ids.numel()
        window["real"] += int(mask.sum())


class _Loop:
    """The state of one ``fit``: the step in ``run``, the rest in small helpers."""

    def __init__(
        self, task, prepared, cfg, run_dir, accelerator, model, optimizer, scheduler, sampler, total, metric
    ):
        self.task, self.prepared, self.cfg, self.t = task, prepared, cfg, cfg.training
        self.run_dir, self.acc, self.model, self.raw = (
            Path(run_dir),
            accelerator,
            model,
            accelerator.unwrap_model(model),
        )
        self.optimizer, self.scheduler, self.sampler, self.total, self.metric = (
            optimizer,
            scheduler,
            sampler,
            total,
            metric,
        )
        self.main = accelerator.is_main_process
        self.fsdp = accelerator.num_processes > 1 and getattr(self.t, "distributed", "ddp") == "fsdp"
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.stopper = EarlyStopping(self.t.early_stopping_patience, metric.greater_is_better)
        self.state: dict[str, Any] = {"step": 0, "examples": 0, "tokens": 0, "seconds": 0.0}
        self.eval_every = self.t.eval_every or sampler.steps_per_epoch
        self.save_every = self.t.save_every or self.eval_every
        trained = {id(p) for g in prepared.param_groups for p in g["params"]}
        self.trained_keys = {n for n, p in self.raw.named_parameters() if id(p) in trained}
        self.stopped_early = False
        self.window = self._new_window()

    # ---- the step
    def run(self) -> None:
        t, task, acc, world = self.t, self.task, self.acc, self.acc.num_processes
        step = self.state["step"]
        start = time.perf_counter() - self.state["seconds"]
        with progress_bar(self.total, self.main, initial=step) as bar, GracefulStop() as stop:
            # training.threads: auto: trainings started together registered while they loaded their models,
            # so the share is right from the first step (one step with too many threads costs ~30x)
            rebalance(force=True)
            while step < self.total and not self.stopped_early:  # (a resumed early stop stays stopped)
                epoch, in_epoch = self.sampler.position(step)
                if self.prepared.on_step is not None:
                    self.prepared.on_step(step, epoch)
                step_indices = self.sampler.epoch_steps(epoch)[in_epoch]  # the whole step, every process
                micro = self.sampler.micro_batches(step_indices)  # this process's share
                self.window["mine"] += sum(len(idx) for idx in micro)
                self.model.train()
                local = task.begin_step(self.model, micro, self._sum)  # online tasks sample here
                n_items = (
                    sum(task.counts[i] for i in step_indices)
                    if local is None
                    else float(self._sum(torch.tensor([local], dtype=torch.float64)))
                )
                for k, idx in enumerate(micro):
                    note = rebalance()  # training.threads: auto follows the other trainings on these cores
                    if note and self.main:
                        bar.note(note)
                    last = k == len(micro) - 1  # FSDP reduce-scatters every micro-batch: its shards add up
                    sync = nullcontext() if last or self.fsdp else acc.no_sync(self.model)
                    with sync:
                        batch = task.collate(idx)
                        _count_padding(self.window, batch)
                        batch = {key: v.to(acc.device) for key, v in batch.items()}
                        with acc.autocast():
                            loss_sum, _ = task.loss(self.model, batch)
                        # DDP averages gradients over processes, so scale by their number
                        scaled = loss_sum * (world / max(n_items, 1e-12))
                        if (pull := self.prepared.info.get("continual_penalty")) is not None:
                            scaled = scaled + pull(self.raw) / len(micro)  # L2-SP/EWC, once per step
                        acc.backward(scaled)
                    self.window["loss"] += loss_sum.detach().float().item()
                grad_norm = None
                if t.max_grad_norm is not None and self.fsdp:  # the norm over every shard (a DTensor)
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    grad_norm = grad_norm_value(norm)
                elif t.max_grad_norm is not None:
                    grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens = sum(task.token_cost(i) for i in step_indices)
                self.window.update(
                    items=self.window["items"] + n_items,
                    examples=self.window["examples"] + len(step_indices),
                    tokens=self.window["tokens"] + tokens,
                )
                self.state.update(
                    step=step,
                    examples=self.state["examples"] + len(step_indices),
                    tokens=self.state["tokens"] + tokens,
                    seconds=time.perf_counter() - start,
                )
                bar.update(step, loss=self.window["loss"] * world / max(1, self.window["items"]))
                if step % t.log_every == 0 or step == self.total:
                    self._log_train(step, grad_norm)
                if step % self.eval_every == 0 or step == self.total:
                    self._evaluate(step, bar)
                signum = self._shared_signal(stop)
                if step % self.save_every == 0 or step == self.total or self.stopped_early or signum:
                    self._checkpoint(step)
                if signum:
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} at step {step} of {self.total}; checkpoint "
                        f"step-{step} is saved. Continue with: tuneforge train --resume {self.run_dir}",
                        signum,
                    )
                if self.stopped_early:
                    break

    # ---- helpers
    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over processes (identity on one)."""
        if self.acc.num_processes == 1:
            return x
        return self.acc.reduce(x.to(self.acc.device), reduction="sum").cpu()

    @staticmethod
    def _new_window() -> dict[str, float]:
        return {
            "loss": 0.0,
            "items": 0,
            "examples": 0,
            "mine": 0,  # the examples this process trained on: the weight of its task metrics
            "tokens": 0,
            "real": 0,
            "padded": 0,
            "t0": time.perf_counter(),
        }

    def _log_train(self, step: int, grad_norm: float | None) -> None:
        """One train line: loss and padding summed over processes; the task's metrics (means over this process's
        examples) averaged over processes weighted by their examples, so an uneven split of a step (a last
        step of 5 examples on 2 processes) logs what one process would."""
        w = self.window
        dt = max(1e-9, time.perf_counter() - w["t0"])
        loss, real, padded = self._sum(
            torch.tensor([w["loss"], w["real"], w["padded"]], dtype=torch.float64)
        ).tolist()
        task_metrics = self.task.pop_train_metrics()
        if self.acc.num_processes > 1:
            from accelerate.utils import gather_object

            every = gather_object([(task_metrics, w["mine"])])  # [(metrics, examples)] of every process
            keys = {k for m, _ in every for k in m}
            task_metrics = {
                k: round(
                    sum(m[k] * n for m, n in every if k in m) / max(1, sum(n for m, n in every if k in m)), 6
                )
                for k in keys
            }
        if self.main:
            self.log.append(
                {
                    "step": step,
                    "epoch": round(step / self.sampler.steps_per_epoch, 4),
                    "split": "train",
                    "loss": round(loss / max(1, w["items"]), 6),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "examples_per_s": round(w["examples"] / dt, 2),
                    "tokens_per_s": round(w["tokens"] / dt, 1),
                    "tokens": w["tokens"],
                    "padding": round((padded - real) / padded, 4) if padded else None,
                    "seconds": round(dt, 4),
                    **task_metrics,  # rewards, margins, KL, ... since the last log
                }
            )
        self.window = self._new_window()

    def _evaluate(self, step: int, bar) -> None:
        """Validation on the main process (the others wait; under FSDP every process runs it, each forward
        gathers the blocks from all); the metrics, and so the early-stopping decision, are shared with every
        process."""
        started = time.perf_counter()
        metrics = None
        release_free_memory()  # the training steps' freed blocks, before evaluation's other shapes
        if self.main or self.fsdp:
            with self.acc.autocast():  # the precision training runs in (adapter runs may hold a bf16 base)
                metrics = self.task.evaluate(self.raw, "validation")
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [metrics]
            broadcast_object_list(box)
            metrics = box[0]
        self.window["t0"] += time.perf_counter() - started  # keep evaluation out of the throughput figures
        if not metrics:
            return
        if self.metric.name not in metrics:
            raise TuneforgeError(
                f"training.metric: '{self.metric.name}' is not among this run's validation metrics "
                f"({', '.join(k for k in metrics if isinstance(metrics[k], float))}); set one of them."
            )
        improved = self.stopper.update(metrics[self.metric.name], step)
        if self.main:
            self.log.append(
                {
                    "step": step,
                    "epoch": round(step / self.sampler.steps_per_epoch, 4),
                    "split": "validation",
                    **metrics,
                }
            )
            bar.note(
                f"step {step}: validation "
                + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            )
            if improved and not self.fsdp:  # the folder records its step, so finishing knows its model
                self.task.save_model(self.raw, self.run_dir / "best", notes={MODEL_STEP_FILE: {"step": step}})
        if improved and self.fsdp:  # every process gathers its shards, rank 0 writes the usual folder
            with gathered(self.raw) as plain:
                if self.main:
                    self.task.save_model(
                        plain, self.run_dir / "best", notes={MODEL_STEP_FILE: {"step": step}}
                    )
        if self.stopper.should_stop:
            self.stopped_early = True
            bar.note(
                f"early stopping at step {step}: no {self.metric.name} improvement in "
                f"{self.t.early_stopping_patience} evaluations (best at step {self.stopper.best_step})"
            )

    def _shared_signal(self, stop: GracefulStop) -> int:
        """The stop signal any process received (0: none), agreed by all, so every process saves and stops at
        the same step and names the same signal, and none waits on another forever."""
        mine = torch.tensor([float(stop.requested or 0)])
        if self.acc.num_processes == 1:
            return int(mine.item())
        return int(self.acc.gather(mine.to(self.acc.device)).max().item())

    def _checkpoint(self, step: int) -> None:
        """Every process's RNG state, then the main process writes the checkpoint."""
        states = [rng_state()]
        if self.acc.num_processes > 1:
            from accelerate.utils import gather_object

            states = gather_object(states)
        self.acc.wait_for_everyone()
        if self.fsdp:  # every process writes its shard; a failure anywhere raises everywhere
            state = {**self.state, "early_stopping": self.stopper.state_dict()}
            save_sharded_checkpoint(
                self.run_dir,
                step,
                self.model,
                self.optimizer,
                self.scheduler,
                state,
                self.t.keep_checkpoints,
                rng_states=states,
            )
            return
        failure = None
        if self.main:
            weights = {
                k: v.detach().cpu().clone().contiguous()
                for k, v in self.raw.state_dict().items()
                if k in self.trained_keys
            }
            state = {**self.state, "early_stopping": self.stopper.state_dict()}
            try:
                save_checkpoint(
                    self.run_dir,
                    step,
                    self.raw,
                    self.optimizer,
                    self.scheduler,
                    state,
                    self.t.keep_checkpoints,
                    weights,
                    rng_states=states,
                )
            except TuneforgeError as e:  # e.g. the disk is full: every process stops, none waits forever
                failure = str(e)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [failure]
            broadcast_object_list(box)
            failure = box[0]
        if failure:
            raise TuneforgeError(failure)

    def restore(self) -> None:
        """Continue from the newest valid checkpoint (saying which); metrics logged after it are dropped."""
        found = find_resumable(self.run_dir)
        if found is None:
            if self.main:
                self.log.truncate_after(0)
                console.print(f"no checkpoint in {self.run_dir} yet: starting from step 0", highlight=False)
            return
        for warning in found.warnings:
            if self.main:
                console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False)
        self.state = (load_sharded_checkpoint if self.fsdp else load_checkpoint)(
            found.path,
            self.raw,
            self.optimizer,
            self.scheduler,
            rank=self.acc.process_index,
            world_size=self.acc.num_processes,
        )
        self.stopper.load_state_dict(self.state.pop("early_stopping", {}))
        self.stopped_early = self.stopper.should_stop  # it stopped early before: finish, do not train on
        if self.main:
            self.log.truncate_after(self.state["step"])
            console.print(
                f"resumed from step {self.state['step']} of {self.total} ({found.path.name})", highlight=False
            )
        self.acc.wait_for_everyone()
