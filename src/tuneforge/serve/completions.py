"""OpenAI's ``/v1/chat/completions`` and ``/v1/completions`` on the generation engine.

``completions_router(auth, resolve)`` is the router the fine-tuning service mounts: ``auth`` is a FastAPI
dependency that returns the caller's project, ``resolve(project, model)`` returns a run folder (a tuned model:
LoRA adapter or full fine-tune), a base model name, or None (404 ``model_not_found``). ``serving_app(run_dirs)``
is a standalone app for ``tuneforge serve --model RUN_DIR``: those runs (and nothing else) on ``/v1/models``
and the two completion routes.

Models are loaded on first use and kept by a :class:`ModelPool`: a base model has one engine, shared by every
LoRA adapter on it (each request's rows run with its own adapter, loaded into an LRU of adapter slots); a full
fine-tune (or an adapter that cannot be applied per row, e.g. DoRA, which is merged) is its own model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneforge.errors import TuneforgeError
from tuneforge.utils import bf16_native

try:
    from fastapi import Request
    from pydantic import BaseModel, ConfigDict, Field
except ImportError:  # pragma: no cover - the serve extra is missing
    raise TuneforgeError("serving needs FastAPI and uvicorn: pip install 'tuneforge[serve]'") from None

from tuneforge.serve.errors import APIError, bad_request

MAX_N = 16
MAX_STOPS = 4

# ---------------------------------------------------------------------------------------------- request shapes


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="tuneforge extra: sample from the k most likely tokens")
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions


# ------------------------------------------------------------------------------------------------- model pool


@dataclass
class Served:
    """A model ready to answer: its engine, its tokenizer, the adapter key (None: the model itself)."""

    engine: Any
    tokenizer: Any
    adapter: str | None = None  # LoRA adapter folder, applied per row on the shared base
    stop_ids: tuple[int, ...] = ()
    eos_ids: tuple[int, ...] = ()

    def slot(self) -> int:
        """The adapter's slot, reserved for one request (0: the base model)."""
        if self.adapter is None:
            return 0
        return self.engine.multilora.slot(self.adapter)


class ModelPool:
    """Loads models on first use and keeps their engines (one per base model, adapters sharing it).

    Args:
        max_batch: sequences an engine decodes together.
        engine: "tuneforge" (ours) or "vllm" (``serve/vllm_backend.py``, GPU machines with vllm installed).
        adapter_slots: LoRA adapters held in memory per base model (least recently used evicted beyond).
        dtype: the weights' dtype when served ("float32" or "bfloat16"); None: a run's own training
            dtype (fp32 where it is bf16 and the device has no native bf16 matmuls), float32 for a base model. bfloat16 roughly halves a CPU decode step where the CPU has
            native bf16 matmuls (AMX, AVX512-BF16).
        prompt_cache_mb: keys and values of recent prompts kept per engine, so a prompt that starts like one
            of them (a shared system prompt, a conversation's earlier turns) is prefilled from where they part
            (``Engine(prompt_cache_mb=)``); 0: off.
    """

    def __init__(
        self,
        max_batch: int = 32,
        engine: str = "tuneforge",
        adapter_slots: int = 8,
        dtype: str | None = None,
        prompt_cache_mb: float = 256,
    ):
        self.max_batch, self.kind, self.adapter_slots = max_batch, engine, adapter_slots
        self.prompt_cache_mb = prompt_cache_mb
        if dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16 (or None: each run's own), got {dtype!r}")
        self.dtype = dtype
        self._served: dict[str, Served] = {}
        self._bases: dict[tuple[str, str], Served] = {}
        self._lock = threading.Lock()

    def get(self, target: str | Path) -> Served:
        """The served model of a run folder (Path) or a base model name (str); loads it the first time."""
        key = str(target)
        with self._lock:
            if key not in self._served:
                self._served[key] = self._load(target)
            return self._served[key]

    def forget(self, target: str | Path) -> None:
        """Drop a model (e.g. a deleted fine-tune); a base engine stays while other adapters may use it."""
        with self._lock:
            served = self._served.pop(str(target), None)
            if served is not None and served.adapter is None and served not in self._bases.values():
                served.engine.stop()

    def close(self) -> None:
        with self._lock:
            for s in {id(s): s for s in [*self._served.values(), *self._bases.values()]}.values():
                s.engine.stop()
            self._served.clear()
            self._bases.clear()

    # ---- loading
    def _load(self, target: str | Path) -> Served:
        if self.kind == "vllm":
            from tuneforge.serve.vllm_backend import load_vllm

            return load_vllm(target, self, _served)
        if isinstance(target, Path):
            return self._load_run(target)
        return self._base(target, self.dtype or "float32", None)

    def _weights_dtype(self, own: str) -> str:
        """The dtype a model is served in: the pool's, else the model's own, except bf16 where the device has
        no native bf16 matmuls (an AVX2-only CPU emulates them, ~4x slower than fp32): fp32 there."""
        if self.dtype is not None:
            return self.dtype
        if own == "bfloat16" and not bf16_native(self._device().type == "cuda"):
            return "float32"
        return own

    def _device(self):
        import torch

        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _base(self, name: str, dtype: str, tokenizer) -> Served:
        """The shared engine of a base model (a MultiLoRA base); ``tokenizer`` overrides the base's own."""
        key = (name, dtype)
        if key not in self._bases:
            from tuneforge.models.engine import Engine
            from tuneforge.models.load import load_causal_lm, load_tokenizer
            from tuneforge.models.multilora import MultiLoRA

            model = load_causal_lm(name, dtype).to(self._device()).eval().requires_grad_(False)
            tok = load_tokenizer(name)
            ml = MultiLoRA(model, self.adapter_slots)
            engine = Engine(
                model,
                tok,
                max_batch=self.max_batch,
                multilora=ml,
                fast=True,
                prompt_cache_mb=self.prompt_cache_mb,
            ).start()
            self._bases[key] = _served(engine, tok)
        base = self._bases[key]
        return base if tokenizer is None else _served(base.engine, tokenizer)

    def _load_run(self, run_dir: Path) -> Served:
        from tuneforge.models.engine import Engine
        from tuneforge.models.multilora import UnsupportedAdapter, read_lora
        from tuneforge.run import Run

        run = Run(run_dir)
        if not run.task_class.generates():
            raise bad_request(
                f"{run_dir.name} is a '{run.config.task}' run: it has no language model to complete text.",
                "model",
                "model_not_supported",
            )
        tok = run.load_tokenizer()
        model_dir = run.check_model_files()
        if run.is_adapter:
            try:
                read_lora(model_dir)  # per-row LoRA on the shared base when the adapter allows it
                served = self._base(run.config.model.name, self._weights_dtype(run.config.model.dtype), tok)
                served.adapter = str(model_dir)
                return served
            except UnsupportedAdapter:
                pass
        model = run.load_model()
        own = str(next(model.parameters()).dtype).removeprefix("torch.")
        if self._weights_dtype(own) != own:
            from tuneforge.models.load import _dtype

            model = model.to(_dtype(self._weights_dtype(own)))
        if hasattr(model, "merge_and_unload") and not _prompt_learning(model):
            model = model.merge_and_unload()  # DoRA, IA3: folded into a copy of the weights
        try:
            model = model.eval().requires_grad_(False)
            engine = Engine(
                model, tok, max_batch=self.max_batch, fast=True, prompt_cache_mb=self.prompt_cache_mb
            ).start()
        except TuneforgeError as e:
            raise bad_request(f"{run_dir.name}: {e}", "model", "model_not_supported") from None
        return _served(engine, tok)


def _prompt_learning(model) -> bool:
    return any(getattr(c, "is_prompt_learning", False) for c in getattr(model, "peft_config", {}).values())


def _served(engine, tok) -> Served:
    from tuneforge.models.generate import stop_ids

    stops = tuple(stop_ids(tok)) if getattr(tok, "chat_template", None) else ()
    eos = (tok.eos_token_id,) if tok.eos_token_id is not None else ()
    return Served(engine, tok, None, stops or eos, eos)


# -------------------------------------------------------------------------------------------------- the routes


def completions_router(
    auth: Callable, resolve: Callable[[str, str], str | Path | None], pool: ModelPool | None = None
):
    """POST /v1/chat/completions and /v1/completions (OpenAI's shapes, streamed or not) for ``resolve``'s models."""
    from fastapi import APIRouter, Depends
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()
    router.pool = pool = pool or ModelPool()  # type: ignore[attr-defined]

    async def served(project: str, name: str) -> Served:
        target = resolve(project, name)
        if target is None:
            raise APIError(
                404,
                f"The model '{name}' does not exist or you do not have access to it. GET /v1/models lists them.",
                "model",
                "model_not_found",
            )
        try:
            return await run_in_threadpool(pool.get, target)
        except TuneforgeError as e:
            raise APIError(
                400, f"The model '{name}' cannot be loaded: {e}", "model", "model_not_supported"
            ) from None

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, project: str = Depends(auth)):
        from tuneforge.data.chat import render_prompt

        s = await served(project, body.model)
        messages = [_message(m, i) for i, m in enumerate(body.messages)]
        if messages[-1]["role"] == "assistant":
            raise bad_request("The last message is the assistant's: end with a user message.", "messages")
        try:
            text = render_prompt(s.tokenizer, messages)
        except Exception as e:  # a template that refuses the conversation (e.g. roles out of order)
            raise bad_request(
                f"The model's chat template cannot render these messages: {e}", "messages"
            ) from None
        ids = s.tokenizer(text, add_special_tokens=False)["input_ids"]
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = _params(body, max_tokens, s.stop_ids)
        return await _answer(s, body, [ids], params, "chat.completion", "chatcmpl")

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, project: str = Depends(auth)):
        s = await served(project, body.model)
        prompts = _prompts(body.prompt, s.tokenizer)
        params = _params(body, body.max_tokens, s.eos_ids)
        return await _answer(s, body, prompts, params, "text_completion", "cmpl")

    return router


def _message(m: ChatMessage, i: int) -> dict:
    content = m.content
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text":
                raise bad_request(
                    f"messages[{i}]: content parts of type '{part.get('type')}' are not supported (text only).",
                    f"messages.[{i}].content",
                )
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    role = "system" if m.role == "developer" else m.role
    return {"role": role, "content": content or ""}


def _prompts(prompt, tokenizer) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("The prompt is empty.", "prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    out = []
    for p in prompt:
        ids = tokenizer(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else list(p)
        if not ids:
            raise bad_request("A prompt is empty; give the text to continue.", "prompt")
        out.append(ids)
    return out


def _params(body: _Sampling, max_tokens: int | None, stop_ids: tuple[int, ...]):
    from tuneforge.models.engine import SamplingParams

    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOPS or any(not s for s in stop):
        raise bad_request(f"'stop' takes up to {MAX_STOPS} non-empty strings.", "stop")
    return SamplingParams(
        max_tokens=max_tokens or 0,  # 0: up to the context (set per prompt in _answer)
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        stop=stop,
        stop_token_ids=stop_ids,
        seed=body.seed,
        n=body.n,
    )


class _Relay:
    """Deltas from an engine's scheduler thread to one event loop, handed over once per engine step.

    One ``call_soon_threadsafe`` per delta would wake the loop once per stream per step (16 times a step at 16
    clients); on a machine with few cores each wake-up takes a core from the step's matmuls mid-way. The relay
    collects a step's deltas and wakes the loop once, when the engine's step ends (``Engine.step_listeners``).
    """

    def __init__(self, engine, loop: asyncio.AbstractEventLoop):
        self.engine, self.loop = engine, loop
        self.items: list = []
        self.lock = threading.Lock()
        engine.step_listeners.append(self.flush)

    @classmethod
    def of(cls, engine, loop: asyncio.AbstractEventLoop) -> _Relay | None:
        """The relay between ``engine`` and ``loop`` (None: the engine has no step listeners, e.g. vLLM's)."""
        if not hasattr(engine, "step_listeners"):
            return None
        with _RELAYS_LOCK:
            relays = engine.__dict__.setdefault("_relays", {})
            if loop not in relays:
                relays[loop] = cls(engine, loop)
            return relays[loop]

    def put(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))

    def flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        if not items:
            return
        try:
            self.loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # the loop closed: forget it
            with _RELAYS_LOCK:
                self.engine.__dict__.get("_relays", {}).pop(self.loop, None)
                if self.flush in self.engine.step_listeners:
                    self.engine.step_listeners.remove(self.flush)


_RELAYS_LOCK = threading.Lock()


def _deliver(items: list) -> None:
    for queue, item in items:
        queue.put_nowait(item)


async def _answer(s: Served, body: _Sampling, prompts: list[list[int]], params, kind: str, prefix: str):
    """Submit every prompt and answer (a JSON body, or an SSE stream of chunks)."""
    import dataclasses

    from fastapi.responses import StreamingResponse

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    relay = _Relay.of(s.engine, loop)

    def on_event(event, p: int) -> None:  # on the engine's thread
        if relay is not None:
            relay.put(events, (p, event))
        else:
            loop.call_soon_threadsafe(events.put_nowait, (p, event))

    handles = []
    limit = s.engine.max_context
    for p, ids in enumerate(prompts):
        if len(ids) >= limit:
            _cancel(handles)
            raise bad_request(
                f"This model's context is {limit} tokens; the prompt has {len(ids)}. Shorten the "
                f"{'messages' if kind == 'chat.completion' else 'prompt'}.",
                "messages" if kind == "chat.completion" else "prompt",
                "context_length_exceeded",
            )
        room = limit - len(ids)  # an answer runs up to the context at most (finish_reason "length")
        pp = dataclasses.replace(params, max_tokens=min(params.max_tokens or room, room))
        slot = s.slot()
        try:
            handles.append(
                s.engine.submit(
                    ids, pp, slot, s.tokenizer,
                    on_event=lambda e, p=p: on_event(e, p),
                )
            )  # fmt: skip
        except ValueError as e:
            if slot:
                s.engine.multilora.release(slot)
            _cancel(handles)
            raise bad_request(str(e)) from None
    rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    n = params.n
    total = len(prompts) * n

    def usage() -> dict:
        done = [c for h in handles for c in h.completions if c is not None]
        prompt_tokens = sum(h.prompt_tokens for h in handles)
        completion_tokens = sum(len(c.token_ids) for c in done)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    if not body.stream:
        left = total
        try:
            while left:
                _, event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                left -= event.finish_reason is not None
        except asyncio.CancelledError:
            _cancel(handles)
            raise
        choices = []
        for p, h in enumerate(handles):
            for c in h.completions:
                index = p * n + c.index
                if kind == "chat.completion":
                    choices.append(
                        {
                            "index": index,
                            "message": {"role": "assistant", "content": c.text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": c.finish_reason,
                        }
                    )
                else:
                    text = (s.tokenizer.decode(prompts[p]) if body.echo else "") + c.text
                    choices.append(
                        {"index": index, "text": text, "logprobs": None, "finish_reason": c.finish_reason}
                    )
        return {
            "id": rid,
            "object": kind,
            "created": created,
            "model": body.model,
            "choices": sorted(choices, key=lambda c: c["index"]),
            "usage": usage(),
            "system_fingerprint": None,
        }

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

    def chunk(choices: list[dict], usage_value=None) -> str:
        data = {
            "id": rid,
            "object": chunk_kind,
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            data["usage"] = usage_value
        return f"data: {json.dumps(data)}\n\n"

    def choice(index: int, text: str | None, finish: str | None, first: bool = False) -> dict:
        if kind == "chat.completion":
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def stream():
        try:
            if kind == "chat.completion":
                yield chunk([choice(i, None, None, first=True) for i in range(total)])
            elif body.echo:
                for p in range(len(prompts)):
                    for j in range(n):
                        yield chunk([choice(p * n + j, s.tokenizer.decode(prompts[p]), None)])
            left = total
            while left:
                p, event = await events.get()
                if isinstance(event, BaseException):
                    err = {"error": {"message": f"generation failed: {event}", "type": "server_error",
                                     "param": None, "code": "server_error"}}  # fmt: skip
                    yield f"data: {json.dumps(err)}\n\n"
                    break
                index = p * n + event.index
                if event.text:
                    yield chunk([choice(index, event.text, None)])
                if event.finish_reason is not None:
                    left -= 1
                    yield chunk([choice(index, None, event.finish_reason)])
            if include_usage:
                yield chunk([], usage())
            yield "data: [DONE]\n\n"
        finally:
            _cancel(handles)  # a client that went away stops its rows (a no-op once finished)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _cancel(handles) -> None:
    for h in handles:
        if not h.done:
            h.cancel()


# ------------------------------------------------------------------------------------------ the standalone app


def serving_app(
    run_dirs: list[str | Path],
    keys: list[str] | None = None,
    engine: str = "tuneforge",
    max_batch: int = 32,
    dtype: str | None = None,
    prompt_cache_mb: float = 256,
):
    """A FastAPI app serving these runs (``tuneforge serve --model RUN_DIR ...``): /v1/models and the completion
    routes. A model is named by its run folder's name (its full path works too). ``keys``: bearer keys that may
    call it (None: no key needed)."""
    from fastapi import Depends, FastAPI

    from tuneforge.serve.errors import install_handlers

    if engine == "vllm":
        from tuneforge.serve.vllm_backend import require_vllm

        require_vllm()  # say so at start-up, not at the first request
    elif engine != "tuneforge":
        raise TuneforgeError(f"--engine {engine}: unknown engine; use tuneforge (the default) or vllm.")
    runs: dict[str, Path] = {}
    for d in run_dirs:
        path = Path(d).resolve()
        if not (path / "config.yaml").exists():
            raise TuneforgeError(
                f"--model {d}: not a tuneforge run folder (no config.yaml). Give a run folder."
            )
        if path.name in runs:
            raise TuneforgeError(
                f"--model {d}: two runs are named '{path.name}'; rename one folder so each model has its own name."
            )
        runs[path.name] = path

    def auth(request: Request) -> str:
        if keys:
            header = request.headers.get("authorization", "")
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            if token not in keys:
                raise APIError(
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>' with a key this server was given.",
                    None,
                    "invalid_api_key",
                )
        return "default"

    def resolve(project: str, name: str) -> Path | None:
        if name in runs:
            return runs[name]
        path = Path(name).resolve()
        return path if path in runs.values() else None

    pool = ModelPool(max_batch=max_batch, engine=engine, dtype=dtype, prompt_cache_mb=prompt_cache_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.close()

    app = FastAPI(title="tuneforge serving", version="1", lifespan=lifespan)
    install_handlers(app)
    app.state.pool = pool
    app.include_router(completions_router(auth, resolve, pool))
    created = int(time.time())

    @app.get("/v1/models")
    def list_models(project: str = Depends(auth)):
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "tuneforge"} for n in runs],
        }

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str, project: str = Depends(auth)):
        if model_id not in runs:
            raise APIError(404, f"The model '{model_id}' does not exist.", "model", "model_not_found")
        return {"id": model_id, "object": "model", "created": created, "owned_by": "tuneforge"}

    return app
