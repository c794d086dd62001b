"""Preference-pair findings: pairs whose chosen and rejected answers are the same text, and pairs that
also appear reversed (chosen and rejected swapped)."""

from __future__ import annotations

from tuneforge.data.audit.report import Finding, finding
from tuneforge.data.audit.rows import Flat, joined
from tuneforge.data.dedup import exact_key


def preference_findings(a: Flat) -> list[Finding]:
    out = []
    for k, name in enumerate(a.names):
        same, seen, reversed_pairs = [], {}, []
        for i in a.indices(k):
            ex = a.examples[i]
            p, c, r = (exact_key(joined(t)) for t in (ex.messages, ex.chosen, ex.rejected))
            if c == r:
                same.append(i)
            if (p, r, c) in seen:
                reversed_pairs.append((seen[(p, r, c)], ex.source))
            seen[(p, c, r)] = ex.source
        if same:
            what = f"{len(same):,} pairs with identical chosen and rejected"
            examples = [a.row(i) for i in same[:5]]
            out.append(finding("chosen_equals_rejected", name, what, a.where(same), examples))
        if reversed_pairs:
            what = (
                f"{len(reversed_pairs):,} preference pairs also appear reversed (chosen and rejected swapped)"
            )
            rows = [w for pair in reversed_pairs for w in pair]
            examples = [{"rows": list(p)} for p in reversed_pairs]
            out.append(finding("conflicting_labels", name, what, rows, examples))
    return out
