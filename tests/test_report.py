"""The run report: its numbers equal eval.json, metrics.jsonl and run.json; it rebuilds from the CLI; runs compare;
the language-model report has perplexity intervals and forgetting; the HTML renders in headless Chromium."""

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import sentiment_rows
from helpers import tiny_cfg

import tuneforge
from tuneforge.cli import main
from tuneforge.errors import TuneforgeError
from tuneforge.probes import recompute
from tuneforge.report import build_report, compare_runs
from tuneforge.report.cli import add_report_commands

# Debian's chromium or chromium-headless-shell (.ci/run installs the latter; it sets TUNEFORGE_REQUIRE_BROWSER)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def cls_run(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rows = sentiment_rows(240)
    for i, r in enumerate(rows):  # give the bias probe something to swap
        r["text"] = ("he liked " if i % 3 else "she hated ") + r["text"]
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_cfg(
        tiny_bert, str(data), tmp, training={"max_steps": 32, "eval_every": 8, "save_every": 1000, "lr": 3e-3}
    )
    return tuneforge.train(cfg)


def _load(run, name):
    return json.loads((run.path / name).read_text())


def test_report_numbers_equal_the_run_files(cls_run):
    run = cls_run
    for name in ("report.md", "report.html", "report.json", "bias.json", "lengths.json"):
        assert (run.path / name).exists(), name
    report, ev, summary = _load(run, "report.json"), _load(run, "eval.json"), _load(run, "run.json")
    bt = report["base_vs_tuned"]
    for key in ("accuracy", "macro_f1"):
        assert bt["tuned"][key] == ev["tuned"][key] and bt["baseline"][key] == ev["baseline"][key]
        ci = bt["tuned"][f"{key}_ci"]
        assert ci["value"] == pytest.approx(
            ev["tuned"][key], abs=1e-12
        )  # the bootstrap point is the metric itself
        assert ci["low"] <= ci["value"] <= ci["high"]
        assert bt["baseline"][f"{key}_ci"]["value"] == pytest.approx(ev["baseline"][key], abs=1e-12)
    assert bt["n"] == ev["tuned"]["n"] and bt["baseline"]["predicts"] == ev["baseline"]["predicts"]
    md = (run.path / "report.md").read_text()
    assert f"| tuned model | {ev['tuned']['accuracy']:.4f} [" in md
    assert f"always '{ev['baseline']['predicts']}'" in md

    metrics = run.metrics()
    curves = report["curves"]
    assert curves["train"] == [[m["step"], m["loss"]] for m in metrics if m["split"] == "train"]
    assert curves["validation"] == [
        {k: v for k, v in m.items() if k != "split"} for m in metrics if m["split"] == "validation"
    ]
    assert curves["best_step"] == summary["best_step"]
    assert len(curves["validation"]) == 4 and curves["verdict"]["status"] in (
        "stable",
        "still improving",
        "overfitting",
    )
    for key in (
        "steps",
        "tokens_seen",
        "examples_seen",
        "trainable_parameters",
        "peak_rss_mb",
        "wall_seconds",
    ):
        assert report["cost"][key] == summary[key]
    assert f"{summary['tokens_seen']:,}" in md and f"{summary['trainable_parameters']:,}" in md
    assert report["cost"]["examples_per_s"] == pytest.approx(
        summary["examples_seen"] / summary["train_seconds"]
    )
    data = _load(run, "data.json")
    assert report["data"]["splits"]["test"][0] == f"{data['test']['examples']:,}"
    lengths = _load(run, "lengths.json")
    assert len(lengths["splits"]["train"]) == data["train"]["examples"]
    assert report["bias"]["mentions"]["gender"] == ev["tuned"]["n"]
    assert report["summary"][0] == bt["headline"]


def test_html_is_self_contained(cls_run):
    html = (cls_run.path / "report.html").read_text()
    md = (cls_run.path / "report.md").read_text()
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
    assert (
        len(images) == md.count("![") >= 4
    )  # curves, confusion matrix, calibration, lengths (+ bias if it moved)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=\"(https?:|//)", html) and "<script" not in html
    for rel in re.findall(r"\]\((report_files/[^)]+)\)", md):
        assert (cls_run.path / rel).stat().st_size > 1000


def report_cli(argv: list[str]) -> None:
    """`tuneforge report ...` with the probes wired in, as tuneforge.cli wires them."""
    parser = argparse.ArgumentParser()
    add_report_commands(parser.add_subparsers(), recompute=recompute)
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_rebuilds_and_recomputes(cls_run, capsys):
    run = cls_run
    before = _load(run, "report.json")
    (run.path / "bias.json").unlink()
    (run.path / "report.html").unlink()
    report_cli(["report", str(run.path)])  # computes the missing probe
    assert (run.path / "report.html").exists() and (run.path / "bias.json").exists()
    after = _load(run, "report.json")
    assert after["base_vs_tuned"] == before["base_vs_tuned"]
    assert {**after["bias"], "seconds": 0} == {**before["bias"], "seconds": 0}  # the probe is deterministic
    stamp = (run.path / "bias.json").stat().st_mtime_ns
    report_cli(["report", str(run.path)])  # nothing missing: nothing recomputed
    assert (run.path / "bias.json").stat().st_mtime_ns == stamp
    report_cli(["report", str(run.path), "--recompute"])  # redone
    assert (run.path / "bias.json").stat().st_mtime_ns != stamp
    (run.path / "bias.json").unlink()
    main(["report", str(run.path), "--no-probes"])  # renders what is there, loads no model
    assert "report:" in capsys.readouterr().err and not (run.path / "bias.json").exists()
    report_cli(["report", str(run.path)])


def test_compare(cls_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(cls_run.path, other, ignore=shutil.ignore_patterns("model", "checkpoints"))
    cfg = (other / "config.yaml").read_text().replace("lr: 0.003", "lr: 0.001")
    (other / "config.yaml").write_text(cfg)
    result = compare_runs([cls_run.path, other], tmp_path / "cmp")
    assert result["config_differences"] == {"training.lr": [0.003, 0.001]}
    assert result["rows"][0]["accuracy"]["value"] == _load(cls_run, "eval.json")["tuned"]["accuracy"]
    assert result["rows"][1]["vs_first"]["value"] == 0.0  # same predictions on the same test examples
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "training.lr" in html and html.count("data:image/png;base64,") == 1
    main(["compare", str(cls_run.path), str(other), "--out", str(tmp_path / "cli"), "--name", "ab"])
    assert (tmp_path / "cli" / "ab.html").exists() and (tmp_path / "cli" / "ab.md").exists()
    assert capsys.readouterr().out.splitlines()[0].split("\t") == ["", cls_run.path.name, "other"]


def test_language_model_report(tiny_llama, tmp_path):
    cfg = {
        "task": "sft",
        "model": {"name": tiny_llama},
        "data": {"train": "chatterbot", "limit": 24, "eval_limit": 8, "max_length": 64, "audit": False},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "training": {
            "max_steps": 4,
            "batch_size": 8,
            "lr": 3e-3,
            "eval_every": 2,
            "save_every": 1000,
            "precision": "fp32",
        },  # as tests/helpers.tiny_cfg: one accelerate state per process
        "sft": {"samples": 1, "max_new_tokens": 4},
        "eval": {
            "batch_size": 8,
            "bias_max_examples": 4,
            "forgetting_max_texts": 3,
            "bootstrap_samples": 200,
        },
        "output": {"dir": str(tmp_path), "name": "lm"},
    }
    run = tuneforge.train(cfg)
    report, ev = _load(run, "report.json"), _load(run, "eval.json")
    test = report["base_vs_tuned"]["splits"]["test"]
    assert (
        test["tuned"] == ev["tuned"]["test"]["perplexity"]
        and test["base"] == ev["baseline"]["test"]["perplexity"]
    )
    # the per-example NLLs behind the intervals add up to eval.json's perplexities
    assert test["tuned_ci"]["value"] == pytest.approx(test["tuned"], rel=1e-3)
    assert test["base_ci"]["value"] == pytest.approx(test["base"], rel=1e-3)
    assert test["tuned_ci"]["low"] <= test["tuned_ci"]["value"] <= test["tuned_ci"]["high"]
    fg = report["forgetting"]["reference"]
    assert fg["units"] == 3 and fg["base"]["low"] <= fg["base"]["value"] <= fg["base"]["high"]
    assert report["bias"]["kind"] == "language model"
    md = (run.path / "report.md").read_text()
    assert (
        "Catastrophic forgetting" in md
        and "built-in English reference text" in md
        and "Sample generations" in md
    )


def test_html_renders_in_headless_chromium(cls_run, tmp_path):
    """Every embedded plot decodes in a real browser (naturalWidth > 0), and a full-page screenshot is taken."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
            pytest.fail(
                "headless Chromium is required here but not installed (apt-get install chromium-headless-shell)"
            )
        pytest.skip("headless Chromium (Debian package chromium-headless-shell) not installed")
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    probe = tmp_path / "probe.html"  # the report plus a script that records each image's decoded size
    probe.write_text(
        (cls_run.path / "report.html")
        .read_text()
        .replace(
            "</body>",
            "<script>document.body.setAttribute('data-imgs', JSON.stringify(Array.from(document.images)"
            ".map(i => [i.complete, i.naturalWidth, i.naturalHeight])))</script></body>",
        )
    )
    dom = subprocess.run(
        flags + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    sizes = json.loads(re.search(r'data-imgs="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(sizes) >= 4 and all(ok and w > 200 and h > 100 for ok, w, h in sizes), sizes
    shot = tmp_path / "report.png"
    subprocess.run(
        flags + [f"--screenshot={shot}", "--window-size=1200,3000", (cls_run.path / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1200) and pixels.std() > 0.05  # not a blank page


def test_unfinished_run_still_gets_a_report(cls_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(
        cls_run.path,
        partial,
        ignore=shutil.ignore_patterns(
            "model", "checkpoints", "eval.json", "run.json", "bias.json", "report*"
        ),
    )
    paths = build_report(partial)
    md = paths["markdown"].read_text()
    assert "No eval.json" in md and "training did not finish" in md and "Training curves" in md


def test_eval_options_are_validated():
    from tuneforge.config import load_config
    from tuneforge.errors import ConfigError

    assert (
        load_config(None, ["eval.bias_terms=terms.yaml", "eval.forgetting_threshold=0.2"]).eval.bias_terms
        == "terms.yaml"
    )
    for bad, match in [
        (["eval.bias=false", "eval.bias_terms=t.json"], "eval.bias is false"),
        (["eval.forgetting=false", "eval.forgetting_data=x.jsonl"], "eval.forgetting is false"),
        (["eval.bootstrap_samples=10"], "at least 100"),
        (["eval.forgetting_threshold=0"], "positive"),
        (["eval.bias_max_examples=0"], "at least 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)


# ---- result types other than classification and SFT, from fabricated run folders (no model)


def _pairs_eval(result: str, n: int = 60, per_example: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """eval.json of a preference or reward-model run; returns it with the tuned and baseline correctness."""
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(0.6, 1, n), rng.normal(0, 1, n)
    base_c, base_r = rng.integers(10, 60, n).astype(float), rng.integers(10, 60, n).astype(float)
    wins = (chosen > rejected) + 0.5 * (chosen == rejected)
    base_wins = (base_c > base_r) + 0.5 * (base_c == base_r)
    key = "preference_accuracy" if result == "preference" else "accuracy"
    tuned = {key: float(wins.mean()), "margin": float((chosen - rejected).mean()), "n": n}
    base = {key: float(base_wins.mean()), "n": n}
    ev = {"schema_version": 1, "result": result, "split": "test", "tuned": tuned, "baseline": base}
    if result == "preference":
        ev.update(task="dpo", kind="policy", loss_type="sigmoid", beta=0.1)
        ev["samples"] = [{"prompt": "Say hi", "reference": "Hi!", "base": "Hello.", "tuned": "Hi!"}]
    else:
        ev.update(task="reward", kind="reward_model")
        base.update(predicts="the longer answer", chance=0.5)
    if per_example:
        ev["per_example"] = {
            "tuned": {"chosen": chosen.tolist(), "rejected": rejected.tolist()},
            "baseline": {"chosen": base_c.tolist(), "rejected": base_r.tolist()},
        }
    return ev, wins, base_wins


@pytest.mark.parametrize("result", ["preference", "reward_model"])
def test_pairwise_results_have_intervals(tmp_path, result):
    from test_report_inputs import fabricated_run

    from tuneforge.eval import bootstrap as bs

    ev, wins, base_wins = _pairs_eval(result)
    run = fabricated_run(tmp_path / "run", ev)  # the config's task is not read: eval.json's "result" is
    report = json.loads(build_report(run)["json"].read_text())
    bt, samples = report["base_vs_tuned"], report["bootstrap_samples"]
    assert bt["intervals"]["tuned"] == bs.mean_ci(wins, samples).to_dict()
    assert bt["intervals"]["baseline"] == bs.mean_ci(base_wins, samples).to_dict()
    diff = bt["intervals"]["difference"]
    assert diff["value"] == pytest.approx(wins.mean() - base_wins.mean())
    assert diff["low"] <= diff["value"] <= diff["high"]
    assert report["summary"][0] == bt["headline"] and "95% CI" in bt["headline"]
    md = (run / "report.md").read_text()
    assert "accuracy [95% CI]" in md and "(paired)" in md
    assert ("Sample generations" in md) == (result == "preference")
    assert "Not measured for reward models" in md if result == "reward_model" else "predates it" in md

    del ev["per_example"]  # an eval.json without per-example scores: point values, and why no interval
    (run / "eval.json").write_text(json.dumps(ev))
    report = json.loads(build_report(run)["json"].read_text())
    assert report["base_vs_tuned"]["intervals"] == {} and "no interval" in report["summary"][0]
    assert f"`tuneforge eval {run}` rewrites eval.json" in (run / "report.md").read_text()


def test_policy_reward_result_has_intervals(tmp_path):
    from test_report_inputs import fabricated_run

    from tuneforge.eval import bootstrap as bs

    rng = np.random.default_rng(1)
    tuned, base = rng.uniform(0.4, 1, 30), rng.uniform(0, 0.6, 30)
    ev = {
        "schema_version": 1,
        "task": "grpo",
        "kind": "policy",
        "result": "policy_reward",
        "split": "test",
        "rewards": ["length", "format"],
        "tuned": {
            "reward": float(tuned.mean()),
            "reward/length": 0.5,
            "reward/format": 0.3,
            "words": 12.0,
            "n": 30,
        },
        "baseline": {
            "reward": float(base.mean()),
            "reward/length": 0.2,
            "reward/format": 0.1,
            "words": 30.0,
            "n": 30,
        },
        "per_example": {"tuned": {"reward": tuned.tolist()}, "baseline": {"reward": base.tolist()}},
        "samples": [{"prompt": "p", "base": "b", "tuned": "t", "reward_tuned": 0.9, "reward_base": 0.1}],
    }
    run = fabricated_run(tmp_path / "run", ev)
    report = json.loads(build_report(run)["json"].read_text())
    iv = report["base_vs_tuned"]["intervals"]
    assert iv["tuned"] == bs.mean_ci(tuned, 200).to_dict()
    assert (
        iv["difference"]["value"] == pytest.approx(tuned.mean() - base.mean()) and iv["difference"]["low"] > 0
    )
    assert "a real improvement" in report["summary"][0]
    md = (run / "report.md").read_text()
    assert "| length | format |" in md and "reward tuned" in md


def test_eval_json_without_result_field_says_how_to_rewrite_it(tmp_path):
    """eval.json files written before schema_version 1 (no "result"): the report names the command that
    rewrites them instead of guessing their shape from task names."""
    from test_report_inputs import classification_eval, fabricated_run

    ev = classification_eval()
    for key in ("schema_version", "task", "kind", "result"):
        del ev[key]
    run = fabricated_run(tmp_path / "run", ev)
    with pytest.raises(TuneforgeError, match="older tuneforge.*tuneforge eval"):
        build_report(run)


def test_report_layer_runs_no_models():
    """Nothing under tuneforge/report imports the layers that load or train models."""
    import ast

    forbidden = ("tasks", "run", "recipe", "train", "models", "methods", "serve", "probes")
    root = Path(tuneforge.__file__).parent / "report"
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [
                (path.name, n)
                for n in names
                if any(n == f"tuneforge.{f}" or n.startswith(f"tuneforge.{f}.") for f in forbidden)
            ]
    assert found == []
