"""Explanations (integrated gradients, Captum): completeness, a planted word found, the CLI, the report section."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import tiny_cfg
from test_bias import gender_rows

import tuneforge
from tuneforge.errors import TuneforgeError
from tuneforge.eval.explain import explain_classifier, explain_lm, format_explanation, require_captum

PRONOUNS = {"he", "his", "she", "her"}


@pytest.fixture(scope="module")
def planted_run(tiny_bert, tmp_path_factory):
    """The bias test's fixture: a classifier whose label follows the gendered pronoun (and nothing else)."""
    root = tmp_path_factory.mktemp("explain")
    data = root / "gender.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in gender_rows(240, 0, dependent=True)))
    cfg = tiny_cfg(
        tiny_bert,
        str(data),
        root,
        output={"name": "planted"},
        training={"max_steps": 60, "eval_every": 60, "save_every": 1000, "lr": 2e-3},
        eval={"forgetting": False, "explain": 3},
    )
    return tuneforge.train(cfg)


def _by_hand(model, tok, text: str, label: int) -> tuple[float, float]:
    """p(label) of the text and of its baseline (every non-special token -> padding), computed independently."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    special = torch.tensor([t in tok.all_special_ids for t in ids[0].tolist()])
    base = torch.where(special, ids, tok.pad_token_id)
    with torch.no_grad():
        p = model(input_ids=ids).logits.softmax(-1)[0, label]
        pb = model(input_ids=base).logits.softmax(-1)[0, label]
    return float(p), float(pb)


def test_completeness_classifier(planted_run):
    """The token attributions sum to p(text) - p(baseline) (each computed here independently), and the reported
    convergence delta is that sum's error, small beside the difference it explains."""
    model, tok = planted_run.load_model(), planted_run.load_tokenizer()
    label2id = {v: int(k) for k, v in model.config.id2label.items()}
    for text in ["she said the plot acting", "his said the music ending cast"]:
        [e] = explain_classifier(model, tok, [text], n_steps=64)
        p, pb = _by_hand(model, tok, text, label2id[e["label"]])
        assert e["probability"] == pytest.approx(p, abs=1e-5)
        assert e["baseline_probability"] == pytest.approx(pb, abs=1e-5)
        total = sum(t["attribution"] for t in e["tokens"])
        assert total == pytest.approx(p - pb + e["delta"], abs=1e-4)
        assert abs(e["delta"]) < 0.05 * abs(p - pb) + 1e-4
        assert sum(w["attribution"] for w in e["words"]) == pytest.approx(
            total, abs=1e-4
        )  # words keep the sum


def test_completeness_language_model(tiny_llama):
    """Each prompt word's contribution to log p(response) sums to the log-probability change from the baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    [e] = explain_lm(model, tok, ["Name a colourful fruit, please."], ["An orange."], n_steps=64)
    assert [w["word"] for w in e["words"]] == ["Name", "a", "colourful", "fruit", ",", "please", "."]
    from tuneforge.data.chat import render_prompt

    rendered = render_prompt(tok, [{"role": "user", "content": "Name a colourful fruit, please."}])
    ids = tok(rendered + "An orange.", add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = len(tok(rendered, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    by_hand = float(logp[n - 1 :].gather(-1, ids[0, n:].unsqueeze(-1)).sum())
    assert e["log_prob"] == pytest.approx(by_hand, abs=1e-4)
    total = sum(t["attribution"] for t in e["tokens"])
    assert total == pytest.approx(e["log_prob"] - e["baseline_log_prob"] + e["delta"], abs=1e-4)
    assert abs(e["delta"]) < 0.05 * abs(e["log_prob"] - e["baseline_log_prob"]) + 1e-4


def test_the_planted_word_has_the_largest_attribution(planted_run):
    texts = [
        "he said the plot script music",
        "she said the cast acting ending",
        "his said the film pacing",
        "her said the story direction script plot",
    ]
    for e in planted_run.explain(texts, n_steps=32):
        top = max(e["words"], key=lambda w: abs(w["attribution"]))
        assert top["word"] in PRONOUNS, (e["text"], e["words"])
        assert top["attribution"] > 0  # it pushes towards the label it decided


def test_report_explains_errors_and_bias_flips(planted_run):
    x = json.loads((planted_run.path / "explanations.json").read_text())
    assert x["flips_total"] > 0 and len(x["flips"]) == min(x["flips_total"], 50)
    for f in x["flips"][:5]:
        assert f["before"] != f["after"]
        swapped = {c["from"].lower() for c in f["changed"]} | {c["to"].lower() for c in f["changed"]}
        assert swapped & PRONOUNS
        before = max(f["original"]["words"], key=lambda w: abs(w["attribution"]))
        assert before["word"].lower() in PRONOUNS
    assert len(x["errors"]) == min(3, x["test_errors"])
    report = (planted_run.path / "report.md").read_text()
    assert "## Explanations" in report and "Bias-probe flips" in report


def test_cli_prints_the_table_and_writes_jsonl(planted_run, tmp_path, capsys):
    from tuneforge.cli import main

    main(["predict", str(planted_run.path), "she said the music plot", "--explain"])
    out = capsys.readouterr().out
    assert "she said the music plot" in out and "contribution" in out and "convergence delta" in out
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"text": "he said the cast", "label": "neg"}) + "\n" + json.dumps({"text": "her film"})
    )
    main(
        [
            "explain",
            str(planted_run.path),
            "--data",
            str(rows),
            "--out",
            str(tmp_path / "x.jsonl"),
            "--steps",
            "16",
        ]
    )
    written = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert [w["label"] for w in written][0] == "neg" and len(written) == 2
    assert all(w["words"] and "delta" in w for w in written)


def test_language_model_run_explains_prompt_words(tiny_llama, tmp_path, capsys):
    from tuneforge.cli import main

    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
        for w in ["apple", "river", "cloud", "stone"] * 4
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tuneforge.train(
        {
            "task": "sft",
            "model": {"name": tiny_llama},
            "data": {"train": str(data), "max_length": 64, "audit": False},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": 2, "batch_size": 8, "warmup_steps": 0},
            "eval": {"baseline": False, "report": False, "forgetting": False, "bias": False},
            "sft": {"samples": 0},
            "output": {"dir": str(tmp_path), "name": "sft"},
        }
    )
    main(["explain", str(run.path), "--prompt", "Say apple.", "--response", "apple!", "--steps", "16"])
    out = capsys.readouterr().out
    assert "log p(response)" in out and "apple" in out
    with pytest.raises(SystemExit):  # a user's mistake: one line that says what to give
        main(["explain", str(run.path), "--prompt", "Say apple."])
    assert '--response "..."' in capsys.readouterr().err


def test_missing_captum_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(TuneforgeError, match=r"pip install 'tuneforge\[explain\]'"):
        require_captum()


def test_format_marks_direction():
    e = {
        "label": "pos",
        "probability": 0.9,
        "baseline_probability": 0.5,
        "delta": 0.001,
        "n_steps": 8,
        "words": [{"word": "great", "attribution": 0.5}, {"word": "dull", "attribution": -0.1}],
    }
    text = format_explanation(e)
    assert "great" in text and "+0.5000" in text and "-0.1000" in text and "+++" in text
