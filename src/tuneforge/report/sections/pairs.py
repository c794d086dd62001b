"""Base versus tuned for the pairwise results: ``preference`` (DPO, IPO, ORPO, KTO...: does the policy's
implicit reward rank the chosen answer first?) and ``reward_model`` (does the reward model score the chosen
answer higher?).

Intervals need per-example scores in eval.json's ``per_example`` (written from schema_version 1 on)::

    paired:   {"tuned": {"chosen": [...], "rejected": [...]}, "baseline": {"chosen": [...], "rejected": [...]}}
    unpaired: {"desirable": [true, ...], "tuned": {"reward": [...]}, "baseline": {"reward": [...]}}

(preference: the implicit rewards of each answer; reward_model: the reward of each answer, and for the
"longer answer wins" baseline the answers' lengths.) Without them the point values are shown as they are.
"""

from __future__ import annotations

import numpy as np

from tuneforge.eval import bootstrap as bs
from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, num, samples_table, verdict
from tuneforge.report.render import Doc


def wins(scores: dict, desirable: list[bool] | None = None) -> np.ndarray:
    """(N,) correctness of one model on N examples: 1 right, 0 wrong, 0.5 a tie (chance).

    Paired: the chosen answer scores above the rejected one. Unpaired: the reward's sign matches the label."""
    if desirable is not None:
        r, good = np.asarray(scores["reward"], dtype=float), np.asarray(desirable, dtype=bool)
        return np.where(good, r > 0, r < 0) + 0.5 * (r == 0)
    c, r = np.asarray(scores["chosen"], dtype=float), np.asarray(scores["rejected"], dtype=float)
    return (c > r) + 0.5 * (c == r)


def intervals(per_example: dict | None, samples: int) -> dict[str, bs.Interval] | None:
    """Accuracy intervals of tuned and baseline, the paired difference, and the tuned margin (paired data)."""
    if not isinstance(per_example, dict) or not isinstance(per_example.get("tuned"), dict):
        return None
    desirable = per_example.get("desirable")
    tuned = wins(per_example["tuned"], desirable)
    out = {"tuned": bs.mean_ci(tuned, samples)}
    if "chosen" in per_example["tuned"]:
        t = per_example["tuned"]
        out["margin"] = bs.mean_ci(np.subtract(t["chosen"], t["rejected"], dtype=float), samples)
    if isinstance(per_example.get("baseline"), dict):
        base = wins(per_example["baseline"], desirable)
        out["baseline"] = bs.mean_ci(base, samples)
        out["difference"] = bs.paired_difference_ci(lambda w: w.mean(-1), tuned, base, samples)
    return out


def _cell(point: float | None, iv: bs.Interval | None) -> str:
    if point is None:
        return "-"
    return ci(iv, value=point) if iv is not None else f"{point:.4f}"


def _headline(what: str, tuned: float, base: float | None, base_name: str, diff: bs.Interval | None) -> tuple:
    """(sentence, level) for the summary: the paired difference when known, else the point values."""
    if diff is None:
        before = f"{base_name} {base:.4f} -> " if base is not None else ""
        return (
            f"{what}: {before}tuned {tuned:.4f} (no interval: eval.json has no per-example scores).",
            "info",
        )
    points = {k: 100 * getattr(diff, k) for k in ("value", "low", "high")}
    return verdict(
        points,
        f"{what} {tuned:.4f}, {{value:.1f}} points above {base_name} (95% CI {{low:.1f}} to {{high:.1f}}): "
        "a real improvement.",
        f"{what} {tuned:.4f}, {{value:+.1f}} points below {base_name} (95% CI {{low:+.1f}} to {{high:+.1f}}).",
        f"{what} {tuned:.4f}, not distinguishable from {base_name} ({{value:+.1f}} points, 95% CI {{low:+.1f}} "
        "to {high:+.1f} includes zero).",
    )


def _explain_intervals(doc: Doc, iv: dict | None, f: RunFiles, unit: str) -> None:
    if iv is None:
        doc.p(
            f"No intervals: this eval.json has no per-example scores ('per_example'), so only the point values "
            f"are shown. `tuneforge eval {f.path}` rewrites eval.json with them."
        )
    else:
        doc.p(
            f"Intervals: {f.samples} bootstrap resamples of the test {unit}; the difference row resamples both "
            f"models on the same {unit}."
        )


def _to_dict(iv: dict | None) -> dict:
    return {k: v.to_dict() for k, v in (iv or {}).items()}


def preference(doc: Doc, f: RunFiles) -> dict:
    ev = f.eval
    tuned, base = ev.get("tuned") or {}, ev.get("baseline") or {}
    key = "preference_accuracy" if "preference_accuracy" in tuned else "label_accuracy"
    if key not in tuned:
        doc.p("No held-out preference examples were evaluated (eval.json has no accuracy).")
        return {}
    iv = intervals(ev.get("per_example"), f.samples) or None
    get = (iv or {}).get
    label = "preference accuracy" if key == "preference_accuracy" else "label accuracy"
    columns = [
        "model",
        f"{label} [95% CI]",
        "mean margin [95% CI]" if key == "preference_accuracy" else "reward desirable",
        "likelihood accuracy" if key == "preference_accuracy" else "reward undesirable",
    ]

    def row(name: str, m: dict, acc_iv, margin_iv) -> list:
        if key == "preference_accuracy":
            return [
                name,
                _cell(m.get(key), acc_iv),
                _cell(m.get("margin"), margin_iv),
                num(m.get("likelihood_accuracy"), 4),
            ]
        return [
            name,
            _cell(m.get(key), acc_iv),
            num(m.get("reward_desirable"), 4),
            num(m.get("reward_undesirable"), 4),
        ]

    rows = []
    if base:
        rows.append(row("base model (the reference)", base, get("baseline"), None))
    rows.append(row("tuned model", tuned, get("tuned"), get("margin")))
    if get("difference"):
        rows.append(["tuned − base (paired)", ci(get("difference")), "", ""])
    doc.table(columns, rows)
    headline, level = _headline(
        f"Held-out {label} (the implicit reward ranks the chosen answer first)",
        tuned[key],
        base.get(key),
        "the base model",
        get("difference"),
    )
    doc.note(headline, level)
    n = tuned.get("n")
    doc.p(
        f"Test split: {ev.get('data', ev.get('split', 'test'))}, {num(n)} held-out examples, loss "
        f"{ev.get('loss_type', '?')} (beta {ev.get('beta', '?')}). The implicit reward of an answer is beta times "
        "the tuned model's log-probability minus the base model's; the base model is the reference, so its "
        "implicit reward is 0 for every answer and its accuracy is 0.5 (chance), except for ORPO, whose reward "
        "is the model's own mean log-probability."
    )
    _explain_intervals(doc, iv, f, "examples")
    out = {
        "result": "preference",
        "metric": key,
        "tuned": tuned,
        "baseline": base or None,
        "headline": headline,
    }
    out["intervals"] = _to_dict(iv)
    shown = samples_table(doc, ev, reference="reference")
    if shown:
        out["samples"] = shown
    return out


def reward_model(doc: Doc, f: RunFiles) -> dict:
    ev = f.eval
    tuned, base = ev.get("tuned") or {}, ev.get("baseline") or {}
    iv = intervals(ev.get("per_example"), f.samples)
    get = (iv or {}).get
    base_name = f"'{base.get('predicts', 'baseline')}' wins"
    rows = [
        [
            "tuned reward model",
            _cell(tuned.get("accuracy"), get("tuned")),
            _cell(tuned.get("margin"), get("margin")),
            num(tuned.get("n")),
        ]
    ]
    if base:
        rows.append(
            [f"baseline: {base_name}", _cell(base.get("accuracy"), get("baseline")), "-", num(base.get("n"))]
        )
        rows.append(["chance", f"{base.get('chance', 0.5):.4f}", "-", "-"])
    if get("difference"):
        rows.append(["tuned − baseline (paired)", ci(get("difference")), "", num(tuned.get("n"))])
    doc.table(["model", "pairwise accuracy [95% CI]", "mean margin [95% CI]", "test pairs"], rows)
    headline, level = _headline(
        "Held-out pairwise accuracy of the reward model",
        tuned["accuracy"],
        base.get("accuracy"),
        f"the {base_name} baseline" if base else "the baseline",
        get("difference"),
    )
    doc.note(headline, level)
    doc.p(
        "Pairwise accuracy: the share of held-out pairs where the chosen answer gets the higher reward (a tie "
        "counts one half). The baseline is a rule that needs no model, the longer answer wins; a reward model "
        "that does not beat it has mostly learnt answer length."
    )
    _explain_intervals(doc, iv, f, "pairs")
    examples = (ev.get("examples") or [])[:5]
    if examples:
        doc.h3("Held-out pairs and their rewards")
        doc.table(
            ["prompt", "chosen", "rejected", "reward chosen", "reward rejected"],
            [
                [
                    e["prompt"],
                    e["chosen"],
                    e["rejected"],
                    num(e["reward_chosen"], 3),
                    num(e["reward_rejected"], 3),
                ]
                for e in examples
            ],
        )
    return {
        "result": "reward_model",
        "tuned": tuned,
        "baseline": base or None,
        "intervals": _to_dict(iv),
        "headline": headline,
    }
