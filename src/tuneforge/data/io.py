"""Read JSONL, JSON, CSV/TSV and Parquet files into rows, keeping each row's line number.

Malformed rows are never dropped silently: ``read_table`` collects them as ``BadRow`` (with the
file, the line and what is wrong) and ``strict=True`` (the default for training) raises a
``DataError`` that lists them and says how to fix them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
}


@dataclass
class BadRow:
    """A row that could not be read: where it is and why."""

    path: str
    line: int
    reason: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Table:
    """Rows of one file, each with the line (or row number) it came from."""

    path: str
    rows: list[dict[str, Any]]
    lines: list[int]
    bad: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"

    @property
    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for r in self.rows[:1000]:
            cols.update(dict.fromkeys(r))
        return list(cols)


def file_kind(path: str | Path) -> str:
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    kind = SUFFIXES.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise DataError(
            f"{p}: unknown file type '{''.join(p.suffixes) or '(none)'}'. "
            f"Use one of {', '.join(sorted(SUFFIXES))} (optionally .gz or .bz2), or a bundled alias (`tuneforge datasets`)."
        )
    return kind


def _open_text(p: Path) -> io.TextIOBase:
    raw = p.read_bytes()
    if p.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif p.suffix == ".bz2":
        raw = bz2.decompress(raw)
    return io.StringIO(raw.decode("utf-8", errors="replace"), newline="")


def read_table(path: str | Path, strict: bool = True, skip_lines: int = 0) -> Table:
    """Read a data file. ``strict`` raises on malformed rows; otherwise they are in ``table.bad``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found. Check the path (relative paths start at {Path.cwd()}).")
    if p.is_dir():
        raise DataError(f"{p}: is a folder; give a data file (.jsonl, .csv, .tsv, .parquet).")
    kind = file_kind(p)
    if kind == "parquet":
        table = _read_parquet(p)
    elif kind == "jsonl":
        table = _read_jsonl(p)
    elif kind == "json":
        table = _read_json(p)
    else:
        table = _read_csv(p, "\t" if kind == "tsv" else ",", skip_lines)
    if strict and table.bad:
        shown = "\n  ".join(str(b) for b in table.bad[:5])
        more = f"\n  ... and {len(table.bad) - 5} more" if len(table.bad) > 5 else ""
        raise DataError(
            f"{p}: {len(table.bad)} malformed row(s):\n  {shown}{more}\n"
            f"Fix or remove these lines, or run `tuneforge data prepare {p} --out DIR` to drop them with a report."
        )
    return table


def _read_jsonl(p: Path) -> Table:
    rows, lines, bad = [], [], []
    with _open_text(p) as fh:
        for n, line in enumerate(fh, start=1):
            s = line.strip()
            if not s:
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                bad.append(BadRow(str(p), n, f"not valid JSON ({e.msg} at column {e.colno})", s[:200]))
                continue
            if not isinstance(obj, dict):
                bad.append(
                    BadRow(str(p), n, f"expected a JSON object per line, got {type(obj).__name__}", s[:200])
                )
                continue
            rows.append(obj)
            lines.append(n)
    return Table(str(p), rows, lines, bad)


def _read_json(p: Path) -> Table:
    with _open_text(p) as fh:
        text = fh.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{p}:{e.lineno}: not valid JSON ({e.msg}). For one record per line use .jsonl."
        ) from None
    if isinstance(obj, dict):
        for key in ("data", "rows", "examples"):
            if isinstance(obj.get(key), list):
                obj = obj[key]
                break
    if not isinstance(obj, list):
        raise DataError(f"{p}: expected a JSON list of objects (or .jsonl with one object per line).")
    rows, lines, bad = [], [], []
    for i, r in enumerate(obj, start=1):
        if isinstance(r, dict):
            rows.append(r)
            lines.append(i)
        else:
            bad.append(BadRow(str(p), i, f"item {i} is a {type(r).__name__}, not an object"))
    return Table(str(p), rows, lines, bad)


def _read_csv(p: Path, delimiter: str, skip_lines: int) -> Table:
    rows, lines, bad = [], [], []
    with _open_text(p) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return Table(str(p), [], [], [])
        header = [h.strip() for h in header]
        for _ in range(skip_lines):
            next(reader, None)
        start = reader.line_num
        prev = start
        for fields in reader:
            line = prev + 1
            prev = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                bad.append(
                    BadRow(
                        str(p),
                        line,
                        f"has {len(fields)} fields, the header has {len(header)}",
                        delimiter.join(fields)[:200],
                    )
                )
                continue
            rows.append(dict(zip(header, fields)))
            lines.append(line)
    return Table(str(p), rows, lines, bad)


def _read_parquet(p: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p}: cannot read as Parquet ({e}).") from None
    return Table(str(p), rows, list(range(1, len(rows) + 1)), [])


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL (UTF-8, one object per line), atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(p)
