"""The web dashboard served by ``tuneforge serve`` at ``/``: server-rendered pages (Jinja2), small vendored
scripts (no build step), live curves by server-sent events.

``dashboard_router(ctx)`` returns the ``APIRouter`` the service includes. Pages need a session: the login page
takes an API key and sets an HttpOnly, SameSite=Strict cookie (``serve/auth.py``); without one a page
redirects to ``/login``. The pages' scripts call the service's JSON API (``/v1/files``,
``/v1/fine_tuning/jobs``, ``/v1/chat/completions``) with that cookie.

Pages: ``/`` (runs and jobs), ``/runs/{id}`` (live curves, pre-flight, events, checkpoints, report),
``/compare``, ``/jobs/new``, ``/data/{file_id}``, ``/playground``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from tuneforge.serve.dashboard.runs import (
    ACTIVE,
    NAME,
    RunView,
    find_cli_runs,
    last_log_lines,
    memory_line,
)

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STREAM_INTERVAL = 1.0  # seconds between two looks at a run folder while a page follows it
PING_EVERY = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
JOB_OPTIONS_FIELD = (
    "tuneforge"  # serve/jobs.py: the extra body field of POST /v1/fine_tuning/jobs with tuneforge's own keys
)

__all__ = ["dashboard_router"]


def _status_code(e: BaseException) -> int | None:
    """The HTTP status of an error a dependency raised (FastAPI's HTTPException or the service's APIError)."""
    return getattr(e, "status_code", None) or getattr(e, "status", None)


class PageRoute(APIRoute):
    """A page: a request without a valid session is sent to ``/login?next=...`` instead of a JSON 401."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def page(request: Request):
            try:
                return await handler(request)
            except Exception as e:
                if _status_code(e) in (401, 403):
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
                raise

        return page


def _safe_next(target: str | None) -> str:
    """Only a local path (``/...``, not ``//host``) is followed after login."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _project_name(project: Any) -> str:
    for attr in ("name", "project"):
        if hasattr(project, attr):
            return str(getattr(project, attr))
    if isinstance(project, dict):
        return str(project.get("project") or project.get("name") or project)
    return str(project)


def dashboard_router(ctx) -> APIRouter:
    """The dashboard's pages and streams, bound to the service context ``ctx`` (home, runs_dirs, jobs, files,
    file_audit, list_models)."""
    from tuneforge.serve import auth

    service_dependency = auth.project_dependency(ctx)

    def require_project(request: Request) -> Any:
        """The caller's project (the service's check: a Bearer key or the session cookie)."""
        return service_dependency(request)

    router = APIRouter(include_in_schema=False)
    pages = APIRouter(route_class=PageRoute, include_in_schema=False)

    # ---- finding runs ------------------------------------------------------------------------------------
    def all_runs(project) -> list[RunView]:
        """This project's jobs (with their run folders) and the CLI runs under ctx.runs_dirs, newest first."""
        views: list[RunView] = []
        seen: set[Path] = set()
        for job in ctx.jobs(project):
            run_dir = Path(job["run_dir"]) if job.get("run_dir") else None
            if run_dir is not None:
                seen.add(run_dir.resolve())
            views.append(RunView.read(str(job["id"]), run_dir, job))
        seen |= job_run_dirs()  # other projects' jobs are not shown as CLI runs
        for rid, path in find_cli_runs(list(ctx.runs_dirs)).items():
            if path.resolve() not in seen:
                views.append(RunView.read(rid, path))
        views.sort(key=lambda v: v.row()["started_ts"], reverse=True)
        return views

    def job_run_dirs() -> set[Path]:
        """The run folders of every project's jobs (the service keeps them under its runs folder too)."""
        if hasattr(ctx, "job_run_dirs"):
            return {Path(p).resolve() for p in ctx.job_run_dirs()}
        store = getattr(ctx, "store", None)
        if store is None or not hasattr(store, "jobs"):
            return set()
        return {(Path(ctx.home) / j["run_dir"]).resolve() for j in store.jobs(None) if j.get("run_dir")}

    def one_run(project, run_id: str) -> RunView:
        if not NAME.match(run_id):
            raise HTTPException(404, f"no run {run_id!r}")
        for job in ctx.jobs(project):
            if str(job["id"]) == run_id:
                return RunView.read(run_id, Path(job["run_dir"]) if job.get("run_dir") else None, job)
        path = find_cli_runs(list(ctx.runs_dirs)).get(run_id)
        if path is None or path.resolve() in job_run_dirs():
            raise HTTPException(404, f"no run {run_id!r} in this project or under the runs folders")
        return RunView.read(run_id, path)

    def page(request: Request, name: str, project, **context):
        return TEMPLATES.TemplateResponse(
            request, name, {"project": _project_name(project), "path": request.url.path, **context}
        )

    # ---- login -------------------------------------------------------------------------------------------
    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/"):
        return TEMPLATES.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None})

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, key: str = Form(""), next: str = Form("/")):
        token = new_session(key.strip()) if key.strip() else None
        if token is None:
            return TEMPLATES.TemplateResponse(
                request,
                "login.html",
                {
                    "next": _safe_next(next),
                    "error": "That key is not valid. Check it, or create one with "
                    "`tuneforge keys create --project NAME`.",
                },
                status_code=401,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    def new_session(key: str) -> str | None:
        return auth.new_session(ctx, key)

    @router.post("/logout")
    def logout(request: Request):
        token = request.cookies.get(auth.SESSION_COOKIE)
        if token:
            auth.end_session(ctx, token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    @router.get("/static/dashboard/{name}")
    def static(name: str):
        if name not in {p.name for p in STATIC.iterdir()}:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    # ---- runs --------------------------------------------------------------------------------------------
    @pages.get("/", response_class=HTMLResponse)
    def index(request: Request, project: str = Depends(require_project)):
        rows = [v.row() for v in all_runs(project)]
        return page(request, "index.html", project, rows=rows, statuses=sorted({r["status"] for r in rows}))

    @router.get("/dashboard/runs.json")
    def runs_json(project: str = Depends(require_project)):
        return {"data": [v.row() for v in all_runs(project)]}

    @pages.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str, project: str = Depends(require_project)):
        view = one_run(project, run_id)
        has_report = view.path is not None and (view.path / "report.html").is_file()
        pre = view.preflight()
        return page(
            request,
            "run.html",
            project,
            run=view,
            row=view.row(),
            job=view.job,
            preflight=pre,
            memory=memory_line(pre["memory"]),
            events=view.events(),
            checkpoints=view.checkpoints(),
            has_report=has_report,
            log_lines=last_log_lines(view.path, also=Path(ctx.home) / "jobs" / view.id if view.job else None)
            if view.path is not None and view.status == "failed"
            else [],
            config_text=(view.path / "config.yaml").read_text(errors="replace")
            if view.path is not None and (view.path / "config.yaml").is_file()
            else "",
            error=(view.job or {}).get("error"),
        )

    @router.get("/runs/{run_id}/report.html")
    def run_report(run_id: str, project: str = Depends(require_project)):
        view = one_run(project, run_id)
        if view.path is None or not (view.path / "report.html").is_file():
            raise HTTPException(404, "this run has no report yet (it is written when the run finishes)")
        return FileResponse(view.path / "report.html", media_type="text/html")

    @router.get("/runs/{run_id}/metrics.json")
    def run_metrics(run_id: str, project: str = Depends(require_project)):
        view = one_run(project, run_id)
        return {
            "id": view.id,
            "name": view.name,
            "metric": view.metric,
            "metrics": view.metrics,
            "row": view.row(),
        }

    @router.get("/runs/{run_id}/stream")
    async def run_stream(request: Request, run_id: str, project: str = Depends(require_project)):
        one_run(project, run_id)  # 404 before the stream starts
        start = int(request.headers.get("last-event-id") or 0)

        async def events():
            sent, last_row, last_ping = start, None, time.monotonic()
            yield "retry: 2000\n\n"
            while True:
                view = await asyncio.to_thread(one_run, project, run_id)
                records = view.metrics
                if len(records) < sent:  # a resumed run dropped the records after its checkpoint
                    sent = 0
                    yield "event: reset\ndata: {}\n\n"
                if len(records) > sent:
                    yield f"id: {len(records)}\nevent: metrics\ndata: {json.dumps(records[sent:])}\n\n"
                    sent = len(records)
                row = view.row()
                row.pop("duration", None)
                if row != last_row:
                    yield f"event: status\ndata: {json.dumps(view.row())}\n\n"
                    last_row = row
                if view.status not in ACTIVE:
                    yield f"event: done\ndata: {json.dumps({'status': view.status})}\n\n"
                    return
                if time.monotonic() - last_ping > PING_EVERY:
                    yield ": ping\n\n"
                    last_ping = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_INTERVAL)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # ---- compare -----------------------------------------------------------------------------------------
    @pages.get("/compare", response_class=HTMLResponse)
    def compare(request: Request, project: str = Depends(require_project)):
        from tuneforge.errors import TuneforgeError
        from tuneforge.report.compare import compare_runs, fmt_ci

        views = all_runs(project)
        chosen = [r for r in request.query_params.getlist("run") if r]
        result, error, key = None, None, None
        if chosen:
            by_id = {v.id: v for v in views}
            missing = [c for c in chosen if c not in by_id or by_id[c].path is None]
            if missing:
                error = f"not runs of this project: {', '.join(missing)}"
            elif len(chosen) < 2:
                error = "pick at least two runs to compare"
            else:
                key = hashlib.sha256("\n".join(chosen).encode()).hexdigest()[:16]
                out = Path(ctx.home) / "dashboard" / "compare"
                try:
                    result = compare_runs([by_id[c].path for c in chosen], out, stem=key)
                except TuneforgeError as e:
                    error = str(e)
        return page(
            request,
            "compare.html",
            project,
            runs=[v.row() for v in views if v.path is not None],
            chosen=chosen,
            result=result,
            key=key,
            error=error,
            fmt_ci=fmt_ci,
        )

    @router.get("/compare/{key}.html")
    def compare_html(key: str, project: str = Depends(require_project)):
        path = Path(ctx.home) / "dashboard" / "compare" / f"{key}.html"
        if not key.isalnum() or not path.is_file():
            raise HTTPException(404, "no such comparison; open /compare and pick the runs again")
        return FileResponse(path, media_type="text/html")

    # ---- jobs, data, playground --------------------------------------------------------------------------
    @pages.get("/jobs/new", response_class=HTMLResponse)
    def new_job(request: Request, project: str = Depends(require_project)):
        files = [f for f in ctx.files(project) if f.get("purpose", "fine-tune") == "fine-tune"]
        models = ctx.list_models(project)
        return page(
            request,
            "new_job.html",
            project,
            models=models,
            default_model=next((m for m in models if not m.startswith("ft:")), ""),
            files=files,
            options_field=JOB_OPTIONS_FIELD,
            methods=("lora", "full", "freeze", "dora", "ia3", "prefix", "prompt", "unfreeze"),
        )

    @pages.get("/data/{file_id}", response_class=HTMLResponse)
    def data_page(
        request: Request, file_id: str, fragment: bool = False, project: str = Depends(require_project)
    ):
        if not NAME.match(file_id):
            raise HTTPException(404, "no such file")
        audit = ctx.file_audit(project, file_id)
        if audit is None:
            raise HTTPException(404, f"no file {file_id} in this project")
        file = next((f for f in ctx.files(project) if f.get("id") == file_id), {"id": file_id})
        view = audit_view(audit)
        return page(
            request, "data_fragment.html" if fragment else "data.html", project, file=file, audit=view
        )

    @pages.get("/playground", response_class=HTMLResponse)
    def playground(request: Request, model: str | None = None, project: str = Depends(require_project)):
        models = ctx.list_models(project)
        tuned = [m for m in models if m.startswith("ft:")]
        right = model or (
            tuned[0] if tuned else (models[1] if len(models) > 1 else (models[0] if models else ""))
        )
        base = (
            right.split(":")[1]
            if right.startswith("ft:") and right.count(":") >= 2
            else (models[0] if models else "")
        )
        return page(request, "playground.html", project, models=models, left=base, right=right)

    @router.post("/dashboard/parse-yaml")
    async def parse_yaml(request: Request, project: str = Depends(require_project)):
        """A pasted YAML config -> the JSON object the job's ``tuneforge`` field takes (errors name the line)."""
        import yaml

        text = (await request.body()).decode("utf-8", errors="replace")
        try:
            data = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            return JSONResponse(
                {
                    "error": {
                        "message": f"the YAML config, {where}{getattr(e, 'problem', None) or e}. Fix the "
                        f"indentation or quoting there.",
                        "type": "invalid_request_error",
                        "param": "yaml",
                        "code": "invalid_yaml",
                    }
                },
                status_code=400,
            )
        if not isinstance(data, dict):
            return JSONResponse(
                {
                    "error": {
                        "message": "the YAML config must be a mapping of sections (training:, method: ...), "
                        f"not a {type(data).__name__}.",
                        "type": "invalid_request_error",
                        "param": "yaml",
                        "code": "invalid_yaml",
                    }
                },
                status_code=400,
            )
        return {"options": data}

    @router.get("/dashboard/health")
    def health():
        return JSONResponse({"ok": True})

    router.include_router(pages)
    return router


def audit_view(audit: dict) -> dict:
    """What the data page shows from ``ctx.file_audit``: the errors with their lines, and the audit report
    (``AuditReport.to_dict()``: headline, splits, findings), whichever of them the result holds."""
    report = audit.get("audit") if isinstance(audit.get("audit"), dict) else None
    if report is None and "findings" in audit:
        report = audit
    errors: list[dict] = []
    for e in audit.get("errors") or []:
        errors.append(e if isinstance(e, dict) else {"message": str(e)})
    err = audit.get("error")
    if isinstance(err, dict) and err.get("message"):
        errors.append({"message": err["message"], "line": err.get("line")})
    elif isinstance(err, str):
        errors.append({"message": err})
    if audit.get("status_details") and not errors and audit.get("status") == "error":
        errors.append({"message": str(audit["status_details"])})
    return {
        "status": audit.get("status") or ("error" if errors else "processed"),
        "errors": errors,
        "report": report,
        "headline": (report or {}).get("headline"),
        "raw": audit,
    }
