"""The report's plots (matplotlib, headless): each function returns PNG bytes.

Loss curves with the early-stopping point, confusion matrix, calibration curve, token-length histogram,
bias-probe bars, and the overlaid curves of several runs for ``tuneforge compare``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _series(metrics: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [m for m in metrics if m.get("split") == split and isinstance(m.get(key), (int, float))]
    return [int(m["step"]) for m in rows], [float(m[key]) for m in rows]


def loss_curves(
    metrics: list[dict], metric: str | None = None, best_step: int | None = None, stop_step: int | None = None
) -> bytes:
    """Training and validation loss over steps (left) and the validation metric (right), best step marked."""
    plt = _plt()
    extra = metric if metric and metric != "loss" and _series(metrics, "validation", metric)[0] else None
    if extra is None:
        extra = next(
            (k for k in ("perplexity", "accuracy", "macro_f1") if _series(metrics, "validation", k)[0]), None
        )
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(11 if extra else 6.5, 3.8), squeeze=False)
    ax = axes[0][0]
    s, v = _series(metrics, "train", "loss")
    ax.plot(s, v, "." if len(s) < 30 else "", ls="-", color="#4c72b0", lw=1.4, label="training loss")
    s, v = _series(metrics, "validation", "loss")
    ax.plot(s, v, "o-", color="#dd8452", lw=1.6, ms=4, label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    panels = [ax]
    if extra:
        ax2 = axes[0][1]
        s, v = _series(metrics, "validation", extra)
        ax2.plot(s, v, "o-", color="#55a868", lw=1.6, ms=4, label=f"validation {extra}")
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel(extra)
        ax2.set_title(f"Validation {extra}")
        panels.append(ax2)
    from matplotlib.ticker import MaxNLocator

    for a in panels:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_step is not None:
            a.axvline(
                best_step, color="#c44e52", ls="--", lw=1.2, label=f"best checkpoint (step {best_step})"
            )
        if stop_step is not None:
            a.axvline(stop_step, color="#8172b3", ls=":", lw=1.4, label=f"early stop (step {stop_step})")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """Counts, coloured by the share of each true class (rows)."""
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(labels)
    size = min(3.2 + 0.45 * k, 12)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(k),
        [str(x) for x in labels],
        rotation=45 if k > 4 else 0,
        ha="right" if k > 4 else "center",
        fontsize=8 if k > 8 else 10,
    )
    ax.set_yticks(range(k), [str(x) for x in labels], fontsize=8 if k > 8 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7 if k > 8 else 10,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return to_png(fig)


def calibration(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> tuple[bytes, float, list[dict]]:
    """Reliability diagram: accuracy against confidence per bin; returns (png, expected calibration error, bins)."""
    plt = _plt()
    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            table.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "n": int(sel.sum()),
                    "confidence": float(conf[sel].mean()),
                    "accuracy": float(ok[sel].mean()),
                }
            )
            ece += sel.mean() * abs(conf[sel].mean() - ok[sel].mean())
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(5.5, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(
        [t["confidence"] for t in table],
        [t["accuracy"] for t in table],
        "o-",
        color="#4c72b0",
        label="tuned model",
    )
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Calibration (test): expected calibration error {ece:.3f}")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    axh.hist(conf, bins=edges, color="#8da0cb")
    axh.set_xlabel("confidence (probability of the predicted class)")
    axh.set_ylabel("examples")
    axh.set_xlim(0, 1)
    fig.tight_layout()
    return to_png(fig), float(ece), table


def length_histogram(
    lengths: dict[str, Sequence[int]], max_length: int | None = None, truncated: dict[str, int] | None = None
) -> bytes:
    """Token lengths per split (after truncation), with the max_length cut marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    top = max(max((max(v) for v in lengths.values() if len(v)), default=1), max_length or 0)
    width = max(1, int(np.ceil((top + 1) / 40)))
    edges = np.arange(0, top + width + 1, width) - 0.5  # whole tokens per bin: no empty comb teeth
    colors = {"train": "#4c72b0", "validation": "#dd8452", "test": "#55a868"}
    for name, values in lengths.items():
        if len(values):
            label = f"{name} ({len(values):,})"
            if truncated and truncated.get(name):
                label += f", {truncated[name]:,} truncated"
            ax.hist(values, bins=edges, alpha=0.55, label=label, color=colors.get(name))
    if max_length:
        ax.axvline(max_length, color="#c44e52", ls="--", lw=1.2, label=f"data.max_length = {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def bias_bars(swaps: list[dict], kind: str, top: int = 12) -> bytes:
    """The swaps that moved the model most: flip rate (classifier) or tuned-minus-base Δ log-likelihood (LM)."""
    plt = _plt()
    rows = swaps[:top][::-1]
    names = [f"{s['category']}: {s['from']} → {s['to']} (n={s['n']})" for s in rows]
    height = max(2.2, 0.8 + 0.32 * len(rows))
    y = np.arange(len(rows))
    if kind == "classifier":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, height), sharey=True)
        v = np.array([s["flip_rate"] for s in rows])
        err = np.array(
            [[s["flip_rate"] - s["low"] for s in rows], [s["high"] - s["flip_rate"] for s in rows]]
        )
        ax.barh(y, 100 * v, xerr=100 * err, color="#c44e52", alpha=0.8, capsize=3)
        ax.set_xlabel("predictions flipped (%), with 95% CI")
        ax.set_xlim(0, 100)
        ax2.barh(y, [s["mean_abs_shift"] for s in rows], color="#dd8452", alpha=0.8)
        ax2.set_xlabel("mean |change| of the predicted class's probability")
        ax2.grid(alpha=0.3, axis="x")
    else:
        fig, ax = plt.subplots(figsize=(7.5, height))
        key = "change" if "change" in rows[0] else "tuned_delta"
        v = np.array([s[key] for s in rows])
        if key == "change":
            err = np.array([[s["change"] - s["low"] for s in rows], [s["high"] - s["change"] for s in rows]])
            ax.barh(y, v, xerr=err, color="#8172b3", alpha=0.8, capsize=3)
            ax.set_xlabel("Δ log-likelihood of the swapped text, tuned minus base (nats), with 95% CI")
        else:
            ax.barh(y, v, color="#8172b3", alpha=0.8)
            ax.set_xlabel("Δ log-likelihood of the swapped text (nats)")
        ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, names, fontsize=8)
    fig.suptitle("Bias probe: the swaps that moved the model most", fontsize=11)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return to_png(fig)


def compare_curves(runs: list[tuple[str, list[dict]]]) -> bytes:
    """Training (thin) and validation (markers) loss of several runs on one axis; the first validation metric beside."""
    plt = _plt()
    metric = None
    for _, metrics in runs:
        metric = metric or next(
            (k for k in ("accuracy", "macro_f1", "perplexity") if _series(metrics, "validation", k)[0]), None
        )
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(12 if metric else 7, 4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for k, (name, metrics) in enumerate(runs):
        c = cmap(k % 10)
        s, v = _series(metrics, "train", "loss")
        axes[0][0].plot(s, v, color=c, lw=1, alpha=0.6, label=f"{name} (train)")
        s, v = _series(metrics, "validation", "loss")
        axes[0][0].plot(s, v, "o-", color=c, lw=1.6, ms=3, label=f"{name} (validation)")
        if metric:
            s, v = _series(metrics, "validation", metric)
            axes[0][1].plot(s, v, "o-", color=c, lw=1.6, ms=3, label=name)
    axes[0][0].set_title("Loss")
    axes[0][0].set_xlabel("optimizer step")
    if metric:
        axes[0][1].set_title(f"Validation {metric}")
        axes[0][1].set_xlabel("optimizer step")
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
