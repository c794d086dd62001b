"""Was fine-tuning needed? The base model's scores without training (baselines.json, ``eval.baselines``) beside the
tuned model's on the same test examples (eval.json), with 95% intervals and, where both predicted every example,
the paired difference."""

from __future__ import annotations

from tuneforge.eval.bootstrap import accuracy_ci, accuracy_difference_ci
from tuneforge.report.files import RunFiles, read_json
from tuneforge.report.render import Doc

TITLES = {
    "zero_shot": "zero-shot prompt",
    "knn": "k-NN on frozen embeddings",
    "logreg": "logistic-regression probe on frozen embeddings",
    "logprob_margin": "base model's log-probability margin",
    "length": "longer answer wins",
    "bt_probe": "Bradley-Terry probe on frozen embeddings",
}
LOWER_IS_BETTER = {"perplexity"}


def title(b: dict) -> str:
    """How a baseline is called in tables: "zero-shot prompt", "5-shot prompt", "k-NN on frozen embeddings", ..."""
    return f"{b.get('k')}-shot prompt" if b["name"] == "k_shot" else TITLES.get(b["name"], b["name"])


def _ci(iv: dict) -> str:
    return f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def _tuned(f: RunFiles, metric: str, samples: int) -> tuple[dict | None, list | None]:
    """The tuned model's score on the test split as an interval (and its predictions when it has them)."""
    ev = f.eval or {}
    tuned = ev.get("tuned") or {}
    pred = ev.get("predictions")
    if metric == "accuracy" and pred:
        return accuracy_ci(pred["y_true"], pred["y_pred"], samples).to_dict(), pred
    if metric == "perplexity":
        test = tuned.get("test") or {}
        value = test.get("perplexity")
        return ({"value": value, "low": value, "high": value} if value is not None else None), None
    value = tuned.get(metric)
    if value is None and metric == "preference_accuracy":
        value = tuned.get("accuracy")
    return ({"value": value, "low": value, "high": value} if value is not None else None), None


def build(doc: Doc, f: RunFiles) -> dict | None:
    doc.h2("Was fine-tuning needed?")
    data = read_json(f.path / "baselines.json")
    if not data or not data.get("baselines"):
        why = "eval.baselines is none" if data is None else "no baseline applies to this task and model"
        doc.p(
            f"No baselines ({why}; `tuneforge report {f.path} --recompute` computes them when eval.baselines is "
            f"auto). `tuneforge assess CONFIG` scores them on the validation split."
        )
        return None
    samples = f.config.eval.bootstrap_samples if f.config else 1000
    metric = data["baselines"][0]["metric"]
    tuned, pred = _tuned(f, metric, samples)
    rows, out = [], {"metric": metric, "baselines": []}
    if tuned:
        rows.append(
            ["tuned model", _ci(tuned) if tuned["low"] != tuned["high"] else f"{tuned['value']:.3f}", ""]
        )
    lower = metric in LOWER_IS_BETTER
    for b in data["baselines"]:
        iv = b[metric]
        diff = ""
        if pred and b.get("y_pred") and len(b["y_pred"]) == len(pred["y_pred"]):
            d = accuracy_difference_ci(pred["y_true"], pred["y_pred"], b["y_pred"], samples)
            diff = f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        elif tuned:
            diff = f"{tuned['value'] - iv['value']:+.3f}"
        rows.append([title(b), _ci(iv), diff])
        out["baselines"].append({"name": b["name"], "title": title(b), **iv, "difference": diff})
    doc.table(["model", f"test {metric.replace('_', ' ')} [95% CI]", "tuned minus baseline"], rows)
    if data.get("n") and pred and data["n"] != len(pred["y_pred"]):
        doc.p(
            f"The baselines were scored on {data['n']} of the {len(pred['y_pred'])} test examples "
            f"(eval.baseline_examples); the difference is then unpaired."
        )
    best = (min if lower else max)(data["baselines"], key=lambda b: b[metric]["value"])
    if tuned:
        biv = best[metric]
        beat = tuned["value"] < biv["low"] if lower else tuned["value"] > biv["high"]
        out["headline"] = (
            f"Fine-tuning was needed: the tuned model ({tuned['value']:.3f}) beats the best baseline without "
            f"training, {title(best)} ({_ci(biv)})."
            if beat
            else f"Fine-tuning did not clearly beat {title(best)} ({_ci(biv)}; tuned {tuned['value']:.3f}): the "
            f"base model used that way may be enough."
        )
        doc.note(out["headline"], "ok" if beat else "warn")
    prompt = next((b.get("prompt") for b in data["baselines"] if isinstance(b.get("prompt"), str)), None)
    if prompt:
        doc.details("the prompt the base model saw (first test example)", prompt)
    return out
