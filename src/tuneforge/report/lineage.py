"""``tuneforge lineage RUN_DIR``: the chain of runs that led to a model, read from each run's run.json
(``lineage``: parent run, method, data files with sha256) and config.yaml. Reads run files only."""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.report.files import check_run_folder, read_json


def read_lineage(run_dir: str | Path, limit: int = 100) -> list[dict]:
    """The runs from ``run_dir`` back to the first one: [{run, task, method, model, data_files, parent, ...}],
    newest first. A parent that is gone ends the chain with ``missing: true``."""
    chain: list[dict] = []
    path: Path | None = Path(run_dir)
    seen = set()
    while path is not None and len(chain) < limit:
        if not (path / "config.yaml").is_file():
            chain.append({"run": str(path), "missing": True})
            break
        folder = check_run_folder(path)
        key = folder.resolve()
        if key in seen:
            raise TuneforgeError(f"{folder}: its lineage loops back to itself; run.json was edited by hand.")
        seen.add(key)
        summary = read_json(folder / "run.json") or {}
        rec = summary.get("lineage") or {}
        chain.append(
            {
                "run": str(folder),
                "task": rec.get("task"),
                "method": rec.get("method"),
                "model": rec.get("model"),
                "data_files": rec.get("data_files") or [],
                "continual": rec.get("continual"),
                "counterfactual_augmentation": bool(rec.get("counterfactual_augmentation")),
                "parent": rec.get("parent"),
                "status": summary.get("status"),
                "finished": bool(summary.get("finished")),
                "recorded": bool(rec),
            }
        )
        path = Path(rec["parent"]) if rec.get("parent") else None
    return chain


def format_lineage(chain: list[dict]) -> str:
    """The chain as indented text, newest run first."""
    lines = []
    for depth, r in enumerate(chain):
        pad = "  " * depth + ("<- " if depth else "")
        if r.get("missing"):
            lines.append(f"{pad}{r['run']}  (gone: the folder no longer exists)")
            continue
        if not r["recorded"]:
            lines.append(f"{pad}{r['run']}  (no lineage recorded: trained before tuneforge recorded it)")
            continue
        guards = r.get("continual") or {}
        extra = [f"{k} {v}" for k, v in guards.items() if v and k != "replayed_rows"]
        if r["counterfactual_augmentation"]:
            extra.append("counterfactual augmentation")
        lines.append(
            f"{pad}{r['run']}  task {r['task']} · method {r['method']} · model {r['model']}"
            + (f" · {', '.join(extra)}" if extra else "")
            + ("" if r["finished"] else f" · {r['status'] or 'unfinished'}")
        )
        for d in r["data_files"]:
            lines.append(f"{'  ' * depth}     {d['key']}: {d['spec']} (sha256 {d['sha256'][:12]})")
    return "\n".join(lines)
