"""The training recipe: setup -> pre-flight -> fit -> finish -> evaluate -> report.

``tuneforge.train(config)`` and ``tuneforge train CONFIG`` both run ``train`` below. The recipe sits on top
of the tasks (``tasks/``) and the low-level loop (``train/loop.py``); it owns the run folder:

- the folder is chosen once (a unique new name, or ``output.name``), locked while the run writes it, and a
  stub left by a start that never trained a step is replaced;
- the config is saved RESOLVED (``auto`` values as this machine resolved them) and a resume refuses changes
  outside ``config.RESUMABLE_KEYS``;
- finishing is idempotent: the final model is the best validation step (or the last), decided from the saved
  trainer state, so an interrupted finish completes and a resumed finished run changes nothing.
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

from tuneforge.allocator import active as allocator_in_use
from tuneforge.config import PEFT_METHODS, RunConfig, apply_overrides, from_dict, load_config
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.methods import count_parameters, prepare
from tuneforge.models.save import MODEL_STEP_FILE, model_step
from tuneforge.run import Run
from tuneforge.utils import bf16_native, console, peak_rss_mb, quiet_libraries, release_free_memory

log = logging.getLogger(__name__)

# config keys whose "auto" is resolved on this machine at the start of a run (saved resolved in config.yaml)
AUTO_KEYS = (
    "training.precision",
    "training.max_batch_tokens",
    "method.freeze_layers",
    "training.distributed",
)  # (threads: auto stays auto, it follows the
# other trainings on the machine while it runs)


def as_config(config: RunConfig | dict | str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    if isinstance(config, RunConfig):
        return from_dict(apply_overrides(config.to_dict(), overrides)) if overrides else config
    if isinstance(config, dict):
        return from_dict(apply_overrides(json.loads(json.dumps(config)), overrides or []), "config")
    return load_config(config, overrides)


# ---- the run folder


def _prefix(cfg: RunConfig) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model.name).name or cfg.model.name)
    return f"{cfg.task}-{model}-{cfg.method.name}"


def _has_trained(path: Path) -> bool:
    """A run folder holds work worth keeping: a checkpoint, a final model or a best model."""
    ckpts = path / "checkpoints"
    return (
        (path / "model").exists()
        or (path / "best").exists()
        or (ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir()))
    )


def _check_output_root(root: Path) -> None:
    for p in (root, *root.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(
                f"output.dir: {p} is a file, so run folders cannot be created under {root}. "
                f"Set output.dir to a folder (e.g. output.dir=runs)."
            )


def new_run_folder(cfg: RunConfig) -> Path:
    """The folder of a new run: output.dir/output.name, or a unique name from task, model, method and time."""
    from tuneforge.train.runfolder import new_run_dir

    root = Path(cfg.output.dir)
    _check_output_root(root)
    if not cfg.output.name:
        return new_run_dir(root, _prefix(cfg))
    path = root / cfg.output.name
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output.name: {path} is a file; choose another output.name.")
    if path.exists() and any(path.iterdir()):
        if _has_trained(path) and not cfg.output.overwrite:
            raise ConfigError(
                f"run folder {path} exists and holds a trained run. Add --resume to continue it, "
                f"output.overwrite=true to replace it, or choose another output.name."
            )
        if not _has_trained(path):
            log.warning("replacing %s: a start that never trained a step left it", path)
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_folder(cfg: RunConfig) -> Path:
    """The folder ``--resume`` without a folder means: output.name, else the ONE matching run with a checkpoint."""
    root = Path(cfg.output.dir)
    if cfg.output.name:
        path = root / cfg.output.name
        if not (path / "config.yaml").exists():
            raise ConfigError(
                f"--resume: {path} is not a run folder (no config.yaml). Start it without --resume."
            )
        return path
    runs = sorted(p for p in root.glob(_prefix(cfg) + "-*") if (p / "checkpoints").is_dir())
    if not runs:
        raise ConfigError(
            f"--resume: no run of {_prefix(cfg)} with a checkpoint under {root}/. Give the run folder: "
            f"tuneforge train --resume RUN_DIR."
        )
    if len(runs) > 1:
        raise ConfigError(
            f"--resume: {len(runs)} runs of {_prefix(cfg)} under {root}/ could be meant ("
            + ", ".join(p.name for p in runs[-5:])
            + "). Name one: tuneforge train --resume RUN_DIR."
        )
    return runs[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise TuneforgeError(f"{path}: unreadable ({e}); the run folder is damaged.") from None


def resolve_resume(
    config, overrides: list[str] | None, resume: bool | str | Path
) -> tuple[RunConfig, Path | None, bool]:
    """(config, run folder or None for a new run, resuming). A resume keeps the saved, resolved config and
    accepts only changes of ``config.RESUMABLE_KEYS``."""
    from tuneforge.config import check_resume_changes

    if resume in (False, None, ""):
        return as_config(config, overrides), None, False
    requested = None
    if resume is True:
        requested = as_config(config, overrides)
        run_dir = resume_folder(requested)
    else:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml).")
    saved = load_config(run_dir / "config.yaml")
    if config is None or requested is None:  # no config given: the saved one, with the overrides
        requested = as_config(saved.to_dict(), overrides)
    resolved = set(_read_json(run_dir / "run.json").get("resolved_from_auto", []))
    if requested.model.from_run:  # compared as resolved (model.name, labels), as the saved config is
        from tuneforge.continual import resolve_from_run

        requested = resolve_from_run(requested)
    check_resume_changes(saved, requested, resolved_keys=resolved)
    for key in resolved:  # "auto" keeps what this run resolved it to
        section, name = key.split(".")
        if getattr(getattr(requested, section), name) == "auto":
            setattr(getattr(requested, section), name, getattr(getattr(saved, section), name))
    return requested, run_dir, True


# ---- the accelerator, precision and threads


def make_accelerator(cfg: RunConfig):
    import torch
    from accelerate import Accelerator

    device = cfg.training.device
    # On a machine without a GPU accelerate must be told so, or processes started by torchrun don't join (gloo).
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device is cuda but no GPU is visible: use training.device=auto or cpu.")
    cfg.training.precision = resolve_precision(cfg.training.precision, cpu)
    if cfg.training.precision == "bf16" and not bf16_native(cuda=not cpu):
        log.warning(
            "training.precision=bf16 on a %s without native bf16 matmuls: autocast emulates them, several times "
            "slower than fp32 (an AVX2 CPU: ~9x). training.precision=auto uses bf16 only where it is native.",
            "CPU" if cpu else "GPU",
        )
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one global state per process; several runs in one Python session (a notebook, a
        # test suite) may each choose their own precision, so start from a clean state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.training.precision == "bf16" else "no")


def resolve_precision(precision: str, cpu: bool) -> str:
    """'auto' is bf16 autocast where the hardware runs bf16 matmuls natively (about 2x fp32 here), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_native(cuda=not cpu) else "fp32"


def setup_threads(cfg: RunConfig, main: bool, share) -> int:
    """Give this process its share of the cores: ``training.threads: auto`` divides the cores it may use
    (affinity, cgroup quota) among the trainings on this machine (``share``, a ``threads.CoreShare``, also
    counts the other ranks of this run); a number is used as given."""
    from tuneforge.threads import apply_threads, machine_busy_warning, threads_for

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = threads_for(cfg.training.threads, local)
    if share is not None:
        share.rebalance(force=True)
        n = share.threads
    else:
        apply_threads(n)
    rank = os.environ.get("RANK")
    if rank is not None:  # every process says which it is, so a multi-process log can be read
        console.print(f"rank {rank} of {os.environ.get('WORLD_SIZE')}: {n} threads", highlight=False)
    elif main:
        console.print(
            f"threads: {n}"
            + (f" of {share.cores} cores ({share.live()} trainings share them)" if share else ""),
            highlight=False,
        )
    if main:
        warning = machine_busy_warning(n)
        if warning:
            console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False)
    return n


# ---- pre-flight


def preflight_audit(cfg: RunConfig, task, main: bool = True) -> dict | None:
    """Audit the splits; stop on error findings (rows that cannot train correctly) and on leakage between
    files the user split, unless data.allow_audit_errors / data.allow_leakage. Every process runs it, so
    all of them stop together."""
    if not cfg.data.audit:
        return None
    from tuneforge.data.audit import audit_splits, preflight_decision

    model = getattr(task, "model", None)
    report = audit_splits(
        task.splits,
        task.data_format,
        tokenizer=task.tokenizer,
        max_length=cfg.data.max_length,
        near_dup_threshold=cfg.data.near_dup_threshold,
        model_config=getattr(model, "config", None),
    )
    others = [s for s in (cfg.data.validation, cfg.data.test) if s]
    lines = preflight_decision(
        report,
        allow_errors=cfg.data.allow_audit_errors,
        allow_leakage=cfg.data.allow_leakage,
        train_spec=cfg.data.train,
        other_specs=others,
        user_split=getattr(task, "user_split", True),
        quiet=not main,
    )
    if main:
        console.print(f"[bold]data audit:[/bold] {report.headline()}", highlight=False)
        for line in lines:
            console.print(line, highlight=False, markup=False)
    return report.to_dict()


def check_positions(cfg: RunConfig, model) -> None:
    """data.max_length within the model's positions (else position embeddings run out mid-training)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and cfg.data.max_length > limit:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds what {cfg.model.name} can read: {limit} positions. "
            f"Set data.max_length={limit} or less."
        )


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
            task.lengths,
            cfg,
            accelerator.device,
            autocast,
            processes=accelerator.num_processes,
            language_model=task.generates(),
            chunked_loss=getattr(task, "chunked_loss", False),
        )
    except Exception as e:  # the estimate must never be the reason a run cannot start
        log.warning("memory estimate skipped: %s", e)
        return None  # max_batch_tokens stays as set; the loop takes its fallback for "auto"
    cfg.training.max_batch_tokens = est.batch_tokens  # "auto" resolved from the measured activations
    from tuneforge.train.distributed import choose_for_estimate

    est = choose_for_estimate(cfg.training, est, accelerator.num_processes, model)  # training.distributed
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


# ---- finishing


def release_training_model(task, prepared, result, accelerator) -> None:
    """Drop every reference to the training model (and its optimizer and compiled blocks) once ``model/``
    is written: the final evaluation loads the saved model, so one model is in memory then, not two."""
    import gc

    import torch

    result.model = prepared.model = None
    task.end_training()  # the task keeps its tokenizer and any frozen reference copy (full fine-tuning)
    accelerator.free_memory()  # the prepared model and optimizer accelerate holds
    if result.compiled_blocks:
        torch._dynamo.reset()  # compiled graphs hold the blocks' weights
    gc.collect()


def finish_model(run_dir: Path, task, model, result) -> int:
    """Put the final model in ``model/``: the best validation step when there was one, else the last step.

    Idempotent: the wanted step comes from the trainer state (restored on resume), and each model folder
    records its step, so a repeated or interrupted finish ends in the same ``model/``.
    """
    wanted = result.best_step if result.best_step is not None else result.steps
    final, best = run_dir / "model", run_dir / "best"
    if model_step(final) == wanted:
        if best.exists() and model_step(best) == wanted:
            shutil.rmtree(best)
        return wanted
    if best.exists() and model_step(best) == wanted:
        tmp = run_dir / ".model-old"
        if final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            final.rename(tmp)
        best.rename(final)  # atomic: model/ is the old or the best model, never a mix
        shutil.rmtree(tmp, ignore_errors=True)
        return wanted
    if result.best_step is not None:
        raise TuneforgeError(
            f"{run_dir}: the best model (step {wanted}) is missing from best/ and model/; the run folder was "
            f"changed by hand. Train it again, or copy a model folder into {final}."
        )
    task.save_model(model, final, notes={MODEL_STEP_FILE: {"step": wanted}})
    return wanted


def train(
    config: RunConfig | dict | str | Path | None,
    overrides: list[str] | None = None,
    resume: bool | str | Path = False,
) -> Run:
    """Fine-tune as ``config`` says; returns the finished ``Run``."""
    quiet_libraries()
    cfg, run_dir, resuming = resolve_resume(config, overrides, resume)
    if resuming and _read_json(run_dir / "run.json").get("finished"):
        s = _read_json(run_dir / "run.json")
        console.print(
            f"{run_dir} already finished ({s.get('status')}, {s.get('steps')} steps; final model from step "
            f"{s.get('final_step')}): nothing to do. Evaluate it again with `tuneforge eval {run_dir}`."
        )
        return Run(run_dir)
    auto = [k for k in AUTO_KEYS if getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) == "auto"]
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    if run_dir is None:  # chosen (and a stub removed) by the main process only, then shared
        from accelerate.utils import broadcast_object_list

        chosen: list = [None, None]  # (folder, error): every process stops on the main process's error
        failure = None
        if main:
            try:
                chosen[0] = str(new_run_folder(cfg))
            except TuneforgeError as e:
                chosen[1], failure = str(e), e
        if accelerator.num_processes > 1:
            broadcast_object_list(chosen)
        if chosen[1]:
            raise failure if failure is not None else _Quiet(chosen[1])
        run_dir = Path(chosen[0])
    from tuneforge.train.runfolder import RunLock

    try:
        if main:
            with RunLock(run_dir):
                return _train(cfg, run_dir, resuming, accelerator, auto)
        return _train(cfg, run_dir, resuming, accelerator, auto)
    except (
        KeyboardInterrupt
    ):  # a second Ctrl-C (the first one stops at the end of the step): say what is saved
        raise TuneforgeError(interrupted_message(run_dir)) from None


def interrupted_message(run_dir: Path) -> str:
    """What an interrupted run left, exactly: nothing, a checkpoint, or a trained model awaiting its evaluation."""
    from tuneforge.train.checkpoint import find_resumable

    if (run_dir / "model").exists() and _read_json(run_dir / "run.json").get("final_step") is not None:
        return (
            f"interrupted while evaluating: the final model is saved in {run_dir / 'model'}. "
            f"`tuneforge train --resume {run_dir}` finishes the evaluation and the report."
        )
    try:
        found = find_resumable(run_dir)
    except TuneforgeError:
        found = None
    if found is None:
        return f"interrupted before the first checkpoint: nothing was saved in {run_dir} to resume from."
    return f"interrupted: the last checkpoint is {found.path.name}. Continue with: tuneforge train --resume {run_dir}"


def _threads_now() -> int:
    import torch

    return torch.get_num_threads()


class _Quiet(TuneforgeError):
    """An error another process already reported (the command line prints it once)."""

    quiet = True


def _train(cfg: RunConfig, run_dir: Path, resuming: bool, accelerator, auto: list[str]) -> Run:
    from tuneforge.train.compile import compile_settings

    # threads shared with the other trainings here; compile settings to the end (the final evaluation may
    # still compile a block for a new shape)
    t0 = time.perf_counter()
    with _core_share(cfg) as share, compile_settings():
        setup_threads(cfg, accelerator.is_main_process, share)
        return _run_recipe(cfg, run_dir, resuming, accelerator, auto, t0)


def _core_share(cfg: RunConfig):
    """A ``CoreShare`` for ``training.threads: auto`` (unless the user exported OMP_NUM_THREADS), else nothing."""
    from contextlib import nullcontext

    from tuneforge.threads import MARKER, CoreShare

    omp = os.environ.get("OMP_NUM_THREADS")
    user_set = omp is not None and omp != os.environ.get(MARKER) and "LOCAL_WORLD_SIZE" not in os.environ
    return CoreShare() if cfg.training.threads == "auto" and not user_set else nullcontext()


def _run_recipe(
    cfg: RunConfig, run_dir: Path, resuming: bool, accelerator, auto: list[str], t0: float
) -> Run:
    from accelerate.utils import set_seed

    from tuneforge.train.loop import fit
    from tuneforge.train.runfolder import atomic_write_json
    from tuneforge.train.trackers import start_trackers

    main = accelerator.is_main_process

    # --- setup: data, tokenizer, model (seeded: the new head starts the same on every process and every run)
    set_seed(cfg.training.seed)
    if main:
        console.print(
            f"[bold]tuneforge[/bold] {cfg.task} · model {cfg.model.name} · method {cfg.method.name} · run {run_dir}"
        )
    from tuneforge.continual import after_prepare, build_task, lineage_record, resolve_from_run

    cfg = resolve_from_run(cfg)  # model.from_run: start from a previous run (docs/continual.md)
    task, update = build_task(cfg, run_dir, resuming)  # + replayed and counterfactual training rows
    check_positions(cfg, task.model)
    audit = preflight_audit(cfg, task, main)
    if main:
        task.preflight()  # e.g. sft: one example with its trained tokens marked, and the loss fraction
    if task.lengths:
        from tuneforge.train.compile import choose_attention

        choose_attention(cfg.model.attn_implementation, task.model, max(task.lengths), accelerator.device)
    attention = getattr(getattr(task.model, "config", None), "_attn_implementation", None)
    freeze_probe = None
    if cfg.method.freeze_layers == "auto":  # a linear probe per layer picks the blocks to freeze
        from tuneforge.eval.depth import auto_freeze_layers

        freeze_probe = auto_freeze_layers(task, cfg)
        if main:
            console.print(
                f"depth probe: freezing the lowest {cfg.method.freeze_layers} blocks", highlight=False
            )
    try:
        prepared = prepare(task.model, cfg.method, cfg.training, head=task.has_head())
        from tuneforge.train.distributed import setup_blocks

        for applied in setup_blocks(prepared.model, cfg.training, accelerator.device):  # checkpointing, Liger
            if main:
                console.print(f"[bold]{applied}:[/bold] on", highlight=False)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    after_prepare(cfg, update, task, prepared, run_dir, resuming)  # a continued adapter; L2-SP/EWC anchor
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
    metric = task.default_metric() if cfg.training.metric == "auto" else task.metric(cfg.training.metric)
    if main:
        console.print(
            f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%) · precision "
            f"{cfg.training.precision}" + (f" · attention {attention}" if attention else "")
        )
        cfg.save(run_dir / "config.yaml")  # resolved: auto values as this machine resolved them
        atomic_write_json(
            run_dir / "data.json",
            {**task.data_summary(), "labels": getattr(task, "labels", None), "audit": audit},
        )
        start = _read_json(run_dir / "run.json") if resuming else {}
        start = {
            "started": start.get("started") or datetime.now().isoformat(timespec="seconds"),
            "resolved_from_auto": sorted(set(start.get("resolved_from_auto", [])) | set(auto)),
            "lineage": start.get("lineage") or lineage_record(cfg, update),  # kept as first recorded
        }
        atomic_write_json(
            run_dir / "run.json",
            {
                "status": "running",
                **start,
                "metric": metric.name,
                "pid": os.getpid(),
                "memory_estimate": memory,
            },
        )
    trackers = start_trackers(cfg, run_dir) if main else None  # training.report_to
    accelerator.wait_for_everyone()

    # --- train
    result = fit(task, prepared, cfg, run_dir, accelerator, resume=resuming, metric=metric)

    # --- the final model, then the summary; evaluation and report after (a kill in between loses nothing)
    final_step = None
    if main:
        raw = accelerator.unwrap_model(result.model)
        final_step = finish_model(run_dir, task, raw, result)
        summary = {
            "status": "stopped early" if result.stopped_early else "completed",
            "finished": False,
            "steps": result.steps,
            "final_step": final_step,
            "best_step": result.best_step,
            "best_metric": result.best_metric,
            "metric": metric.name,
            "greater_is_better": metric.greater_is_better,
            **start,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "train_seconds": round(result.train_seconds, 2),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "examples_seen": result.examples_seen,
            "tokens_seen": result.tokens_seen,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "processes": accelerator.num_processes,
            "threads": _threads_now(),
            "allocator": allocator_in_use(),  # jemalloc or the C library's malloc (tuneforge.allocator)
            "device": str(accelerator.device),
            "precision": cfg.training.precision,
            "attention": attention,
            "compiled_blocks": result.compiled_blocks,
            "memory_estimate": memory,
            **({"freeze_probe": freeze_probe} if freeze_probe else {}),
        }
        atomic_write_json(run_dir / "run.json", summary)
        raw = None
    accelerator.wait_for_everyone()
    run = Run(run_dir)
    release_training_model(task, prepared, result, accelerator)
    if main:
        console.print(
            f"evaluating the final model (step {final_step}) on the test split ...", highlight=False
        )
        release_free_memory()
        run.evaluate(task=task)
        from tuneforge.probes import finish_run

        finish_run(run, task)  # bias/forgetting probes (as eval.* enables them) and report.md/report.html
        if trackers is not None:
            trackers.finish()  # the final evaluation to the trackers
        summary["finished"] = True
        atomic_write_json(run_dir / "run.json", summary)
    accelerator.wait_for_everyone()
    return run
