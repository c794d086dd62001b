"""Data: the audit headline, split sizes and truncation (data.json), the token-length histogram (lengths.json)."""

from __future__ import annotations

import numpy as np

from tuneforge.report import plots
from tuneforge.report.files import RunFiles
from tuneforge.report.format import num
from tuneforge.report.render import Doc


def build(doc: Doc, f: RunFiles) -> dict:
    doc.h2("Data")
    d = f.data
    audit = d.get("audit")
    if audit:
        doc.note(f"Audit: {audit.get('headline', '')}", "warn" if audit.get("leaked") else "info")
    else:
        doc.p("The pre-flight data audit was not run (data.audit is false).")
    rows = [
        [
            name,
            num(s.get("examples")),
            num(s.get("truncated")),
            num(s.get("tokens")) if "tokens" in s else "-",
        ]
        for name, s in ((name, d.get(name)) for name in ("train", "validation", "test"))
        if isinstance(s, dict)
    ]
    if rows:
        doc.table(["split", "examples", "truncated", "tokens"], rows)
    lengths = f.lengths
    if lengths and any(lengths["splits"].values()):
        png = plots.length_histogram(lengths["splits"], lengths.get("max_length"), lengths.get("truncated"))
        doc.image("lengths", png, "token length histogram")
        train = lengths["splits"].get("train") or []
        if train:
            doc.p(
                f"Training examples: median {int(np.median(train))} tokens, 95th percentile "
                f"{int(np.percentile(train, 95))}, longest {max(train)} (after truncation at "
                f"data.max_length = {lengths.get('max_length')})."
            )
    return {"audit_headline": (audit or {}).get("headline"), "splits": {r[0]: r[1:] for r in rows}}
