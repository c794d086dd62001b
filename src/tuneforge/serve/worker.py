"""The job worker: claims queued jobs and trains each in a child process (``python -m tuneforge.cli train``).

- **Claiming** is one transaction (``Store.claim_job``): ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL,
  an atomic ``UPDATE ... WHERE status='queued'`` on SQLite, so two workers never take the same job.
- **Leases**: while a job trains its worker renews ``lease_until`` every poll. A worker that dies (``kill -9``,
  a lost machine) stops renewing; when the lease runs out any worker takes the job up again, and the child
  continues with ``tuneforge train --resume RUN_DIR`` from the last checkpoint (bit-exact: the same weights as
  an uninterrupted run). On the same host a dead worker's process is noticed at once (its pid is gone).
- **One job at a time** by default, so it has every core (``training.threads: auto``); ``--jobs N`` runs N
  (tuneforge's core share then divides the cores among them).
- **Stopping**: cancel and pause change the job's status; the worker sees it at its next poll and sends the
  child SIGTERM, which saves a checkpoint at the end of the current optimizer step and exits
  (``train/signals.py``). The child dies with its worker (``PR_SET_PDEATHSIG``), and checkpoints are written
  atomically, so a ``kill -9`` anywhere leaves the last checkpoint whole.
- **Events**: messages, one ``metrics`` event per logging step (read from the run's ``metrics.jsonl``), one per
  validation, and a checkpoint object per ``checkpoints/step-N``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tuneforge.serve.jobs import checkpoint_steps, ft_name

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0
POLL_SECONDS = 0.5
KILL_AFTER = 300.0  # a child that has not stopped this long after SIGTERM is killed


# The child: the tuneforge command line, made to die with the process that started it (PR_SET_PDEATHSIG), so a
# worker killed with -9 leaves no training behind that would hold the run folder. (Set in the child itself:
# a preexec_fn is unsafe in a process with threads.)
CHILD = (
    "import ctypes, os, signal, sys\n"
    "try:\n    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n    sys.exit(1)  # the worker died before the line above\n"
    "from tuneforge.cli import main\nmain(sys.argv[2:])\n"
)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def failure_message(log_path: Path, code: int) -> str:
    """The child's own error (the CLI prints ``error: ...``), else the end of its log."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    at = text.rfind("\nerror:") if not text.startswith("error:") else 0
    if at >= 0 and "error:" in text:
        msg = " ".join(text[at:].strip().removeprefix("error:").split())
    else:
        tail = [line for line in text.strip().splitlines() if line.strip()][-3:]
        msg = f"the training process ended with exit code {code}: " + " | ".join(tail)
    return msg[:2000]


class Progress:
    """What the worker has turned into events so far for one job (metrics lines, checkpoints)."""

    def __init__(self, job: dict, run_dir: Path):
        self.run_dir, self.job = run_dir, job
        self.offset, self.inode = 0, -1
        self.last_step = job["last_step"]
        self.valid_seen = job["last_step"]
        self.tokens = job["trained_tokens"] or 0
        self.train: dict[int, dict] = {}
        self.valid: dict[int, dict] = {}
        self.t0, self.step0 = time.time(), job["last_step"]

    def read(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                # a resume replaces the log (a new file, up to its checkpoint): read it from the start again;
                # the steps already turned into events are skipped by their number
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.inode, self.offset = st.st_ino, 0
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        rows = []
        for line in chunk[:end].splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def metrics_data(row: dict, total: int | None) -> dict[str, Any]:
    """A metrics.jsonl line as an OpenAI metrics event's data (tuneforge's extra fields kept)."""
    split = "train" if row.get("split") == "train" else "valid"
    data: dict[str, Any] = {"step": row["step"]}
    if total:
        data["total_steps"] = total
    for k, v in row.items():
        if k in ("step", "split"):
            continue
        if k == "loss":
            data[f"{split}_loss"] = v
            if split == "valid":
                data["full_valid_loss"] = v
        elif k in ("accuracy", "token_accuracy"):
            data[f"{split}_mean_token_accuracy"] = v
        elif k == "lr":
            data["learning_rate"] = v
        else:
            data[k if split == "train" else f"valid_{k}"] = v
    return data


class Worker:
    """Claims and trains jobs until ``stop`` is set. ``jobs``: how many to train at once."""

    def __init__(
        self, store, home: Path, jobs: int = 1, lease: float = LEASE_SECONDS, poll: float = POLL_SECONDS
    ):
        self.store, self.home = store, Path(home)
        self.jobs, self.lease, self.poll = max(1, jobs), lease, poll
        self.id = worker_id()
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- the loop
    def start(self) -> None:
        """Run in background threads (``tuneforge serve``)."""
        for k in range(self.jobs):
            t = threading.Thread(target=self._slot, name=f"tuneforge-worker-{k}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        """Run in the foreground until ``stop`` (``tuneforge worker``)."""
        self.start()
        try:
            while any(t.is_alive() for t in self._threads):
                for t in self._threads:
                    t.join(0.5)
        finally:
            self.stop.set()
            for t in self._threads:
                t.join()

    def shutdown(self, wait: float = 60.0) -> None:
        """Stop claiming; running children get SIGTERM (checkpoint at the end of the step) and their jobs go
        back to the queue to resume on the next start."""
        self.stop.set()
        deadline = time.time() + wait
        for t in self._threads:
            t.join(max(0.1, deadline - time.time()))

    def _slot(self) -> None:
        while not self.stop.is_set():
            try:
                self.store.expire_dead_workers()
                job = self.store.claim_job(self.id, self.lease)
            except Exception:  # the database is away for a moment: try again
                log.exception("worker: cannot claim a job")
                job = None
            if job is None:
                self.stop.wait(self.poll)
                continue
            try:
                self.train(job)
            except Exception as e:  # never lose the worker over one job
                log.exception("worker: job %s", job["id"])
                self._fail(
                    job, f"the worker failed while running the job ({type(e).__name__}: {e}).", "worker_error"
                )

    # ---- one job
    def train(self, job: dict) -> None:
        jid, run_dir = job["id"], self.home / job["run_dir"]
        job_dir = self.home / "jobs" / jid
        job_dir.mkdir(parents=True, exist_ok=True)
        resuming = (run_dir / "config.yaml").exists()
        if resuming:
            cmd = ["train", "--resume", str(run_dir)]
            steps = checkpoint_steps(run_dir)
            self.store.add_event(jid, f"Fine-tuning job resumed (attempt {job['attempts']}) from "
                                 + (f"checkpoint step {steps[-1]}" if steps else "the start: no checkpoint yet"))  # fmt: skip
        else:
            import yaml

            (job_dir / "config.yaml").write_text(yaml.safe_dump(job["config"], sort_keys=False))
            cmd = ["train", str(job_dir / "config.yaml")]
            self.store.add_event(jid, "Fine-tuning job started" if job["attempts"] <= 1 else
                                 f"Fine-tuning job started again (attempt {job['attempts']}): no run folder yet")  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNEFORGE_JOB": jid}
        with open(job_dir / "train.log", "ab") as logf:
            logf.write(
                f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} worker {self.id}: tuneforge {' '.join(cmd)}\n".encode()
            )
            logf.flush()
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(os.getpid()), *cmd], cwd=self.home, stdout=logf,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            )  # fmt: skip
        progress = Progress(job, run_dir)
        reason, sent = None, 0.0
        while True:
            code = proc.poll()
            if not self.store.update_job(
                jid, when={"worker_id": self.id}, lease_until=time.time() + self.lease
            ):
                proc.kill()  # another worker holds the job now (our lease ran out): this copy must stop
                proc.wait()
                log.warning("worker: lost the lease of %s; stopped its training", jid)
                return
            self.sync(job, progress)
            if code is not None:
                break
            status = self.store.job(None, jid)["status"]
            if reason is None and (status != "running" or self.stop.is_set()):
                reason = "shutdown" if status == "running" else status
                proc.send_signal(signal.SIGTERM)
                sent = time.time()
            elif reason is not None and time.time() - sent > KILL_AFTER:
                proc.kill()
            time.sleep(self.poll)
        self.finish(job, progress, code, reason, job_dir / "train.log")

    def sync(self, job: dict, p: Progress) -> None:
        """New metrics lines -> events; new checkpoint folders -> checkpoint objects; progress on the job."""
        jid, total = job["id"], job["total_steps"]
        changed = False
        for row in p.read():
            step = row.get("step")
            if not isinstance(step, int):
                continue
            if row.get("split") == "train":
                p.train[step] = row
                if step > p.last_step:
                    p.last_step = step
                    p.tokens += int(row.get("tokens") or 0)
                    changed = True
                    loss = row.get("loss")
                    self.store.add_event(jid, f"Step {step}/{total}: training loss={loss:.4f}" if loss is not None
                                         else f"Step {step}/{total}", type="metrics", data=metrics_data(row, total))  # fmt: skip
            else:
                p.valid[step] = row
                if step > p.valid_seen:
                    p.valid_seen = step
                    loss = row.get("loss")
                    self.store.add_event(jid, f"Step {step}/{total}: validation loss={loss:.4f}" if loss is not None
                                         else f"Step {step}/{total}: validation", type="metrics",
                                         data=metrics_data(row, total))  # fmt: skip
        for step in checkpoint_steps(p.run_dir):
            metrics: dict[str, Any] = {"step": step}
            train = [s for s in p.train if s <= step]
            if train:
                metrics.update(
                    {k: v for k, v in metrics_data(p.train[max(train)], None).items() if k != "step"}
                )
            if step in p.valid:
                metrics.update({k: v for k, v in metrics_data(p.valid[step], None).items() if k != "step"})
            if self.store.add_checkpoint(jid, step, metrics):
                self.store.add_event(jid, f"Checkpoint created at step {step}", data={"step": step})
        if changed:
            done = p.last_step - p.step0
            eta = None
            if done > 0 and total:
                eta = time.time() + (time.time() - p.t0) / done * max(0, total - p.last_step)
            self.store.update_job(jid, when={"worker_id": self.id}, last_step=p.last_step, trained_tokens=p.tokens,
                                  estimated_finish=eta)  # fmt: skip

    def finish(self, job: dict, p: Progress, code: int, reason: str | None, log_path: Path) -> None:
        jid, run_dir = job["id"], self.home / job["run_dir"]
        mine = {"worker_id": self.id}
        steps = checkpoint_steps(run_dir)
        kept = f"checkpoint step {steps[-1]} is kept" if steps else "no checkpoint was written yet"
        status = self.store.job(None, jid)["status"]
        summary = _read_json(run_dir / "run.json")
        if code == 0 and status in ("running", "paused") and summary.get("finished"):
            self._succeed(job, summary, status)  # a pause that came after the last step: the job is done
            return
        if reason == "shutdown" and status == "running":
            self.store.update_job(
                jid, when=mine, status="queued", worker_id=None, lease_until=None, estimated_finish=None
            )
            self.store.add_event(
                jid, f"The worker stopped; the job is queued again and will continue ({kept})"
            )
            return
        if status in ("cancelled", "paused", "queued"):
            self.store.update_job(jid, when=mine, worker_id=None, lease_until=None, estimated_finish=None)
            what = {"cancelled": "cancelled", "paused": "paused", "queued": "stopped to resume"}[status]
            self.store.add_event(jid, f"Training {what} at step {p.last_step}; {kept}")
            return
        self._fail(job, failure_message(log_path, code), "training_failed")

    def _succeed(self, job: dict, summary: dict, status: str = "running") -> None:
        jid, run_rel = job["id"], job["run_dir"]
        run_dir = self.home / run_rel
        result_ids = []
        for name in ("metrics.jsonl", "report.md", "report.html"):
            path = run_dir / name
            if path.is_file():
                from tuneforge.serve.store import new_id

                row = self.store.add_file(
                    id=new_id("file"), project=job["project"], filename=f"{jid}-{name}", purpose="fine-tune-results",
                    bytes=path.stat().st_size, status="processed", path=f"{run_rel}/{name}", format=None, examples=0,
                )  # fmt: skip
                result_ids.append(row["id"])
        ft = ft_name(job)
        ok = self.store.update_job(
            jid, when={"worker_id": self.id, "status": status}, status="succeeded", finished_at=time.time(),
            fine_tuned_model=ft, trained_tokens=summary.get("tokens_seen"), result_files=result_ids,
            estimated_finish=None, worker_id=None, lease_until=None, last_step=summary.get("steps") or job["last_step"],
        )  # fmt: skip
        if not ok:  # cancelled in the last moment: it stays cancelled
            self.store.update_job(jid, when={"worker_id": self.id}, worker_id=None, lease_until=None)
            return
        headline = _read_json(run_dir / "report.json").get("headline") or _read_json(
            run_dir / "report.json"
        ).get("summary")
        if isinstance(headline, str):
            self.store.add_event(jid, f"Report: {headline}")
        self.store.add_event(jid, f"New fine-tuned model created: {ft}")
        self.store.add_event(jid, "The job has successfully completed")

    def _fail(self, job: dict, message: str, code: str) -> None:
        jid = job["id"]
        self.store.update_job(jid, when={"worker_id": self.id}, status="failed", finished_at=time.time(),
                              error={"code": code, "message": message, "param": None}, worker_id=None,
                              lease_until=None, estimated_finish=None)  # fmt: skip
        self.store.add_event(jid, f"Fine-tuning job failed: {message}", level="error")
