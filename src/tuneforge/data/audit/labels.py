"""Label findings: the distribution per split, imbalance, rare labels, labels that differ only in spelling
(an error: each spelling trains as its own class), labels of other splits never seen in training."""

from __future__ import annotations

from collections import Counter

from tuneforge.data.audit.report import Finding, SplitSummary, finding
from tuneforge.data.audit.rows import Flat

BOOLEAN_SPELLINGS = {"true": "1", "false": "0", "yes": "1", "no": "0"}


def label_key(label: object) -> str:
    """The form two spellings of one label share: case-folded, spaces collapsed, numbers canonical
    (``"1.0"`` -> ``"1"``), booleans as numbers (``"true"`` -> ``"1"``)."""
    s = " ".join(str(label).split()).casefold()
    try:
        f = float(s)
    except ValueError:
        return BOOLEAN_SPELLINGS.get(s, s)
    return str(int(f)) if f.is_integer() else repr(f)


def label_findings(a: Flat, summaries: list[SplitSummary]) -> list[Finding]:
    counts: list[Counter[str | None]] = []
    for k, s in enumerate(summaries):
        c = Counter(a.labels[i] for i in a.indices(k))
        s.labels = {str(lab): n for lab, n in sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0])))}
        s.imbalance = round(max(c.values()) / min(c.values()), 2) if c else None
        counts.append(c)
    out = []
    train, main = counts[0], a.names[0]
    ratio = summaries[0].imbalance
    if ratio and ratio >= 3:
        (top, n_top), (low, n_low) = train.most_common()[0], train.most_common()[-1]
        what = f"labels imbalanced {ratio:.1f}:1 ('{top}' {n_top:,} rows, '{low}' {n_low:,})"
        out.append(finding("imbalance", main, what, count=sum(train.values())))
    rare = [str(lab) for lab, n in train.items() if n < 5]
    if rare and len(train) > 1:
        what = f"{len(rare)} labels with fewer than 5 examples ({', '.join(rare[:5])})"
        out.append(finding("rare_label", main, what, count=sum(train[lab] for lab in rare)))
    folded: dict[str, list[str]] = {}
    for lab, _ in train.most_common():  # the most common spelling first
        folded.setdefault(label_key(lab), []).append(str(lab))
    variants = [v for v in folded.values() if len(v) > 1]
    if variants:
        minority = {lab for v in variants for lab in v[1:]}
        rows = [i for i in a.indices(0) if str(a.labels[i]) in minority]
        what = f"{len(rows):,} rows spell a label differently from the rest: " + "; ".join(
            " / ".join(f"{lab!r} ({train[lab]:,})" for lab in v) for v in variants[:5]
        )
        examples = [
            {"rows": a.where([i for i in rows if str(a.labels[i]) in v[1:]][:4]),
             "reason": f"{' / '.join(map(repr, v[1:]))} instead of {v[0]!r}"}
            for v in variants
        ]  # fmt: skip
        out.append(finding("label_variants", main, what, a.where(rows), examples))
    for k in range(1, len(a.names)):
        unseen = sorted(set(map(str, counts[k])) - set(map(str, train)))
        if unseen:
            rows = a.where([i for i in a.indices(k) if str(a.labels[i]) in unseen])
            what = f"{len(rows):,} rows with labels never seen in {main}: {', '.join(unseen[:10])}"
            out.append(finding("unseen_label", a.names[k], what, rows, main=main))
        missing = sorted(set(map(str, train)) - set(map(str, counts[k])))
        if missing and len(train) > 1:
            what = f"{len(missing)} labels of {main} never appear ({', '.join(missing[:10])})"
            out.append(finding("label_missing", a.names[k], what, count=0))
    return out
