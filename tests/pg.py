"""A throwaway PostgreSQL server for tests (Debian's postgresql 15: initdb and pg_ctl).

``start_postgres(tmp)`` runs initdb in a temporary folder and starts the server on a free port, listening on a
unix socket in that folder only (no TCP), as the ``postgres`` user when the tests run as root. Returns a
``Postgres`` with ``url`` (``postgresql://postgres@/postgres?host=...&port=...``) and ``stop()``. Without the
binaries the tests skip with the reason, unless ``TUNEFORGE_REQUIRE_POSTGRES=1``: then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("TUNEFORGE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _unavailable(reason: str):
    if os.environ.get("TUNEFORGE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (TUNEFORGE_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason} (install Debian's postgresql, as .ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    root: Path
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        _unavailable(f"{BIN}/initdb and pg_ctl are not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'tuneforge[postgres]')")
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            _unavailable("the tests run as root and runuser is missing")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
    os.chmod(root, 0o777)
    port = free_port()
    pg = Postgres(root, port, prefix)
    init = subprocess.run(
        [
            *prefix,
            str(BIN / "initdb"),
            "-D",
            str(root / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"initdb failed: {init.stderr.strip()[-400:]}")
    opts = f"-p {port} -k {root} -c listen_addresses='' -c fsync=off -c max_connections=100"
    start = subprocess.run(
        [
            *prefix,
            str(BIN / "pg_ctl"),
            "-D",
            str(root / "data"),
            "-o",
            opts,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if start.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else start.stderr
        pg.stop()
        _unavailable(f"the server did not start: {log.strip()[-400:]}")
    return pg
