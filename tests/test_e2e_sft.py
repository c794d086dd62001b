"""End-to-end on the real bundled SmolLM2-135M-Instruct: a few LoRA steps on ChatterBot, then chat with the result."""

from __future__ import annotations

import io
import json

import pytest

import tuneforge

pytestmark = pytest.mark.e2e


def test_smollm2_lora_sft_then_chat(tmp_path):
    from tuneforge.run import Run
    from tuneforge.serve.chat import chat

    cfg = {
        "task": "sft",
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": "chatterbot", "max_length": 128, "limit": 24, "eval_limit": 6, "audit": False},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "training": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "warmup_steps": 0},
        "eval": {"batch_size": 8, "report": False, "forgetting": False, "bias": False},
        "sft": {"samples": 1, "max_new_tokens": 8},
        "output": {"dir": str(tmp_path), "name": "run"},
    }
    run = tuneforge.train(cfg)
    losses = [m["loss"] for m in run.metrics() if m["split"] == "train"]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    result = json.loads((run.path / "eval.json").read_text())
    for split in ("validation", "test"):  # a real chat model: answer perplexity is finite and modest
        assert (
            1 < result["baseline"][split]["perplexity"] < 1000
            and 1 < result["tuned"][split]["perplexity"] < 1000
        )
    assert (run.path / "samples.jsonl").exists()

    r = Run(run.path)
    inputs = iter(["What is the capital of France?", "/exit"])
    out = io.StringIO()
    messages = chat(
        r.load_model(), r.load_tokenizer(), max_new_tokens=8, input_fn=lambda _: next(inputs), out=out
    )
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"].strip() and messages[1]["content"] in out.getvalue()
