"""Experiment trackers (``training.report_to``): TensorBoard, MLflow, Trackio and Weights & Biases.

``metrics.jsonl`` stays the record of a run; the trackers receive a copy through accelerate's tracker
classes (``accelerate.tracking``):

- at run start, the resolved config (flattened to ``section.key`` parameters);
- every record appended to ``metrics.jsonl`` (training and validation), as ``split/key`` at its step;
- at the end, the final evaluation (``eval/tuned/accuracy``, ``eval/baseline/accuracy``, ... from eval.json).

Where each one writes:

- tensorboard: event files under ``RUN/tensorboard/``;
- mlflow: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``RUN/mlflow.db`` (MLflow 3 refuses its
  old file store unless ``MLFLOW_ALLOW_FILE_STORE=true``); experiment ``tuneforge`` (or
  ``MLFLOW_EXPERIMENT_NAME``), run named after the run folder; a resumed run logs into the same MLflow run;
- trackio and wandb: project ``tuneforge``, run named after the run folder (their own settings, e.g.
  ``WANDB_MODE=offline``, apply).

A tracker that fails while training is switched off with a warning: it never stops a run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.train import runfolder

log = logging.getLogger(__name__)

# tracker name -> the module it needs (and the tuneforge extra that installs it)
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
PROJECT = "tuneforge"
STATE_FILE = "trackers.json"  # ids a resumed run needs to log into the same tracker runs


def check_installed(names: list[str]) -> None:
    """Raise ConfigError naming ``pip install 'tuneforge[NAME]'`` for each tracker whose package is missing."""
    missing = [n for n in names if importlib.util.find_spec(MODULES[n]) is None]
    if missing:
        extras = ",".join(missing)
        raise ConfigError(
            f"training.report_to: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. "
            f"Install with: pip install 'tuneforge[{extras}]' (or remove {', '.join(missing)} from "
            f"training.report_to)."
        )


def flat_params(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{section.key: value}`` with the types every tracker accepts (lists as text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = "null" if v is None else v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def record_values(record: dict) -> dict[str, float]:
    """The numbers of one metrics.jsonl record as ``split/key`` (the step is the tracker's step)."""
    split = record.get("split", "train")
    return {
        f"{split}/{k}": float(v)
        for k, v in record.items()
        if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def eval_values(ev: dict, prefix: str = "eval") -> dict[str, float]:
    """The scalar numbers of eval.json (tuned and baseline results, nested keys joined with ``/``); per-example
    lists, predictions and samples are left out."""
    out: dict[str, float] = {}
    for k, v in ev.items():
        if k in ("schema_version", "predictions", "per_example", "samples", "examples", "data"):
            continue
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(eval_values(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _make(name: str, run_dir: Path, state: dict):
    """One accelerate tracker, not yet started."""
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker("tensorboard", run_dir)
    if name == "mlflow":
        import mlflow

        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}")
        return tracking.MLflowTracker(
            experiment_name=PROJECT, run_id=state.get("mlflow_run_id"), run_name=run_dir.name
        )
    if name == "trackio":
        return tracking.TrackioTracker(PROJECT, name=run_dir.name)
    return tracking.WandBTracker(PROJECT, name=run_dir.name, dir=str(run_dir))


class RunTrackers:
    """The trackers of one run: ``log`` a metrics record, ``finish`` with the final evaluation."""

    def __init__(self, run_dir: Path, trackers: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.trackers = trackers  # name -> started accelerate tracker

    def _each(self, what: str, fn) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                fn(tracker)
            except Exception as e:  # metrics.jsonl has the record; a tracker never stops training
                log.warning(
                    "%s tracker failed while %s (%s: %s); it is switched off", name, what, type(e).__name__, e
                )
                self.trackers.pop(name, None)

    def log(self, record: dict) -> None:
        """One metrics.jsonl record to every tracker, at its step."""
        values = record_values(record)
        if values:
            self._each("logging metrics", lambda t: t.log(values, step=int(record.get("step", 0))))

    def finish(self, ev: dict | None = None) -> None:
        """Log the final evaluation (eval.json, read from the run folder when not given) and close."""
        runfolder.remove_metrics_listener(self.run_dir / "metrics.jsonl", self.log)
        _ACTIVE.pop(self.run_dir.resolve(), None)
        if ev is None:
            path = self.run_dir / "eval.json"
            ev = json.loads(path.read_text()) if path.exists() else None
        if ev:
            values = eval_values(ev)
            step = _last_step(self.run_dir)
            self._each("logging the evaluation", lambda t: t.log(values, step=step))
        self._each("closing", lambda t: t.finish())
        self.trackers = {}


_ACTIVE: dict[Path, RunTrackers] = {}  # run folder -> its open trackers (in this process)


def _last_step(run_dir: Path) -> int:
    records = runfolder.read_metrics(run_dir / "metrics.jsonl")
    return max((int(r.get("step", 0)) for r in records), default=0)


def start_trackers(cfg, run_dir: Path) -> RunTrackers | None:
    """Start the trackers ``cfg.training.report_to`` names (main process only), send them the config, and
    have every later ``metrics.jsonl`` record of ``run_dir`` sent to them. None when the list is empty."""
    names = list(cfg.training.report_to)
    if not names:
        return None
    check_installed(names)
    run_dir = Path(run_dir)
    stale = _ACTIVE.pop(run_dir.resolve(), None)
    if stale is not None:  # an earlier attempt in this process that ended in an error: close it
        stale.finish({})
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    params = flat_params(cfg.to_dict())
    started: dict[str, Any] = {}
    for name in names:
        tracker = _make(name, run_dir, state)
        tracker.start()
        try:
            tracker.store_init_configuration(params)
        except Exception as e:  # e.g. MLflow refuses changed params on a resumed run: keep the first ones
            log.warning("%s tracker kept its earlier config (%s: %s)", name, type(e).__name__, e)
        started[name] = tracker
    if "mlflow" in started:
        state["mlflow_run_id"] = started["mlflow"].active_run.info.run_id
        runfolder.atomic_write_json(state_path, state)
    trackers = RunTrackers(run_dir, started)
    runfolder.add_metrics_listener(run_dir / "metrics.jsonl", trackers.log)
    _ACTIVE[run_dir.resolve()] = trackers
    return trackers
