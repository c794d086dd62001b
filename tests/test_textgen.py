"""Generation metrics (tuneforge.eval.textgen) against the reference libraries on fixed strings, the label
detection, and SFT's eval.json gaining them (base beside tuned, with intervals)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneforge.eval import textgen

REFS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "profits rose sharply in the third quarter",
    "the committee approved the new budget",
]
TUNED = [
    "the cat is on the mat",
    "a brown fox jumped over a lazy dog",
    "third quarter profits rose",
    "committee approves budget",
]
BASE = ["hello", "the dog sleeps", "profits", "a budget was discussed"]


def test_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    mine = textgen.rouge_per_example(TUNED, REFS)
    for i, (p, r) in enumerate(zip(TUNED, REFS)):
        s = scorer.score(r, p)
        for k in ("rouge1", "rouge2", "rougeL"):
            assert mine[k][i] == pytest.approx(s[k].fmeasure)
    # a hand check: "the cat is on the mat" vs "the cat sat on the mat": 5 of 6 unigrams, 3 of 5 bigrams
    assert mine["rouge1"][0] == pytest.approx(5 / 6)
    assert mine["rouge2"][0] == pytest.approx(3 / 5)


def test_chrf_and_bleu_match_sacrebleu():
    import sacrebleu

    assert textgen.corpus_score("chrf", TUNED, REFS) == pytest.approx(
        sacrebleu.corpus_chrf(TUNED, [REFS]).score
    )
    assert textgen.corpus_score("bleu", TUNED, REFS) == pytest.approx(
        sacrebleu.corpus_bleu(TUNED, [REFS]).score
    )
    assert textgen.corpus_score("chrf", REFS, REFS) == pytest.approx(100.0)


def test_text_scores_intervals_and_paired_difference():
    import sacrebleu

    g = textgen.generation_metrics(REFS * 5, TUNED * 5, BASE * 5, samples=200)
    assert g["mode"] == "text" and g["n"] == 20
    t, b, d = g["tuned"], g["base"], g["difference"]
    assert t["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(TUNED * 5, [REFS * 5]).score)
    for k in ("rouge1", "rouge2", "rougeL", "chrf", "bleu"):
        assert t[k]["low"] <= t[k]["value"] <= t[k]["high"]
        assert d[k]["value"] == pytest.approx(t[k]["value"] - b[k]["value"])
        assert d[k]["low"] <= d[k]["value"] <= d[k]["high"]
    assert d["rouge1"]["low"] > 0  # tuned is clearly better on every example
    assert t["rouge1"]["value"] == pytest.approx(np.mean(textgen.rouge_per_example(TUNED, REFS)["rouge1"]))


def test_label_detection():
    assert textgen.is_label_like(["positive", "Negative.", "positive", "negative", "neutral", "positive"])
    assert not textgen.is_label_like(REFS)  # sentences
    assert not textgen.is_label_like(["a", "b", "c", "d"])  # every answer distinct: not a label set
    assert textgen.normalize('  "Positive!" ') == "positive"


def test_label_answers_get_exact_match_and_f1():
    refs = ["positive", "negative"] * 10
    tuned = ["Positive.", "negative"] * 9 + ["negative", "I am not sure"]  # 18 right, 1 wrong label, 1 other
    base = ["positive"] * 20
    g = textgen.generation_metrics(refs, tuned, base, samples=200)
    assert g["mode"] == "labels"
    assert g["labels"] == ["negative", "positive", textgen.OTHER]
    t = g["tuned"]
    assert t["exact_match"]["value"] == pytest.approx(18 / 20)
    assert t["other_answers"] == 1
    assert g["base"]["exact_match"]["value"] == pytest.approx(0.5)
    from sklearn.metrics import f1_score

    y = [textgen.normalize(r) for r in refs]
    p = [textgen.normalize(a) if textgen.normalize(a) in ("positive", "negative") else "other" for a in tuned]
    assert t["macro_f1"]["value"] == pytest.approx(
        f1_score(y, p, labels=["negative", "positive"], average="macro")
    )
    assert t["per_label"]["positive"]["recall"] == pytest.approx(9 / 10)
    assert g["difference"]["exact_match"]["value"] == pytest.approx(0.4)


def test_sft_eval_json_has_generation_metrics(tiny_llama, tmp_path):
    """An SFT run answers the test prompts with the base and the tuned model and scores them; the report shows it."""
    import tuneforge

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Is review {i} good: {'great fun' if i % 2 else 'dull mess'}?"},
                {"role": "assistant", "content": "positive" if i % 2 else "negative"},
            ]
        }
        for i in range(60)
    ]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tuneforge.train(
        {
            "task": "sft",
            "model": {"name": tiny_llama, "dropout": 0.0},
            "data": {"train": str(data), "max_length": 64, "audit": False},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "precision": "fp32"},
            "sft": {"samples": 2, "max_new_tokens": 3},
            "eval": {"max_generate": 6, "bootstrap_samples": 100, "forgetting": False, "bias": False},
            "output": {"dir": str(tmp_path / "runs"), "name": "run"},
        }
    )
    ev = json.loads((run.path / "eval.json").read_text())
    g = ev["generation"]
    assert g["n"] == 6 and len(ev["samples"]) == 2
    assert g["mode"] == "labels"
    for who in ("tuned", "base"):
        m = g[who]["exact_match"]
        assert 0 <= m["low"] <= m["value"] <= m["high"] <= 1
    assert "exact_match" in g["difference"]
    report = (run.path / "report.md").read_text()
    assert "Generated answers, scored" in report and "exact match" in report
