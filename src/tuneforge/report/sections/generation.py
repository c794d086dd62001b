"""Generation metrics (eval.json ``generation``, written by the text-producing tasks: sft, seq2seq): the base and
the tuned model answered the same held-out prompts; their answers scored against the references, each figure
with its 95% bootstrap interval and the paired interval of the change. Short-label answers get exact match,
macro-F1 and per-label F1; free text gets ROUGE-1/2/L, chrF and BLEU."""

from __future__ import annotations

from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, num
from tuneforge.report.render import Doc

METRICS = {
    "labels": (("exact_match", "exact match"), ("macro_f1", "macro-F1")),
    "text": (
        ("rouge1", "ROUGE-1 F"),
        ("rouge2", "ROUGE-2 F"),
        ("rougeL", "ROUGE-L F"),
        ("chrf", "chrF (0-100)"),
        ("bleu", "BLEU (0-100)"),
    ),
}


def _cell(d: dict | None, key: str) -> str:
    if not isinstance(d, dict) or "value" not in d:
        return "-"
    return ci(d, digits=2 if key in ("chrf", "bleu") else 4)  # sacrebleu's 0-100 scale; the others 0-1


def build(doc: Doc, f: RunFiles) -> dict | None:
    ev = f.eval or {}
    g = ev.get("generation")
    if not isinstance(g, dict) or not isinstance(g.get("tuned"), dict):
        return None
    mode = g.get("mode", "text")
    tuned, base, diff = g["tuned"], g.get("base") or {}, g.get("difference") or {}
    doc.h2("Generated answers, scored")
    what = "short labels" if mode == "labels" else "free text"
    doc.p(
        f"The base and the tuned model answered the same {g.get('n', 0):,} held-out prompts "
        f"({ev.get('split', 'test')} split); the reference answers look like {what}. Intervals: 95% bootstrap "
        f"over the prompts; the change is paired (both models on the same resamples)."
    )
    rows, out = [], {"mode": mode, "n": g.get("n"), "metrics": {}}
    for key, label in METRICS.get(mode, ()):
        if key not in tuned:
            continue
        rows.append([label, _cell(base.get(key), key), _cell(tuned[key], key), _cell(diff.get(key), key)])
        out["metrics"][key] = {
            "base": (base.get(key) or {}).get("value"),
            "tuned": tuned[key].get("value"),
            "change": diff.get(key),
        }
    doc.table(["metric", "base [95% CI]", "tuned [95% CI]", "tuned - base [95% CI]"], rows)
    key, label = METRICS[mode][0] if mode in METRICS else (None, None)
    d = diff.get(key) if key else None
    if isinstance(d, dict):
        real = not d["low"] <= 0 <= d["high"]
        word = "higher" if d["value"] > 0 else "lower"
        out["headline"] = (
            f"{label} of the generated answers is {abs(d['value']):.4g} {word} after tuning (base "
            f"{base[key]['value']:.4g} -> tuned {tuned[key]['value']:.4g}; 95% CI of the change {d['low']:.4g} to "
            f"{d['high']:.4g}{'' if real else ', which includes zero'})."
        )
        doc.note(out["headline"], "ok" if real and d["value"] > 0 else "warn")
    if mode == "labels" and isinstance(tuned.get("per_label"), dict):
        labels = list(tuned["per_label"])
        b_per = base.get("per_label") or {}
        doc.h3("Per label (tuned, base F1)")
        doc.table(
            ["label", "support", "precision", "recall", "F1", "base F1"],
            [
                [
                    label,
                    tuned["per_label"][label]["support"],
                    num(tuned["per_label"][label]["precision"], 3),
                    num(tuned["per_label"][label]["recall"], 3),
                    num(tuned["per_label"][label]["f1"], 3),
                    num((b_per.get(label) or {}).get("f1"), 3),
                ]
                for label in labels
            ],
        )
        other = tuned.get("other_answers")
        if other:
            doc.p(f"{other} tuned answers were none of the labels (counted as wrong).")
    return out
