"""The result of an audit: ``Finding`` (one problem, with its rows), ``SplitSummary`` (figures per file)
and ``AuditReport``. Pure data: showing a report is ``tuneforge.data.audit.render``'s work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# error: breaks training or makes scores wrong; warning: likely hurts; info: worth knowing
SEVERITIES = ("error", "warning", "info")
MAX_WHERE = 10_000  # locations kept per finding (``count`` is always exact)
MAX_EXAMPLES = 5  # examples (pairs, groups) kept per finding
LABELLED_FORMATS = ("classification", "kto")
CHAT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference", "kto")
PREPARE = "`tuneforge data prepare`"

# code: (severity, what to do about it)
RULES: dict[str, tuple[str, str]] = {
    "malformed": ("error", f"Fix or delete these lines; {PREPARE} drops them into rejects.jsonl."),
    "missing_field": ("error", "Add the field (format '{fmt}' needs {fields}) or delete these rows."),
    "empty_field": ("error", f"Fill in or delete these rows; {PREPARE} drops them with a reason."),
    "empty_turn": ("error", f"Fill in or delete the empty (or null) turns; {PREPARE} drops these rows."),
    "invalid_row": ("error", "Fix the row structure (the reason is in the examples)."),
    "format_mismatch": ("error", "Give files of the same format."),
    "bad_encoding": (
        "error",
        f"Re-export the file as UTF-8 (the text of these rows is lost); {PREPARE} drops these rows.",
    ),
    "mojibake": (
        "warning",
        "Re-export the source as UTF-8, or repair the text (e.g. with the ftfy package).",
    ),
    "control_chars": ("warning", f"{PREPARE} removes them (or strip them in your export)."),
    "invisible_chars": ("info", f"{PREPARE} removes them."),
    "pii_email": ("warning", "Check you may train on personal data; mask them (e.g. <EMAIL>)."),
    "pii_phone": ("warning", "Check you may train on personal data; mask them (e.g. <PHONE>)."),
    "exact_duplicate": ("warning", f"Keep one copy: {PREPARE} drops the others."),
    "near_duplicate": (
        "warning",
        f"Keep one per group: {PREPARE} drops the rest; raise --near-dup-threshold if these differ in "
        "ways that matter.",
    ),
    "conflicting_labels": (
        "error",
        f"Decide the right label and fix or drop the others; {PREPARE} drops every row of a conflicting "
        "group (--on-conflict majority keeps the majority label).",
    ),
    "chosen_equals_rejected": (
        "error",
        f"Nothing can be learned from these pairs: fix or drop them ({PREPARE} drops them).",
    ),
    "leakage": (
        "error",
        "Scores on {other} would be inflated. Remove these rows: `tuneforge data prepare {main_src} "
        "--against {other_src} --out DIR`; or set data.allow_leakage: true to train anyway.",
    ),
    "split_overlap": (
        "warning",
        "Remove them from one of the two: choosing a model on {main} favours {other}.",
    ),
    "imbalance": (
        "warning",
        "Judge by macro-F1, not accuracy; consider class weights, resampling or more data.",
    ),
    "rare_label": ("warning", "Add examples, or merge or drop these labels."),
    "label_variants": (
        "error",
        f"Use one spelling per class: these spellings train as different classes now. {PREPARE} "
        "rewrites each to its most common spelling.",
    ),
    "unseen_label": ("error", "The model cannot predict them: add them to {main} or drop these rows."),
    "label_missing": ("info", "Scores for these labels cannot be measured on this split."),
    "no_assistant_turn": (
        "error",
        f"Nothing to learn from them: add the answer or drop them ({PREPARE} drops them).",
    ),
    "ends_with_user": (
        "warning",
        "The last user turn is never answered (nor trained on): drop it or answer it.",
    ),
    "repeated_role": ("warning", "Merge consecutive turns of one role; many chat templates reject them."),
    "late_system": ("warning", "Put the system prompt first; many chat templates reject it elsewhere."),
    "truncation": (
        "warning",
        "Raise data.max_length to {suggested} (covers 99%), or shorten the longest examples.",
    ),
}


@dataclass
class Finding:
    """One problem: how bad, what, where (file:line), what to do, and a few examples."""

    severity: str  # error | warning | info
    code: str  # stable identifier (the keys of RULES)
    what: str  # one line, with the count
    fix: str  # what to do about it
    count: int = 0  # rows affected
    split: str | None = None
    where: list[str] = field(default_factory=list)  # "file:line" of the affected rows (up to MAX_WHERE)
    # pairs {a, b, text_a, text_b, similarity} or groups {rows, text, labels} or rows {rows, reason | text}
    examples: list[dict[str, Any]] = field(default_factory=list)


def finding(
    code: str,
    split: str,
    what: str,
    where: Sequence[str] = (),
    examples: Sequence[dict[str, Any]] = (),
    count: int | None = None,
    severity: str | None = None,
    **fix_args: Any,
) -> Finding:
    """A ``Finding`` with the severity and fix of ``RULES[code]`` (``fix_args`` fill its placeholders)."""
    sev, fix = RULES[code]
    n = len(where) if count is None else count
    return Finding(
        severity or sev, code, f"{split}: {what}", fix.format(**fix_args), n, split,
        list(where[:MAX_WHERE]), list(examples[:MAX_EXAMPLES]),
    )  # fmt: skip


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info (stable)."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def loc(where: str) -> str:
    """A location for display: relative to the current folder; installed (bundled) data by file name only."""
    path, sep, line = where.rpartition(":")
    if not sep or not line.isdigit():
        path, line = where, ""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.relative_to(Path.cwd())
        except ValueError:
            p = Path(p.name) if "site-packages" in p.parts else p
    return f"{p}:{line}" if line else str(p)


@dataclass
class SplitSummary:
    """Figures for one file (split)."""

    name: str
    source: str
    rows: int  # rows read, malformed ones included
    examples: int  # rows that became usable examples
    malformed: int = 0  # unreadable lines (bad JSON or CSV, bytes that are not UTF-8)
    unusable: int = 0  # rows with missing or empty fields, empty turns, invalid structure
    exact_duplicates: int = 0  # copies beyond the first
    near_duplicates: int = 0  # near-copies beyond the first of each group (exact copies not counted again)
    conflicting_labels: int = 0  # rows in duplicate groups whose labels disagree
    labels: dict[str, int] | None = None
    imbalance: float | None = None  # most common / least common label count
    chat: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None


@dataclass
class AuditReport:
    """The result of an audit. ``findings`` are sorted by severity; ``leaked`` counts training rows that
    exactly or nearly duplicate a row of another split."""

    format: str
    splits: list[SplitSummary]
    findings: list[Finding]
    leaked: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict, repr=False)  # token lengths per split

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.splits)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def headline(self) -> str:
        """One line: rows, problems, leakage, imbalance, truncation, and how many errors and warnings."""
        train, many = self.splits[0], len(self.splits) > 1
        parts = [f"{self.rows:,} rows" + (f" in {len(self.splits)} splits" if many else "")]
        bad = sum(s.malformed + s.unusable for s in self.splits)
        if bad:
            parts.append(f"{bad:,} malformed/empty")
        parts.append(f"{sum(s.exact_duplicates for s in self.splits):,} exact dups")
        parts.append(f"{sum(s.near_duplicates for s in self.splits):,} near-dups")
        if self.format in LABELLED_FORMATS:
            parts.append(f"{sum(s.conflicting_labels for s in self.splits):,} conflicting labels")
        if many:
            parts.append(f"{self.leaked:,} leaked")
        if train.imbalance is not None:
            parts.append(f"imbalance {train.imbalance:.1f}")
        if train.tokens:
            parts.append(f"{train.tokens['truncated']:,} truncated at {train.tokens['max_length']}")
        parts.append(f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "headline": self.headline(),
            "format": self.format,
            "rows": self.rows,
            "leaked": self.leaked,
            "settings": self.settings,
            "splits": [asdict(s) for s in self.splits],
            "findings": [asdict(f) for f in self.findings],
        }
