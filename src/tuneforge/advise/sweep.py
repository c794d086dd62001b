"""``tuneforge sweep CONFIG --space SPACE.yaml --trials N``: hyperparameter search that starts small.

Optuna samples each trial's values with TPE and prunes with successive halving on the validation metric.
A trial runs in rungs: rung 0 trains on a subset of the training rows (``--subset``) for a short budget,
and only the trials in the best ``1/eta`` of their rung go on to the next, longer rung; the last rung trains
on all the data for the config's whole budget. Rung ``k`` of ``R`` trains ``eta^(k-R+1)`` of the config's
optimizer steps, from scratch (a rung is its own run: data and budget change between rungs).

Every rung is a normal ``tuneforge train`` run folder (``SWEEP/trials/trial-003-rung-1``), run as its own
process, one at a time on a CPU (one per GPU where there are several), so trials never oversubscribe the
cores. The study lives in ``SWEEP/study.db`` (SQLite): run the same command again after a kill and the sweep
resumes (a trial the kill interrupted is tried again with the same values). The results are
``SWEEP/sweep.md`` (a table), ``SWEEP/sweep.json`` and ``SWEEP/sweep.png`` (the metric against each parameter);
``--final`` then trains the best values on the full data (``SWEEP/final``).

The search space (YAML): one entry per config key, a range or a list of choices::

    training.lr: {low: 1.0e-5, high: 1.0e-3, log: true}    # a float range (log: sample on a log scale)
    training.warmup_ratio: {low: 0.0, high: 0.2}
    method.r: {choices: [4, 8, 16, 32]}                    # categorical
    training.batch_size: {low: 8, high: 32, step: 8}       # integers when low and high are integers
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tuneforge.advise.common import as_config, default_folder, md_table
from tuneforge.config import apply_overrides
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.tasks import get_task


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneforgeError(
            "tuneforge sweep needs Optuna, which is not installed: pip install 'tuneforge[sweep]'."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ---------------------------------------------------------------- the search space
def load_space(space: str | Path | dict) -> dict[str, dict]:
    """The search space, checked: every key a config key, every entry a range or a list of choices."""
    where = str(space) if not isinstance(space, dict) else "space"
    if not isinstance(space, dict):
        p = Path(space)
        if not p.is_file():
            raise ConfigError(
                f"--space {p}: no such file. Write one key per line, e.g. training.lr: {{low: 1.0e-5, high: 1.0e-3, log: true}}."
            )
        try:
            space = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e}).") from None
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{where}: expected a mapping of config keys to ranges, e.g. training.lr: {{low: 1.0e-5, high: 1.0e-3, log: true}}."
        )
    for key, spec in space.items():
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ConfigError(
                f"{where}: {key}: give {{low: .., high: ..}} (optionally log: true, step: ..) or {{choices: [..]}}, got {spec!r}."
            )
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(
                f"{where}: {key}: unknown field(s) {', '.join(sorted(unknown))}; use low, high, log, step or choices."
            )
        if "low" in spec and not spec["low"] < spec["high"]:
            raise ConfigError(f"{where}: {key}: low ({spec['low']}) must be below high ({spec['high']}).")
        example = spec["choices"][0] if "choices" in spec else spec["low"]
        apply_overrides({}, [f"{key}={json.dumps(example)}"], where)  # the key and the value's type
    return space


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """One value per key of the space, from Optuna's sampler."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif (
            isinstance(spec["low"], int)
            and isinstance(spec["high"], int)
            and not isinstance(spec["low"], bool)
        ):
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            step = spec.get("step")
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=spec.get("log", False), step=step
            )
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


# ---------------------------------------------------------------- running one rung
def rung_overrides(cfg, k: int, rungs: int, eta: int, subset: float, n_train: int, values: dict) -> list[str]:
    """The overrides of rung ``k``: its share of the budget (optimizer steps) and, on rung 0, the subset."""
    t = as_config(cfg, as_overrides(values)).training
    per_step = t.batch_size * t.grad_accum
    full = t.max_steps or max(1, math.ceil(t.epochs * n_train / per_step))
    steps = max(1, round(full * eta ** (k - rungs + 1)))
    out = [
        f"training.max_steps={steps}",
        f"training.eval_every={steps}",
        "training.early_stopping_patience=null",
    ]
    if k == 0 and rungs > 1 and subset < 1:
        out.append(f"data.limit={max(per_step, math.ceil(subset * n_train))}")
    return out


def train_subprocess(
    config_path: Path, overrides: list[str], log_path: Path, env: dict | None = None
) -> None:
    """``tuneforge train CONFIG OVERRIDES`` as its own process (its output in ``log_path``)."""
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", str(config_path), *overrides]
    with open(log_path, "w") as log:
        rc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        ).returncode
    if rc != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise TuneforgeError(f"trial run failed (exit {rc}): {' / '.join(tail)} (full log: {log_path}).")


def best_metric(run_dir: Path) -> float:
    s = json.loads((run_dir / "run.json").read_text())
    if s.get("best_metric") is None:
        raise TuneforgeError(
            f"{run_dir}: the run logged no validation metric; the sweep needs validation data."
        )
    return float(s["best_metric"])


class _Devices:
    """One GPU per running trial: a pool of device ids (none on a CPU: trials run one at a time)."""

    def __init__(self, n: int):
        self.free = list(range(n))
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            return self.free.pop(0) if self.free else None

    def give(self, d: int | None) -> None:
        if d is not None:
            with self.lock:
                self.free.append(d)


# ---------------------------------------------------------------- the sweep
def sweep(
    config=None,
    overrides: list[str] | None = None,
    space: str | Path | dict | None = None,
    trials: int = 20,
    subset: float = 0.2,
    rungs: int = 3,
    eta: int = 3,
    timeout: float | None = None,
    out: str | Path | None = None,
    final: bool = False,
    seed: int | None = None,
    runner: Callable[[Path, list[str], Path, dict | None], None] = train_subprocess,
) -> dict:
    """Search ``space`` for the config's best validation metric; see the module docstring. Returns the summary
    (also in SWEEP/sweep.json). ``runner`` runs one training (a test may replace it)."""
    optuna = _optuna()
    if space is None:
        raise ConfigError("sweep: give the search space: --space SPACE.yaml (see `tuneforge sweep --help`).")
    if not 0 < subset <= 1:
        raise ConfigError(f"--subset must be in (0, 1], got {subset}.")
    if rungs < 1 or eta < 2:
        raise ConfigError(f"--rungs must be >= 1 and --eta >= 2 (got {rungs}, {eta}).")
    space = load_space(space)
    cfg = as_config(config, overrides)
    task_cls = get_task(cfg.task)
    metric = task_cls.metric(cfg.training.metric)
    n_train = len(task_cls(cfg, load_model=False).splits["train"])
    folder = Path(out) if out else default_folder(cfg, "sweep")
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    base = folder / "base.yaml"
    if base.exists():  # resuming: the trials must keep training the same config
        from tuneforge.config import config_changes, load_config

        changed = config_changes(load_config(base), cfg)
        if changed:
            raise ConfigError(
                f"{folder} holds a sweep of another config ({', '.join(k for k, _, _ in changed[:5])} differ); "
                f"give another --out, or the same config and overrides to resume it."
            )
    cfg.save(base)
    settings = {"space": space, "subset": subset, "rungs": rungs, "eta": eta, "metric": metric.name}
    study = optuna.create_study(
        study_name="sweep",
        storage=f"sqlite:///{folder / 'study.db'}",
        load_if_exists=True,
        direction="maximize" if metric.greater_is_better else "minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.training.seed if seed is None else seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta),
    )
    saved = study.user_attrs.get("settings")
    if saved is not None and json.loads(json.dumps(saved)) != json.loads(json.dumps(settings)):
        raise ConfigError(
            f"{folder} holds a sweep with other settings ({saved}); give another --out to start a new sweep, "
            f"or the same settings to resume it."
        )
    study.set_user_attr("settings", settings)
    resumed = _recover_interrupted(study, optuna)

    import torch

    gpus = torch.cuda.device_count() if cfg.training.device != "cpu" else 0
    devices = _Devices(gpus)

    def objective(trial) -> float:
        values = suggest(trial, space)
        value = float("nan")
        for k in range(rungs):
            name = f"trial-{trial.number:03d}-rung-{k}"
            extra = rung_overrides(cfg, k, rungs, eta, subset, n_train, values)
            run_over = [
                *as_overrides(values),
                *extra,
                f"output.dir={folder / 'trials'}",
                f"output.name={name}",
                "output.overwrite=true",
                "eval.report=false",
                "training.keep_checkpoints=1",
            ]
            device = devices.take()
            try:
                env = {"CUDA_VISIBLE_DEVICES": str(device)} if device is not None else None
                runner(base, run_over, folder / "trials" / f"{name}.log", env)
            finally:
                devices.give(device)
            value = best_metric(folder / "trials" / name)
            trial.set_user_attr(f"rung_{k}", {"value": value, "run": name, "overrides": extra})
            if k < rungs - 1:
                trial.report(value, step=eta**k)  # the resource spent so far, in units of rung 0's budget
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value

    done = sum(
        t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials
    )
    todo = max(0, trials - done)
    if todo:
        study.optimize(
            objective, n_trials=todo, timeout=timeout, n_jobs=max(1, gpus), catch=(TuneforgeError,)
        )
    summary = summarise(study, optuna, space, folder, metric)
    summary["resumed_trials"] = resumed
    if final and summary.get("best"):
        name = "final"
        runner(
            base,
            [
                *as_overrides(summary["best"]["params"]),
                f"output.dir={folder}",
                f"output.name={name}",
                "output.overwrite=true",
            ],
            folder / "final.log",
            None,
        )
        summary["final"] = {"run": str(folder / name), "best_metric": best_metric(folder / name)}
    (folder / "sweep.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _recover_interrupted(study, optuna) -> int:
    """Trials a kill left RUNNING become FAIL, and their values are queued to run again first."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        n += 1
    return n


def summarise(study, optuna, space: dict, folder: Path, metric) -> dict:
    """sweep.md (the table and the best values), sweep.png (the metric against each parameter)."""
    S = optuna.trial.TrialState
    rows, points = [], []
    for t in study.trials:
        rung_values = [t.user_attrs.get(f"rung_{k}", {}).get("value") for k in range(8)]
        rung_values = [v for v in rung_values if v is not None]
        if t.state not in (S.COMPLETE, S.PRUNED):
            continue
        last = rung_values[-1] if rung_values else None
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                *(_fmt(t.params.get(k)) for k in space),
                " → ".join(f"{v:.4f}" for v in rung_values),
                "" if t.value is None else f"{t.value:.4f}",
            ]
        )
        if last is not None:
            points.append((t.params, last, t.state == S.COMPLETE))
    complete = [t for t in study.trials if t.state == S.COMPLETE]
    best = None
    if complete:
        b = study.best_trial
        best = {"trial": b.number, "value": b.value, "params": b.params, "overrides": as_overrides(b.params)}
    n_pruned = sum(t.state == S.PRUNED for t in study.trials)
    md = [
        f"# Sweep: {metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better)",
        "",
        f"{len(complete)} complete and {n_pruned} pruned trials (TPE, successive halving). Values per rung: the "
        f"validation {metric.name} after each rung's budget.",
        "",
        md_table(["trial", "state", *space, "rungs", metric.name], rows),
        "",
    ]
    if best:
        md += [
            f"**Best:** trial {best['trial']}, {metric.name} {best['value']:.4f}: `{' '.join(best['overrides'])}`",
            "",
        ]
    (folder / "sweep.md").write_text("\n".join(md))
    if points:
        _plot(points, space, metric.name, folder / "sweep.png")
    return {
        "metric": metric.name,
        "greater_is_better": metric.greater_is_better,
        "complete": len(complete),
        "pruned": n_pruned,
        "best": best,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": t.value,
                "rungs": {k: v for k, v in t.user_attrs.items() if k.startswith("rung_")},
            }
            for t in study.trials
        ],
        "files": [str(folder / "sweep.md"), str(folder / "sweep.png"), str(folder / "study.db")],
    }


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _plot(points: list[tuple[dict, float, bool]], space: dict, metric: str, path: Path) -> None:
    """One panel per parameter: each trial's last validation value against its value (pruned trials hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for params, value, complete in points:
            x = params.get(key)
            ax.scatter(
                [str(x) if "choices" in space[key] else x],
                [value],
                c="C0" if complete else "none",
                edgecolors="C0",
            )
        if space[key].get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {metric}")
    fig.suptitle("filled: complete, hollow: pruned (value at its last rung)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
