"""The run report: its numbers equal eval.json, metrics.jsonl and run.json; it rebuilds from the CLI; runs compare;
the language-model report has perplexity intervals and forgetting; the HTML renders in headless Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import sentiment_rows
from helpers import tiny_cfg

import tuneforge
from tuneforge.cli import main
from tuneforge.report import build_report, compare_runs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


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


def test_cli_rebuilds_and_recomputes(cls_run, capsys):
    run = cls_run
    before = _load(run, "report.json")
    (run.path / "bias.json").unlink()
    (run.path / "report.html").unlink()
    main(["report", str(run.path)])
    assert (run.path / "report.html").exists() and (run.path / "bias.json").exists()
    after = _load(run, "report.json")
    assert after["base_vs_tuned"] == before["base_vs_tuned"]
    assert {**after["bias"], "seconds": 0} == {**before["bias"], "seconds": 0}  # the probe is deterministic
    main(["report", str(run.path), "--no-probes"])
    assert "report:" in capsys.readouterr().err


def test_compare(cls_run, tmp_path):
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


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="headless Chromium (Debian package 'chromium') not installed"
)
def test_html_renders_in_headless_chromium(cls_run, tmp_path):
    """Every embedded plot decodes in a real browser (naturalWidth > 0), and a full-page screenshot is taken."""
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
