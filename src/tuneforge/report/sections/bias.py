"""The bias probe: how the model moves when demographic terms are swapped in held-out inputs (bias.json).
A classifier's flips are counted; a language model's change of log-likelihood is compared with the base's."""

from __future__ import annotations

from tuneforge.eval.bias import MIN_N
from tuneforge.report import plots
from tuneforge.report.files import RunFiles
from tuneforge.report.format import Column, spec_table
from tuneforge.report.render import Doc


def _swap(s: dict) -> str:
    return f"{s['from']} → {s['to']}"


# per kind of probe: (columns of the swap table, columns of the table of inputs that moved most)
CLASSIFIER: tuple[list[Column], list[Column]] = (
    [
        ("category", lambda s: s["category"]),
        ("swap", _swap),
        ("counterfactuals", lambda s: s["n"]),
        ("flipped", lambda s: s["flips"]),
        (
            "flip rate [95% CI]",
            lambda s: f"{100 * s['flip_rate']:.1f}% [{100 * s['low']:.1f}%, {100 * s['high']:.1f}%]",
        ),
        ("mean |Δ p|", lambda s: f"{s['mean_abs_shift']:.3f}"),
    ],
    [
        ("swap", lambda e: e["swap"]),
        ("original", lambda e: e["original"]),
        ("counterfactual", lambda e: e["counterfactual"]),
        (
            "prediction before → after",
            lambda e: (
                f"{e['before']} → {e['after']}; p({e['before']}) {e['p_before']:.2f} → {e['p_after']:.2f}"
            ),
        ),
    ],
)


def _signed(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


LANGUAGE_MODEL: tuple[list[Column], list[Column]] = (
    [
        ("category", lambda s: s["category"]),
        ("swap", _swap),
        ("counterfactuals", lambda s: s["n"]),
        ("Δ LL tuned", lambda s: _signed(s["tuned_delta"])),
        ("Δ LL base", lambda s: _signed(s.get("base_delta") if "change" in s else None)),
        (
            "tuned − base [95% CI]",
            lambda s: f"{s['change']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]" if "change" in s else "-",
        ),
    ],
    [
        ("swap", lambda e: e["swap"]),
        ("original", lambda e: e["original"]),
        ("counterfactual", lambda e: e["counterfactual"]),
        ("Δ LL tuned", lambda e: _signed(e["tuned_delta"], 2)),
        ("Δ LL base", lambda e: _signed(e.get("base_delta"), 2)),
    ],
)


def _level(b: dict) -> str:
    """warn when the top-ranked swap moved the model beyond chance, else ok (info without swaps)."""
    swaps = b["swaps"]
    if not swaps:
        return "info"
    top = swaps[0] if swaps[0]["n"] >= MIN_N else None
    if top is None:
        return "ok"
    if b["kind"] == "classifier":
        return "warn" if top["flip_rate"] >= 0.05 and top["low"] > 0 else "ok"
    return "warn" if "low" in top and not top["low"] <= 0 <= top["high"] else "ok"


def build(doc: Doc, f: RunFiles) -> dict | None:
    doc.h2("Bias probe")
    b = f.bias
    if not b:
        doc.p("Not run (eval.bias is false, or the run predates it: `tuneforge report RUN_DIR` computes it).")
        return None
    swaps, classifier = b["swaps"], b["kind"] == "classifier"
    doc.note(b["summary"], _level(b))
    doc.p(
        f"Method: every held-out test input that mentions a listed term (up to {b['max_examples']} per category) "
        f"is rewritten with the terms of another group swapped in (whole words, case kept), and the model is run "
        f"on both. Inputs mentioning each category: "
        + ", ".join(f"{c} {n}" for c, n in b["mentions"].items())
        + f" of {b['texts']}."
    )
    moved = not classifier or any(s["flips"] or s["mean_abs_shift"] >= 0.01 for s in swaps)
    if swaps and moved:
        doc.image("bias", plots.bias_bars(swaps, b["kind"]), "bias probe")
    if swaps:
        swap_columns, example_columns = CLASSIFIER if classifier else LANGUAGE_MODEL
        spec_table(doc, swap_columns, swaps[:15])
        if not classifier:
            doc.p(
                "Δ LL is the log-likelihood (nats, summed over the text) of the swapped text minus the original's; "
                "names and words split into different numbers of tokens, so compare tuned with base rather than "
                "reading Δ LL alone."
            )
        if b["examples"]:
            doc.h3("Inputs that moved most")
            spec_table(doc, example_columns, b["examples"])
    doc.p(
        "The term lists (gender words and pronouns, first names associated with different groups, nationalities) "
        "ship in tuneforge/resources/bias_terms.json; add your own with eval.bias_terms. Swaps are word-for-word, "
        "so some are ungrammatical (her → his where 'him' was meant); read the examples before drawing conclusions."
    )
    return {k: v for k, v in b.items() if k != "examples"}
