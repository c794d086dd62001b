"""Catastrophic forgetting: base versus tuned perplexity on a general-English reference text (and on
eval.forgetting_data), from forgetting.json."""

from __future__ import annotations

from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, spec_table
from tuneforge.report.render import Doc

NOT_MEASURED = {
    "classifier": "Not measured for classifiers: forgetting is checked on language models, as the rise of their "
    "perplexity on general English after tuning. A classifier's new head has no language-model output to "
    "compare; to check it on other labelled data, run `tuneforge eval RUN_DIR --data FILE`.",
    "reward_model": "Not measured for reward models: forgetting is checked on language models, as the rise of "
    "their perplexity on general English after tuning; a reward model's new head has no language-model output.",
}


def build(doc: Doc, f: RunFiles) -> dict | None:
    doc.h2("Catastrophic forgetting")
    fg = f.forgetting
    if not fg:
        doc.p(
            NOT_MEASURED.get(f.kind)
            or "Not measured (eval.forgetting is false, or the run predates it: `tuneforge report RUN_DIR` "
            "computes it)."
        )
        return None
    texts = [fg[key] for key in ("reference", "data") if fg.get(key)]
    for r in texts:
        doc.note(r["message"], "warn" if r["warning"] else "ok")
    spec_table(
        doc,
        [
            ("text", lambda r: r["name"]),
            ("size", lambda r: f"{r['units']} texts, {r['tokens']:,} tokens"),
            ("base perplexity [95% CI]", lambda r: ci(r["base"], digits=3)),
            ("tuned perplexity [95% CI]", lambda r: ci(r["tuned"], digits=3)),
            ("change [95% CI]", lambda r: ci(r["relative_change"], pct=True)),
        ],
        texts,
    )
    doc.p(
        f"Warning threshold: +{100 * fg['reference']['threshold']:.0f}% (eval.forgetting_threshold). The reference "
        f"text is eval.forgetting_text; name a second task dataset with eval.forgetting_data to check the tuned "
        f"model is still good at it."
    )
    return fg
