"""Serving benchmark: tuneforge's engine behind the live OpenAI API against transformers' generate.

SmolLM2-135M-Instruct, fixed chat prompts, 128 new tokens (greedy), 1, 4 and 16 concurrent streaming clients
(in a separate process, as real clients are) against a live server (uvicorn on 127.0.0.1): aggregate generated
tokens/s, time to first token and per-token latency (median and p95). The clients read their streams with a
lean reader (HTTP/1.1 on asyncio's streams, every event's JSON parsed; vLLM's serving benchmark reads with
aiohttp for the same reason): on a small machine they share the server's cores, and the official ``openai``
client's parsing takes ~2x their CPU, ~6% of the server's throughput on 2 cores. The 16 clients also run with the
official client, recorded beside them; each arm records its clients' CPU seconds. Every arm
runs the weights in one dtype (``--dtype``, default bfloat16: the checkpoint's own, which transformers 5 loads
by default). Reference arms, in this process: transformers ``model.generate`` one request at a time, and
``model.generate`` on static batches of 16. Multi-LoRA arm: 16 clients whose requests go to 4
different LoRA adapters of the same base (one batch) against 16 clients on the base alone. llama.cpp
(``llama-cpp-python``, one request at a time) on the model exported by tuneforge's GGUF writer in f16, or on
a file given with ``--gguf``, when it is installed.

    python benchmarks/serve.py            # the full run (alone on the machine: timings)
    python benchmarks/serve.py --quick    # a seconds-long check of the script (tiny settings; figures worthless)

Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

from tuneforge.threads import release_openmp_workers  # noqa: E402

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Write a short poem about the sea.",
    "Explain how a rainbow forms.",
    "Give me three tips for learning a new language.",
    "What are the health benefits of walking every day?",
    "Describe the water cycle in simple terms.",
    "How does a bicycle stay upright?",
    "Tell me a short story about a friendly robot.",
    "What is photosynthesis?",
    "List some good habits for better sleep.",
    "Why is the sky blue?",
    "How do vaccines work?",
    "Summarise the plot of Romeo and Juliet.",
    "What should I pack for a weekend hike?",
    "Explain what a computer program is to a child.",
    "What makes a good friend?",
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# ------------------------------------------------------------------------------------------- reference arms


class Reference:
    """transformers generate on the model, in this process: one request at a time, and static batches of
    ``batch`` (left-padded)."""

    def __init__(self, model_name: str, prompts: list[str], new_tokens: int, batch: int, dtype: str):
        from tuneforge.data.chat import render_prompt
        from tuneforge.models.generate import stop_ids
        from tuneforge.models.load import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(model_name, dtype).eval()
        self.tok = tok = load_tokenizer(model_name)
        self.texts = [render_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
        self.batch = batch
        self.stops = stop_ids(tok)
        self.kw = dict(
            max_new_tokens=new_tokens, do_sample=False, eos_token_id=self.stops, pad_token_id=tok.pad_token_id
        )

    def one_at_a_time(self) -> dict:
        import torch

        tok, tokens = self.tok, 0
        tok.padding_side = "right"
        with torch.no_grad():
            t0 = time.perf_counter()
            for text in self.texts:
                enc = tok(text, add_special_tokens=False, return_tensors="pt")
                y = self.model.generate(**enc, **self.kw)[0, enc["input_ids"].shape[1] :]
                tokens += _generated(y.tolist(), tok.pad_token_id, self.stops)
            wall = time.perf_counter() - t0
        return {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}

    def static_batches(self) -> dict:
        import torch

        from tuneforge.threads import release_openmp_workers

        tok, tokens = self.tok, 0
        tok.padding_side = "left"
        with torch.no_grad():
            t0 = time.perf_counter()
            for i in range(0, len(self.texts), self.batch):
                enc = tok(
                    self.texts[i : i + self.batch],
                    add_special_tokens=False,
                    padding=True,
                    return_tensors="pt",
                )
                y = self.model.generate(**enc, **self.kw)[:, enc["input_ids"].shape[1] :]
                tokens += sum(_generated(r, tok.pad_token_id, self.stops) for r in y.tolist())
            wall = time.perf_counter() - t0
        # this thread ran torch; a server's engine thread computes next: give this thread's OpenMP workers back
        release_openmp_workers()
        return {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tokens/s (the lower middle of an even count), with every round's tokens/s."""
    ranked = sorted(rounds, key=lambda r: r["tokens_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds]}


def _generated(row: list[int], pad: int, stops: list[int]) -> int:
    """Tokens generated in a row (up to and including its first stop token)."""
    for i, t in enumerate(row):
        if t in stops:
            return i + 1
    return len(row)


def llama_cpp_arm(model_name: str, gguf: str | None, prompts: list[str], new_tokens: int) -> dict:
    """llama.cpp one request at a time on the model's GGUF file (``--gguf``, or the model exported here with
    tuneforge's writer), with as many threads as torch uses: {file kind: result}."""
    try:
        import llama_cpp
    except ImportError:
        return {"gguf": {"skipped": "llama-cpp-python is not installed (it builds llama.cpp from source)"}}
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        files = {"gguf": gguf} if gguf else export_ggufs(model_name, Path(tmp))
        out = {}
        for quant, path in files.items():
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False
            )
            llm.create_chat_completion([{"role": "user", "content": prompts[0]}], max_tokens=4, temperature=0)
            tokens, t0 = 0, time.perf_counter()
            for p in prompts:
                r = llm.create_chat_completion(
                    [{"role": "user", "content": p}], max_tokens=new_tokens, temperature=0
                )
                tokens += r["usage"]["completion_tokens"]
            wall = time.perf_counter() - t0
            out[quant] = {"tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}
            print(quant, json.dumps(out[quant]), flush=True)
            del llm
    return out


def export_ggufs(model_name: str, folder: Path) -> dict[str, Path]:
    """The model written as a GGUF file by tuneforge's exporter, in f16. (q8_0 is left out: llama-cpp-python
    0.3.36 built here crashes evaluating any q8_0 file on this CPU, its own quantisation of the same f16 file
    too.)"""
    from tuneforge.models.gguf_write import write_gguf
    from tuneforge.models.load import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(model_name), load_tokenizer(model_name)
    return {q: write_gguf(model, tok, folder / f"model-{q}.gguf", quant=q) for q in ("f16",)}


# -------------------------------------------------------------------------------------------- the live server


def lora_runs(model_name: str, root: Path, count: int) -> list[Path]:
    """``count`` run folders, each a LoRA adapter (rank 8, all linear layers, small random weights) on the base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.config import from_dict
    from tuneforge.models.load import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_name)
    out = []
    for k in range(count):
        folder = root / f"lora-{k}"
        folder.mkdir(parents=True)
        cfg = {"task": "sft", "model": {"name": model_name}, "data": {"train": "unused.jsonl"}}
        from_dict({**cfg, "method": {"name": "lora"}}).save(folder / "config.yaml")
        (folder / "run.json").write_text(json.dumps({"finished": True, "device": "cpu"}))
        torch.manual_seed(k)
        model = get_peft_model(load_causal_lm(model_name), LoraConfig(r=8, target_modules="all-linear"))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 1e-3)  # a different, small adapter each
        model.save_pretrained(folder / "model")
        tok.save_pretrained(folder / "model")
        out.append(folder)
    return out


def start_server(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server, thread


def _timings(t0: float, first: float | None, tokens: int) -> dict:
    total = time.perf_counter() - t0
    first = total if first is None else first
    return {"ttft": first, "total": total, "tokens": tokens, "tpot": (total - first) / max(tokens - 1, 1)}


def _chat_body(model: str, prompt: str, new_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def sdk_request(client, url: str, model: str, prompt: str, new_tokens: int) -> dict:
    """One streamed chat request with the official openai client: time to first token, total, tokens."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = await client.chat.completions.create(**_chat_body(model, prompt, new_tokens))
    async for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if first is None and any(c.delta.content for c in chunk.choices):
            first = time.perf_counter() - t0
    return _timings(t0, first, tokens)


async def sse_request(client, url: str, model: str, prompt: str, new_tokens: int) -> dict:
    """The same request read by a lean client: HTTP/1.1 over asyncio's streams, the chunked body split into
    server-sent events and every event's JSON parsed (vLLM's serving benchmark reads the stream with aiohttp, not
    an SDK, for the same reason: the load generator should take as little of the machine as it can)."""
    host_port, path = url.split("://", 1)[1].split("/", 1)
    host, port = host_port.rsplit(":", 1)
    body = json.dumps(_chat_body(model, prompt, new_tokens)).encode()
    t0 = time.perf_counter()
    first, tokens = None, 0
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /{path}/chat/completions HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status = (await reader.readline()).decode()
        headers = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if " 200 " not in status:
            raise RuntimeError(f"{status.strip()}: {(await reader.read()).decode()[:500]}")
        buffer = b""
        async for piece in _body(reader, headers.get("transfer-encoding") == "chunked"):
            buffer += piece.replace(b"\r\n", b"\n")
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return _timings(t0, first, tokens)
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"the stream failed: {chunk['error']}")
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                        first = time.perf_counter() - t0
        raise RuntimeError("the stream ended without data: [DONE]")
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool):
    """The response body as it comes: chunked transfer encoding decoded, else read to the connection's end."""
    while True:
        if not chunked:
            piece = await reader.read(65536)
            if not piece:
                return
            yield piece
            continue
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def load_test(
    url: str, models: list[str], prompts: list[str], clients: int, new_tokens: int, sdk: bool = False
) -> dict:
    """``clients`` concurrent streaming clients share the prompts (request i goes to models[i % len]); each
    reads its stream with the official openai client (``sdk``) or the lean reader (:func:`sse_request`)."""
    work = list(enumerate(prompts))
    results = []
    request = sdk_request if sdk else sse_request

    async def worker(client):
        while work:
            i, p = work.pop(0)
            results.append(await request(client, url, models[i % len(models)], p, new_tokens))

    client = None
    if sdk:
        import openai

        client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=3600)
    for m in models:  # warm-up: loads the model(s) and adapters
        await request(client, url, m, "Hi", 2)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if client is not None:
        await client.close()
    tokens = sum(r["tokens"] for r in results)
    ttft, tpot = [r["ttft"] for r in results], [r["tpot"] for r in results]
    return {
        "clients": clients,
        "client": "openai" if sdk else "sse",
        "requests": len(results),
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "client_cpu_s": cpu,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p95_s": pct(ttft, 0.95),
        "tpot_median_ms": 1000 * statistics.median(tpot),
        "tpot_p95_ms": 1000 * pct(tpot, 0.95),
    }


def client_process(
    url: str, models: list[str], prompts: list[str], clients: int, new_tokens: int, sdk: bool = False
) -> dict:
    """``load_test`` in a child process: the clients' own work (SSE parsing, the SDK's objects) is not the
    server's, as with real clients; they still share the machine's cores."""
    import subprocess

    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); import serve; "
        "a = json.loads(sys.argv[2]); print(json.dumps(asyncio.run(serve.load_test(*a))))"
    )
    args = json.dumps([url, models, prompts, clients, new_tokens, sdk])
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), args], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the load-test process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serve_arms(
    model_name,
    prompts,
    new_tokens,
    client_counts,
    adapters: int,
    max_batch: int,
    dtype: str,
    prompt_cache_mb=256,
    static=None,
    rounds: int = 1,
) -> dict:
    """The engine arms against a live server. The most clients (and the LoRA arm) run ``rounds`` times,
    alternating with ``static()`` (the static-batch reference) when given, so that the ratios compare arms
    measured seconds apart, not minutes: this machine's speed drifts by 10-20% within minutes. Returns the
    arms (the most clients' as their median round) and, under "static", the reference's rounds."""
    from fastapi import FastAPI

    from tuneforge.serve.completions import ModelPool, completions_router
    from tuneforge.serve.errors import install_handlers

    root = Path(tempfile.mkdtemp(prefix="tuneforge-bench-serve-"))
    runs = {p.name: p for p in lora_runs(model_name, root, adapters)} if adapters else {}
    # This thread ran torch (the reference arms, the adapters); a server process's main thread would not have:
    # give its OpenMP workers back, as the server's loading thread does, so the engine's thread is not slowed.
    release_openmp_workers()
    app = FastAPI()
    install_handlers(app)
    pool = ModelPool(max_batch=max_batch, dtype=dtype, prompt_cache_mb=prompt_cache_mb)
    app.include_router(completions_router(lambda: "bench", lambda _, name: runs.get(name, name), pool))
    url, server, thread = start_server(app)
    out = {}

    def arm(name: str, models: list[str], c: int, sdk: bool = False) -> None:
        """One load test on a cold prompt cache; records how many prompt tokens it read from the cache."""
        for served in pool._bases.values():
            if served.engine.prompt_cache is not None:
                served.engine.prompt_cache.clear()
        reqs = prompts * max(1, (2 * c) // len(prompts) or 1)  # at least two requests per client at 16
        out[name] = client_process(url, models, reqs, c, new_tokens, sdk)
        caches = [s.engine.prompt_cache for s in pool._bases.values() if s.engine.prompt_cache is not None]
        out[name]["prompt_tokens_cached"] = sum(pc.hits for pc in caches)
        out[name]["prompt_tokens_computed"] = sum(pc.misses for pc in caches)
        print(json.dumps(out[name]), flush=True)

    top = max(client_counts)
    rounds_of: dict[str, list[dict]] = {}
    try:
        for c in [c for c in client_counts if c != top]:
            arm(f"engine_{c}_clients", [model_name], c)
        # the lean reader, the official openai client (what its parsing costs the 2 cores), and the adapters
        names = [
            (f"engine_{top}_clients", [model_name], False),
            (f"engine_{top}_clients_openai_sdk", [model_name], True),
        ]
        if adapters:
            names.append((f"engine_{top}_clients_{adapters}_loras", list(runs), False))
        for _ in range(rounds):
            if static is not None:
                rounds_of.setdefault("static", []).append(static())
                print("static", json.dumps(rounds_of["static"][-1]), flush=True)
            for name, models, sdk in names:
                arm(name, models, top, sdk)
                rounds_of.setdefault(name, []).append(out[name])
        for name, rs in rounds_of.items():
            out[name] = median_round(rs)
    finally:
        server.should_exit = True
        thread.join(10)
        pool.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="tiny settings to check the script (figures worthless)"
    )
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--gguf", default=None, help="a GGUF file of the model for the llama.cpp arm")
    ap.add_argument("--out", default="serve", help="result name under benchmarks/results/")
    ap.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the weights' dtype in every arm"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the static-batch reference, the most clients and the LoRA arm, alternating (medians)",
    )
    ap.add_argument(
        "--prompt-cache-mb",
        type=float,
        default=256.0,
        help="the server's prompt cache (0: off); each arm starts with it empty",
    )
    args = ap.parse_args()
    import torch

    if args.quick:
        prompts, new_tokens, clients, adapters = PROMPTS[:2], 4, [1, 2], 2
    else:
        prompts, new_tokens, clients, adapters = PROMPTS, 128, [1, 4, 16], 4
    t = {"machine": machine(), "model": args.model, "new_tokens": new_tokens, "prompts": len(prompts)}
    t["torch_threads"] = torch.get_num_threads()
    t["quick"] = args.quick
    t["adapters"] = adapters
    t["dtype"] = args.dtype
    t["rounds"] = rounds = 1 if args.quick else args.rounds
    reference = Reference(args.model, prompts, new_tokens, max(clients), args.dtype)
    t["reference"] = {"generate_one_at_a_time": reference.one_at_a_time()}
    print(json.dumps(t["reference"]), flush=True)
    t["prompt_cache_mb"] = args.prompt_cache_mb
    t["serve"] = serve_arms(
        args.model,
        prompts,
        new_tokens,
        clients,
        adapters,
        32,
        args.dtype,
        args.prompt_cache_mb,
        static=reference.static_batches,
        rounds=rounds,
    )
    t["reference"][f"generate_static_batch_{max(clients)}"] = t["serve"].pop("static")
    t["llama_cpp"] = llama_cpp_arm(args.model, args.gguf, prompts, new_tokens)
    top = t["serve"][f"engine_{max(clients)}_clients"]
    ref = t["reference"]
    static = ref[f"generate_static_batch_{max(clients)}"]["tokens_per_s"]
    t["ratios"] = {
        "vs_one_at_a_time": top["tokens_per_s"] / ref["generate_one_at_a_time"]["tokens_per_s"],
        "vs_static_batch": top["tokens_per_s"] / static,
        "ttft_p95_s": top["ttft_p95_s"],
        "loras_vs_single": t["serve"][f"engine_{max(clients)}_clients_{adapters}_loras"]["tokens_per_s"]
        / top["tokens_per_s"],
        "sdk_vs_static_batch": t["serve"][f"engine_{max(clients)}_clients_openai_sdk"]["tokens_per_s"]
        / static,
    }
    write(args.out, t, table(t))


def _cached(r: dict) -> str:
    """Prompt tokens read from the server's prompt cache, of all the arm's prompt tokens."""
    if "prompt_tokens_cached" not in r:
        return "-"
    total = r["prompt_tokens_cached"] + r["prompt_tokens_computed"]
    return f"{r['prompt_tokens_cached'] / max(total, 1):.0%} of {total}"


def _round_values(arms: dict, name: str) -> list[float]:
    """The rounds' tokens/s of arm ``name``; [] if it has no rounds."""
    return arms.get(name, {}).get("rounds_tokens_per_s", [])


def _rounds(arms: dict, name: str) -> str:
    return " / ".join(f"{x:.1f}" for x in _round_values(arms, name)) or "-"


def _per_round(t: dict, arm: str) -> str:
    """Each round's tokens/s of engine ``arm`` over the same round's static-batch tokens/s."""
    static = _round_values(t["reference"], _static(t))
    engine = _round_values(t["serve"], arm)
    return " / ".join(f"{e / s:.2f}x" for e, s in zip(engine, static)) or "-"


def _static(t: dict) -> str:
    return next(name for name in t["reference"] if name.startswith("generate_static_batch"))


def _label(name: str) -> str:
    """The table's name of an engine arm."""
    if name.endswith("_loras"):
        return f"tuneforge engine ({name.split('clients_')[1].replace('_loras', ' LoRA adapters')})"
    if name.endswith("_openai_sdk"):
        return "tuneforge engine (openai SDK clients)"
    return "tuneforge engine"


def table(t: dict) -> str:
    m = t["machine"]
    rounds = t.get("rounds", 1)
    lines = [
        f"Serving {t['model']}: {t['prompts']} chat prompts, {t['new_tokens']} new tokens (greedy), "
        f"{t.get('dtype', 'float32')} weights in every arm; "
        f"{m['date']}, {m['cpu']} ({m['cores']} cores, {t['torch_threads']} torch threads)"
        + (" — QUICK CHECK, figures worthless" if t["quick"] else ""),
        "",
        "| arm | clients | tokens/s | TTFT median / p95 (s) | per-token median / p95 (ms) | prompt tokens cached "
        "| clients' CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in t["reference"].items():
        lines.append(
            f"| transformers {name.replace('_', ' ')} | - | {r['tokens_per_s']:.1f} | - | - | - | - |"
        )
    for name, r in t["serve"].items():
        cpu = f"{r['client_cpu_s']:.1f}" if "client_cpu_s" in r else "-"
        lines.append(
            f"| {_label(name)} | {r['clients']} | {r['tokens_per_s']:.1f} | "
            f"{r['ttft_median_s']:.2f} / {r['ttft_p95_s']:.2f} | "
            f"{r['tpot_median_ms']:.0f} / {r['tpot_p95_ms']:.0f} | {_cached(r)} | {cpu} |"
        )
    for quant, lc in t["llama_cpp"].items():
        lines.append(
            f"| llama.cpp {quant} (one at a time) | 1 | {lc['tokens_per_s']:.1f} | - | - | - | - |"
            if "tokens_per_s" in lc
            else f"| llama.cpp | - | skipped: {lc['skipped']} | - | - | - | - |"
        )
    r = t["ratios"]
    top = [name for name in t["serve"] if _round_values(t["serve"], name)]
    if rounds > 1:
        each = ", ".join(f"{_label(name)[len('tuneforge ') :]} {_rounds(t['serve'], name)}" for name in top)
        ratios = "; ".join(
            f"{_label(name)[len('tuneforge ') :]} {_per_round(t, name)}"
            for name in top
            if "loras" not in name
        )
        lines += [
            "",
            f"Static batches and the arms at the most clients: the median of {rounds} rounds run in turn "
            f"(tokens/s of each: static {_rounds(t['reference'], _static(t))}, {each}; over the static batches "
            f"round by round: {ratios}).",
        ]
    sdk = (
        f" (with the openai SDK's clients: {r['sdk_vs_static_batch']:.2f}x)"
        if "sdk_vs_static_batch" in r
        else ""
    )
    lines += [
        "",
        f"At the most clients: {r['vs_one_at_a_time']:.2f}x one-at-a-time generate (target >= 4x), "
        f"{r['vs_static_batch']:.2f}x static-batch generate{sdk} (target >= 1.5x), p95 TTFT "
        f"{r['ttft_p95_s']:.2f} s (target < 2 s); {t['adapters']} LoRA adapters in one batch "
        f"{r['loras_vs_single']:.2f}x the single model (target >= 0.8x).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
