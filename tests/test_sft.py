"""The SFT task on a tiny random Llama: loss against transformers' reference, every method trains, saves and loads
back, token-exact counts, evaluation (base vs tuned perplexity, samples), generate and chat."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from tuneforge.config import from_dict
from tuneforge.errors import ConfigError
from tuneforge.train.lm_loss import lm_loss

WORDS = [
    "apple",
    "river",
    "cloud",
    "stone",
    "lamp",
    "violin",
    "garden",
    "pencil",
    "window",
    "tiger",
    "candle",
    "bridge",
]


def chat_rows(n: int) -> list[dict]:
    """Learnable conversations: the answer repeats the question's word in a fixed pattern."""
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w} {i}."},
                    {"role": "assistant", "content": f"{w} {w} {w}!"},
                ]
            }
        )
    return rows


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft-data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(40)))
    return str(path)


def sft_config(model_name: str, data_path: str, out, method_name: str = "lora", **sections) -> dict:
    cfg = {
        "task": "sft",
        "model": {"name": model_name},
        "data": {
            "train": data_path,
            "max_length": 64,
            "validation_fraction": 0.1,
            "test_fraction": 0.1,
            "audit": False,
        },
        "method": {"name": method_name},
        "training": {"max_steps": 4, "batch_size": 8, "lr": 1e-2, "log_every": 1, "warmup_steps": 0},
        "eval": {"baseline": False, "report": False, "forgetting": False, "bias": False, "batch_size": 8},
        "sft": {"samples": 1, "max_new_tokens": 3},
        "output": {"dir": str(out), "name": method_name, "overwrite": True},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def test_loss_matches_transformers_reference(tiny_llama, chat_file):
    """Summed loss over assistant tokens == transformers' own causal-LM loss (mean) times the token count."""
    import peft
    from transformers import AutoModelForCausalLM

    from tuneforge.tasks.sft import SFTTask

    task = SFTTask(from_dict(sft_config(tiny_llama, chat_file, "/tmp")), load_model=False)
    batch = task.collate(list(range(6)))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    lora = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    # prompt and prefix tuning change the sequence the model sees: PEFT's own loss is the reference
    prompt = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    )
    prefix = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    )
    for m in (model, lora, prompt, prefix):
        ref = m(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        fast, n = lm_loss(m, batch, positions_only=True)
        plain, n2 = lm_loss(m, batch, positions_only=False)
        assert n == n2 == sum(task.counts[i] for i in range(6))  # counts are exactly the loss tokens
        torch.testing.assert_close(fast / n, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain / n, ref, atol=1e-5, rtol=1e-5)


METHODS = [  # (method, extra method config, learning rate)
    ("full", {}, 3e-3),
    ("freeze", {"freeze_layers": 1}, 3e-3),
    ("lora", {"r": 8, "alpha": 16}, 1e-2),
    ("dora", {"r": 8, "alpha": 16}, 1e-2),
    ("ia3", {}, 5e-2),
    ("prefix", {"num_virtual_tokens": 4}, 5e-2),
    ("prompt", {"num_virtual_tokens": 4}, 5e-2),
]


@pytest.mark.parametrize("method,extra,lr", METHODS, ids=[m[0] for m in METHODS])
def test_every_method_trains_saves_and_loads_back(tiny_llama, chat_file, tmp_path, method, extra, lr):
    """The task, the method and the loop (as the recipe wires them): the loss falls, exactly the trainable
    weights change, and the saved folder loads back (full folder, or base + PEFT adapter) to the same loss."""
    from tuneforge.methods import prepare
    from tuneforge.recipe import make_accelerator
    from tuneforge.tasks.lm import load_causal_lm_dir
    from tuneforge.tasks.sft import SFTTask
    from tuneforge.train.loop import fit

    cfg = from_dict(sft_config(tiny_llama, chat_file, tmp_path, method, method=extra, training={"lr": lr}))
    torch.manual_seed(0)
    task = SFTTask(cfg)
    prepared = prepare(task.model, cfg.method, cfg.training, head=False)
    model = prepared.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {p.data_ptr() for p in model.parameters() if p.requires_grad}  # tied weights share storage
    assert trainable
    fit(task, prepared, cfg, tmp_path, make_accelerator(cfg))
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(map(math.isfinite, losses)) and losses[-2] < losses[0]  # last train loss below the first

    after = model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    # every trainable weight changed, and nothing else
    assert changed == {k for k, v in after.items() if v.data_ptr() in trainable}
    if method == "freeze":  # the embeddings and the lowest block stay frozen; the top block trains
        assert "model.layers.1.mlp.up_proj.weight" in changed
        assert not any(k.startswith(("model.embed_tokens", "model.layers.0.")) for k in changed)

    task.save_model(model, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_config.json").exists() == (method not in ("full", "freeze"))
    loaded = load_causal_lm_dir(tmp_path / "model", cfg)
    # float noise only: prompt tuning's saved embeddings are read back through another code path (~1e-5)
    assert task.evaluate(loaded, "validation")["loss"] == pytest.approx(
        task.evaluate(model, "validation")["loss"], rel=1e-4
    )


def test_evaluation_base_vs_tuned_and_samples(tiny_llama, chat_file, tmp_path):
    from tuneforge.recipe import train

    cfg = sft_config(
        tiny_llama,
        chat_file,
        tmp_path,
        "lora",
        training={"max_steps": 8},
        eval={"baseline": True},
        sft={"samples": 2, "max_new_tokens": 4},
    )
    run = train(cfg)
    result = json.loads((run.path / "eval.json").read_text())
    assert result["task"] == "sft" and set(result["tuned"]) == {"validation", "test"}
    for split in ("validation", "test"):
        tuned, base = result["tuned"][split], result["baseline"][split]
        assert tuned["perplexity"] < base["perplexity"]  # learnable data: the tuned model is better
        assert tuned["perplexity_change"] == pytest.approx(
            (tuned["perplexity"] - base["perplexity"]) / base["perplexity"], abs=1e-3
        )
    samples = [json.loads(line) for line in (run.path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "reference", "base", "tuned"} <= set(samples[0])
    base_answers = run.generate([s["prompt"] for s in samples], max_new_tokens=4, base=True)
    # --base switches the adapter off: the base model's answers
    assert base_answers == [s["base"] for s in samples]
    data = json.loads((run.path / "data.json").read_text())
    assert data["train"]["loss_tokens"] == sum(run_task_counts(cfg))


def run_task_counts(cfg) -> list[int]:
    from tuneforge.tasks.sft import SFTTask

    return SFTTask(from_dict(cfg), load_model=False).counts


def test_packing_task_keeps_every_loss_token(tiny_llama, chat_file):
    from tuneforge.tasks.sft import SFTTask

    plain = SFTTask(
        from_dict(sft_config(tiny_llama, chat_file, "/tmp", data={"max_length": 128})), load_model=False
    )
    packed = SFTTask(
        from_dict(sft_config(tiny_llama, chat_file, "/tmp", data={"max_length": 128}, sft={"packing": True})),
        load_model=False,
    )
    assert len(packed.rows) < len(plain.rows) and max(packed.lengths) <= 128
    assert sum(packed.counts) == sum(plain.counts)
    batch = packed.collate([0, 1])
    assert "position_ids" in batch and "attention_mask" not in batch


def test_conflicting_options_fail_at_load(tiny_llama, chat_file):
    with pytest.raises(ConfigError, match="sft.packing"):
        from_dict(sft_config(tiny_llama, chat_file, "/tmp", "prefix", sft={"packing": True}))
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(sft_config(tiny_llama, chat_file, "/tmp", sft={"pack": True}))


def test_raw_text_continued_pretraining(tiny_llama, tmp_path):
    from tuneforge.tasks.sft import SFTTask

    path = tmp_path / "prose.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"Paragraph {i} about rivers and stones."}) + "\n" for i in range(20))
    )
    task = SFTTask(from_dict(sft_config(tiny_llama, str(path), tmp_path)), load_model=False)
    assert task.data_format == "text"
    row = task.rows[0]
    assert row.labels == row.input_ids and row.input_ids[-1] == task.tokenizer.eos_token_id


def test_chat_and_generate_commands(tiny_llama, chat_file, tmp_path, capsys):
    from tuneforge.cli import main
    from tuneforge.recipe import train
    from tuneforge.run import Run
    from tuneforge.serve.chat import chat

    run = train(sft_config(tiny_llama, chat_file, tmp_path, "lora", training={"max_steps": 1}))
    capsys.readouterr()
    main(
        [
            "generate",
            str(run.path),
            "--prompt",
            "Say lamp.",
            "--prompt",
            "Say tiger.",
            "--base",
            "--json",
            "--max-new-tokens",
            "3",
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["Say lamp.", "Say tiger."] and all("base" in x for x in lines)

    main(["eval", str(run.path), "--data", chat_file])  # another file: perplexity of the tuned model on it
    assert json.loads((run.path / "eval-chat.json").read_text())["tuned"]["test"]["perplexity"] > 1
    assert "test perplexity" in capsys.readouterr().err

    inputs = iter(["Say lamp.", "/reset", "Say river.", "/exit"])
    out = io.StringIO()
    r = Run(run.path)
    messages = chat(
        r.load_model(), r.load_tokenizer(), max_new_tokens=3, input_fn=lambda _: next(inputs), out=out
    )
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "Say river."
    assert "(conversation reset)" in out.getvalue()
