"""Bootstrap intervals: point estimates equal the plain metrics, intervals contain them, resampling is seeded."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tuneforge.eval import bootstrap as bs
from tuneforge.eval.metrics import classification_metrics


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))  # about 75% right
    return y, pred


def test_accuracy_and_macro_f1_match_the_metrics_and_contain_the_point(preds):
    y, pred = preds
    m = classification_metrics(y.tolist(), pred.tolist(), ["a", "b", "c"])
    acc, f1 = bs.accuracy_ci(y, pred), bs.macro_f1_ci(y, pred, 3)
    assert acc.value == pytest.approx(m["accuracy"], abs=1e-12)
    assert f1.value == pytest.approx(m["macro_f1"], abs=1e-12)
    for iv in (acc, f1):
        assert iv.low < iv.value < iv.high and iv.samples == 1000 and iv.n == 300
    # binomial standard error of 300 examples: the 95% interval is about +-1.96 * sqrt(p(1-p)/n) wide
    se = math.sqrt(acc.value * (1 - acc.value) / 300)
    assert acc.high - acc.low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_vectorised_macro_f1_equals_sklearn_on_resamples(preds):
    """The (S, N) vectorised macro-F1 is sklearn's macro-F1 over the classes present in the true labels."""
    y, pred = preds
    idx = bs.resample_indices(len(y), 20, seed=3)
    y[:5] = 0  # make sure class coverage differs between resamples
    ours = bs._macro_f1(y[idx], pred[idx], 3)
    for row, value in zip(idx, ours):
        present = sorted(set(y[row]))
        assert value == pytest.approx(
            f1_score(y[row], pred[row], labels=present, average="macro", zero_division=0)
        )


def test_seeded_and_paired(preds):
    y, pred = preds
    assert bs.accuracy_ci(y, pred).to_dict() == bs.accuracy_ci(y, pred).to_dict()
    same = bs.accuracy_difference_ci(y, pred, pred)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    majority = np.zeros_like(y)
    diff = bs.accuracy_difference_ci(y, pred, majority)
    assert diff.excludes(0.0) and diff.value == pytest.approx((pred == y).mean() - (majority == y).mean())
    f1d = bs.macro_f1_difference_ci(y, pred, majority, 3)
    assert f1d.low > 0


def test_perplexity_interval():
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, 80)
    nll = tokens * rng.uniform(2.0, 3.0, 80)
    ppl = bs.perplexity_ci(nll, tokens)
    assert ppl.value == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert ppl.low < ppl.value < ppl.high
    ratio = bs.perplexity_ratio_ci(nll * 1.1, tokens, nll, tokens)
    assert ratio.value == pytest.approx(math.exp(0.1 * nll.sum() / tokens.sum()) - 1)
    assert ratio.low <= ratio.value <= ratio.high


def test_empty_input_gives_nan():
    assert math.isnan(bs.accuracy_ci([], []).value)
