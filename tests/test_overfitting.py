"""The overfitting verdict: synthetic curves for each case, and a deliberately overfitted tiny run."""

import json
import random

from helpers import tiny_cfg

import tuneforge
from tuneforge.eval.overfitting import overfitting_verdict


def curves(train: list[float], val: list[float], every: int = 10) -> list[dict]:
    out = [{"step": every * (i + 1) // 2, "split": "train", "loss": v} for i, v in enumerate(train)]
    out += [{"step": every * (i + 1), "split": "validation", "loss": v} for i, v in enumerate(val)]
    return sorted(out, key=lambda m: m["step"])


def test_rising_validation_with_falling_training_is_overfitting():
    v = overfitting_verdict(
        curves([2.0, 1.6, 1.2, 0.9, 0.6, 0.4, 0.2, 0.1, 0.05, 0.02], [1.5, 1.1, 1.2, 1.4, 1.7])
    )
    assert v.status == "overfitting" and v.best_step == 20 and v.evals_after_best == 3
    assert "rose for 3 evaluations after step 20" in v.message


def test_other_cases():
    assert (
        overfitting_verdict(curves([2, 1.5, 1.2, 1.0, 0.9, 0.8], [1.5, 1.2, 1.0])).status == "still improving"
    )
    stable = overfitting_verdict(curves([2, 1.5, 1.2, 1.0, 0.9, 0.8, 0.8, 0.8], [1.5, 1.0, 1.01, 1.0]))
    assert stable.status == "stable"
    assert overfitting_verdict(curves([2, 1], [1.0, 0.9])).status == "too few evaluations"
    assert overfitting_verdict(curves([2, 1], [])).status == "no validation"
    # validation loss rises but so does training loss: not called overfitting
    noisy = overfitting_verdict(curves([1.0, 1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5], [1.0, 0.9, 1.0, 1.2]))
    assert noisy.status == "stable" and "rather than overfitting" in noisy.message


def test_overfitted_run_is_flagged(tiny_bert, tmp_path):
    """About 35 rows with random labels, 10 epochs: training loss goes to ~0, validation loss climbs."""
    rng = random.Random(0)
    words = "film plot cast music story ending scene actor script pacing".split()
    rows = [
        {"text": " ".join(rng.choices(words, k=6)) + f" {i}", "label": rng.choice(["a", "b"])}
        for i in range(48)
    ]
    data = tmp_path / "noise.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_cfg(
        tiny_bert,
        str(data),
        tmp_path,
        data={"validation_fraction": 0.2, "test_fraction": 0.1},
        training={"max_steps": 48, "eval_every": 8, "save_every": 1000, "log_every": 4, "lr": 3e-3},
        eval={"bias": False},
    )
    run = tuneforge.train(cfg)
    report = json.loads((run.path / "report.json").read_text())
    verdict = report["curves"]["verdict"]
    assert verdict["status"] == "overfitting", verdict["message"]
    assert "Overfitting" in (run.path / "report.md").read_text()
