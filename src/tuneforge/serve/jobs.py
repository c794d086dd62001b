"""The fine-tuning jobs API (``/v1/fine_tuning/jobs``): create, list, retrieve, cancel, pause, resume, events,
checkpoints; the ``"auto"`` hyperparameters; and the tuneforge run config a job trains.

A job request is OpenAI's (``model``, ``training_file``, ``validation_file``, ``method`` with
``supervised``/``dpo`` ``hyperparameters``, ``suffix``, ``seed``, ``metadata``) plus one field of tuneforge's
own, ``tuneforge`` (from the openai client: ``extra_body={"tuneforge": {...}}``): any run-config key, nested
(``{"method": {"name": "dora", "r": 8}}``) or dotted (``{"training.max_steps": 200}``). It is applied last,
over the hyperparameters; the keys the job owns (task, model.name, data.train, data.validation, output.*,
training.seed) are refused with the parameter to use instead.

``"auto"`` hyperparameters (the chosen values are written on the job):

- ``n_epochs``: 3, raised for small files so that at least 100 examples are seen (at most 25 epochs) and
  lowered for large ones to about 25,000 examples seen (at least 1);
- ``batch_size``: the power of two nearest below examples / 32, between 1 and 16 (8 for DPO, which holds
  two answers and a reference pass per example);
- ``learning_rate_multiplier``: times tuneforge's base rate for the method and task (LoRA/DoRA SFT 2e-4,
  DPO 5e-5; full fine-tuning SFT 2e-5, DPO 5e-6; IA3 3e-3; prefix/prompt 1e-2), ``sqrt(batch_size / 8)``
  (the rate grows with the batch), halved for models over 1B parameters;
- ``beta`` (DPO): 0.1.
"""

import json
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.serve.errors import bad_request, conflict, not_found
from tuneforge.serve.files import DPO_FORMATS, SFT_FORMATS, page

MIN_EXAMPLES = 10  # as OpenAI: fewer cannot teach anything measurable
HYPER = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")
OWNED = {  # config keys the job sets itself -> the request field to use instead
    "task": "method.type",
    "model.name": "model",
    "data.train": "training_file",
    "data.validation": "validation_file",
    "training.seed": "seed",
    "output": "(the server chooses the run folder)",
}
BASE_LR = {  # (method, task) -> learning rate at multiplier 1 and batch size 8
    ("lora", "sft"): 2e-4, ("dora", "sft"): 2e-4, ("lora", "dpo"): 5e-5, ("dora", "dpo"): 5e-5,
    ("full", "sft"): 2e-5, ("full", "dpo"): 5e-6, ("freeze", "sft"): 2e-5, ("freeze", "dpo"): 5e-6,
    ("unfreeze", "sft"): 2e-5, ("unfreeze", "dpo"): 5e-6, ("ia3", "sft"): 3e-3, ("ia3", "dpo"): 1e-3,
    ("prefix", "sft"): 1e-2, ("prefix", "dpo"): 3e-3, ("prompt", "sft"): 1e-2, ("prompt", "dpo"): 3e-3,
}  # fmt: skip
DEFAULT_METHOD = "lora"
TASKS = {"supervised": "sft", "dpo": "dpo"}


def base_lr(method: str, task: str) -> float:
    return BASE_LR.get((method, task), 2e-4 if task == "sft" else 5e-5)


def auto_epochs(n: int) -> int:
    if n * 3 < 100:
        return min(25, math.ceil(100 / n))
    if n * 3 > 25000:
        return max(1, 25000 // n)
    return 3


def auto_batch_size(n: int, task: str) -> int:
    cap = 8 if task == "dpo" else 16
    return max(1, min(cap, 2 ** int(math.floor(math.log2(max(1.0, n / 32))))))


def auto_multiplier(batch_size: int, params: float | None) -> float:
    m = math.sqrt(batch_size / 8)
    if params is not None and params > 1e9:
        m /= 2
    return round(m, 4)


def model_params(path: Path) -> float | None:
    """Rough parameter count of a transformers folder, from its weight files (None when unknown)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        size = sum(p.stat().st_size for p in path.glob("*.safetensors")) or sum(
            p.stat().st_size for p in path.glob("*.bin")
        )
        per = 2 if str(cfg.get("torch_dtype") or cfg.get("dtype") or "").endswith("16") else 4
        return size / per if size else None
    except (OSError, ValueError):
        return None


def max_positions(path: Path) -> int | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config") or {}
    return cfg.get("max_position_embeddings") or text.get("max_position_embeddings") or cfg.get("n_positions")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the checkpoints a run folder holds (``checkpoints/step-N``), ascending."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^step-(\d+)$", p.name)))


def ft_name(job: dict) -> str:
    base = job["model"]
    if base.startswith("ft:"):  # a model tuned from a tuned model keeps the root base's name
        base = base.split(":")[1]
    if "/" in base or base.startswith(".") or base.startswith("~"):
        base = Path(base).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model"
    return f"ft:{base}:{job.get('suffix') or ''}:{job['id'].removeprefix('ftjob-')}"


# ---- request checks


def _number(value: Any, name: str, kind: type, lo: float, hi: float) -> Any:
    param = f"method.hyperparameters.{name}"
    if value == "auto" or value is None:
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(
            f'{name} must be a number or "auto", got {value!r}.', param, "invalid_hyperparameters"
        )
    if kind is int and not float(value).is_integer():
        raise bad_request(f"{name} must be a whole number, got {value!r}.", param, "invalid_hyperparameters")
    if not lo <= value <= hi:
        raise bad_request(
            f"{name} must be between {lo:g} and {hi:g}, got {value!r}.", param, "invalid_hyperparameters"
        )
    return kind(value)


def check_hyperparameters(raw: Any, method_type: str) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request(
            "hyperparameters must be an object.", "method.hyperparameters", "invalid_hyperparameters"
        )
    allowed = HYPER if method_type == "dpo" else HYPER[:3]
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise bad_request(f"unknown hyperparameter '{unknown[0]}' for method '{method_type}'; use "
                          f"{', '.join(allowed)}.", f"method.hyperparameters.{unknown[0]}",
                          "invalid_hyperparameters")  # fmt: skip
    out = {
        "n_epochs": _number(raw.get("n_epochs"), "n_epochs", int, 1, 50),
        "batch_size": _number(raw.get("batch_size"), "batch_size", int, 1, 256),
        "learning_rate_multiplier": _number(
            raw.get("learning_rate_multiplier"), "learning_rate_multiplier", float, 1e-6, 100
        ),
    }
    if method_type == "dpo":
        out["beta"] = _number(raw.get("beta"), "beta", float, 1e-6, 10)
    return out


def flatten_options(options: Any) -> dict[str, Any]:
    """``{"method": {"r": 8}, "training.max_steps": 5}`` -> ``{"method.r": 8, "training.max_steps": 5}``."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_request('tuneforge must be an object of config keys, e.g. {"method": {"name": "lora", "r": 8}}.',
                          "tuneforge", "invalid_options")  # fmt: skip
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    for k, v in options.items():
        walk(str(k), v)
    for key in flat:
        for owned, instead in OWNED.items():
            if key == owned or key.startswith(owned + "."):
                raise bad_request(f"tuneforge.{key} is set by the job; use {instead} instead.",
                                  f"tuneforge.{key}", "invalid_options")  # fmt: skip
    return flat


def _set(cfg: dict, dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if not key:
        cfg[section] = value
    else:
        cfg.setdefault(section, {})[key] = value


def resolve_base_model(name: Any) -> Path:
    from tuneforge.models.catalogue import MODELS
    from tuneforge.models.load import resolve_model

    if not isinstance(name, str) or not name.strip():
        raise bad_request("model is required: a tuneforge model name (GET /v1/models) or a local folder.",
                          "model", "invalid_model")  # fmt: skip
    if name in MODELS and MODELS[name].kind != "causal-lm":
        raise bad_request(f"{name} is an encoder model; fine-tuning jobs train chat models. Choose one of "
                          f"{', '.join(a for a, m in MODELS.items() if m.kind == 'causal-lm')}.", "model",
                          "model_not_available")  # fmt: skip
    try:
        path = resolve_model(name)
    except TuneforgeError as e:
        raise bad_request(f"The model '{name}' does not exist or is not available ({e}). GET /v1/models lists the "
                          f"models this server can fine-tune; a local transformers folder works too.", "model",
                          "model_not_found") from None  # fmt: skip
    return Path(path)


def _training_file(ctx, project: str, file_id: Any, param: str) -> dict:
    if not isinstance(file_id, str) or not file_id:
        raise bad_request(
            f"{param} is required: the id of an uploaded file (file-...).", param, "invalid_file"
        )
    row = ctx.store.file(project, file_id)
    if row is None:
        raise not_found("file", file_id, param)
    if row["purpose"] != "fine-tune":
        raise bad_request(f"{file_id} has purpose '{row['purpose']}'; upload the data with purpose 'fine-tune'.",
                          param, f"invalid_{param}")  # fmt: skip
    if row["status"] != "processed":
        raise bad_request(
            f"{file_id} cannot be trained on: {row['status_details']}", param, f"invalid_{param}"
        )
    return row


def create_job(ctx, project: str, body: dict) -> dict:
    """Check a job request (``APIError`` 400/404 naming the parameter) and queue the job."""
    from tuneforge.config import from_dict
    from tuneforge.serve.store import new_id

    known = {"model", "training_file", "validation_file", "method", "hyperparameters", "suffix", "seed",
             "metadata", "integrations", "tuneforge"}  # fmt: skip
    unknown = [k for k in body if k not in known]
    if unknown:
        raise bad_request(f"Unknown parameter '{unknown[0]}'. tuneforge's own options go in the 'tuneforge' "
                          f"field (extra_body={{\"tuneforge\": {{...}}}}).", unknown[0], "unknown_parameter")  # fmt: skip
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type", "supervised") not in TASKS:
        kind = method.get("type") if isinstance(method, dict) else method
        raise bad_request(
            f"method.type must be 'supervised' or 'dpo', got {kind!r}.", "method.type", "invalid_method"
        )
    mtype = method.get("type", "supervised")
    task = TASKS[mtype]
    raw_hyper = (
        (method.get(mtype) or {}).get("hyperparameters") if isinstance(method.get(mtype), dict) else None
    )
    if raw_hyper is None:
        raw_hyper = body.get("hyperparameters")
    hyper = check_hyperparameters(raw_hyper, mtype)
    train = _training_file(ctx, project, body.get("training_file"), "training_file")
    valid = None
    if body.get("validation_file") is not None:
        valid = _training_file(ctx, project, body["validation_file"], "validation_file")
    want = SFT_FORMATS if task == "sft" else DPO_FORMATS
    for row, param in ((train, "training_file"), (valid, "validation_file")):
        if row is not None and row["format"] not in want:
            shape = ('{"messages": [...]}' if task == "sft"
                     else '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}')  # fmt: skip
            raise bad_request(f"{row['id']} ({row['filename']}) holds '{row['format']}' rows, which a '{mtype}' job "
                              f"cannot train on. Upload rows like {shape}.", param, f"invalid_{param}")  # fmt: skip
    if train["examples"] < MIN_EXAMPLES:
        raise bad_request(f"Training file {train['id']} has {train['examples']} example(s), but must have at least "
                          f"{MIN_EXAMPLES}. Add examples and upload it again.", "training_file",
                          "invalid_training_file")  # fmt: skip
    suffix = body.get("suffix")
    if suffix is not None and (
        not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", suffix)
    ):
        raise bad_request(f"suffix must be 1-64 letters, digits, '-', '_' or '.', got {suffix!r}.", "suffix",
                          "invalid_suffix")  # fmt: skip
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise bad_request(
            f"seed must be an integer from 0 to 2147483647, got {seed!r}.", "seed", "invalid_seed"
        )
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or len(metadata) > 16
        or any(not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items())
    ):  # fmt: skip
        raise bad_request("metadata must be at most 16 string keys (64 characters) with string values (512).",
                          "metadata", "invalid_metadata")  # fmt: skip
    options = flatten_options(body.get("tuneforge"))
    parent = None  # a fine-tuned model as `model`: the new job continues from that job's run (lineage kept)
    if isinstance(body.get("model"), str) and body["model"].startswith("ft:"):
        parent = ctx.resolve_model(project, body["model"])
        if not isinstance(parent, Path):
            raise not_found("model", body["model"], "model")
        from tuneforge.run import Run

        model_path = resolve_base_model(Run(parent).config.model.name)
    else:
        model_path = resolve_base_model(body.get("model"))

    # ---- the run config: auto values, then the user's options over them
    job_id = new_id("ftjob")
    method_name = options.get("method.name", DEFAULT_METHOD)
    n = train["examples"]
    chosen = {
        "n_epochs": auto_epochs(n) if hyper["n_epochs"] == "auto" else hyper["n_epochs"],
        "batch_size": auto_batch_size(n, task) if hyper["batch_size"] == "auto" else hyper["batch_size"],
    }
    chosen["learning_rate_multiplier"] = (
        auto_multiplier(chosen["batch_size"], model_params(model_path))
        if hyper["learning_rate_multiplier"] == "auto"
        else hyper["learning_rate_multiplier"]
    )
    if task == "dpo":
        chosen["beta"] = 0.1 if hyper["beta"] == "auto" else hyper["beta"]
    longest = max(train["max_chars"], valid["max_chars"] if valid else 0)
    limit = max_positions(model_path) or 2048
    max_length = min(limit, 2048, max(128, 2 ** math.ceil(math.log2(max(1, longest / 3)))))
    cfg: dict[str, Any] = {
        "task": task,
        "model": (
            {"from_run": str(parent.resolve())}
            if parent is not None
            else {"name": str(body["model"]) if not Path(str(body["model"])).exists() else str(model_path)}
        ),
        "data": {
            "train": train["train_path"] or train["path"],
            "validation": (valid["train_path"] or valid["path"]) if valid else None,
            "format": "preference" if task == "dpo" else train["format"],
            "max_length": max_length,
        },
        "method": {"name": method_name},
        "training": {
            "epochs": chosen["n_epochs"],
            "batch_size": chosen["batch_size"],
            "lr": base_lr(method_name, task) * chosen["learning_rate_multiplier"],
            "seed": seed,
            "keep_checkpoints": 3,
        },
        "output": {"dir": "runs", "name": job_id},
    }
    if task == "dpo":
        cfg["preference"] = {"beta": chosen["beta"]}
    for key, value in options.items():
        _set(cfg, key, value)
    try:
        resolved = from_dict(json.loads(json.dumps(cfg)), "tuneforge")
    except TuneforgeError as e:
        raise bad_request(
            f"{e}".replace("tuneforge: ", "tuneforge."), "tuneforge", "invalid_options"
        ) from None
    t = resolved.training
    # the steps the run will take (for progress and estimated_finish): as the loop counts them
    n_train = (
        n
        if valid
        else max(1, round(n * (1 - resolved.data.validation_fraction - resolved.data.test_fraction)))
    )
    if resolved.data.limit:
        n_train = min(n_train, resolved.data.limit)
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    total = t.max_steps or per_epoch * t.epochs
    tr = cfg["training"]
    tr.setdefault("log_every", max(1, total // 100))
    tr.setdefault("save_every", max(1, math.ceil(total / 10)))
    chosen = {"n_epochs": t.epochs, "batch_size": t.batch_size,
              "learning_rate_multiplier": round(t.lr / base_lr(resolved.method.name, task), 6),
              **({"beta": resolved.preference.beta} if task == "dpo" else {})}  # fmt: skip
    row = ctx.store.add_job(
        id=job_id, project=project, model=str(body["model"]), training_file=train["id"],
        validation_file=valid["id"] if valid else None, method={"type": mtype, mtype: {"hyperparameters": chosen}},
        suffix=suffix, seed=seed, meta=metadata, options=body.get("tuneforge"), config=cfg, status="validating_files",
        run_dir=f"runs/{job_id}", total_steps=total,
    )  # fmt: skip
    ctx.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    ctx.store.add_event(
        job_id,
        f"Validating training file: {train['id']}"
        + (f" and validation file: {valid['id']}" if valid else ""),
    )
    audit = train.get("audit") or {}
    warnings = [f for f in audit.get("findings", []) if f["severity"] == "warning"]
    for f in warnings[:5]:
        ctx.store.add_event(job_id, f"Data audit: {f['what']}. {f['fix']}", level="warn")
    ctx.store.update_job(job_id, when={"status": "validating_files"}, status="queued")
    ctx.store.add_event(job_id, "Files validated, moving job to queued state",
                        data={"method": resolved.method.name, "learning_rate": t.lr, "total_steps": total})  # fmt: skip
    return job_object(ctx.store.job(project, row["id"]))


# ---- objects


def job_object(job: dict) -> dict[str, Any]:
    mtype = job["method"]["type"]
    hyper = job["method"][mtype]["hyperparameters"]
    return {
        "id": job["id"],
        "object": "fine_tuning.job",
        "created_at": int(job["created_at"]),
        "error": job["error"],
        "fine_tuned_model": job["fine_tuned_model"],
        "finished_at": int(job["finished_at"]) if job["finished_at"] else None,
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"},
        "model": job["model"],
        "organization_id": job["project"],
        "result_files": job["result_files"] or [],
        "seed": job["seed"],
        "status": job["status"],
        "trained_tokens": job["trained_tokens"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "estimated_finish": int(job["estimated_finish"]) if job["estimated_finish"] else None,
        "integrations": [],
        "metadata": job["meta"],
        "method": job["method"],
        "user_provided_suffix": job["suffix"],
        "tuneforge": {
            "options": job["options"],
            "method": job["config"].get("method", {}).get("name"),
            "learning_rate": job["config"].get("training", {}).get("lr"),
            "step": job["last_step"],
            "total_steps": job["total_steps"],
            "attempts": job["attempts"],
            "model_deleted": job["model_deleted"],
        },
    }


def event_object(e: dict) -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": e["id"], "created_at": int(e["created_at"]),
            "level": e["level"], "message": e["message"], "data": e["data"], "type": e["type"]}  # fmt: skip


def checkpoint_object(job: dict, c: dict) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": c["id"],
        "created_at": int(c["created_at"]),
        "fine_tuned_model_checkpoint": f"{ft_name(job)}:ckpt-step-{c['step']}",
        "fine_tuning_job_id": job["id"],
        "metrics": c["metrics"] or {"step": c["step"]},
        "step_number": c["step"],
    }


# ---- state changes asked by the user


def cancel(ctx, project: str, job_id: str) -> dict:
    job = _job(ctx, project, job_id)
    if job["status"] in ("succeeded", "failed", "cancelled"):
        raise conflict(f"Job {job_id} has already {job['status'].replace('cancelled', 'been cancelled')}.",
                       "fine_tuning_job_id", "job_finished")  # fmt: skip
    ok = ctx.store.update_job(job_id, when={"status": job["status"]}, status="cancelled", finished_at=time.time(),
                              estimated_finish=None)  # fmt: skip
    if not ok:  # it changed meanwhile: answer from the new state
        return cancel(ctx, project, job_id)
    running = job["worker_id"] is not None and job["status"] == "running"
    ctx.store.add_event(job_id, "Job cancelled" + (": stopping at the end of the current step; the last checkpoint "
                                                   "is kept" if running else ""))  # fmt: skip
    return job_object(ctx.store.job(project, job_id))


def pause(ctx, project: str, job_id: str) -> dict:
    job = _job(ctx, project, job_id)
    if job["status"] not in ("queued", "running"):
        raise conflict(f"Job {job_id} is {job['status']}; only a queued or running job can be paused.",
                       "fine_tuning_job_id", "job_not_pausable")  # fmt: skip
    if not ctx.store.update_job(
        job_id, when={"status": job["status"]}, status="paused", estimated_finish=None
    ):
        return pause(ctx, project, job_id)
    ctx.store.add_event(job_id, "Job paused" + (": saving a checkpoint at the end of the current step"
                                                if job["status"] == "running" else ""))  # fmt: skip
    return job_object(ctx.store.job(project, job_id))


def resume(ctx, project: str, job_id: str) -> dict:
    job = _job(ctx, project, job_id)
    if job["status"] != "paused":
        raise conflict(f"Job {job_id} is {job['status']}; only a paused job can be resumed.",
                       "fine_tuning_job_id", "job_not_paused")  # fmt: skip
    if not ctx.store.update_job(job_id, when={"status": "paused"}, status="queued"):
        return resume(ctx, project, job_id)
    ctx.store.add_event(job_id, "Job resumed: queued to continue from its last checkpoint")
    return job_object(ctx.store.job(project, job_id))


def _job(ctx, project: str, job_id: str) -> dict:
    job = ctx.store.job(project, job_id)
    if job is None:
        raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
    return job


def jobs_router(ctx, require_project):
    from fastapi import APIRouter, Depends, Request
    from fastapi.concurrency import run_in_threadpool

    router = APIRouter(prefix="/v1/fine_tuning")

    @router.post("/jobs")
    async def create(request: Request, project: str = Depends(require_project)):
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("The request body is not valid JSON.", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.", None, "invalid_json")
        return await run_in_threadpool(create_job, ctx, project, body)

    @router.get("/jobs")
    def list_jobs(
        request: Request, after: str | None = None, limit: int = 20, project: str = Depends(require_project)
    ):
        wanted = {
            k[9:-1]: v
            for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        items = [
            job_object(j) for j in ctx.store.jobs(project)
            if all((j["meta"] or {}).get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        return page(items, after, limit)

    @router.get("/jobs/{job_id}")
    def retrieve(job_id: str, project: str = Depends(require_project)):
        return job_object(_job(ctx, project, job_id))

    @router.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, project: str = Depends(require_project)):
        return cancel(ctx, project, job_id)

    @router.post("/jobs/{job_id}/pause")
    def pause_job(job_id: str, project: str = Depends(require_project)):
        return pause(ctx, project, job_id)

    @router.post("/jobs/{job_id}/resume")
    def resume_job(job_id: str, project: str = Depends(require_project)):
        return resume(ctx, project, job_id)

    @router.get("/jobs/{job_id}/events")
    def events(
        job_id: str, after: str | None = None, limit: int = 20, project: str = Depends(require_project)
    ):
        _job(ctx, project, job_id)
        return page([event_object(e) for e in ctx.store.events(job_id)], after, limit)

    @router.get("/jobs/{job_id}/checkpoints")
    def checkpoints(
        job_id: str, after: str | None = None, limit: int = 10, project: str = Depends(require_project)
    ):
        job = _job(ctx, project, job_id)
        kept = set(checkpoint_steps(ctx.home / job["run_dir"]))  # the run keeps the newest few on disk
        rows = [checkpoint_object(job, c) for c in ctx.store.checkpoints(job_id) if c["step"] in kept]
        return page(rows, after, limit)

    return router
