"""The dashboard's pages and streams (FastAPI TestClient, the real key store): login and sessions, the runs
table with CLI runs, a dead run shown as failed with its log, the live-curve stream, compare, the data
page naming a bad line, and the static files."""

import json
import os

import pytest
from dashboard_fixtures import dead_pid, make_app, make_ctx, write_run
from fastapi.testclient import TestClient

from tuneforge.serve.dashboard import audit_view
from tuneforge.serve.dashboard.runs import RunView, memory_line


@pytest.fixture
def env(tmp_path):
    ctx, key = make_ctx(tmp_path)
    client = TestClient(make_app(ctx), follow_redirects=False)
    return ctx, key, client


def login(client, key):
    r = client.post("/login", data={"key": key, "next": "/"})
    assert r.status_code == 303, r.text
    return r


def test_login_sets_a_strict_httponly_cookie_and_a_wrong_key_is_refused(env):
    ctx, key, client = env
    r = client.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
    r = client.get("/runs/x?a=1")
    assert r.headers["location"] == "/login?next=/runs/x%3Fa%3D1"
    bad = client.post("/login", data={"key": "tf-wrong", "next": "/"})
    assert (
        bad.status_code == 401
        and "not valid" in bad.text
        and "tuneforge_session" not in bad.headers.get("set-cookie", "")
    )
    r = client.post("/login", data={"key": key, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # only local paths are followed
    cookie = r.headers["set-cookie"].lower()
    assert "tuneforge_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/").status_code == 200
    assert client.get("/dashboard/runs.json").json() == {"data": []}
    client.post("/logout")
    assert client.get("/").status_code == 303
    assert client.get("/dashboard/runs.json").status_code == 401  # JSON endpoints answer 401, not a redirect


def test_runs_table_lists_jobs_and_cli_runs_newest_first(env):
    ctx, key, client = env
    write_run(ctx.runs_dirs[0] / "cli-run")
    job_dir = write_run(ctx.home / "jobs" / "ftjob-abc", steps=20, finished=False, lock={"pid": os.getpid()})
    (job_dir / "run.json").write_text(
        json.dumps({"status": "running", "started": "2026-12-02T09:00:00", "metric": "accuracy"})
    )
    ctx.job_list["alpha"] = [
        {
            "id": "ftjob-abc",
            "status": "running",
            "model": "minilm-l6",
            "created_at": 1,
            "run_dir": str(job_dir),
        }
    ]
    ctx.job_list["beta"] = [{"id": "ftjob-other", "status": "queued", "model": "x", "created_at": 2}]
    login(client, key)
    rows = client.get("/dashboard/runs.json").json()["data"]
    assert [r["id"] for r in rows] == ["ftjob-abc", "cli-run"]  # newest first; another project's job absent
    job, cli = rows
    assert job["status"] == "running" and job["progress"] == pytest.approx(1.0) and job["source"] == "job"
    assert cli["status"] == "succeeded" and cli["best"] == "accuracy 0.7500 @ 10" and cli["method"] == "full"
    html = client.get("/").text
    assert "cli-run" in html and "ftjob-abc" in html and 'id="filter-text"' in html


def test_a_killed_run_is_failed_with_its_last_log_lines(env):
    ctx, key, client = env
    log = "\n".join(f"line {i}" for i in range(100)) + "\nRuntimeError: out of memory\n"
    write_run(ctx.runs_dirs[0] / "killed", finished=False, lock={"pid": dead_pid()}, log=log)
    write_run(ctx.runs_dirs[0] / "alive", finished=False, lock={"pid": os.getpid()})
    write_run(ctx.runs_dirs[0] / "released", finished=False)  # lock emptied on an error exit
    (ctx.runs_dirs[0] / "released" / ".lock").write_text("")
    login(client, key)
    status = {r["id"]: r["status"] for r in client.get("/dashboard/runs.json").json()["data"]}
    assert status == {"killed": "failed", "alive": "running", "released": "failed"}
    page = client.get("/runs/killed").text
    assert "The run failed" in page and "RuntimeError: out of memory" in page and "line 99" in page
    assert "line 60" not in page  # only the last lines
    assert "tuneforge train --resume" in page


def test_the_stream_sends_every_record_so_far_then_the_end(env):
    ctx, key, client = env
    write_run(ctx.runs_dirs[0] / "done", steps=10)
    login(client, key)
    events = []
    with client.stream("GET", "/runs/done/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds == ["metrics", "status", "done"]
    assert len(events[0][1]) == 12 and events[2][1] == {"status": "succeeded"}
    # a reconnect with Last-Event-ID gets only what it has not seen
    with client.stream("GET", "/runs/done/stream", headers={"Last-Event-ID": "12"}) as r:
        body = "".join(r.iter_lines())
    assert "event: metrics" not in body and "event: done" in body


def test_run_page_shows_preflight_checkpoints_and_report(env):
    ctx, key, client = env
    run = write_run(ctx.runs_dirs[0] / "full")
    (run / "checkpoints" / "step-10").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "model" / "tuneforge_model.json").write_text('{"step": 10}')
    (run / "report.html").write_text("<html><body><h1>report</h1></body></html>")
    login(client, key)
    page = client.get("/runs/full").text
    assert "100 rows in 3 splits" in page and "~0.79 GB peak" in page
    assert "checkpoints/step-10" in page and "final model" in page
    assert 'src="/runs/full/report.html"' in page
    assert client.get("/runs/full/report.html").text.startswith("<html>")
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/runs/..%2F..%2Fetc").status_code in (303, 404)


def test_compare_two_runs(env):
    ctx, key, client = env
    write_run(ctx.runs_dirs[0] / "a", lr=1e-3)
    write_run(ctx.runs_dirs[0] / "b", lr=5e-4, seed=1)
    login(client, key)
    page = client.get("/compare?run=a&run=b").text
    assert 'id="config-diff"' in page and "training.lr" in page and "0.0005" in page
    assert "overfitting verdict" in page and "accuracy 0.7500 @ step 10" in page
    full = [ln for ln in page.splitlines() if "/compare/" in ln and ".html" in ln][0]
    key_ = full.split("/compare/")[1].split(".html")[0]
    assert "Configuration differences" in client.get(f"/compare/{key_}.html").text
    assert "pick at least two" in client.get("/compare?run=a").text
    assert "not runs of this project" in client.get("/compare?run=a&run=zzz").text


def test_data_page_names_the_bad_line(env):
    ctx, key, client = env
    ctx.file_list["alpha"] = [{"id": "file-1", "filename": "bad.jsonl", "status": "error", "bytes": 10}]
    ctx.audits["file-1"] = {
        "status": "error",
        "status_details": "bad.jsonl (messages): 1 row(s) cannot be read: line 3: not valid JSON. Fix or delete these lines.",
        "audit": {
            "headline": "4 rows · 1 malformed/empty",
            "splits": [
                {
                    "name": "train",
                    "rows": 4,
                    "examples": 3,
                    "malformed": 1,
                    "unusable": 0,
                    "exact_duplicates": 1,
                    "near_duplicates": 0,
                    "conflicting_labels": 0,
                    "imbalance": None,
                    "labels": None,
                    "chat": None,
                    "tokens": None,
                }
            ],
            "findings": [
                {
                    "severity": "error",
                    "code": "malformed",
                    "what": "train: 1 malformed line",
                    "fix": "Fix it.",
                    "where": ["bad.jsonl:3"],
                    "count": 1,
                }
            ],
            "leaked": 0,
        },
    }
    login(client, key)
    page = client.get("/data/file-1").text
    assert "line 3: not valid JSON" in page and "bad.jsonl:3" in page and "4 rows · 1 malformed/empty" in page
    assert client.get("/data/file-1?fragment=1").text.lstrip().startswith('<div class="audit"')
    assert client.get("/data/file-2").status_code == 404


def test_audit_view_reads_every_shape():
    assert audit_view({"errors": [{"line": 4, "message": "bad"}]})["errors"] == [
        {"line": 4, "message": "bad"}
    ]
    assert audit_view({"findings": [], "headline": "h"})["headline"] == "h"
    assert audit_view({"status": "processed", "audit": None})["errors"] == []


def test_static_files_and_nothing_else(env):
    ctx, key, client = env
    assert "TFChart" in client.get("/static/dashboard/chart.js").text
    assert client.get("/static/dashboard/..%2F__init__.py").status_code == 404
    assert client.get("/static/dashboard/runs.py").status_code == 404


def test_total_steps_from_epochs_and_memory_line(tmp_path):
    run = write_run(tmp_path / "r", steps=10, finished=False, lock={"pid": os.getpid()})
    cfg = (
        (run / "config.yaml")
        .read_text()
        .replace("max_steps: 10", "max_steps: null")
        .replace("epochs: 1", "epochs: 3")
    )
    (run / "config.yaml").write_text(cfg)
    view = RunView.read("r", run)
    assert view.status == "running" and view.total_steps == 30 and view.progress == pytest.approx(10 / 30)
    assert memory_line({"total": 2048.0, "weights": 1024.0, "available": 8192.0, "unit": "MB"}).startswith(
        "~2.00 GB peak of 8.0 GB available: weights 1.00"
    )


def test_playground_puts_base_left_and_tuned_right(env):
    ctx, key, client = env
    login(client, key)
    page = client.get("/playground").text
    left = page.split('id="model-left"')[1].split("</select>")[0]
    right = page.split('id="model-right"')[1].split("</select>")[0]
    assert "<option selected>tiny-base</option>" in left
    assert "<option selected>ft:tiny-base:demo:ftjob-1</option>" in right


def test_pasted_yaml_becomes_job_options_or_names_its_line(env):
    ctx, key, client = env
    login(client, key)
    ok = client.post("/dashboard/parse-yaml", content="training:\n  lr: 2e-4\nmethod:\n  name: lora\n")
    assert ok.json() == {"options": {"training": {"lr": "2e-4"}, "method": {"name": "lora"}}}
    bad = client.post("/dashboard/parse-yaml", content="training:\n  lr: [1\nmethod: x\n")
    assert bad.status_code == 400 and "line 3" in bad.json()["error"]["message"]
    assert client.post("/dashboard/parse-yaml", content="- a\n").status_code == 400
