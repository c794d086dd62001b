"""Training curves: loss and the chosen metric by step, the best checkpoint, early stopping, and a
plain-language overfitting verdict (from metrics.jsonl and run.json)."""

from __future__ import annotations

from tuneforge.eval.overfitting import overfitting_verdict
from tuneforge.report import plots
from tuneforge.report.files import RunFiles
from tuneforge.report.render import Doc


def _evaluations_text(val: list[dict]) -> str:
    """The validation evaluations as a fixed-width text table (at most ~25 rows, always the last)."""
    keys = [k for k in val[0] if k not in ("step", "epoch", "split")]
    every = max(1, len(val) // 25)
    shown = val[::every] if val[-1] in val[::every] else val[::every] + [val[-1]]
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["step   epoch   " + "   ".join(keys)]
    lines += [
        f"{m['step']:<6} {m.get('epoch', 0):<7} " + "   ".join(cell(m.get(k)) for k in keys) for m in shown
    ]
    return "\n".join(lines)


def build(doc: Doc, f: RunFiles) -> dict:
    doc.h2("Training curves")
    s, t = f.summary, f.config.training
    best, metric = s.get("best_step"), s.get("metric")
    stopped = s.get("status") == "stopped early"
    verdict = overfitting_verdict(f.metrics, patience=t.early_stopping_patience or 2)
    if f.metrics:
        stop = s.get("steps") if stopped else None
        doc.image(
            "curves", plots.loss_curves(f.metrics, metric, best, stop), "training and validation curves"
        )
    doc.note(
        verdict.message,
        {"overfitting": "warn", "still improving": "info", "stable": "ok"}.get(verdict.status, "info"),
    )
    if s:
        bm = s.get("best_metric")
        how = (
            f"stopped early at step {s['steps']} (training.early_stopping_patience = {t.early_stopping_patience})"
            if stopped
            else f"ran all {s.get('steps')} steps"
        )
        doc.p(
            f"Training {how}. The final model is the best validation checkpoint, step {best} ({metric} {bm:.4f})."
            if best is not None and bm is not None
            else f"Training {how}. No validation checkpoint: the final model is the last weights."
        )
    val = [m for m in f.metrics if m.get("split") == "validation"]
    if val:
        doc.details(f"validation evaluations ({len(val)})", _evaluations_text(val))
    return {
        "verdict": verdict.to_dict(),
        "best_step": best,
        "metric": metric,
        "stopped_early": stopped,
        "train": [[m["step"], m["loss"]] for m in f.metrics if m.get("split") == "train"],
        "validation": [{k: v for k, v in m.items() if k != "split"} for m in val],
    }
