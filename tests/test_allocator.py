"""The allocator a tuneforge command runs on (tuneforge.allocator): jemalloc where installed."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import tiny_cfg

from tuneforge import allocator


def test_the_relaunch_command_preloads_jemalloc_once(monkeypatch):
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: "/opt/lib/libjemalloc.so.2")
    monkeypatch.setattr(allocator, "active", lambda: "system")
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/other.so")
    monkeypatch.delenv("MALLOC_CONF", raising=False)
    monkeypatch.delenv(allocator.ENV, raising=False)
    args, env = allocator.relaunch_command(["train", "cfg.yaml", "training.lr=1e-3"])
    assert args == [sys.executable, "-m", "tuneforge.cli", "train", "cfg.yaml", "training.lr=1e-3"]
    assert env["LD_PRELOAD"] == "/opt/lib/libjemalloc.so.2:/opt/lib/other.so"
    assert env[allocator.ENV] == "jemalloc" and env["MALLOC_CONF"] == allocator.MALLOC_CONF
    monkeypatch.setenv("MALLOC_CONF", "narenas:2")  # the user's settings win
    assert allocator.relaunch_command(["train"])[1]["MALLOC_CONF"] == "narenas:2"
    monkeypatch.setattr(allocator, "active", lambda: "jemalloc")  # already under it: run as is
    assert allocator.relaunch_command(["train"]) is None


def test_system_or_missing_jemalloc_runs_as_is_and_a_required_one_is_explained(monkeypatch):
    monkeypatch.setattr(allocator, "active", lambda: "system")
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.relaunch_command(["train"]) is None
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    monkeypatch.setenv(allocator.ENV, "auto")
    assert allocator.relaunch_command(["train"]) is None
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(SystemExit, match="apt install libjemalloc2"):
        allocator.relaunch_command(["train"])
    monkeypatch.setenv(allocator.ENV, "tcmalloc")
    with pytest.raises(SystemExit, match="auto, jemalloc, system"):
        allocator.relaunch_command(["train"])


def test_tuneforge_train_runs_under_jemalloc_where_installed(tiny_bert, sentiment_file, tmp_path):
    """The command restarts itself under jemalloc (same pid: signals and kill -9 reach the training) and the
    run records it; CI installs libjemalloc2 (TUNEFORGE_REQUIRE_JEMALLOC=1 makes its absence a failure)."""
    if allocator.find_jemalloc() is None:
        if os.environ.get("TUNEFORGE_REQUIRE_JEMALLOC"):
            pytest.fail("libjemalloc2 is not installed (apt install libjemalloc2)")
        pytest.skip("jemalloc not installed")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 2})))
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", str(cfg), "eval.report=false"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["allocator"] == "jemalloc"
