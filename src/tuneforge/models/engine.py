"""The generation engine: many requests at once on one model, continuous batching, sampling, streaming.

A request is a prompt (token ids), its :class:`SamplingParams` and, on a :class:`~tuneforge.models.multilora.
MultiLoRA` base, the adapter it runs with. The engine keeps one running batch:

* **Prefill**: waiting requests are prefilled together (left-padded, one forward pass, only the last position's
  logits computed) into a fresh cache, then merged into the running batch at the next decode step.
* **Decode**: one forward pass gives every running row its next token. Rows are left-padded to a common
  length; the attention mask hides the padding and each row keeps its own position ids, so a row's tokens are
  those it would get alone.
* **Leave**: a row that ends (a stop token, a stop string, ``max_tokens``) leaves at once; its cache row is
  dropped and columns that only padding uses are trimmed, so a short answer never waits for a long one.

The KV cache (:class:`BatchCache`) holds each layer's keys and values in buffers sized up front for the batch
(prompt + ``max_tokens`` of its longest row); a decode step writes one column in place instead of
concatenating the whole cache. Joining and leaving rebuild the buffers (once per event, not per token).

Greedy decoding equals ``model.generate`` token for token (tested); sampling applies temperature, top-k and
top-p (in that order, as transformers does) and draws from each sequence's own seeded generator, so a seeded
request gives the same answer whatever else runs beside it.

Use it synchronously (``engine.generate(prompts, params)``, which runs the loop in the caller) or start the
scheduler thread (``engine.start()``) and ``submit`` requests from any thread; ``RequestHandle`` streams
:class:`Delta` events as they come.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from tuneforge.errors import TuneforgeError
from tuneforge.threads import release_openmp_workers

# ---------------------------------------------------------------------------------------------------- requests


@dataclass
class SamplingParams:
    """How one request is answered. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 switch those off."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: Sequence[str] = ()  # strings that end the answer (not included in its text)
    stop_token_ids: Sequence[int] = ()  # tokens that end the answer (kept in token_ids, not in the text)
    seed: int | None = None  # None: drawn from torch's global generator (so torch.manual_seed fixes it)
    n: int = 1  # completions of the same prompt
    skip_special_tokens: bool = True

    def check(self) -> None:
        """Raise ValueError naming the field when a value cannot be used."""
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (self.temperature >= 0) or self.temperature == float("inf"):
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")


@dataclass
class Delta:
    """A streamed piece of sequence ``index`` of a request: new text and tokens; ``finish_reason`` on its last."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" on the last delta of the sequence


@dataclass
class Completion:
    """One finished sequence."""

    index: int
    text: str
    token_ids: list[int]  # generated tokens, a final stop token included
    finish_reason: str  # "stop" (stop token or string) | "length" (max_tokens or the context length)


class RequestHandle:
    """What ``Engine.submit`` returns: iterate ``stream()`` for deltas, or wait with ``result()``."""

    def __init__(
        self,
        n: int,
        prompt_tokens: int,
        on_event: Callable[[Delta | BaseException], None] | None,
        on_done: Callable[[], None] | None = None,
    ):
        self.prompt_tokens = prompt_tokens
        self._on_done = on_done
        self.completions: list[Completion | None] = [None] * n
        self._queue: queue.Queue = queue.Queue()
        self._on_event = on_event
        self._left = n
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.cancelled = False

    def _emit(self, event: Delta | BaseException) -> None:
        if self._on_event is not None:
            self._on_event(event)
        else:
            self._queue.put(event)

    def _finish(self, c: Completion) -> None:
        self.completions[c.index] = c
        self._left -= 1
        if self._left == 0:
            self._release()
            self._done.set()

    def _release(self) -> None:
        if self._on_done is not None:
            self._on_done()
            self._on_done = None

    def _fail(self, e: BaseException) -> None:
        self._error = e
        self._release()
        self._emit(e)
        self._done.set()

    def cancel(self) -> None:
        """Stop generating (a client went away); the rows leave at the next step."""
        self.cancelled = True

    def stream(self) -> Iterator[Delta]:
        """Deltas as the scheduler produces them, until every sequence has finished."""
        left = len(self.completions)
        while left:
            event = self._queue.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            left -= event.finish_reason is not None

    def result(self, timeout: float | None = None) -> list[Completion]:
        self._done.wait(timeout)
        if self._error is not None:
            raise self._error
        return list(self.completions)  # type: ignore[arg-type]

    @property
    def done(self) -> bool:
        return self._done.is_set()


@dataclass
class _Seq:
    """One sequence being generated (a request with ``n`` > 1 has ``n`` of them)."""

    handle: RequestHandle
    index: int
    prompt: list[int]
    params: SamplingParams
    adapter: int  # adapter slot (0: the base model)
    decode: Callable[[list[int]], str] | None
    generator: torch.Generator | None
    stop_ids: frozenset[int]
    max_new: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # text so far (up to a stop string)
    sent: int = 0  # characters of text already streamed
    sent_tokens: int = 0
    finish: str | None = None
    _decoded: str = ""  # the text of tokens[:_read]
    _prefix: int = 0  # where the last decoded window started
    _read: int = 0

    @property
    def position(self) -> int:  # position id of the next token fed to the model
        return len(self.prompt) + len(self.tokens) - 1

    def decoded(self, tokens: list[int], final: bool) -> str:
        """The text of ``tokens`` (the tokens so far, or all but an ending stop token), decoded incrementally:
        the tokens since the last complete character, after the window decoded before them for context (a
        tokenizer may drop a leading space at the start of what it decodes, so the new text is the difference),
        so a token costs the same at any length (decoding the whole answer at every token costs O(length) a
        token). A character cut between tokens waits for its next token, unless ``final``."""
        before = self.decode(tokens[self._prefix : self._read])
        after = self.decode(tokens[self._prefix :])
        if final or not after.endswith("\ufffd"):
            self._decoded += after[len(before) :]
            self._prefix, self._read = self._read, len(tokens)
        return self._decoded


# ------------------------------------------------------------------------------------------------------ cache


class BufferLayer(DynamicLayer):
    """A layer's keys and values in a buffer sized up front, (B, H, capacity, D); ``keys``/``values`` are views
    of the columns in use, ``start`` to ``length`` (absolute columns of the buffer). An update writes the new
    columns in place (the buffer is rebuilt, twice as wide as its columns in use, if ever full); dropping leading
    columns (``drop``) only moves ``start``."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.start = self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # uninitialised: columns are written before they are read (``set`` writes the first ``length``, an
        # update the next ones, a placed row its own end; the columns before a placed row's keep what was there
        # and the mask hides them); zeroing (and first touching) the columns reserved ahead costs ~40% of a
        # rebuild
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.k_buf = key_states.new_empty(b, h, self.capacity, d)
        self.v_buf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.start = self.length = 0
        self.is_initialized = True

    def set(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Replace the contents with (B, H, T, D) keys and values in a buffer of ``capacity`` columns."""
        self.capacity = max(capacity, keys.shape[-2])
        self.lazy_initialization(keys, values)
        self.length = keys.shape[-2]
        self.k_buf[:, :, : self.length] = keys
        self.v_buf[:, :, : self.length] = values
        self._views()

    def drop(self, columns: int) -> None:
        """Forget the first ``columns`` columns in use (no copy)."""
        self.start += columns
        self._views()

    @property
    def width(self) -> int:
        """Columns in use."""
        return self.length - self.start

    def _views(self) -> None:
        self.keys = self.k_buf[:, :, self.start : self.length]
        self.values = self.v_buf[:, :, self.start : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        if self.length + t > self.capacity:  # a longer answer than sized for: rebuild, twice as wide
            self.set(self.keys, self.values, 2 * (self.width + t))
        end = self.length + t
        self.k_buf[:, :, self.length : end] = key_states
        self.v_buf[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width if self.is_initialized else 0


class BatchCache(Cache):
    """The running batch's KV cache: one :class:`BufferLayer` per decoder layer."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[BufferLayer(capacity) for _ in range(num_layers)])

    def merge(self, other: BatchCache, capacity: int) -> None:
        """Append ``other``'s rows, left-padding the shorter side so both end at the same column."""
        for mine, theirs in zip(self.layers, other.layers):
            t = max(mine.width, theirs.width)
            keys = torch.cat([_left_pad(mine.keys, t), _left_pad(theirs.keys, t)], 0)
            values = torch.cat([_left_pad(mine.values, t), _left_pad(theirs.values, t)], 0)
            mine.set(keys, values, capacity)

    def place(self, rows: list[int], other: BatchCache) -> None:
        """Write ``other``'s rows (in order) into ``rows``, ending at the current last column (columns before
        theirs keep stale values: the mask hides them)."""
        index = torch.tensor(rows, device=other.layers[0].keys.device)
        for mine, theirs in zip(self.layers, other.layers):
            start = mine.length - theirs.width
            mine.k_buf[index, :, start : mine.length] = theirs.keys
            mine.v_buf[index, :, start : mine.length] = theirs.values

    def keep(self, rows: torch.Tensor, drop_columns: int, capacity: int) -> None:
        """Keep only ``rows`` (in that order) and drop the first ``drop_columns`` columns (padding of all)."""
        for layer in self.layers:
            layer.set(layer.keys[rows, :, drop_columns:], layer.values[rows, :, drop_columns:], capacity)

    def drop(self, columns: int) -> None:
        """Drop the first ``columns`` columns of every row (no copy)."""
        for layer in self.layers:
            layer.drop(columns)


def _left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, length, D) with zeros on the left."""
    return torch.nn.functional.pad(x, (0, 0, length - x.shape[-2], 0))


class PromptCache:
    """Keys and values of recent prompts, for automatic prefix caching: a new prompt that starts like a cached
    one (a shared system prompt, the earlier turns of a conversation, the same question again) is prefilled
    from where they part, its first tokens' keys and values copied from the cache. Entries are per adapter
    (an adapter changes keys and values), least recently used dropped beyond ``max_bytes``. Valid only while
    the weights stay as they are."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        # (adapter key, prompt tokens) -> one (keys (H, T, D), values (H, T, D)) per layer
        self.entries: OrderedDict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.hits = 0  # prompt tokens read from the cache
        self.misses = 0  # prompt tokens computed

    def clear(self) -> None:
        """Forget every entry and the counts."""
        self.entries.clear()
        self.bytes = self.hits = self.misses = 0

    def match(self, adapter, prompt: list[int]) -> tuple[int, tuple | None]:
        """The longest cached start of ``prompt`` (its length and entry) among entries of ``adapter``."""
        best, key = 0, None
        for k in self.entries:
            if k[0] != adapter or len(k[1]) <= best:
                continue
            n = _common_start(k[1], prompt)
            if n > best:
                best, key = n, k
        return best, key

    def get(self, key: tuple, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.entries.move_to_end(key)
        return [(k[:, :length], v[:, :length]) for k, v in self.entries[key]]

    def put(self, adapter, prompt: tuple[int, ...], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        key = (adapter, prompt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        size = _nbytes(layers)
        if size > self.max_bytes:
            return
        self.entries[key] = layers
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= _nbytes(dropped)


def _nbytes(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def _common_start(a: Sequence[int], b: Sequence[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def supports(model) -> str | None:
    """Why the engine cannot run ``model`` (None when it can): prompt-learning adapters and sliding windows."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        for c in peft_config.values():
            if getattr(c, "is_prompt_learning", False):
                return f"a {c.peft_type.value.lower()} adapter (virtual tokens) runs with model.generate"
    config = getattr(model, "config", None)
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        return f"layers of types {sorted(types)} (only full attention is batched by the engine)"
    return None


# ----------------------------------------------------------------------------------------------------- engine


def filter_logits(x: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of logits (B, V), as transformers' warpers: filtered tokens get -inf;
    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one)."""
    if 0 < top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1:
        ascending, order = x.sort(-1)
        remove = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False  # keep at least the most likely token
        x = x.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return x


def draw(x: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of logits (B, V) by inverse CDF: a uniform number from the row's generator against
    the cumulative probabilities (``torch.multinomial`` draws an exponential per vocabulary entry: ~30x the
    work for one sample)."""
    cdf = x.softmax(-1).cumsum(-1)  # (B, V)
    u = torch.cat([torch.rand(1, generator=g, device=x.device, dtype=cdf.dtype) for g in generators])
    u = (u * cdf[:, -1]).unsqueeze(1)  # (B, 1)
    # the first token whose cumulative probability exceeds u: a token of probability 0 is never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=x.shape[-1] - 1)


class SchedulerThread:
    """A background thread that calls :meth:`run_once` while :meth:`has_work` (checked under ``_wake``'s
    lock), and sleeps on ``_wake`` otherwise; a submit notifies ``_wake``. Shared by tuneforge's engine and
    the vLLM backend."""

    thread_name = "tuneforge-scheduler"

    def init_scheduler(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = False

    def has_work(self) -> bool:
        raise NotImplementedError

    def run_once(self) -> None:
        raise NotImplementedError

    def start(self):
        """Run the scheduler in a background thread (idempotent)."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.has_work():
                    self._wake.wait()
                if self._stop:
                    return
            self.run_once()


class Engine(SchedulerThread):
    """Continuous batching on one causal LM (a transformers model, a PeftModel, or a MultiLoRA base).

    Args:
        model: the model; its weights are used as they are (eval mode is set while the engine steps).
        tokenizer: decodes text for streaming and stop strings (a request may bring its own).
        max_batch: most sequences decoded together; more wait in the queue.
        max_context: longest prompt + answer (default: the model's ``max_position_embeddings``).
        multilora: a :class:`~tuneforge.models.multilora.MultiLoRA` on ``model`` (adapters per row).
        fast: run Llama-family models through :mod:`~tuneforge.models.fastdecode` (fused, prepacked
            projections; other models run their own forward). Only for weights that stay as they are while
            the engine lives (serving, chat, generation): the packed copy is made once.
        prompt_cache_mb: keep the keys and values of recent prompts, up to this many MB, and prefill a prompt
            that starts like one of them (at least ``min_prefix`` tokens) from where they part
            (:class:`PromptCache`); 0: off. Like ``fast``, only for weights that stay as they are.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        max_batch: int = 32,
        max_context: int | None = None,
        multilora=None,
        fast: bool = False,
        prompt_cache_mb: float = 0,
    ):
        why = supports(model)
        if why:
            raise TuneforgeError(f"the generation engine cannot run this model: {why}.")
        self.model = model
        self.fast = None
        if fast:
            from tuneforge.models.fastdecode import fast_decoder

            self.fast = fast_decoder(model, batch_hint=max_batch)
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        config = model.config
        self.max_context = max_context or getattr(config, "max_position_embeddings", None) or 4096
        self.num_layers = config.get_text_config(decoder=True).num_hidden_layers
        self.multilora = multilora
        self.device = next(model.parameters()).device
        self._waiting: list[_Seq] = []
        # the running batch, one entry per cache row; None: a free row (its sequence ended) that a joining
        # sequence takes over, or that compaction drops when none comes within ``linger`` steps
        self._rows: list[_Seq | None] = []
        self._free_since = 0  # the step at which the oldest free row was freed
        self.linger = 2
        self._cache: BatchCache | None = None
        self._admitting: list[_Seq] = []  # taken from the queue for the prefill under way
        self._mask: torch.Tensor | None = None  # (B, T) 1 for real tokens
        self.init_scheduler()
        self.reserve = 1024  # most columns reserved ahead of the current length
        self.steps = 0  # decode steps taken (for tests and stats)
        self.placed = 0  # sequences that joined into a free row (no cache copy)
        self.prompt_cache = PromptCache(int(prompt_cache_mb * 2**20)) if prompt_cache_mb > 0 else None
        self.min_prefix = 16  # shorter shared starts are computed again
        self.compactions = 0  # free rows dropped (a copy of the cache)
        self.trims = 0  # leading padding columns dropped without a copy (_trim)
        self.step_lock = threading.Lock()  # held while a step runs (a caller that changes weights takes it)
        # called after every step: a server hands all of a step's deltas to its event loop at once
        self.step_listeners: list[Callable[[], None]] = []

    # ---- submitting
    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams | None = None,
        adapter: int = 0,
        tokenizer=None,
        on_event: Callable[[Delta | BaseException], None] | None = None,
    ) -> RequestHandle:
        """Queue a prompt (token ids); it joins the running batch at the next step. ``adapter``: a slot of the
        engine's MultiLoRA (0: the base model; ``MultiLoRA.slot`` reserves it, the request releases it when it
        ends). ``on_event`` receives each Delta (else ``handle.stream()``)."""
        params = params or SamplingParams()
        params.check()
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("the prompt is empty")
        room = self.max_context - len(prompt)
        if room < 1:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens; the model's context is {self.max_context} tokens"
            )
        tok = tokenizer or self.tokenizer
        decode = None
        if tok is not None:
            skip = params.skip_special_tokens
            decode = lambda ids: tok.decode(ids, skip_special_tokens=skip)  # noqa: E731
        elif params.stop:
            raise ValueError("stop strings need a tokenizer")
        if params.temperature > 0:
            base_seed = params.seed if params.seed is not None else int(torch.randint(2**62, (1,)).item())
        release = None
        if adapter and self.multilora is not None:  # MultiLoRA.slot reserved the slot for this request
            release = lambda: self.multilora.release(adapter)  # noqa: E731
        handle = RequestHandle(params.n, len(prompt), on_event, release)
        seqs = []
        for i in range(params.n):
            gen = None
            if params.temperature > 0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(base_seed + i)
            seqs.append(
                _Seq(
                    handle, i, prompt, params, adapter, decode, gen,
                    frozenset(int(t) for t in params.stop_token_ids), min(params.max_tokens, room),
                )
            )  # fmt: skip
        with self._wake:
            self._waiting.extend(seqs)
            self._wake.notify()
        return handle

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None, adapters=None
    ) -> list[list[Completion]]:
        """Answer every prompt (token ids) and return each one's completions; runs the loop in this thread
        unless the scheduler thread is running."""
        adapters = adapters if adapters is not None else [0] * len(prompts)
        handles = [self.submit(p, params, a) for p, a in zip(prompts, adapters)]
        if self._thread is None:
            was_training = self.model.training
            self.model.eval()  # once for the whole loop, not per step
            try:
                while not all(h.done for h in handles):
                    self.step()
            finally:
                self.model.train(was_training)
        return [h.result() for h in handles]

    # ---- the scheduler thread (SchedulerThread.start/stop)
    thread_name = "tuneforge-engine"

    def start(self):
        """Run the scheduler in a background thread (idempotent). The calling thread, which usually loaded the
        model, first gives back its idle OpenMP workers: else the scheduler's parallel regions wait on sleeping
        workers (a decode step ~1.5x slower on 2 cores; ``threads.release_openmp_workers``)."""
        if self._thread is None and self.device.type == "cpu":
            release_openmp_workers()
        return super().start()

    def has_work(self) -> bool:
        return bool(self._waiting or self._rows)

    def run_once(self) -> None:
        self.step()

    @property
    def busy(self) -> int:
        """Sequences waiting or running."""
        return len(self._waiting) + len(self._running)

    def _free_rows(self) -> list[int]:
        """The cache rows no sequence holds (a finished one's, waiting for a joiner)."""
        return [i for i, s in enumerate(self._rows) if s is None]

    @property
    def _running(self) -> list[_Seq]:
        """The sequences being decoded (the batch's rows that are not free)."""
        return [s for s in self._rows if s is not None]

    # ---- one step
    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting sequences (prefill), then decode one token for every running sequence.

        Runs eagerly even where the model's blocks are compiled for training (GRPO samples through the
        policy): every decode step meets a new cache length, and each would recompile."""
        with self.step_lock, torch.compiler.set_stance("force_eager"):
            was_training = self.model.training
            if was_training:  # (a recursive walk over the modules: only when needed)
                self.model.eval()
            try:
                self._step()
            except Exception as e:  # fail every request in flight rather than hang its client
                failed = {}  # each handle once (a request with n > 1 has several sequences)
                for s in self._admitting + self._running + self._take_waiting():
                    failed[id(s.handle)] = s.handle
                for handle in failed.values():
                    if not handle.done:
                        handle._fail(e)
                self._rows, self._cache, self._mask = [], None, None
            finally:
                self._admitting = []
                if was_training:
                    self.model.train()
        for listener in list(self.step_listeners):
            listener()

    def _take_waiting(self) -> list[_Seq]:
        with self._lock:
            new, self._waiting = self._waiting, []
        return new

    def _step(self) -> None:
        self._drop_cancelled()
        with self._lock:
            room = self.max_batch - len(self._running)
            new, self._waiting = self._waiting[:room], self._waiting[room:]
        if new:
            self._admitting = new  # neither waiting nor running until the prefill merges them in
            self._prefill(new)
            self._admitting = []
        if self._rows:
            self._decode()

    def _drop_cancelled(self) -> None:
        """Requests whose client went away end now (finish_reason "stop", nothing more streamed)."""
        with self._lock:
            gone = [s for s in self._waiting if s.handle.cancelled]
            self._waiting = [s for s in self._waiting if not s.handle.cancelled]
        running = [s for s in self._running if s.handle.cancelled]
        for s in gone + running:
            s.finish = "stop"
            s.handle._finish(Completion(s.index, s.text, list(s.tokens), s.finish))
        if running:
            self._free_finished()

    def _capacity(self, seqs: list[_Seq], length: int) -> int:
        """Columns to allocate: current length + the most tokens a row may still add, so every row finishes
        without growing; at most ``reserve`` ahead (an answer allowed up to the whole context grows by
        doubling instead of reserving the context for every row)."""
        return length + min(max(s.max_new - len(s.tokens) for s in seqs), self.reserve) + 1

    def _allocation(self, seqs: list[_Seq], length: int) -> int:
        """Columns to allocate when the running batch's buffers are (re)built: what its rows need
        (``_capacity``) and, while requests may still join (the scheduler thread runs, or some wait), room for
        a joiner's answer as long as the longest of those rows' and the waiting requests' (at most ``reserve``).
        A request joining within that many steps then fits in a row freed meanwhile (``_fits``) instead of a
        rebuild: dropping the free rows and concatenating the joiner's cache copies the whole cache twice
        (~80 ms a join at 16 rows on SmolLM2-135M, fp32). Memory: the keys and values of up to twice the
        columns; attention reads only the columns in use."""
        need = self._capacity(seqs, length)
        with self._lock:
            waiting = [s.max_new for s in self._waiting]
        if self._thread is None and not waiting:
            return need
        return need + min(max([need - length - 1, *waiting]), self.reserve)

    def _set_adapters(self, seqs: list[_Seq | None]) -> None:
        if self.multilora is not None:
            # a free row runs a live row's adapter: a batch on one adapter stays on the one-adapter path
            spare = next((s.adapter for s in seqs if s is not None), 0)
            self.multilora.set_rows([spare if s is None else s.adapter for s in seqs], self.device)

    def _prefill(self, new: list[_Seq]) -> None:
        """One forward pass over the new prompts (left-padded); samples their first tokens, merges them in.
        Sequences with the same prompt and adapter (``n`` > 1, GRPO's groups) share one prefill row."""
        owner: dict[tuple, int] = {}
        row_of = [owner.setdefault((tuple(s.prompt), s.adapter), len(owner)) for s in new]
        first: dict[int, _Seq] = {}
        for r, s in zip(row_of, new):
            first.setdefault(r, s)
        unique = [first[r] for r in range(len(first))]
        ids, mask, positions, cache = self._prefill_inputs(unique)
        width = mask.shape[1]
        self._set_adapters(unique)
        logits = self._forward(ids, mask, positions, cache, last_only=True)  # (u, V)
        if self.prompt_cache is not None:
            self._remember(unique, mask, cache)
        if len(unique) < len(new):  # copy the shared rows out: (u, ...) -> (b, ...)
            rows = torch.tensor(row_of, device=self.device)
            logits, mask = logits[rows], mask[rows]
            cache.keep(rows, 0, width)
        free = self._free_rows()
        if self._cache is None:
            self._cache, self._mask = cache, mask
            for layer in cache.layers:  # size the buffers up front for the whole answers
                layer.set(layer.keys, layer.values, self._allocation(new, width))
            self._rows = list(new)
        elif self._fits(new, free, width):  # into free rows: no copy of the running rows' cache
            rows = free[: len(new)]
            self._cache.place(rows, cache)
            t = self._mask.shape[1]
            self._mask[rows] = torch.nn.functional.pad(mask, (t - width, 0))
            for r, s in zip(rows, new):
                self._rows[r] = s
            self.placed += len(new)
        else:
            if free:
                self._compact()
            total = self._running + new
            t = max(self._mask.shape[1], width)
            self._cache.merge(cache, self._allocation(total, t))
            pad = lambda m: torch.nn.functional.pad(m, (t - m.shape[1], 0))  # noqa: E731
            self._mask = torch.cat([pad(self._mask), pad(mask)], 0)
            self._rows += new
        self._accept(new, self._sample(logits, new))

    def _prefill_inputs(self, unique: list[_Seq]):
        """The prefill's ids (u, S), mask (u, W), positions (u, S) and cache: each row's prompt, minus the start
        found in the prompt cache, left-padded to S; the cache holds the cached starts (right-aligned in
        their P = W - S columns, so a row's columns read [padding, cached start, padding, rest of prompt])."""
        starts = [(0, None)] * len(unique)
        if self.prompt_cache is not None:
            self._cache_shared_starts(unique)
            starts = []
            for s in unique:
                n, key = self.prompt_cache.match(self._adapter_key(s.adapter), s.prompt)
                n = min(n, len(s.prompt) - 1)  # the last prompt token is always computed (its logits)
                starts.append((n, key) if n >= self.min_prefix else (0, None))
        p = max(n for n, _ in starts)
        rest = [s.prompt[n:] for s, (n, _) in zip(unique, starts)]
        t = max(len(r) for r in rest)
        ids = torch.zeros((len(unique), t), dtype=torch.long)
        mask = torch.zeros((len(unique), p + t), dtype=torch.long)
        positions = torch.zeros((len(unique), t), dtype=torch.long)
        for i, (r, (n, _)) in enumerate(zip(rest, starts)):
            ids[i, t - len(r) :] = torch.tensor(r)
            mask[i, p - n : p] = 1
            mask[i, p + t - len(r) :] = 1
            positions[i, t - len(r) :] = torch.arange(n, n + len(r))
        cache = BatchCache(self.num_layers, p + t)
        if p:
            found = {i: self.prompt_cache.get(key, n) for i, (n, key) in enumerate(starts) if n}
            for layer_index, layer in enumerate(cache.layers):
                k, v = next(iter(found.values()))[layer_index]
                keys = k.new_zeros(len(unique), k.shape[0], p, k.shape[-1])
                values = v.new_zeros(len(unique), v.shape[0], p, v.shape[-1])
                for i, cached in found.items():
                    k, v = cached[layer_index]
                    keys[i, :, p - k.shape[1] :] = k
                    values[i, :, p - v.shape[1] :] = v
                layer.set(keys, values, p + t)
            self.prompt_cache.hits += sum(n for n, _ in starts)
        if self.prompt_cache is not None:
            self.prompt_cache.misses += sum(len(r) for r in rest)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device), cache

    def _cache_shared_starts(self, unique: list[_Seq]) -> None:
        """Prompts of one adapter that start alike (at least ``min_prefix`` tokens) and arrive together: their
        shared start is computed once, as its own one-row prefill, into the prompt cache (else each row would
        compute it: the first batch of a server's requests with one system prompt)."""
        groups: dict = {}
        for s in unique:
            groups.setdefault(self._adapter_key(s.adapter), []).append(s)
        for key, seqs in groups.items():
            if len(seqs) < 2:
                continue
            shared = min(len(s.prompt) for s in seqs) - 1
            for s in seqs[1:]:
                shared = min(shared, _common_start(seqs[0].prompt, s.prompt))
            if shared < self.min_prefix or self.prompt_cache.match(key, seqs[0].prompt)[0] >= shared:
                continue
            start = seqs[0].prompt[:shared]
            cache = BatchCache(self.num_layers, shared)
            ids = torch.tensor([start], device=self.device)
            self._set_adapters(seqs[:1])
            self._forward(
                ids, torch.ones_like(ids), torch.arange(shared, device=self.device)[None], cache, True
            )
            self.prompt_cache.put(
                key, tuple(start), [(layer.keys[0], layer.values[0]) for layer in cache.layers]
            )
            self.prompt_cache.misses += shared

    def _remember(self, unique: list[_Seq], mask: torch.Tensor, cache: BatchCache) -> None:
        """Put each prefilled prompt's keys and values (its mask's columns) into the prompt cache."""
        for i, s in enumerate(unique):
            columns = mask[i].nonzero().squeeze(1)
            layers = [
                (layer.keys[i].index_select(1, columns), layer.values[i].index_select(1, columns))
                for layer in cache.layers
            ]
            self.prompt_cache.put(self._adapter_key(s.adapter), tuple(s.prompt), layers)

    def _adapter_key(self, slot: int):
        """What the keys and values of a row on adapter ``slot`` depend on: the slot and what was loaded in it."""
        if not slot or self.multilora is None:
            return 0
        return slot, self.multilora.loads.get(slot, 0)

    def _fits(self, new: list[_Seq], free: list[int], width: int) -> bool:
        """Whether ``new`` (prefilled ``width`` columns wide) can take over free rows of the running batch: one
        row each, their prompts within the columns already there, their answers within the buffers."""
        if len(new) > len(free) or width > self._mask.shape[1]:
            return False
        layer = self._cache.layers[0]
        return self._capacity(new, layer.length) <= layer.capacity  # (absolute columns)

    def _decode(self) -> None:
        """One token for every running sequence. A free row computes a throwaway token (it sees only its own
        new column) until a joining sequence takes it or compaction drops it: its sequence ended less than
        ``linger`` steps ago, or one is waiting for it."""
        free = self._free_rows()
        linger = self.linger if self._thread is not None else 0  # generate(): every request is in already
        if free and not self._waiting and self.steps - self._free_since >= linger:
            self._compact()
            free = []
        else:
            self._trim()
        rows = self._rows
        ids = torch.tensor([[s.tokens[-1] if s else 0] for s in rows], device=self.device)  # (B, 1)
        positions = torch.tensor([[s.position if s else 0] for s in rows], device=self.device)  # (B, 1)
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)  # (B, T + 1)
        self._set_adapters(rows)
        logits = self._forward(ids, self._mask, positions, self._cache)  # (B, V)
        self.steps += 1
        seqs = self._running
        if free:
            live = torch.tensor([i for i, s in enumerate(rows) if s is not None], device=self.device)
            logits = logits.index_select(0, live)
        self._accept(seqs, self._sample(logits, seqs))

    def _forward(self, ids, mask, positions, cache, last_only: bool = False) -> torch.Tensor:
        """The last position's logits (B, V) of ``ids`` (B, T), their keys and values added to ``cache``."""
        if self.fast is not None:
            return self.fast(ids, mask, positions, cache, last_only=last_only)[:, -1]
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        ).logits[:, -1]

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[int]:
        """Next token of each row: argmax for greedy rows; the others are drawn from their filtered
        distribution, rows with the same settings together (one softmax, one cumulative sum), each row with one
        uniform number from its own generator (inverse CDF), so a seeded request draws the same tokens
        whatever else is in the batch. logits (B, V)."""
        out = [0] * len(seqs)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(seqs):
            p = s.params
            key = (0.0, 0, 1.0) if p.temperature == 0 else (p.temperature, p.top_k, p.top_p)
            groups.setdefault(key, []).append(i)
        for (temperature, top_k, top_p), rows in groups.items():
            index = torch.tensor(rows, device=logits.device)
            x = logits.index_select(0, index)
            if temperature == 0:  # max's index is argmax's (the first largest), ~4x faster on CPU
                tokens = x.max(-1).indices
            else:
                tokens = draw(
                    filter_logits(x.float() / temperature, top_k, top_p),
                    [seqs[i].generator for i in rows],
                )
            for i, t in zip(rows, tokens.tolist()):
                out[i] = t
        return out

    def _accept(self, seqs: list[_Seq], tokens: list[int]) -> None:
        """Append each sequence's new token, stream its text, end it when a stop token/string or the length
        comes; finished rows leave the batch."""
        ended = False
        for s, t in zip(seqs, tokens):
            s.tokens.append(t)
            if t in s.stop_ids:
                s.finish = "stop"
            elif len(s.tokens) >= s.max_new:
                s.finish = "length"
            self._stream(s)
            ended |= s.finish is not None
        if ended:
            self._free_finished()

    def _stream(self, s: _Seq) -> None:
        """Send the text that is certain (not a possible start of a stop string, not a cut character)."""
        body = s.tokens[:-1] if s.finish == "stop" else s.tokens
        if s.decode is not None:
            text = s.decoded(body, s.finish is not None)
            for stop in s.params.stop:
                at = text.find(stop, max(0, s.sent - len(stop)))
                if at >= 0:
                    text, s.finish = text[:at], "stop"
            s.text = text
        if s.finish is None:
            hold = max((len(x) - 1 for x in s.params.stop), default=0)
            end = len(s.text) - hold
            while end > s.sent and s.text[end - 1] == "\ufffd":  # a character cut between tokens
                end -= 1
        else:
            end = len(s.text)
        piece = s.text[s.sent : end] if end > s.sent else ""
        done = None
        if s.finish is not None:  # recorded before the last delta goes out, so its reader finds it
            done = Completion(s.index, s.text, list(s.tokens), s.finish)
            s.handle.completions[s.index] = done
        if piece or done is not None or s.decode is None:  # tokens without text yet wait for the next delta
            s.handle._emit(Delta(s.index, piece, s.tokens[s.sent_tokens :], s.finish))
            s.sent, s.sent_tokens = max(s.sent, end), len(s.tokens)
        if done is not None:
            s.handle._finish(done)

    def _free_finished(self) -> None:
        """Finished sequences leave: their rows become free (the batch ends when no row is left running)."""
        had_free = any(s is None for s in self._rows)
        self._rows = [None if s is None or s.finish is not None else s for s in self._rows]
        if all(s is None for s in self._rows):
            self._rows, self._cache, self._mask = [], None, None
        elif not had_free:
            self._free_since = self.steps

    def _compact(self) -> None:
        """Drop the free rows from the batch and the columns only padding uses (a copy of the cache)."""
        keep = [i for i, s in enumerate(self._rows) if s is not None]
        rows = torch.tensor(keep, device=self.device)
        self.compactions += 1
        self._rows = [self._rows[i] for i in keep]
        mask = self._mask[rows]
        drop = _leading_padding(mask)
        self._mask = mask[:, drop:]
        self._cache.keep(rows, drop, self._allocation(self._rows, self._mask.shape[1]))

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every running row: rows that joined into free rows
        leave their predecessors' columns behind them, and attention would read them at every step. The
        buffers are not copied (their views start later)."""
        live = [i for i, s in enumerate(self._rows) if s is not None]
        mask = self._mask if len(live) == len(self._rows) else self._mask[live]
        drop = _leading_padding(mask)
        if drop:
            self.trims += 1
            self._mask = self._mask[:, drop:]
            self._cache.drop(drop)


def _leading_padding(mask: torch.Tensor) -> int:
    """How many leading columns of ``mask`` (B, T) are padding (0) in every row."""
    return int((mask.sum(0) == 0).long().cumprod(0).sum())
