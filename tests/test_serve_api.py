"""The fine-tuning service end to end: a live ``tuneforge serve`` driven by the official openai client, on
SQLite (one process: API + worker) and on PostgreSQL (the API alone, two ``tuneforge worker`` processes)."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from serve_helpers import (
    FAST,
    Server,
    WorkerProc,
    all_events,
    http,
    make_key,
    options,
    wait_for,
    wait_job,
    write_openai_dpo,
    write_sft,
)

pytest.importorskip("fastapi")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(request, tmp_path_factory, tiny_llama):
    """(server, {project: key}, backend, data folder). PostgreSQL: the API without a worker plus two workers."""
    home = tmp_path_factory.mktemp(f"home-{request.param}")
    data = tmp_path_factory.mktemp("data")
    pg, workers, database = None, [], None
    if request.param == "postgres":
        from pg import start_postgres

        pg = start_postgres()
        database = pg.url
    keys = {p: make_key(home, p, database) for p in ("alpha", "beta")}
    args = ["--max-upload-mb", "1"] + (["--no-worker"] if pg else [])
    server = Server(home, database, *args).start()
    if pg:
        workers = [WorkerProc(home, database), WorkerProc(home, database)]
    try:
        for w in workers:
            w.started()
        yield server, keys, request.param, data, tiny_llama
    finally:
        server.stop()
        for w in workers:
            w.stop()
        if pg:
            pg.stop()


@pytest.fixture(scope="module")
def alpha(service):
    server, keys, *_ = service
    return server.client(keys["alpha"])


@pytest.fixture(scope="module")
def beta(service):
    server, keys, *_ = service
    return server.client(keys["beta"])


@pytest.fixture(scope="module")
def sft_file(service, alpha):
    data = service[3]
    return alpha.files.create(file=write_sft(data / "train.jsonl").open("rb"), purpose="fine-tune")


@pytest.fixture(scope="module")
def finished_job(service, alpha, sft_file):
    """One supervised LoRA job on the tiny Llama, run to the end."""
    job = alpha.fine_tuning.jobs.create(
        model=service[4], training_file=sft_file.id, suffix="adder", seed=7, metadata={"team": "numbers"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4, "n_epochs": "auto"}}},
        extra_body={"tuneforge": {**FAST, "method": {"name": "lora", "r": 4}}},
    )  # fmt: skip
    assert job.status == "queued"
    done = wait_job(alpha, job.id)
    assert done.status == "succeeded", (done.error, service[0].log()[-3000:])
    return done


def _api_error(exc_info, status: int, param: str | None = None, code: str | None = None):
    e = exc_info.value
    assert e.status_code == status
    assert e.response.headers["x-should-retry"] == "false"
    body = e.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    if param is not None:
        assert body["param"] == param, body
    if code is not None:
        assert body["code"] == code, body
    return body


# ---- files


def test_files_upload_list_retrieve_content_delete(service, alpha):
    data = service[3]
    path = write_sft(data / "small.jsonl", n=12)
    f = alpha.files.create(file=path.open("rb"), purpose="fine-tune")
    assert (f.object, f.status, f.filename, f.bytes) == (
        "file",
        "processed",
        "small.jsonl",
        path.stat().st_size,
    )
    assert alpha.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in alpha.files.list().data]
    assert alpha.files.content(f.id).content == path.read_bytes()
    audit = http("GET", f"{service[0].url}/files/{f.id}/audit", service[1]["alpha"])[1]
    assert (
        audit["format"] == "messages" and audit["examples"] == 12 and "12 rows" in audit["audit"]["headline"]
    )
    assert not [x for x in audit["audit"]["findings"] if x["severity"] == "error"]
    assert alpha.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        alpha.files.retrieve(f.id)


def test_openai_dpo_file_is_converted(service, alpha):
    f = alpha.files.create(file=write_openai_dpo(service[3] / "prefs.jsonl").open("rb"), purpose="fine-tune")
    assert f.status == "processed"
    assert f.model_extra["tuneforge"] == {"format": "openai_dpo", "examples": 16}


def test_bad_file_is_status_error_with_line_and_fix(service, alpha):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    ] * 11
    lines[3] = '{"messages": [{"role": "user", "content": "oops"}'  # line 4: cut short
    lines[6] = json.dumps(
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}
    )
    f = alpha.files.create(file=("broken.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    assert f.status == "error"
    assert "line 4" in f.status_details and "not valid JSON" in f.status_details and "Fix" in f.status_details
    assert "line 7" in f.status_details and "wizard" in f.status_details
    with pytest.raises(openai.BadRequestError) as e:
        alpha.fine_tuning.jobs.create(model=service[4], training_file=f.id)
    _api_error(e, 400, "training_file", "invalid_training_file")


# ---- bad requests: each raises the client's matching exception; none stops the server


def test_bad_requests(service, alpha, beta, sft_file):
    server, keys, _, data, model = service
    with pytest.raises(openai.BadRequestError) as e:  # a filename with path separators
        alpha.files.create(file=("../../etc/evil.jsonl", b'{"text": "x"}\n'), purpose="fine-tune")
    _api_error(e, 400, "file", "invalid_filename")
    with pytest.raises(openai.APIStatusError) as e:  # larger than --max-upload-mb 1
        alpha.files.create(
            file=("big.jsonl", b'{"text": "' + b"x" * (1 << 21) + b'"}\n'), purpose="fine-tune"
        )
    _api_error(e, 413, "file", "file_too_large")
    with pytest.raises(openai.BadRequestError) as e:
        alpha.files.create(file=("a.jsonl", b'{"text": "x"}\n'), purpose="assistants")
    _api_error(e, 400, "purpose")
    few = alpha.files.create(file=write_sft(data / "few.jsonl", n=5).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:  # too few examples
        alpha.fine_tuning.jobs.create(model=model, training_file=few.id)
    assert "at least 10" in _api_error(e, 400, "training_file")["message"]
    with pytest.raises(openai.BadRequestError) as e:  # a supervised file for a DPO job
        alpha.fine_tuning.jobs.create(model=model, training_file=sft_file.id, method={"type": "dpo"})
    assert "preferred_output" in _api_error(e, 400, "training_file", "invalid_training_file")["message"]
    with pytest.raises(openai.BadRequestError) as e:
        alpha.fine_tuning.jobs.create(model="no-such-model-anywhere", training_file=sft_file.id)
    _api_error(e, 400, "model", "model_not_found")
    for hyper, param in (({"n_epochs": 0}, "n_epochs"), ({"batch_size": "big"}, "batch_size"),
                         ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"), ({"beta": 0.1}, "beta")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            alpha.fine_tuning.jobs.create(
                model=model, training_file=sft_file.id,
                method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
            )  # fmt: skip
        _api_error(e, 400, f"method.hyperparameters.{param}", "invalid_hyperparameters")
    with pytest.raises(openai.BadRequestError) as e:  # an unknown tuneforge option
        alpha.fine_tuning.jobs.create(
            model=model, training_file=sft_file.id, extra_body={"tuneforge": {"training": {"lr_typo": 1}}}
        )
    assert "lr_typo" in _api_error(e, 400, "tuneforge", "invalid_options")["message"]
    with pytest.raises(openai.BadRequestError) as e:  # a key the job owns
        alpha.fine_tuning.jobs.create(
            model=model, training_file=sft_file.id, extra_body={"tuneforge": {"output": {"dir": "/"}}}
        )
    _api_error(e, 400, "tuneforge.output.dir")
    with pytest.raises(openai.NotFoundError) as e:  # another project's file
        beta.fine_tuning.jobs.create(model=model, training_file=sft_file.id)
    _api_error(e, 404, "training_file")
    with pytest.raises(openai.NotFoundError):
        alpha.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.AuthenticationError) as e:
        server.client("tf-wrong").files.list()
    _api_error(e, 401)
    status, body = http("POST", f"{server.url}/fine_tuning/jobs", keys["alpha"], b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert alpha.models.list().data  # still serving


# ---- a supervised job, end to end


def test_supervised_job(service, alpha, finished_job, sft_file):
    job = finished_job
    assert job.fine_tuned_model == f"ft:{Path(service[4]).name}:adder:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens > 0 and job.finished_at and job.metadata == {"team": "numbers"}
    hyper = job.method.supervised.hyperparameters
    assert hyper.batch_size == 4 and hyper.n_epochs == 5  # "auto": 24 examples -> ceil(100 / 24)
    assert isinstance(hyper.learning_rate_multiplier, float)
    events = all_events(alpha, job.id)
    messages = [e.message for e in events]
    assert messages[0].startswith("Created fine-tuning job")
    assert "Files validated, moving job to queued state" in messages
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4]
    assert all(e.data["total_steps"] == 4 for e in metrics)
    ckpts = alpha.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [4, 2]
    assert ckpts[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
    assert ckpts[0].metrics.train_loss == metrics[-1].data["train_loss"]
    names = [alpha.files.retrieve(f).filename for f in job.result_files]
    assert names == [f"{job.id}-metrics.jsonl", f"{job.id}-report.md", f"{job.id}-report.html"]
    lines = alpha.files.content(job.result_files[0]).text.splitlines()
    assert json.loads(lines[0])["step"] == 1
    assert job.fine_tuned_model in [m.id for m in alpha.models.list().data]


def test_chat_with_the_tuned_model(service, alpha, finished_job):
    pytest.importorskip("tuneforge.serve.completions")
    model = finished_job.fine_tuned_model
    out = alpha.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                        max_tokens=4, temperature=0)  # fmt: skip
    assert out.model == model and out.choices[0].message.role == "assistant"
    chunks = list(alpha.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4, temperature=0, stream=True))  # fmt: skip
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    with pytest.raises(openai.NotFoundError):
        alpha.chat.completions.create(model="ft:nope:x:y", messages=[{"role": "user", "content": "Hi"}])


def test_job_from_a_fine_tuned_model(service, alpha, beta, finished_job, sft_file):
    """A fine-tuned model as ``model`` continues from that job's run (as OpenAI's API allows); lineage recorded."""
    more = alpha.files.create(
        file=write_sft(service[3] / "more.jsonl", n=12, offset=50).open("rb"), purpose="fine-tune"
    )
    job = alpha.fine_tuning.jobs.create(
        model=finished_job.fine_tuned_model, training_file=more.id, suffix="more",
        extra_body={"tuneforge": {**FAST, "method": {"name": "lora", "r": 4}}},
    )  # fmt: skip
    done = wait_job(alpha, job.id)
    assert done.status == "succeeded", (done.error, service[0].log()[-3000:])
    assert done.model == finished_job.fine_tuned_model
    assert done.fine_tuned_model.startswith(f"ft:{Path(service[4]).name}:more:")
    runs = service[0].home / "runs"
    lineage = json.loads((runs / job.id / "run.json").read_text())["lineage"]
    assert Path(lineage["parent"]).resolve() == (runs / finished_job.id).resolve()
    with pytest.raises(openai.NotFoundError):  # another project's tuned model is not there for beta
        beta.fine_tuning.jobs.create(model=finished_job.fine_tuned_model, training_file=sft_file.id)


def test_jobs_paging(service, alpha, finished_job, sft_file):
    extra = [
        alpha.fine_tuning.jobs.create(
            model=service[4], training_file=sft_file.id, extra_body={"tuneforge": FAST}
        )
        for _ in range(2)
    ]
    for j in extra:  # not trained: keep the test short
        alpha.fine_tuning.jobs.cancel(j.id)
    ids, after = [], None
    while True:
        page = alpha.fine_tuning.jobs.list(limit=1, **({"after": after} if after else {}))
        ids += [j.id for j in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert ids[:2] == [extra[1].id, extra[0].id] and finished_job.id in ids and len(ids) == len(set(ids))
    assert [j.id for j in alpha.fine_tuning.jobs.list(metadata={"team": "numbers"})] == [finished_job.id]
    with pytest.raises(openai.ConflictError) as e:  # cancelling a finished job cannot help on a retry
        alpha.fine_tuning.jobs.cancel(extra[0].id)
    _api_error(e, 409)


def test_projects_are_isolated(service, alpha, beta, finished_job, sft_file):
    assert beta.files.list().data == [] and beta.fine_tuning.jobs.list().data == []
    assert finished_job.fine_tuned_model not in [m.id for m in beta.models.list().data]
    for call in (
        lambda: beta.files.retrieve(sft_file.id),
        lambda: beta.files.content(sft_file.id),
        lambda: beta.files.delete(sft_file.id),
        lambda: beta.fine_tuning.jobs.retrieve(finished_job.id),
        lambda: beta.fine_tuning.jobs.cancel(finished_job.id),
        lambda: beta.fine_tuning.jobs.list_events(finished_job.id),
        lambda: beta.fine_tuning.jobs.checkpoints.list(finished_job.id),
        lambda: beta.models.delete(finished_job.fine_tuned_model),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    if _has_completions():
        with pytest.raises(openai.NotFoundError):
            beta.chat.completions.create(
                model=finished_job.fine_tuned_model, messages=[{"role": "user", "content": "x"}]
            )
    assert alpha.fine_tuning.jobs.retrieve(finished_job.id).status == "succeeded"


def _has_completions() -> bool:
    try:
        import tuneforge.serve.completions  # noqa: F401
    except ImportError:
        return False
    return True


def test_dpo_job_from_openai_format(service, alpha):
    f = alpha.files.create(file=write_openai_dpo(service[3] / "dpo.jsonl").open("rb"), purpose="fine-tune")
    job = alpha.fine_tuning.jobs.create(
        model=service[4], training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 2}}},
        extra_body={"tuneforge": FAST},
    )  # fmt: skip
    assert job.method.dpo.hyperparameters.beta == 0.2
    done = wait_job(alpha, job.id)
    assert done.status == "succeeded", done.error
    train = [e.data for e in all_events(alpha, job.id) if e.type == "metrics" and "train_loss" in e.data]
    assert len(train) == 4


def test_cancel_pause_resume(service, alpha, sft_file):
    """Pause a running job (it stops at the end of a step with a checkpoint), resume it (it continues from that
    checkpoint and succeeds); cancel another while it runs (its checkpoint is kept)."""
    server, model = service[0], service[4]
    slow = options(max_steps=60, save_every=3, log_every=3)
    server.pace(0.1)  # at least 6 s of training on any machine: the pause lands mid-run
    try:
        job = alpha.fine_tuning.jobs.create(
            model=model, training_file=sft_file.id, extra_body={"tuneforge": slow}
        )
        stop_after_a_checkpoint(alpha, job.id, alpha.fine_tuning.jobs.pause, "paused")
    finally:
        server.pace(None)
    paused_at = alpha.fine_tuning.jobs.retrieve(job.id)
    assert paused_at.status == "paused" and paused_at.model_extra["tuneforge"]["step"] < 60
    with pytest.raises(openai.ConflictError):
        alpha.fine_tuning.jobs.pause(job.id)
    assert alpha.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_job(alpha, job.id, timeout=240)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in all_events(alpha, job.id)]
    assert any(m.startswith("Fine-tuning job resumed") and "from checkpoint step" in m for m in messages)
    assert [s for s in _train_steps(alpha, job.id)] == sorted(
        set(_train_steps(alpha, job.id))
    )  # no step twice

    endless = options(max_steps=100_000, save_every=3, log_every=3)  # cancelled long before its end
    other = alpha.fine_tuning.jobs.create(
        model=model, training_file=sft_file.id, extra_body={"tuneforge": endless}
    )
    stop_after_a_checkpoint(alpha, other.id, alpha.fine_tuning.jobs.cancel, "cancelled")
    run_dir = server.home / "runs" / other.id
    assert any(p.name.startswith("step-") for p in (run_dir / "checkpoints").iterdir())
    assert not (run_dir / "model").exists()
    assert alpha.fine_tuning.jobs.retrieve(other.id).status == "cancelled"


def stop_after_a_checkpoint(client, job_id: str, stop, status: str) -> None:
    """Once the job has a checkpoint, ``stop`` it (pause or cancel: the answer has ``status``) and wait until
    its training has stopped."""
    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job_id).data, 180, "a first checkpoint")
    assert stop(job_id).status == status
    wait_for(
        lambda: any(e.message.startswith(f"Training {status}") for e in all_events(client, job_id)),
        120,
        f"the job {status}",
    )


def _train_steps(client, job_id: str) -> list[int]:
    return [
        e.data["step"] for e in all_events(client, job_id) if e.type == "metrics" and "train_loss" in e.data
    ]


def test_delete_fine_tuned_model(service, alpha, finished_job):
    model = finished_job.fine_tuned_model
    with pytest.raises(openai.PermissionDeniedError):
        alpha.models.delete("smollm2-135m-instruct")
    assert alpha.models.delete(model).deleted
    assert model not in [m.id for m in alpha.models.list().data]
    assert not (service[0].home / "runs" / finished_job.id / "model").exists()
    with pytest.raises(openai.NotFoundError):
        alpha.models.delete(model)
    if _has_completions():
        with pytest.raises(openai.NotFoundError):
            alpha.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def test_two_workers_share_one_queue(service, alpha):
    """PostgreSQL: three jobs queued at once, two workers: every job runs once, on one worker."""
    if service[2] != "postgres":
        pytest.skip("the two-worker queue runs on PostgreSQL")
    f = alpha.files.create(
        file=write_sft(service[3] / "q.jsonl", n=12, offset=100).open("rb"), purpose="fine-tune"
    )
    jobs = [alpha.fine_tuning.jobs.create(model=service[4], training_file=f.id, extra_body={"tuneforge": options(max_steps=2)})
            for _ in range(3)]  # fmt: skip
    for j in jobs:
        done = wait_job(alpha, j.id, timeout=300)
        assert done.status == "succeeded", done.error
        assert done.model_extra["tuneforge"]["attempts"] == 1
        started = [e for e in all_events(alpha, j.id) if e.message.startswith("Fine-tuning job")]
        assert [e.message for e in started][:1] == ["Fine-tuning job started"]
        assert (
            sum(m.message.startswith(("Fine-tuning job started", "Fine-tuning job resumed")) for m in started)
            == 1
        )
        assert _train_steps(alpha, j.id) == [1, 2]
