"""Why the classifier decided as it did (explanations.json): integrated gradients for a sample of test errors and
for every bias-probe flip, i.e. which words moved the decision."""

from __future__ import annotations

from tuneforge.report.files import RunFiles, read_json
from tuneforge.report.format import spec_table
from tuneforge.report.render import Doc

TOP = 4  # words shown per explanation


def _words(e: dict, k: int = TOP) -> str:
    """The ``k`` words with the largest contributions, signed, largest first."""
    ranked = sorted(e["words"], key=lambda w: -abs(w["attribution"]))[:k]
    return ", ".join(f"{w['word']} {w['attribution']:+.2f}" for w in ranked) or "-"


def _snippet(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _changed(f: dict) -> str:
    """The swapped words with their contribution to the original label, before → after."""
    parts = [f"{c['from']} {c['before']:+.2f} → {c['to']} {c['after']:+.2f}" for c in f["changed"]]
    return "; ".join(parts) or "-"


ERROR_COLUMNS = [
    ("text", lambda e: _snippet(e["text"])),
    ("true", lambda e: e["true"]),
    ("predicted (p)", lambda e: f"{e['label']} ({e['probability']:.2f})"),
    ("words that pushed towards the prediction (+) or away (−)", _words),
]
FLIP_COLUMNS = [
    ("swap", lambda f: f["swap"]),
    (
        "original → counterfactual",
        lambda f: f"{_snippet(f['original']['text'], 80)} → {_snippet(f['counterfactual']['text'], 80)}",
    ),
    ("label", lambda f: f"{f['before']} → {f['after']}"),
    (
        "p(original label)",
        lambda f: f"{f['original']['probability']:.2f} → {f['counterfactual']['probability']:.2f}",
    ),
    ("swapped words' contribution", _changed),
    ("top words after the swap", lambda f: _words(f["counterfactual"], 3)),
]


def build(doc: Doc, f: RunFiles) -> dict | None:
    x = read_json(f.path / "explanations.json")
    if x is None:
        if f.kind == "classifier" and f.config.eval.explain > 0:
            doc.h2("Explanations")
            doc.p(
                "Not computed: explanations need Captum (`pip install 'tuneforge[explain]'`), then "
                f"`tuneforge report {f.path}` adds them."
            )
        return None
    doc.h2("Explanations")
    doc.p(
        f"Which words moved the decision: {x['method']}, {x['n_steps']} steps, explaining the {x['score']} "
        f"against a baseline of {x['baseline']}. A word's contribution is in probability points; the "
        f"contributions of a text sum to p(text) − p(baseline) up to the integration error (largest |delta| "
        f'here {x["max_abs_delta"]:.2g}). `tuneforge predict RUN "text" --explain` explains any text.'
    )
    doc.h3("Test errors")
    if x["errors"]:
        doc.p(f"{len(x['errors'])} of the {x['test_errors']} misclassified test inputs, chosen at random.")
        spec_table(doc, ERROR_COLUMNS, x["errors"])
    else:
        doc.p("The model got every test input right.")
    doc.h3(f"Bias-probe flips ({len(x['flips'])} of {x['flips_total']})")
    if x["flips"]:
        doc.p(
            "Each original and its counterfactual are explained for the label the original got, so the swapped "
            "word's contribution before and after the swap can be compared; a large change there is the swap "
            "moving the decision."
        )
        spec_table(doc, FLIP_COLUMNS, x["flips"])
    else:
        doc.p("No swap of a bias-probe term changed the predicted label.")
    return {
        "test_errors": x["test_errors"],
        "errors_explained": len(x["errors"]),
        "flips": x["flips_total"],
        "flips_explained": len(x["flips"]),
        "max_abs_delta": x["max_abs_delta"],
    }
