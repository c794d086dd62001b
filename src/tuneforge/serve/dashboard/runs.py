"""What the dashboard knows about a run: its status (a dead run is failed, not running forever), progress and
ETA, best metric, curves, events and checkpoints, read from the run folder with the report's readers.

A run is a folder ``tuneforge train`` (or a service job) wrote. Its status comes from ``run.json`` and the
run-folder lock (``train/runfolder.py:RunLock`` records the holder's pid and host while it trains): a run
whose holder is gone and that never finished is ``failed``, with the last lines of its log.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.report.files import read_json, read_metrics

# files a worker or a shell may have left with the run's output (the first that exists is shown on failure)
LOG_FILES = ("train.log", "job.log", "output.log", "stdout.log", "stderr.log")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,200}$")
LOWER_IS_BETTER = ("loss", "perplexity", "nll", "kl")

# job statuses (OpenAI's, plus paused) shown as they are; a run's own status is derived below
ACTIVE = ("validating_files", "queued", "running", "paused", "starting", "evaluating")


def lock_holder(run_dir: Path) -> dict | None:
    """The pid/host/since the RunLock wrote while it is held; None when nobody holds it (it is emptied on
    release) or the file is missing."""
    try:
        text = (run_dir / ".lock").read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {"pid": None, "host": None}  # being written right now: someone holds it
    return info if isinstance(info, dict) else None


def holder_alive(info: dict | None) -> bool | None:
    """True/False for a holder on this machine (its pid exists or not); None when it is on another host
    (cannot tell from here: trust run.json)."""
    if info is None:
        return False
    pid, host = info.get("pid"), info.get("host")
    if pid is None:
        return True
    if host and host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OSError, ValueError):
        return False
    return True


def last_log_lines(run_dir: Path, n: int = 30, also: Path | None = None) -> list[str]:
    """The last ``n`` lines of the first log file in the run folder (or in ``also``, e.g. the service's job
    folder); [] when there is none."""
    for path in [run_dir / name for name in LOG_FILES] + (
        [also / name for name in LOG_FILES] if also else []
    ):
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64_000))
                text = fh.read().decode("utf-8", errors="replace")
            return text.splitlines()[-n:]
    return []


def greater_is_better(metric: str | None) -> bool:
    return not any(word in (metric or "loss") for word in LOWER_IS_BETTER)


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def human_seconds(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "-"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


@dataclass
class RunView:
    """One row of the dashboard: a run folder (from the CLI or a job) and, for a job, its job object."""

    id: str
    path: Path | None
    job: dict | None = None
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    problem: str | None = None  # a damaged file, said plainly
    status: str = "unknown"
    alive: bool | None = None

    # ---- reading
    @classmethod
    def read(cls, run_id: str, path: Path | None, job: dict | None = None) -> RunView:
        view = cls(run_id, path, job)
        if path is not None and path.is_dir():
            try:
                view.summary = read_json(path / "run.json") or {}
                view.metrics = read_metrics(path / "metrics.jsonl")
                view.data = read_json(path / "data.json") or {}
                cfg = path / "config.yaml"
                if cfg.is_file():
                    import yaml

                    view.config = yaml.safe_load(cfg.read_text(encoding="utf-8", errors="replace")) or {}
            except (TuneforgeError, ValueError, OSError) as e:
                view.problem = str(e)
        view.status = view._status()
        return view

    def _status(self) -> str:
        s = self.summary
        if self.job is not None and self.job.get("status"):
            # the service keeps a job's status (its worker holds a lease and fails a job whose worker died)
            return str(self.job["status"])
        if s.get("finished"):
            return "succeeded"
        if self.path is None or not self.path.is_dir():
            return str((self.job or {}).get("status") or "unknown")
        self.alive = holder_alive(lock_holder(self.path))
        if self.alive is False:
            if not s and not self.metrics and self.job is None and not (self.path / "config.yaml").exists():
                return "empty"
            return "failed"  # the process is gone and the run did not finish: crashed or killed
        if s.get("status") in ("completed", "stopped early"):
            return "evaluating"  # trained; the final evaluation and report are being written
        if not s:
            return "starting"
        return "running"

    # ---- what the table and the run page show
    @property
    def name(self) -> str:
        if self.job is not None:
            return str(self.job.get("fine_tuned_model") or self.job.get("id"))
        return self.path.name if self.path else self.id

    @property
    def task(self) -> str:
        return str(self.config.get("task") or ("sft" if self.job else "-"))

    @property
    def model(self) -> str:
        return str((self.config.get("model") or {}).get("name") or (self.job or {}).get("model") or "-")

    @property
    def method(self) -> str:
        name = (self.config.get("method") or {}).get("name")
        if name:
            return str(name)
        m = (self.job or {}).get("method")
        return str(m.get("type") if isinstance(m, dict) else m or "-")

    @property
    def metric(self) -> str:
        return str(self.summary.get("metric") or (self.config.get("training") or {}).get("metric") or "loss")

    @property
    def step(self) -> int:
        return max((int(r["step"]) for r in self.metrics), default=0)

    @property
    def total_steps(self) -> int | None:
        """Planned optimizer steps: training.max_steps, else epochs × steps per epoch (step / epoch of a
        metrics record); the summary's count once finished."""
        if self.summary.get("steps") and self.status in ("succeeded", "evaluating", "failed"):
            if self.status != "failed":
                return int(self.summary["steps"])
        t = self.config.get("training") or {}
        if t.get("max_steps"):
            return int(t["max_steps"])
        per_epoch = next(
            (r["step"] / r["epoch"] for r in reversed(self.metrics) if r.get("epoch") and r.get("step")), None
        )
        if per_epoch and t.get("epochs"):
            return int(math.ceil(float(t["epochs"]) * round(per_epoch)))
        return None

    @property
    def progress(self) -> float | None:
        if self.status == "succeeded":
            return 1.0
        total = self.total_steps
        return min(1.0, self.step / total) if total else None

    @property
    def started(self) -> datetime | None:
        started = parse_time(self.summary.get("started"))
        if started is None and self.job and self.job.get("created_at"):
            started = datetime.fromtimestamp(int(self.job["created_at"]))
        if started is None and self.path is not None and self.path.exists():
            started = datetime.fromtimestamp(self.path.stat().st_mtime)
        return started

    @property
    def duration(self) -> float | None:
        if self.summary.get("wall_seconds") and self.status in ("succeeded", "evaluating"):
            return float(self.summary["wall_seconds"])
        if self.started is None:
            return None
        end = datetime.now()
        if self.status not in ACTIVE and self.path is not None and (self.path / "metrics.jsonl").exists():
            end = datetime.fromtimestamp((self.path / "metrics.jsonl").stat().st_mtime)
        return max(0.0, (end - self.started).total_seconds())

    @property
    def eta(self) -> float | None:
        """Seconds left: the job's estimated_finish, else the time per step so far times the steps left."""
        if self.status not in ("running", "starting"):
            return None
        if self.job and self.job.get("estimated_finish"):
            return max(0.0, float(self.job["estimated_finish"]) - datetime.now().timestamp())
        total, step = self.total_steps, self.step
        if not total or not step or self.duration is None:
            return None
        return self.duration / step * (total - step)

    @property
    def best(self) -> tuple[float, int] | None:
        """(best validation value of the run's metric, its step)."""
        if self.summary.get("best_metric") is not None:
            return float(self.summary["best_metric"]), int(self.summary.get("best_step") or 0)
        rows = [r for r in self.metrics if r.get("split") == "validation" and _num(r.get(self.metric))]
        if not rows:
            return None
        pick = max if greater_is_better(self.metric) else min
        r = pick(rows, key=lambda r: r[self.metric])
        return float(r[self.metric]), int(r["step"])

    def row(self) -> dict[str, Any]:
        """The table row (already formatted)."""
        best = self.best
        started = self.started
        return {
            "id": self.id,
            "name": self.name,
            "source": "job" if self.job is not None else "cli",
            "status": self.status,
            "task": self.task,
            "model": self.model,
            "method": self.method,
            "progress": self.progress,
            "step": self.step,
            "total_steps": self.total_steps,
            "eta": human_seconds(self.eta) if self.eta is not None else "-",
            "best": f"{self.metric} {best[0]:.4f} @ {best[1]}" if best else "-",
            "started": started.strftime("%Y-%m-%d %H:%M") if started else "-",
            "started_ts": started.timestamp() if started else 0.0,
            "duration": human_seconds(self.duration),
        }

    def events(self) -> list[dict[str, Any]]:
        """What happened, from the run files: start, each validation, checkpoints kept, the end."""
        out: list[dict[str, Any]] = []
        if self.summary.get("started"):
            out.append({"when": self.summary["started"], "message": f"started ({self.task}, {self.method})"})
        for r in self.metrics:
            if r.get("split") == "validation":
                vals = " ".join(
                    f"{k} {v:.4f}" for k, v in r.items() if k not in ("step", "epoch") and _num(v)
                )
                out.append({"when": f"step {r['step']}", "message": f"validation: {vals}"})
        s = self.summary
        if s.get("steps") is not None:
            out.append(
                {
                    "when": f"step {s['steps']}",
                    "message": f"training {s.get('status')}: final model from step {s.get('final_step')}",
                }
            )
        if s.get("finished"):
            out.append({"when": "end", "message": "evaluated; report written"})
        if self.status == "failed":
            out.append({"when": "end", "message": "the training process is gone and the run did not finish"})
        return out

    def checkpoints(self) -> list[dict[str, Any]]:
        """Resumable checkpoints (checkpoints/step-N), the best model and the final model."""
        if self.path is None:
            return []
        out = []
        folder = self.path / "checkpoints"
        if folder.is_dir():
            for p in sorted(folder.iterdir(), key=lambda p: _step_of(p.name)):
                if p.is_dir() and p.name.startswith("step-"):
                    out.append(
                        {"name": f"checkpoints/{p.name}", "step": _step_of(p.name), "kind": "resumable"}
                    )
        for name, kind in (("best", "best validation"), ("model", "final model")):
            p = self.path / name
            if p.is_dir():
                note = (
                    read_json(p / "tuneforge_model.json") if (p / "tuneforge_model.json").exists() else None
                )
                out.append({"name": name, "step": (note or {}).get("step"), "kind": kind})
        return out

    def preflight(self) -> dict[str, Any]:
        """The data audit headline and the memory estimate, as far as the run folder holds them."""
        audit = (self.data or {}).get("audit") or {}
        memory = self.summary.get("memory_estimate") or {}
        splits = {k: v for k, v in (self.data or {}).items() if isinstance(v, dict) and "examples" in v}
        return {
            "audit": audit.get("headline"),
            "findings": audit.get("findings") or [],
            "memory": memory,
            "splits": splits,
        }


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _step_of(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def memory_line(memory: dict) -> str:
    """The pre-flight memory estimate (``MemoryEstimate.to_dict``: figures in MB) as one line."""
    if not memory:
        return ""
    mb = {k: v for k, v in memory.items() if _num(v)}
    parts = [f"~{mb.get('total', 0) / 1024:.2f} GB peak"]
    if mb.get("available"):
        parts[0] += f" of {mb['available'] / 1024:.1f} GB available"
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "runtime"):
        if key in mb:
            parts.append(f"{key} {mb[key] / 1024:.2f}")
    line = parts[0] + (": " + ", ".join(parts[1:]) + " (GB)" if len(parts) > 1 else "")
    if memory.get("device"):
        line += f" on {memory['device']}"
    return line


def find_cli_runs(runs_dirs: list[Path]) -> dict[str, Path]:
    """{id: folder} of the run folders (those with config.yaml or run.json) directly under each runs dir.
    The id is the folder name (``name~2`` for a second folder of the same name in another runs dir)."""
    found: dict[str, Path] = {}
    for root in runs_dirs:
        root = Path(root)
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if (
                p.is_dir()
                and not p.name.startswith(".")
                and ((p / "config.yaml").exists() or (p / "run.json").exists())
            ):
                rid, n = p.name, 2
                while rid in found:
                    rid, n = f"{p.name}~{n}", n + 1
                found[rid] = p
    return found
