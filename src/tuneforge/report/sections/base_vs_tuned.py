"""The base-versus-tuned section: one builder per eval.json result type (its ``result`` field)."""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.report.files import RunFiles
from tuneforge.report.format import metrics_table
from tuneforge.report.render import Doc
from tuneforge.report.sections import classification, language_model, pairs, policy_reward

RESULTS: dict[str, Callable[[Doc, RunFiles], dict]] = {
    "classification": classification.build,
    "language_model": language_model.build,
    "preference": pairs.preference,
    "reward_model": pairs.reward_model,
    "policy_reward": policy_reward.build,
}


def build(doc: Doc, f: RunFiles) -> dict | None:
    doc.h2("Base versus tuned")
    if f.eval is None:
        doc.note(
            f"No eval.json: the run has not been evaluated. Run `tuneforge eval {f.path}`, then rebuild.",
            "warn",
        )
        return None
    section = RESULTS.get(f.result)
    if section is None:  # a result type this version does not know: its numbers as they are
        doc.p(f"eval.json result type '{f.result}' has no section in this version; its numbers as they are:")
        return {"metrics": metrics_table(doc, f.eval)}
    return section(doc, f)
