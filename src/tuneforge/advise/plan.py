"""``tuneforge plan CONFIG``: which set-up to train on this machine, measured before training.

For each candidate (method x batch size x max length x precision) the model is loaded and prepared as the
run would be, then:

- trainable parameters are counted;
- peak memory: the pre-flight estimate of the live memory (``tuneforge.train.memory.estimate``: weights,
  gradients, AdamW state, measured activations at the largest micro-batch, the resident memory besides the
  weights), and on a CPU also the process's measured peak resident memory over the probe steps below. Each
  set-up is measured in its own fresh process (as a run starts), so that peak is its own: the C allocator
  keeps the blocks a step frees for the next steps, and over varied batch shapes a run's resident memory
  settles well above its live tensors (measured: 1.9 GB resident for 1.0 GB live). The larger of the two
  is the estimate;
- run time comes from a few measured optimizer steps of real batches (the run's own sampler: grouped by
  length, capped at ``max_batch_tokens``): a line ``seconds = a + b * padded tokens`` fitted through the probe
  steps is summed over every step the run will take, plus the validation passes (a measured forward time per
  token times the validation tokens, once per evaluation). Compilation (``training.compile``) is not
  measured: the estimate is for an uncompiled run;
- whether it fits in the memory available.

It recommends one set-up and prints the overrides that select it.

    from tuneforge.advise import plan
    result = plan("configs/classify-minilm-lora.yaml", ["data.limit=2000"])
    print(result["recommended"], result["overrides"])
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tuneforge.advise.common import as_config, default_folder, md_table, write
from tuneforge.config import PEFT_METHODS
from tuneforge.data.batching import StepSampler
from tuneforge.methods import count_parameters, prepare
from tuneforge.tasks import get_task
from tuneforge.train.memory import GB, estimate
from tuneforge.train.optim import build_optimizer
from tuneforge.utils import bf16_native, console, peak_rss_mb

# timed optimizer steps per set-up, from its shortest to its longest batch (after one warm-up)
PROBE_STEPS = 5

# the order in which methods are preferred when several fit: most capable first
CAPABILITY = ("full", "dora", "lora", "unfreeze", "ia3", "freeze", "prefix", "prompt")


def candidates(
    cfg, task_methods, methods=None, batch_sizes=None, max_lengths=None, precisions=None, device=None
) -> list[dict]:
    """The set-ups to measure: the given lists as a grid, or (by default) the config's method and full / freeze /
    LoRA at every precision this machine runs, plus the config's method at half the batch size (twice the
    accumulation: the same gradient) and at half the max length."""
    t = cfg.training
    precs = precisions or (["fp32", "bf16"] if bf16_native(device.type == "cuda") else ["fp32"])
    if methods or batch_sizes or max_lengths or precisions:
        ms = methods or [cfg.method.name]
        out = [
            {
                "method": m,
                "batch_size": b,
                "grad_accum": max(1, t.batch_size * t.grad_accum // b),
                "max_length": L,
                "precision": p,
            }
            for m in ms
            for b in (batch_sizes or [t.batch_size])
            for L in (max_lengths or [cfg.data.max_length])
            for p in precs
        ]
    else:
        ms = list(dict.fromkeys([cfg.method.name, "full", "freeze", "lora"]))
        out = [
            {
                "method": m,
                "batch_size": t.batch_size,
                "grad_accum": t.grad_accum,
                "max_length": cfg.data.max_length,
                "precision": p,
            }
            for m in ms
            for p in precs
        ]
        p0 = precs[-1]
        if t.batch_size > 1:
            out.append(
                {
                    "method": cfg.method.name,
                    "batch_size": t.batch_size // 2,
                    "grad_accum": t.grad_accum * 2,
                    "max_length": cfg.data.max_length,
                    "precision": p0,
                }
            )
        if cfg.data.max_length >= 32:
            out.append(
                {
                    "method": cfg.method.name,
                    "batch_size": t.batch_size,
                    "grad_accum": t.grad_accum,
                    "max_length": cfg.data.max_length // 2,
                    "precision": p0,
                }
            )
    return [c for c in out if c["method"] in task_methods]


def overrides_for(c: dict) -> list[str]:
    return [
        f"method.name={c['method']}",
        f"training.batch_size={c['batch_size']}",
        f"training.grad_accum={c['grad_accum']}",
        f"data.max_length={c['max_length']}",
        f"training.precision={c['precision']}",
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg, device: torch.device, probe_steps: int = PROBE_STEPS) -> dict:
    """Trainable parameters, the memory estimate and the time estimate of one set-up (``cfg``), measured in
    this process (``measure_fresh`` runs it in a process of its own)."""
    t = cfg.training
    task = get_task(cfg.task)(cfg)
    model = task.model
    if task.lengths:  # the attention kernel the run would choose (tuneforge's on CPU for short sequences)
        from tuneforge.train.compile import choose_attention

        choose_attention(cfg.model.attn_implementation, model, max(task.lengths), device)
    if cfg.method.freeze_layers == "auto":  # the depth probe picks it, as in a run
        from tuneforge.eval.depth import auto_freeze_layers

        auto_freeze_layers(task, cfg)
    prepared = prepare(model, cfg.method, t, head=task.has_head())
    model = prepared.model
    bf16 = t.precision == "bf16"
    if (
        bf16 and cfg.method.name in PEFT_METHODS and t.bf16_frozen_base
    ):  # as the recipe stores an adapter's base
        for p in model.parameters():
            if not p.requires_grad and p.dtype == torch.float32:
                p.data = p.data.to(torch.bfloat16)
    trainable, total = count_parameters(model)
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=bf16)
    est = estimate(
        model,
        task.lengths,
        cfg,
        device,
        autocast,
        language_model=task.generates(),
        chunked_loss=getattr(task, "chunked_loss", False),
    )
    model.to(device)
    run_autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    sampler = StepSampler(
        task.lengths,
        t.batch_size,
        t.grad_accum,
        1,
        0,
        t.seed,
        t.group_by_length,
        max_batch_tokens=est.batch_tokens,
    )
    total_steps = sampler.total_steps(t.epochs, t.max_steps)
    epoch = sampler.epoch_steps(0)

    def padded(step) -> int:
        return sum(len(m) * max(task.lengths[i] for i in m) for m in sampler.micro_batches(step))

    tokens = np.array([padded(s) for s in epoch], dtype=float)
    order = np.argsort(tokens)
    picks = [int(order[round(q * (len(order) - 1))]) for q in np.linspace(0, 1, max(2, probe_steps))]
    optimizer = build_optimizer(prepared.param_groups, t.lr)
    model.train()

    def step(s) -> float:
        _sync(device)
        t0 = time.perf_counter()
        micro = sampler.micro_batches(s)
        items = sum(len(m) for m in micro)
        for m in micro:
            batch = {k: v.to(device) for k, v in task.collate(m).items()}
            with run_autocast():
                loss, _ = task.loss(model, batch)
            (loss / items).backward()
        if t.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], t.max_grad_norm
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    step(epoch[picks[len(picks) // 2]])  # warm-up (allocations, kernels)
    secs = np.array([step(epoch[i]) for i in picks])
    x = tokens[picks]
    if np.ptp(x) > 0:
        b, a = np.polyfit(x, secs, 1)
        b, a = max(b, 0.0), max(a, 0.0)
    else:
        a, b = 0.0, float(secs.mean() / max(x.mean(), 1))
    per_epoch = float((a + b * tokens).sum())
    train_s = per_epoch * total_steps / max(1, len(epoch))
    eval_s, evals = _eval_time(task, model, cfg, device, run_autocast, total_steps, sampler.steps_per_epoch)
    peak = est.total
    memory = est.to_dict()
    if device.type == "cpu":  # what the probe steps and the evaluation pass held at their peak
        measured = int(peak_rss_mb() * 2**20) * est.processes
        memory["measured_peak"] = round(measured / 2**20, 1)
        peak = max(peak, measured)
    row = {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "memory_gb": round(peak / GB, 3),
        "memory": memory,
        "fits": est.available is None or peak <= est.available,
        "steps": total_steps,
        "step_seconds": round(float(secs.mean()), 4),
        "train_seconds": round(train_s, 3),
        "eval_seconds": round(eval_s, 3),
        "evaluations": evals,
        "seconds": round(train_s + eval_s, 3),
    }
    return row


@torch.no_grad()
def _eval_time(
    task, model, cfg, device, autocast, total_steps: int, steps_per_epoch: int
) -> tuple[float, int]:
    """Seconds spent evaluating on validation during the run: measured forward time per token x its tokens."""
    enc = (getattr(task, "encoded", None) or {}).get("validation")
    if not enc:
        return 0.0, 0
    lengths = [len(x) for x in enc["input_ids"]] if isinstance(enc, dict) else [len(e.input_ids) for e in enc]
    every = cfg.training.eval_every or steps_per_epoch
    evals = math.ceil(total_steps / every)
    bs = min(cfg.eval.batch_size, len(lengths))
    rows = sorted(range(len(lengths)), key=lambda i: lengths[i])[len(lengths) // 2 :][:bs]
    if isinstance(enc, dict):
        batch = task.collate_encoded(enc, rows) if hasattr(task, "collate_encoded") else None
    else:
        batch = None
    if batch is None:  # language models: time a training-shaped batch's forward as the stand-in
        rows_t = list(range(min(bs, len(task.lengths))))
        batch = task.collate(rows_t)
        tokens = sum(task.lengths[i] for i in rows_t)
    else:
        tokens = sum(lengths[i] for i in rows)
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    longest = sorted(range(len(lengths)), key=lambda i: lengths[i])[-bs:]
    model.eval()
    with autocast():
        if isinstance(enc, dict) and hasattr(
            task, "collate_encoded"
        ):  # the evaluation's largest batch (memory)
            big = task.collate_encoded(enc, longest)
            model(**{k: v.to(device) for k, v in big.items() if k in ("input_ids", "attention_mask")})
        model(**batch)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        model(**batch)
        _sync(device)
    model.train()
    per_token = (time.perf_counter() - t0) / max(1, tokens)
    return per_token * sum(lengths) * evals, evals


def recommend(cfg, rows: list[dict]) -> dict | None:
    """The config's own method if a set-up of it fits, else the most capable method that fits; among its
    fitting set-ups at the config's max length (inputs are never cut shorter than asked), the fastest."""
    fit = [r for r in rows if r["fits"] and "error" not in r]
    if not fit:
        return None
    methods = [cfg.method.name] + [m for m in CAPABILITY if m != cfg.method.name]
    for m in methods:
        mine = [r for r in fit if r["method"] == m]
        if mine:
            full_len = [r for r in mine if r["max_length"] == cfg.data.max_length] or mine
            return min(full_len, key=lambda r: r["seconds"])
    return None


def plan(
    config=None,
    overrides: list[str] | None = None,
    methods: list[str] | None = None,
    batch_sizes: list[int] | None = None,
    max_lengths: list[int] | None = None,
    precisions: list[str] | None = None,
    probe_steps: int = PROBE_STEPS,
    out: str | Path | None = None,
) -> dict:
    """Measure the candidate set-ups (see the module docstring), write plan.json and plan.md to ``out``
    (default ``output.dir/plan-TASK-MODEL``) and return {rows, recommended, overrides}."""
    cfg = as_config(config, overrides)
    task_cls = get_task(cfg.task)
    cuda = cfg.training.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    from contextlib import nullcontext

    from tuneforge.threads import CoreShare, apply_threads, threads_for

    # the threads a run started now would get: its share of the cores beside the other trainings here
    auto = cfg.training.threads == "auto"
    if not auto:
        apply_threads(threads_for(cfg.training.threads, 1))
    with CoreShare() if auto else nullcontext() as share:
        rows = _measure_all(
            cfg, task_cls, device, share, methods, batch_sizes, max_lengths, precisions, probe_steps
        )
    best = recommend(cfg, rows)
    changes = []
    if best:
        current = {
            "method.name": cfg.method.name,
            "training.batch_size": cfg.training.batch_size,
            "training.grad_accum": cfg.training.grad_accum,
            "data.max_length": cfg.data.max_length,
            "training.precision": cfg.training.precision,
        }
        changes = [o for o in best["overrides"] if str(current[o.split("=")[0]]) != o.split("=", 1)[1]]
    result = {
        "device": str(device),
        "rows": rows,
        "recommended": best,
        "overrides": changes,
    }
    folder = Path(out) if out else default_folder(cfg, "plan")
    result["files"] = [str(p) for p in write(folder, "plan", result, to_markdown(result, cfg))]
    return result


def _measure_all(
    cfg, task_cls, device, share, methods, batch_sizes, max_lengths, precisions, probe_steps
) -> list[dict]:
    """Measure every candidate, one after the other, each in a fresh process with this process's share of
    the cores."""
    rows = []
    for c in candidates(cfg, task_cls.methods, methods, batch_sizes, max_lengths, precisions, device):
        over = overrides_for(c)
        label = " ".join(f"{k}={v}" for k, v in c.items())
        if share is not None:
            share.rebalance(force=True)
        console.print(f"plan: measuring {label} ...", highlight=False)
        try:
            row = measure_fresh(as_config(cfg, over), device, probe_steps)
        except Exception as e:  # one set-up that cannot run is a row, not the end of the plan
            row = {"error": f"{type(e).__name__}: {e}", "fits": False}
        rows.append({**c, **row, "overrides": over})
    return rows


def measure_fresh(cfg, device: torch.device, probe_steps: int = PROBE_STEPS) -> dict:
    """``measure`` in a process of its own, started fresh (``spawn``) with this process's threads: its
    resident memory is this set-up's alone, as a run's is (one process measuring set-up after set-up would
    carry the blocks the earlier ones freed), and no earlier set-up's kernels or caches warm its steps."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(
            _measure_child, cfg.to_dict(), device.type, probe_steps, torch.get_num_threads()
        ).result()


def _measure_child(cfg: dict, device: str, probe_steps: int, threads: int) -> dict:
    from tuneforge.threads import apply_threads
    from tuneforge.utils import quiet_libraries

    quiet_libraries()
    apply_threads(threads)
    return measure(as_config(cfg), torch.device(device), probe_steps)


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        setup = [r["method"], f"{r['batch_size']}x{r['grad_accum']}", r["max_length"], r["precision"]]
        if "error" in r:
            out.append([*setup, "-", "-", "-", f"cannot run: {r['error'][:80]}"])
            continue
        out.append(
            [
                *setup,
                f"{r['trainable_parameters']:,}",
                f"{r['memory_gb']:.2f} GB",
                f"{r['seconds']:,.0f} s ({r['steps']} steps)",
                "yes" if r["fits"] else "no",
            ]
        )
    return out


def to_markdown(result: dict, cfg) -> str:
    header = [
        "method",
        "batch x accum",
        "max length",
        "precision",
        "trainable",
        "peak memory (est.)",
        "run time (est.)",
        "fits",
    ]
    lines = [
        f"# Plan: {cfg.task}, {cfg.model.name} on {result['device']}",
        "",
        md_table(header, table_rows(result["rows"])),
        "",
    ]
    best = result["recommended"]
    if best:
        over = " ".join(result["overrides"]) or "(the config as it is)"
        lines += [
            f"**Recommended:** {best['method']}, batch {best['batch_size']} x {best['grad_accum']}, max length "
            f"{best['max_length']}, {best['precision']}: about {best['memory_gb']:.2f} GB and {best['seconds']:,.0f} s. "
            f"Overrides: `{over}`",
            "",
        ]
    else:
        lines += ["**No set-up fits this machine**: try a shorter data.max_length or method lora.", ""]
    return "\n".join(lines)
