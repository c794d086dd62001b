"""Data files a run read, with their sha256: recorded in run.json (lineage) and checked before a later run
reads them again (``--from`` replay, EWC, the old-task evaluation), so a changed or vanished file is named
instead of silently giving other rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tuneforge.data.bundled import is_bundled, resolve
from tuneforge.errors import DataError


def sha256(path: str | Path) -> str:
    """The sha256 of a file; of a folder (a bundled corpus of files), over its files' names and contents."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _file_of(spec: str) -> Path | None:
    """The file behind a data spec: the file itself, the file a bundled alias is read from, or None for an
    alias built from a package's many files (its rows are fingerprinted instead)."""
    if Path(spec).exists() or not is_bundled(spec):
        return Path(spec)
    path = Path(resolve(spec)[0].path)
    return path if path.is_file() else None


def rows_sha256(spec: str) -> str:
    """The sha256 of a bundled alias's rows as tuneforge reads them (stable JSON, in order)."""
    h = hashlib.sha256()
    for row in resolve(spec)[0].rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return h.hexdigest()


def data_files(d) -> list[dict]:
    """[{key, spec, path, sha256}] for data.train, data.validation and data.test (those set)."""
    out = []
    for key in ("train", "validation", "test"):
        spec = getattr(d, key)
        if key == "test" and not spec and ":" not in d.train and is_bundled(f"{d.train}:test"):
            from tuneforge.data.bundled import load_bundled

            spec = (
                f"{d.train}:test" if "test" in load_bundled(d.train) else None
            )  # the alias's own test split
        if not spec:
            continue
        path = _file_of(spec)
        if path is None:  # a bundled alias assembled from many files: the rows are what must not change
            out.append({"key": f"data.{key}", "spec": spec, "bundled": True, "sha256": rows_sha256(spec)})
            continue
        if not path.exists():
            raise DataError(f"data.{key}: {spec} not found.")
        out.append({"key": f"data.{key}", "spec": spec, "path": str(path.resolve()), "sha256": sha256(path)})
    return out


def check_data_files(recorded: list[dict], run_dir: str | Path) -> None:
    """Raise DataError naming each recorded file of ``run_dir`` that vanished or changed since that run."""
    problems = []
    for f in recorded:
        if f.get("bundled"):
            if rows_sha256(f["spec"]) != f["sha256"]:
                problems.append(f"{f['key']} (bundled {f['spec']}) has other rows since that run")
            continue
        path = Path(f["path"])
        if not path.exists():
            problems.append(f"{f['key']} {path} is gone")
        elif sha256(path) != f["sha256"]:
            problems.append(
                f"{f['key']} {path} changed since that run (sha256 {f['sha256'][:12]}... recorded)"
            )
    if problems:
        raise DataError(
            f"{run_dir}: the previous run's data cannot be read back as it was: "
            + "; ".join(problems)
            + ". Replay, EWC and the old-task evaluation need the rows that run trained and tested on: "
            "restore the file(s), or turn them off (continual.replay=0 continual.ewc=0) and accept that the "
            "old-task score is not measured."
        )
