"""The command line: help everywhere, user mistakes give a clear message and no traceback."""

import json
import subprocess
import sys

import pytest
import yaml
from helpers import tiny_cfg

CLI = [sys.executable, "-m", "tuneforge.cli"]


def tf(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("cmd", [[], ["train"], ["eval"], ["predict"], ["models"], ["datasets"], ["config"]])
def test_help(cmd):
    out = tf(*cmd, "--help")
    assert out.returncode == 0 and "usage: tuneforge" in out.stdout


def test_models_and_reference():
    out = tf("models")
    assert (
        out.returncode == 0
        and "minilm-l6" in out.stderr + out.stdout
        and "gemma3-270m" in out.stderr + out.stdout
    )
    ref = tf("config", "--reference")
    assert "`training.lr`" in ref.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "missing.yaml"], "config file missing.yaml not found"),
        (["train", "model.name=no-such-model", "data.limit=10"], "not a bundled alias"),
        (["train", "model.name=someorg/some-model", "data.limit=10"], "not in the local Hugging Face cache"),
        (["train", "training.lr=-1"], "training.lr must be positive"),
        (["train", "data.train=nowhere.jsonl"], "nowhere.jsonl: file not found"),
        (["eval", "not-a-run"], "not a tuneforge run folder"),
    ],
)
def test_user_mistakes_are_explained_without_traceback(args, expected, tmp_path, monkeypatch, capsys):
    from tuneforge.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err


def test_train_predict_eval_from_the_cli(tiny_bert, sentiment_file, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 6})))
    out = tf("train", str(cfg), "training.lr=2e-3")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["lr"] == 2e-3  # the override is in the saved config
    pred = tf("predict", str(run), "the great film", "an awful plot", "--json")
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    assert pred.returncode == 0 and [r["text"] for r in rows] == ["the great film", "an awful plot"]
    assert set(rows[0]["probs"]) == {"neg", "pos"}
    test_file = tmp_path / "extra.jsonl"
    test_file.write_text(
        "".join(json.dumps({"text": f"the great film {i}", "label": "pos"}) + "\n" for i in range(5))
    )
    ev = tf("eval", str(run), "--data", str(test_file))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads((run / "eval-extra.json").read_text())["tuned"]["n"] == 5
    again = tf("train", str(cfg), "output.overwrite=false")
    assert again.returncode == 2 and "--resume" in again.stderr
