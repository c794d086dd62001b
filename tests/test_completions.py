"""/v1/chat/completions and /v1/completions on the engine: shapes, streaming, errors, the official openai client
against a live server (tiny random Llama runs: a LoRA adapter and a full fine-tune)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (pip install 'tuneforge[serve]') is not installed")


def make_run(tiny_llama: str, folder, method: str, seed: int):
    """A finished run folder whose model/ is a random LoRA adapter (saved by PEFT) or a perturbed full model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.config import from_dict

    folder.mkdir(parents=True)
    cfg = from_dict(
        {
            "task": "sft",
            "model": {"name": tiny_llama},
            "data": {"train": "unused.jsonl"},
            "method": {"name": method},
        }
    )
    cfg.save(folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"finished": True, "device": "cpu"}))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(seed)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return folder


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "lora-a": make_run(tiny_llama, root / "lora-a", "lora", 1),
        "lora-b": make_run(tiny_llama, root / "lora-b", "lora", 2),
        "full": make_run(tiny_llama, root / "full", "full", 3),
    }


@pytest.fixture(scope="module")
def client(runs):
    from fastapi.testclient import TestClient

    from tuneforge.serve.completions import serving_app

    app = serving_app(list(runs.values()), keys=["sk-test"])
    with TestClient(app, headers={"Authorization": "Bearer sk-test"}) as c:
        yield c


def chat(client, **kw):
    body = {"model": "lora-a", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, **kw}
    return client.post("/v1/chat/completions", json=body)


def sse(response) -> list:
    out = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_and_auth(client, runs):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == list(runs)
    r = client.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_chat_completion_shape_and_greedy_answer(client, runs):
    from tuneforge.run import Run

    r = chat(client, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "lora-a"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    # the same answer as the run's own model.generate (greedy)
    run = Run(runs["lora-a"])
    want = run.generate("Hello!", max_new_tokens=8, temperature=0.0)[0]
    assert choice["message"]["content"].strip() == want


def test_adapters_share_one_base_engine_and_full_is_its_own(client):
    for model in ("lora-a", "lora-b", "full"):
        assert chat(client, model=model, temperature=0).status_code == 200
    pool = client.app.state.pool
    served = list(pool._served.values())
    engines = {id(s.engine) for s in served}
    assert len(engines) == 2  # lora-a and lora-b on one base engine, full on its own
    assert sum(s.adapter is not None for s in served) == 2


def test_served_engines_run_the_fast_forward(client):
    """Both served engines (the adapters' shared base, the full fine-tune) decode through the lean forward."""
    chat(client, model="full", temperature=0)
    engines = {id(s.engine): s.engine for s in client.app.state.pool._served.values()}
    assert engines and all(e.fast is not None for e in engines.values())


def test_a_repeated_prompt_is_prefilled_from_the_servers_prompt_cache(client):
    """The served engines keep a prompt cache; the same conversation again reads its start from it, on the
    adapters' shared base and on a full fine-tune, and answers the same."""
    messages = [
        {"role": "user", "content": "Please tell me, in a few words, what the weather is like today."}
    ]
    for model in ("lora-a", "full"):
        first = chat(client, model=model, messages=messages, temperature=0).json()
        engine = next(s.engine for s in client.app.state.pool._served.values() if s.engine.prompt_cache)
        engines = {id(s.engine): s.engine for s in client.app.state.pool._served.values()}
        hits = {k: e.prompt_cache.hits for k, e in engines.items()}
        again = chat(client, model=model, messages=messages, temperature=0).json()
        gained = [e.prompt_cache.hits - hits[k] for k, e in engines.items()]
        assert max(gained) >= first["usage"]["prompt_tokens"] - 1, model
        assert again["choices"][0]["message"] == first["choices"][0]["message"]
    assert engine.prompt_cache.max_bytes == 256 * 2**20


def test_a_bf16_run_is_served_in_fp32_where_the_device_has_no_native_bf16(monkeypatch):
    from tuneforge.serve import completions
    from tuneforge.serve.completions import ModelPool

    monkeypatch.setattr(completions, "bf16_native", lambda cuda: False)
    assert ModelPool()._weights_dtype("bfloat16") == "float32"  # emulated bf16: ~4x slower than fp32
    assert ModelPool(dtype="bfloat16")._weights_dtype("float32") == "bfloat16"  # asked for: as asked
    monkeypatch.setattr(completions, "bf16_native", lambda cuda: True)
    assert ModelPool()._weights_dtype("bfloat16") == "bfloat16"
    assert ModelPool()._weights_dtype("float32") == "float32"


def test_a_served_dtype_loads_the_weights_in_it(runs):
    from tuneforge.models.engine import SamplingParams
    from tuneforge.serve.completions import ModelPool

    pool = ModelPool(max_batch=4, dtype="bfloat16")
    try:
        for name in ("lora-a", "full"):
            engine = pool.get(runs[name]).engine
            assert next(engine.model.parameters()).dtype == torch.bfloat16
            answer = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=3))
            assert len(answer[0][0].token_ids) == 3
    finally:
        pool.close()


def test_a_step_wakes_the_event_loop_once_for_all_its_deltas(runs, monkeypatch):
    """Three streamed requests on one engine: every delta arrives, in order, and the loop is woken at most once
    per engine step, not once per delta."""
    import asyncio

    from tuneforge.models.engine import SamplingParams
    from tuneforge.serve import completions
    from tuneforge.serve.completions import ModelPool, _Relay

    wakes = []
    real = completions._deliver
    monkeypatch.setattr(completions, "_deliver", lambda items: (wakes.append(len(items)), real(items)))
    pool = ModelPool(max_batch=4)
    try:
        engine = pool.get(runs["full"]).engine

        async def main():
            loop = asyncio.get_running_loop()
            relay = _Relay.of(engine, loop)
            assert _Relay.of(engine, loop) is relay
            queues = [asyncio.Queue() for _ in range(3)]
            steps = engine.steps
            handles = [
                engine.submit(
                    [5, 6, 7 + i], SamplingParams(max_tokens=6), on_event=lambda e, q=q: relay.put(q, e)
                )
                for i, q in enumerate(queues)
            ]
            got = []
            for q, h in zip(queues, handles):
                tokens = []
                while True:
                    delta = await q.get()
                    tokens += delta.token_ids
                    if delta.finish_reason:
                        break
                got.append((tokens, h.result()[0].token_ids))
            return got, engine.steps - steps

        got, steps = asyncio.run(main())
    finally:
        pool.close()
    assert all(streamed == final and len(final) == 6 for streamed, final in got)
    assert len(wakes) <= steps + 1  # one hand-over per step at most
    assert sum(wakes) > len(wakes)  # (a step's deltas of several requests went over together)


def test_streaming_equals_the_plain_answer_with_usage(client):
    plain = chat(client, temperature=0.8, seed=3, n=2, max_tokens=10).json()
    r = chat(
        client,
        temperature=0.8,
        seed=3,
        n=2,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    texts, finish = {0: "", 1: ""}, {}
    for e in events[:-2]:
        for c in e["choices"]:
            texts[c["index"]] += c["delta"].get("content") or ""
            if c["finish_reason"]:
                finish[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["message"]["content"] for c in plain["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in plain["choices"]}


def test_stop_string_and_max_tokens_end_exactly(client):
    free = chat(client, temperature=0, max_tokens=12).json()["choices"][0]
    assert free["finish_reason"] == "length"
    text = free["message"]["content"]
    stop = text[3:6]
    cut = chat(client, temperature=0, max_tokens=12, stop=stop).json()["choices"][0]
    assert cut["message"]["content"] == text[: text.find(stop)] and cut["finish_reason"] == "stop"
    one = chat(client, temperature=0, max_completion_tokens=1).json()
    assert one["usage"]["completion_tokens"] == 1 and one["choices"][0]["finish_reason"] == "length"


def test_text_completions(client):
    r = client.post(
        "/v1/completions", json={"model": "full", "prompt": ["Once upon", "a"], "max_tokens": 5, "n": 2}
    )
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 20  # random model: no EOS within 5 tokens
    r = client.post(
        "/v1/completions", json={"model": "full", "prompt": "Once", "max_tokens": 3, "stream": True}
    )
    events = sse(r)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model", "model_not_found"),
        ({"model": "lora-a", "messages": []}, 400, "messages", None),
        (
            {"model": "lora-a", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
            None,
        ),
        ({"model": "lora-a", "messages": [{"role": "user", "content": "x"}], "n": 0}, 400, "n", None),
        (
            {"model": "lora-a", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5},
            400,
            "stop",
            None,
        ),
        (
            {"model": "lora-a", "messages": [{"role": "user", "content": "x" * 5000}]},
            400,
            "messages",
            "context_length_exceeded",
        ),
    ],
)
def test_bad_requests_get_openai_errors(client, body, status, param, code):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    if code:
        assert err["code"] == code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_openai_client_streams_from_a_live_server(runs):
    import openai
    import uvicorn

    from tuneforge.serve.completions import serving_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            serving_app([runs["lora-a"], runs["lora-b"]]), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert {m.id for m in client.models.list()} == {"lora-a", "lora-b"}
        messages = [{"role": "user", "content": "Say something."}]
        plain = client.chat.completions.create(model="lora-b", messages=messages, max_tokens=8, temperature=0)
        stream = client.chat.completions.create(
            model="lora-b",
            messages=messages,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
        assert "".join(pieces) == plain.choices[0].message.content
        assert usage.completion_tokens == plain.usage.completion_tokens
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing", messages=messages)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="lora-a", messages=messages, top_p=0)
    finally:
        server.should_exit = True
        thread.join(10)


def test_vllm_engine_without_vllm_says_how_to_get_it(runs):
    import importlib.util

    from tuneforge.errors import TuneforgeError
    from tuneforge.serve.completions import serving_app

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: test_vllm_serves_the_same_routes covers it")
    with pytest.raises(TuneforgeError, match="pip install vllm"):
        serving_app([runs["lora-a"]], engine="vllm")
    with pytest.raises(TuneforgeError, match="unknown engine"):
        serving_app([runs["lora-a"]], engine="fast")


def test_vllm_serves_the_same_routes(runs):
    pytest.importorskip(
        "vllm", reason="vLLM is not installed (GPU machines: pip install vllm); CPU uses our engine"
    )
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from fastapi.testclient import TestClient

    from tuneforge.serve.completions import serving_app

    with TestClient(serving_app([runs["lora-a"], runs["full"]], engine="vllm")) as c:
        for model in ("lora-a", "full"):
            r = chat(c, model=model, temperature=0, max_tokens=6)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] <= 6
        events = sse(chat(c, temperature=0, max_tokens=6, stream=True))
        assert events[-1] == "[DONE]"
