"""Read JSONL, JSON, CSV/TSV and Parquet files into rows, keeping each row's line number.

Malformed rows are never dropped silently: ``read_table`` collects them as ``BadRow`` (with the
file, the line and what is wrong) and ``strict=True`` (the default for training) raises a
``DataError`` that lists them and says how to fix them.

Text is UTF-8 (a leading byte-order mark, as Excel's "CSV UTF-8" writes, is skipped). A line with bytes
that are not UTF-8 is a ``BadRow`` with code ``bad_encoding`` naming the line and column: it is never
read with U+FFFD replacement characters in place of the text.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.progress import track
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
CSV_FIELD_LIMIT = 64 * 2**20  # characters per CSV field (Python's default is 128 KiB)


@dataclass
class BadRow:
    """A row that could not be read: where it is and why."""

    path: str
    line: int
    reason: str
    raw: str = ""
    code: str = "malformed"  # malformed | bad_encoding

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


def _decompress(p: Path) -> bytes:
    """The file's bytes, decompressed for ``.gz`` / ``.bz2``; a clear error when they are not."""
    raw = p.read_bytes()
    suffix = p.suffix.lower()
    try:
        if suffix == ".gz":
            return gzip.decompress(raw)
        if suffix == ".bz2":
            return bz2.decompress(raw)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        kind = "gzip" if suffix == ".gz" else "bzip2"
        raise DataError(
            f"{p}: not a valid {kind} file ({e}). Compress it again, or remove the '{suffix}' suffix if the file "
            f"is not compressed."
        ) from None
    return raw


def _decode(raw: bytes) -> tuple[str, dict[int, str]]:
    """UTF-8 text (a leading BOM skipped) and ``{line: reason}`` for lines that are not UTF-8.

    Clean files take one strict decode; otherwise each line is decoded on its own, and a line with bad
    bytes keeps U+FFFD in its text only so that its neighbours can still be parsed: the reader rejects it.
    """
    try:
        return raw.decode("utf-8-sig"), {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, str] = {}
    parts = raw.split(b"\n")
    for n, line in enumerate(parts, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            col = len(line[: e.start].decode("utf-8", errors="replace")) + 1
            bad[n] = (
                f"bytes that are not UTF-8 (0x{line[e.start]:02X} at column {col}); re-export the file as UTF-8"
            )
            parts[n - 1] = line.decode("utf-8", errors="replace").encode("utf-8")
    return b"\n".join(parts).decode("utf-8-sig"), bad


def _open_text(p: Path) -> tuple[io.StringIO, dict[int, str], int]:
    """The decoded file, its undecodable lines and its number of lines (for the progress bar)."""
    text, bad = _decode(_decompress(p))
    return io.StringIO(text, newline=""), bad, text.count("\n") + 1


def read_table(path: str | Path, strict: bool = True, skip_lines: int = 0) -> Table:
    """Read a data file. ``strict`` raises on malformed rows; otherwise they are in ``table.bad``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found. Check the path (relative paths start at {Path.cwd()}).")
    if p.is_dir():
        raise DataError(f"{p}: is a folder; give a data file (.jsonl, .csv, .tsv, .parquet).")
    if not p.is_file():  # checked before opening: reading a named pipe would wait forever
        raise DataError(
            f"{p}: not a regular file (a named pipe, socket or device). tuneforge reads a data file more than "
            f"once; save the data to a file first (e.g. `cat {p} > data.jsonl`)."
        )
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
    fh, undecodable, total = _open_text(p)
    with fh:
        for n, line in enumerate(track(fh, f"reading {p.name}", total, every=5000), start=1):
            s = line.strip()
            if not s:
                continue
            if n in undecodable:
                bad.append(BadRow(str(p), n, undecodable[n], s[:200], "bad_encoding"))
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
    fh, undecodable, _ = _open_text(p)
    with fh:
        text = fh.read()
    if undecodable:
        n = min(undecodable)
        raise DataError(f"{p}:{n}: {undecodable[n]} ({len(undecodable)} such line(s)).")
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
    """Rows of a CSV/TSV file; a record whose fields are all empty is kept (as empty fields) so that it is
    reported, not skipped; blank lines are not records."""
    rows, lines, bad = [], [], []
    fh, undecodable, total = _open_text(p)
    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with fh:
            reader = csv.reader(track(fh, f"reading {p.name}", total, every=5000), delimiter=delimiter)
            header = _csv_header(p, reader)
            if header is None:
                return Table(str(p), [], [], [])
            for _ in range(skip_lines):
                next(reader, None)
            prev = reader.line_num
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise DataError(_csv_error(p, prev + 1, e)) from None
                line, prev = prev + 1, reader.line_num
                if not fields:
                    continue
                hit = next((n for n in range(line, prev + 1) if n in undecodable), None)
                if hit is not None:
                    raw = delimiter.join(fields)[:200]
                    bad.append(BadRow(str(p), line, undecodable[hit], raw, "bad_encoding"))
                elif len(fields) != len(header):
                    reason = f"has {len(fields)} fields, the header has {len(header)}"
                    bad.append(BadRow(str(p), line, reason, delimiter.join(fields)[:200]))
                else:
                    rows.append(dict(zip(header, fields)))
                    lines.append(line)
    finally:
        csv.field_size_limit(old_limit)
    return Table(str(p), rows, lines, bad)


def _csv_header(p: Path, reader: Any) -> list[str] | None:
    """The header row, stripped; a clear error when a column name appears twice."""
    try:
        header = next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        raise DataError(_csv_error(p, 1, e)) from None
    header = [h.strip() for h in header]
    first: dict[str, int] = {}
    for k, name in enumerate(header, start=1):
        if name in first:
            raise DataError(
                f"{p}:1: the header names column '{name}' twice (columns {first[name]} and {k}); a row "
                f"could only keep one of them. Rename one of the two columns."
            )
        first[name] = k
    return header


def _csv_error(p: Path, line: int, e: csv.Error) -> str:
    if "field larger than field limit" in str(e):
        return (
            f"{p}:{line}: a field is longer than {CSV_FIELD_LIMIT // 2**20} MiB, the most tuneforge reads "
            f"from one CSV field (often a quote that is never closed). Close the quote, shorten the text, "
            f"or write the data as JSONL."
        )
    return f"{p}:{line}: cannot read as CSV ({e}). Fix the quoting on that line, or write the data as JSONL."


def _read_parquet(p: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{p}: reading Parquet needs the package 'pyarrow' (`pip install pyarrow`)."
        ) from None

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
