"""The dashboard in a real browser: Playwright drives Debian's headless Chromium (``executable_path``; nothing is
downloaded). Log in (and fail with a wrong key), see runs started from the CLI, watch a curve grow while a
run trains, open a report with every plot visible, compare two runs, see an upload's bad line, submit and
cancel a job.

Screenshots go to ``$TUNEFORGE_ARTIFACTS`` (default: a pytest temporary folder, printed). With
``TUNEFORGE_DOCS_IMAGES=1`` the run page and compare screenshots also replace docs/img/dashboard-run.png and
docs/img/dashboard-compare.png (``make dashboard-images`` or
``TUNEFORGE_DOCS_IMAGES=1 pytest tests/test_dashboard_browser.py``).

The tests that need the service itself (upload, jobs) run against ``tuneforge.serve.app.create_app``; the
others use the dashboard router alone with a small context (tests/dashboard_fixtures.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import sentiment_rows
from dashboard_fixtures import dead_pid, make_app, make_ctx, write_run
from helpers import tiny_cfg

import tuneforge

ROOT = Path(__file__).parent.parent
# Debian's chromium-headless-shell or chromium (.ci/run installs the former and sets TUNEFORGE_REQUIRE_BROWSER)
CHROMIUM = (
    shutil.which("chromium-headless-shell") or shutil.which("chromium") or "/usr/bin/chromium-headless-shell"
)
HAVE_SERVICE = (ROOT / "src" / "tuneforge" / "serve" / "app.py").exists()


def _need_browser() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
            pytest.fail(
                "headless Chromium is required here but not installed (apt-get install chromium-headless-shell)"
            )
        pytest.skip("headless Chromium (Debian package chromium-headless-shell) not installed")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = Path(os.environ.get("TUNEFORGE_ARTIFACTS") or tmp_path_factory.mktemp("dashboard-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {out}")
    return out


def shot(page, artifacts: Path, name: str, docs: str | None = None, docs_full: bool = False) -> Path:
    """A full-page screenshot as a test artifact (and as the README's image when TUNEFORGE_DOCS_IMAGES=1)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path = artifacts / f"{name}.png"
    try:  # an artifact, not a check: a page kept busy by a training job on 2 cores may not settle in 30 s
        page.screenshot(path=str(path), full_page=True, timeout=90_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(path), timeout=90_000)  # the viewport only
    if docs and os.environ.get("TUNEFORGE_DOCS_IMAGES"):
        target = ROOT / "docs" / "img" / docs
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=docs_full)
    return path


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn on 127.0.0.1 in a thread, for as long as the fixture holds it."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the dashboard server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def home(tiny_bert, tmp_path_factory):
    """A home with two finished CLI runs (tiny BERT, different learning rates) and a killed one."""
    home = tmp_path_factory.mktemp("dashboard-home")
    data = home / "data.jsonl"
    rows = sentiment_rows(320 if os.environ.get("TUNEFORGE_DOCS_IMAGES") else 160)
    for i, r in enumerate(rows):  # the bias probe has something to swap, so the report has all its plots
        r["text"] = ("he liked " if i % 3 else "she hated ") + r["text"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the README's pictures show a real bundled model that learns (slower); the tests a tiny random one
    docs = bool(os.environ.get("TUNEFORGE_DOCS_IMAGES"))
    steps, model = (60, "minilm-l6") if docs else (16, tiny_bert)
    for name, lr in (("lr-high", 1e-4 if docs else 3e-3), ("lr-low", 2e-5 if docs else 1e-3)):
        cfg = tiny_cfg(
            model, str(data), home / "runs", training={"max_steps": steps, "eval_every": steps // 6, "lr": lr}
        )
        cfg["output"]["name"] = name
        tuneforge.train(cfg)
    write_run(home / "runs" / "crashed", finished=False, lock={"pid": dead_pid()}, log="step 3\nKilled\n")
    return home


@pytest.fixture(scope="module")
def dash(home):
    ctx, key = make_ctx(home)
    ctx.file_list["alpha"] = [{"id": "file-bad", "filename": "bad.jsonl", "status": "error", "bytes": 64}]
    ctx.audits["file-bad"] = {
        "status": "error",
        "status_details": "bad.jsonl (messages): 1 row(s) cannot be read: line 2: not valid JSON (Expecting value). "
        "Fix or delete these lines.",
        "audit": None,
    }
    with LiveServer(make_app(ctx)) as server:
        yield server, ctx, key


def _login(page, url: str, key: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url
    page.fill("#key", key)
    page.click("#login-button")
    page.wait_for_selector("#project")  # a page of the dashboard, not the login page


def test_login_with_a_key_fails_with_a_wrong_one_and_lists_cli_runs(browser, dash, artifacts):
    server, ctx, key = dash
    page = browser.new_page()
    page.goto(server.url + "/runs/lr-high")
    assert "/login?next=/runs/lr-high" in page.url
    page.fill("#key", "tf-not-a-key")
    page.click("#login-button")
    assert "not valid" in page.inner_text("#login-error")
    shot(page, artifacts, "login-refused")
    page.fill("#key", key)
    page.click("#login-button")
    page.wait_for_selector("#chart-loss")
    assert page.url.endswith("/runs/lr-high")  # back where the login started
    page.goto(server.url + "/")
    status = {
        tr.get_attribute("data-id"): tr.get_attribute("data-status")
        for tr in page.query_selector_all("#runs tbody tr")
    }
    assert status == {"lr-high": "succeeded", "lr-low": "succeeded", "crashed": "failed"}
    page.fill("#filter-text", "crash")
    assert [tr.is_visible() for tr in page.query_selector_all("#runs tbody tr")].count(True) == 1
    shot(page, artifacts, "runs")
    page.goto(server.url + "/runs/crashed")
    assert "Killed" in page.inner_text("#log-tail")
    page.close()


def test_run_page_has_curves_and_the_report_with_every_plot(browser, dash, artifacts):
    server, ctx, key = dash
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    _login(page, server.url, key)
    page.goto(server.url + "/runs/lr-high")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) > 10")
    page.wait_for_function("Number(document.getElementById('chart-metric').dataset.points) >= 4")
    frame = page.frame_locator("#report")
    frame.locator("img").first.wait_for()
    report = page.query_selector("#report").content_frame()
    report.wait_for_function("Array.from(document.images).every(i => i.complete)")
    sizes = report.evaluate(
        "Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().height])"
    )
    assert len(sizes) >= 4 and all(w > 200 and h > 100 and shown > 100 for w, h, shown in sizes), sizes
    text = report.inner_text("body")
    assert "Catastrophic forgetting" in text or "Bias probe" in text or "bias" in text.lower()
    assert "final model" in page.inner_text("#checkpoints")
    shot(page, artifacts, "run", docs="dashboard-run.png")
    page.close()


def test_a_curve_grows_while_the_run_trains(browser, dash, artifacts):
    """A run being written right now (the lock held by this process): the page's chart gains points from the
    event stream without a reload, and the page shows the end when the run finishes."""
    server, ctx, key = dash
    run = write_run(ctx.runs_dirs[0] / "live", steps=3, finished=False, lock={"pid": os.getpid()})
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("max_steps: 3", "max_steps: 12"))  # 3 of 12 steps done
    page = browser.new_page()
    _login(page, server.url, key)
    page.goto(server.url + "/runs/live")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) === 3")
    page.evaluate("window.__sameDocument = true")

    def train():
        for s in range(4, 13):
            with open(run / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": s, "epoch": s / 10, "split": "train", "loss": 1 / s}) + "\n")
            time.sleep(0.25)

    worker = threading.Thread(target=train)
    worker.start()
    counts = []
    for _ in range(12):
        counts.append(int(page.eval_on_selector("#chart-loss", "c => Number(c.dataset.points)")))
        time.sleep(0.25)
    worker.join()
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) === 12")
    assert counts == sorted(counts) and counts[0] < counts[-1] and len(set(counts)) >= 3, counts
    assert page.evaluate("window.__sameDocument") is True  # no reload while it trains
    assert page.inner_text("#run-step") == "12 / 12"
    shot(page, artifacts, "live-curve")
    summary = json.loads((run / "run.json").read_text()) | {
        "finished": True,
        "status": "completed",
        "steps": 12,
    }
    (run / "run.json").write_text(json.dumps(summary))
    page.wait_for_function("document.body.dataset.runStatus === 'succeeded'", timeout=10_000)
    page.close()


def test_compare_two_runs(browser, dash, artifacts):
    server, ctx, key = dash
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    _login(page, server.url, key)
    page.goto(server.url + "/compare")
    for rid in ("lr-high", "lr-low"):
        page.check(f"input[name=run][value='{rid}']")
    page.click("#compare-button")
    page.wait_for_selector("#config-diff")
    diff = page.inner_text("#config-diff")
    docs = bool(os.environ.get("TUNEFORGE_DOCS_IMAGES"))
    assert (
        "training.lr" in diff
        and ("0.0001" if docs else "0.003") in diff
        and ("2e-05" if docs else "0.001") in diff
    )
    results = page.inner_text("#compare-results")
    assert "test accuracy [95% CI]" in results and "overfitting verdict" in results
    page.wait_for_function("Number(document.getElementById('cmp-train').dataset.points) >= 16")
    page.wait_for_function("Number(document.getElementById('cmp-loss').dataset.points) >= 8")
    shot(page, artifacts, "compare", docs="dashboard-compare.png", docs_full=True)
    page.close()


def test_data_page_names_the_bad_line(browser, dash, artifacts):
    server, ctx, key = dash
    page = browser.new_page()
    _login(page, server.url, key)
    page.goto(server.url + "/data/file-bad")
    assert "line 2: not valid JSON" in page.inner_text(".file-error")
    shot(page, artifacts, "data-bad-line")
    page.close()


# ---- against the real service -------------------------------------------------------------------------------
service_only = pytest.mark.skipif(
    not HAVE_SERVICE, reason="needs the service (src/tuneforge/serve/app.py, issue #14), not written yet"
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The real service (API, worker and dashboard) in this process, with one project key."""
    from tuneforge.serve.app import create_app
    from tuneforge.serve.auth import create_key

    home = tmp_path_factory.mktemp("service-home")
    app = create_app(home, worker=True)
    key, _ = create_key(app.state.ctx.store, "alpha")
    with LiveServer(app) as server:
        yield server, key, home


@service_only
def test_upload_shows_the_audit_and_a_bad_line(browser, service, artifacts, tmp_path):
    server, key, home = service
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad.write_text(json.dumps(good) + "\n" + '{"messages": [oops\n' + json.dumps(good) + "\n")
    page = browser.new_page()
    _login(page, server.url, key)
    page.goto(server.url + "/jobs/new")
    page.set_input_files("#upload-file", str(bad))
    page.click("#upload-button")
    page.wait_for_selector("#upload-result .file-error, #upload-error", timeout=60_000)
    message = page.inner_text("#upload-result")
    assert "line 2" in message, message
    shot(page, artifacts, "upload-bad-line")
    page.close()


@service_only
def test_submit_watch_and_cancel_a_job(browser, service, artifacts, tiny_llama, tmp_path):
    """Upload a file, submit a LoRA job with options pasted as YAML, watch its loss curve grow on the run page
    (server-sent events), then cancel it from the page."""
    from serve_helpers import write_sft

    server, key, home = service
    data = write_sft(tmp_path / "train.jsonl", n=32)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    _login(page, server.url, key)
    page.goto(server.url + "/jobs/new")
    page.set_input_files("#upload-file", str(data))
    page.click("#upload-button")
    page.wait_for_selector("#audit[data-status=processed]", timeout=60_000)
    assert page.eval_on_selector("#training-file", "s => s.value").startswith("file-")
    page.fill("#job-model", str(tiny_llama))
    page.select_option("#tf-method", "lora")
    page.click("#job-form summary")
    page.fill(
        "#job-yaml",
        "training:\n  max_steps: 400\n  log_every: 1\n  save_every: 50\n  precision: fp32\n  compile: false\n"
        "eval:\n  forgetting: false\n  bias: false\n  baseline: false\nsft:\n  samples: 1\ndata:\n  max_length: 64\n",
    )
    page.click("#submit-job")
    page.wait_for_selector("#submitted", timeout=30_000)
    job_id = page.evaluate("document.body.dataset.jobId")
    shot(page, artifacts, "job-submitted")
    page.click("#submitted a")
    page.wait_for_selector("#chart-loss")
    page.wait_for_function(
        "Number(document.getElementById('chart-loss').dataset.points) >= 2", timeout=180_000
    )
    first = int(page.eval_on_selector("#chart-loss", "c => Number(c.dataset.points)"))
    page.wait_for_function(
        f"Number(document.getElementById('chart-loss').dataset.points) >= {first + 3}", timeout=60_000
    )
    assert page.inner_text("#run-status") == "running"
    shot(page, artifacts, "job-running")
    page.click("#job-cancel")
    page.wait_for_function(
        "document.getElementById('run-status').textContent === 'cancelled'", timeout=60_000
    )
    assert job_id and job_id in page.url
    shot(page, artifacts, "job-cancelled")
    page.close()
