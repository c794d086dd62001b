"""Clean, de-duplicate and split one data file, with a reason for every row dropped.

``prepare(spec, out_dir)`` writes into ``out_dir``:

- ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``: the kept rows, cleaned, in their original
  format and file order;
- ``rejects.jsonl``: every dropped row with its source (file:line), a reason code and a sentence;
- ``prepare.json``: counts (kept per split, rejected per reason, what cleaning changed) and settings.

Steps, in order: read (malformed lines are rejected) -> clean every string (Unicode NFC, control and
invisible characters removed, ends stripped) -> check fields (missing or empty fields, empty or null
turns; text that was only control characters) -> undecodable text (U+FFFD) -> pairs whose chosen equals
rejected, conversations without an assistant turn -> one spelling per label (``"Positive"`` and
``"positive"`` become the more common one) -> leakage into ``against`` files -> conflicting labels among
duplicates -> exact duplicates -> near-duplicates (first row kept) -> split, stratified by label, with
near-duplicate clusters kept in one split when they are not dropped.

Every row read is kept or rejected: ``rows_in`` = kept + rejected (a CSV record whose fields are all
empty is a row, rejected as ``empty_field``; a line of bytes that are not UTF-8 is rejected as
``bad_encoding``).

The same input and settings give byte-identical files: everything is in file order or seeded.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.audit import (
    CHAT_FORMATS,
    CONTROL,
    INVISIBLE,
    REPLACEMENT,
    check_row,
    example_label,
    example_strings,
    example_text,
    joined,
    label_key,
    load_source,
    resolve_format,
)
from tuneforge.data.dedup import NearDuplicates, UnionFind, exact_key, near_duplicates
from tuneforge.data.formats import Example
from tuneforge.data.io import Table, write_jsonl
from tuneforge.data.progress import shows_progress, track
from tuneforge.errors import DataError

REASONS = (
    "malformed",
    "missing_field",
    "empty_field",
    "empty_turn",
    "invalid_row",
    "unfixable_control_chars",
    "bad_encoding",
    "chosen_equals_rejected",
    "no_assistant_turn",
    "leakage",
    "conflicting_labels",
    "exact_duplicate",
    "near_duplicate",
)
SPLITS = ("train", "validation", "test")


@dataclass
class PrepareResult:
    """What ``prepare`` wrote and why rows were dropped."""

    out_dir: str
    source: str
    format: str
    rows_in: int
    kept: dict[str, int]
    rejected: dict[str, int]  # reason -> rows
    cleaned: dict[str, int]  # change -> kept rows it was applied to
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        kept = ", ".join(f"{k} {v:,}" for k, v in self.kept.items())
        rej = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.rejected.items()) or "none"
        fixed = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.cleaned.items()) or "nothing"
        return (
            f"{self.rows_in:,} rows ({self.format}) -> kept {sum(self.kept.values()):,} ({kept}); "
            f"rejected {sum(self.rejected.values()):,} ({rej}); cleaned: {fixed}."
        )


def clean_text(s: str) -> tuple[str, set[str]]:
    """NFC, control and invisible characters removed, ends stripped; returns the text and what changed."""
    changes: set[str] = set()
    t = unicodedata.normalize("NFC", s)
    if t != s:
        changes.add("unicode_nfc")
    if CONTROL.search(t):
        t = CONTROL.sub("", t)
        changes.add("control_chars")
    if INVISIBLE.search(t):
        t = INVISIBLE.sub("", t)
        changes.add("invisible_chars")
    stripped = t.strip()
    if stripped != t:
        changes.add("whitespace_stripped")
    return stripped, changes


def clean_value(value: Any, changes: set[str]) -> Any:
    """``clean_text`` applied to every string in a row value (nested lists and dicts too)."""
    if isinstance(value, str):
        t, c = clean_text(value)
        changes |= c
        return t
    if isinstance(value, list):
        return [clean_value(v, changes) for v in value]
    if isinstance(value, dict):
        return {k: clean_value(v, changes) for k, v in value.items()}
    return value


def split_groups(
    groups: list[list[int]],
    strata: list[str | None],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> list[str]:
    """Assign each group (of row positions) to train/validation/test, per stratum (label), seeded.

    Within each stratum the groups are shuffled and filled into test, then validation, until each holds its
    fraction of the stratum's rows; a group is never divided.
    """
    by_stratum: dict[str, list[int]] = {}
    for g, s in enumerate(strata):
        by_stratum.setdefault("" if s is None else str(s), []).append(g)
    rng = random.Random(seed)
    out = ["train"] * len(groups)
    for s in sorted(by_stratum):
        gs = by_stratum[s]
        rng.shuffle(gs)
        n = sum(len(groups[g]) for g in gs)
        want = {"test": round(n * test_fraction), "validation": round(n * validation_fraction)}
        have = {"test": 0, "validation": 0}
        for g in gs:
            for split in ("test", "validation"):
                if have[split] < want[split]:
                    out[g] = split
                    have[split] += len(groups[g])
                    break
    return out


def _load_one(spec: str | Path | Table) -> tuple[Table, str | None]:
    loaded = load_source(spec)
    if len(loaded) > 1:  # a bare bundled alias: prepare its training split
        loaded = [x for x in loaded if x[0] == "train"] or loaded[:1]
    _, table, hint, _ = loaded[0]
    return table, hint


class _Rows:
    """The rows that survive so far (cleaned), what is known about each, and every rejection and why."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.rows: list[dict[str, Any]] = []  # cleaned rows
        self.origin: list[int] = []  # index of each in the table
        self.examples: list[Example] = []
        self.texts: list[str] = []
        self.labels: list[str | None] = []
        self.changes: list[set[str]] = []
        self.alive: list[bool] = []
        self.rejects: list[tuple[int, dict[str, Any]]] = []  # (line, record)

    def line(self, i: int) -> int:
        return self.table.lines[self.origin[i]]

    def reject(self, line: int, reason: str, detail: str, row: Any = None, raw: str | None = None) -> None:
        rec = {"source": f"{self.table.path}:{line}", "reason": reason, "detail": detail, "row": row}
        if raw is not None:
            rec["raw"] = raw
        self.rejects.append((line, rec))

    def drop(self, i: int, reason: str, detail: str) -> None:
        """Reject a surviving row (the record keeps the row as it was in the file)."""
        self.alive[i] = False
        self.reject(self.line(i), reason, detail, self.table.rows[self.origin[i]])


def _read_and_clean(table: Table, fmt: str, text_column: str, label_column: str) -> _Rows:
    """Reject malformed rows and rows with missing/empty fields or undecodable text; clean the others."""
    r = _Rows(table)
    for b in table.bad:
        r.reject(b.line, b.code, b.reason, raw=b.raw)
    for i, row in enumerate(track(table.rows, "cleaning rows", len(table.rows))):
        line, where = table.lines[i], table.where(i)
        changes: set[str] = set()
        cleaned = clean_value(row, changes)
        ex, code, detail = check_row(cleaned, fmt, where, text_column, label_column)
        if ex is None:
            if (
                code in ("empty_field", "empty_turn")
                and check_row(row, fmt, where, text_column, label_column)[0]
            ):
                code, detail = "unfixable_control_chars", f"{detail} once control characters are removed"
            r.reject(line, code, detail, row)
        elif any(REPLACEMENT.search(s) for s in example_strings(ex)):
            detail = "U+FFFD replacement characters: bytes that were not UTF-8; re-export the file as UTF-8"
            r.reject(line, "bad_encoding", detail, row)
        elif fmt == "preference" and exact_key(joined(ex.chosen)) == exact_key(joined(ex.rejected)):
            r.reject(line, "chosen_equals_rejected", "chosen and rejected are the same text", row)
        elif fmt in CHAT_FORMATS and all(t["role"] != "assistant" for t in ex.messages + (ex.chosen or [])):
            r.reject(line, "no_assistant_turn", "the conversation has no assistant turn to learn from", row)
        else:
            r.rows.append(cleaned)
            r.origin.append(i)
            r.examples.append(ex)
            r.texts.append(example_text(ex, fmt))
            r.labels.append(example_label(ex, fmt))
            r.changes.append(changes)
            r.alive.append(True)
    return r


def _unify_label_spellings(r: _Rows, label_column: str) -> None:
    """Labels that differ only in case, spacing or number spelling (``label_key``) take the most common
    spelling (ties: the first seen); the row's label field is rewritten and the change counted."""
    counts = Counter(r.labels)
    best: dict[str, str] = {}
    for lab, _ in counts.most_common():
        if lab is not None:
            best.setdefault(label_key(lab), lab)
    for i, lab in enumerate(r.labels):
        if lab is not None and best[label_key(lab)] != lab:
            r.labels[i] = r.examples[i].label = best[label_key(lab)]
            r.rows[i][label_column] = r.labels[i]
            r.changes[i].add("label_spelling")


def _drop_leaks(r: _Rows, nd: NearDuplicates, keys: list[str], other_where: list[str]) -> None:
    """Drop rows that exactly or nearly duplicate a row of the ``against`` files (indices from ``n`` on)."""
    n = len(r.texts)
    other_keys = {k: n + j for j, k in reversed(list(enumerate(keys[n:]))) if k}  # first row of each text
    best: dict[int, tuple[int, float]] = {}  # row -> most similar verified partner in the other files
    for i, j, s in nd.pairs:
        if i < n <= j and s > best.get(i, (0, -1.0))[1]:
            best[i] = (j, s)
    in_cluster: dict[int, int] = {}  # cluster -> its first row of the other files
    for j in range(n, len(keys)):
        in_cluster.setdefault(int(nd.cluster_of[j]), j)
    for i in range(n):
        c = int(nd.cluster_of[i])
        if keys[i] and keys[i] in other_keys:
            hit, how = other_keys[keys[i]], "exact duplicate"
        elif i in best:
            hit, how = best[i][0], f"near-duplicate (similarity {best[i][1]:.2f})"
        elif c >= 0 and c in in_cluster:
            hit = in_cluster[c]
            how = f"near-duplicate through other rows (similarity {nd.similarity(i, hit):.2f})"
        else:
            continue
        r.drop(i, "leakage", f"{how} of {other_where[hit - n]}")


def _duplicate_groups(r: _Rows, nd: NearDuplicates, keys: list[str]) -> list[list[int]]:
    """Groups of 2+ surviving rows that are exact or near-duplicates of each other, in file order."""
    uf = UnionFind(len(r.texts))
    first: dict[Any, int] = {}
    for i in range(len(r.texts)):
        if r.alive[i]:
            uf.union(first.setdefault(("key", keys[i]), i), i)
            if nd.cluster_of[i] >= 0:
                uf.union(first.setdefault(("cluster", int(nd.cluster_of[i])), i), i)
    return [g for g in ([i for i in g if r.alive[i]] for g in uf.groups()) if len(g) > 1]


def _drop_conflicts(r: _Rows, groups: list[list[int]], fmt: str, on_conflict: str) -> None:
    """Duplicates whose labels disagree (or preference pairs that also appear reversed)."""
    if fmt in ("classification", "kto"):
        for g in groups:
            counts = Counter(r.labels[i] for i in g).most_common()
            if len(counts) < 2:
                continue
            desc = ", ".join(f"line {r.line(i)}: {r.labels[i]!r}" for i in g[:6]) + (
                " ..." if len(g) > 6 else ""
            )
            keep = counts[0][0] if on_conflict == "majority" and counts[0][1] > counts[1][1] else None
            for i in g:
                if r.labels[i] != keep:
                    kept = f"; the majority label {keep!r} is kept" if keep is not None else ""
                    r.drop(i, "conflicting_labels", f"duplicates with different labels ({desc}){kept}")
    elif fmt == "preference":
        seen: dict[tuple[str, str, str], int] = {}
        for i, ex in enumerate(r.examples):
            p, c, rej = (exact_key(joined(t)) for t in (ex.messages, ex.chosen, ex.rejected))
            j = seen.get((p, rej, c))
            seen[(p, c, rej)] = i
            if j is not None and r.alive[i] and r.alive[j]:
                r.drop(j, "conflicting_labels", f"the same pair appears reversed at line {r.line(i)}")
                r.drop(i, "conflicting_labels", f"the same pair appears reversed at line {r.line(j)}")


def _drop_duplicates(
    r: _Rows, groups: list[list[int]], keys: list[str], nd: NearDuplicates, near: bool
) -> list[list[int]]:
    """Drop exact duplicates, then (if ``near``) near-duplicates, keeping the first row of each group.
    Returns the near-duplicate groups that were kept whole (when ``near`` is false)."""
    kept_of_key: dict[str, int] = {}
    for i in range(len(r.texts)):
        if r.alive[i] and kept_of_key.setdefault(keys[i], i) != i:
            r.drop(i, "exact_duplicate", f"exact duplicate of line {r.line(kept_of_key[keys[i]])}")
    whole = []
    for g in groups:
        g = [i for i in g if r.alive[i]]
        if len(g) > 1 and near:
            for i in g[1:]:
                detail = f"near-duplicate of line {r.line(g[0])} (similarity {nd.similarity(i, g[0]):.2f})"
                r.drop(i, "near_duplicate", detail)
        elif len(g) > 1:
            whole.append(g)
    return whole


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a folder that can be created: a clear error when it (or a parent) is a file."""
    out = Path(out_dir)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "exists and is a file" if p == out else f"is below the file {p}"
                raise DataError(
                    f"{out}: --out {what}; give a folder (new or existing) for the prepared files."
                )
            break
    return out


@shows_progress
def prepare(
    spec: str | Path | Table,
    out_dir: str | Path,
    fmt: str = "auto",
    text_column: str = "text",
    label_column: str = "label",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    near_dup_threshold: float = 0.8,
    drop_near_duplicates: bool = True,
    on_conflict: str = "drop",
    against: Sequence[str | Path | Table] = (),
) -> PrepareResult:
    """Clean, de-duplicate and split ``spec`` into ``out_dir`` (see the module docstring).

    ``on_conflict``: ``drop`` removes every row of a duplicate group whose labels disagree; ``majority``
    keeps the rows with the majority label when there is a strict majority. ``against``: files (e.g. an
    existing test set) whose exact and near-duplicates are removed as leakage.
    """
    if on_conflict not in ("drop", "majority"):
        raise DataError(f"on_conflict must be 'drop' or 'majority', got '{on_conflict}'.")
    for key, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 0.5:
            raise DataError(f"{key} must be in [0, 0.5), got {value}.")
    if not 0 < near_dup_threshold <= 1:
        raise DataError(
            f"near_dup_threshold must be in (0, 1] (0.8 is a good start), got {near_dup_threshold}."
        )
    check_out_dir(out_dir)
    table, hint = _load_one(spec)
    fmt = resolve_format(fmt, hint, table, text_column, label_column)

    r = _read_and_clean(table, fmt, text_column, label_column)
    if fmt == "classification":
        _unify_label_spellings(r, label_column)
    other_texts, other_where = [], []  # rows of the `against` files
    for other in against:
        t, _ = _load_one(other)
        for i, row in enumerate(t.rows):
            ex, _, _ = check_row(row, fmt, t.where(i), text_column, label_column)
            if ex is not None:
                other_texts.append(example_text(ex, fmt))
                other_where.append(t.where(i))
    texts = r.texts + other_texts
    nd = near_duplicates(texts, near_dup_threshold)  # one search: clusters span both
    keys = [exact_key(t) for t in texts]
    if other_texts:
        _drop_leaks(r, nd, keys, other_where)
    groups = _duplicate_groups(r, nd, keys)
    _drop_conflicts(r, groups, fmt, on_conflict)
    whole = _drop_duplicates(r, groups, keys, nd, drop_near_duplicates)

    # Split: kept near-duplicate groups stay whole; strata are the labels.
    survivors = [i for i in range(len(r.texts)) if r.alive[i]]
    grouped = {i for g in whole for i in g}
    units = sorted(whole + [[i] for i in survivors if i not in grouped])
    strata = [r.labels[g[0]] if fmt == "classification" else None for g in units]
    split_of = {
        i: s
        for g, s in zip(units, split_groups(units, strata, validation_fraction, test_fraction, seed))
        for i in g
    }
    return _write(r, out_dir, fmt, survivors, split_of, settings={
        "validation_fraction": validation_fraction, "test_fraction": test_fraction, "seed": seed,
        "near_dup_threshold": near_dup_threshold, "drop_near_duplicates": drop_near_duplicates,
        "on_conflict": on_conflict, "against": [str(a.path if isinstance(a, Table) else a) for a in against],
        "text_column": text_column, "label_column": label_column,
    })  # fmt: skip


def _write(r: _Rows, out_dir: str | Path, fmt: str, survivors: list[int], split_of: dict[int, str],
           settings: dict[str, Any]) -> PrepareResult:  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kept, labels = {}, {}
    for split in SPLITS:
        idx = [i for i in survivors if split_of[i] == split]
        write_jsonl(out / f"{split}.jsonl", [r.rows[i] for i in idx])
        kept[split] = len(idx)
        if fmt in ("classification", "kto"):
            labels[split] = dict(sorted(Counter(str(r.labels[i]) for i in idx).items()))
    r.rejects.sort(key=lambda x: x[0])
    write_jsonl(out / "rejects.jsonl", [rec for _, rec in r.rejects])
    reasons = Counter(rec["reason"] for _, rec in r.rejects)
    result = PrepareResult(
        out_dir=str(out),
        source=r.table.path,
        format=fmt,
        rows_in=len(r.table) + len(r.table.bad),
        kept=kept,
        rejected={k: reasons[k] for k in REASONS if reasons[k]},
        cleaned=dict(sorted(Counter(c for i in survivors for c in r.changes[i]).items())),
        labels=labels,
        settings=settings,
    )
    summary = {
        k: v for k, v in result.to_dict().items() if k != "out_dir"
    }  # identical wherever it is written
    (out / "prepare.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return result
