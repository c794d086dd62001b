"""The files API (``/v1/files``) and the validation of an upload.

Accepted: OpenAI's supervised rows ``{"messages": [...]}`` (content as a string or a list of text parts),
OpenAI's preference rows ``{"input": {"messages": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}`` (converted on upload to tuneforge's ``preference`` rows, which the job
trains on), and every tuneforge row format (``tuneforge.data.formats``) in JSONL, JSON, CSV, TSV or Parquet.
An upload is read, converted and audited (``tuneforge.data.audit``) at once: a file the training would refuse
is ``status: "error"`` with ``status_details`` naming the lines and the fix; the full result is kept
(``GET /v1/files/{id}/audit``, ``ServiceContext.file_audit``).
"""

import json
import re
import shutil
from pathlib import Path
from typing import Annotated, Any

from tuneforge.errors import TuneforgeError
from tuneforge.serve.errors import APIError, bad_request, conflict, not_found

SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
DPO_FORMATS = ("preference", "openai_dpo")
MAX_EXAMPLE_CHARS = 1_000_000  # one example longer than this is surely a mistake (a whole file in one row)
MAX_SHOWN = 5  # problem lines named in status_details
PURPOSES = ("fine-tune",)
RESULT_PURPOSE = "fine-tune-results"


def is_openai_dpo(row: dict) -> bool:
    return "preferred_output" in row or "non_preferred_output" in row or isinstance(row.get("input"), dict)


def _text_of(content: Any, where: str, key: str) -> Any:
    """OpenAI content: a string, or a list of parts of which the text parts are joined."""
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text", "output_text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{key}[{k}] is a '{kind}' part; only text parts can be trained on")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    return content


def _turns(value: Any, where: str, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{key}[{k}] must be an object with 'role' and 'content'")
        if m.get("tool_calls") or m.get("function_call"):
            raise ValueError(
                f"{key}[{k}] holds tool calls, which tuneforge does not train on yet; remove the row"
            )
        if "content" not in m or m["content"] is None:
            raise ValueError(f"{key}[{k}] (a '{m.get('role')}' message) has no content")
        out.append({"role": m.get("role"), "content": _text_of(m["content"], where, f"{key}[{k}].content")})
    return out


def convert_row(row: dict, fmt: str, where: str) -> dict:
    """An OpenAI row as the tuneforge row it trains as (``ValueError`` naming the field)."""
    if fmt == "openai_dpo":
        inp = row.get("input")
        if not isinstance(inp, dict):
            raise ValueError("'input' must be an object with 'messages'")
        prompt = _turns(inp.get("messages"), where, "input.messages")
        chosen = _turns(row.get("preferred_output"), where, "preferred_output")
        rejected = _turns(row.get("non_preferred_output"), where, "non_preferred_output")
        for key, turns in (("preferred_output", chosen), ("non_preferred_output", rejected)):
            if turns[-1]["role"] != "assistant":
                raise ValueError(f"'{key}' must end with an assistant message")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if fmt == "messages" and isinstance(row.get("messages"), list):
        return {**row, "messages": _turns(row["messages"], where, "messages")}
    return row


def _chars(row: dict) -> int:
    return len(json.dumps(row, ensure_ascii=False))


def inspect_upload(path: Path, filename: str) -> dict[str, Any]:
    """Read, convert and audit an uploaded file. Returns the file fields: status, status_details, format,
    examples, max_chars, audit, and ``converted`` (rows to write as the training copy, or None)."""
    from tuneforge.data.audit import audit
    from tuneforge.data.audit.report import loc
    from tuneforge.data.formats import detect_format
    from tuneforge.data.io import BadRow, Table, read_table

    try:
        table = read_table(path, strict=False)
    except TuneforgeError as e:
        return _error(str(e).replace(str(path), filename))
    table.path = filename
    table.bad = [BadRow(filename, b.line, b.reason, b.raw, b.code) for b in table.bad]
    if not table.rows:
        shown = "; ".join(f"line {b.line}: {b.reason}" for b in table.bad[:MAX_SHOWN])
        return _error(f"{filename}: no readable examples" + (f" ({shown})" if shown else "") + ". Upload one JSON "
                      "object per line, e.g. {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, "
                      "{\"role\": \"assistant\", \"content\": \"...\"}]}.")  # fmt: skip
    if any(is_openai_dpo(r) for r in table.rows[:50]):
        fmt, audit_fmt = "openai_dpo", "preference"
    else:
        try:
            fmt = audit_fmt = detect_format(table)
        except TuneforgeError as e:
            return _error(str(e))
    problems: list[str] = []
    rows, lines, converted = [], [], fmt == "openai_dpo"
    for row, line in zip(table.rows, table.lines):
        where = f"{filename}:{line}"
        try:
            new = convert_row(row, fmt, where)
        except ValueError as e:
            problems.append(f"line {line}: {e}")
            continue
        converted = converted or new is not row
        if _chars(new) > MAX_EXAMPLE_CHARS:
            problems.append(f"line {line}: the example holds {_chars(new):,} characters (at most "
                            f"{MAX_EXAMPLE_CHARS:,}); split or shorten it")  # fmt: skip
            continue
        rows.append(new)
        lines.append(line)
    clean = Table(filename, rows, lines, table.bad)
    report = None
    if rows:
        try:
            report = audit(clean, fmt=audit_fmt).to_dict()
        except TuneforgeError as e:
            return _error(str(e))
    result = {
        "format": fmt,
        "examples": len(rows) - (sum(s["unusable"] for s in report["splits"]) if report else 0),
        "max_chars": max((_chars(r) for r in rows), default=0),
        "audit": report,
        "converted": rows if converted and not problems else None,
    }
    bad_lines = [f"line {b.line}: {b.reason}" for b in table.bad]
    errors = [f for f in (report or {}).get("findings", []) if f["severity"] == "error"]
    if bad_lines or problems or errors:
        parts = []
        if bad_lines or problems:
            listed = (bad_lines + problems)[:MAX_SHOWN]
            more = len(bad_lines) + len(problems) - len(listed)
            parts.append(f"{len(bad_lines) + len(problems)} row(s) cannot be read: " + "; ".join(listed)
                         + (f"; ... and {more} more" if more else "") + ". Fix or delete these lines.")  # fmt: skip
        for f in errors:
            if f["code"] == "malformed":
                continue  # already listed above, with the reason
            where = ", ".join(loc(w).replace(":", " line ", 1) for w in f["where"][:MAX_SHOWN])
            parts.append(f"{f['what']} ({where}). Fix: {f['fix']}")
        return {**result, "status": "error", "status_details": f"{filename} ({fmt}): " + " ".join(parts)}
    return {**result, "status": "processed", "status_details": None}


def _error(details: str) -> dict[str, Any]:
    return {"status": "error", "status_details": details, "format": None, "examples": 0, "max_chars": 0,
            "audit": None, "converted": None}  # fmt: skip


def file_object(row: dict) -> dict[str, Any]:
    """The OpenAI file object (plus a ``tuneforge`` field: the row format and the number of examples)."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row["status_details"],
        "expires_at": None,
        "tuneforge": {"format": row["format"], "examples": row["examples"]},
    }


def check_filename(name: str | None) -> str:
    if not name or name in (".", "..") or re.search(r"[/\\\x00]", name) or len(name) > 255:
        raise bad_request(
            f"Invalid filename {name!r}: give a plain file name (no path separators, at most 255 characters), "
            f"e.g. train.jsonl.",
            "file",
            "invalid_filename",
        )
    return name


def too_large(limit: int) -> APIError:
    return APIError(413, f"The file is larger than this server accepts ({limit:,} bytes). Split it, or start the "
                    f"server with a larger --max-upload-mb.", "file", "file_too_large")  # fmt: skip


def store_upload(ctx, project: str, upload, purpose: str) -> dict:
    """Save ``upload`` (a starlette UploadFile) under the home, validate it, record it; the file object."""
    from tuneforge.serve.store import new_id

    if purpose not in PURPOSES:
        raise bad_request(
            f"purpose must be 'fine-tune' on this server, got {purpose!r}.", "purpose", "invalid_purpose"
        )
    filename = check_filename(upload.filename)
    file_id = new_id("file")
    rel = Path("files") / file_id / filename
    dest = ctx.home / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with open(dest, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > ctx.max_upload_bytes:
                    raise too_large(ctx.max_upload_bytes)
                out.write(chunk)
        info = inspect_upload(dest, filename)
    except BaseException:
        shutil.rmtree(dest.parent, ignore_errors=True)
        raise
    converted = info.pop("converted")
    train_rel = None
    if converted is not None:
        train_rel = Path("files") / file_id / "train.jsonl"
        with open(ctx.home / train_rel, "w", encoding="utf-8") as f:
            for r in converted:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    row = ctx.store.add_file(
        id=file_id, project=project, filename=filename, purpose=purpose, bytes=size, path=str(rel),
        train_path=str(train_rel) if train_rel else None, **info,
    )  # fmt: skip
    return file_object(row)


def page(items: list[dict], after: str | None, limit: int, key: str = "id") -> dict:
    """OpenAI's cursor page over ``items`` (already in order): those after the one with id ``after``."""
    if limit < 1 or limit > 10000:
        raise bad_request(f"limit must be between 1 and 10000, got {limit}.", "limit", "invalid_limit")
    if after:
        ids = [i[key] for i in items]
        if after not in ids:
            raise bad_request(f"after: no object '{after}' in this list.", "after", "invalid_cursor")
        items = items[ids.index(after) + 1 :]
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": len(items) > limit,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
    }


def files_router(ctx, require_project):
    from fastapi import APIRouter, Depends, File, Form, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse

    router = APIRouter(prefix="/v1")

    @router.post("/files")
    async def create_file(
        file: Annotated[UploadFile, File()],
        purpose: Annotated[str, Form()],
        project: str = Depends(require_project),
    ):
        return await run_in_threadpool(store_upload, ctx, project, file, purpose)

    @router.get("/files")
    def list_files(
        purpose: str | None = None,
        limit: int = 10000,
        after: str | None = None,
        order: str = "desc",
        project: str = Depends(require_project),
    ):
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'.", "order")
        items = [file_object(r) for r in ctx.store.files(project, purpose)]
        return page(items if order == "desc" else items[::-1], after, limit)

    def _get(project: str, file_id: str) -> dict:
        row = ctx.store.file(project, file_id)
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    @router.get("/files/{file_id}")
    def retrieve_file(file_id: str, project: str = Depends(require_project)):
        return file_object(_get(project, file_id))

    @router.get("/files/{file_id}/content")
    def file_content(file_id: str, project: str = Depends(require_project)):
        row = _get(project, file_id)
        path = ctx.home / row["path"]
        if not path.is_file():
            raise APIError(410, f"The content of {file_id} is no longer on disk (its run was deleted).",
                           "file_id", "file_gone")  # fmt: skip
        return FileResponse(path, media_type="application/octet-stream", filename=row["filename"])

    @router.get("/files/{file_id}/audit")
    def file_audit(file_id: str, project: str = Depends(require_project)):
        """tuneforge's own: the validation and data-audit result of an upload."""
        return ctx.file_audit(project, file_id) or {}

    @router.delete("/files/{file_id}")
    def delete_file(file_id: str, project: str = Depends(require_project)):
        row = _get(project, file_id)
        users = ctx.store.jobs_using_file(file_id)
        if users:
            raise conflict(f"{file_id} is used by job(s) {', '.join(users)} that have not finished; cancel them "
                           f"first or wait.", "file_id", "file_in_use")  # fmt: skip
        ctx.store.delete_file(project, file_id)
        if row["purpose"] != RESULT_PURPOSE:
            shutil.rmtree((ctx.home / row["path"]).parent, ignore_errors=True)
        return {"id": file_id, "object": "file", "deleted": True}

    return router
