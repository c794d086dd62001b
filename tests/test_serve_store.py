"""The service's store, keys and upload checks without a server: claims are exclusive (SQLite and PostgreSQL),
leases hand a dead worker's job to another, keys are stored hashed, uploads are converted and located."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from tuneforge.serve.store import Store, database_url, new_id  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    pg = None
    if request.param == "postgres":
        from pg import start_postgres

        pg = start_postgres()
    s = Store(database_url(pg.url if pg else None, tmp_path))
    yield s
    s.close()
    if pg:
        pg.stop()


def _job(store, status="queued", **kw) -> str:
    jid = new_id("ftjob")
    store.add_job(id=jid, project="p", model="m", training_file="file-x", method={"type": "supervised"}, seed=0,
                  config={}, status=status, run_dir=f"runs/{jid}", **kw)  # fmt: skip
    time.sleep(0.002)  # distinct created_at: claims go oldest first
    return jid


def test_concurrent_claims_take_each_job_once(store):
    jobs = [_job(store) for _ in range(12)]
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(k: int) -> None:
        while (job := store.claim_job(f"w{k}", 30)) is not None:
            with lock:
                taken.append((job["id"], f"w{k}"))

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in taken) == sorted(jobs)
    for jid, worker in taken:
        row = store.job(None, jid)
        assert (row["status"], row["worker_id"], row["attempts"]) == ("running", worker, 1)


def test_oldest_first_and_finished_or_paused_jobs_are_not_claimed(store):
    _job(store, status="paused")
    _job(store, status="succeeded")
    first, second = _job(store), _job(store)
    assert store.claim_job("w", 30)["id"] == first
    assert store.claim_job("w", 30)["id"] == second
    assert store.claim_job("w", 30) is None


def test_an_expired_lease_hands_the_job_to_another_worker(store):
    jid = _job(store)
    assert store.claim_job("dead", 3.0)["id"] == jid
    assert store.claim_job("other", 30) is None  # the lease still runs
    time.sleep(3.2)
    job = store.claim_job("other", 30)
    assert (job["id"], job["worker_id"], job["attempts"]) == (jid, "other", 2)
    assert not store.update_job(jid, when={"worker_id": "dead"}, status="succeeded")  # the old worker lost it


def test_a_dead_local_worker_is_noticed_at_once(store):
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    jid = _job(store)
    assert store.claim_job(f"{socket.gethostname()}:{gone.pid}:ab", 3600)["id"] == jid
    assert store.claim_job("other", 30) is None
    assert store.expire_dead_workers() == 1
    assert store.claim_job("other", 30)["id"] == jid


def test_a_stopping_worker_keeps_a_resumed_job_until_its_child_exits(store):
    jid = _job(store)
    store.claim_job("w", 30)
    store.update_job(jid, status="paused")
    store.update_job(jid, status="queued")  # resumed while the old child still saves its checkpoint
    assert store.claim_job("other", 30) is None
    store.update_job(jid, when={"worker_id": "w"}, worker_id=None, lease_until=None)
    assert store.claim_job("other", 30)["id"] == jid


def test_keys_are_stored_hashed_and_sessions_end_with_their_key(tmp_path):
    from tuneforge.serve.auth import create_key, end_session, new_session

    store = Store(database_url(None, tmp_path))
    key, row = create_key(store, "team-a")
    assert key.startswith("tf-") and key not in (tmp_path / "tuneforge.db").read_bytes().decode(
        errors="replace"
    )

    class Ctx:
        pass

    ctx = Ctx()
    ctx.store = store
    assert new_session(ctx, "tf-wrong") is None
    token = new_session(ctx, key)
    from tuneforge.serve.auth import hash_secret

    assert store.session_project(hash_secret(token)) == "team-a"
    end_session(ctx, token)
    assert store.session_project(hash_secret(token)) is None
    token = new_session(ctx, key)
    store.revoke_key(row["prefix"])
    assert store.session_project(hash_secret(token)) is None and new_session(ctx, key) is None


def _upload(tmp_path: Path, rows: list) -> dict:
    from tuneforge.serve.files import inspect_upload

    path = tmp_path / "up.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return inspect_upload(path, "up.jsonl")


def test_openai_rows_are_converted(tmp_path):
    dpo = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
           "preferred_output": [{"role": "assistant", "content": "Hello."}],
           "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}  # fmt: skip
    out = _upload(tmp_path, [dpo] * 3)
    assert out["status"] == "processed" and out["format"] == "openai_dpo"
    assert out["converted"][0] == {"prompt": dpo["input"]["messages"], "chosen": dpo["preferred_output"],
                                   "rejected": dpo["non_preferred_output"]}  # fmt: skip
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                          {"role": "assistant", "content": "Hello.", "weight": 1}]}  # fmt: skip
    out = _upload(tmp_path, [parts])
    assert out["status"] == "processed" and out["converted"][0]["messages"][0]["content"] == "Hi there"


def test_unusable_rows_are_named_by_line(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    tool = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None,
                                                               "tool_calls": [{"id": "1"}]}]}  # fmt: skip
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "A cat."}]}  # fmt: skip
    out = _upload(tmp_path, [ok, tool, ok, image])
    assert out["status"] == "error"
    assert "line 2: messages[1] holds tool calls" in out["status_details"]
    assert "line 4: messages[0].content[0] is a 'image_url' part" in out["status_details"]
    dpo_missing = {"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": []}
    out = _upload(tmp_path, [dpo_missing])
    assert (
        out["status"] == "error"
        and "line 1: 'preferred_output' must be a non-empty list" in out["status_details"]
    )
    assert _upload(tmp_path, ["not json at all"])["status_details"].startswith(
        "up.jsonl: no readable examples (line 1"
    )


def test_auto_hyperparameters():
    from tuneforge.serve.jobs import auto_batch_size, auto_epochs, auto_multiplier

    assert [auto_epochs(n) for n in (10, 24, 50, 1000, 20000)] == [10, 5, 3, 3, 1]
    assert [auto_batch_size(n, "sft") for n in (10, 64, 300, 100000)] == [1, 2, 8, 16]
    assert auto_batch_size(100000, "dpo") == 8
    assert (
        auto_multiplier(8, 1e8) == 1.0 and auto_multiplier(8, 7e9) == 0.5 and auto_multiplier(32, None) == 2.0
    )
