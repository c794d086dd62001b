"""`tuneforge keys` and the guards of `tuneforge serve`."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("fastapi")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_keys_create_list_revoke(tmp_path):
    from tuneforge.errors import TuneforgeError
    from tuneforge.serve.auth import create_key, hash_secret
    from tuneforge.serve.store import Store, database_url

    home = str(tmp_path)
    made = _cli("keys", "create", "--project", "team-a", "--home", home)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tf-") and len(key) > 30 and "shown once" in made.stderr
    listed = _cli("keys", "list", "--home", home)
    assert "team-a" in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    prefix = listed.stdout.split("\t")[1].removesuffix("...")
    assert key.startswith(prefix)
    assert _cli("keys", "revoke", prefix, "--home", home).returncode == 0
    store = Store(database_url(None, tmp_path))
    assert store.key_by_hash(hash_secret(key)) is None and store.keys()[0]["revoked_at"]
    with pytest.raises(TuneforgeError, match="project name"):
        create_key(store, "no/slashes")


def test_serve_refuses_a_public_address_without_keys(tmp_path):
    out = _cli("serve", "--host", "0.0.0.0", "--home", str(tmp_path))
    assert out.returncode == 2
    assert "no API keys" in out.stderr and "tuneforge keys create --project NAME" in out.stderr


def test_serve_refuses_a_negative_prompt_cache(tmp_path):
    out = _cli("serve", "--prompt-cache-mb", "-1", "--home", str(tmp_path))
    assert out.returncode == 2 and "--prompt-cache-mb must be 0 (off) or more" in out.stderr


def test_worker_starts_and_stops_on_sigterm(tmp_path):
    """`tuneforge worker` comes up (its banner) and a SIGTERM ends it cleanly."""
    import signal

    from serve_helpers import WorkerProc

    worker = WorkerProc(tmp_path).started()
    try:
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(60) == 0, worker.log_path.read_text()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()


def test_create_app_is_exported_lazily(tmp_path):
    import tuneforge.serve as serve

    app = serve.create_app(tmp_path, worker=False)
    paths = set(app.openapi()["paths"])
    assert {
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/models",
        "/v1/fine_tuning/jobs/{job_id}/events",
    } <= paths
    assert app.state.ctx.home == tmp_path.resolve()
