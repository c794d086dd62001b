"""A plain-language overfitting verdict from the validation and training losses in metrics.jsonl.

Overfitting: validation loss has risen for ``patience`` or more evaluations after its minimum (by more than
``tolerance``) while the training loss fell over the same steps. Still improving: the last evaluation was
the best. Otherwise stable. Fewer than three evaluations is too little to judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    status: str  # overfitting | still improving | stable | too few evaluations | no validation
    message: str  # one or two sentences for the report
    best_step: int | None = None  # step of the lowest validation loss
    evals_after_best: int = 0  # evaluations since then (validation loss above its minimum in all of them)
    val_loss_best: float | None = None
    val_loss_last: float | None = None
    train_loss_at_best: float | None = None
    train_loss_last: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _train_loss_near(train: list[tuple[int, float]], lo: int, hi: int) -> float | None:
    """Mean training loss logged in steps (lo, hi]; else the last one logged at or before hi."""
    window = [loss for s, loss in train if lo < s <= hi]
    if window:
        return sum(window) / len(window)
    before = [loss for s, loss in train if s <= hi]
    return before[-1] if before else None


def overfitting_verdict(metrics: list[dict], patience: int = 2, tolerance: float = 0.05) -> Verdict:
    """Judge the run from its metrics.jsonl records (``split`` train/validation, ``step``, ``loss``)."""
    val = [
        (int(m["step"]), float(m["loss"]))
        for m in metrics
        if m.get("split") == "validation" and m.get("loss") is not None
    ]
    train = [
        (int(m["step"]), float(m["loss"]))
        for m in metrics
        if m.get("split") == "train" and m.get("loss") is not None
    ]
    if not val:
        return Verdict(
            "no validation",
            "No validation loss was recorded, so overfitting cannot be judged: give "
            "validation data (data.validation or data.validation_fraction > 0).",
        )
    if len(val) < 3:
        return Verdict(
            "too few evaluations",
            f"Only {len(val)} validation evaluation(s): too few to judge overfitting. "
            "Evaluate more often (training.eval_every) to see the trend.",
            val_loss_last=val[-1][1],
        )
    steps = [s for s, _ in val]
    best_i = min(range(len(val)), key=lambda i: val[i][1])
    best_step, best = val[best_i]
    last_step, last = val[-1]
    prev = steps[best_i - 1] if best_i > 0 else 0
    train_best = _train_loss_near(train, prev, best_step)
    train_last = _train_loss_near(train, steps[-2], last_step)
    after = len(val) - 1 - best_i
    rise = (last - best) / max(abs(best), 1e-12)
    common = dict(
        best_step=best_step,
        evals_after_best=after,
        val_loss_best=best,
        val_loss_last=last,
        train_loss_at_best=train_best,
        train_loss_last=train_last,
        details={"relative_rise": rise},
    )
    train_fell = train_best is not None and train_last is not None and train_last < train_best
    if after >= patience and rise > tolerance and train_fell:
        gap = (
            f" The final training loss ({train_last:.3f}) is {last / max(train_last, 1e-12):.1f}x below the "
            f"validation loss ({last:.3f})."
            if train_last and last > 2 * train_last
            else ""
        )
        return Verdict(
            "overfitting",
            f"Overfitting: validation loss rose for {after} evaluations after step {best_step} "
            f"({best:.4f} -> {last:.4f}, +{100 * rise:.0f}%) while training loss fell "
            f"({train_best:.4f} -> {train_last:.4f}).{gap} Keep the checkpoint from around step {best_step}, "
            f"train for fewer steps, add data, or use early stopping (training.early_stopping_patience).",
            **common,
        )
    if best_i == len(val) - 1:
        first = val[0][1]
        return Verdict(
            "still improving",
            f"No overfitting: validation loss was still falling at the last evaluation "
            f"({first:.4f} at step {val[0][0]} -> {last:.4f} at step {last_step}); training longer may help.",
            **common,
        )
    if after >= patience and rise > tolerance:
        return Verdict(
            "stable",
            f"Validation loss rose {100 * rise:.0f}% in the {after} evaluations after step {best_step}, but "
            f"training loss did not fall over them either: this looks like noise or too high a learning "
            f"rate rather than overfitting.",
            **common,
        )
    return Verdict(
        "stable",
        f"No clear overfitting: validation loss reached its minimum ({best:.4f}) at step {best_step} and "
        f"stayed within {max(100 * rise, 0):.0f}% of it over the {after} later evaluation(s).",
        **common,
    )
