"""Base versus tuned for a classifier (result type ``classification``): accuracy and macro-F1 of the tuned
model and the majority-class baseline with bootstrap intervals, per-class table, confusion and calibration."""

from __future__ import annotations

import numpy as np

from tuneforge.eval import bootstrap as bs
from tuneforge.report import plots
from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, spec_table, verdict
from tuneforge.report.render import Doc


def build(doc: Doc, f: RunFiles) -> dict:
    ev, samples = f.eval, f.samples
    tuned, base = ev["tuned"], ev.get("baseline")
    labels = tuned["labels"]
    y, pred = np.asarray(ev["predictions"]["y_true"]), np.asarray(ev["predictions"]["y_pred"])
    k = len(labels)
    acc_t, f1_t = bs.accuracy_ci(y, pred, samples), bs.macro_f1_ci(y, pred, k, samples)
    out = {
        "split": ev["split"],
        "n": tuned["n"],
        "tuned": {
            "accuracy": tuned["accuracy"],
            "macro_f1": tuned["macro_f1"],
            "accuracy_ci": acc_t.to_dict(),
            "macro_f1_ci": f1_t.to_dict(),
        },
    }
    rows = [
        ["tuned model", ci(acc_t, value=tuned["accuracy"]), ci(f1_t, value=tuned["macro_f1"]), tuned["n"]]
    ]
    headline = f"Tuned accuracy {tuned['accuracy']:.4f} (95% CI {acc_t.low:.4f}–{acc_t.high:.4f})."
    if base:
        bpred = np.full_like(y, labels.index(base["predicts"]))
        acc_b, f1_b = bs.accuracy_ci(y, bpred, samples), bs.macro_f1_ci(y, bpred, k, samples)
        d_acc = bs.accuracy_difference_ci(y, pred, bpred, samples)
        d_f1 = bs.macro_f1_difference_ci(y, pred, bpred, k, samples)
        out["baseline"] = {
            "predicts": base["predicts"],
            "accuracy": base["accuracy"],
            "macro_f1": base["macro_f1"],
            "accuracy_ci": acc_b.to_dict(),
            "macro_f1_ci": f1_b.to_dict(),
        }
        out["difference"] = {"accuracy": d_acc.to_dict(), "macro_f1": d_f1.to_dict()}
        rows.append(
            [
                f"baseline: always '{base['predicts']}'",
                ci(acc_b, value=base["accuracy"]),
                ci(f1_b, value=base["macro_f1"]),
                base["n"],
            ]
        )
        rows.append(["tuned − baseline (paired)", ci(d_acc), ci(d_f1), tuned["n"]])
    doc.table(["model", "accuracy [95% CI]", "macro-F1 [95% CI]", "test examples"], rows)
    if base:
        points = {key: 100 * v for key, v in d_acc.to_dict().items() if key in ("value", "low", "high")}
        always = f"always predicting '{base['predicts']}'"
        headline, level = verdict(
            points,
            "The tuned model beats the majority-class baseline by {value:.1f} accuracy points "
            "(95% CI {low:.1f} to {high:.1f}): a real improvement.",
            f"The tuned model is worse than {always} ({{value:+.1f}} accuracy points, 95% CI {{low:+.1f}} to "
            "{high:+.1f}).",
            f"The tuned model is not distinguishable from {always} ({{value:+.1f}} accuracy points, 95% CI "
            "{low:+.1f} to {high:+.1f} includes zero).",
        )
        doc.note(headline, level)
    doc.p(
        f"Test split: {ev.get('data', ev['split'])}, {tuned['n']:,} examples. Intervals: {samples} bootstrap "
        f"resamples of the test examples; the difference row resamples both models on the same examples."
    )
    doc.p(
        "Why the baseline is the majority class: a classifier needs a new output head, and a pre-trained model "
        "with an untrained head predicts at random, so its score says nothing about the pre-trained model. The "
        "honest reference is what a trivial rule gets from the label counts alone; macro-F1 shows whether the "
        "model does better than that on every class, not only the frequent one."
    )
    if k <= 30:
        doc.h3("Per class (tuned)")
        spec_table(
            doc,
            [
                ("label", lambda r: r[0]),
                ("precision", lambda r: f"{r[1]['precision']:.3f}"),
                ("recall", lambda r: f"{r[1]['recall']:.3f}"),
                ("F1", lambda r: f"{r[1]['f1']:.3f}"),
                ("support", lambda r: r[1]["support"]),
            ],
            tuned["per_class"].items(),
        )
    figures = [
        ("confusion_matrix", plots.confusion_matrix(tuned["confusion_matrix"], labels), "confusion matrix")
    ]
    conf = ev["predictions"].get("confidence")
    if conf:
        png, ece, table = plots.calibration(conf, (y == pred).tolist())
        out["calibration"] = {"ece": ece, "bins": table}
        figures.append(("calibration", png, "calibration curve"))
    doc.images(figures)
    if conf:
        mean_conf = float(np.mean(conf))
        gap = mean_conf - tuned["accuracy"]
        tone = (
            "over-confident"
            if gap > 0.02
            else "under-confident"
            if gap < -0.02
            else "well calibrated on average"
        )
        doc.p(
            f"Calibration: mean confidence {mean_conf:.3f} against accuracy {tuned['accuracy']:.3f} — the model is "
            f"{tone}; expected calibration error {ece:.3f} (0 is perfect)."
        )
    out["headline"] = headline
    return out
