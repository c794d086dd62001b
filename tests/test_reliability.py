"""Nothing lost, nothing silent: kills at the named points of finishing, damaged checkpoints, SIGTERM, two writers,
stub folders, resume with a changed config, interrupts (issue 13 fault 3, issue 21 faults 1, 2, 6, 7, 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import max_diff, tiny_cfg

import tuneforge
from tuneforge.config import from_dict
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.models.save import model_step
from tuneforge.tasks.classification import ClassificationTask, load_sequence_classifier

QUIET_EVAL = {"report": False, "bias": False}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_sequence_classifier(folder).state_dict().items()}


def early_cfg(tiny_bert, data, out, **training) -> dict:
    """Validation every 2 steps with early stopping on accuracy: the best step comes before the last one."""
    return tiny_cfg(
        tiny_bert,
        data,
        out,
        training={
            "max_steps": 16,
            "eval_every": 2,
            "save_every": 2,
            "metric": "accuracy",
            "early_stopping_patience": 3,
            "lr": 2e-3,
            **training,
        },
        eval=QUIET_EVAL,
    )


def _run_killed(cfg: dict, patch: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Train ``cfg`` in a fresh process that dies (os._exit, like a kill -9) at the point ``patch`` sets up."""
    cfg_file = tmp_path / f"cfg-{abs(hash(patch))}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    script = "\n".join(
        [
            "import os, pathlib",
            "import tuneforge",
            "from tuneforge import recipe, probes, run as run_mod",
            textwrap.dedent(patch),
            f"tuneforge.train({str(cfg_file)!r})",
        ]
    )
    env = {**os.environ, "TUNEFORGE_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )


KILL_POINTS = {
    # after the final model is in place, before run.json says so
    "after_finish_model": """
real = recipe.finish_model
def finish_model(*a, **k):
    real(*a, **k); os._exit(137)
recipe.finish_model = finish_model
""",
    # in the middle of moving best/ to model/: the old model set aside, the best not yet renamed
    "during_best_rename": """
real_rename = pathlib.Path.rename
def rename(self, target):
    if self.name == "best":
        os._exit(137)
    return real_rename(self, target)
pathlib.Path.rename = rename
""",
    # before eval.json
    "during_evaluation": """
def evaluate(self, *a, **k):
    os._exit(137)
run_mod.Run.evaluate = evaluate
""",
    # while the report is written
    "during_report": """
def finish_run(*a, **k):
    os._exit(137)
probes.finish_run = finish_run
""",
}


@pytest.fixture(scope="module")
def reference_run(tiny_bert, tmp_path_factory):
    """The uninterrupted run every interrupted one must end up equal to."""
    from conftest import sentiment_rows

    folder = tmp_path_factory.mktemp("reference")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(240)))
    run = tuneforge.train(early_cfg(tiny_bert, str(data), folder / "runs"))
    s = run.summary()
    assert s["best_step"] is not None and s["best_step"] < s["steps"], s  # the test needs best != last
    return run, str(data)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_while_finishing_never_replaces_the_best_model(reference_run, tiny_bert, tmp_path, point):
    ref, data = reference_run
    cfg = early_cfg(tiny_bert, data, tmp_path / "runs")
    killed = _run_killed(cfg, KILL_POINTS[point], tmp_path)
    assert killed.returncode == 137, killed.stderr[-2000:]
    run_dir = tmp_path / "runs" / "run"
    assert not json.loads((run_dir / "run.json").read_text()).get("finished")

    resumed = tuneforge.train(cfg, resume=run_dir)  # an interrupted finish completes
    s = resumed.summary()
    assert s["finished"] and s["final_step"] == s["best_step"] == ref.summary()["best_step"]
    assert model_step(run_dir / "model") == s["best_step"]
    assert not (run_dir / "best").exists()
    assert max_diff(_weights(ref.path / "model"), _weights(run_dir / "model")) < 1e-6
    assert (run_dir / "eval.json").exists()


def test_a_finished_run_resumed_changes_nothing(reference_run, capsys):
    ref, _ = reference_run
    files = ["model/model.safetensors", "run.json", "metrics.jsonl", "eval.json", "config.yaml"]
    before = {f: ((ref.path / f).stat().st_mtime_ns, (ref.path / f).read_bytes()) for f in files}
    again = tuneforge.train(None, resume=ref.path)
    assert again.path == ref.path
    assert {f: ((ref.path / f).stat().st_mtime_ns, (ref.path / f).read_bytes()) for f in files} == before
    assert "nothing to do" in capsys.readouterr().err


def _crash_at(monkeypatch, call: int, exc: BaseException) -> None:
    real = ClassificationTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise exc
        return real(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", loss)


def plain_cfg(tiny_bert, data, out, **training) -> dict:
    # no validation (the final model is the last weights); dropout on: RNG states must be restored too
    return tiny_cfg(
        tiny_bert,
        data,
        out,
        model={"dropout": 0.1},
        data={"validation_fraction": 0.0},
        training={"max_steps": 12, "save_every": 4, "eval_every": None, "keep_checkpoints": 3, **training},
        eval=QUIET_EVAL,
    )


def test_resume_skips_a_damaged_newest_checkpoint_and_says_from_where(
    tiny_bert, sentiment_file, tmp_path, monkeypatch, capsys
):
    full = tuneforge.train(plain_cfg(tiny_bert, sentiment_file, tmp_path / "a"))
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path / "b")
    _crash_at(monkeypatch, 10, RuntimeError("simulated crash"))  # dies in step 10: checkpoints 4 and 8
    with pytest.raises(RuntimeError, match="simulated crash"):
        tuneforge.train(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "b" / "run"
    weights = run_dir / "checkpoints" / "step-8" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn write
    (run_dir / "checkpoints" / "latest").write_bytes(b"\x00\xff garbage")
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 9, "split": "tr')  # a torn last metrics line
    capsys.readouterr()
    resumed = tuneforge.train(cfg, resume=run_dir)
    err = capsys.readouterr().err
    assert "step-8" in err and "resumed from step 4 of 12" in err
    assert resumed.summary()["steps"] == 12
    assert max_diff(_weights(full.path / "model"), _weights(run_dir / "model")) < 1e-6
    steps = [m["step"] for m in resumed.metrics() if m["split"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated or torn lines


def test_resume_with_no_valid_checkpoint_stops_clearly(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path)
    _crash_at(monkeypatch, 6, RuntimeError("simulated crash"))  # only step-4 exists
    with pytest.raises(RuntimeError):
        tuneforge.train(cfg)
    monkeypatch.undo()
    state = tmp_path / "run" / "checkpoints" / "step-4" / "state.pt"
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(TuneforgeError, match="damaged.*cannot resume"):
        tuneforge.train(cfg, resume=tmp_path / "run")


def test_resume_keeps_the_saved_config(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path)
    _crash_at(monkeypatch, 6, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError):
        tuneforge.train(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # auto values are saved as this machine resolved them
    assert saved["training"]["precision"] in ("fp32", "bf16")
    assert saved["training"]["threads"] == "auto"  # it follows the other trainings on the machine as it runs
    with pytest.raises(ConfigError, match=r"(?s)training\.lr: 0\.001 -> 0\.5.*only these keys may change"):
        tuneforge.train(None, ["training.lr=0.5"], resume=run_dir)
    # the short list may change: here the number of steps
    run = tuneforge.train(None, ["training.max_steps=8"], resume=run_dir)
    assert run.summary()["steps"] == 8


def test_auto_resume_refuses_an_ambiguous_choice(tmp_path):
    from tuneforge.recipe import resume_folder

    cfg = from_dict({"output": {"dir": str(tmp_path)}})
    for name in (
        "classification-minilm-l6-full-20261201-100000",
        "classification-minilm-l6-full-20261201-100001",
    ):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="2 runs .* could be meant.*--resume RUN_DIR"):
        resume_folder(cfg)


def test_a_failed_start_leaves_no_folder_that_blocks_the_fixed_command(tiny_bert, sentiment_file, tmp_path):
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path, max_steps=2)
    cfg["output"] = {"dir": str(tmp_path), "name": "named"}
    bad = {**cfg, "model": {"name": str(tmp_path / "no-such-model")}}
    with pytest.raises(TuneforgeError):
        tuneforge.train(bad)
    assert (tmp_path / "named").exists()  # the stub of the failed start
    run = tuneforge.train(cfg)  # the fixed command just works
    assert run.summary()["finished"]
    with pytest.raises(ConfigError, match="holds a trained run.*--resume"):
        tuneforge.train(cfg)  # a folder with a trained run is never replaced silently


def test_a_second_ctrl_c_says_what_was_saved(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path)
    _crash_at(monkeypatch, 10, KeyboardInterrupt())
    with pytest.raises(TuneforgeError, match="last checkpoint is step-8.*--resume"):
        tuneforge.train(cfg)
    _crash_at(monkeypatch, 1, KeyboardInterrupt())
    cfg["output"]["name"] = "early"
    with pytest.raises(TuneforgeError, match="before the first checkpoint: nothing was saved"):
        tuneforge.train(cfg)


def test_sigterm_saves_a_checkpoint_and_a_second_writer_is_refused(tiny_bert, sentiment_file, tmp_path):
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path, max_steps=100000, save_every=100000, log_every=1)
    cfg_file = tmp_path / "long.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TUNEFORGE_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(cfg_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    run_dir = tmp_path / "run"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
            (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().strip()
        ):
            time.sleep(0.2)
        assert (run_dir / "metrics.jsonl").exists(), "training never started"
        with pytest.raises(TuneforgeError, match="in use by process"):  # two writers on one folder
            tuneforge.train(None, resume=run_dir)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM at step" in err and f"--resume {run_dir}" in err
    assert "Traceback" not in err
    step = int(err.split("stopped by SIGTERM at step ")[1].split()[0])
    assert (run_dir / "checkpoints" / f"step-{step}").is_dir()
    run = tuneforge.train(None, [f"training.max_steps={step + 2}"], resume=run_dir)
    assert run.summary()["steps"] == step + 2


def test_unknown_metrics_are_refused_with_the_tasks_list():
    with pytest.raises(
        ConfigError, match="'f1' is not a validation metric of task 'classification'.*accuracy"
    ):
        from_dict({"training": {"metric": "f1"}})
    with pytest.raises(ConfigError, match="task 'sft'.*loss, perplexity"):
        from_dict({"task": "sft", "training": {"metric": "accuracy"}})
    assert from_dict({"training": {"metric": "macro_f1"}}).training.metric == "macro_f1"


def test_kto_needs_two_rows_per_micro_batch():
    with pytest.raises(ConfigError, match="kto needs training.batch_size >= 2"):
        from_dict({"task": "dpo", "preference": {"loss_type": "kto"}, "training": {"batch_size": 1}})


def test_the_audit_is_never_skipped_on_import_error(monkeypatch):
    from tuneforge.recipe import preflight_audit

    monkeypatch.setitem(sys.modules, "tuneforge.data.audit", None)  # the module cannot be imported
    with pytest.raises(ImportError):
        preflight_audit(from_dict({}), task=None)


def test_a_run_loads_its_model_on_the_device_it_trained_on(reference_run, monkeypatch):
    from tuneforge.run import Run

    ref, _ = reference_run
    run = Run(ref.path)
    monkeypatch.setattr(Run, "device", property(lambda self: torch.device("meta")))
    assert {p.device.type for p in run.load_model().parameters()} == {"meta"}


def test_error_findings_stop_training_with_their_rows(tiny_llama, tmp_path):
    """DPO pairs whose chosen equals rejected cannot teach a preference: shown with their rows, then refused
    (data.allow_audit_errors=true trains anyway)."""
    from test_preference import cfg_for, pair_rows

    rows = pair_rows(60)
    for r in rows[:3]:
        r["rejected"] = r["chosen"]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = cfg_for("dpo", tiny_llama, str(data), tmp_path, data={"audit": True}, training={"max_steps": 2})
    with pytest.raises(TuneforgeError, match="(?s)cannot train correctly.*allow_audit_errors") as refused:
        tuneforge.train(cfg)
    assert f"{data}:1" in str(refused.value) and f"{data}:3" in str(
        refused.value
    )  # the rows, by file and line
    cfg["data"]["allow_audit_errors"] = True
    cfg["output"]["name"] = "anyway"
    assert tuneforge.train(cfg).summary()["finished"]


def test_the_shipped_dpo_config_passes_its_own_preflight():
    """tuneforge's own split keeps duplicates on one side, so the shipped config needs no allow_leakage."""
    from tuneforge.config import load_config
    from tuneforge.recipe import preflight_audit
    from tuneforge.tasks.dpo import PreferenceTask

    cfg = load_config(Path(__file__).parent.parent / "configs" / "dpo-smollm2-lora.yaml")
    assert not cfg.data.allow_leakage and not cfg.data.allow_audit_errors
    audit = preflight_audit(cfg, PreferenceTask(cfg, load_model=False), main=False)
    assert audit is not None


def test_resume_with_the_same_config_file_accepts_its_auto_values(
    tiny_bert, sentiment_file, tmp_path, monkeypatch
):
    """`train CFG` then `train CFG --resume`: the saved config has auto values resolved; the same file (auto)
    is no change."""
    cfg = plain_cfg(tiny_bert, sentiment_file, tmp_path, precision="auto", threads="auto")
    _crash_at(monkeypatch, 6, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError):
        tuneforge.train(cfg)
    monkeypatch.undo()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]
    assert saved["precision"] != "auto" and saved["max_batch_tokens"] != "auto"
    assert tuneforge.train(cfg, resume=True).summary()["steps"] == 12


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 128 MB filesystem (tmpfs), for filling up; skipped where mounting is not allowed (not root)."""
    mount = tmp_path / "smallfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_names_the_intact_checkpoint_and_leaves_no_partial_one(
    tiny_bert, sentiment_file, small_filesystem, monkeypatch
):
    cfg = plain_cfg(tiny_bert, sentiment_file, small_filesystem, keep_checkpoints=3)
    filler = small_filesystem / "filler"
    real = ClassificationTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):  # during step 6 something else fills the disk
        calls["n"] += 1
        if calls["n"] == 6:
            free = os.statvfs(small_filesystem).f_bavail * os.statvfs(small_filesystem).f_frsize
            with open(filler, "wb") as fh:
                fh.write(b"\0" * max(0, free - 4096))
        return real(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    with pytest.raises(TuneforgeError, match="no space left on device.*the last checkpoint step-4 is intact"):
        tuneforge.train(cfg)
    monkeypatch.undo()
    checkpoints = small_filesystem / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-4"]  # no partial step-8
    filler.unlink()  # space again: the run resumes from the intact checkpoint
    assert tuneforge.train(cfg, resume=small_filesystem / "run").summary()["steps"] == 12
