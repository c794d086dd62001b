"""Pre-flight memory estimate: the measured activation curve extrapolates, and a run that will not fit stops."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from helpers import tiny_cfg

from tuneforge.train import memory


def _ids(vocab: int, n: int, t: int) -> dict:
    ids = torch.randint(3, vocab - 1, (n, t), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("attn", ["sdpa", "eager", "tuneforge"])
def test_activation_curve_predicts_a_larger_batch(tiny_llama, attn):
    """Probed at <= 64 tokens, one sequence; checked against a direct count at 4 x 200 tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.models.attention import register

    register()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attn)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    a, b, c = memory.activation_curve(model, True, torch.device("cpu"), nullcontext, 512)
    if attn != "sdpa":
        assert c > 0  # attention probabilities grow with T^2
    body = model.get_base_model().model
    inputs = {**_ids(model.config.vocab_size, 4, 200), "use_cache": False}
    measured = memory.saved_bytes(body, inputs, nullcontext)
    predicted = a + 4 * (b * 200 + c * 200 * 200)
    assert abs(predicted / measured - 1) < 0.05, (predicted, measured)


def test_probe_keeps_nothing_alive(tiny_llama):
    """The probe's forward graphs are freed: nothing with a grad_fn outlives it (a pack hook that hands the
    tensor back would keep every probe's activations alive for the whole run)."""
    import gc

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.get_input_embeddings().weight.requires_grad_(True)

    def graph_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)

    before = graph_tensors()
    assert memory.saved_bytes(model.model, _ids(model.config.vocab_size, 2, 16), nullcontext) > 0
    assert graph_tensors() == before


def test_classifier_estimate_counts_trainable_state(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from tuneforge.config import from_dict

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    cfg = from_dict(tiny_cfg(tiny_bert, "x.jsonl", "/tmp"))
    est = memory.estimate(model, [10, 30, 20], cfg, torch.device("cpu"), nullcontext)
    params = sum(p.numel() for p in model.parameters())
    assert est.gradients == 4 * params and est.optimizer == 8 * params
    assert est.micro_batch == (3, 30) and est.logits == 0
    measured = memory.saved_bytes(model, _ids(1000, 3, 30), nullcontext)
    assert abs(est.activations / measured - 1) < 0.05
    assert est.total > est.weights + est.activations and est.available and est.fits


def test_auto_token_cap_keeps_activations_in_budget():
    curve = (1000.0, 2000.0, 10.0)  # bytes(T) = a + b T + c T^2
    lengths = [40, 50, 60, 500]  # median 60: 2,600 bytes a token
    cap = memory.auto_batch_tokens(curve, lengths, 1000 + 2600 * 100)
    assert cap == 100
    assert memory.auto_batch_tokens(curve, lengths, 10) == 64  # never below 64
    cpu = torch.device("cpu")
    assert memory.resolve_batch_tokens(300, curve, lengths, cpu) == 300
    assert memory.resolve_batch_tokens(None, curve, lengths, cpu) is None
    assert memory.resolve_batch_tokens("auto", None, lengths, cpu) == memory.FALLBACK_BATCH_TOKENS


def test_largest_micro_batch_follows_the_token_cap():
    assert memory.largest_micro_batch([50, 100, 400], 8, None) == (3, 400)
    assert memory.largest_micro_batch([50] * 20 + [400], 8, 1024) == (2, 400)
    assert memory.largest_micro_batch([50] * 20 + [2000], 8, 1024) == (1, 2000)


def test_run_that_will_not_fit_stops_before_training(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    import tuneforge
    from tuneforge.errors import TuneforgeError

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 2, "eval_every": 2})
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 2**20)
    with pytest.raises(TuneforgeError, match="memory estimate.*max_batch_tokens.*memory_check=false"):
        tuneforge.train(cfg)
    assert not (Path(tmp_path) / "run" / "metrics.jsonl").exists()  # stopped before the first step

    cfg["training"]["memory_check"] = False  # warn only
    run = tuneforge.train(cfg)
    est = json.loads((Path(run.path) / "run.json").read_text())["memory_estimate"]
    assert est["total"] > est["available"] == 64.0 and est["activations"] > 0
    assert est["batch_tokens"] > 1024  # auto: a tiny model's activations allow large micro-batches


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_freed_blocks_go_back_to_the_system_between_phases():
    """release_free_memory (glibc's malloc_trim, before evaluations): blocks a phase freed inside the heap
    stop counting as resident memory; where malloc has no trim it does nothing."""
    import ctypes.util

    from tuneforge.utils import release_free_memory

    if "musl" in (ctypes.util.find_library("c") or "") or not Path("/lib").exists():
        pytest.skip("not glibc")
    blocks = [torch.ones(16_000) for _ in range(4_000)]  # ~256 MB of 64 KB tensors: heap blocks, not mmaps
    keep = blocks[-1]  # the heap's top stays in use, so only a trim can hand back what lies below it
    del blocks
    before = memory.current_rss()
    release_free_memory()
    assert memory.current_rss() < before - 100 * 2**20
    assert keep.sum() == 16_000
