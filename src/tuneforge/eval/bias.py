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

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.errors import ConfigError
from tuneforge.eval.bootstrap import mean_ci

TERMS_FILE = Path(__file__).resolve().parent.parent / "resources" / "bias_terms.json"
MIN_N = 5  # swaps with fewer counterfactuals are listed, but ranked last and not called real or not


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise ConfigError(
            f"{path}: cannot read the bias term lists ({e}). Write JSON or YAML shaped like "
            f"{TERMS_FILE.name}: {{category: {{groups: {{group: [terms...]}}}}}}."
        ) from None


def load_terms(extra: str | Path | None = None) -> dict[str, dict]:
    """Categories of aligned term groups: the shipped lists, extended (or replaced) by a user's file.

    A user file has the shipped file's shape; its categories are added, or replace shipped ones of the same
    name; with ``"extend": false`` at the top level only the user's categories are used.
    """
    cats = {k: v for k, v in _read(TERMS_FILE).items() if not k.startswith("_")}
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(
                f"eval.bias_terms: {path} not found. Give a JSON or YAML file shaped like {TERMS_FILE}."
            )
        user = _read(path)
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of categories.")
        if user.get("extend", True) is False:
            cats = {}
        cats.update({k: v for k, v in user.items() if k != "extend" and not k.startswith("_")})
        source = str(path)
    else:
        source = str(TERMS_FILE)
    for name, cat in cats.items():
        groups = cat.get("groups") if isinstance(cat, dict) else None
        if not isinstance(groups, dict) or len(groups) < 2:
            raise ConfigError(
                f"{source}: category '{name}' needs 'groups' with at least two named lists of terms."
            )
        sizes = {g: len(t) for g, t in groups.items()}
        if len(set(sizes.values())) != 1:
            raise ConfigError(
                f"{source}: category '{name}': the groups must be aligned lists of the same length "
                f"(term i of one group swaps with term i of another); lengths are {sizes}."
            )
    return cats


def match_case(original: str, replacement: str) -> str:
    """``replacement`` written in the case of ``original`` (HE -> SHE, He -> She, he -> she, Emily -> Lakisha)."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    if original.islower():
        return replacement.lower()
    return replacement


class Swapper:
    """Finds the groups a text mentions and swaps two groups' terms, whole words, case kept."""

    def __init__(self, groups: dict[str, list[str]]):
        self.groups = {g: [str(t) for t in terms] for g, terms in groups.items()}
        self.lookup: dict[str, tuple[str, int]] = {}
        for g, terms in self.groups.items():
            for i, t in enumerate(terms):
                self.lookup.setdefault(t.lower(), (g, i))  # a term's first position is the one used
        words = sorted(self.lookup, key=len, reverse=True)
        self.pattern = re.compile(
            r"(?<![\w'-])(" + "|".join(map(re.escape, words)) + r")(?![\w-])", re.IGNORECASE
        )

    def groups_in(self, text: str) -> Counter:
        return Counter(self.lookup[m.group(0).lower()][0] for m in self.pattern.finditer(text))

    def swap(self, text: str, a: str, b: str) -> str:
        """Replace group ``a``'s terms with ``b``'s and ``b``'s with ``a``'s."""

        def repl(m: re.Match) -> str:
            word = m.group(0)
            g, i = self.lookup[word.lower()]
            if g == a:
                return match_case(word, self.groups[b][i])
            if g == b:
                return match_case(word, self.groups[a][i])
            return word

        return self.pattern.sub(repl, text)


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
