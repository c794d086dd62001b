"""The advisor: k-shot prompts and label scoring, the baselines, the depth probe, plan's table, sweep pruning and
resuming after a kill (tiny random models; each test takes seconds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import tiny_cfg
from tuneforge.data.formats import Example
from tuneforge.errors import ConfigError
from tuneforge.eval.baselines import (
    continuation_logprobs,
    kshot_prompt,
    label_scores,
    stratified_shots,
)
from tuneforge.eval.depth import implied_depth


def _rows(n_pos: int, n_neg: int) -> list[Example]:
    return [Example(text=f"good {i}", label="pos") for i in range(n_pos)] + [
        Example(text=f"bad {i}", label="neg") for i in range(n_neg)
    ]


# ---------------------------------------------------------------- k-shot prompts
def test_stratified_shots_balance_labels_even_when_skewed():
    rows = _rows(90, 10)
    shots = stratified_shots(rows, 5, seed=1)
    counts = Counter(e.label for e in shots)
    assert sorted(counts.values()) == [2, 3]  # 3 + 2, never 5 of the majority label
    assert len({e.text for e in shots}) == 5
    assert stratified_shots(rows, 5, seed=1) == shots  # seeded
    assert stratified_shots(rows, 0, seed=1) == []
    assert Counter(e.label for e in stratified_shots(_rows(3, 1), 4, 0)) == {"pos": 3, "neg": 1}


def test_kshot_prompt_shows_each_shot_with_its_label_then_the_query():
    shots = [Example(text="great fun", label="pos"), Example(text="dull", label="neg")]
    p = kshot_prompt("Review: {text}\nSentiment ({labels}):", shots, "a gem", ["neg", "pos"])
    assert p == (
        "Review: great fun\nSentiment (neg, pos): pos\n\n"
        "Review: dull\nSentiment (neg, pos): neg\n\n"
        "Review: a gem\nSentiment (neg, pos):"
    )


def test_cached_label_scores_equal_plain_scoring(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    prompts = ["Text: good film\nAnswer:", "Text: a long and very boring film indeed\nAnswer:", "x"]
    labels = ["fresh", "rotten tomato pie", "ok"]
    fast = label_scores(model, tok, prompts, labels, batch_size=2)
    plain = continuation_logprobs(
        model, tok, [p for p in prompts for _ in labels], [f" {x}" for _ in prompts for x in labels]
    ).reshape(3, 3)
    np.testing.assert_allclose(fast, plain, atol=1e-4)


# ---------------------------------------------------------------- assess
def test_assess_causal_lm_zero_and_k_shot(tiny_llama, sentiment_file, tmp_path):
    from tuneforge.advise import assess

    cfg = tiny_cfg(tiny_llama, sentiment_file, tmp_path, eval={"few_shot_k": 3, "bootstrap_samples": 200})
    r = assess(cfg, out=tmp_path / "a")
    names = [b["name"] for b in r["baselines"]]
    assert names == ["majority", "zero_shot", "k_shot"]
    k = r["baselines"][2]
    assert k["k"] == 3 and k["prompt"].count("Answer:") == 4  # 3 worked examples + the query
    assert 0 <= k["accuracy"]["low"] <= k["accuracy"]["value"] <= k["accuracy"]["high"] <= 1
    md = Path(r["files"][1]).read_text()
    assert "Recommendation" in md and "```" in md  # the prompt is shown
    assert r["recommendation"].endswith(".")


def test_assess_encoder_knn_and_probe_learn_the_task(tiny_bert, sentiment_file, tmp_path):
    from tuneforge.advise import assess

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, eval={"bootstrap_samples": 200})
    r = assess(cfg, out=tmp_path / "a")
    by = {b["name"]: b for b in r["baselines"]}
    assert set(by) == {"majority", "knn", "logreg"}
    # the synthetic label follows one adjective: frozen random features still separate it better than chance
    assert by["logreg"]["accuracy"]["value"] > by["majority"]["accuracy"]["value"]


# ---------------------------------------------------------------- the depth probe
def test_implied_depth_is_the_first_layer_near_the_best():
    assert implied_depth([0.5, 0.6, 0.8, 0.805, 0.79]) == 2
    assert implied_depth([0.5, 0.9, 0.7]) == 1
    assert implied_depth([0.5, 0.6, 0.7, 0.9]) == 2  # the top block always trains
    assert implied_depth([0.9, 0.5, 0.5]) == 0


def test_probe_scores_every_layer(tiny_bert, sentiment_file, tmp_path):
    from tuneforge.advise import probe

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, eval={"bootstrap_samples": 200})
    r = probe(cfg, out=tmp_path / "p")
    assert [x["layer"] for x in r["layers"]] == [0, 1, 2]  # embeddings + 2 blocks
    assert r["freeze_layers"] in (0, 1)
    assert r["overrides"] == ["method.name=freeze", f"method.freeze_layers={r['freeze_layers']}"]
    assert Path(r["files"][-1]).stat().st_size > 1000  # the plot


def test_freeze_layers_auto_and_baselines_in_the_run(tiny_bert, sentiment_file, tmp_path):
    from tuneforge import train

    cfg = tiny_cfg(
        tiny_bert,
        sentiment_file,
        tmp_path,
        method={"name": "freeze", "freeze_layers": "auto"},
        eval={"bias": False, "bootstrap_samples": 200},
    )
    run = train(cfg)
    summary = json.loads((run.path / "run.json").read_text())
    depth = summary["freeze_probe"]["freeze_layers"]
    assert (run.path / "config.yaml").read_text().count(f"freeze_layers: {depth}") == 1
    base = json.loads((run.path / "baselines.json").read_text())
    assert [b["name"] for b in base["baselines"]] == ["knn", "logreg"] and base["split"] == "test"
    report = (run.path / "report.md").read_text()
    assert "Was fine-tuning needed?" in report and "k-NN on frozen embeddings" in report


def test_unknown_baseline_name_is_refused():
    from tuneforge.config import load_config

    with pytest.raises(ConfigError, match="unknown baseline"):
        load_config(None, ["eval.baselines=[knn, nearest]"])


# ---------------------------------------------------------------- plan
def test_plan_table(tiny_bert, sentiment_file, tmp_path):
    from tuneforge.advise import plan

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 6})
    r = plan(cfg, methods=["full", "lora"], precisions=["fp32"], probe_steps=2, out=tmp_path / "plan")
    full, lora = r["rows"]
    assert lora["trainable_parameters"] < full["trainable_parameters"]
    for row in (full, lora):
        assert row["fits"] and row["memory_gb"] > 0 and row["seconds"] > 0 and row["steps"] == 6
        # each set-up measured in its own process: the estimate is at least its measured resident peak
        measured = row["memory"]["measured_peak"]
        assert 0 < measured <= row["memory_gb"] * 1024 + 1  # (memory_gb is rounded to the MB)
    assert r["recommended"]["method"] == "full"  # the config's method, since it fits
    md = Path(r["files"][1]).read_text()
    assert "peak memory (est.)" in md and "Recommended" in md


# ---------------------------------------------------------------- sweep
SPACE = {"training.lr": {"low": 1e-5, "high": 1e-1, "log": True}, "method.r": {"choices": [4, 8]}}


def fake_runner(calls: list, kill_at: int | None = None):
    """A stand-in for `tuneforge train`: writes the run folder's run.json; the score peaks at lr = 1e-3."""

    def run(config: Path, overrides: list[str], log: Path, env) -> None:
        o = dict(x.split("=", 1) for x in overrides)
        calls.append(o)
        if kill_at is not None and len(calls) == kill_at:
            raise Killed()
        lr = float(o["training.lr"])
        score = 0.9 - 0.1 * abs(np.log10(lr) + 3) + 0.01 * int(o["training.max_steps"])
        folder = Path(o["output.dir"]) / o["output.name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps({"best_metric": score}))

    return run


class Killed(BaseException):
    """Like SIGKILL: nothing in the sweep gets to clean up."""


def test_sweep_prunes_with_successive_halving(tiny_bert, sentiment_file, tmp_path):
    from tuneforge.advise import sweep

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 9})
    calls: list = []
    r = sweep(
        cfg, space=SPACE, trials=8, subset=0.25, rungs=3, eta=3, out=tmp_path / "s", runner=fake_runner(calls)
    )
    assert r["complete"] + r["pruned"] == 8 and r["pruned"] >= 3
    first = [c for c in calls if c["output.name"].endswith("rung-0")]
    assert all(
        c["training.max_steps"] == "1" and "data.limit" in c for c in first
    )  # 9 / 3^2 steps on a subset
    last = [c for c in calls if c["output.name"].endswith("rung-2")]
    assert last and all(c["training.max_steps"] == "9" and "data.limit" not in c for c in last)
    assert len(calls) < 8 * 3  # pruned trials stopped early
    assert abs(np.log10(r["best"]["params"]["training.lr"]) + 3) < 2
    for name in ("sweep.md", "sweep.png", "study.db"):
        assert (tmp_path / "s" / name).stat().st_size > 0


def test_killed_sweep_resumes(tiny_bert, sentiment_file, tmp_path):
    from tuneforge.advise import sweep

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 4})
    calls: list = []
    with pytest.raises(Killed):
        sweep(
            cfg,
            space=SPACE,
            trials=4,
            rungs=2,
            eta=2,
            out=tmp_path / "s",
            runner=fake_runner(calls, kill_at=3),
        )
    killed_params = calls[-1]
    calls2: list = []
    r = sweep(cfg, space=SPACE, trials=4, rungs=2, eta=2, out=tmp_path / "s", runner=fake_runner(calls2))
    assert r["resumed_trials"] == 1
    assert r["complete"] + r["pruned"] == 4  # the trials done before the kill count
    retried = calls2[0]  # the interrupted trial runs again first, with the same values
    assert (
        retried["training.lr"] == killed_params["training.lr"]
        and retried["method.r"] == killed_params["method.r"]
    )
    with pytest.raises(ConfigError, match="other settings"):
        sweep(cfg, space=SPACE, trials=4, rungs=3, eta=2, out=tmp_path / "s", runner=fake_runner([]))


def test_space_errors_name_the_fix(tmp_path):
    from tuneforge.advise.sweep import load_space

    with pytest.raises(ConfigError, match="low .* must be below high"):
        load_space({"training.lr": {"low": 1, "high": 0.1}})
    with pytest.raises(ConfigError, match="unknown key"):
        load_space({"training.lrr": {"low": 0.1, "high": 1}})
    with pytest.raises(ConfigError, match="choices"):
        load_space({"training.lr": [1, 2]})


def test_sweep_trial_is_a_real_run_folder(tiny_bert, sentiment_file, tmp_path):
    """One real trial through `tuneforge train` in its own process."""
    from tuneforge.advise import sweep

    cfg = tiny_cfg(tiny_bert, sentiment_file, tmp_path, training={"max_steps": 4})
    r = sweep(
        cfg,
        space={"training.lr": {"low": 1e-4, "high": 1e-3, "log": True}},
        trials=1,
        rungs=1,
        out=tmp_path / "s",
    )
    assert r["complete"] == 1
    run = tmp_path / "s" / "trials" / "trial-000-rung-0"
    assert json.loads((run / "run.json").read_text())["finished"] and (run / "model").is_dir()
    assert torch.isfinite(torch.tensor(r["best"]["value"]))


# ---------------------------------------------------------------- language-model and preference tasks
def _lm_cfg(task: str, model: str, rows: list[dict], tmp_path, **eval_cfg) -> dict:
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "task": task,
        "model": {"name": model},
        "data": {
            "train": str(path),
            "max_length": 64,
            "validation_fraction": 0.2,
            "test_fraction": 0.1,
            "audit": False,
        },
        "eval": {"bootstrap_samples": 200, "few_shot_k": 2, "baseline_examples": 6, **eval_cfg},
        "output": {"dir": str(tmp_path)},
    }


def test_assess_sft_kshot_perplexity_and_exact_match(tiny_llama, tmp_path):
    from tuneforge.advise import assess

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Is {i} even?"},
                {"role": "assistant", "content": ["yes", "no"][i % 2]},
            ]
        }
        for i in range(40)
    ]
    r = assess(_lm_cfg("sft", tiny_llama, rows, tmp_path), out=tmp_path / "a")
    zero, k = r["baselines"]
    assert (zero["name"], k["name"], k["k"]) == ("zero_shot", "k_shot", 2)
    assert zero["perplexity"]["value"] > 1 and "exact_match" in k  # short label answers: exact match too
    users = [m for m in k["prompt"] if m["role"] == "user"]
    assert len(users) == 3 and k["prompt"][-1]["role"] == "user"  # 2 worked examples, then the question


def test_assess_preference_pairs(tiny_llama, tmp_path):
    from tuneforge.advise import assess

    rows = [
        {"prompt": f"Tell me about {i}.", "chosen": "A careful, complete answer.", "rejected": "No."}
        for i in range(40)
    ]
    dpo = assess(_lm_cfg("dpo", tiny_llama, rows, tmp_path), out=tmp_path / "d")
    by = {b["name"]: b for b in dpo["baselines"]}
    assert set(by) == {"logprob_margin", "length"}
    assert by["length"]["preference_accuracy"]["value"] == 1.0  # the chosen answer is always longer
    assert 0 <= by["logprob_margin"]["preference_accuracy"]["value"] <= 1
