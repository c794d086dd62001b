"""Checkpoints: a crashed run resumes to exactly the weights of an uninterrupted run; writes are atomic;
gradient accumulation and two DDP processes equal one larger batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import max_diff, tiny_cfg

import tuneforge
from tuneforge.tasks.classification import ClassificationTask, load_sequence_classifier
from tuneforge.train import checkpoint as ckpt


def _final(run_path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_sequence_classifier(run_path / "model").state_dict().items()}


def _cfg(tiny_bert, data, out, **training):
    # No validation: the final model is the last weights. Dropout on: RNG states must be restored too.
    return tiny_cfg(
        tiny_bert,
        data,
        out,
        model={"dropout": 0.1},
        data={"validation_fraction": 0.0},
        training={"max_steps": 12, "save_every": 4, "eval_every": None, **training},
    )


def test_resume_after_crash_matches_uninterrupted(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    full = tuneforge.train(_cfg(tiny_bert, sentiment_file, tmp_path / "a"))

    calls = {"n": 0}
    real_loss = ClassificationTask.loss

    def crashing_loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 10:  # dies in step 10; the last checkpoint is step 8
            raise RuntimeError("simulated crash")
        return real_loss(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", crashing_loss)
    cfg_b = _cfg(tiny_bert, sentiment_file, tmp_path / "b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        tuneforge.train(cfg_b)
    run_b = tmp_path / "b" / "run"
    assert (run_b / "checkpoints" / "latest").read_text() == "step-8"
    assert not (run_b / "model").exists()
    monkeypatch.setattr(ClassificationTask, "loss", real_loss)
    resumed = tuneforge.train(cfg_b, resume=run_b)
    assert resumed.summary()["steps"] == 12
    assert max_diff(_final(full.path), _final(resumed.path)) < 1e-6
    steps = [m["step"] for m in resumed.metrics() if m["split"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated log lines after resuming


def test_crash_while_writing_keeps_the_previous_checkpoint(tiny_bert, sentiment_file, tmp_path, monkeypatch):
    real_save = ckpt.save_file
    calls = {"n": 0}

    def failing_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-written
            Path(path).write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        tuneforge.train(_cfg(tiny_bert, sentiment_file, tmp_path))
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-4"
    assert ckpt.latest_checkpoint(tmp_path / "run") == root / "step-4"
    assert (root / "step-4" / "weights.safetensors").stat().st_size > 1000


def test_gradient_accumulation_is_exactly_a_larger_batch(tiny_bert, sentiment_file, tmp_path):
    a = tuneforge.train(
        tiny_cfg(
            tiny_bert,
            sentiment_file,
            tmp_path / "a",
            data={"validation_fraction": 0.0},
            training={"batch_size": 8, "grad_accum": 1, "eval_every": None},
        )
    )
    b = tuneforge.train(
        tiny_cfg(
            tiny_bert,
            sentiment_file,
            tmp_path / "b",
            data={"validation_fraction": 0.0},
            training={"batch_size": 2, "grad_accum": 4, "eval_every": None},
        )
    )
    assert max_diff(_final(a.path), _final(b.path)) < 1e-5


def test_two_ddp_processes_equal_one_with_double_accumulation(tiny_bert, sentiment_file, tmp_path):
    common = dict(
        data={"validation_fraction": 0.0}, training={"max_steps": 6, "batch_size": 4, "eval_every": None}
    )
    one = tiny_cfg(tiny_bert, sentiment_file, tmp_path / "one", **common)
    one["training"]["grad_accum"] = 2
    ddp = tiny_cfg(tiny_bert, sentiment_file, tmp_path / "ddp", **common)
    ddp["training"]["grad_accum"] = 1
    a = tuneforge.train(one)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(ddp))
    cli = [sys.executable, "-m", "tuneforge.cli", "train", str(cfg_path), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert tuneforge.load_run(tmp_path / "ddp" / "run").summary()["processes"] == 2
    assert max_diff(_final(a.path), _final(tmp_path / "ddp" / "run")) < 1e-5
