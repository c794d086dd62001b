"""The sections of a run report, in the order they appear. Each is a function ``(doc, files) -> dict | None``
that adds its blocks to the document and returns its numbers for report.json (under its key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuneforge.report.files import RunFiles
from tuneforge.report.render import Doc
from tuneforge.report.sections import (
    base_vs_tuned,
    baselines,
    bias,
    continual,
    cost,
    curves,
    data,
    explanations,
    forgetting,
    generation,
)


@dataclass(frozen=True)
class Section:
    key: str  # its key in report.json
    build: Callable[[Doc, RunFiles], dict | None]
    reads: tuple[str, ...]  # the run files it reads (named when one of them has an unexpected shape)
    headline: Callable[[dict], str | None] = lambda out: out.get("headline")  # its line in the summary


SECTIONS = [
    Section("base_vs_tuned", base_vs_tuned.build, ("eval.json", "lm_eval.json")),
    Section("baselines", baselines.build, ("baselines.json", "eval.json")),  # was fine-tuning needed?
    Section("generation", generation.build, ("eval.json",)),
    Section("curves", curves.build, ("metrics.jsonl", "run.json"), lambda o: o["verdict"]["message"]),
    Section("forgetting", forgetting.build, ("forgetting.json",), lambda o: o["reference"]["message"]),
    Section("bias", bias.build, ("bias.json",), lambda o: o["summary"]),
    Section("explanations", explanations.build, ("explanations.json",), lambda o: None),
    Section("data", data.build, ("data.json", "lengths.json"), lambda o: None),
    Section("cost", cost.build, ("run.json", "metrics.jsonl"), lambda o: None),
    Section("continual", continual.build, ("continual.json", "run.json"), lambda o: o.get("headline")),
]
