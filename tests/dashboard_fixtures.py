"""Helpers of the dashboard tests: a service context made of the real key store and fixed jobs/files, an app
with only the dashboard router, and run folders written the way training writes them."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import from_dict


@dataclass
class FakeCtx:
    """What ``dashboard_router`` reads from the service's context: the real Store (keys, sessions) and fixed
    jobs and files."""

    home: Path
    runs_dirs: list[Path]
    store: object = None
    job_list: dict[str, list[dict]] = field(default_factory=dict)
    file_list: dict[str, list[dict]] = field(default_factory=dict)
    audits: dict[str, dict] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: ["tiny-base", "ft:tiny-base:demo:ftjob-1"])

    def jobs(self, project):
        return list(self.job_list.get(project, []))

    def files(self, project):
        return list(self.file_list.get(project, []))

    def file_audit(self, project, file_id):
        if not any(f["id"] == file_id for f in self.files(project)):
            return None
        return self.audits.get(file_id)

    def list_models(self, project):
        return list(self.models)

    def resolve_model(self, project, name):
        return name


def make_ctx(tmp: Path) -> tuple[FakeCtx, str]:
    """A context with one project key ('alpha'); returns (ctx, key)."""
    from tuneforge.serve.auth import create_key
    from tuneforge.serve.store import Store

    (tmp / "runs").mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{tmp / 'state.db'}")
    key, _ = create_key(store, "alpha")
    return FakeCtx(home=tmp, runs_dirs=[tmp / "runs"], store=store), key


def make_app(ctx):
    """A FastAPI app holding only the dashboard (the service's API errors rendered as it renders them)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from tuneforge.serve.dashboard import dashboard_router
    from tuneforge.serve.errors import APIError

    app = FastAPI()

    @app.exception_handler(APIError)
    def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    app.include_router(dashboard_router(ctx))
    return app


def write_run(
    folder: Path,
    *,
    steps: int = 10,
    finished: bool = True,
    lock: dict | None = None,
    lr: float = 1e-3,
    log: str | None = None,
    seed: int = 0,
) -> Path:
    """A classification run folder as training writes it: config.yaml, data.json, metrics.jsonl, run.json
    and (while 'running') the RunLock's holder line."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = from_dict(
        {
            "task": "classification",
            "model": {"name": "minilm-l6"},
            "data": {"train": "rotten_tomatoes"},
            "training": {"max_steps": steps, "lr": lr, "eval_every": 5, "log_every": 1},
            "output": {"dir": str(folder.parent), "name": folder.name},
        }
    )
    cfg.save(folder / "config.yaml")
    (folder / "data.json").write_text(
        json.dumps(
            {
                "train": {"examples": 80, "truncated": 0},
                "audit": {"headline": "100 rows in 3 splits · 0 exact dups", "findings": []},
            }
        )
    )
    lines = []
    for s in range(1, steps + 1):
        lines.append(
            {"step": s, "epoch": s / 10, "split": "train", "loss": round(1.0 / (s + seed), 4), "lr": lr}
        )
        if s % 5 == 0:
            lines.append(
                {"step": s, "epoch": s / 10, "split": "validation", "loss": 0.9 / s, "accuracy": 0.5 + s / 40}
            )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = {
        "status": "running",
        "started": "2026-12-01T10:00:00",
        "metric": "accuracy",
        "pid": os.getpid(),
    }
    if finished:
        summary = {
            **summary,
            "status": "completed",
            "finished": True,
            "steps": steps,
            "final_step": steps,
            "best_step": steps,
            "best_metric": 0.5 + steps / 40,
            "greater_is_better": True,
            "wall_seconds": 12.5,
            "train_seconds": 10.0,
            "examples_seen": steps * 8,
            "memory_estimate": {
                "total": 812.0,
                "weights": 90.0,
                "activations": 200.0,
                "unit": "MB",
                "device": "cpu",
            },
        }
    (folder / "run.json").write_text(json.dumps(summary))
    if lock is not None:
        (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "since": "x", **lock}) + "\n")
    if log is not None:
        (folder / "train.log").write_text(log)
    return folder


def dead_pid() -> int:
    """A pid that no process has now."""
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1
