"""``--engine vllm``: the same OpenAI routes served by vLLM (GPU machines with ``vllm`` installed).

:class:`VLLMEngine` gives vLLM's ``LLMEngine`` the interface the routes use on tuneforge's engine (``submit``
returning a handle that streams :class:`~tuneforge.models.engine.Delta` events, ``max_context``, and adapter
slots): a scheduler thread calls ``LLMEngine.step`` while requests are in flight. LoRA adapters of a base are
loaded at run time as ``LoRARequest``s (vLLM caches them on the GPU); a full fine-tune is its own vLLM engine.
The chat template and stop tokens come from the run's tokenizer, as on our engine.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.models.engine import Completion, Delta, RequestHandle, SamplingParams, SchedulerThread


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise TuneforgeError(
            "--engine vllm needs vLLM, which is not installed here (pip install vllm, on a machine with a CUDA "
            "GPU). Without it, leave --engine out: tuneforge's own engine serves the same API."
        ) from None
    return vllm


class _LoRAIds:
    """vLLM's LoRA ids for adapter folders (vLLM loads and evicts them itself)."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()

    def slot(self, path: str) -> int:
        with self.lock:
            return self.ids.setdefault(path, len(self.ids) + 1)

    def release(self, slot: int) -> None:  # vLLM keeps its own LRU of adapters
        pass


class VLLMEngine(SchedulerThread):
    """vLLM's ``LLMEngine`` behind tuneforge's engine interface (``submit``/``start``/``stop``)."""

    def __init__(
        self, model: str, tokenizer, max_batch: int = 256, max_loras: int = 8, max_lora_rank: int = 64
    ):
        vllm = require_vllm()
        self.vllm = vllm
        args = vllm.EngineArgs(
            model=model,
            tokenizer=model,
            enable_lora=True,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            max_num_seqs=max_batch,
        )
        self.llm = vllm.LLMEngine.from_engine_args(args)
        self.tokenizer = tokenizer
        self.max_context = self.llm.model_config.max_model_len
        self.multilora = _LoRAIds()
        self._handles: dict[str, tuple[RequestHandle, dict[int, int]]] = {}
        self._ids = itertools.count()
        self.init_scheduler()

    def submit(
        self, prompt, params: SamplingParams | None = None, adapter: int = 0, tokenizer=None, on_event=None
    ):
        from vllm.lora.request import LoRARequest

        params = params or SamplingParams()
        params.check()
        lora = None
        if adapter:
            path = next(p for p, i in self.multilora.ids.items() if i == adapter)
            lora = LoRARequest(f"adapter-{adapter}", adapter, path)
        sp = self.vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None,
            seed=params.seed,
            skip_special_tokens=params.skip_special_tokens,
        )
        handle = RequestHandle(params.n, len(prompt), on_event)
        rid = f"req-{next(self._ids)}"
        with self._wake:
            self._handles[rid] = (handle, {})
            self.llm.add_request(rid, {"prompt_token_ids": list(prompt)}, sp, lora_request=lora)
            self._wake.notify()
        return handle

    # ---- the scheduler thread (SchedulerThread.start/stop)
    thread_name = "tuneforge-vllm"

    def has_work(self) -> bool:
        return bool(self._handles)

    def run_once(self) -> None:
        with self._wake:
            for rid, (handle, _) in list(self._handles.items()):
                if handle.cancelled:
                    self.llm.abort_request(rid)
                    self._handles.pop(rid)
            outputs = self.llm.step()
        for out in outputs:
            self._deliver(out)

    def _deliver(self, out) -> None:
        handle, sent = self._handles.get(out.request_id, (None, None))
        if handle is None:
            return
        for o in out.outputs:
            if handle.completions[o.index] is not None:
                continue
            text, done = o.text, o.finish_reason is not None
            finish = None if not done else ("length" if o.finish_reason == "length" else "stop")
            if done:
                handle.completions[o.index] = Completion(o.index, text, list(o.token_ids), finish)
            piece = text[sent.get(o.index, 0) :]
            if piece or done:
                handle._emit(Delta(o.index, piece, [], finish))
                sent[o.index] = len(text)
            if done:
                handle._finish(handle.completions[o.index])
        if out.finished:
            with self._lock:
                self._handles.pop(out.request_id, None)


def load_vllm(target: str | Path, pool, _served):
    """A served model on vLLM: a run folder (LoRA adapter on its base's engine, or a full fine-tune) or a base.
    ``_served(engine, tokenizer)`` makes the pool's Served record."""
    from tuneforge.models.load import load_tokenizer, resolve_model

    bases = pool.__dict__.setdefault("_vllm_bases", {})

    def base(path: str, tok):
        if path not in bases:
            bases[path] = VLLMEngine(path, tok, max_batch=max(pool.max_batch, 64)).start()
        return bases[path]

    if not isinstance(target, Path):
        tok = load_tokenizer(target)
        return _served(base(str(resolve_model(target)), tok), tok)
    from tuneforge.run import Run

    run = Run(target)
    tok = run.load_tokenizer()
    model_dir = run.check_model_files()
    if run.is_adapter:
        served = _served(base(str(resolve_model(run.config.model.name)), tok), tok)
        served.adapter = str(model_dir)
        return served
    return _served(base(str(model_dir), tok), tok)
