"""Duplicate findings: exact duplicates, near-duplicates (``tuneforge.data.dedup``: MinHash/LSH, every pair
verified), and duplicates whose labels conflict. A group of 3 identical rows is 2 exact duplicates; a
near-duplicate group of 3 distinct texts is 2 near-duplicates (what ``data prepare`` drops)."""

from __future__ import annotations

from tuneforge.data.audit.report import LABELLED_FORMATS, MAX_EXAMPLES, Finding, SplitSummary, finding
from tuneforge.data.audit.rows import Flat
from tuneforge.data.dedup import NearDuplicates


def duplicate_findings(a: Flat, nd: NearDuplicates, summaries: list[SplitSummary]) -> list[Finding]:
    out: list[Finding] = []
    for k, name in enumerate(a.names):
        idx = a.indices(k)
        by_key: dict[str, list[int]] = {}
        for i in idx:
            by_key.setdefault(a.keys[i], []).append(i)
        groups = [g for g in by_key.values() if len(g) > 1 and a.keys[g[0]]]
        copies = [i for g in groups for i in g[1:]]
        # Near-duplicates: in each cluster (within this split), the first row of every further distinct
        # text is a near-copy; its own exact copies are already counted above.
        clusters: dict[int, list[int]] = {}
        for i in idx:
            if nd.cluster_of[i] >= 0:
                clusters.setdefault(int(nd.cluster_of[i]), []).append(i)
        near, near_groups = [], []
        for g in clusters.values():
            firsts = sorted({a.keys[i]: i for i in reversed(g)}.values())  # first row of each distinct text
            if len(firsts) > 1:
                near += firsts[1:]
                near_groups.append(firsts)
        # Conflicting labels: near-duplicate clusters (they contain the exact groups) or exact groups of
        # wordless text, whose labels disagree.
        conflicts: list[list[int]] = []
        identical = 0
        if a.fmt in LABELLED_FORMATS:
            clustered = {i for g in clusters.values() for i in g}
            for g in list(clusters.values()) + [g for g in groups if g[0] not in clustered]:
                if len({a.labels[i] for i in g}) > 1:
                    conflicts.append(g)
                    identical += any(len({a.labels[j] for j in h}) > 1 for h in _by_key(a, g))
            conflicts.sort()
        s = summaries[k]
        s.exact_duplicates, s.near_duplicates = len(copies), len(near)
        s.conflicting_labels = sum(len(g) for g in conflicts)
        if copies:
            what = f"{len(copies):,} exact duplicate rows ({len(groups):,} texts repeated)"
            out.append(
                finding("exact_duplicate", name, what, a.where(copies), [a.group(g) for g in groups[:5]])
            )
        if near:
            what = f"{len(near):,} near-duplicate rows in {len(near_groups):,} groups "
            what += f"(similarity >= {nd.threshold:g})"
            examples = [a.pair(g[0], g[1], nd.similarity(g[0], g[1])) for g in near_groups[:MAX_EXAMPLES]]
            out.append(finding("near_duplicate", name, what, a.where(near), examples))
        if conflicts:
            what = f"{s.conflicting_labels:,} rows in {len(conflicts):,} duplicate groups with conflicting "
            what += f"labels ({identical:,} with identical text)"
            rows = a.where([i for g in conflicts for i in g])
            examples = [a.group(g) for g in conflicts[:MAX_EXAMPLES]]
            # near-duplicates (not identical) may differ in a way that rightly flips the label
            sev = "error" if identical else "warning"
            out.append(finding("conflicting_labels", name, what, rows, examples, severity=sev))
    return out


def _by_key(a: Flat, group: list[int]) -> list[list[int]]:
    out: dict[str, list[int]] = {}
    for i in group:
        out.setdefault(a.keys[i], []).append(i)
    return list(out.values())
