"""Base versus tuned for a policy trained on rewards (result type ``policy_reward``, GRPO): the mean reward of
greedy answers to held-out prompts, per reward function, with bootstrap intervals when eval.json holds the
per-prompt rewards (``per_example: {"tuned": {"reward": [...]}, "baseline": {"reward": [...]}}``)."""

from __future__ import annotations

import numpy as np

from tuneforge.eval import bootstrap as bs
from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, num, samples_table, verdict
from tuneforge.report.render import Doc


def _rewards(per_example, which: str) -> np.ndarray | None:
    scores = (per_example or {}).get(which) if isinstance(per_example, dict) else None
    return (
        np.asarray(scores["reward"], dtype=float) if isinstance(scores, dict) and "reward" in scores else None
    )


def build(doc: Doc, f: RunFiles) -> dict:
    ev = f.eval
    tuned, base = ev.get("tuned") or {}, ev.get("baseline") or {}
    if "reward" not in tuned:
        doc.p("No held-out prompts were evaluated (eval.json has no reward).")
        return {}
    t_r, b_r = _rewards(ev.get("per_example"), "tuned"), _rewards(ev.get("per_example"), "baseline")
    iv: dict[str, bs.Interval] = {}
    if t_r is not None:
        iv["tuned"] = bs.mean_ci(t_r, f.samples)
    if b_r is not None:
        iv["baseline"] = bs.mean_ci(b_r, f.samples)
        if t_r is not None and len(t_r) == len(b_r):
            iv["difference"] = bs.paired_difference_ci(lambda r: r.mean(-1), t_r, b_r, f.samples)
    parts = [k for k in tuned if k.startswith("reward/")]
    header = [
        "model",
        "mean reward [95% CI]",
        *[p.removeprefix("reward/") for p in parts],
        "words per answer",
    ]

    def row(name: str, m: dict, which: str) -> list:
        mean = ci(iv[which], value=m["reward"]) if which in iv else num(m["reward"], 4)
        return [name, mean, *[num(m.get(p), 4) for p in parts], num(m.get("words"), 1)]

    rows = ([row("base model", base, "baseline")] if base else []) + [row("tuned model", tuned, "tuned")]
    if "difference" in iv:
        rows.append(["tuned − base (paired)", ci(iv["difference"]), *[""] * len(parts), ""])
    doc.table(header, rows)
    what = f"Mean reward of greedy answers to {num(tuned.get('n'))} held-out prompts"
    if "difference" in iv:
        d = iv["difference"]
        headline, level = verdict(
            {"value": d.value, "low": d.low, "high": d.high},
            f"{what}: tuned {tuned['reward']:.4f}, {{value:+.4f}} above the base model (95% CI {{low:+.4f}} to "
            "{high:+.4f}): a real improvement.",
            f"{what}: tuned {tuned['reward']:.4f}, {{value:+.4f}} below the base model (95% CI {{low:+.4f}} to "
            "{high:+.4f}).",
            f"{what}: tuned {tuned['reward']:.4f}, not distinguishable from the base model ({{value:+.4f}}, "
            "95% CI {low:+.4f} to {high:+.4f} includes zero).",
        )
    else:
        before = f"base {base['reward']:.4f} -> " if base else ""
        headline, level = f"{what}: {before}tuned {tuned['reward']:.4f}.", "info"
    doc.note(headline, level)
    doc.p(
        f"Rewards: {' + '.join(ev.get('rewards') or ['?'])}, scored on one greedy answer per prompt. "
        + (
            f"Intervals: {f.samples} bootstrap resamples of the prompts, paired for the difference."
            if iv
            else f"No intervals: eval.json has no per-prompt rewards ('per_example'); `tuneforge eval {f.path}` "
            "rewrites eval.json with them."
        )
    )
    out = {
        "result": "policy_reward",
        "tuned": tuned,
        "baseline": base or None,
        "intervals": {k: v.to_dict() for k, v in iv.items()},
        "headline": headline,
    }
    shown = samples_table(doc, ev)
    if shown:
        out["samples"] = shown
    return out
