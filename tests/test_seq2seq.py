"""Task seq2seq on tiny random T5 and BART models (and a BERT2BERT warm start): the target-only loss against a
hand computation and transformers' own, runs that train, save, evaluate (ROUGE/chrF base beside tuned),
generate, predict and export to a folder ``AutoModelForSeq2SeqLM`` loads; data shapes and config errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bundled_tokenizer, save_tiny

from tuneforge.config import from_dict
from tuneforge.errors import ConfigError, DataError, ModelError, TuneforgeError

WORDS = ["apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil", "window", "tiger"]


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    """A 2+2-layer BART (d_model 64) with MiniLM's tokenizer: [CLS] is <s>, [SEP] is </s> and the decoder start."""
    from transformers import BartConfig, BartForConditionalGeneration

    tok = bundled_tokenizer("minilm-l6")
    cfg = BartConfig(
        vocab_size=tok.vocab_size,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.sep_token_id,
        forced_eos_token_id=tok.sep_token_id,
    )
    return save_tiny(tmp_path_factory, "tiny-bart", BartForConditionalGeneration, cfg, tok)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """Learnable pairs: the target repeats the source's word."""
    rows = [
        {"source": f"say {WORDS[i % 10]} now {i}", "target": f"{WORDS[i % 10]} {WORDS[i % 10]}"}
        for i in range(100)
    ]
    path = tmp_path_factory.mktemp("s2s-data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def s2s_config(model_path: str, data_path: str, out=None, **sections) -> dict:
    cfg = {
        "task": "seq2seq",
        "model": {"name": model_path, "dropout": 0.0},
        "data": {"train": data_path, "max_length": 32, "audit": False},
        "method": {"name": "full"},
        "training": {
            "max_steps": 24,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 0,
            "eval_every": 12,
            "log_every": 4,
            "precision": "fp32",
        },
        "seq2seq": {"max_new_tokens": 6, "samples": 2},
        "eval": {"batch_size": 32, "max_generate": 8, "bootstrap_samples": 100},
        "output": {"dir": str(out or "runs"), "name": "run", "overwrite": True},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def task_for(model_path: str, data_path: str, **sections):
    from tuneforge.tasks import get_task

    return get_task("seq2seq")(from_dict(s2s_config(model_path, data_path, **sections)))


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize("which", ["t5", "bart"])
def test_target_only_loss_equals_hand_computed(which, tiny_t5, tiny_bart, pairs_file):
    from tuneforge.models.seq2seq import decoder_inputs, seq2seq_loss

    task = task_for({"t5": tiny_t5, "bart": tiny_bart}[which], pairs_file)
    model = task.model.eval()
    batch = task.collate([0, 5, 11])  # different source and target lengths: padding on both sides
    loss, n = seq2seq_loss(model, batch)
    labels = batch["labels"]
    assert n == int((labels != -100).sum())
    # by hand: -log p(target token | source, earlier target tokens), one example at a time, no padding
    total = 0.0
    c = model.config
    for i in range(labels.shape[0]):  # no_grad below: only the values are compared
        src = batch["input_ids"][i][batch["attention_mask"][i].bool()][None]  # (1, S)
        tgt = labels[i][labels[i] != -100][None]  # (1, T)
        dec = decoder_inputs(tgt, c.decoder_start_token_id, c.pad_token_id)
        with torch.no_grad():
            logp = model(input_ids=src, decoder_input_ids=dec).logits.log_softmax(-1)  # (1, T, V)
        total -= float(logp[0, torch.arange(tgt.shape[1]), tgt[0]].sum())
    assert float(loss.detach()) == pytest.approx(total, rel=1e-4)
    # and transformers' own (mean) loss, whose decoder inputs it builds from the labels itself
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert float(loss.detach()) / n == pytest.approx(float(ref), rel=1e-4)
    # source tokens are never targets: the labels are exactly the tokenised targets
    first = task.encoded["train"][0]
    assert (
        task.tokenizer.decode(first.labels, skip_special_tokens=True)
        == task.splits["train"][0].messages[1]["content"]
    )


# ---------------------------------------------------------------- whole runs
@pytest.mark.parametrize("which", ["t5", "bart"])
def test_run_trains_evaluates_generates_and_exports(which, tiny_t5, tiny_bart, pairs_file, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    import tuneforge
    from tuneforge.run import Run
    from tuneforge.serve.export import export

    run = tuneforge.train(s2s_config({"t5": tiny_t5, "bart": tiny_bart}[which], pairs_file, tmp_path))
    losses = [m["loss"] for m in run.metrics() if m["split"] == "train"]
    assert losses[-1] < 0.7 * losses[0]
    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["task"] == "seq2seq" and ev["result"] == "language_model"
    assert ev["tuned"]["test"]["loss"] < ev["baseline"]["test"]["loss"]
    g = ev["generation"]
    assert g["n"] == 8 and g["mode"] == "text"
    for k in ("rouge1", "rouge2", "rougeL", "chrf", "bleu"):
        assert k in g["tuned"] and k in g["base"] and k in g["difference"]
    assert len(ev["samples"]) == 2 and {"prompt", "reference", "base", "tuned"} <= set(ev["samples"][0])
    report = (run.path / "report.md").read_text()
    assert "Generated answers, scored" in report and "ROUGE-L" in report and "chrF" in report

    run = Run(run.path)
    out = run.generate(["say tiger now 3", "say lamp now 4"])
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert isinstance(run.generate("say tiger now 3", base=True)[0], str)
    assert list(run.predict(["say tiger now 3"])[0]) == ["output"]
    with pytest.raises(TuneforgeError, match="empty"):
        run.predict([" "])

    dest = export(run.path, tmp_path / "exported")
    exported = AutoModelForSeq2SeqLM.from_pretrained(dest).eval()
    model, tok = run.load_model(), run.load_tokenizer()
    enc = tok(["say river now 7"], return_tensors="pt")
    dec = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        a = exported(**enc, decoder_input_ids=dec).logits
        b = model(**enc, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b)


def test_lora_run_and_merged_export(tiny_t5, pairs_file, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    import tuneforge
    from tuneforge.serve.export import export

    cfg = s2s_config(tiny_t5, pairs_file, tmp_path, method={"name": "lora", "r": 4, "alpha": 8})
    cfg["training"]["max_steps"] = 6
    cfg["eval"]["generation_metrics"] = False
    run = tuneforge.train(cfg)
    assert json.loads((run.path / "model" / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"
    ev = json.loads((run.path / "eval.json").read_text())
    assert "generation" not in ev and len(ev["samples"]) == 2
    dest = export(run.path, tmp_path / "merged", merge=True)
    assert not (dest / "adapter_config.json").exists()
    AutoModelForSeq2SeqLM.from_pretrained(dest)


# ---------------------------------------------------------------- the warm start
def test_warm_start_builds_bert2bert(tiny_bert, pairs_file):
    from transformers import EncoderDecoderModel

    task = task_for(tiny_bert, pairs_file, model={"seq2seq_warm_start": True})
    m, tok = task.model, task.tokenizer
    assert isinstance(m, EncoderDecoderModel)
    assert m.config.decoder.is_decoder and m.config.decoder.add_cross_attention
    assert (m.config.decoder_start_token_id, m.config.eos_token_id, m.config.pad_token_id) == (
        tok.cls_token_id,
        tok.sep_token_id,
        tok.pad_token_id,
    )
    # the decoder starts from [CLS] on its own: targets are the text and [SEP]
    first = task.encoded["train"][0]
    assert first.labels[0] != tok.cls_token_id and first.labels[-1] == tok.sep_token_id
    # the base model of the report is exactly the model training started from (same new cross-attention)
    again = type(task).build_model(task.cfg, tok)
    for (k, a), (_, b) in zip(m.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    loss, n = task.loss(m, task.collate([0, 1]))
    assert torch.isfinite(loss) and n > 0


def test_warm_start_refuses_adapters_and_causal_models(tiny_bert, tiny_llama, tiny_t5, pairs_file):
    with pytest.raises(ConfigError, match="cross-attention is new"):
        from_dict(
            s2s_config(tiny_bert, pairs_file, model={"seq2seq_warm_start": True}, method={"name": "lora"})
        )
    with pytest.raises(ModelError, match="seq2seq_warm_start=true"):
        task_for(tiny_bert, pairs_file)
    with pytest.raises(ModelError, match="not an encoder-decoder"):
        task_for(tiny_llama, pairs_file)
    with pytest.raises(ModelError, match="already an encoder-decoder"):
        task_for(tiny_t5, pairs_file, model={"seq2seq_warm_start": True})


# ---------------------------------------------------------------- data and config
def test_named_columns_and_chat_rows(tiny_t5, tmp_path):
    named = tmp_path / "named.jsonl"
    named.write_text(
        "".join(json.dumps({"article": f"text {i}", "summary": f"sum {i}"}) + "\n" for i in range(30))
    )
    task = task_for(tiny_t5, str(named), seq2seq={"source_column": "article", "target_column": "summary"})
    assert task.splits["train"][0].messages[0]["content"].startswith("text")
    with pytest.raises(DataError, match="seq2seq.source_column"):
        task_for(tiny_t5, str(named))
    chat = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"first {i}"},
                {"role": "assistant", "content": "ignored"},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": f"last {i}"},
            ]
        }
        for i in range(30)
    ]
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = task_for(tiny_t5, str(chat))
    e = task.splits["train"][0].messages
    assert e[0]["content"].startswith("first") and e[1]["content"].startswith("last")
    # the pre-flight audit reads the pairs like prompt/completion rows
    from tuneforge.data.audit import audit_splits

    report = audit_splits(task.splits, task.data_format, tokenizer=task.tokenizer, max_length=32)
    assert report.to_dict()


def test_config_rules(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="does not read the 'seq2seq' section"):
        from_dict({"task": "sft", "seq2seq": {"num_beams": 4}})
    with pytest.raises(ConfigError, match="seq2seq_warm_start"):
        from_dict({"task": "sft", "model": {"seq2seq_warm_start": True}})
    with pytest.raises(ConfigError, match="method 'unfreeze' cannot train task 'seq2seq'"):
        from_dict({"task": "seq2seq", "method": {"name": "unfreeze"}})


def test_shipped_config_loads():
    from tuneforge.config import load_config

    cfg = load_config("configs/seq2seq-minilm-headlines.yaml")
    assert cfg.task == "seq2seq" and cfg.model.seq2seq_warm_start
