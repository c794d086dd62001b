"""Classification end to end on a tiny random BERT: every method trains what it should and saves a loadable model."""

import json

import pytest
import torch
from helpers import tiny_cfg

import tuneforge
from tuneforge.tasks.classification import load_sequence_classifier

METHODS = [
    ("full", {}),
    ("freeze", {}),
    ("freeze", {"freeze_layers": 1}),
    ("unfreeze", {"unfreeze_every": 6}),
    ("lora", {"r": 4, "alpha": 8}),
    ("dora", {"r": 4, "alpha": 8}),
    ("ia3", {}),
]


def _weights(path):
    from transformers import AutoModel

    return {k: v.clone() for k, v in AutoModel.from_pretrained(path).state_dict().items()}


@pytest.mark.parametrize("method,extra", METHODS, ids=[m + ("-" + str(e) if e else "") for m, e in METHODS])
def test_method_trains_and_saves(tiny_bert, sentiment_file, tmp_path, method, extra):
    lr = 3e-3 if method in ("lora", "dora", "ia3", "freeze") else 1e-3
    cfg = tiny_cfg(
        tiny_bert,
        sentiment_file,
        tmp_path,
        method={"name": method, **extra},
        training={"max_steps": 24, "lr": lr, "head_lr": 5e-3, "log_every": 6, "eval_every": 24},
    )
    run = tuneforge.train(cfg)
    metrics = run.metrics()
    train_losses = [m["loss"] for m in metrics if m["split"] == "train"]
    assert all(torch.isfinite(torch.tensor(train_losses)))
    assert train_losses[-1] < train_losses[0], train_losses  # each logged loss averages 6 steps (48 examples)
    summary = run.summary()
    assert 0 < summary["trainable_parameters"] <= summary["total_parameters"]

    # The saved folder loads with transformers (or PEFT) and predicts exactly what `predict` says.
    model = load_sequence_classifier(run.path / "model")
    texts = ["the great film", "an awful plot"]
    tok = run.load_tokenizer()
    with torch.no_grad():
        logits = model(**tok(texts, return_tensors="pt", padding=True)).logits
    preds = run.predict(texts)
    assert [model.config.id2label[int(i)] for i in logits.argmax(-1)] == [p["label"] for p in preds]
    probs = logits.softmax(-1)
    assert abs(float(probs.max(-1).values[0]) - preds[0]["score"]) < 1e-5
    assert model.config.id2label == {0: "neg", 1: "pos"} or getattr(model, "peft_config", None)

    # What should stay frozen did, what should train changed.
    base = _weights(tiny_bert)
    if method in ("full", "freeze", "unfreeze"):
        tuned = {k.removeprefix("bert."): v for k, v in model.state_dict().items()}
        changed = {k for k in base if k in tuned and not torch.equal(base[k], tuned[k])}
        if method == "full":
            assert any("encoder.layer.0" in k for k in changed) and any("embeddings" in k for k in changed)
        elif method == "freeze" and not extra:
            assert not any("encoder" in k or "embeddings" in k for k in changed)
            assert any("pooler" in k for k in changed)
        elif method == "freeze":
            assert not any("encoder.layer.0." in k or "embeddings" in k for k in changed)
            assert any("encoder.layer.1." in k for k in changed)
        elif method == "unfreeze":  # after 24 steps with a new layer every 6: both blocks trained
            assert any("encoder.layer.1." in k for k in changed) and any(
                "encoder.layer.0." in k for k in changed
            )
    else:
        assert (run.path / "model" / "adapter_config.json").exists()
        inner = model.get_base_model()
        tuned = {k.removeprefix("bert."): v for k, v in inner.state_dict().items()}
        for k, v in base.items():  # base weights untouched by an adapter
            if k in tuned:
                assert torch.equal(v, tuned[k]), k

    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["baseline"]["accuracy"] > 0 and "confusion_matrix" in ev["tuned"]


def test_full_finetune_learns_the_task(tiny_bert, sentiment_file, tmp_path):
    cfg = tiny_cfg(
        tiny_bert, sentiment_file, tmp_path, training={"max_steps": 80, "lr": 2e-3, "eval_every": 20}
    )
    run = tuneforge.train(cfg)
    ev = json.loads((run.path / "eval.json").read_text())
    assert ev["tuned"]["accuracy"] >= 0.8 > ev["baseline"]["accuracy"]
    assert set(
        run.path.joinpath(p).exists() for p in ("config.yaml", "metrics.jsonl", "run.json", "data.json")
    ) == {True}


def test_early_stopping_keeps_the_best(tiny_bert, sentiment_file, tmp_path):
    cfg = tiny_cfg(
        tiny_bert,
        sentiment_file,
        tmp_path,
        training={
            "max_steps": 200,
            "lr": 5e-3,
            "eval_every": 2,
            "early_stopping_patience": 2,
            "metric": "loss",
        },
    )
    run = tuneforge.train(cfg)
    s = run.summary()
    assert s["status"] == "stopped early" and s["steps"] < 200
    vals = [m for m in run.metrics() if m["split"] == "validation"]
    best = min(vals, key=lambda m: m["loss"])
    assert s["best_step"] == best["step"]


def test_unknown_label_in_test_file_is_reported(tiny_bert, sentiment_file, tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text(
        json.dumps({"text": "fine", "label": "pos"})
        + "\n"
        + json.dumps({"text": "meh", "label": "neutral"})
        + "\n"
    )
    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, data={"test": str(bad)})
    with pytest.raises(
        tuneforge.TuneforgeError, match=r"test.jsonl:2: label 'neutral' is not one of the labels"
    ):
        tuneforge.train(cfg)
