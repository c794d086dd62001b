"""Bootstrap 95% confidence intervals (percentile method, fixed seed) for the report's numbers.

Every statistic is computed for ``samples`` resamples of the examples at once (vectorised with numpy), so
1,000 resamples of a few thousand examples take milliseconds. Paired intervals resample the same
examples for both models, which is what tells whether a difference between them is real.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SEED = 1234


@dataclass
class Interval:
    value: float  # the point estimate on all examples
    low: float  # 2.5th percentile of the bootstrap distribution
    high: float  # 97.5th percentile
    samples: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def excludes(self, x: float = 0.0) -> bool:
        """True when ``x`` lies outside the interval (for a difference: the difference is real at 95%)."""
        return not self.low <= x <= self.high

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def resample_indices(n: int, samples: int = 1000, seed: int = SEED) -> np.ndarray:
    """(samples, n) indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(value: float, dist: np.ndarray, n: int, level: float = 0.95) -> Interval:
    lo, hi = np.quantile(dist, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(float(value), float(lo), float(hi), int(len(dist)), int(n))


def mean_ci(values, samples: int = 1000, seed: int = SEED) -> Interval:
    """Mean of per-example values (accuracy is the mean of 0/1 correctness)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    idx = resample_indices(len(v), samples, seed)
    return _interval(v.mean(), v[idx].mean(1), len(v))


def accuracy_ci(y_true, y_pred, samples: int = 1000, seed: int = SEED) -> Interval:
    return mean_ci(np.asarray(y_true) == np.asarray(y_pred), samples, seed)


def _macro_f1(yt: np.ndarray, yp: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (S, N) label arrays, over the classes present in that row's true labels
    (as ``tuneforge.eval.metrics.classification_metrics`` computes it). Returns (S,)."""
    f1s, present = [], []
    for c in range(n_classes):
        t, p = yt == c, yp == c  # (S, N)
        tp = (t & p).sum(1)
        fp = (~t & p).sum(1)
        fn = (t & ~p).sum(1)
        denom = 2 * tp + fp + fn
        f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        present.append(t.any(1))
    f1, pres = np.stack(f1s, 1), np.stack(present, 1)  # (S, C)
    return (f1 * pres).sum(1) / np.maximum(pres.sum(1), 1)


def macro_f1_ci(
    y_true, y_pred, n_classes: int | None = None, samples: int = 1000, seed: int = SEED
) -> Interval:
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    if len(yt) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    k = n_classes or int(max(yt.max(), yp.max()) + 1)
    idx = resample_indices(len(yt), samples, seed)
    return _interval(_macro_f1(yt[None], yp[None], k)[0], _macro_f1(yt[idx], yp[idx], k), len(yt))


def perplexity_ci(nll_sums, token_counts, samples: int = 1000, seed: int = SEED) -> Interval:
    """Perplexity exp(sum NLL / sum tokens), resampling whole examples (their summed NLL and token count)."""
    nll, tok = np.asarray(nll_sums, dtype=float), np.asarray(token_counts, dtype=float)
    if len(nll) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    idx = resample_indices(len(nll), samples, seed)
    value = np.exp(nll.sum() / tok.sum())
    return _interval(value, np.exp(nll[idx].sum(1) / np.maximum(tok[idx].sum(1), 1)), len(nll))


def paired_difference_ci(stat, a, b, samples: int = 1000, seed: int = SEED) -> Interval:
    """CI of stat(a) - stat(b) where a and b are per-example arrays over the same examples.

    ``stat`` maps an (S, N, ...) array of resampled rows to (S,) values; the same resample is used for
    both, so the interval reflects only the difference between the two models.
    """
    a, b = np.asarray(a), np.asarray(b)
    idx = resample_indices(len(a), samples, seed)
    value = float(stat(a[None])[0] - stat(b[None])[0])
    return _interval(value, stat(a[idx]) - stat(b[idx]), len(a))


def accuracy_difference_ci(y_true, pred_a, pred_b, samples: int = 1000, seed: int = SEED) -> Interval:
    """Accuracy of A minus accuracy of B on the same examples (paired)."""
    yt = np.asarray(y_true)
    return paired_difference_ci(
        lambda c: c.mean(-1), np.asarray(pred_a) == yt, np.asarray(pred_b) == yt, samples, seed
    )


def macro_f1_difference_ci(
    y_true, pred_a, pred_b, n_classes: int, samples: int = 1000, seed: int = SEED
) -> Interval:
    yt, pa, pb = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    idx = resample_indices(len(yt), samples, seed)
    value = _macro_f1(yt[None], pa[None], n_classes)[0] - _macro_f1(yt[None], pb[None], n_classes)[0]
    dist = _macro_f1(yt[idx], pa[idx], n_classes) - _macro_f1(yt[idx], pb[idx], n_classes)
    return _interval(value, dist, len(yt))


def perplexity_ratio_ci(nll_a, tok_a, nll_b, tok_b, samples: int = 1000, seed: int = SEED) -> Interval:
    """Relative change of perplexity, ppl(A) / ppl(B) - 1, on the same texts (paired resampling)."""
    na, ta, nb, tb = (np.asarray(x, dtype=float) for x in (nll_a, tok_a, nll_b, tok_b))
    idx = resample_indices(len(na), samples, seed)
    value = np.exp(na.sum() / ta.sum()) / np.exp(nb.sum() / tb.sum()) - 1
    dist = np.exp(na[idx].sum(1) / ta[idx].sum(1)) / np.exp(nb[idx].sum(1) / tb[idx].sum(1)) - 1
    return _interval(value, dist, len(na))
