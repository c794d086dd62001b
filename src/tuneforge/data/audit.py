"""Data audit: what is wrong with this data, where it is (file:line), and what to do about it.

``audit`` reads files or bundled aliases (the first is the data to train on, the others are compared
with it for leakage); ``audit_splits`` audits examples already loaded (the training pre-flight). Both
return an ``AuditReport``: a one-line ``headline()``, ``findings`` (severity, what, where, fix,
examples), ``render()`` for the terminal and ``write(dir)`` for ``audit.json`` and ``audit.html``.

What it checks:

- reading: format, row count, malformed rows, missing or empty fields, empty chat turns;
- text: undecodable bytes (U+FFFD), mojibake, control and invisible characters, and (optional)
  personal data: e-mail addresses and phone numbers;
- duplicates: exact duplicates, near-duplicates (``tuneforge.data.dedup``: MinHash/LSH, every pair
  verified), duplicates with conflicting labels, preference pairs that also appear reversed;
- leakage: rows of the training data that exactly or nearly duplicate rows of a validation/test split;
- classification: label distribution, imbalance ratio, rare labels, labels missing from a split;
- chat: turns and roles; conversations without an assistant turn, ending on a user turn, with
  repeated roles or a late system prompt;
- tokens (given a tokenizer): length percentiles, how many examples ``max_length`` truncates, and
  (given a model config) the activation memory that length implies.

Counting: a group of 3 identical rows is 2 exact duplicates (the copies beyond the first); a
near-duplicate group of 3 distinct texts is 2 near-duplicates. ``tuneforge data prepare`` drops
exactly those rows, so the two commands agree.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.audit_render import example_line, loc, render, write
from tuneforge.data.bundled import DATASETS, is_bundled, load_bundled
from tuneforge.data.dedup import NearDuplicates, exact_key, near_duplicates
from tuneforge.data.formats import FORMATS, Example, detect_format, to_example
from tuneforge.data.io import SUFFIXES, Table, read_table
from tuneforge.errors import DataError

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
    "empty_turn": ("error", f"Fill in or delete the empty turns; {PREPARE} drops these rows."),
    "invalid_row": ("error", "Fix the row structure (the reason is in the examples)."),
    "format_mismatch": ("error", "Give files of the same format."),
    "bad_encoding": ("warning", f"Re-export the file as UTF-8; {PREPARE} drops these rows."),
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
    "chosen_equals_rejected": ("error", "Nothing can be learned from these pairs: fix or drop them."),
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
    "label_variants": ("warning", "Normalise the spelling: these are different classes now."),
    "unseen_label": ("error", "The model cannot predict them: add them to {main} or drop these rows."),
    "label_missing": ("info", "Scores for these labels cannot be measured on this split."),
    "no_assistant_turn": ("error", "Nothing to learn from them: add the answer or drop them."),
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

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 except tab/newline/CR, DEL, C1
INVISIBLE = re.compile(r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")  # zero-width, bidi, BOM
REPLACEMENT = re.compile("\ufffd")  # what undecodable bytes became when the file was read
# UTF-8 read as Latin-1/cp1252: "Ã©" for "é", "â€™" for "’"
MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|Â[\u00a0-\u00bf]|â€")
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
RESERVED_DOMAIN = re.compile(
    r"@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|example|test|invalid|localhost)$", re.I
)  # RFC 2606
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (555) 867-5309
    r"|\d{3}[.-]\d{3,4}[.-]\d{4})(?!\w)"  # 555-867-5309
)
TEXT_CHECKS = {  # code: (pattern, what, needs non-ASCII text)
    "bad_encoding": (REPLACEMENT, "undecodable bytes (U+FFFD replacement characters)", True),
    "mojibake": (MOJIBAKE, "mojibake (UTF-8 read as Latin-1, e.g. 'Ã©' for 'é')", True),
    "control_chars": (CONTROL, "control characters", False),
    "invisible_chars": (INVISIBLE, "invisible characters (zero-width, bidi controls, BOM)", True),
}
PII_CHECKS = {"pii_email": (EMAIL, "e-mail addresses", False), "pii_phone": (PHONE, "phone numbers", False)}


# ---------------------------------------------------------------------------------------------- rows


def required_fields(fmt: str, text_column: str = "text", label_column: str = "label") -> tuple[str, ...]:
    """The fields a row of ``fmt`` must have, non-empty."""
    return {
        "classification": (text_column, label_column),
        "text": (text_column,),
        "messages": ("messages",),
        "sharegpt": ("conversations",),
        "alpaca": ("instruction", "output"),
        "prompt_completion": ("prompt", "completion"),
        "preference": ("prompt", "chosen", "rejected"),
        "kto": ("prompt", "completion", "label"),
    }[fmt]


def check_row(
    row: dict[str, Any], fmt: str, where: str, text_column: str = "text", label_column: str = "label"
) -> tuple[Example | None, str, str]:
    """Convert one row: ``(example, "", "")``, or ``(None, problem, detail)`` with problem one of
    ``missing_field``, ``empty_field``, ``empty_turn``, ``invalid_row``."""
    for key in required_fields(fmt, text_column, label_column):
        if key not in row:
            return None, "missing_field", f"missing field '{key}'"
        v = row[key]
        if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, dict)) and not v):
            return None, "empty_field", f"field '{key}' is empty"
    if fmt in ("classification", "text") and not isinstance(row[text_column], str):
        return None, "invalid_row", f"field '{text_column}' is a {type(row[text_column]).__name__}, not text"
    try:
        ex = to_example(row, fmt, where, text_column, label_column)
    except DataError as e:
        msg = str(e).split("\n")[0]
        return None, "invalid_row", msg.removeprefix(f"{where}: ")
    for turn in ex.messages + (ex.chosen or []) + (ex.rejected or []):
        if not turn["content"].strip():
            return None, "empty_turn", f"a '{turn['role']}' turn is empty"
    return ex, "", ""


def joined(turns: list[dict[str, str]] | None) -> str:
    """The contents of chat turns, one per line."""
    return "\n".join(t["content"] for t in turns or [])


def example_text(ex: Example, fmt: str) -> str:
    """The text compared for duplicates: the text; chat turns joined; prompt + chosen for preference pairs."""
    if fmt in ("classification", "text"):
        return ex.text or ""
    return "\n".join(s for s in (joined(ex.messages), joined(ex.chosen)) if s)


def example_label(ex: Example, fmt: str) -> str | None:
    """The label duplicates must agree on (classification label; kto desirable/undesirable)."""
    return ex.label if fmt in LABELLED_FORMATS else None


def example_strings(ex: Example) -> list[str]:
    """Every piece of text in an example (for the encoding, control-character and personal-data checks)."""
    return ([ex.text] if ex.text else []) + [
        t["content"] for t in ex.messages + (ex.chosen or []) + (ex.rejected or [])
    ]


# -------------------------------------------------------------------------------------------- report


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
    # pairs {a, b, text_a, text_b, similarity} or groups {rows, text, labels}
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


@dataclass
class SplitSummary:
    """Figures for one file (split)."""

    name: str
    source: str
    rows: int  # rows read, malformed ones included
    examples: int  # rows that became usable examples
    malformed: int = 0
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

    def render(self) -> Any:
        """A rich renderable: headline, files, findings (where, fix), labels, token lengths, examples."""
        return render(self)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``audit.json`` and ``audit.html`` (self-contained, plots embedded) into ``out_dir``."""
        return write(self, out_dir)


# --------------------------------------------------------------------------------------------- audit

Source = str | Path | Table


def load_source(spec: Source, strict: bool = False) -> list[tuple[str, Table, str | None, str]]:
    """A file, a prepared folder (its train/validation/test files), a ``Table``, ``alias:split`` or a
    bare alias (all its splits) -> ``[(split name, table, format hint, spec of that one split)]``."""
    if isinstance(spec, Table):
        return [(_split_name(spec.path), spec, None, spec.path)]
    s, p = str(spec), Path(spec)
    if p.is_dir():
        files = [f for n in ("train", "validation", "test") for f in sorted(p.glob(f"{n}.*")) if _readable(f)]
        if not files:
            raise DataError(f"{s}: a folder without train/validation/test data files; give a data file.")
        return [(_split_name(str(f)), read_table(f, strict=strict), None, str(f)) for f in files]
    if p.exists():
        return [(_split_name(s), read_table(s, strict=strict), None, s)]
    if is_bundled(s):
        name, _, split = s.partition(":")
        splits, hint = load_bundled(name), DATASETS[name].format
        if not split:
            return [(k, t, hint, f"{name}:{k}") for k, t in splits.items()]
        if split not in splits:
            raise DataError(f"bundled dataset '{name}' has splits {', '.join(splits)}, not '{split}'.")
        return [(split, splits[split], hint, s)]
    raise DataError(
        f"{s}: file not found, and not a bundled dataset. Bundled: {', '.join(DATASETS)} "
        f"(use alias:split, e.g. rotten-tomatoes:test)."
    )


def _readable(f: Path) -> bool:
    suffixes = [x for x in f.suffixes if x not in (".gz", ".bz2")]
    return bool(suffixes) and suffixes[-1] in SUFFIXES


def _split_name(path: str) -> str:
    stem = Path(path).name.split(".")[0].lower()
    for key, name in (("test", "test"), ("valid", "validation"), ("dev", "validation"), ("train", "train")):
        if key in stem:
            return name
    return stem or "data"


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
    if fmt == "auto":
        fmt = hint or detect_format(first, text_column, label_column)
    if fmt not in FORMATS:
        raise DataError(f"format '{fmt}' is unknown. Choose one of auto, {', '.join(FORMATS)}.")
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
        for i, row in enumerate(table.rows):
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
        if table.bad:
            where = [f"{b.path}:{b.line}" for b in table.bad]
            examples = [{"rows": [w], "text": b.raw, "reason": b.reason} for w, b in zip(where, table.bad)]
            findings.append(finding("malformed", name, f"{len(where):,} malformed rows", where, examples))
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
    report.findings = _sorted(findings + report.findings)
    return report


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
    a = _Flat([ex for n in names for ex in splits[n]], fmt, names, [len(splits[n]) for n in names])
    summaries = [SplitSummary(n, _source_of(splits[n]), len(splits[n]), len(splits[n])) for n in names]
    nd = near_duplicates(a.texts, near_dup_threshold)
    findings = _text_findings(a, pii) + _duplicate_findings(a, nd, summaries)
    leak_findings, leaked = _leakage_findings(a, nd, specs or {})
    findings += leak_findings
    if fmt == "preference":
        findings += _preference_findings(a)
    if fmt in LABELLED_FORMATS:
        findings += _label_findings(a, summaries)
    if fmt in CHAT_FORMATS:
        findings += _chat_findings(a, summaries)
    lengths: dict[str, list[int]] = {}
    if tokenizer is not None:
        findings += _token_findings(a, summaries, tokenizer, max_length, model_config, lengths)
    settings = {
        "near_dup_threshold": near_dup_threshold,
        "near_dup_method": f"MinHash ({nd.bands} bands x {nd.rows} rows) LSH over word sets; pairs verified: "
        f"word-set Jaccard >= {near_dup_threshold:g} and word-pair Jaccard >= {near_dup_threshold / 2:g}",
        "max_length": max_length,
        "pii": pii,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
    }
    return AuditReport(fmt, summaries, _sorted(findings), leaked, settings, lengths)


class _Flat:
    """All examples of all splits in one list, with what every check needs: texts, labels, exact keys."""

    def __init__(self, examples: list[Example], fmt: str, names: list[str], sizes: list[int]) -> None:
        self.examples, self.fmt, self.names = examples, fmt, names
        self.split_of = np.repeat(np.arange(len(names)), sizes)  # (N,) split index of each example
        self.texts = [example_text(ex, fmt) for ex in examples]
        self.labels = [example_label(ex, fmt) for ex in examples]
        self.keys = [exact_key(t) for t in self.texts]

    def indices(self, k: int) -> list[int]:
        return np.nonzero(self.split_of == k)[0].tolist()

    def where(self, idx: Sequence[int]) -> list[str]:
        return [self.examples[i].source for i in idx]

    def pair(self, i: int, j: int, similarity: float) -> dict[str, Any]:
        s = self.where([i, j])
        return {"a": s[0], "b": s[1], "text_a": self.texts[i][:300], "text_b": self.texts[j][:300],
                "similarity": round(similarity, 3)}  # fmt: skip

    def group(self, idx: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.where(idx[:10]), "text": self.texts[idx[0]][:300]}
        if self.fmt in LABELLED_FORMATS:
            out["labels"] = [self.labels[i] for i in idx[:10]]
        return out


def _source_of(exs: list[Example]) -> str:
    return exs[0].source.rsplit(":", 1)[0] if exs and exs[0].source else ""


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


_DIGIT = re.compile(r"\d")


def _text_findings(a: _Flat, pii: bool) -> list[Finding]:
    checks = {**TEXT_CHECKS, **(PII_CHECKS if pii else {})}
    hits: dict[tuple[int, str], list[tuple[str, str]]] = {}  # (split, code) -> [(where, snippet)]
    for i, ex in enumerate(a.examples):
        for s in example_strings(ex):
            ascii_only = s.isascii()
            for code, (pattern, _, non_ascii) in checks.items():
                if (non_ascii and ascii_only) or (code == "pii_email" and "@" not in s):
                    continue  # cheap pre-checks: most text is ASCII without '@'
                if code == "pii_phone" and not _DIGIT.search(s):
                    continue
                m = pattern.search(s)
                if code == "pii_email":  # documentation addresses (user@example.com) are not personal data
                    m = next((x for x in pattern.finditer(s) if not RESERVED_DOMAIN.search(x.group())), None)
                if m:
                    found = hits.setdefault((int(a.split_of[i]), code), [])
                    if not found or found[-1][0] != ex.source:
                        found.append((ex.source, s[max(0, m.start() - 30) : m.end() + 30]))
    out = []
    for (k, code), items in sorted(hits.items(), key=lambda kv: (kv[0][0], list(checks).index(kv[0][1]))):
        what = f"{len(items):,} rows with {checks[code][1]}"
        examples = [{"rows": [w], "text": repr(t)} for w, t in items]
        out.append(finding(code, a.names[k], what, [w for w, _ in items], examples))
    return out


def _duplicate_findings(a: _Flat, nd: NearDuplicates, summaries: list[SplitSummary]) -> list[Finding]:
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


def _by_key(a: _Flat, group: list[int]) -> list[list[int]]:
    out: dict[str, list[int]] = {}
    for i in group:
        out.setdefault(a.keys[i], []).append(i)
    return list(out.values())


def _leakage_findings(a: _Flat, nd: NearDuplicates, specs: Mapping[str, str]) -> tuple[list[Finding], int]:
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
                main_src = specs.get(main) or loc(_source_of([a.examples[hits[0][0]]])) or "TRAIN"
                other_src = specs.get(other) or loc(_source_of([a.examples[a.indices(o)[0]]])) or "TEST"
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


def _preference_findings(a: _Flat) -> list[Finding]:
    out = []
    for k, name in enumerate(a.names):
        same, seen, reversed_pairs = [], {}, []
        for i in a.indices(k):
            ex = a.examples[i]
            p, c, r = (exact_key(joined(t)) for t in (ex.messages, ex.chosen, ex.rejected))
            if c == r:
                same.append(ex.source)
            if (p, r, c) in seen:
                reversed_pairs.append((seen[(p, r, c)], ex.source))
            seen[(p, c, r)] = ex.source
        if same:
            what = f"{len(same):,} pairs with identical chosen and rejected"
            out.append(finding("chosen_equals_rejected", name, what, same))
        if reversed_pairs:
            what = (
                f"{len(reversed_pairs):,} preference pairs also appear reversed (chosen and rejected swapped)"
            )
            rows = [w for pair in reversed_pairs for w in pair]
            examples = [{"rows": list(p)} for p in reversed_pairs]
            out.append(finding("conflicting_labels", name, what, rows, examples))
    return out


def _label_findings(a: _Flat, summaries: list[SplitSummary]) -> list[Finding]:
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
    folded: dict[str, set[str]] = {}
    for lab in train:
        folded.setdefault(" ".join(str(lab).split()).casefold(), set()).add(str(lab))
    variants = [sorted(v) for v in folded.values() if len(v) > 1]
    if variants:
        what = "labels that differ only in case or spaces: " + "; ".join(
            " / ".join(map(repr, v)) for v in variants[:5]
        )
        out.append(finding("label_variants", main, what, count=sum(train[x] for v in variants for x in v)))
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


def _same_role(x: str, y: str) -> bool:
    return x == y != "system"


def _chat_findings(a: _Flat, summaries: list[SplitSummary]) -> list[Finding]:
    out = []
    checks = {  # code: (what, test on the sequence of roles)
        "no_assistant_turn": ("without an assistant turn", lambda r: "assistant" not in r),
        "ends_with_user": ("that end on a user turn", lambda r: r[-1] == "user" and "assistant" in r),
        "repeated_role": ("with two turns of one role in a row", lambda r: any(map(_same_role, r, r[1:]))),
        "late_system": ("with a system turn after the start", lambda r: "system" in r[1:]),
    }
    for k, name in enumerate(a.names):
        idx = a.indices(k)
        if not idx:
            continue
        convs = [a.examples[i].messages + (a.examples[i].chosen or []) for i in idx]
        roles = [[t["role"] for t in c] for c in convs]
        turns = np.asarray([len(c) for c in convs])  # (n,)
        summaries[k].chat = {
            "conversations": len(idx),
            "turns_mean": round(float(turns.mean()), 2),
            "turns_p50": int(np.median(turns)),
            "turns_max": int(turns.max()),
            "multi_turn": int((turns > 2).sum()),
            "roles": dict(Counter(r for rs in roles for r in rs).most_common()),
            "with_system": sum(1 for rs in roles if rs and rs[0] == "system"),
        }
        for code, (what, test) in checks.items():
            rows = [a.examples[i].source for i, rs in zip(idx, roles) if test(rs)]
            if rows:
                out.append(finding(code, name, f"{len(rows):,} conversations {what}", rows))
    return out


# -------------------------------------------------------------------------------------------- tokens


def token_lengths(examples: list[Example], fmt: str, tokenizer: Any, batch: int = 1000) -> list[int]:
    """Tokens per example as the model would see it (through the chat template when there is one)."""
    if fmt in ("classification", "text"):
        return _lengths(tokenizer, [ex.text or "" for ex in examples], batch)
    lengths = _conv_lengths([ex.messages + (ex.chosen or []) for ex in examples], tokenizer, batch)
    if fmt == "preference":
        rejected = _conv_lengths([ex.messages + (ex.rejected or []) for ex in examples], tokenizer, batch)
        lengths = [max(x, y) for x, y in zip(lengths, rejected)]
    return lengths


def _lengths(tokenizer: Any, texts: list[str], batch: int) -> list[int]:
    out: list[int] = []
    for s in range(0, len(texts), batch):
        ids = tokenizer(texts[s : s + batch], add_special_tokens=True, truncation=False, verbose=False)[
            "input_ids"
        ]
        out += [len(x) for x in ids]
    return out


def _conv_lengths(convs: list[list[dict[str, str]]], tokenizer: Any, batch: int) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        return _lengths(
            tokenizer, ["\n".join(f"{t['role']}: {t['content']}" for t in c) for c in convs], batch
        )
    out: list[int] = []
    for s in range(0, len(convs), batch):
        out += [
            len(x)
            for x in tokenizer.apply_chat_template(convs[s : s + batch], tokenize=True, return_dict=False)
        ]
    return out


def activation_memory(
    seq_len: int, config: Any, language_model: bool = True, bytes_per_value: int = 4
) -> dict:
    """Estimated activation memory of one training example of ``seq_len`` tokens (no gradient checkpointing).

    Per transformer layer ``s*h*(34 + 5*a*s/h)`` bytes at 16 bits per value (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models"), scaled to ``bytes_per_value``; the
    ``5*a*s/h`` term is the attention matrix, which fused (SDPA/flash) attention mostly avoids, so this is
    an upper bound. Language models add the fp32 logits and their gradient: ``2*s*V*4`` bytes.
    """
    h = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if not (h and layers and heads):
        return {}
    per_layer = seq_len * h * (34 + 5 * heads * seq_len / h) * bytes_per_value / 2
    logits = 2 * seq_len * vocab * 4 if language_model else 0
    total = layers * per_layer + logits
    return {
        "seq_len": seq_len, "bytes": int(total), "mib": round(total / 2**20, 1), "layers": layers,
        "hidden": h, "heads": heads, "vocab": vocab, "bytes_per_value": bytes_per_value,
        "logits_bytes": int(logits),
    }  # fmt: skip


def _token_findings(a, summaries, tokenizer, max_length, model_config, lengths_out) -> list[Finding]:
    out = []
    for k, name in enumerate(a.names):
        idx = a.indices(k)
        if not idx:
            continue
        lengths = np.asarray(token_lengths([a.examples[i] for i in idx], a.fmt, tokenizer))  # (n,)
        lengths_out[name] = lengths.tolist()
        limit = max_length or int(lengths.max())
        over = lengths > limit  # (n,) truncated
        p99 = int(np.percentile(lengths, 99))
        stats: dict[str, Any] = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
        stats.update(
            mean=round(float(lengths.mean()), 1), min=int(lengths.min()), max=int(lengths.max()),
            max_length=limit, truncated=int(over.sum()), truncated_pct=round(100 * float(over.mean()), 2),
            tokens_lost_pct=round(100 * float((lengths - limit).clip(0).sum() / max(lengths.sum(), 1)), 2),
            suggested_max_length=max(16, 1 << (max(p99, 1) - 1).bit_length()),  # next power of two over p99
        )  # fmt: skip
        if model_config is not None:
            stats["memory"] = _memory(
                limit, stats["suggested_max_length"], model_config, a.fmt != "classification"
            )
        summaries[k].tokens = stats
        if k == 0 and max_length and over.any():
            what = f"max_length {max_length} truncates {stats['truncated']:,} examples "
            what += f"({stats['truncated_pct']:.1f}%, {stats['tokens_lost_pct']:.1f}% of tokens)"
            rows = [a.examples[i].source for i, o in zip(idx, over.tolist()) if o]
            sev = "warning" if over.mean() > 0.01 else "info"
            out.append(
                finding("truncation", name, what, rows, severity=sev, suggested=stats["suggested_max_length"])
            )
    return out


def _memory(limit: int, suggested: int, config: Any, language_model: bool) -> dict[str, Any]:
    mem = activation_memory(limit, config, language_model)
    if not mem:
        return {}
    alt = activation_memory(suggested, config, language_model)
    mem["summary"] = (
        f"memory: ~{mem['mib']:,} MiB of activations per example at max_length {limit} "
        f"(~{alt['mib']:,} MiB at {suggested}, which covers 99% of examples); a batch multiplies it. "
        f"Estimate: {mem['layers']} layers x s*h*(34 + 5*a*s/h) bytes (h={mem['hidden']}, a={mem['heads']}; "
        "Korthikanti et al. 2022, fp32, no gradient checkpointing; an upper bound with fused attention)"
        + (f" + logits and their gradient, 2*s*V*4 bytes (V={mem['vocab']:,})." if language_model else ".")
    )
    return mem


# ---------------------------------------------------------------------------------------- pre-flight


def preflight(
    splits: Mapping[str, list[Example]],
    fmt: str,
    allow_leakage: bool = False,
    tokenizer: Any = None,
    max_length: int | None = None,
    near_dup_threshold: float = 0.8,
    model_config: Any = None,
    out_dir: str | Path | None = None,
    console: Any = None,
) -> AuditReport:
    """The training pre-flight: audit the splits, print the headline, write the report into ``out_dir``,
    and raise ``DataError`` on leakage into validation/test unless ``allow_leakage``."""
    report = audit_splits(splits, fmt, tokenizer, max_length, near_dup_threshold, model_config=model_config)
    if out_dir is not None:
        report.write(out_dir)
    if console is not None:
        console.print(f"[bold]data audit:[/bold] {report.headline()}")
        for f in report.errors[:5]:
            console.print(f"  [red]error[/red] {f.what}")
    if report.leaked and not allow_leakage:
        leak = next(f for f in report.findings if f.code == "leakage")
        shown = "".join(f"\n  {example_line(x)}" for x in leak.examples[:3])
        raise DataError(
            f"data audit: {leak.what}; test scores would be inflated.{shown}\n"
            f"Remove the overlap (`tuneforge data prepare TRAIN --against TEST --out DIR`), "
            f"or set data.allow_leakage: true to train anyway."
        )
    return report
