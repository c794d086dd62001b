"""Export: merged standalone folders match the adapter model's logits; adapters stay standard PEFT folders."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.errors import TuneforgeError

WORDS = ["apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil"]


def chat_rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say {WORDS[i % 8]} {i}."},
                {"role": "assistant", "content": f"{WORDS[i % 8]} {WORDS[i % 8]}!"},
            ]
        }
        for i in range(n)
    ]


def sft_config(model_name: str, data_path: str, out, method_name: str, **sections) -> dict:
    cfg = {
        "task": "sft",
        "model": {"name": model_name},
        "data": {"train": data_path, "max_length": 64, "audit": False},
        "method": {"name": method_name},
        "training": {"max_steps": 2, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0},
        "eval": {"baseline": False, "report": False, "forgetting": False, "bias": False},
        "sft": {"samples": 0},
        "output": {"dir": str(out), "name": method_name, "overwrite": True},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    return cfg


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("export-data") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(24)))
    return str(path)


def trained(tiny_llama, chat_file, out, method: str, **method_cfg):
    from tuneforge.recipe import train

    return train(sft_config(tiny_llama, chat_file, out, method, method=method_cfg))


@pytest.fixture(scope="module")
def lora_run(tiny_llama, chat_file, tmp_path_factory):
    return trained(tiny_llama, chat_file, tmp_path_factory.mktemp("runs"), "lora", r=4, alpha=8)


def logits(model, tok) -> torch.Tensor:
    ids = tok(
        "<|im_start|>user\nSay lamp.<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**ids).logits  # (1, T, V)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merged_export_matches_adapter_logits(tiny_llama, chat_file, tmp_path, lora_run, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tuneforge.run import Run
    from tuneforge.serve.export import export

    run = lora_run if method == "lora" else trained(tiny_llama, chat_file, tmp_path / "runs", method)
    adapter_model, tok = Run(run.path).load_model(), Run(run.path).load_tokenizer()
    before = logits(adapter_model, tok)
    with adapter_model.disable_adapter():
        # the adapter changed something
        assert not torch.allclose(logits(adapter_model, tok), before, atol=1e-4)
    out = export(run.path, tmp_path / "merged", merge=True)
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # standalone: plain transformers
    torch.testing.assert_close(logits(merged, tok), before, atol=1e-4, rtol=1e-4)
    exported_tok = AutoTokenizer.from_pretrained(out)
    assert exported_tok.chat_template == tok.chat_template
    gen = GenerationConfig.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") in (
        [gen.eos_token_id] if isinstance(gen.eos_token_id, int) else gen.eos_token_id
    )


def test_export_without_merge_is_a_standard_peft_adapter(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.run import Run
    from tuneforge.serve.export import export

    out = export(lora_run.path, tmp_path / "adapter")
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), out)
    tok = Run(lora_run.path).load_tokenizer()
    torch.testing.assert_close(logits(model, tok), logits(Run(lora_run.path).load_model(), tok))
    with pytest.raises(TuneforgeError, match="--overwrite"):
        export(lora_run.path, out)


def test_prefix_adapter_cannot_merge_and_cli_export(tiny_llama, chat_file, tmp_path, capsys):
    from tuneforge.cli import main

    run = trained(tiny_llama, chat_file, tmp_path / "runs", "prefix", num_virtual_tokens=4)
    with pytest.raises(SystemExit):
        main(["export", str(run.path), str(tmp_path / "merged"), "--merge"])
    assert "no weights to merge" in capsys.readouterr().err
    main(["export", str(run.path), str(tmp_path / "adapter")])
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
