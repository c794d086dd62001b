"""Bad run folders given to `tuneforge report` and `tuneforge compare`: each is a clear error that names the file
(and line) and the fix, never a traceback; a torn last line of metrics.jsonl is left out with a warning; compare
tables stay whole when piped. Run folders are fabricated (no model is trained or loaded)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tuneforge.cli import main
from tuneforge.config import load_config
from tuneforge.errors import TuneforgeError
from tuneforge.report import build_report


def classification_eval(n: int = 40) -> dict:
    """A classification eval.json of n test examples (3 in 4 right), as ``tuneforge eval`` writes it."""
    y = [i % 2 for i in range(n)]
    pred = [t if i % 4 else 1 - t for i, t in enumerate(y)]
    acc = sum(a == b for a, b in zip(y, pred)) / n
    per_class = {
        lab: {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": n // 2} for lab in ("neg", "pos")
    }
    return {
        "schema_version": 1,
        "task": "classification",
        "kind": "classifier",
        "result": "classification",
        "split": "test",
        "tuned": {
            "loss": 0.5,
            "accuracy": acc,
            "macro_f1": 0.75,
            "labels": ["neg", "pos"],
            "n": n,
            "per_class": per_class,
            "confusion_matrix": [[15, 5], [5, 15]],
        },
        "predictions": {"y_true": y, "y_pred": pred, "confidence": [0.8] * n},
        "baseline": {"predicts": "neg", "accuracy": 0.5, "macro_f1": 1 / 3, "n": n},
    }


def fabricated_run(folder: Path, eval_json: dict | None = None, **config) -> Path:
    """A finished run folder as training leaves it (config, run.json, data.json, metrics, eval.json), no model."""
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"{k}={v}" for k, v in {"task": "classification", "model.name": "minilm-l6", **config}.items()
    ]
    cfg = load_config(None, ["data.train=data.jsonl", "eval.bootstrap_samples=200", *overrides])
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metrics = []
    for step in range(1, 9):
        metrics.append(
            {
                "step": step,
                "epoch": 0,
                "split": "train",
                "loss": 1 / step,
                "examples_per_s": 50.0,
                "tokens_per_s": 800.0,
            }
        )
        if step % 2 == 0:
            metrics.append(
                {
                    "step": step,
                    "epoch": 0,
                    "split": "validation",
                    "loss": 0.9 / step,
                    "accuracy": 0.5 + step / 40,
                }
            )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {
        "status": "completed",
        "steps": 8,
        "best_step": 8,
        "metric": "loss",
        "best_metric": 0.1125,
        "trainable_parameters": 1000,
        "total_parameters": 4000,
        "train_seconds": 2.0,
        "wall_seconds": 3.0,
        "examples_seen": 64,
        "tokens_seen": 1024,
        "peak_rss_mb": 300.0,
        "processes": 1,
        "device": "cpu",
    }
    (folder / "run.json").write_text(json.dumps(summary))
    data = {s: {"examples": n, "truncated": 0} for s, n in (("train", 64), ("validation", 8), ("test", 40))}
    (folder / "data.json").write_text(json.dumps(data))
    (folder / "eval.json").write_text(json.dumps(eval_json or classification_eval()))
    return folder


def _garble(name: str, text: str | bytes):
    def change(run: Path) -> None:
        (run / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    return change


def _append(name: str, text: str):
    def change(run: Path) -> None:
        with open(run / name, "a") as fh:
            fh.write(text)

    return change


def _metrics_middle_garbage(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(2, "{not json")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _eval_without_predictions(run: Path) -> None:
    ev = classification_eval()
    del ev["predictions"]
    (run / "eval.json").write_text(json.dumps(ev))


def _remove(name: str):
    return lambda run: (run / name).unlink()


# (case, how the run folder is damaged, the words the error must hold: the file (and line) and the fix)
REPORT_CASES = [
    (
        "metrics.jsonl garbage in the middle",
        _metrics_middle_garbage,
        ["metrics.jsonl, line 3", "repair line 3"],
    ),
    (
        "metrics.jsonl line not an object",
        _append("metrics.jsonl", "[1, 2]\n{}\n"),
        ["metrics.jsonl, line 13", "repair line 13"],
    ),
    (
        "metrics.jsonl binary",
        _garble("metrics.jsonl", b"\xff\xfe\x00garbage"),
        ["metrics.jsonl", "not UTF-8"],
    ),
    (
        "eval.json cut short",
        _garble("eval.json", '{"split": "test", "tuned": {"acc'),
        ["eval.json, line 1", "tuneforge eval"],
    ),
    ("eval.json binary", _garble("eval.json", b"\x89PNG\x00\xff"), ["eval.json", "tuneforge eval"]),
    ("eval.json a list", _garble("eval.json", "[1, 2, 3]"), ["eval.json", "JSON list", "tuneforge eval"]),
    (
        "eval.json of another shape",
        _eval_without_predictions,
        ["eval.json", "unexpected shape", "tuneforge eval"],
    ),
    ("data.json garbled", _garble("data.json", '{"train": {"examples": 6'), ["data.json", "delete it"]),
    ("run.json garbled", _garble("run.json", "status: done"), ["run.json", "delete it"]),
    ("bias.json garbled", _garble("bias.json", "{"), ["bias.json", "--recompute"]),
    ("config.yaml missing", _remove("config.yaml"), ["no config.yaml", "restore it"]),
    ("run folder missing", shutil.rmtree, ["no such run folder", "Give the folder `tuneforge train` wrote"]),
    (
        "a file for the folder",
        lambda run: shutil.rmtree(run) or run.write_text("x"),
        ["a file, not a run folder"],
    ),
    (
        "config.yaml garbled",
        _garble("config.yaml", "task: [classification\n"),
        ["config.yaml", "not valid YAML", "restore it"],
    ),
]


@pytest.mark.parametrize("case,damage,words", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_of_a_damaged_run_is_a_clear_error(tmp_path, capsys, case, damage, words):
    run = fabricated_run(tmp_path / "run")
    main(["report", str(run), "--no-probes"])  # the undamaged folder reports
    capsys.readouterr()
    damage(run)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run), "--no-probes"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    flat = " ".join(err.split())  # rich wraps long lines
    for w in words:
        assert w in flat, (w, err)
    assert str(run) in "".join(err.split()) and "Traceback" not in err
    with pytest.raises(TuneforgeError):  # the Python API raises the same error
        build_report(run)


def test_torn_last_metrics_line_is_left_out_with_a_warning(tmp_path, caplog):
    run = fabricated_run(tmp_path / "run")
    whole = build_report(run)["json"].read_text()
    _append("metrics.jsonl", '{"step": 9, "split": "tr')(run)  # a kill during the write
    with caplog.at_level(logging.WARNING):
        paths = build_report(run)
    assert "metrics.jsonl, line 13: torn last line left out" in caplog.text
    assert json.loads(paths["json"].read_text())["curves"] == json.loads(whole)["curves"]


def _same_folder_twice(tmp_path: Path) -> list[str]:
    run = fabricated_run(tmp_path / "a")
    return [str(run), str(run)]


def _same_folder_two_spellings(tmp_path: Path) -> list[str]:
    run = fabricated_run(tmp_path / "a")
    (tmp_path / "sub").mkdir()
    return [str(run), str(tmp_path / "sub" / ".." / "a") + "/"]


def _same_folder_through_a_link(tmp_path: Path) -> list[str]:
    run = fabricated_run(tmp_path / "a")
    os.symlink(run, tmp_path / "link")
    return [str(tmp_path / "link"), str(run)]


def _relative_and_absolute(tmp_path: Path) -> list[str]:
    run = fabricated_run(tmp_path / "a")
    return [str(run), os.path.relpath(run)]


def _one_folder_missing_config(tmp_path: Path) -> list[str]:
    a, b = fabricated_run(tmp_path / "a"), fabricated_run(tmp_path / "b")
    (b / "config.yaml").unlink()
    return [str(a), str(b)]


COMPARE_CASES = [
    ("same folder twice", _same_folder_twice, ["is given twice", "Give each run folder once"]),
    ("two spellings", _same_folder_two_spellings, ["are the same run folder", "Give each run folder once"]),
    ("through a link", _same_folder_through_a_link, ["are the same run folder", "Give each run folder once"]),
    (
        "relative and absolute",
        _relative_and_absolute,
        ["are the same run folder", "Give each run folder once"],
    ),
    ("a folder without config.yaml", _one_folder_missing_config, ["no config.yaml", "restore it"]),
    ("only one run", lambda tmp: [str(fabricated_run(tmp / "a"))], ["at least two run folders"]),
]


@pytest.mark.parametrize("case,folders,words", COMPARE_CASES, ids=[c[0] for c in COMPARE_CASES])
def test_compare_refuses_bad_folders(tmp_path, capsys, case, folders, words):
    argv = ["compare", *folders(tmp_path), "--out", str(tmp_path / "cmp")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err and not (tmp_path / "cmp" / "compare.html").exists()


def test_compare_table_stays_whole_when_piped(tmp_path, capsys):
    long_a = "lora-r16-alpha32-minilm-rotten-tomatoes-with-a-long-descriptive-name"
    long_b = "full-finetune-minilm-rotten-tomatoes-with-an-even-longer-descriptive-name"
    a = fabricated_run(tmp_path / long_a, **{"training.lr": 0.003})
    b = fabricated_run(tmp_path / long_b, **{"training.lr": 0.001})
    main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")])
    out = capsys.readouterr().out  # captured: not a terminal, so tab-separated
    assert "…" not in out
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["", long_a, long_b]
    assert ["training.lr", "0.003", "0.001"] in rows
    assert all(len(r) == 3 for r in rows)
    accuracy = next(r for r in rows if r[0] == "test accuracy")
    assert accuracy[1].startswith("0.7500 [") and accuracy[1].endswith("]")
