"""Base versus tuned for a language model (result type ``language_model``, SFT): perplexity of both models on
the answer tokens of validation and test, with bootstrap intervals from the per-example NLLs of
``lm_eval.json``, and sample generations side by side."""

from __future__ import annotations

from tuneforge.eval import bootstrap as bs
from tuneforge.report.files import RunFiles
from tuneforge.report.format import ci, metrics_table, num, samples_table
from tuneforge.report.render import Doc


def _split_row(split: str, tuned: dict, base: dict, lm_eval: dict | None, samples: int) -> tuple[dict, list]:
    """report.json numbers and table cells of one split (intervals when lm_eval.json scored it)."""
    row = {
        "tuned": tuned["perplexity"],
        "base": base.get("perplexity"),
        "change": tuned.get("perplexity_change"),
    }
    change = f"{100 * row['change']:+.1f}%" if row["change"] is not None else "-"
    cells = [split, num(row["base"], 3), num(row["tuned"], 3), change]
    if lm_eval and split == lm_eval.get("split") and lm_eval.get("tuned_nll"):
        tok = lm_eval["tokens"]
        t_ci = bs.perplexity_ci(lm_eval["tuned_nll"], tok, samples)
        row.update(tuned_ci=t_ci.to_dict())
        cells = [split, cells[1], ci(t_ci, digits=3, value=row["tuned"]), change]
        if lm_eval.get("base_nll"):  # (eval.baseline: false scores the tuned model only)
            b_ci = bs.perplexity_ci(lm_eval["base_nll"], tok, samples)
            c_ci = bs.perplexity_ratio_ci(lm_eval["tuned_nll"], tok, lm_eval["base_nll"], tok, samples)
            row.update(base_ci=b_ci.to_dict(), change_ci=c_ci.to_dict())
            cells[1], cells[3] = ci(b_ci, digits=3, value=row["base"] or b_ci.value), ci(c_ci, pct=True)
    return row, cells


def build(doc: Doc, f: RunFiles) -> dict:
    ev = f.eval
    tuned_all = ev.get("tuned") if isinstance(ev.get("tuned"), dict) else {}
    base_all = ev.get("baseline") if isinstance(ev.get("baseline"), dict) else {}
    out: dict = {"splits": {}}
    rows = []
    for split, m in tuned_all.items():
        if isinstance(m, dict) and "perplexity" in m:
            out["splits"][split], cells = _split_row(
                split, m, base_all.get(split) or {}, f.lm_eval, f.samples
            )
            rows.append(cells)
    if not rows:  # an eval.json without perplexities: show its numbers as they are
        out["metrics"] = metrics_table(doc, ev)
    else:
        doc.table(["split", "base perplexity [95% CI]", "tuned perplexity [95% CI]", "change [95% CI]"], rows)
        test = out["splits"].get("test") or next(iter(out["splits"].values()))
        if "change_ci" in test and test["base"] is not None:
            c = test["change_ci"]
            real = not c["low"] <= 0 <= c["high"]
            word = "lower" if c["value"] < 0 else "higher"
            out["headline"] = (
                f"Test perplexity on the answer tokens is {100 * abs(c['value']):.1f}% {word} after tuning "
                f"(base {test['base']:.3f} -> tuned {test['tuned']:.3f}; 95% CI of the change "
                f"{100 * c['low']:+.1f}% to {100 * c['high']:+.1f}%{'' if real else ', which includes zero'})."
            )
            doc.note(out["headline"], "ok" if real and c["value"] < 0 else "warn")
        doc.p(
            "Perplexity is measured on the tokens the model is trained to produce (the answers), token-weighted; "
            f"intervals come from {f.samples} bootstrap resamples of whole test examples, paired for the change."
        )
    shown = samples_table(doc, ev)
    if shown:
        out["samples"] = shown
    return out
