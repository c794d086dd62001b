"""Driving a live ``tuneforge serve`` (and ``tuneforge worker``) in tests with the official openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pg import free_port  # noqa: F401  (tests import it from here)

# a job that trains in seconds: few steps, no bias or forgetting probes
FAST = {
    "training": {"max_steps": 4, "precision": "fp32", "compile": False, "log_every": 1, "save_every": 2},
    "eval": {"forgetting": False, "bias": False},
    "sft": {"samples": 1},
    "data": {"max_length": 64},
}
FINAL = ("succeeded", "failed", "cancelled")


def options(**training) -> dict:
    out = json.loads(json.dumps(FAST))
    out["training"].update(training)
    return out


def write_sft(path: Path, n: int = 24, offset: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(offset, offset + n):
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You add numbers."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]}) + "\n")  # fmt: skip
    return path


def write_openai_dpo(path: Path, n: int = 16) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({
                "input": {"messages": [{"role": "user", "content": f"Name the number after {i}."}]},
                "preferred_output": [{"role": "assistant", "content": f"{i + 1}."}],
                "non_preferred_output": [{"role": "assistant", "content": f"I do not know about {i}, sorry."}],
            }) + "\n")  # fmt: skip
    return path


def pace_file(home: Path) -> Path:
    """The file that paces training steps of every server and worker on ``home`` (see ``Server.pace``)."""
    return Path(home).parent / f"{Path(home).name}.pace"


class Server:
    """``tuneforge serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, home: Path, database: str | None = None, *args: str):
        self.home, self.database, self.args = Path(home), database, list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self.pace_file = pace_file(self.home)

    def pace(self, seconds: float | None):
        """Make every optimizer step of this server's jobs last at least ``seconds`` (``None``: full speed), so a
        test acts on a job mid-run however fast the machine is."""
        if seconds is None:
            self.pace_file.unlink(missing_ok=True)
        else:
            self.pace_file.write_text(str(seconds))

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "serve",
            "--home",
            str(self.home),
            "--port",
            str(self.port),
        ]
        return (
            cmd
            + (["--database", self.database] if self.database else [])
            + ["--lease-seconds", "5", *self.args]
        )

    def start(self, timeout: float = 90) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=_env(self.pace_file)
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited ({self.proc.returncode}): {self.log()[-2000:]}")
            try:
                http("GET", f"{self.url}/models")
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"serve did not answer in {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.home.glob("serve-*.log"))

    def client(self, key: str = "none"):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean-up of any kind
        self.proc.wait()


class WorkerProc:
    """``tuneforge worker`` in a subprocess."""

    def __init__(self, home: Path, database: str | None = None):
        cmd = [sys.executable, "-m", "tuneforge.cli", "worker", "--home", str(home), "--lease-seconds", "5"]
        cmd += ["--database", database] if database else []
        self.log_path = Path(home) / f"worker-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=_env(pace_file(home))
        )

    def started(self, timeout: float = 90) -> WorkerProc:
        """Wait for the worker's banner; a worker that exits first fails here with its log (not as a job that
        stays queued)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            log = self.log_path.read_text(errors="replace")
            if "tuneforge worker" in log:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"tuneforge worker exited ({self.proc.returncode}): {log[-2000:]}")
            time.sleep(0.3)
        raise RuntimeError(f"tuneforge worker did not start in {timeout}s: {log[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def http(method: str, url: str, key: str | None = None, body: bytes | None = None) -> tuple[int, dict]:
    """A raw request (status, JSON body), for what the openai client cannot send."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method)
    if key:
        req.add_header("authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _env(pace: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TUNEFORGE_HOME"}
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    if pace is not None:  # tests/pace/sitecustomize.py slows optimizer steps while this file exists
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent / "pace") + os.pathsep + env["PYTHONPATH"]
        env["TUNEFORGE_TEST_PACE"] = str(pace)
    return env


def make_key(home: Path, project: str, database: str | None = None) -> str:
    """A key for ``project``, created in-process (as `tuneforge keys create` does)."""
    from tuneforge.serve.auth import create_key
    from tuneforge.serve.store import Store, database_url

    store = Store(database_url(database, Path(home)))
    try:
        return create_key(store, project)[0]
    finally:
        store.close()


def wait_job(client, job_id: str, until=FINAL, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def all_events(client, job_id: str) -> list:
    """Every event of a job, oldest first, read page by page (as a client pages)."""
    out, after = [], None
    while True:
        page = client.fine_tuning.jobs.list_events(job_id, limit=7, **({"after": after} if after else {}))
        out += page.data
        if not page.has_more:
            return out[::-1]
        after = page.data[-1].id
