"""How the report writes numbers and tables: intervals, counts, and tables built from column specs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tuneforge.eval import bootstrap as bs
from tuneforge.report.render import Doc


def ci(iv: bs.Interval | dict, pct: bool = False, digits: int = 4, value: float | None = None) -> str:
    """``value [low, high]`` of an interval (``value`` replaces its point estimate when given)."""
    d = iv.to_dict() if isinstance(iv, bs.Interval) else dict(iv)
    if value is not None:
        d["value"] = value
    if pct:
        return f"{100 * d['value']:+.1f}% [{100 * d['low']:+.1f}%, {100 * d['high']:+.1f}%]"
    return f"{d['value']:,.{digits}f} [{d['low']:,.{digits}f}, {d['high']:,.{digits}f}]"


def num(x, digits: int = 1) -> str:
    """A number with thousands separators; ``-`` for None."""
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


def numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, with dotted keys."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


Column = tuple[str, Callable[[Any], object]]


def spec_table(doc: Doc, columns: list[Column], items: Iterable) -> None:
    """A table with one row per item and one column per (header, item -> cell) pair."""
    doc.table([h for h, _ in columns], [[cell(it) for _, cell in columns] for it in items])


def verdict(diff: dict, better: str, worse: str, unclear: str) -> tuple[str, str]:
    """(sentence, level) for a paired difference: real gain, real loss, or an interval that includes zero.

    The three templates may use {value}, {low} and {high} (the difference's interval, as given)."""
    if diff["low"] > 0:
        return better.format(**diff), "ok"
    if diff["high"] < 0:
        return worse.format(**diff), "warn"
    return unclear.format(**diff), "warn"


def samples_table(doc: Doc, ev: dict, reference: str = "reference") -> list[dict]:
    """Sample generations of the base and tuned model on held-out prompts (up to 8); returns those shown."""
    rows = (ev.get("samples") or [])[:8]
    if not rows:
        return []
    doc.h3("Sample generations (held-out prompts)")
    columns: list[Column] = [("prompt", lambda s: s.get("prompt", ""))]
    if any(s.get(reference) for s in rows):
        columns.append((reference, lambda s: s.get(reference, "")))
    columns += [("base model", lambda s: s.get("base") or "-"), ("tuned model", lambda s: s.get("tuned", ""))]
    if any("reward_tuned" in s for s in rows):
        columns += [
            ("reward base", lambda s: num(s.get("reward_base"), 3)),
            ("reward tuned", lambda s: num(s.get("reward_tuned"), 3)),
        ]
    spec_table(doc, columns, rows)
    return rows


def metrics_table(doc: Doc, ev: dict) -> dict:
    """Every number of eval.json's tuned and baseline entries, as they are (for results without a section)."""
    tuned = ev.get("tuned") if isinstance(ev.get("tuned"), dict) else {}
    base = ev.get("baseline") if isinstance(ev.get("baseline"), dict) else {}
    flat_t, flat_b = numbers(tuned), numbers(base)
    if not flat_t:
        doc.p("No metrics in eval.json.")
        return {}
    keys = list(dict.fromkeys([*flat_t, *flat_b]))
    doc.table(["metric", "base", "tuned"], [[k, num(flat_b.get(k), 4), num(flat_t.get(k), 4)] for k in keys])
    return {"tuned": flat_t, "base": flat_b}
