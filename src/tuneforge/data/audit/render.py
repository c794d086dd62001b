"""Showing an ``AuditReport``: a rich report for the terminal (``render``), and ``audit.json`` + a
self-contained ``audit.html`` (tables, findings with examples, matplotlib plots embedded as base64 PNG)
written by ``write``. This module reads the report types; the report never imports it."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.audit.report import AuditReport, loc
from tuneforge.errors import DataError

COLOURS = {"error": "bold red", "warning": "yellow", "info": "cyan"}
HTML_COLOURS = {"error": "#c0392b", "warning": "#b9770e", "info": "#2471a3"}
TOKEN_COLUMNS = ("p50", "p90", "p95", "p99", "max", "max_length", "truncated", "suggested_max_length")


def short(s: Any, n: int) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def example_line(ex: dict[str, Any]) -> str:
    """One example of a finding, on one line."""
    if "a" in ex:
        texts = f"{short(ex['text_a'], 70)!r} ↔ {short(ex['text_b'], 70)!r}"
        return f"{loc(ex['a'])} ↔ {loc(ex['b'])} (similarity {ex['similarity']:.2f}): {texts}"
    rows = ", ".join(loc(w) for w in ex.get("rows", [])[:4])
    extra = f" {ex['labels']}" if "labels" in ex else f" ({ex['reason']})" if "reason" in ex else ""
    return f"{rows}: {short(ex.get('text', ''), 90)!r}{extra}" if "text" in ex else f"{rows}{extra}"


def render(report: AuditReport) -> Any:
    """A rich renderable: headline, files, findings (where, fix), labels, token lengths, examples."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [
        Panel(Text(report.headline()), title=f"data audit · format {report.format}", expand=False)
    ]
    files = Table("split", "source", "rows", "usable", "malformed", "exact dups", "near-dups", title="files")
    for s in report.splits:
        counts = (s.rows, s.examples, s.malformed, s.exact_duplicates, s.near_duplicates)
        files.add_row(s.name, short(loc(s.source), 60), *[f"{n:,}" for n in counts])
    parts.append(files)
    if report.findings:
        t = Table("", "what", "where", "fix", title="findings", show_lines=True)
        for f in report.findings:
            where = ", ".join(loc(w) for w in f.where[:3]) + (
                f" … +{len(f.where) - 3:,}" if len(f.where) > 3 else ""
            )
            t.add_row(Text(f.severity, style=COLOURS[f.severity]), f.what, where, f.fix)
        parts.append(t)
    else:
        parts.append(Text("No problems found.", style="green"))
    labelled = [s for s in report.splits if s.labels]
    if labelled:
        t = Table("label", *[s.name for s in labelled], title="labels")
        for name in _label_order(report)[:30]:
            t.add_row(name, *[f"{(s.labels or {}).get(name, 0):,}" for s in labelled])
        parts.append(t)
    tokened = [s for s in report.splits if s.tokens]
    if tokened:
        t = Table("split", *TOKEN_COLUMNS[:-1], "suggested", title="token lengths")
        for s in tokened:
            t.add_row(s.name, *[f"{(s.tokens or {})[c]:,}" for c in TOKEN_COLUMNS])
        parts.append(t)
        if (tokened[0].tokens or {}).get("memory"):
            parts.append(Text((tokened[0].tokens or {})["memory"]["summary"]))
    for f in report.findings:
        if f.code in ("leakage", "split_overlap", "near_duplicate", "conflicting_labels") and f.examples:
            lines = [f"{f.what} — for example:"] + [f"  {example_line(x)}" for x in f.examples[:3]]
            parts.append(Text("\n".join(lines)))
    return Group(*parts)


def write(report: AuditReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and ``audit.html`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(
            f"{out}: exists and is not a folder; give a folder for audit.json and audit.html (--out)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{out}: cannot create the folder for audit.json and audit.html ({e}); give another --out."
        ) from None
    jpath, hpath = out / "audit.json", out / "audit.html"
    jpath.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    hpath.write_text(to_html(report), encoding="utf-8")
    return jpath, hpath


def _label_order(report: AuditReport) -> list[str]:
    names: list[str] = []
    for s in report.splits:
        names += [k for k in s.labels or {} if k not in names]
    return names


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: AuditReport) -> dict[str, str]:
    """Base64 PNG plots: the token-length histogram and the label distribution (when there is data)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DataError(
            "audit.html embeds plots made with the package 'matplotlib', which is not installed: "
            "`pip install matplotlib` (a tuneforge dependency)."
        ) from None

    out = {}
    if report.lengths:
        fig = Figure(figsize=(7, 3.2))
        ax = fig.subplots()
        top = max(max(v) for v in report.lengths.values() if v)
        step = max(1, -(-top // 60))  # whole tokens per bin, about 60 bins
        bins = np.arange(0, top + 2 * step, step) - 0.5
        for name, v in report.lengths.items():
            ax.hist(v, bins=bins, alpha=0.6, label=name)
        if report.settings.get("max_length"):
            ax.axvline(report.settings["max_length"], color="red", linestyle="--", label="max_length")
        ax.set(xlabel="tokens per example", ylabel="examples")
        ax.legend()
        out["token_lengths"] = _png(fig)
    labelled = [s for s in report.splits if s.labels]
    if labelled:
        names = _label_order(report)[:40]
        fig = Figure(figsize=(7, max(2.5, 0.25 * len(names) * (1 + len(labelled)) / 2)))
        ax = fig.subplots()
        height, y = 0.8 / len(labelled), np.arange(len(names))
        for k, s in enumerate(labelled):
            total = sum((s.labels or {}).values()) or 1
            ax.barh(y + k * height, [(s.labels or {}).get(n, 0) / total for n in names], height, label=s.name)
        ax.set_yticks(y + height * (len(labelled) - 1) / 2, [short(n, 30) for n in names])
        ax.invert_yaxis()
        ax.set(xlabel="fraction of the split")
        ax.legend()
        out["labels"] = _png(fig)
    return out


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``."""
    cell = (lambda c: c) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(report: AuditReport) -> str:
    """The whole report as one self-contained HTML page."""
    e = html.escape
    parts = [
        f"<h1>Data audit · format {e(report.format)}</h1><p class=head>{e(report.headline())}</p>",
        "<h2>Files</h2>",
    ]
    files = []
    for s in report.splits:
        counts = (
            s.rows,
            s.examples,
            s.malformed,
            s.exact_duplicates,
            s.near_duplicates,
            s.conflicting_labels,
        )
        files.append([s.name, loc(s.source), *[f"{n:,}" for n in counts], s.imbalance or ""])
    heads = [
        "split",
        "source",
        "rows",
        "usable",
        "malformed",
        "exact dups",
        "near-dups",
        "conflicting labels",
        "imbalance",
    ]
    parts.append(_table(heads, files))
    rows = []
    for f in report.findings:
        where = "<br>".join(e(loc(w)) for w in f.where[:5]) + (
            f"<br>… {len(f.where) - 5:,} more" if len(f.where) > 5 else ""
        )
        examples = "".join(f"<li>{e(example_line(x))}</li>" for x in f.examples)
        what = e(f.what) + (f"<ul>{examples}</ul>" if examples else "")
        sev = f"<b style='color:{HTML_COLOURS[f.severity]}'>{f.severity}</b>"
        rows.append([sev, what, f"<span class=w>{where}</span>", e(f.fix)])
    parts += [
        "<h2>Findings</h2>",
        _table(["", "what", "where", "fix"], rows, raw=True) if rows else "<p>No problems found.</p>",
    ]
    tokened = [s for s in report.splits if s.tokens]
    if tokened:
        rows = [[s.name, *[(s.tokens or {})[c] for c in TOKEN_COLUMNS]] for s in tokened]
        parts += ["<h2>Token lengths</h2>", _table(["split", *TOKEN_COLUMNS[:-1], "suggested"], rows)]
        if (tokened[0].tokens or {}).get("memory"):
            parts.append(f"<p>{e((tokened[0].tokens or {})['memory']['summary'])}</p>")
    chats = [(s.name, s.chat) for s in report.splits if s.chat]
    if chats:
        rows = [[n, f"{c['conversations']:,}", f"{c['turns_mean']} / {c['turns_p50']} / {c['turns_max']}",
                 json.dumps(c["roles"]), f"{c['with_system']:,}"] for n, c in chats]  # fmt: skip
        heads = ["split", "conversations", "turns (mean / median / max)", "roles", "with a system prompt"]
        parts += ["<h2>Conversations</h2>", _table(heads, rows)]
    for key, png in plots(report).items():
        name = {"token_lengths": "Token-length distribution", "labels": "Label distribution"}[key]
        parts.append(f"<h2>{name}</h2><img alt='{name}' src='data:image/png;base64,{png}'>")
    parts.append(f"<h2>Settings</h2><p><code>{e(json.dumps(report.settings))}</code></p>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left;font-size:14px}"
        ".w{font-family:monospace;font-size:12px}"
        ".head{font-size:18px;padding:10px;background:#f4f6f7;border-left:4px solid #2471a3}"
    )
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>tuneforge data audit</title>"
            f"<style>{style}</style></head>\n<body>{''.join(parts)}</body></html>\n")  # fmt: skip
