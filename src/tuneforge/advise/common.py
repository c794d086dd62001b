"""What the advisor commands share: reading the config, a results folder, Markdown tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tuneforge.config import RunConfig, apply_overrides, from_dict, load_config


def as_config(config: RunConfig | dict | str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """A validated config from a RunConfig, a dict, a YAML path or None (the defaults), with overrides."""
    if isinstance(config, RunConfig):
        return from_dict(apply_overrides(config.to_dict(), overrides or []))
    if isinstance(config, dict):
        return from_dict(apply_overrides(json.loads(json.dumps(config)), overrides or []), "config")
    return load_config(config, overrides)


def default_folder(cfg: RunConfig, what: str) -> Path:
    """``output.dir/<what>-<task>-<model>``: where a command writes its results unless told (--out)."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model.name).name or cfg.model.name)
    return Path(cfg.output.dir) / f"{what}-{cfg.task}-{model}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write(folder: Path, name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """``name``.json and ``name``.md in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(data, indent=1, default=float))
    (folder / f"{name}.md").write_text(markdown)
    return folder / f"{name}.json", folder / f"{name}.md"
