"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from collections import Counter

import numpy as np


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=ids, zero_division=0)
    present = [i for i in ids if s[i] > 0]  # macro-F1 over classes present in the reference labels
    return {
        "accuracy": float((yt == yp).mean()) if len(yt) else 0.0,
        "macro_f1": float(np.mean([f[i] for i in present])) if present else 0.0,
        "n": int(len(yt)),
        "per_class": {
            labels[i]: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i in ids
        },
        "confusion_matrix": confusion_matrix(yt, yp, labels=ids).tolist(),
        "labels": labels,
    }


def majority_baseline(train_labels: list[int], y_true: list[int], labels: list[str]) -> dict:
    """The score of always predicting the most frequent training label."""
    majority = Counter(train_labels).most_common(1)[0][0]
    out = classification_metrics(y_true, [majority] * len(y_true), labels)
    out["predicts"] = labels[majority]
    return out
