"""``audit`` (files, prepared folders, bundled aliases) and ``audit_splits`` (examples already loaded):
run every family of findings and gather them into an ``AuditReport``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneforge.data.audit.chat import chat_findings
from tuneforge.data.audit.duplicates import duplicate_findings
from tuneforge.data.audit.labels import label_findings
from tuneforge.data.audit.leakage import leakage_findings
from tuneforge.data.audit.preference import preference_findings
from tuneforge.data.audit.report import (
    CHAT_FORMATS,
    LABELLED_FORMATS,
    AuditReport,
    Finding,
    SplitSummary,
    finding,
    sort_findings,
)
from tuneforge.data.audit.rows import Flat, Source, check_row, load_source, required_fields, source_of
from tuneforge.data.audit.text import text_findings
from tuneforge.data.audit.tokens import token_findings
from tuneforge.data.dedup import near_duplicates
from tuneforge.data.formats import FORMATS, Example, detect_format
from tuneforge.data.io import Table
from tuneforge.data.progress import shows_progress, track
from tuneforge.errors import DataError

COLUMN_FLAGS = (
    "If the text and label are in other columns, name them: --text-column NAME --label-column NAME "
    "(data.text_column / data.label_column in a config)."
)


def resolve_format(fmt: str, hint: str | None, table: Table, text_column: str, label_column: str) -> str:
    """The row format to audit or prepare: ``fmt``, or for "auto" the bundled dataset's ``hint`` or what the
    table's columns show; a clear error naming the column flags when nothing fits, or an unknown format."""
    if fmt == "auto":
        try:
            fmt = hint or detect_format(table, text_column, label_column)
        except DataError as e:
            raise DataError(f"{e}\n{COLUMN_FLAGS}") from None
    if fmt not in FORMATS:
        raise DataError(f"format '{fmt}' is unknown. Choose one of auto, {', '.join(FORMATS)}.")
    return fmt


@shows_progress
def audit(
    sources: Source | Sequence[Source] | Mapping[str, Source],
    fmt: str = "auto",
    text_column: str = "text",
    label_column: str = "label",
    tokenizer: Any = None,
    max_length: int | None = None,
    near_dup_threshold: float = 0.8,
    pii: bool = True,
    model_config: Any = None,
) -> AuditReport:
    """Audit a data file, or several: the first is the training data, the others are checked for leakage.

    ``sources``: a path, a prepared folder, a bundled alias (``20newsgroups`` = all its splits,
    ``20newsgroups:test`` one), a ``Table``, a list of these, or a mapping split name -> source.
    Malformed rows do not stop the audit: they are findings.
    """
    if isinstance(sources, Mapping):
        loaded = [
            (name, t, hint, spec) for name, src in sources.items() for _, t, hint, spec in load_source(src)
        ]
    else:
        items = [sources] if isinstance(sources, (str, Path, Table)) else list(sources)
        loaded = [x for src in items for x in load_source(src)]
    if not loaded:
        raise DataError("nothing to audit: give at least one data file.")
    names: list[str] = []
    for name, *_ in loaded:  # unique split names: test, test2, ...
        base, k = name, 2
        while name in names:
            name, k = f"{base}{k}", k + 1
        names.append(name)
    tables = {n: t for n, (_, t, _, _) in zip(names, loaded)}
    specs = {n: spec for n, (_, _, _, spec) in zip(names, loaded)}
    hint, first = loaded[0][2], tables[names[0]]
    fmt = resolve_format(fmt, hint, first, text_column, label_column)
    findings: list[Finding] = []
    splits: dict[str, list[Example]] = {}
    summaries: dict[str, SplitSummary] = {}
    for name, table in tables.items():
        missing = [c for c in (text_column, label_column) if c not in table.columns]
        if fmt == "classification" and table.rows and missing:
            raise DataError(
                f"{table.path}: column '{missing[0]}' not found (columns: {', '.join(table.columns)}). "
                f"Set --text-column / --label-column (data.text_column / data.label_column)."
            )
        if table is not first and hint is None and table.rows:
            try:
                other = detect_format(table, text_column, label_column)
            except DataError:
                other = "unknown"
            if other != fmt:
                findings.append(finding("format_mismatch", name, f"rows look like '{other}', not '{fmt}'",
                                        [table.path], count=len(table)))  # fmt: skip
        exs, problems = [], {}
        for i, row in enumerate(track(table.rows, f"checking rows of {name}", len(table.rows))):
            ex, code, detail = check_row(row, fmt, table.where(i), text_column, label_column)
            if ex is None:
                problems.setdefault(code, []).append((table.where(i), detail))
            else:
                exs.append(ex)
        splits[name] = exs
        unusable = sum(len(v) for v in problems.values())
        summaries[name] = SplitSummary(
            name, table.path, len(table) + len(table.bad), len(exs), len(table.bad), unusable
        )
        findings += _unreadable_findings(name, table)
        fields = ", ".join(required_fields(fmt, text_column, label_column))
        for code, items in problems.items():
            what = f"{len(items):,} rows with {code.replace('_', ' ')}s ({items[0][1]}, ...)"
            examples = [{"rows": [w], "reason": d} for w, d in items]
            findings.append(
                finding(code, name, what, [w for w, _ in items], examples, fmt=fmt, fields=fields)
            )
    report = audit_splits(
        splits, fmt, tokenizer, max_length, near_dup_threshold, pii, model_config, names[0], specs
    )
    for s in report.splits:
        pre = summaries[s.name]
        s.source, s.rows, s.malformed, s.unusable = pre.source, pre.rows, pre.malformed, pre.unusable
    report.findings = sort_findings(findings + report.findings)
    return report


def _unreadable_findings(name: str, table: Table) -> list[Finding]:
    """Lines that could not be read: malformed (bad JSON, wrong CSV field count) and not UTF-8."""
    out = []
    for code, what in (
        ("malformed", "malformed rows"),
        ("bad_encoding", "rows with bytes that are not UTF-8"),
    ):
        bad = [b for b in table.bad if b.code == code]
        if bad:
            where = [f"{b.path}:{b.line}" for b in bad]
            examples = [{"rows": [w], "text": b.raw, "reason": b.reason} for w, b in zip(where, bad)]
            out.append(finding(code, name, f"{len(where):,} {what}", where, examples))
    return out


@shows_progress
def audit_splits(
    splits: Mapping[str, list[Example]],
    fmt: str,
    tokenizer: Any = None,
    max_length: int | None = None,
    near_dup_threshold: float = 0.8,
    pii: bool = True,
    model_config: Any = None,
    main: str | None = None,
    specs: Mapping[str, str] | None = None,
) -> AuditReport:
    """Audit examples already loaded, per split (the training pre-flight).

    The split ``main`` (default: ``train`` if present, else the first) is the training data; every other
    split is checked for leakage against it (``report.leaked``) and against each other. ``specs`` names
    each split's source (file or alias:split) in the suggested commands.
    """
    if fmt not in FORMATS:
        raise DataError(f"format '{fmt}' is unknown. Choose one of {', '.join(FORMATS)}.")
    if not 0 < near_dup_threshold <= 1:
        raise DataError(
            f"near_dup_threshold must be in (0, 1] (0.8 is a good start), got {near_dup_threshold}."
        )
    if not splits:
        raise DataError("nothing to audit: no splits given.")
    main = main or ("train" if "train" in splits else next(iter(splits)))
    names = [main] + [n for n in splits if n != main]
    a = Flat([ex for n in names for ex in splits[n]], fmt, names, [len(splits[n]) for n in names])
    summaries = [SplitSummary(n, source_of(splits[n]), len(splits[n]), len(splits[n])) for n in names]
    nd = near_duplicates(a.texts, near_dup_threshold)  # the slow phase: progress bars inside
    findings = text_findings(a, pii) + duplicate_findings(a, nd, summaries)
    leak_findings, leaked = leakage_findings(a, nd, specs or {})
    findings += leak_findings
    if fmt == "preference":
        findings += preference_findings(a)
    if fmt in LABELLED_FORMATS:
        findings += label_findings(a, summaries)
    if fmt in CHAT_FORMATS:
        findings += chat_findings(a, summaries)
    lengths: dict[str, list[int]] = {}
    if tokenizer is not None:
        findings += token_findings(a, summaries, tokenizer, max_length, model_config, lengths)
    settings = {
        "near_dup_threshold": near_dup_threshold,
        "near_dup_method": f"MinHash ({nd.bands} bands x {nd.rows} rows) LSH over word sets; pairs verified: "
        f"word-set Jaccard >= {near_dup_threshold:g} and word-pair Jaccard >= {near_dup_threshold / 2:g}",
        "max_length": max_length,
        "pii": pii,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
    }
    return AuditReport(fmt, summaries, sort_findings(findings), leaked, settings, lengths)
