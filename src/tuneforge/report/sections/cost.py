"""Cost: wall and training time, examples and tokens seen, throughput, memory, parameters, device (run.json,
and the logged training windows of metrics.jsonl)."""

from __future__ import annotations

import numpy as np

from tuneforge.report.files import RunFiles
from tuneforge.report.render import Doc


def build(doc: Doc, f: RunFiles) -> dict:
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
    rows = {
        "wall time (whole run)": f"{s.get('wall_seconds', 0):,.1f} s",
        "training time (with validation)": f"{secs:,.1f} s for {s['steps']:,} optimizer steps",
        "examples seen": f"{s['examples_seen']:,}",
        "tokens seen (no padding)": f"{s['tokens_seen']:,}",
        "throughput over the training time": f"{ex_s:,.1f} examples/s, {tok_s:,.0f} tokens/s"
        if ex_s
        else "-",
        "training-step throughput (median of logged windows)": (
            f"{step_ex:,.1f} examples/s, {step_tok:,.0f} tokens/s" if step_ex else "-"
        ),
        "peak memory (process RSS)": f"{s.get('peak_rss_mb', 0):,.0f} MB",
        "trainable parameters": f"{s['trainable_parameters']:,} of {s['total_parameters']:,} ({pct:.2f}%)",
        "device": f"{s.get('device')} × {s.get('processes', 1)} process(es)",
    }
    doc.table(["measure", "value"], [[k, v] for k, v in rows.items()])
    return {
        **s,
        "examples_per_s": ex_s,
        "tokens_per_s": tok_s,
        "step_examples_per_s": step_ex,
        "step_tokens_per_s": step_tok,
    }
