"""``create_app``: the OpenAI-compatible fine-tuning service as an ASGI app (FastAPI).

One app holds the API (files, fine-tuning jobs, models; chat and completions from
``serve/completions.py``; the dashboard from ``serve/dashboard/``) and, unless ``worker=False``, a job worker
in background threads that trains one job at a time in a child process. State: a ``Store`` (SQLite under the
home, or PostgreSQL); uploaded files and run folders on disk under the home.
"""

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tuneforge.serve.errors import APIError, error_response, install_handlers, not_found

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 512.0


def require_extra() -> None:
    """A clear message when the serve extra is not installed."""
    import importlib.util

    from tuneforge.errors import TuneforgeError

    missing = [
        m
        for m in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "multipart")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise TuneforgeError(f"the service needs the serve extra ({', '.join(missing)} missing): "
                             f"pip install 'tuneforge[serve]'")  # fmt: skip


def default_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".tuneforge").expanduser()


class ServiceContext:
    """What the routers (and the dashboard) share: the home, the store, the run folders and served models."""

    def __init__(
        self,
        home: Path,
        store,
        runs: list[Path] | tuple = (),
        models: list[Path] | tuple = (),
        max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
    ):
        self.home = Path(home).resolve()
        self.store = store
        self.pool = None  # the chat/completions engines (serve.completions.ModelPool), once mounted
        self.max_upload_bytes = max_upload_bytes
        dirs = [self.home / "runs", *(Path(r).resolve() for r in runs)]
        if Path("runs").is_dir():
            dirs.append(Path("runs").resolve())
        self.runs_dirs: list[Path] = list(dict.fromkeys(dirs))
        self.served: dict[str, Path] = {}  # `tuneforge serve --model RUN_DIR`: model id -> run folder
        for m in models:
            path = Path(m).resolve()
            name = path.name
            while name in self.served:
                name = f"{path.parent.name}-{name}"
            self.served[name] = path

    # ---- jobs and files, as the API shows them
    def jobs(self, project: str) -> list[dict]:
        """The project's jobs, newest first: OpenAI job objects plus ``run_dir`` (absolute, or None before the
        run folder exists)."""
        from tuneforge.serve.jobs import job_object

        out = []
        for j in self.store.jobs(project):
            run_dir = self.home / j["run_dir"]
            out.append({**job_object(j), "run_dir": str(run_dir) if run_dir.exists() else None})
        return out

    def files(self, project: str) -> list[dict]:
        from tuneforge.serve.files import file_object

        return [file_object(r) for r in self.store.files(project)]

    def file_audit(self, project: str, file_id: str) -> dict | None:
        """The stored validation of an upload: status, details (the lines and the fix), format, examples and the
        data audit (``AuditReport.to_dict()``: findings with file:line), or None when not this project's file."""
        row = self.store.file(project, file_id)
        if row is None:
            return None
        return {
            k: row[k] for k in ("id", "filename", "status", "status_details", "format", "examples", "audit")
        }

    # ---- models
    def base_models(self) -> list[str]:
        from tuneforge.models.catalogue import MODELS

        return [alias for alias, m in MODELS.items() if m.kind == "causal-lm"]

    def list_models(self, project: str) -> list[str]:
        """Every model id the project can call: base models, its fine-tuned models, served run folders."""
        ft = [
            j["fine_tuned_model"]
            for j in self.store.jobs(project)
            if j["fine_tuned_model"] and not j["model_deleted"]
        ]
        return [*self.base_models(), *ft, *self.served]

    def resolve_model(self, project: str, name: str) -> str | Path | None:
        """A model id -> a run folder (Path) for a fine-tuned model or a served run, a tuneforge model name or
        local folder (str) for a base model, or None when the project has no such model."""
        if not name:
            return None
        if name.startswith("ft:"):
            job = self.store.job_by_model(project, name)
            if job is None:
                return None
            run_dir = self.home / job["run_dir"]
            return run_dir if (run_dir / "model").exists() else None
        if name in self.served:
            return self.served[name]
        if name in self.base_models():
            return name
        return None


def create_app(
    home: str | Path | None = None,
    database: str | None = None,
    *,
    runs: list[str | Path] | tuple = (),
    models: list[str | Path] | tuple = (),
    worker: bool = True,
    jobs: int = 1,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    lease_seconds: float | None = None,
    engine: str = "tuneforge",
    max_batch: int = 32,
    dtype: str | None = None,
    prompt_cache_mb: float = 256,
):
    """The service as an ASGI app.

    ``home``: state folder (default ``$TUNEFORGE_HOME`` or ``~/.tuneforge``); ``database``: a SQLAlchemy URL
    (``postgresql://...``; default SQLite in the home); ``runs``: more folders of runs for the dashboard;
    ``models``: run folders to serve as models by their folder name; ``worker``: also train jobs in this
    process (``jobs`` at a time); ``max_upload_mb``: the largest upload accepted; ``engine``: the generation
    engine behind chat/completions ("tuneforge", or "vllm" on a GPU machine with vLLM), ``max_batch`` the
    sequences it decodes together, ``dtype`` the served weights' dtype (None: each run's own) and
    ``prompt_cache_mb`` the keys and values of recent prompts each engine keeps for prompts that start alike.
    """
    require_extra()
    from fastapi import FastAPI, Request

    from tuneforge.serve.auth import project_dependency
    from tuneforge.serve.files import files_router, too_large
    from tuneforge.serve.jobs import jobs_router
    from tuneforge.serve.store import Store, database_url

    home = Path(home).expanduser() if home else default_home()
    home.mkdir(parents=True, exist_ok=True)
    for sub in ("files", "runs", "jobs"):
        (home / sub).mkdir(exist_ok=True)
    store = Store(database_url(database, home))
    ctx = ServiceContext(home, store, runs, models, int(max_upload_mb * 2**20))
    job_worker = None
    if worker:
        from tuneforge.serve.worker import LEASE_SECONDS, Worker

        job_worker = Worker(store, home, jobs=jobs, lease=lease_seconds or LEASE_SECONDS)

    @asynccontextmanager
    async def lifespan(app):
        if job_worker is not None:
            job_worker.start()
        yield
        if job_worker is not None:
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, job_worker.shutdown)

    app = FastAPI(
        title="tuneforge", description="Fine-tuning service that speaks the OpenAI API", lifespan=lifespan
    )
    app.state.ctx = ctx
    app.state.worker = job_worker
    install_handlers(app)
    require_project = project_dependency(ctx)

    @app.middleware("http")
    async def upload_limit(request: Request, call_next):
        if request.method == "POST" and request.url.path.rstrip("/") == "/v1/files":
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > ctx.max_upload_bytes + 64 * 1024:
                return error_response(too_large(ctx.max_upload_bytes))
        try:
            return await call_next(request)
        except APIError as e:  # raised outside a route (a dependency of a mounted router)
            return error_response(e)

    app.include_router(files_router(ctx, require_project))
    app.include_router(jobs_router(ctx, require_project))
    app.include_router(models_router(ctx, require_project))
    try:
        from tuneforge.serve.completions import completions_router
    except ImportError as e:
        if "tuneforge.serve.completions" not in str(e):
            raise
        log.warning("chat completions are not available: tuneforge.serve.completions is missing")
    else:
        from tuneforge.serve.completions import ModelPool

        ctx.pool = ModelPool(max_batch=max_batch, engine=engine, dtype=dtype, prompt_cache_mb=prompt_cache_mb)
        app.include_router(completions_router(require_project, ctx.resolve_model, pool=ctx.pool))
    try:
        from tuneforge.serve.dashboard import dashboard_router
    except ImportError as e:
        if "tuneforge.serve.dashboard" not in str(e):
            raise
    else:
        app.include_router(dashboard_router(ctx))
    return app


def model_object(ident: str, owned_by: str, created: float | None = None) -> dict[str, Any]:
    return {"id": ident, "object": "model", "created": int(created or 0), "owned_by": owned_by}


def models_router(ctx: ServiceContext, require_project):
    import shutil

    from fastapi import APIRouter, Depends

    router = APIRouter(prefix="/v1")

    def _all(project: str) -> list[dict]:
        out = [model_object(m, "tuneforge") for m in ctx.base_models()]
        for j in ctx.store.jobs(project):
            if j["fine_tuned_model"] and not j["model_deleted"]:
                out.append(model_object(j["fine_tuned_model"], project, j["finished_at"]))
        for name, path in ctx.served.items():
            out.append(model_object(name, "local", path.stat().st_mtime if path.exists() else None))
        return out

    @router.get("/models")
    def list_models(project: str = Depends(require_project)):
        return {"object": "list", "data": _all(project)}

    @router.get("/models/{model:path}")
    def retrieve_model(model: str, project: str = Depends(require_project)):
        for m in _all(project):
            if m["id"] == model:
                return m
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.", "model",
                       "model_not_found")  # fmt: skip

    @router.delete("/models/{model:path}")
    def delete_model(model: str, project: str = Depends(require_project)):
        job = ctx.store.job_by_model(project, model) if model.startswith("ft:") else None
        if job is None:
            if model in ctx.base_models() or model in ctx.served:
                raise APIError(403, f"'{model}' is not a fine-tuned model of this project; only those can be deleted.",
                               "model", "model_not_deletable")  # fmt: skip
            raise not_found("model", model, "model")
        ctx.store.update_job(job["id"], model_deleted=True)
        run_dir = ctx.home / job["run_dir"]
        if ctx.pool is not None:  # a loaded engine or adapter of it goes too
            ctx.pool.forget(run_dir)
        for sub in ("model", "best", "checkpoints"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        ctx.store.add_event(
            job["id"], f"Fine-tuned model {model} deleted at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        return {"id": model, "object": "model", "deleted": True}

    return router
