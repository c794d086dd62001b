"""The run folder's shared files, safe against crashes and a second writer.

- :class:`RunLock`: one training process per run folder (an exclusive ``flock`` on ``RUN/.lock``).
- :func:`new_run_dir`: a unique auto-named folder, even for two runs started in the same second.
- :class:`MetricsLog`: ``metrics.jsonl`` appended line by line; a torn last line (a crash mid-write) is
  ignored with a warning, garbage in the middle is an error naming the line.
- :func:`atomic_write_text` / :func:`atomic_write_json`: a file replaced whole or not at all.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or a new file inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` via a temporary file and a rename; fsync the file and its folder.

    The temporary file is ``.tmp-NAME-PID`` beside it (removed on an error; a checkpoint save also removes
    any ``.tmp-*`` a killed process left in ``checkpoints/``)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


# --- one writer per run folder --------------------------------------------------------------------------


class RunLock:
    """Exclusive, non-blocking lock on a run folder for as long as the ``with`` block runs.

    The lock is an ``flock`` on ``RUN/.lock`` (holding the owner's pid, host and start time for the message
    a second writer gets); the kernel releases it when the process ends, however it ends, so a killed run
    never leaves a stale lock. Take it on the main process only.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096)
            os.close(fd)
            raise TuneforgeError(self._in_use_message(owner)) from None
        except OSError as e:  # a file system without flock: go on unlocked rather than refuse to train
            log.warning("cannot lock %s (%s); nothing stops a second run from writing there", self.path, e)
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().isoformat(" ", "seconds"),
        }
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def _in_use_message(self, owner: bytes) -> str:
        try:
            info = json.loads(owner.decode())
            who = f"process {info['pid']} on {info['host']} since {info['since']}"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            who = "another process"  # it holds the lock but has not written its name yet
        return (
            f"run folder {self.run_dir} is in use by {who} (is it still training?); wait for it, "
            f"or stop it first."
        )

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_dir(root: Path, prefix: str) -> Path:
    """Create and return a new folder ``root/prefix-YYYYmmdd-HHMMSS`` (``-2``, ``-3`` ... when taken).

    The folder is created with ``mkdir(exist_ok=False)``, so two runs started in the same second (in two
    processes, or two machines sharing the disk) never get the same one.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise TuneforgeError(f"{root}: 10,000 runs named {base}-*; set output.name or clean up {root}.")


# --- metrics.jsonl --------------------------------------------------------------------------------------


_LISTENERS: dict[Path, list] = {}  # metrics.jsonl path -> callables that receive every appended record


def add_metrics_listener(path: Path, fn) -> None:
    """Call ``fn(record)`` after each record appended to the metrics.jsonl at ``path`` (in this process)."""
    _LISTENERS.setdefault(Path(path).resolve(), []).append(fn)


def remove_metrics_listener(path: Path, fn) -> None:
    """Stop calling ``fn`` for ``path`` (no error when it is not registered)."""
    fns = _LISTENERS.get(Path(path).resolve(), [])
    if fn in fns:
        fns.remove(fn)


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, appended as training goes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.warnings: list[str] = []  # what the last read() passed over

    def append(self, record: dict[str, Any]) -> None:
        """Add one record as a line, flushed. A torn last line left by a crash is removed first (it would
        otherwise become garbage in the middle of the file)."""
        with open(self.path, "ab+") as fh:
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.seek(0)
                    keep = fh.read().rfind(b"\n") + 1
                    log.warning("%s: removed a torn last line (a crash while writing?)", self.path)
                    fh.truncate(keep)
            fh.write((json.dumps(record) + "\n").encode())
            fh.flush()
        for listener in _LISTENERS.get(self.path.resolve(), ()):
            listener(record)  # the experiment trackers (train/trackers.py) see each record once it is on disk

    def read(self) -> list[dict[str, Any]]:
        """Every record. A garbled last line (a write cut short) is dropped with a warning; a garbled line
        before the last raises TuneforgeError naming the file and line."""
        self.warnings = []
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
        records: list[dict[str, Any]] = []
        for k, (number, raw) in enumerate(numbered):
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not an object")
            except (ValueError, UnicodeDecodeError) as e:
                if k == len(numbered) - 1:
                    warning = (
                        f"{self.path} line {number}: cut short or garbled (a crash while writing?); ignored"
                    )
                    self.warnings.append(warning)
                    log.warning("%s", warning)
                    continue
                raise TuneforgeError(
                    f"{self.path} line {number}: not a JSON record ({type(e).__name__}: {str(e)[:120]}). The "
                    f"file is damaged: delete that line (or the file, losing the metrics history) and retry."
                ) from None
            records.append(record)
        return records

    def truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Keep the records of steps <= ``step`` (on resume: later ones will be logged again) and drop a
        torn last line; the file is replaced atomically. Returns the records kept."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        if self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` ([] when it does not exist); see :meth:`MetricsLog.read`."""
    return MetricsLog(path).read()
