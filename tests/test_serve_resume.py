"""Nothing is lost: ``kill -9`` of the server during a running job, then a restart. The job continues from its
last checkpoint and ends with exactly the weights of an uninterrupted job (fp32); a queued job stays queued."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import Server, all_events, options, wait_for, wait_job, write_sft

pytest.importorskip("fastapi")


def _processes_of(job_id: str) -> list[int]:
    """Processes whose command line names the job (its training child)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if job_id in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return [pid for pid in pids if pid != os.getpid()]


def _train_losses(client, job_id: str) -> dict[int, float]:
    return {e.data["step"]: e.data["train_loss"] for e in all_events(client, job_id)
            if e.type == "metrics" and "train_loss" in e.data}  # fmt: skip


def test_kill_9_then_restart_resumes_to_identical_weights(tmp_path, tiny_llama):
    from safetensors.torch import load_file

    home = tmp_path / "home"
    server = Server(home).start()
    try:
        client = server.client()
        f = client.files.create(file=write_sft(tmp_path / "train.jsonl").open("rb"), purpose="fine-tune")
        opts = options(max_steps=30, save_every=3, log_every=1)
        opts["data"]["validation_fraction"] = 0.2

        def create(**kw):
            return client.fine_tuning.jobs.create(model=tiny_llama, training_file=f.id, seed=11,
                                                  extra_body={"tuneforge": opts}, **kw)  # fmt: skip

        whole = wait_job(client, create().id)
        assert whole.status == "succeeded", whole.error

        # the paced job's 30 steps take 4.5 s or more on any machine: the kill lands mid-run
        server.pace(0.15)
        job = create()
        queued = client.fine_tuning.jobs.create(model=tiny_llama, training_file=f.id,
                                                extra_body={"tuneforge": options(max_steps=2)})  # fmt: skip
        wait_for(lambda: any(c.step_number >= 6 for c in client.fine_tuning.jobs.checkpoints.list(job.id).data),
                 180, "checkpoint step 6")  # fmt: skip
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        server.kill()
        wait_for(lambda: not _processes_of(job.id), 20, "the training child to die with the server")
    finally:
        server.pace(None)
        server.stop()

    server = Server(home).start()  # a new process on the same home
    try:
        client = server.client()
        assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"
        done = wait_job(client, job.id, timeout=240)
        assert done.status == "succeeded", done.error
        assert done.model_extra["tuneforge"]["attempts"] == 2
        resumed = [
            e.message for e in all_events(client, job.id) if e.message.startswith("Fine-tuning job resumed")
        ]
        assert len(resumed) == 1 and "from checkpoint step" in resumed[0]
        a = load_file(home / "runs" / whole.id / "model" / "adapter_model.safetensors")
        b = load_file(home / "runs" / job.id / "model" / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "resumed weights differ"
        assert _train_losses(client, job.id) == _train_losses(client, whole.id)
        assert wait_job(client, queued.id).status == "succeeded"
    finally:
        server.stop()
