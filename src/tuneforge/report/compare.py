"""Runs side by side: the config keys that differ, test metrics with 95% intervals, cost, and the curves.

When runs were tested on the same examples, each is also compared with the first run by a paired bootstrap
(so "B is better than A" is only said when the interval of the difference excludes zero).
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.eval import bootstrap as bs
from tuneforge.eval.overfitting import overfitting_verdict
from tuneforge.report import plots
from tuneforge.report.files import RunFiles, check_run_folder
from tuneforge.report.render import Doc, write


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(configs: list[dict]) -> dict[str, list]:
    """Dotted keys whose values differ between the configs (output.* left out), each with every run's value."""
    flat = [flatten(c) for c in configs]
    keys = dict.fromkeys(k for f in flat for k in f)
    return {
        k: [f.get(k) for f in flat]
        for k in keys
        if not k.startswith("output.") and len({json.dumps(f.get(k), default=str) for f in flat}) > 1
    }


def _names(runs: list[RunFiles]) -> list[str]:
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.path.parent.name}/{r.path.name}" for r in runs]
    return names


def run_row(f: RunFiles, samples: int) -> dict:
    """The numbers of one run that the comparison shows."""
    s, ev = f.summary, f.eval or {}
    row: dict = {
        "task": f.config.task,
        "status": s.get("status", "unfinished"),
        "steps": s.get("steps"),
        "best_step": s.get("best_step"),
        "metric": s.get("metric"),
        "best_metric": s.get("best_metric"),
        "wall_seconds": s.get("wall_seconds"),
        "train_seconds": s.get("train_seconds"),
        "peak_rss_mb": s.get("peak_rss_mb"),
        "trainable_parameters": s.get("trainable_parameters"),
        "overfitting": overfitting_verdict(f.metrics).status,
    }
    if s.get("train_seconds"):
        row["examples_per_s"] = s["examples_seen"] / s["train_seconds"]
    if "predictions" in ev:
        y, p = ev["predictions"]["y_true"], ev["predictions"]["y_pred"]
        row["accuracy"] = bs.accuracy_ci(y, p, samples).to_dict() | {"value": ev["tuned"]["accuracy"]}
        row["macro_f1"] = bs.macro_f1_ci(y, p, len(ev["tuned"]["labels"]), samples).to_dict() | {
            "value": ev["tuned"]["macro_f1"]
        }
        if ev.get("baseline"):
            row["baseline_accuracy"] = ev["baseline"]["accuracy"]
    test = (ev.get("tuned") or {}).get("test")
    if isinstance(test, dict) and "perplexity" in test:
        row["perplexity"] = {"value": test["perplexity"]}
        if f.lm_eval:
            row["perplexity"] = bs.perplexity_ci(
                f.lm_eval["tuned_nll"], f.lm_eval["tokens"], samples
            ).to_dict() | {"value": test["perplexity"]}
        base = ((ev.get("baseline") or {}).get("test") or {}).get("perplexity")
        row["base_perplexity"] = base
    if f.forgetting:
        row["forgetting_change"] = f.forgetting["reference"]["relative_change"]["value"]
    if f.bias and f.bias.get("swaps"):
        top = f.bias["swaps"][0]
        key = (
            "flip_rate"
            if f.bias["kind"] == "classifier"
            else ("change" if "change" in top else "tuned_delta")
        )
        row["bias_top"] = {"swap": f"{top['category']}: {top['from']} → {top['to']}", key: top[key]}
    return row


def fmt_ci(d: dict | None, digits: int = 4) -> str:
    if not d:
        return "-"
    if "low" not in d:
        return f"{d['value']:.{digits}f}"
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def paired_vs_first(runs: list[RunFiles], samples: int) -> list[dict | None]:
    """Accuracy difference (run − first run) on the same test examples, or None when the tests differ."""
    first = (runs[0].eval or {}).get("predictions")
    out: list[dict | None] = [None]
    for f in runs[1:]:
        p = (f.eval or {}).get("predictions")
        if first and p and p["y_true"] == first["y_true"]:
            out.append(
                bs.accuracy_difference_ci(p["y_true"], p["y_pred"], first["y_pred"], samples).to_dict()
            )
        else:
            out.append(None)
    return out


def check_distinct(run_dirs: list[str | Path]) -> None:
    """Refuse a run folder given twice (also as another spelling of the same path, or through a link)."""
    seen: dict[Path, str | Path] = {}
    for d in run_dirs:
        real = check_run_folder(d).resolve()
        if real in seen:
            same = f"'{d}'" if str(d) == str(seen[real]) else f"'{seen[real]}' and '{d}'"
            raise TuneforgeError(
                f"compare: {same} {'is given twice' if str(d) == str(seen[real]) else 'are the same run folder'} "
                f"({real}); a run compared with itself shows no difference. Give each run folder once."
            )
        seen[real] = d


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path = ".", stem: str = "compare") -> dict:
    """Write ``stem.md``/``stem.html``/``stem.json`` into ``out_dir`` and return the comparison."""
    if len(run_dirs) < 2:
        raise TuneforgeError("compare: give at least two run folders, e.g. tuneforge compare runs/a runs/b.")
    check_distinct(run_dirs)
    runs = [RunFiles(d) for d in run_dirs]
    samples = runs[0].config.eval.bootstrap_samples
    names = _names(runs)
    rows = [run_row(f, samples) for f in runs]
    diffs = config_differences([f.config.to_dict() for f in runs])
    paired = paired_vs_first(runs, samples)

    doc = Doc(f"tuneforge compare: {', '.join(names)}")
    doc.h2("Configuration differences")
    if diffs:
        doc.table(
            ["key", *names], [[k, *[json.dumps(v, default=str) for v in vals]] for k, vals in diffs.items()]
        )
    else:
        doc.p("The runs have the same configuration (apart from output.*).")
    doc.h2("Results")
    table = [
        ("status", lambda r: r["status"]),
        ("test accuracy [95% CI]", lambda r: fmt_ci(r.get("accuracy"))),
        ("test macro-F1 [95% CI]", lambda r: fmt_ci(r.get("macro_f1"))),
        (
            "majority baseline accuracy",
            lambda r: f"{r['baseline_accuracy']:.4f}" if "baseline_accuracy" in r else "-",
        ),
        ("test perplexity [95% CI]", lambda r: fmt_ci(r.get("perplexity"), 3)),
        ("base perplexity", lambda r: f"{r['base_perplexity']:.3f}" if r.get("base_perplexity") else "-"),
        (
            "best validation metric",
            lambda r: (
                f"{r['metric']} {r['best_metric']:.4f} @ step {r['best_step']}"
                if r.get("best_metric") is not None
                else "-"
            ),
        ),
        ("overfitting verdict", lambda r: r["overfitting"]),
        (
            "forgetting (reference perplexity change)",
            lambda r: f"{100 * r['forgetting_change']:+.1f}%" if "forgetting_change" in r else "-",
        ),
        (
            "bias probe: top swap",
            lambda r: (
                ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else str(v) for k, v in r["bias_top"].items()
                )
                if "bias_top" in r
                else "-"
            ),
        ),
        ("steps", lambda r: str(r["steps"])),
        ("training time (s)", lambda r: f"{r['train_seconds']:.1f}" if r.get("train_seconds") else "-"),
        ("examples/s", lambda r: f"{r['examples_per_s']:.1f}" if r.get("examples_per_s") else "-"),
        ("peak memory (MB)", lambda r: f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"),
        (
            "trainable parameters",
            lambda r: f"{r['trainable_parameters']:,}" if r.get("trainable_parameters") else "-",
        ),
    ]
    if any(paired[1:]):
        table.insert(
            3,
            (
                f"accuracy − {names[0]} (paired) [95% CI]",
                lambda r: fmt_ci(r.get("vs_first")) if r.get("vs_first") else "-",
            ),
        )
        for r, p in zip(rows, paired):
            if p:
                r["vs_first"] = p
    doc.table(["", *names], [[label, *[fn(r) for r in rows]] for label, fn in table])
    for name, p in zip(names[1:], paired[1:]):
        if p:
            real = not p["low"] <= 0 <= p["high"]
            doc.note(
                f"{name} vs {names[0]}: accuracy {100 * p['value']:+.1f} points (95% CI {100 * p['low']:+.1f} to "
                f"{100 * p['high']:+.1f}) — {'a real difference' if real else 'not distinguishable'}.",
                "ok" if real else "info",
            )
    if any(f.metrics for f in runs):
        doc.h2("Curves")
        doc.image(
            "curves",
            plots.compare_curves([(n, f.metrics) for n, f in zip(names, runs)]),
            "curves of every run",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, html = write(doc, out_dir, stem)
    result = {
        "runs": [str(f.path) for f in runs],
        "names": names,
        "config_differences": diffs,
        "rows": rows,
        "markdown": str(md),
        "html": str(html),
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    return result
