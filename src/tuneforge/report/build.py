"""The honest report of a run: base versus tuned with 95% intervals, training curves and an overfitting
verdict, forgetting, the bias probe, data and cost. Written as ``report.md`` (+ ``report_files/``),
``report.html`` (self-contained) and ``report.json`` (every number the report shows).

Everything is read from the run folder (``RunFiles``): the report never loads a model, so
``tuneforge report RUN_DIR`` rebuilds it at any time. The probe files it shows are written by
``tuneforge.probes``. The sections are ``tuneforge.report.sections.SECTIONS``, in order.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.report.files import RunFiles, fix_for
from tuneforge.report.render import Doc, write
from tuneforge.report.sections import SECTIONS, Section


def _build_section(section: Section, doc: Doc, f: RunFiles) -> dict | None:
    """One section; a run file of an unexpected shape becomes an error naming the files and their fix."""
    try:
        return section.build(doc, f)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError) as e:
        present = [f.path / name for name in section.reads if (f.path / name).exists()]
        fixes = " ".join(f"{fix_for(p)}." for p in present)
        raise TuneforgeError(
            f"report: the {section.key.replace('_', ' ')} section cannot read "
            f"{', '.join(str(p) for p in present) or 'its files'}: unexpected shape ({type(e).__name__}: {e}), "
            f"not what this version of tuneforge writes. {fixes}"
        ) from e


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and report.json into the run folder; returns their paths.

    Reads the run's files only (probe files missing from the folder are left out of the report; compute them
    with ``tuneforge.probes.run_probes`` or ``tuneforge report RUN_DIR``)."""
    f = RunFiles(run_dir)
    cfg = f.config
    status = f.summary.get("status", "unfinished")
    finished = f.path / "run.json"
    when = (
        datetime.fromtimestamp(finished.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        if finished.exists()
        else "-"
    )
    doc = Doc(f"tuneforge report: {f.path.name}")
    doc.p(
        f"Task {cfg.task} · model {cfg.model.name} · method {cfg.method.name} · data {cfg.data.train} · "
        f"{status} {when} · run folder {f.path}"
    )
    summary_at = len(doc.blocks)
    out: dict = {
        "run": str(f.path),
        "task": cfg.task,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "status": status,
        "bootstrap_samples": f.samples,
    }
    headlines = []
    for section in SECTIONS:
        out[section.key] = _build_section(section, doc, f)
        if out[section.key]:
            headlines.append(section.headline(out[section.key]))
    doc.h2("Configuration")
    doc.details("config.yaml", f.config_text)
    out["summary"] = [h for h in headlines if h]
    doc.blocks[summary_at:summary_at] = [("h2", "Summary"), ("ul", out["summary"])]
    md, html = write(doc, f.path, "report")
    (f.path / "report.json").write_text(json.dumps(out, indent=1, default=float))
    return {"markdown": md, "html": html, "json": f.path / "report.json"}
