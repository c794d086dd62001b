"""Bias probe: counterfactual pairs made by swapping demographic terms in held-out inputs.

The term lists (``resources/bias_terms.json``, extended by ``eval.bias_terms``) hold categories (gender,
names, nationality) of aligned groups: the i-th term of one group is swapped for the i-th term of another,
whole words only, keeping the case of the original. A text is swapped between the group it mentions most
and each other group of the category (in both directions at once, so "he told her" becomes "she told him").

For a classifier the probe measures how often the prediction flips and how far the predicted class's
probability moves; for a language model, the change in log-likelihood of the text, for the base and the
tuned model, so the report can show what tuning changed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# the term lists and the swap are shared with counterfactual augmentation (the data layer)
from tuneforge.data.counterfactual import TERMS_FILE, Swapper, load_terms, match_case  # noqa: F401
from tuneforge.eval.bootstrap import mean_ci

MIN_N = 5  # swaps with fewer counterfactuals are listed, but ranked last and not called real or not


@dataclass
class Counterfactual:
    index: int  # which original text
    category: str
    source: str  # the group the text mentions most
    target: str  # the group swapped in
    text: str  # the counterfactual text


def make_counterfactuals(
    texts: Sequence[str], terms: dict[str, dict], max_examples: int = 200, seed: int = 0, max_targets: int = 4
) -> tuple[list[Counterfactual], dict[str, int]]:
    """Counterfactuals of up to ``max_examples`` texts per category; also how many texts mention each category.

    Each text is swapped into at most ``max_targets`` other groups, taken in turn from text to text so every
    group is covered evenly (a 12-nationality list costs 4 counterfactuals per text, not 11).
    """
    out: list[Counterfactual] = []
    mentions: dict[str, int] = {}
    for cat, spec in terms.items():
        sw = Swapper(spec["groups"])
        order = list(sw.groups)
        found = [(i, sw.groups_in(t)) for i, t in enumerate(texts)]
        found = [(i, c) for i, c in found if c]
        mentions[cat] = len(found)
        random.Random(seed).shuffle(found)
        for k, (i, counts) in enumerate(sorted(found[:max_examples])):
            source = max(counts, key=lambda g: (counts[g], -order.index(g)))
            others = [g for g in order if g != source]
            start = (k * max_targets) % len(others)
            for target in (others + others)[start : start + min(max_targets, len(others))]:
                swapped = sw.swap(texts[i], source, target)
                if swapped != texts[i]:
                    out.append(Counterfactual(i, cat, source, target, swapped))
    return out, mentions


def _snippet(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def classifier_probe(
    texts: Sequence[str],
    predict_proba: Callable[[list[str]], np.ndarray],
    terms: dict[str, dict],
    labels: Sequence[str] | None = None,
    max_examples: int = 200,
    seed: int = 0,
    samples: int = 1000,
) -> dict:
    """Flip rate and probability shift of a classifier under counterfactual swaps.

    ``predict_proba(texts) -> (N, C)`` class probabilities. Returns a JSON-ready dict: per category, per swap
    (sorted with the most moving first), the examples that moved most, and a plain-language summary.
    """
    cfs, base = _probe_start("classifier", texts, terms, max_examples, seed)
    if not cfs:
        return base
    originals = sorted({c.index for c in cfs})
    p_orig = dict(zip(originals, np.asarray(predict_proba([texts[i] for i in originals]))))  # index -> (C,)
    p_cf = np.asarray(predict_proba([c.text for c in cfs]))  # (K, C)
    name = (lambda k: labels[k]) if labels else str
    rows = []
    for c, pc in zip(cfs, p_cf):
        po = p_orig[c.index]
        k = int(po.argmax())
        rows.append(
            {
                "cf": c,
                "flip": int(pc.argmax() != k),
                "shift": float(pc[k] - po[k]),
                "before": name(k),
                "after": name(int(pc.argmax())),
                "p_before": float(po[k]),
                "p_after": float(pc[k]),
            }
        )
    swaps = []
    for key in dict.fromkeys((r["cf"].category, r["cf"].source, r["cf"].target) for r in rows):
        sel = [r for r in rows if (r["cf"].category, r["cf"].source, r["cf"].target) == key]
        ci = mean_ci([r["flip"] for r in sel], samples, seed)
        swaps.append(
            {
                "category": key[0],
                "from": key[1],
                "to": key[2],
                "n": len(sel),
                "flips": sum(r["flip"] for r in sel),
                "flip_rate": ci.value,
                "low": ci.low,
                "high": ci.high,
                "mean_abs_shift": float(np.mean([abs(r["shift"]) for r in sel])),
            }
        )
    swaps.sort(key=lambda s: (s["n"] < MIN_N, -s["flip_rate"], -s["mean_abs_shift"]))
    categories = {}
    for cat in dict.fromkeys(r["cf"].category for r in rows):
        sel = [r for r in rows if r["cf"].category == cat]
        ci = mean_ci([r["flip"] for r in sel], samples, seed)
        categories[cat] = {
            "examples": len({r["cf"].index for r in sel}),
            "counterfactuals": len(sel),
            "flips": sum(r["flip"] for r in sel),
            "flip_rate": ci.value,
            "low": ci.low,
            "high": ci.high,
            "mean_abs_shift": float(np.mean([abs(r["shift"]) for r in sel])),
        }
    top = sorted(rows, key=lambda r: (-r["flip"], -abs(r["shift"])))[:8]
    examples = [
        {
            "category": r["cf"].category,
            "swap": f"{r['cf'].source} → {r['cf'].target}",
            "original": _snippet(texts[r["cf"].index]),
            "counterfactual": _snippet(r["cf"].text),
            "before": r["before"],
            "after": r["after"],
            "p_before": r["p_before"],
            "p_after": r["p_after"],
        }
        for r in top
        if r["flip"] or abs(r["shift"]) >= 0.01
    ]
    out = {**base, "categories": categories, "swaps": swaps, "examples": examples}
    out["summary"] = _classifier_summary(out, terms)
    return out


def _probe_start(kind: str, texts: Sequence[str], terms: dict, max_examples: int, seed: int):
    """The counterfactuals of a probe and the head of its result; with no counterfactuals, the whole
    (empty) result."""
    cfs, mentions = make_counterfactuals(texts, terms, max_examples, seed)
    head = {"kind": kind, "texts": len(texts), "mentions": mentions, "max_examples": max_examples}
    if not cfs:
        head.update(categories={}, swaps=[], examples=[], summary=_no_mentions(terms, len(texts)))
    return cfs, head


def _no_mentions(terms: dict, n: int) -> str:
    return (
        f"None of the {n} held-out inputs mentions a term from the lists ({', '.join(terms)}), so there was "
        f"nothing to swap. Extend the lists with eval.bias_terms, or probe data that mentions people."
    )


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _classifier_summary(out: dict, terms: dict) -> str:
    parts = []
    moved = [s for s in out["swaps"] if s["flips"] > 0]
    if moved:
        s = moved[0]
        few = f" (only {s['n']} counterfactuals: too few to be sure)" if s["n"] < MIN_N else ""
        parts.append(
            f"Swapping {s['category']} terms {s['from']} → {s['to']} moved the model most: it flipped "
            f"{s['flips']} of {s['n']} predictions ({_pct(s['flip_rate'])}, 95% CI {_pct(s['low'])}–{_pct(s['high'])}){few}."
        )
        others = [f"{x['category']} {x['from']} → {x['to']} ({_pct(x['flip_rate'])})" for x in moved[1:4]]
        if others:
            parts.append("Next: " + "; ".join(others) + ".")
    else:
        parts.append("No swap changed any prediction.")
    for cat, c in out["categories"].items():
        parts.append(
            f"{cat}: {c['flips']} flips in {c['counterfactuals']} counterfactuals of {c['examples']} inputs "
            f"({_pct(c['flip_rate'])})."
        )
    silent = [cat for cat in terms if not out["mentions"].get(cat)]
    if silent:
        parts.append(f"No held-out input mentions {', '.join(silent)} terms, so those were not probed.")
    return " ".join(parts)


def lm_probe(
    texts: Sequence[str],
    loglik_tuned: Callable[[list[str]], np.ndarray],
    loglik_base: Callable[[list[str]], np.ndarray] | None,
    terms: dict[str, dict],
    max_examples: int = 200,
    seed: int = 0,
    samples: int = 1000,
) -> dict:
    """Change in log-likelihood (nats, summed over the text) when terms are swapped, base and tuned.

    ``loglik_*(texts) -> (N,)`` summed log-likelihoods. The tuned-minus-base change shows what tuning did
    to the model's preference between the original and the swapped text.
    """
    cfs, base = _probe_start("language model", texts, terms, max_examples, seed)
    if not cfs:
        return base
    originals = sorted({c.index for c in cfs})
    orig_texts = [texts[i] for i in originals]
    cf_texts = [c.text for c in cfs]
    pos = {i: k for k, i in enumerate(originals)}

    def deltas(fn) -> np.ndarray:
        ll_o, ll_c = np.asarray(fn(orig_texts), dtype=float), np.asarray(fn(cf_texts), dtype=float)
        return ll_c - ll_o[[pos[c.index] for c in cfs]]  # (K,)

    d_tuned = deltas(loglik_tuned)
    d_base = deltas(loglik_base) if loglik_base is not None else None
    keys = [(c.category, c.source, c.target) for c in cfs]

    def stats(mask: np.ndarray) -> dict:
        s = {
            "n": int(mask.sum()),
            "tuned_delta": float(d_tuned[mask].mean()),
            "tuned_abs_delta": float(np.abs(d_tuned[mask]).mean()),
        }
        if d_base is not None:
            ci = mean_ci(d_tuned[mask] - d_base[mask], samples, seed)
            s.update(
                base_delta=float(d_base[mask].mean()),
                base_abs_delta=float(np.abs(d_base[mask]).mean()),
                change=ci.value,
                low=ci.low,
                high=ci.high,
            )
        return s

    swaps = []
    for key in dict.fromkeys(keys):
        mask = np.array([k == key for k in keys])
        swaps.append({"category": key[0], "from": key[1], "to": key[2], **stats(mask)})
    swaps.sort(
        key=lambda s: (s["n"] < MIN_N, -abs(s["change"]) if d_base is not None else -s["tuned_abs_delta"])
    )
    categories = {}
    for cat in dict.fromkeys(k[0] for k in keys):
        mask = np.array([k[0] == cat for k in keys])
        categories[cat] = {
            "examples": len({c.index for c, m in zip(cfs, mask) if m}),
            "counterfactuals": int(mask.sum()),
            **{k: v for k, v in stats(mask).items() if k != "n"},
        }
    moved = d_tuned - d_base if d_base is not None else d_tuned
    top = np.argsort(-np.abs(moved))[:6]
    examples = [
        {
            "category": cfs[k].category,
            "swap": f"{cfs[k].source} → {cfs[k].target}",
            "original": _snippet(texts[cfs[k].index]),
            "counterfactual": _snippet(cfs[k].text),
            "tuned_delta": float(d_tuned[k]),
            "base_delta": float(d_base[k]) if d_base is not None else None,
        }
        for k in top
    ]
    out = {**base, "categories": categories, "swaps": swaps, "examples": examples}
    out["summary"] = _lm_summary(out, terms, d_base is not None)
    return out


def _lm_summary(out: dict, terms: dict, has_base: bool) -> str:
    s = out["swaps"][0]
    if s["n"] < MIN_N:
        parts = [
            f"Every swap has fewer than {MIN_N} counterfactuals, too few to say which one moved the model."
        ]
        if has_base:
            parts += [
                f"{cat}: tuned − base Δ log-likelihood {c['change']:+.2f} nats (95% CI {c['low']:+.2f} to "
                f"{c['high']:+.2f}, {c['counterfactuals']} counterfactuals)."
                for cat, c in out["categories"].items()
            ]
    elif has_base:
        real = not s["low"] <= 0 <= s["high"]
        direction = "more" if s["change"] > 0 else "less"
        parts = [
            f"Tuning changed the model's preference most for {s['category']} {s['from']} → {s['to']}: relative to the "
            f"base model, the tuned model finds the swapped text {abs(s['change']):.2f} nats {direction} likely "
            f"(95% CI {s['low']:.2f} to {s['high']:.2f}; {'a real shift' if real else 'not distinguishable from no change'})."
        ]
    else:
        parts = [
            f"The swap that moved the log-likelihood most: {s['category']} {s['from']} → {s['to']} "
            f"(mean |Δ| {s['tuned_abs_delta']:.2f} nats)."
        ]
    silent = [cat for cat in terms if not out["mentions"].get(cat)]
    if silent:
        parts.append(f"No held-out input mentions {', '.join(silent)} terms, so those were not probed.")
    return " ".join(parts)
