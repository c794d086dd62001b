"""The engine's lean forward (models/fastdecode.py) against the models' own forward (tiny random models)."""

from __future__ import annotations

import copy

import pytest
import torch

from tuneforge.models.engine import BatchCache, Engine, SamplingParams
from tuneforge.models.fastdecode import fast_decoder, packing_available
from tuneforge.models.multilora import MultiLoRA


def tiny(kind: str, dtype=torch.float32):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    heads = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, **heads))
    elif kind == "qwen2":  # biases on q/k/v
        model = Qwen2ForCausalLM(Qwen2Config(**common, **heads))
    elif kind == "qwen3":  # RMSNorm on each query and key head
        model = Qwen3ForCausalLM(Qwen3Config(**common, **heads, head_dim=16))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4))
    return model.to(dtype).eval()


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


ROWS = [[5, 17, 42, 99, 7, 3], [8, 250, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9]]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_prefill_and_decode_logits_equal_the_models_forward(kind):
    """Left-padded prefill of rows of different lengths, then two decode steps: every real position's logits
    equal the model's own forward over the same cache (fp32, 1e-5)."""
    model = tiny(kind)
    fast = fast_decoder(model)
    assert fast is not None
    ids, mask = left_padded(ROWS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    mine, theirs = BatchCache(2, 32), BatchCache(2, 32)
    with torch.inference_mode():
        got = fast(ids, mask, positions, mine)
        want = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=theirs, use_cache=True
        ).logits
        real = mask.bool()
        assert torch.allclose(got[real], want[real], atol=1e-5), (got[real] - want[real]).abs().max()
        for step in range(2):
            nxt = got[:, -1].argmax(-1, keepdim=True)
            mask = torch.nn.functional.pad(mask, (0, 1), value=1)
            positions = positions[:, -1:] + 1
            got = fast(nxt, mask, positions, mine)
            want = model(
                input_ids=nxt,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=theirs,
                use_cache=True,
            ).logits
            assert torch.allclose(got, want, atol=1e-5), (step, (got - want).abs().max())
        assert torch.allclose(mine.layers[0].keys, theirs.layers[0].keys, atol=1e-6)


def test_folded_adapters_equal_the_wrappers_forward(tmp_path):
    """Adapters' A folded into the fused base weight (Qwen2: with q/k/v biases): for rows on several slots
    (some idle among the loaded), on one slot, on the base, and after a slot is rewritten, the lean forward's
    logits equal the MultiLoRA-wrapped model's own forward (fp32, 1e-5)."""
    from peft import LoraConfig, get_peft_model

    model = tiny("qwen2")
    paths = []
    for k, (r, targets) in enumerate(
        [(4, "all-linear"), (8, ["q_proj", "v_proj", "up_proj"]), (2, ["o_proj"])]
    ):
        torch.manual_seed(10 + k)
        peft = get_peft_model(
            copy.deepcopy(model),
            LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False),
        )
        peft.save_pretrained(tmp_path / f"a{k}")
        paths.append(tmp_path / f"a{k}")
    ml = MultiLoRA(model, slots=3)
    slots = [ml.slot(str(p)) for p in paths]
    assert slots == [1, 2, 3]
    fast = fast_decoder(model)
    ids, mask = left_padded(ROWS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def same(rows):
        ml.set_rows(rows, "cpu")
        with torch.inference_mode():
            got = fast(ids, mask, positions, BatchCache(2, 16))
            want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        assert torch.allclose(got[real], want[real], atol=1e-5), (rows, (got[real] - want[real]).abs().max())
        return got

    plain = same([0, 0, 0])
    same([1, 0, 2])  # slots 1-2 used, 3 loaded and idle
    same([3, 1, 3])
    assert not torch.allclose(same([2, 2, 2]), plain, atol=1e-3)  # the adapter changes the logits
    for s in slots:
        ml.release(s)
    torch.manual_seed(20)
    peft = get_peft_model(
        copy.deepcopy(tiny("qwen2")), LoraConfig(r=4, target_modules=["k_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "a3")
    assert ml.slot(str(tmp_path / "a3")) == 1  # the least recently used slot, rewritten: the fold is rebuilt
    same([1, 2, 0])
    same([1, 1, 1])


def test_only_plain_llama_family_models_get_the_fast_forward(tiny_llama):
    from peft import LoraConfig, get_peft_model

    assert fast_decoder(tiny("gpt2")) is None
    peft = get_peft_model(tiny("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert fast_decoder(peft) is None  # an unmerged PEFT model runs its own forward
    assert Engine(peft, fast=True).fast is None
    assert fast_decoder(peft.merge_and_unload()) is not None


def test_an_adapter_loaded_after_the_engine_started_is_applied(llama_and_adapters):
    """MultiLoRA wraps a projection only when an adapter needs it, which may be after the fast forward packed
    the weights: the wrapper's rows are applied on top of the fused base matmul."""
    from peft import PeftModel

    model, tok, paths = llama_and_adapters
    base = copy.deepcopy(model)
    ml = MultiLoRA(base, slots=2)
    engine = Engine(base, tok, multilora=ml, fast=True)
    assert engine.fast is not None
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ("Hello there", "Name three colours.")]
    before = engine.generate(ids, SamplingParams(max_tokens=6))
    slot = ml.slot(str(paths[0]))  # wraps q_proj, v_proj, down_proj now
    got = engine.generate(ids, SamplingParams(max_tokens=6), adapters=[slot, 0])
    ref = PeftModel.from_pretrained(copy.deepcopy(model), paths[0]).eval()
    want = Engine(ref, tok).generate(ids[:1], SamplingParams(max_tokens=6))
    assert got[0][0].token_ids == want[0][0].token_ids
    assert got[1][0].token_ids == before[1][0].token_ids


@pytest.fixture
def llama_and_adapters(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    torch.manual_seed(1)
    peft = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        ),
    )
    peft.save_pretrained(tmp_path / "a1")
    return model, AutoTokenizer.from_pretrained(tiny_llama), [tmp_path / "a1"]


def test_without_packing_the_plain_matmul_gives_the_same_answers(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tuneforge.models.fastdecode as fd

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = [
        tok(p, add_special_tokens=False)["input_ids"] for p in ("Hello there", "Hi", "Name three colours.")
    ]
    packed = Engine(model, tok, fast=True)
    monkeypatch.setattr(fd, "packing_available", lambda weight: False)
    plain = Engine(model, tok, fast=True)
    assert not plain.fast.lm_head.packed
    assert packed.fast.lm_head.packed == packing_available(model.lm_head.weight)
    p = SamplingParams(max_tokens=8)
    assert [c[0].token_ids for c in plain.generate(ids, p)] == [
        c[0].token_ids for c in packed.generate(ids, p)
    ]


@pytest.mark.skipif(
    not packing_available(torch.zeros(1, dtype=torch.bfloat16)), reason="this CPU has no native bf16 matmul"
)
def test_bf16_packed_logits_stay_close_to_the_models():
    """bf16 on a CPU with native bf16 (AMX, AVX512-BF16): oneDNN's packed matmuls round differently from the
    model's, so the logits are close, not equal."""
    model = tiny("llama", torch.bfloat16)
    fast = fast_decoder(model)
    assert fast.lm_head.packed
    ids, mask = left_padded(ROWS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        got = fast(ids, mask, positions, BatchCache(2, 16)).float()
        want = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 0.05 * want[real].abs().max()


def test_under_autocast_the_fast_forward_keeps_the_weights_dtype(tiny_llama):
    """A training loop evaluates under bf16 autocast: the packed fp32 weights take fp32 inputs only, so the lean
    forward switches autocast off (it ran the oneDNN primitive on bf16 inputs and failed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ("Hello there", "Name three colours.")]
    want = Engine(model, tok, fast=True).generate(ids, SamplingParams(max_tokens=6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = Engine(model, tok, fast=True).generate(ids, SamplingParams(max_tokens=6))
    assert [c[0].token_ids for c in got] == [c[0].token_ids for c in want]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_norm_equals_the_models_rmsnorm(dtype):
    """The lean forward's RMSNorm (torch's fused rms_norm) gives the module's output: fp32 within 1e-6, bf16
    within its rounding (the normalised input is rounded before the weight multiplies it, as in the module);
    a module of another kind is called as it is."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tuneforge.models.fastdecode import _norm

    torch.manual_seed(0)
    module = LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        module.weight.normal_(1.0, 0.3)
    module = module.to(dtype)
    x = (torch.randn(4, 3, 64) * 3).to(dtype)
    norm = _norm(module)
    assert norm is not module
    with torch.inference_mode():
        got, want = norm(x), module(x)
    assert got.dtype == want.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    other = torch.nn.LayerNorm(64)
    assert _norm(other) is other
