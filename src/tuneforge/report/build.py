"""The honest report of a run: base versus tuned with 95% intervals, training curves and an overfitting
verdict, forgetting, the bias probe, data and cost. Written as ``report.md`` (+ ``report_files/``),
``report.html`` (self-contained) and ``report.json`` (every number the report shows).

Everything is read from the run folder (config.yaml, run.json, data.json, metrics.jsonl, eval.json and the
probe files of ``tuneforge.report.probes``), so ``tuneforge report RUN_DIR`` rebuilds it at any time.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np

from tuneforge.eval import bootstrap as bs
from tuneforge.eval.bias import MIN_N
from tuneforge.eval.overfitting import overfitting_verdict
from tuneforge.report import plots
from tuneforge.report.render import Doc, write

log = logging.getLogger(__name__)


def _load(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _ci(iv: bs.Interval | dict, pct: bool = False, digits: int = 4) -> str:
    d = iv.to_dict() if isinstance(iv, bs.Interval) else iv
    if pct:
        return f"{100 * d['value']:+.1f}% [{100 * d['low']:+.1f}%, {100 * d['high']:+.1f}%]"
    return f"{d['value']:,.{digits}f} [{d['low']:,.{digits}f}, {d['high']:,.{digits}f}]"


def _numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, with dotted keys."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _num(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


class RunFiles:
    """Everything a report reads from a run folder."""

    def __init__(self, folder: str | Path):
        from tuneforge.run import Run

        self.run = Run(folder)
        self.path, self.config = self.run.path, self.run.config
        self.summary = self.run.summary()
        self.metrics = self.run.metrics()
        self.data = _load(self.path, "data.json") or {}
        self.eval = _load(self.path, "eval.json")
        self.bias = _load(self.path, "bias.json")
        self.forgetting = _load(self.path, "forgetting.json")
        self.lengths = _load(self.path, "lengths.json")
        self.lm_eval = _load(self.path, "lm_eval.json")


# ---- sections: each adds blocks to the document and returns its numbers for report.json


def classification_section(doc: Doc, f: RunFiles, samples: int) -> dict:
    ev = f.eval
    tuned, base = ev["tuned"], ev.get("baseline")
    labels = tuned["labels"]
    y, pred = np.asarray(ev["predictions"]["y_true"]), np.asarray(ev["predictions"]["y_pred"])
    k = len(labels)
    out = {
        "split": ev["split"],
        "n": tuned["n"],
        "tuned": {"accuracy": tuned["accuracy"], "macro_f1": tuned["macro_f1"]},
    }
    acc_t, f1_t = bs.accuracy_ci(y, pred, samples), bs.macro_f1_ci(y, pred, k, samples)
    out["tuned"].update(accuracy_ci=acc_t.to_dict(), macro_f1_ci=f1_t.to_dict())
    doc.h2("Base versus tuned")
    rows = [
        [
            "tuned model",
            _ci({**acc_t.to_dict(), "value": tuned["accuracy"]}),
            _ci({**f1_t.to_dict(), "value": tuned["macro_f1"]}),
            tuned["n"],
        ]
    ]
    headline = f"Tuned accuracy {tuned['accuracy']:.4f} (95% CI {acc_t.low:.4f}–{acc_t.high:.4f})."
    if base:
        maj = labels.index(base["predicts"])
        bpred = np.full_like(y, maj)
        acc_b, f1_b = bs.accuracy_ci(y, bpred, samples), bs.macro_f1_ci(y, bpred, k, samples)
        d_acc = bs.accuracy_difference_ci(y, pred, bpred, samples)
        d_f1 = bs.macro_f1_difference_ci(y, pred, bpred, k, samples)
        out["baseline"] = {
            "predicts": base["predicts"],
            "accuracy": base["accuracy"],
            "macro_f1": base["macro_f1"],
            "accuracy_ci": acc_b.to_dict(),
            "macro_f1_ci": f1_b.to_dict(),
        }
        out["difference"] = {"accuracy": d_acc.to_dict(), "macro_f1": d_f1.to_dict()}
        rows.append(
            [
                f"baseline: always '{base['predicts']}'",
                _ci({**acc_b.to_dict(), "value": base["accuracy"]}),
                _ci({**f1_b.to_dict(), "value": base["macro_f1"]}),
                base["n"],
            ]
        )
        rows.append(["tuned − baseline (paired)", _ci(d_acc), _ci(d_f1), tuned["n"]])
    doc.table(["model", "accuracy [95% CI]", "macro-F1 [95% CI]", "test examples"], rows)
    if base:
        if d_acc.low > 0:
            verdict = (
                f"The tuned model beats the majority-class baseline by {100 * d_acc.value:.1f} accuracy points "
                f"(95% CI {100 * d_acc.low:.1f} to {100 * d_acc.high:.1f}): a real improvement.",
                "ok",
            )
        elif d_acc.high < 0:
            verdict = (
                f"The tuned model is worse than always predicting '{base['predicts']}' "
                f"({100 * d_acc.value:+.1f} accuracy points, 95% CI {100 * d_acc.low:+.1f} to "
                f"{100 * d_acc.high:+.1f}).",
                "warn",
            )
        else:
            verdict = (
                f"The tuned model is not distinguishable from always predicting '{base['predicts']}' "
                f"({100 * d_acc.value:+.1f} accuracy points, 95% CI {100 * d_acc.low:+.1f} to "
                f"{100 * d_acc.high:+.1f} includes zero).",
                "warn",
            )
        doc.note(*verdict)
        headline = verdict[0]
    doc.p(
        f"Test split: {ev.get('data', ev['split'])}, {tuned['n']:,} examples. Intervals: {samples} bootstrap "
        f"resamples of the test examples; the difference row resamples both models on the same examples."
    )
    doc.p(
        "Why the baseline is the majority class: a classifier needs a new output head, and a pre-trained model "
        "with an untrained head predicts at random, so its score says nothing about the pre-trained model. The "
        "honest reference is what a trivial rule gets from the label counts alone; macro-F1 shows whether the "
        "model does better than that on every class, not only the frequent one."
    )
    if k <= 30:
        doc.h3("Per class (tuned)")
        doc.table(
            ["label", "precision", "recall", "F1", "support"],
            [
                [lab, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
                for lab, v in tuned["per_class"].items()
            ],
        )
    figures = [
        ("confusion_matrix", plots.confusion_matrix(tuned["confusion_matrix"], labels), "confusion matrix")
    ]
    conf = ev["predictions"].get("confidence")
    if conf:
        png, ece, table = plots.calibration(conf, (y == pred).tolist())
        out["calibration"] = {"ece": ece, "bins": table}
        figures.append(("calibration", png, "calibration curve"))
    doc.images(figures)
    if conf:
        mean_conf = float(np.mean(conf))
        gap = mean_conf - tuned["accuracy"]
        tone = (
            "over-confident"
            if gap > 0.02
            else "under-confident"
            if gap < -0.02
            else "well calibrated on average"
        )
        doc.p(
            f"Calibration: mean confidence {mean_conf:.3f} against accuracy {tuned['accuracy']:.3f} — the model is "
            f"{tone}; expected calibration error {ece:.3f} (0 is perfect)."
        )
    out["headline"] = headline
    return out


def lm_section(doc: Doc, f: RunFiles, samples: int) -> dict:
    ev = f.eval or {}
    doc.h2("Base versus tuned")
    out: dict = {"splits": {}}
    rows = []
    tuned_all = ev.get("tuned") if isinstance(ev.get("tuned"), dict) else {}
    for split, m in tuned_all.items():
        if not isinstance(m, dict) or "perplexity" not in m:
            continue
        b = (ev.get("baseline") or {}).get(split) or {}
        row = {"tuned": m["perplexity"], "base": b.get("perplexity"), "change": m.get("perplexity_change")}
        cells = [
            split,
            _num(row["base"], 3),
            _num(row["tuned"], 3),
            f"{100 * row['change']:+.1f}%" if row["change"] is not None else "-",
        ]
        if split == (f.lm_eval or {}).get("split"):
            le = f.lm_eval
            t_ci = bs.perplexity_ci(le["tuned_nll"], le["tokens"], samples)
            b_ci = bs.perplexity_ci(le["base_nll"], le["tokens"], samples)
            c_ci = bs.perplexity_ratio_ci(
                le["tuned_nll"], le["tokens"], le["base_nll"], le["tokens"], samples
            )
            row.update(tuned_ci=t_ci.to_dict(), base_ci=b_ci.to_dict(), change_ci=c_ci.to_dict())
            cells = [
                split,
                _ci({**b_ci.to_dict(), "value": row["base"] or b_ci.value}, digits=3),
                _ci({**t_ci.to_dict(), "value": row["tuned"]}, digits=3),
                _ci(c_ci, pct=True),
            ]
        out["splits"][split] = row
        rows.append(cells)
    if rows:
        doc.table(["split", "base perplexity [95% CI]", "tuned perplexity [95% CI]", "change [95% CI]"], rows)
        test = out["splits"].get("test") or next(iter(out["splits"].values()))
        if "change_ci" in test:
            c = test["change_ci"]
            real = not c["low"] <= 0 <= c["high"]
            word = "lower" if c["value"] < 0 else "higher"
            out["headline"] = (
                f"Test perplexity on the answer tokens is {100 * abs(c['value']):.1f}% {word} after tuning "
                f"(base {test['base']:.3f} -> tuned {test['tuned']:.3f}; 95% CI of the change "
                f"{100 * c['low']:+.1f}% to {100 * c['high']:+.1f}%"
                f"{'' if real else ', which includes zero'})."
            )
            doc.note(out["headline"], "ok" if real and c["value"] < 0 else "warn")
        doc.p(
            "Perplexity is measured on the tokens the model is trained to produce (the answers), token-weighted; "
            f"intervals come from {samples} bootstrap resamples of whole test examples, paired for the change."
        )
    else:  # another task's eval.json: show its numbers as they are
        base_all = ev.get("baseline") if isinstance(ev.get("baseline"), dict) else {}
        flat_t, flat_b = _numbers(tuned_all), _numbers(base_all)
        if flat_t:
            doc.table(
                ["metric", "base", "tuned"],
                [[k, _num(flat_b.get(k), 4), _num(v, 4)] for k, v in flat_t.items()],
            )
            out["metrics"] = {"tuned": flat_t, "base": flat_b}
        else:
            doc.p("No metrics in eval.json.")
    sample_rows = ev.get("samples") or []
    if sample_rows:
        doc.h3("Sample generations (held-out prompts)")
        doc.table(
            ["prompt", "reference", "base model", "tuned model"],
            [
                [s.get("prompt", ""), s.get("reference", ""), s.get("base") or "-", s.get("tuned", "")]
                for s in sample_rows[:8]
            ],
        )
        out["samples"] = sample_rows[:8]
    return out


def curves_section(doc: Doc, f: RunFiles) -> dict:
    doc.h2("Training curves")
    s = f.summary
    best, metric = s.get("best_step"), s.get("metric")
    stopped = s.get("status") == "stopped early"
    patience = f.config.training.early_stopping_patience or 2
    verdict = overfitting_verdict(f.metrics, patience=patience)
    if f.metrics:
        doc.image(
            "curves",
            plots.loss_curves(f.metrics, metric, best, s.get("steps") if stopped else None),
            "training and validation curves",
        )
    level = {"overfitting": "warn", "still improving": "info", "stable": "ok"}.get(verdict.status, "info")
    doc.note(verdict.message, level)
    if s:
        bm = s.get("best_metric")
        stop = (
            f"stopped early at step {s['steps']} (training.early_stopping_patience = "
            f"{f.config.training.early_stopping_patience})"
            if stopped
            else f"ran all {s.get('steps')} steps"
        )
        doc.p(
            f"Training {stop}. The final model is the best validation checkpoint, step {best} "
            f"({metric} {bm:.4f})."
            if best is not None and bm is not None
            else f"Training {stop}. No validation checkpoint: the final model is the last weights."
        )
    val = [m for m in f.metrics if m.get("split") == "validation"]
    if val:
        keys = [k for k in val[0] if k not in ("step", "epoch", "split")]
        every = max(1, len(val) // 25)
        shown = val[::every] if val[-1] in val[::every] else val[::every] + [val[-1]]
        doc.details(
            f"validation evaluations ({len(val)})",
            "\n".join(
                ["step   epoch   " + "   ".join(keys)]
                + [
                    f"{m['step']:<6} {m.get('epoch', 0):<7} "
                    + "   ".join(
                        f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k)) for k in keys
                    )
                    for m in shown
                ]
            ),
        )
    return {
        "verdict": verdict.to_dict(),
        "best_step": best,
        "metric": metric,
        "stopped_early": stopped,
        "train": [[m["step"], m["loss"]] for m in f.metrics if m.get("split") == "train"],
        "validation": [{k: v for k, v in m.items() if k != "split"} for m in val],
    }


def forgetting_section(doc: Doc, f: RunFiles, is_lm: bool) -> dict | None:
    doc.h2("Catastrophic forgetting")
    if not is_lm:
        doc.p(
            "Not measured for classifiers: forgetting is checked on language models, as the rise of their "
            "perplexity on general English after tuning. A classifier's new head has no language-model output "
            "to compare; to check it on other labelled data, run `tuneforge eval RUN_DIR --data FILE`."
        )
        return None
    fg = f.forgetting
    if not fg:
        doc.p(
            "Not measured (eval.forgetting is false, or the run predates it: `tuneforge report RUN_DIR` computes it)."
        )
        return None
    rows = []
    for key in ("reference", "data"):
        r = fg.get(key)
        if r:
            doc.note(r["message"], "warn" if r["warning"] else "ok")
            rows.append(
                [
                    r["name"],
                    f"{r['units']} texts, {r['tokens']:,} tokens",
                    _ci(r["base"], digits=3),
                    _ci(r["tuned"], digits=3),
                    _ci(r["relative_change"], pct=True),
                ]
            )
    doc.table(
        ["text", "size", "base perplexity [95% CI]", "tuned perplexity [95% CI]", "change [95% CI]"], rows
    )
    doc.p(
        f"Warning threshold: +{100 * fg['reference']['threshold']:.0f}% (eval.forgetting_threshold). The reference text "
        f"is eval.forgetting_text; name a second task dataset with eval.forgetting_data to check the tuned model "
        f"is still good at it."
    )
    return fg


def bias_section(doc: Doc, f: RunFiles) -> dict | None:
    doc.h2("Bias probe")
    b = f.bias
    if not b:
        doc.p("Not run (eval.bias is false, or the run predates it: `tuneforge report RUN_DIR` computes it).")
        return None
    swaps = b["swaps"]
    top = swaps[0] if swaps and swaps[0]["n"] >= MIN_N else None
    if b["kind"] == "classifier":
        level = "warn" if top and top["flip_rate"] >= 0.05 and top["low"] > 0 else "ok"
    else:
        level = "warn" if top and "low" in top and not top["low"] <= 0 <= top["high"] else "ok"
    doc.note(b["summary"], level if swaps else "info")
    doc.p(
        f"Method: every held-out test input that mentions a listed term (up to {b['max_examples']} per category) "
        f"is rewritten with the terms of another group swapped in (whole words, case kept), and the model is run "
        f"on both. Inputs mentioning each category: "
        + ", ".join(f"{c} {n}" for c, n in b["mentions"].items())
        + f" of {b['texts']}."
    )
    moved = b["kind"] != "classifier" or any(s["flips"] or s["mean_abs_shift"] >= 0.01 for s in swaps)
    if swaps and moved:
        doc.image("bias", plots.bias_bars(swaps, b["kind"]), "bias probe")
    if swaps:
        if b["kind"] == "classifier":
            doc.table(
                ["category", "swap", "counterfactuals", "flipped", "flip rate [95% CI]", "mean |Δ p|"],
                [
                    [
                        s["category"],
                        f"{s['from']} → {s['to']}",
                        s["n"],
                        s["flips"],
                        f"{100 * s['flip_rate']:.1f}% [{100 * s['low']:.1f}%, {100 * s['high']:.1f}%]",
                        f"{s['mean_abs_shift']:.3f}",
                    ]
                    for s in swaps[:15]
                ],
            )
            ex = [
                [
                    e["swap"],
                    e["original"],
                    e["counterfactual"],
                    f"{e['before']} → {e['after']}; p({e['before']}) {e['p_before']:.2f} → {e['p_after']:.2f}",
                ]
                for e in b["examples"]
            ]
            head = ["swap", "original", "counterfactual", "prediction before → after"]
        else:
            has_base = "change" in swaps[0]
            doc.table(
                ["category", "swap", "counterfactuals", "Δ LL tuned", "Δ LL base", "tuned − base [95% CI]"],
                [
                    [
                        s["category"],
                        f"{s['from']} → {s['to']}",
                        s["n"],
                        f"{s['tuned_delta']:+.3f}",
                        f"{s['base_delta']:+.3f}" if has_base else "-",
                        f"{s['change']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]" if has_base else "-",
                    ]
                    for s in swaps[:15]
                ],
            )
            ex = [
                [
                    e["swap"],
                    e["original"],
                    e["counterfactual"],
                    f"{e['tuned_delta']:+.2f}",
                    f"{e['base_delta']:+.2f}" if e.get("base_delta") is not None else "-",
                ]
                for e in b["examples"]
            ]
            head = ["swap", "original", "counterfactual", "Δ LL tuned", "Δ LL base"]
            doc.p(
                "Δ LL is the log-likelihood (nats, summed over the text) of the swapped text minus the original's; "
                "names and words split into different numbers of tokens, so compare tuned with base rather than "
                "reading Δ LL alone."
            )
        if ex:
            doc.h3("Inputs that moved most")
            doc.table(head, ex)
    doc.p(
        "The term lists (gender words and pronouns, first names associated with different groups, nationalities) "
        "ship in tuneforge/resources/bias_terms.json; add your own with eval.bias_terms. Swaps are word-for-word, "
        "so some are ungrammatical (her → his where 'him' was meant); read the examples before drawing conclusions."
    )
    return {k: v for k, v in b.items() if k != "examples"}


def data_section(doc: Doc, f: RunFiles) -> dict:
    doc.h2("Data")
    d = f.data
    audit = d.get("audit")
    if audit:
        doc.note(f"Audit: {audit.get('headline', '')}", "warn" if audit.get("leaked") else "info")
    else:
        doc.p("The pre-flight data audit was not run (data.audit is false).")
    rows = []
    for split in ("train", "validation", "test"):
        s = d.get(split)
        if isinstance(s, dict):
            rows.append(
                [
                    split,
                    _num(s.get("examples")),
                    _num(s.get("truncated")),
                    _num(s.get("tokens")) if "tokens" in s else "-",
                ]
            )
    if rows:
        doc.table(["split", "examples", "truncated", "tokens"], rows)
    if f.lengths and any(f.lengths["splits"].values()):
        doc.image(
            "lengths",
            plots.length_histogram(
                f.lengths["splits"], f.lengths.get("max_length"), f.lengths.get("truncated")
            ),
            "token length histogram",
        )
        train = f.lengths["splits"].get("train") or []
        if train:
            doc.p(
                f"Training examples: median {int(np.median(train))} tokens, 95th percentile "
                f"{int(np.percentile(train, 95))}, longest {max(train)} (after truncation at "
                f"data.max_length = {f.lengths.get('max_length')})."
            )
    return {"audit_headline": (audit or {}).get("headline"), "splits": {r[0]: r[1:] for r in rows}}


def cost_section(doc: Doc, f: RunFiles) -> dict:
    doc.h2("Cost")
    s = f.summary
    if not s:
        doc.p("No run.json: training did not finish.")
        return {}
    secs = s.get("train_seconds") or 0
    ex_s = s["examples_seen"] / secs if secs else None
    tok_s = s["tokens_seen"] / secs if secs else None
    logged = [m for m in f.metrics if m.get("split") == "train" and m.get("examples_per_s")]
    step_ex = float(np.median([m["examples_per_s"] for m in logged])) if logged else None
    step_tok = float(np.median([m["tokens_per_s"] for m in logged])) if logged else None
    pct = 100 * s["trainable_parameters"] / max(1, s["total_parameters"])
    doc.table(
        ["measure", "value"],
        [
            ["wall time (whole run)", f"{s.get('wall_seconds', 0):,.1f} s"],
            ["training time (with validation)", f"{secs:,.1f} s for {s['steps']:,} optimizer steps"],
            ["examples seen", f"{s['examples_seen']:,}"],
            ["tokens seen (no padding)", f"{s['tokens_seen']:,}"],
            [
                "throughput over the training time",
                f"{ex_s:,.1f} examples/s, {tok_s:,.0f} tokens/s" if ex_s else "-",
            ],
            [
                "training-step throughput (median of logged windows)",
                f"{step_ex:,.1f} examples/s, {step_tok:,.0f} tokens/s" if step_ex else "-",
            ],
            ["peak memory (process RSS)", f"{s.get('peak_rss_mb', 0):,.0f} MB"],
            [
                "trainable parameters",
                f"{s['trainable_parameters']:,} of {s['total_parameters']:,} ({pct:.2f}%)",
            ],
            ["device", f"{s.get('device')} × {s.get('processes', 1)} process(es)"],
        ],
    )
    return {
        **s,
        "examples_per_s": ex_s,
        "tokens_per_s": tok_s,
        "step_examples_per_s": step_ex,
        "step_tokens_per_s": step_tok,
    }


def build_report(run_dir: str | Path, probes: bool = True, task=None) -> dict[str, Path]:
    """Write report.md, report.html and report.json into the run folder; returns their paths.

    With ``probes`` the missing probe files (bias, forgetting, ...) are computed first (this loads the model).
    """
    if probes and (Path(run_dir) / "model").exists():  # an unfinished run has no model to probe
        from tuneforge.report.probes import run_probes
        from tuneforge.run import Run

        run_probes(Run(run_dir), task, only_missing=True)
    f = RunFiles(run_dir)
    cfg = f.config
    samples = cfg.eval.bootstrap_samples
    is_lm = cfg.task != "classification"
    doc = Doc(f"tuneforge report: {f.path.name}")
    status = f.summary.get("status", "unfinished")
    when = (
        datetime.fromtimestamp((f.path / "run.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        if (f.path / "run.json").exists()
        else "-"
    )
    doc.p(
        f"Task {cfg.task} · model {cfg.model.name} · method {cfg.method.name} · data {cfg.data.train} · "
        f"{status} {when} · run folder {f.path}"
    )
    summary_at = len(doc.blocks)
    out: dict = {
        "run": str(f.path),
        "task": cfg.task,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "status": status,
        "bootstrap_samples": samples,
    }
    if f.eval is None:
        doc.h2("Base versus tuned")
        doc.note(
            "No eval.json: the run has not been evaluated. Run `tuneforge eval RUN_DIR`, then rebuild.",
            "warn",
        )
    elif is_lm:
        out["base_vs_tuned"] = lm_section(doc, f, samples)
    else:
        out["base_vs_tuned"] = classification_section(doc, f, samples)
    out["curves"] = curves_section(doc, f)
    out["forgetting"] = forgetting_section(doc, f, is_lm)
    out["bias"] = bias_section(doc, f)
    out["data"] = data_section(doc, f)
    out["cost"] = cost_section(doc, f)
    doc.h2("Configuration")
    doc.details("config.yaml", (f.path / "config.yaml").read_text())

    headlines = [(out.get("base_vs_tuned") or {}).get("headline"), out["curves"]["verdict"]["message"]]
    if out["forgetting"]:
        headlines.append(out["forgetting"]["reference"]["message"])
    if out["bias"]:
        headlines.append(out["bias"]["summary"])
    out["summary"] = [h for h in headlines if h]
    doc.blocks[summary_at:summary_at] = [("h2", "Summary"), ("ul", out["summary"])]
    md, html = write(doc, f.path, "report")
    (f.path / "report.json").write_text(json.dumps(out, indent=1, default=float))
    return {"markdown": md, "html": html, "json": f.path / "report.json"}


def finish_run(run, task=None) -> Path | None:
    """End of ``tuneforge train``: compute the probes the config enables and write the report.

    A failure here never loses the trained run: it is reported with the command that retries it.
    """
    from tuneforge.report.probes import run_probes
    from tuneforge.utils import console

    if not run.config.eval.report:
        return None
    try:
        run_probes(run, task)
    except Exception as e:  # the report is still written, without the probe that failed
        log.debug("probes failed", exc_info=True)
        console.print(
            f"[bold yellow]report:[/bold yellow] the bias/forgetting probes failed ({type(e).__name__}: {e}); "
            f"retry them with `tuneforge -v report {run.path} --recompute`.",
            highlight=False,
        )
    try:
        paths = build_report(run.path, probes=False)
    except Exception as e:  # the run itself is complete; the report can be rebuilt
        log.debug("report failed", exc_info=True)
        console.print(
            f"[bold yellow]report:[/bold yellow] could not be written ({type(e).__name__}: {e}). The run is "
            f"complete; retry with `tuneforge -v report {run.path}`.",
            highlight=False,
        )
        return None
    console.print(f"report: [bold]{paths['html']}[/bold]")
    return paths["html"]
