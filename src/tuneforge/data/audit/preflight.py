"""The training pre-flight: audit the splits, show every error finding with its rows and every warning,
and decide whether training may go on (``preflight_decision``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneforge.data.audit.core import audit_splits
from tuneforge.data.audit.render import example_line, write
from tuneforge.data.audit.report import AuditReport, Finding, loc
from tuneforge.data.formats import Example
from tuneforge.errors import DataError

SHOWN_ROWS = 5  # example rows shown per error finding


def _rows(f: Finding, n: int) -> list[str]:
    """Up to ``n`` example lines of a finding (its examples, else its locations), and how many more."""
    shown = [example_line(x) for x in f.examples[:n]] or [loc(w) for w in f.where[:n]]
    covered = sum(len(x.get("rows", [])) or 1 for x in f.examples[:n]) if f.examples else len(shown)
    out = [f"           {s}" for s in shown]
    if f.count > covered:
        out.append(f"           ... and {f.count - covered:,} more rows (all in audit.json)")
    return out


def preflight_decision(
    report: AuditReport,
    *,
    allow_errors: bool = False,
    allow_leakage: bool = False,
    train_spec: str = "TRAIN",
    other_specs: Sequence[str] = (),
    user_split: bool = True,
    quiet: bool = False,
) -> list[str]:
    """The lines to print about ``report`` before training (after its headline, which the caller prints);
    raises ``DataError`` when training must not go on.

    Lines: each error finding with up to 5 example rows (``file:line``) and its fix; each warning in full
    (what, where, fix); info findings in one line each. ``quiet`` (processes other than the main one):
    no lines, the same decision.

    Raises when there are error findings (leakage aside) and not ``allow_errors``, and when training rows
    duplicate validation/test rows, ``user_split`` is true (the user gave those files, or the dataset ships
    its own test split) and not ``allow_leakage``. The message holds every line above and what to do. When
    tuneforge made the split (``user_split=False``) duplicates cannot straddle it (``split_grouped``), so
    any overlap left is reported as a warning only. ``train_spec``/``other_specs`` (files or alias:split)
    fill in the commands the message suggests.
    """
    lines: list[str] = []
    leaks = [f for f in report.findings if f.code == "leakage"]
    errors = [f for f in report.errors if f.code != "leakage"]
    for f in errors + (leaks if user_split else []):
        lines += [f"  error    {f.what}", *_rows(f, SHOWN_ROWS), f"           fix: {f.fix}"]
    if not user_split:
        for f in leaks:
            lines.append(
                f"  warning  {f.what} (left by near-duplicate search misses; scores may be a bit high)"
            )
    for f in report.warnings:
        where = ", ".join(loc(w) for w in f.where[:3]) + (
            f" ... +{len(f.where) - 3:,}" if len(f.where) > 3 else ""
        )
        lines.append(f"  warning  {f.what}" + (f" at {where}" if where else ""))
        lines.append(f"           fix: {f.fix}")
    lines += [f"  info     {f.what}" for f in report.findings if f.severity == "info"]
    stop = []
    if errors and not allow_errors:
        n = sum(f.count for f in errors)
        stop.append(
            f"data audit: {n:,} rows cannot train correctly (listed above). Fix them (`tuneforge data prepare "
            f"{train_spec} --out DIR` drops them), or set data.allow_audit_errors=true to train anyway."
        )
    if leaks and user_split and not allow_leakage:
        others = list(other_specs) or ["TEST"]
        against = " ".join(f"--against {o}" for o in others)
        stop.append(
            f"data audit: {report.leaked:,} training rows duplicate validation/test rows, so scores on them "
            f"would be inflated. See every pair: `tuneforge data audit {train_spec} {against}`; remove them: "
            f"`tuneforge data prepare {train_spec} {against} --out DIR`; or set data.allow_leakage=true to "
            f"train anyway."
        )
    if stop:
        raise DataError("\n".join([f"data audit: {report.headline()}", *lines, *stop]))
    return [] if quiet else lines


def preflight(
    splits: Mapping[str, list[Example]],
    fmt: str,
    allow_leakage: bool = False,
    tokenizer: Any = None,
    max_length: int | None = None,
    near_dup_threshold: float = 0.8,
    model_config: Any = None,
    out_dir: str | Path | None = None,
    console: Any = None,
    *,
    allow_errors: bool = False,
    user_split: bool = True,
    train_spec: str = "TRAIN",
    other_specs: Sequence[str] = (),
) -> AuditReport:
    """Audit the splits, write ``audit.json``/``audit.html`` into ``out_dir``, print the lines of
    ``preflight_decision`` on ``console`` and raise as it does (see there)."""
    report = audit_splits(splits, fmt, tokenizer, max_length, near_dup_threshold, model_config=model_config)
    if out_dir is not None:
        write(report, out_dir)
    lines = preflight_decision(
        report, allow_errors=allow_errors, allow_leakage=allow_leakage, train_spec=train_spec,
        other_specs=other_specs, user_split=user_split,
    )  # fmt: skip
    if console is not None:
        console.print(f"data audit: {report.headline()}", markup=False, highlight=False)
        for line in lines:
            console.print(line, markup=False, highlight=False)
    return report
