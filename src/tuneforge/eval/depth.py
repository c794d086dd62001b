"""The depth probe: how well each layer's representation of the base model already serves the task.

A logistic-regression probe is fitted on the mean-pooled hidden states of every layer (the embeddings, then
each block) of the frozen base model over the training rows, and scored on held-out rows with a bootstrap
interval. The implied freeze depth is the first block whose features are within ``tolerance`` of the best
layer's probe accuracy: the blocks up to it already produce what the task needs, so they are frozen, and the
blocks above it (and the head) train. ``method.freeze_layers: auto`` uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneforge.data.formats import Example
from tuneforge.eval.baselines import fit_subset, hidden_features, logreg_predict
from tuneforge.eval.bootstrap import accuracy_ci

TOLERANCE = 0.01  # probe accuracy within 1 point of the best layer counts as "already serves the task"


def layer_accuracies(
    feats_train: np.ndarray, y_train, feats_eval: np.ndarray, y_eval, seed: int = 0, samples: int = 1000
) -> list[dict]:
    """Probe accuracy per layer: ``feats_*`` are (L + 1, N, H). Returns [{layer, accuracy, low, high}]."""
    out = []
    for layer in range(feats_train.shape[0]):
        pred = logreg_predict(feats_train[layer], y_train, feats_eval[layer], seed)
        iv = accuracy_ci(y_eval, pred, samples)
        out.append({"layer": layer, "accuracy": iv.value, "low": iv.low, "high": iv.high})
    return out


def implied_depth(accuracies: Sequence[float], tolerance: float = TOLERANCE) -> int:
    """Blocks to freeze: the first layer index whose probe accuracy is within ``tolerance`` of the best.

    ``accuracies[0]`` is the embedding output, ``accuracies[i]`` block i's; freezing ``i`` blocks keeps
    blocks 1..i (and the embeddings) as they are. At most all but the top block are frozen, so the run
    still adapts a block beside the head.
    """
    n_blocks = len(accuracies) - 1
    best = max(accuracies)
    first = next(i for i, a in enumerate(accuracies) if a >= best - tolerance)
    return int(min(first, max(0, n_blocks - 1)))


def probe_layers(
    model,
    tokenizer,
    train: Sequence[Example],
    evaluate: Sequence[Example],
    labels: Sequence[str],
    seed: int = 42,
    max_length: int = 128,
    batch_size: int = 32,
    samples: int = 1000,
    tolerance: float = TOLERANCE,
) -> dict:
    """The whole probe: per-layer accuracies on ``evaluate`` and the implied freeze depth."""
    fit = fit_subset(train, seed)
    ids = {label: i for i, label in enumerate(labels)}
    f_tr = hidden_features(
        model, tokenizer, [e.text or "" for e in fit], max_length, batch_size, layers="all"
    )
    f_ev = hidden_features(
        model, tokenizer, [e.text or "" for e in evaluate], max_length, batch_size, layers="all"
    )
    layers = layer_accuracies(
        f_tr, [ids[e.label] for e in fit], f_ev, [ids[e.label] for e in evaluate], seed, samples
    )
    depth = implied_depth([x["accuracy"] for x in layers], tolerance)
    return {
        "layers": layers,
        "blocks": len(layers) - 1,
        "freeze_layers": depth,
        "tolerance": tolerance,
        "fit_rows": len(fit),
        "n": len(evaluate),
    }


def auto_freeze_layers(task, cfg) -> dict:
    """``method.freeze_layers: auto``: probe the task's own (not yet trained) model on its training rows and
    validation split, set ``cfg.method.freeze_layers`` to the implied depth, and return the probe."""
    from tuneforge.data.split import subsample
    from tuneforge.errors import ConfigError

    labels = getattr(task, "labels", None)
    if not labels or not task.splits.get("validation"):
        raise ConfigError(
            "method.freeze_layers: auto probes each layer with the task's labels on the validation split; this "
            "task has no labels or no validation rows: give method.freeze_layers a number."
        )
    seed = cfg.training.seed
    rows = subsample(task.splits["validation"], cfg.eval.baseline_examples, seed)
    result = probe_layers(
        task.model,
        task.tokenizer,
        task.splits["train"],
        rows,
        labels,
        seed,
        cfg.data.max_length,
        cfg.eval.batch_size,
        cfg.eval.bootstrap_samples,
    )
    cfg.method.freeze_layers = result["freeze_layers"]
    return result
