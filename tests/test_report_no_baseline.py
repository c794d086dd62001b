"""A language-model run with ``eval.baseline: false`` still gets its report (tuned numbers, no base column)."""

from __future__ import annotations

import json

from tests.test_export import chat_rows, sft_config


def test_sft_report_without_baseline(tiny_llama, tmp_path):
    from tuneforge.recipe import train

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(24)))
    cfg = sft_config(tiny_llama, str(data), tmp_path / "runs", "lora")
    cfg["eval"].update(report=True, baselines="none")
    run = train(cfg)
    report = json.loads((run.path / "report.json").read_text())
    text = (run.path / "report.md").read_text()
    assert "Base versus tuned" in text and "perplexity" in text
    assert json.loads((run.path / "eval.json").read_text()).get("baseline") in (None, {})
    assert report  # built, not refused
