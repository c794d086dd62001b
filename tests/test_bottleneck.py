"""Bottleneck adapters (houlsby, pfeiffer): placement, identity at start, training, PEFT save/load, disable, export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import sentiment_rows
from helpers import state, tiny_cfg

from tuneforge.config import MethodConfig


def bottleneck(model, name: str, head: bool, **kw):
    import peft

    from tuneforge.methods.bottleneck import bottleneck_config

    return peft.get_peft_model(model, bottleneck_config(model, MethodConfig(name=name, **kw), head))


def adapted(model) -> list[str]:
    """Names of the modules that carry a bottleneck adapter."""
    from tuneforge.methods.bottleneck import BottleneckLayer

    return sorted(
        n.split("base_model.model.")[-1] for n, m in model.named_modules() if isinstance(m, BottleneckLayer)
    )


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
    )
    return Gemma3ForCausalLM(cfg)


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_placement_and_identity_at_start(name, tiny_bert, tiny_llama):
    """Houlsby adapts the attention and feed-forward outputs of every block, Pfeiffer the feed-forward only; a
    fresh adapter (up-projection zero) leaves the model's outputs exactly as they were."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    cases = [
        (AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2), True),
        (AutoModelForCausalLM.from_pretrained(tiny_llama), False),
        (tiny_gemma3(), False),
    ]
    expected = {
        "houlsby": [
            {
                f"bert.encoder.layer.{i}.{s}"
                for i in (0, 1)
                for s in ("attention.output.dense", "output.dense")
            },
            {f"model.layers.{i}.{s}" for i in (0, 1) for s in ("self_attn.o_proj", "mlp.down_proj")},
            {f"model.layers.{i}.{s}" for i in (0, 1) for s in ("self_attn.o_proj", "mlp.down_proj")},
        ],
        "pfeiffer": [
            {f"bert.encoder.layer.{i}.output.dense" for i in (0, 1)},
            {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)},
            {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)},
        ],
    }[name]
    ids = torch.randint(5, 100, (2, 9))
    for (model, head), want in zip(cases, expected):
        model.eval()
        with torch.no_grad():
            before = model(ids).logits
        peft_model = bottleneck(model, name, head, reduction_factor=4).eval()
        assert set(adapted(peft_model)) == want
        with torch.no_grad():
            assert torch.equal(peft_model(ids).logits, before)
        width = 64 // 4
        layer = peft_model.get_submodule("base_model.model." + sorted(want)[0])
        assert layer.bottleneck_down["default"].weight.shape == (width, 64)


def test_a_model_without_known_sublayers_is_told_what_to_set():
    """GPT-2 keeps its projections in Conv1D layers named c_proj: the message names method.target_modules."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuneforge.methods.bottleneck import bottleneck_config

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="method.target_modules"):
        bottleneck_config(model, MethodConfig(name="houlsby"), head=False)


def test_bad_options_fail_at_load(tmp_path):
    from tuneforge.config import from_dict
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="non_linearity"):
        from_dict({"method": {"name": "houlsby", "non_linearity": "softmax"}})
    with pytest.raises(ConfigError, match="reduction_factor"):
        from_dict({"method": {"name": "pfeiffer", "reduction_factor": 0}})
    with pytest.raises(ConfigError, match="houlsby/pfeiffer adapters only"):
        from_dict({"method": {"name": "lora", "reduction_factor": 8}})


def test_disabled_is_the_base_model_exactly(tiny_bert):
    """After training steps, switching the adapter off gives the base model's logits bit for bit."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    ids = torch.randint(5, 100, (4, 11))
    with torch.no_grad():
        base = model(ids).logits.clone()
    peft_model = bottleneck(model, "houlsby", True, reduction_factor=4)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = peft_model(ids, labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        tuned = peft_model(ids).logits
        with peft_model.disable_adapter():
            off = peft_model(ids).logits
    assert not torch.allclose(tuned, base)
    assert torch.equal(off, base)


def test_merging_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
        )
    )
    with pytest.raises(ValueError, match="non-linear"):
        bottleneck(model, "pfeiffer", False).merge_and_unload()


@pytest.fixture(scope="module")
def sentiment_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bn-data") / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(96)))
    return str(path)


@pytest.fixture(scope="module", params=["houlsby", "pfeiffer"])
def bn_run(request, tiny_bert, sentiment_path, tmp_path_factory):
    """A short classification run with the adapter, through the recipe."""
    from tuneforge.recipe import train

    cfg = tiny_cfg(
        tiny_bert,
        sentiment_path,
        tmp_path_factory.mktemp("bn-runs"),
        method={"name": request.param, "reduction_factor": 4},
        training={"max_steps": 16, "lr": 5e-3, "eval_every": 8, "log_every": 2},
        eval={"baseline": False, "report": False, "forgetting": False, "bias": False},
    )
    return train(cfg)


def test_run_trains_only_adapters_and_head(bn_run, tiny_bert):
    """The loss falls; against the base weights, only adapter and head weights differ; every adapter weight moved."""
    from transformers import AutoModelForSequenceClassification

    losses = [m["loss"] for m in bn_run.metrics() if "loss" in m and m.get("split", "train") == "train"]
    assert len(losses) >= 4 and sum(losses[-2:]) < sum(losses[:2])
    model = bn_run.load_model()
    assert json.loads((bn_run.model_dir / "adapter_config.json").read_text())["peft_type"] == "BOTTLENECK"
    base = state(AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2))
    tuned = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in state(model).items()
    }
    adapter = [k for k in tuned if "bottleneck_" in k]
    assert adapter and all(tuned[k].abs().sum() > 0 for k in adapter if "bottleneck_up" in k)
    for k, v in base.items():
        if k.startswith(("classifier", "bert.pooler")):
            continue  # the head (trained; the original is kept beside it as original_module)
        assert torch.equal(tuned[k], v), k


def test_saved_adapter_loads_in_a_fresh_process(bn_run, tiny_bert, tmp_path):
    """``import tuneforge`` is all PEFT needs to load the folder (PeftModel.from_pretrained), to the same logits."""
    tok = bn_run.load_tokenizer()
    enc = tok(["a great film", "a dull plot with tedious acting"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = bn_run.load_model()(**enc.to(bn_run.device)).logits.cpu()
    torch.save(dict(enc), tmp_path / "enc.pt")
    code = f"""
import torch, tuneforge
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
base = AutoModelForSequenceClassification.from_pretrained({tiny_bert!r}, num_labels=2)
model = PeftModel.from_pretrained(base, {str(bn_run.model_dir)!r}).eval()
enc = torch.load({str(tmp_path / "enc.pt")!r})
with torch.no_grad():
    torch.save(model(**enc).logits, {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, rtol=1e-5, atol=1e-5)


def test_export_merge_writes_base_and_adapter(bn_run, tmp_path, capsys):
    """``export --merge`` cannot merge a non-linear adapter: it says so and writes the adapter with its base."""
    from peft import AutoPeftModelForSequenceClassification

    from tuneforge.cli import main

    out = tmp_path / "export"
    main(["export", str(bn_run.path), str(out), "--merge"])
    said = capsys.readouterr().err  # the console writes to stderr
    assert "cannot be merged" in said and "base" in said
    assert (out / "adapter_config.json").exists() and (out / "base" / "config.json").exists()
    model = AutoPeftModelForSequenceClassification.from_pretrained(out).eval()
    tok = bn_run.load_tokenizer()
    enc = tok(["a moving story"], return_tensors="pt")
    with torch.no_grad():
        want = bn_run.load_model()(**enc.to(bn_run.device)).logits.cpu()
        got = model(**enc).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_adapter_run_is_explained(bn_run):
    """Integrated gradients run through the PEFT wrapper (its input embeddings are the base model's)."""
    [e] = bn_run.explain(["a superb, moving story"], n_steps=16)
    assert [w["word"] for w in e["words"]] == ["a", "superb", ",", "moving", "story"]
    assert sum(w["attribution"] for w in e["words"]) == pytest.approx(
        e["probability"] - e["baseline_probability"] + e["delta"], abs=1e-4
    )


def test_encoder_decoders_get_adapters_in_both_stacks():
    """T5 and BART: every block of the encoder and the decoder, cross-attention included (Houlsby)."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0
        )
    )
    got = adapted(bottleneck(t5, "houlsby", False, reduction_factor=4))
    assert len(got) == 2 * 2 + 2 * 3 and "decoder.block.1.layer.1.EncDecAttention.o" in got
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=64,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
        )
    )
    got = adapted(bottleneck(bart, "pfeiffer", False, reduction_factor=4))
    assert got == [f"model.{s}.layers.{i}.fc2" for s in ("decoder", "encoder") for i in (0, 1)]
