"""Scores of generated text against reference answers, with bootstrap intervals, base beside tuned.

Two kinds of answers, told apart from the references (``is_label_like``):

- short labels (a few distinct answers of a few words, e.g. a chat model trained to answer "positive" or
  "negative"): exact match (after lower-casing, trimming and dropping end punctuation) and per-label
  precision/recall/F1 with macro-F1, an answer outside the labels counting as wrong;
- free text: ROUGE-1/2/L F-measure per example (``rouge-score``, Porter stemming, as the
  summarisation literature reports it), averaged over examples, and corpus chrF and BLEU (``sacrebleu``,
  0-100 as sacrebleu reports them).

Every figure carries a 95% bootstrap interval (``tuneforge.eval.bootstrap``: resampled examples; corpus
chrF/BLEU are recomputed from resampled per-sentence statistics, as sacrebleu's own paired bootstrap does),
and tuned minus base is a paired interval over the same resamples. Nothing here runs a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from tuneforge.eval import bootstrap as bs
from tuneforge.eval.metrics import classification_metrics

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
OTHER = "(other answer)"  # an answer that is none of the reference labels


def normalize(text: str) -> str:
    """Lower-case, collapse spaces, drop surrounding quotes and end punctuation: "Positive." -> "positive"."""
    s = re.sub(r"\s+", " ", str(text)).strip().lower()
    return s.strip(" \"'`").rstrip(".!?;:,").strip()


def is_label_like(references: Sequence[str], max_labels: int = 20, max_words: int = 3) -> bool:
    """The references are short labels: at most ``max_labels`` distinct answers of at most ``max_words`` words,
    each distinct answer used on average at least twice (so a test set of unique short phrases is free text)."""
    refs = [normalize(r) for r in references]
    distinct = set(refs)
    if not refs or len(distinct) > max_labels or len(refs) < 2 * len(distinct):
        return False
    return all(0 < len(r.split()) <= max_words for r in distinct)


# ---------------------------------------------------------------- per-example and corpus scores
def rouge_per_example(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """{rouge1, rouge2, rougeL: (N,) F-measures} of each prediction against its reference."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]  # score(target, prediction)
    return {k: np.array([s[k].fmeasure for s in scores], dtype=float) for k in ROUGE_TYPES}


def _sacrebleu(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    return CHRF() if name == "chrf" else BLEU()


def corpus_stats(name: str, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, K) sacrebleu sufficient statistics per sentence; their column sums give the corpus score."""
    metric = _sacrebleu(name)
    return np.asarray(metric._extract_corpus_statistics(list(predictions), [list(references)]), dtype=float)


def _stats_score(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """(S, N, K) resampled statistics -> (S,) corpus scores."""
    metric = _sacrebleu(name)

    def score(stats: np.ndarray) -> np.ndarray:
        sums = stats.sum(1)  # (S, K)
        return np.array([metric._compute_score_from_stats(list(row)).score for row in sums])

    return score


def corpus_score(name: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF or BLEU (0-100), exactly as ``sacrebleu.corpus_chrf`` / ``corpus_bleu`` compute it."""
    if not predictions:
        return float("nan")
    return float(_stats_score(name)(corpus_stats(name, predictions, references)[None])[0])


def _stat_ci(stat: Callable[[np.ndarray], np.ndarray], x: np.ndarray, samples: int) -> bs.Interval:
    """Interval of ``stat`` over resampled rows of ``x`` (N, ...)."""
    idx = bs.resample_indices(len(x), samples)
    value = float(stat(x[None])[0])
    lo, hi = np.quantile(stat(x[idx]), [0.025, 0.975])
    return bs.Interval(value, float(lo), float(hi), samples, len(x))


# ---------------------------------------------------------------- the two kinds of answers
def text_scores(
    references: Sequence[str], answers: dict[str, Sequence[str]], samples: int = 1000
) -> dict[str, dict[str, dict]]:
    """{model: {metric: interval dict}} for free-text answers, plus ``difference`` (tuned - base) when both
    ``tuned`` and ``base`` are in ``answers``."""
    out: dict[str, dict[str, dict]] = {}
    per: dict[str, dict[str, np.ndarray]] = {}
    for who, preds in answers.items():
        r = rouge_per_example(preds, references)
        stats = {name: corpus_stats(name, preds, references) for name in ("chrf", "bleu")}
        per[who] = {**r, **stats}
        out[who] = {k: bs.mean_ci(v, samples).to_dict() for k, v in r.items()}
        for name, st in stats.items():
            out[who][name] = _stat_ci(_stats_score(name), st, samples).to_dict()
    if "tuned" in per and "base" in per:
        diff = {}
        for k in ROUGE_TYPES:
            diff[k] = bs.paired_difference_ci(
                lambda v: v.mean(-1), per["tuned"][k], per["base"][k], samples
            ).to_dict()
        for name in ("chrf", "bleu"):
            f = _stats_score(name)
            both = np.stack([per["tuned"][name], per["base"][name]], 1)  # (N, 2, K)
            diff[name] = _stat_ci(lambda x, f=f: f(x[..., 0, :]) - f(x[..., 1, :]), both, samples).to_dict()
        out["difference"] = diff
    return out


def label_scores(
    references: Sequence[str], answers: dict[str, Sequence[str]], samples: int = 1000
) -> tuple[dict[str, dict], list[str]]:
    """({model: {exact_match, macro_f1 (interval dicts), per_label, confusion}}, labels) for short-label answers;
    an answer that is none of the labels counts as the extra class ``OTHER``."""
    labels = sorted({normalize(r) for r in references})
    ids = {label: i for i, label in enumerate(labels)}
    names = [*labels, OTHER]
    y_true = np.array([ids[normalize(r)] for r in references])
    preds = {who: np.array([ids.get(normalize(a), len(labels)) for a in a_]) for who, a_ in answers.items()}
    out: dict[str, dict] = {}
    for who, y_pred in preds.items():
        m = classification_metrics(y_true.tolist(), y_pred.tolist(), names)
        out[who] = {
            "exact_match": bs.accuracy_ci(y_true, y_pred, samples).to_dict(),
            "macro_f1": bs.macro_f1_ci(y_true, y_pred, len(names), samples).to_dict(),
            "per_label": {k: v for k, v in m["per_class"].items() if k != OTHER},
            "other_answers": int((y_pred == len(labels)).sum()),
            "confusion": m["confusion_matrix"],
        }
    if "tuned" in preds and "base" in preds:
        out["difference"] = {
            "exact_match": bs.accuracy_difference_ci(
                y_true, preds["tuned"], preds["base"], samples
            ).to_dict(),
            "macro_f1": bs.macro_f1_difference_ci(
                y_true, preds["tuned"], preds["base"], len(names), samples
            ).to_dict(),
        }
    return out, names


def generation_metrics(
    references: Sequence[str],
    tuned: Sequence[str],
    base: Sequence[str] | None = None,
    samples: int = 1000,
    mode: str = "auto",
) -> dict:
    """The ``generation`` block of eval.json: the kind of answers (``labels`` or ``text``), ``n``, and
    ``tuned``/``base``/``difference`` with an interval for every metric.

    ``mode``: auto (``is_label_like`` decides), labels or text.
    """
    if len(tuned) != len(references) or (base is not None and len(base) != len(references)):
        raise ValueError("generation_metrics: one answer per reference is needed")
    if mode == "auto":
        mode = "labels" if is_label_like(references) else "text"
    answers = {"tuned": list(tuned), **({"base": list(base)} if base is not None else {})}
    out: dict = {"mode": mode, "n": len(references)}
    if not references:
        return out
    if mode == "labels":
        scores, names = label_scores(references, answers, samples)
        out["labels"] = names
    else:
        scores = text_scores(references, answers, samples)
    out.update(scores)
    return out


# the figures each kind of answers is summarised by, with their display names
HEADLINE = {
    "labels": (("exact_match", "exact match"), ("macro_f1", "macro-F1")),
    "text": (
        ("rouge1", "ROUGE-1"),
        ("rouge2", "ROUGE-2"),
        ("rougeL", "ROUGE-L"),
        ("chrf", "chrF"),
        ("bleu", "BLEU"),
    ),
}


def summary_lines(block: dict | None) -> list[str]:
    """Terminal lines: each metric base -> tuned with the tuned interval."""
    if not block or "tuned" not in block:
        return []
    lines = []
    for key, label in HEADLINE.get(block.get("mode", "text"), ()):
        t = block["tuned"].get(key)
        if not t:
            continue
        b = (block.get("base") or {}).get(key)
        base = f"base {b['value']:.4f} -> " if b else ""
        lines.append(
            f"{label} ({block['n']} test answers): {base}tuned {t['value']:.4f} [{t['low']:.4f}, {t['high']:.4f}]"
        )
    return lines
