"""The training recipe: setup -> pre-flight -> fit -> final model -> evaluation -> summary.

``tuneforge.train(config)`` and ``tuneforge train CONFIG`` both run ``train`` below.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

from tuneforge.config import PEFT_METHODS, RunConfig, from_dict, load_config
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.methods import count_parameters, prepare
from tuneforge.tasks import task_class
from tuneforge.train.loop import fit
from tuneforge.utils import console, peak_rss_mb, quiet_libraries

log = logging.getLogger(__name__)


def as_config(config: RunConfig | dict | str | Path, overrides: list[str] | None = None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides:
            from tuneforge.config import apply_overrides

            return from_dict(apply_overrides(config.to_dict(), overrides))
        return config
    if isinstance(config, dict):
        from tuneforge.config import apply_overrides

        return from_dict(apply_overrides(config, overrides or []), "config")
    return load_config(config, overrides)


def run_dir_for(cfg: RunConfig, resume: bool) -> Path:
    """The run folder: output.dir/output.name, or a new name from task, model, method and time."""
    root = Path(cfg.output.dir)
    if cfg.output.name:
        path = root / cfg.output.name
        if path.exists() and not resume:
            if not cfg.output.overwrite and any(path.iterdir()):
                raise ConfigError(
                    f"run folder {path} exists. Add --resume to continue it, output.overwrite=true to "
                    f"replace it, or choose another output.name."
                )
            shutil.rmtree(path)
        return path
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model.name).name or cfg.model.name)
    prefix = f"{cfg.task}-{model}-{cfg.method.name}"
    if resume:
        runs = sorted(
            (p for p in root.glob(prefix + "-*") if (p / "checkpoints" / "latest").exists()),
            key=lambda p: p.stat().st_mtime,
        )
        if not runs:
            raise ConfigError(
                f"--resume: no run of {prefix} with a checkpoint under {root}/. Give the run folder instead."
            )
        return runs[-1]
    return root / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def make_accelerator(cfg: RunConfig):
    import torch
    from accelerate import Accelerator

    device = cfg.training.device
    # On a machine without a GPU accelerate must be told so, or processes started by torchrun don't join (gloo).
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "training.device is cuda but no GPU is visible: use training.device=auto or cpu."
            )
    precision = resolve_precision(cfg.training.precision, cpu)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; several runs in one Python session (a notebook, a
        # test suite) may each choose their own precision, so start from a clean state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if precision == "bf16" else "no")


def resolve_precision(precision: str, cpu: bool) -> str:
    """'auto' is bf16 autocast where the hardware runs bf16 matmuls natively (about 2x fp32 here), else fp32."""
    if precision != "auto":
        return precision
    import torch

    if not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def preflight_audit(cfg: RunConfig, task, main: bool = True) -> dict | None:
    """Run the data audit on the splits; refuse train/test leakage unless data.allow_leakage."""
    if not cfg.data.audit or not hasattr(task, "splits"):
        return None
    try:
        from tuneforge.data.audit import audit_splits
    except ImportError:
        return None
    model = getattr(task, "model", None)
    report = audit_splits(
        task.splits,
        getattr(task, "data_format", "classification"),
        tokenizer=task.tokenizer,
        max_length=cfg.data.max_length,
        near_dup_threshold=cfg.data.near_dup_threshold,
        model_config=getattr(model, "config", None),
    )
    if main:
        console.print(f"[bold]data audit:[/bold] {report.headline()}")
    if report.leaked and not cfg.data.allow_leakage:
        raise TuneforgeError(
            f"data audit: {report.leaked} training example(s) duplicate validation/test examples (leakage), so test "
            f"scores would be inflated. Run `tuneforge data audit {cfg.data.train}` to see them, `tuneforge data "
            f"prepare` to remove them, or set data.allow_leakage=true to train anyway."
        )
    return report.to_dict()


def preflight_memory(cfg: RunConfig, task, model, accelerator, main: bool = True) -> dict | None:
    """Estimate the run's peak memory; refuse a run that will not fit unless training.memory_check is off."""
    from functools import partial

    import torch

    from tuneforge.train.memory import estimate, too_big_message

    # the probe runs where the model is now (the CPU, before it moves to the device), in the run's precision
    probe_device = next(model.parameters()).device.type
    autocast = partial(
        torch.autocast, probe_device, dtype=torch.bfloat16, enabled=accelerator.mixed_precision == "bf16"
    )
    try:
        est = estimate(
            model,
            cfg.task,
            task.lengths,
            cfg,
            accelerator.device,
            autocast,
            processes=accelerator.num_processes,
        )
    except Exception as e:  # the estimate must never be the reason a run cannot start
        log.warning("memory estimate skipped: %s", e)
        return None  # max_batch_tokens stays as set; the loop takes its fallback for "auto"
    cfg.training.max_batch_tokens = est.batch_tokens  # "auto" resolved from the measured activations
    if main:
        console.print(f"[bold]memory estimate:[/bold] {est.line()}")
    if not est.fits:
        if cfg.training.memory_check:
            raise TuneforgeError(too_big_message(est, cfg))
        log.warning("%s", too_big_message(est, cfg))
    return est.to_dict()


def frozen_to_bf16(model) -> int:
    """Store the frozen base weights of an adapter run in bf16 (autocast computes in bf16 anyway).

    Halves their memory and saves a cast of every weight in every forward; trainable weights stay fp32
    (their optimizer updates need it). The base is never saved from here: exports and evaluations load it
    again from disk in full precision. Returns the number of parameters converted.
    """
    import torch

    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)
            n += p.numel()
    return n


def train(
    config: RunConfig | dict | str | Path,
    overrides: list[str] | None = None,
    resume: bool | str | Path = False,
):
    """Fine-tune as ``config`` says; returns the finished ``Run``."""
    from accelerate.utils import set_seed

    from tuneforge.run import Run

    quiet_libraries()
    if isinstance(resume, (str, Path)) and resume not in ("", False, True):
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml).")
        cfg = as_config(run_dir / "config.yaml", overrides)
        resume = True
    else:
        cfg = as_config(config, overrides)
        run_dir = None
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    if run_dir is None:  # chosen (and an old folder removed) by the main process only, then shared
        from accelerate.utils import broadcast_object_list

        chosen = [str(run_dir_for(cfg, bool(resume))) if main else None]
        if accelerator.num_processes > 1:
            broadcast_object_list(chosen)
        run_dir = Path(chosen[0])
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        if not resume and (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
    accelerator.wait_for_everyone()
    t0 = time.perf_counter()

    # --- setup: data, tokenizer, model (seeded: the new head starts the same on every process and every run)
    set_seed(cfg.training.seed)
    if main:
        console.print(
            f"[bold]tuneforge[/bold] {cfg.task} · model {cfg.model.name} · method {cfg.method.name} · run {run_dir}"
        )
    task = task_class(cfg.task)(cfg)
    audit = preflight_audit(cfg, task, main)  # every process, so all of them stop together on leakage
    if main and hasattr(task, "preflight"):
        task.preflight()  # e.g. sft: one example with its trained tokens marked, and the loss fraction
    if getattr(task, "model", None) is not None and getattr(task, "lengths", None):
        from tuneforge.train.compile import choose_attention

        choose_attention(cfg.model.attn_implementation, task.model, max(task.lengths), accelerator.device)
    attention = getattr(getattr(task.model, "config", None), "_attn_implementation", None)
    try:
        prepared = prepare(task.model, cfg.method, cfg.training, cfg.task)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (
        accelerator.mixed_precision == "bf16"
        and cfg.method.name in PEFT_METHODS
        and cfg.training.bf16_frozen_base
    ):
        frozen_to_bf16(prepared.model)
    trainable, total = count_parameters(prepared.model)
    memory = preflight_memory(cfg, task, prepared.model, accelerator, main)
    if accelerator.num_processes > 1 and prepared.on_step is not None:
        raise ConfigError(
            "method 'unfreeze' changes which weights train during the run, which DDP cannot follow: "
            "run it on one process."
        )
    if main:
        console.print(
            f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) · precision "
            f"{'bf16' if accelerator.mixed_precision == 'bf16' else 'fp32'}"
            + (f" · attention {attention}" if attention else "")
        )
        (run_dir / "data.json").write_text(
            json.dumps(
                {**task.data_summary(), "labels": getattr(task, "labels", None), "audit": audit},
                indent=1,
                default=str,
            )
        )

    # --- train
    metric = cfg.training.metric if cfg.training.metric != "auto" else task.primary_metric
    greater = (
        task.greater_is_better if metric == task.primary_metric else metric not in ("loss", "perplexity")
    )
    result = fit(
        task,
        prepared,
        cfg,
        run_dir,
        accelerator,
        resume=bool(resume),
        metric=metric,
        greater_is_better=greater,
    )

    # --- the final model: the best validation checkpoint when there is one, else the last weights
    if main:
        final = run_dir / "model"
        if (run_dir / "best").exists():
            if final.exists():
                shutil.rmtree(final)
            (run_dir / "best").rename(final)
        else:
            task.save_model(accelerator.unwrap_model(prepared.model), final)
        summary = {
            "status": "stopped early" if result.stopped_early else "completed",
            "steps": result.steps,
            "best_step": result.best_step,
            "best_metric": result.best_metric,
            "metric": metric,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "train_seconds": round(result.train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "examples_seen": result.examples_seen,
            "tokens_seen": result.tokens_seen,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "precision": "bf16" if accelerator.mixed_precision == "bf16" else "fp32",
            "attention": attention,
            "compiled_blocks": result.compiled_blocks,
            "memory_estimate": memory,
        }
        (run_dir / "run.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    run = Run(run_dir)
    if main:
        run.evaluate(task=task)
        from tuneforge.report import finish_run

        finish_run(run, task)  # bias/forgetting probes (as eval.* enables them) and report.md/report.html
    accelerator.wait_for_everyone()
    return run
