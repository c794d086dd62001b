"""The generation engine against transformers' ``model.generate`` and PEFT (tiny random Llama, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

from tuneforge.models.engine import Engine, SamplingParams
from tuneforge.models.multilora import MultiLoRA, UnsupportedAdapter

PROMPTS = [
    "Hello there, how are you today?",
    "Name three colours.",
    "Write a very long story about a dragon who learns to cook pasta in the mountains.",
    "Hi",
    "What is two plus two? Answer briefly.",
]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def encode(tok, prompts=PROMPTS) -> list[list[int]]:
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def reference(
    model, prompts_ids: list[list[int]], max_new: int, stop: list[int] | None = None
) -> list[list[int]]:
    """Greedy answers of model.generate, one prompt at a time (no padding), cut after a stop token."""
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids])
        y = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=0,
        )[0, len(ids) :].tolist()
        if stop:
            for i, t in enumerate(y):
                if t in stop:
                    y = y[: i + 1]
                    break
        out.append(y)
    return out


def make_adapter(model, path, seed: int, r: int = 4, targets=("q_proj", "v_proj", "down_proj")) -> None:
    """A random (non-zero) LoRA adapter on ``model``'s base, saved with PEFT."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False),
    )
    peft.save_pretrained(path)


FAST = pytest.mark.parametrize("fast", [False, True], ids=["model-forward", "fast-decoder"])


@FAST
def test_greedy_batched_equals_generate(llama, fast):
    model, tok = llama
    ids = encode(tok)
    want = reference(model, ids, 12)
    engine = Engine(model, tok, max_batch=8, fast=fast)
    assert (engine.fast is not None) == fast
    got = engine.generate(ids, SamplingParams(max_tokens=12))
    assert [c[0].token_ids for c in got] == want
    assert all(c[0].finish_reason == "length" for c in got)


@FAST
def test_greedy_continuous_with_a_mid_batch_join(llama, fast):
    """Two rows run for a few steps, then three more join; a small max_batch makes others wait and join as
    rows leave. Every answer equals model.generate's."""
    model, tok = llama
    ids = encode(tok)
    want = reference(model, ids, 10)
    engine = Engine(model, tok, max_batch=3, fast=fast)
    first = [engine.submit(p, SamplingParams(max_tokens=m)) for p, m in zip(ids[:2], (10, 3))]
    for _ in range(4):
        engine.step()
    assert first[1].done and not first[0].done  # the short answer left early
    later = [engine.submit(p, SamplingParams(max_tokens=10)) for p in ids[2:]]
    while not all(h.done for h in first + later):
        engine.step()
    assert first[0].result()[0].token_ids == want[0]
    assert first[1].result()[0].token_ids == want[1][:3]
    assert [h.result()[0].token_ids for h in later] == want[2:]


def test_stop_token_ends_the_row_and_others_go_on(llama):
    model, tok = llama
    ids = encode(tok)
    free = reference(model, ids, 8)
    stop = [free[0][-1]]  # the last token of the first answer
    at = free[0].index(stop[0])  # where it first comes
    want = reference(model, ids, 8, stop)
    got = Engine(model, tok).generate(ids, SamplingParams(max_tokens=8, stop_token_ids=stop))
    assert [c[0].token_ids for c in got] == want
    assert got[0][0].finish_reason == "stop" and len(got[0][0].token_ids) == at + 1


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llama):
    model, tok = llama
    ids = encode(tok)
    p = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.9, top_k=50, seed=7, n=3)
    alone = Engine(model, tok).generate(ids[:1], p)[0]
    together = Engine(model, tok).generate(ids, p)[0]
    assert [c.token_ids for c in alone] == [c.token_ids for c in together]
    assert len({tuple(c.token_ids) for c in alone}) > 1  # n completions differ from each other
    torch.manual_seed(3)
    a = Engine(model, tok).generate(ids, SamplingParams(max_tokens=6, temperature=1.0))
    torch.manual_seed(3)
    b = Engine(model, tok).generate(ids, SamplingParams(max_tokens=6, temperature=1.0))
    assert [c[0].token_ids for c in a] == [c[0].token_ids for c in b]


def test_top_k_one_is_greedy(llama):
    model, tok = llama
    ids = encode(tok)
    got = Engine(model, tok).generate(ids, SamplingParams(max_tokens=6, temperature=1.3, top_k=1, seed=1))
    assert [c[0].token_ids for c in got] == reference(model, ids, 6)


def test_stop_strings_and_streaming(llama):
    model, tok = llama
    ids = encode(tok)[:1]
    engine = Engine(model, tok)
    full = engine.generate(ids, SamplingParams(max_tokens=12))[0][0]
    assert len(full.text) > 6
    stop = full.text[4:7]
    cut = engine.generate(ids, SamplingParams(max_tokens=12, stop=[stop]))[0][0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    handle = engine.submit(ids[0], SamplingParams(max_tokens=12, stop=[stop]))
    while not handle.done:
        engine.step()
    deltas = list(handle.stream())
    assert "".join(d.text for d in deltas) == cut.text
    assert deltas[-1].finish_reason == "stop"


def test_text_decoded_a_few_tokens_at_a_time_equals_decoding_them_all(llama):
    """The engine decodes each token's text incrementally (a window of the last tokens): every answer's text, and
    its streamed deltas joined, equal decoding all its tokens at once, for random tokens (characters cut between
    tokens, spaces at the windows' starts) from the tiny random model and drawn directly."""
    import random

    from tuneforge.models.engine import _Seq

    model, tok = llama
    engine = Engine(model, tok, max_batch=8)
    deltas = {}
    handles = [
        engine.submit(
            p,
            SamplingParams(max_tokens=40, temperature=1.0, seed=i),
            on_event=deltas.setdefault(i, []).append,
        )
        for i, p in enumerate(encode(tok))
    ]
    while not all(h.done for h in handles):
        engine.step()
    for i, h in enumerate(handles):
        c = h.result()[0]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
        assert "".join(d.text for d in deltas[i]) == c.text
    rng = random.Random(0)
    pieces = tok("naïve café — 東京タワー 🙂🎉 über straße", add_special_tokens=False)["input_ids"]
    for _ in range(20):
        tokens = [rng.choice(pieces) if rng.random() < 0.5 else rng.randrange(len(tok)) for _ in range(60)]
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        seq = _Seq(None, 0, [1], None, 0, decode, None, frozenset(), 60)
        texts = [seq.decoded(tokens[:k], final=k == len(tokens)) for k in range(1, len(tokens) + 1)]
        assert texts[-1] == decode(tokens)
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))


def test_max_tokens_ends_exactly_and_the_context_is_respected(llama):
    model, tok = llama
    ids = encode(tok)
    got = Engine(model, tok).generate(ids, SamplingParams(max_tokens=5))
    assert all(len(c[0].token_ids) == 5 for c in got)
    small = Engine(model, tok, max_context=len(ids[3]) + 2)
    assert len(small.generate(ids[3:4], SamplingParams(max_tokens=50))[0][0].token_ids) == 2
    with pytest.raises(ValueError, match="context"):
        small.submit(ids[2], SamplingParams())


def test_scheduler_thread_serves_concurrent_requests(llama):
    model, tok = llama
    ids = encode(tok)
    want = reference(model, ids, 7)
    engine = Engine(model, tok, max_batch=4).start()
    try:
        handles = [engine.submit(p, SamplingParams(max_tokens=7)) for p in ids]
        assert [h.result(timeout=60)[0].token_ids for h in handles] == want
    finally:
        engine.stop()


@FAST
def test_per_row_adapters_give_each_adapter_models_logits(llama, tmp_path, fast):
    """Rows with adapter 1, adapter 2 and none in one batch: each row's logits are those of PeftModel with its
    own adapter alone (1e-4), and greedy answers equal PeftModel.generate's."""
    import copy

    from peft import PeftModel

    model, tok = llama
    paths = [tmp_path / "a1", tmp_path / "a2"]
    make_adapter(model, paths[0], 1, r=4)
    make_adapter(model, paths[1], 2, r=8, targets=("q_proj", "k_proj", "o_proj", "up_proj"))
    base = copy.deepcopy(model)
    ml = MultiLoRA(base, slots=2)
    slots = [ml.slot(str(p)) for p in paths]
    assert slots == [1, 2]
    ids = encode(tok)[:3]
    x = torch.nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence(
        [torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True
    )
    rows = [1, 2, 0]
    ml.set_rows(rows, "cpu")
    with torch.no_grad():
        got = base(input_ids=x, attention_mask=mask).logits  # (3, T, V)
    for i, slot in enumerate(rows):
        ref = model if slot == 0 else PeftModel.from_pretrained(copy.deepcopy(model), paths[slot - 1]).eval()
        with torch.no_grad():
            want = ref(input_ids=x[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        n = len(ids[i])
        assert torch.allclose(got[i, :n], want[:n], atol=1e-4), (i, (got[i, :n] - want[:n]).abs().max())

    engine = Engine(base, tok, multilora=ml, fast=fast)
    answers = engine.generate(ids, SamplingParams(max_tokens=8), adapters=rows)
    for i, slot in enumerate(rows):
        ref = model if slot == 0 else PeftModel.from_pretrained(copy.deepcopy(model), paths[slot - 1]).eval()
        assert answers[i][0].token_ids == reference(ref, ids[i : i + 1], 8)[0]
    # both slots are idle now: a third adapter evicts the least recently used
    make_adapter(model, tmp_path / "a3", 3)
    assert ml.slot(str(tmp_path / "a3")) == 1 and list(ml.loaded) == [str(paths[1]), str(tmp_path / "a3")]


def test_a_dora_adapter_is_refused_per_row(llama, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    model, _ = llama
    get_peft_model(
        copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        MultiLoRA(copy.deepcopy(model)).slot(str(tmp_path))


def test_engine_on_a_peft_model_equals_its_generate(llama, tmp_path):
    """GRPO and chat run the engine on a live PeftModel (the adapter being trained)."""
    import copy

    from peft import PeftModel

    model, tok = llama
    make_adapter(model, tmp_path, 5)
    peft = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    ids = encode(tok)
    got = Engine(peft, tok).generate(ids, SamplingParams(max_tokens=8))
    assert [c[0].token_ids for c in got] == reference(peft, ids, 8)


def test_generate_helper_runs_on_the_engine_and_matches_transformers(llama):
    """models.generate.generate (chat, generate, report samples, GRPO evaluation) equals the transformers path."""
    from tuneforge.data.chat import render_prompt
    from tuneforge.models.generate import _generate_hf, as_conversation, generate

    model, tok = llama
    convs = PROMPTS[:3]
    got = generate(model, tok, convs, max_new_tokens=6, batch_size=2)
    texts = [render_prompt(tok, as_conversation(p)) for p in convs]
    assert got == _generate_hf(model, tok, texts, 6, 0.0, 1)


def test_chat_streams_through_the_engine(llama):
    import io

    from tuneforge.models.generate import generate
    from tuneforge.serve.chat import stream_answer

    model, tok = llama
    out = io.StringIO()
    answer = stream_answer(model, tok, [{"role": "user", "content": PROMPTS[0]}], max_new_tokens=6, out=out)
    assert out.getvalue() == answer + "\n" or out.getvalue().strip() == answer
    assert answer == generate(model, tok, [PROMPTS[0]], max_new_tokens=6)[0]


def test_a_conversations_next_turn_reads_the_earlier_turns_from_the_prompt_cache(llama):
    import io

    from tuneforge.data.chat import render_prompt
    from tuneforge.serve.chat import chat_engine, stream_answer

    model, tok = llama
    engine = chat_engine(model, tok)
    messages = [{"role": "user", "content": PROMPTS[2]}]
    ids = lambda: tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]  # noqa: E731
    answer = stream_answer(model, tok, messages, max_new_tokens=6, out=io.StringIO(), engine=engine)
    first = ids()
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": PROMPTS[0]}]
    hits = engine.prompt_cache.hits
    again = stream_answer(model, tok, messages, max_new_tokens=6, out=io.StringIO(), engine=engine)
    shared = len(os.path.commonprefix([first, ids()]))
    assert shared >= len(first) - 2 and engine.prompt_cache.hits - hits == shared
    assert again == stream_answer(model, tok, messages, max_new_tokens=6, out=io.StringIO())  # a fresh engine


@FAST
def test_the_cache_grows_past_its_reserve_and_answers_stay_equal(llama, fast):
    model, tok = llama
    ids = encode(tok)[:2]
    engine = Engine(model, tok, fast=fast)
    engine.reserve = 3  # far less than the answers need: the buffers double as they fill
    got = engine.generate(ids, SamplingParams(max_tokens=10))
    assert [c[0].token_ids for c in got] == reference(model, ids, 10)


def test_compiled_blocks_decode_eagerly_without_compiling(tiny_llama):
    """A policy whose blocks are compiled for training (GRPO sampling through it) decodes eagerly: no graph is
    built for the cache lengths decoding meets, and the answers are the plain model's."""
    import copy

    import torch._dynamo
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.train.compile import compile_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = encode(tok)[:3]
    want = Engine(model, tok).generate(ids, SamplingParams(max_tokens=8))
    compiled = copy.deepcopy(model)
    assert compile_blocks(compiled) == 2
    torch._dynamo.utils.counters.clear()
    got = Engine(compiled, tok).generate(ids, SamplingParams(max_tokens=8))
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in want]
    assert not torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.e2e
@FAST
def test_real_model_greedy_chat_answers_equal_generate(fast):
    """SmolLM2-135M-Instruct (bundled): chat answers on the engine, stopping at the end-of-turn token, equal
    transformers' generate, batched with different lengths."""
    from tuneforge.data.chat import render_prompt
    from tuneforge.models.generate import stop_ids
    from tuneforge.models.load import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm("smollm2-135m-instruct").eval(), load_tokenizer("smollm2-135m-instruct")
    questions = ["What is the capital of France?", "Say hi.", "Name a colour."]
    ids = [
        tok(render_prompt(tok, [{"role": "user", "content": q}]), add_special_tokens=False)["input_ids"]
        for q in questions
    ]
    stops = stop_ids(tok)
    got = Engine(model, tok, fast=fast).generate(ids, SamplingParams(max_tokens=24, stop_token_ids=stops))
    assert [c[0].token_ids for c in got] == reference(model, ids, 24, stops)
    assert any(c[0].finish_reason == "stop" for c in got)


def test_inverse_cdf_draws_follow_the_probabilities_and_never_a_filtered_token():
    from tuneforge.models.engine import draw

    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = probs.log().expand(4000, 5)  # 4000 rows, one draw each, each row its own generator
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens = draw(logits, gens)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert freq[4] == 0 and torch.allclose(freq, probs, atol=0.025), freq
    again = draw(logits[:3], [torch.Generator().manual_seed(i) for i in range(3)])
    assert again.tolist() == tokens[:3].tolist()  # a row's draw depends on its generator alone


def test_filtering_matches_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from tuneforge.models.engine import filter_logits

    torch.manual_seed(0)
    x = torch.randn(3, 50) * 3
    for k, p in [(0, 0.9), (10, 1.0), (7, 0.5), (0, 1.0)]:
        want = x.clone()
        if k:
            want = TopKLogitsWarper(k)(None, want)
        if p < 1:
            want = TopPLogitsWarper(p)(None, want)
        assert torch.equal(filter_logits(x.clone(), k, p).isinf(), want.isinf()), (k, p)


def test_a_failing_prefill_fails_its_requests_instead_of_hanging(llama, monkeypatch):
    """Sequences taken from the queue for a prefill that raises are neither waiting nor running: they fail with
    the error (before, generate() looped forever on their unfinished handles)."""
    model, tok = llama
    engine = Engine(model, tok)

    def broken(*args, **kwargs):
        raise RuntimeError("the forward pass broke")

    monkeypatch.setattr(engine, "_forward", broken)
    with pytest.raises(RuntimeError, match="the forward pass broke"):
        engine.generate(encode(tok)[:2], SamplingParams(max_tokens=4, n=2))
    assert not engine._admitting and not engine._running and not engine._waiting


@FAST
def test_a_joining_request_takes_a_finished_rows_place(llama, tmp_path, fast):
    """A short answer ends; a request that comes before the next step is prefilled into its free row (the
    cache buffers are neither copied nor rebuilt), with adapters per row; every answer equals its model's."""
    import copy

    from peft import PeftModel

    model, tok = llama
    paths = [tmp_path / "a1", tmp_path / "a2"]
    make_adapter(model, paths[0], 1)
    make_adapter(model, paths[1], 2, targets=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
    base = copy.deepcopy(model)
    ml = MultiLoRA(base, slots=2)
    assert [ml.slot(str(p)) for p in paths] == [1, 2]
    ids = encode(tok)
    engine = Engine(base, tok, max_batch=4, multilora=ml, fast=fast)
    long, short = ids[2], ids[1]  # the joiner's prompt (ids[4]) is shorter than the columns already there
    first = [
        engine.submit(long, SamplingParams(max_tokens=12), adapter=1),
        engine.submit(short, SamplingParams(max_tokens=3), adapter=2),
    ]
    for _ in range(2):  # (the prefill and a decode step, then a decode step: three tokens)
        engine.step()
    assert first[1].done and not first[0].done and engine._rows[1] is None
    buffer = engine._cache.layers[0].k_buf
    joiner = engine.submit(ids[4], SamplingParams(max_tokens=6), adapter=2)
    engine.step()
    assert engine.placed == 1 and engine.compactions == 0 and engine._cache.layers[0].k_buf is buffer
    while not (first[0].done and joiner.done):
        engine.step()
    models = [PeftModel.from_pretrained(copy.deepcopy(model), p).eval() for p in paths]
    assert first[0].result()[0].token_ids == reference(models[0], [long], 12)[0]
    assert first[1].result()[0].token_ids == reference(models[1], [short], 3)[0]
    assert joiner.result()[0].token_ids == reference(models[1], [ids[4]], 6)[0]


@FAST
def test_later_longer_requests_join_in_place_and_leading_columns_are_dropped(llama, fast):
    """While requests wait, the buffers are sized with room for joiners: requests joining as answers end take
    their rows in place, even with longer answers than the batch's rows needed (no rebuild); once every row
    before them has ended, the columns only those used are dropped from the views without a copy, and every
    answer equals model.generate's."""
    model, tok = llama
    ids = encode(tok)
    prompts, lengths = [ids[2], ids[1], ids[0], ids[4]], [4, 2, 12, 12]
    engine = Engine(model, tok, max_batch=2, fast=fast)
    handles = [engine.submit(p, SamplingParams(max_tokens=m)) for p, m in zip(prompts, lengths)]
    engine.step()  # the first two: prefill and a decode step; the shortest answer ends, two wait
    assert handles[1].done and not handles[0].done
    layer = engine._cache.layers[0]
    buffer, width = layer.k_buf, layer.width
    engine.step()
    assert engine.placed == 1 and engine.compactions == 0 and layer.k_buf is buffer
    while not handles[0].done:
        engine.step()
    engine.step()  # the last one takes the long prompt's row: the columns only that prompt used go
    assert engine.placed == 2 and engine.compactions == 0 and engine.trims >= 1
    assert layer.k_buf is buffer and layer.start > 0 and layer.width < width
    assert bool(engine._mask[:, 0].any()) and layer.width == engine._mask.shape[1]
    while not all(h.done for h in handles):
        engine.step()
    want = [reference(model, [p], m)[0] for p, m in zip(prompts, lengths)]
    assert [h.result()[0].token_ids for h in handles] == want


def test_a_cache_layer_keeps_its_columns_through_a_drop_and_a_rebuild():
    """Dropping leading columns moves the views (no copy); an update past the buffer's end rebuilds it from the
    columns in use, which keep their values."""
    from tuneforge.models.engine import BufferLayer

    layer = BufferLayer(4)
    k = torch.arange(12, dtype=torch.float).view(2, 1, 3, 2)
    layer.set(k, -k, 4)
    buffer = layer.k_buf
    layer.drop(2)
    assert layer.k_buf is buffer and torch.equal(layer.keys, k[:, :, 2:]) and layer.get_seq_length() == 1
    new = torch.full((2, 1, 3, 2), 7.0)
    keys, values = layer.update(new, -new)  # 3 + 3 columns > 4: rebuilt from the one column in use
    assert layer.k_buf is not buffer and layer.start == 0 and layer.get_seq_length() == 4
    assert torch.equal(keys, torch.cat([k[:, :, 2:], new], 2)) and torch.equal(values, -keys)


def test_free_rows_are_compacted_when_no_request_comes(llama):
    """In the scheduler thread a finished row waits ``linger`` steps for a joiner, then the batch drops it;
    generate() (every request in at once) drops it at the next step."""
    model, tok = llama
    ids = encode(tok)[:2]
    engine = Engine(model, tok, max_batch=4).start()
    try:
        handles = [engine.submit(p, SamplingParams(max_tokens=m)) for p, m in zip(ids, (20, 2))]
        [h.result(timeout=60) for h in handles]
    finally:
        engine.stop()
    assert engine.compactions == 1 and engine.placed == 0
    want = reference(model, ids, 20)
    assert [h.result()[0].token_ids for h in handles] == [want[0], want[1][:2]]
    engine = Engine(model, tok, max_batch=4)
    handles = [engine.submit(p, SamplingParams(max_tokens=m)) for p, m in zip(ids, (20, 2))]
    engine.step()  # the prefill gives each its first token, the decode its second: the short answer ends
    assert handles[1].done and engine._rows[1] is None
    engine.step()
    assert len(engine._rows) == 1 and engine.compactions == 1
    while not handles[0].done:
        engine.step()
    assert handles[0].result()[0].token_ids == want[0]


@FAST
def test_prompts_that_start_alike_are_prefilled_from_the_prompt_cache(llama, tmp_path, fast):
    """A shared start (a system prompt) and a repeated prompt are read from the prompt cache: fewer tokens
    computed, the same greedy answers as model.generate, per adapter (a slot's next adapter misses)."""
    import copy

    from peft import PeftModel

    model, tok = llama
    system = "You are a careful assistant who answers every question in one short sentence. "
    prompts = encode(tok, [system + p for p in PROMPTS])
    engine = Engine(model, tok, max_batch=8, fast=fast, prompt_cache_mb=64)
    engine.min_prefix = 4
    want = reference(model, prompts, 6)
    shared = len(os.path.commonprefix(prompts))
    assert shared >= 10
    first = engine.generate(prompts[:2], SamplingParams(max_tokens=6))  # the shared start computed once
    cache = engine.prompt_cache
    start = len(os.path.commonprefix(prompts[:2]))
    assert cache.hits == 2 * start and cache.misses == len(prompts[0]) + len(prompts[1]) - start
    hits = cache.hits
    later = engine.generate(prompts[1:], SamplingParams(max_tokens=6))  # the same prompt again, and 3 alike
    assert cache.hits - hits >= len(prompts[1]) - 1 + 3 * shared
    assert [c[0].token_ids for c in first + later] == want[:2] + want[1:]

    # per adapter: a row on an adapter does not read the base's keys and values, nor those of the slot's
    # earlier adapter
    base = copy.deepcopy(model)
    ml = MultiLoRA(base, slots=1)
    make_adapter(model, tmp_path / "a1", 1)
    make_adapter(model, tmp_path / "a2", 2)
    engine = Engine(base, tok, max_batch=8, fast=fast, multilora=ml, prompt_cache_mb=64)
    engine.min_prefix = 4
    engine.generate(prompts[:1], SamplingParams(max_tokens=6))
    for name in ("a1", "a2"):
        slot = ml.slot(str(tmp_path / name))
        hits = engine.prompt_cache.hits
        got = engine.generate(prompts[:1], SamplingParams(max_tokens=6), adapters=[slot])
        assert engine.prompt_cache.hits == hits  # nothing cached for this adapter yet
        assert ml.slot(str(tmp_path / name)) == slot  # (a request holds its slot until it ends)
        again = engine.generate(prompts[:1], SamplingParams(max_tokens=6), adapters=[slot])
        assert engine.prompt_cache.hits == hits + len(prompts[0]) - 1
        peft = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / name).eval()
        assert got[0][0].token_ids == again[0][0].token_ids == reference(peft, prompts[:1], 6)[0]


def test_the_prompt_cache_keeps_to_its_budget():
    from tuneforge.models.engine import PromptCache

    layer = lambda t: [(torch.zeros(2, t, 4), torch.zeros(2, t, 4))]  # noqa: E731  (64 bytes a token)
    cache = PromptCache(max_bytes=64 * 10)  # 10 tokens' worth
    cache.put(0, (1, 2, 3, 4), layer(4))
    cache.put(0, (1, 2, 3, 5, 6), layer(5))
    assert cache.match(0, [1, 2, 3, 5, 9]) == (4, (0, (1, 2, 3, 5, 6)))
    assert cache.match(1, [1, 2, 3, 5, 9]) == (0, None)  # another adapter's
    cache.put(0, (7, 8, 9), layer(3))  # over the budget: the least recently used goes
    assert list(cache.entries) == [(0, (1, 2, 3, 5, 6)), (0, (7, 8, 9))] and cache.bytes == 64 * 8
    assert cache.get((0, (1, 2, 3, 5, 6)), 2)[0][0].shape == (2, 2, 4)
