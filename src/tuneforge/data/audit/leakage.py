"""Leakage findings: rows of the training split that exactly or nearly duplicate rows of a validation or
test split (an error: scores would be inflated), and overlaps between the other splits (a warning)."""

from __future__ import annotations

from collections.abc import Mapping

from tuneforge.data.audit.report import MAX_EXAMPLES, Finding, finding, loc
from tuneforge.data.audit.rows import Flat, source_of
from tuneforge.data.dedup import NearDuplicates


def leakage_findings(a: Flat, nd: NearDuplicates, specs: Mapping[str, str]) -> tuple[list[Finding], int]:
    """Rows of the main split that (near-)duplicate rows of another split; overlaps between the others."""
    cluster_splits: dict[int, set[int]] = {}
    key_splits: dict[str, set[int]] = {}
    for i, c in enumerate(nd.cluster_of.tolist()):
        if c >= 0:
            cluster_splits.setdefault(c, set()).add(int(a.split_of[i]))
        if a.keys[i]:
            key_splits.setdefault(a.keys[i], set()).add(int(a.split_of[i]))

    def overlaps(i: int, other: int) -> tuple[bool, bool]:  # (duplicates a row of `other`, exactly)
        exact = bool(a.keys[i]) and other in key_splits[a.keys[i]]
        c = int(nd.cluster_of[i])
        return exact or (c >= 0 and other in cluster_splits[c]), exact

    direct: dict[tuple[int, int], list[tuple[float, int, int]]] = {}  # verified pairs across splits
    for i, j, s in nd.pairs:
        si, sj = int(a.split_of[i]), int(a.split_of[j])
        if si != sj:
            direct.setdefault((min(si, sj), max(si, sj)), []).append((-s, *((i, j) if si < sj else (j, i))))
    out: list[Finding] = []
    leaked: set[int] = set()
    for m, main in enumerate(a.names):
        for o in range(m + 1, len(a.names)):
            other = a.names[o]
            hits = [(i, overlaps(i, o)[1]) for i in a.indices(m) if overlaps(i, o)[0]]
            if not hits:
                continue
            n_other = sum(overlaps(j, m)[0] for j in a.indices(o))
            exact = sum(e for _, e in hits)
            ranked = sorted(direct.get((m, o), []))  # most similar first
            shown = [p for p in ranked if p[0] <= -1][:2] + [p for p in ranked if p[0] > -1][
                :3
            ]  # copies and edits
            shown += [p for p in ranked if p not in shown][: MAX_EXAMPLES - len(shown)]
            examples = [a.pair(i, j, -s) for s, i, j in sorted(shown)]
            rows = a.where([i for i, _ in hits])
            what = f"{len(hits):,} {main} rows duplicate {n_other:,} {other} rows "
            what += f"({exact:,} exact, {len(hits) - exact:,} near)"
            if m == 0:
                leaked.update(i for i, _ in hits)
                main_src = specs.get(main) or loc(source_of([a.examples[hits[0][0]]])) or "TRAIN"
                other_src = specs.get(other) or loc(source_of([a.examples[a.indices(o)[0]]])) or "TEST"
                args = {"other": other, "main_src": main_src, "other_src": other_src}
                out.append(finding("leakage", f"{main} ↔ {other}", what, rows, examples, **args))
            else:
                out.append(
                    finding(
                        "split_overlap", f"{main} ↔ {other}", what, rows, examples, main=main, other=other
                    )
                )
            out[-1].split = main
    return out, len(leaked)
