"""What a report reads from a run folder, read directly and checked: a damaged file is named with its fix.

The report never runs a model: ``config.yaml``, ``run.json``, ``data.json``, ``metrics.jsonl``, ``eval.json``
and the probe files (written by ``tuneforge.probes``) are all it needs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tuneforge.config import load_config
from tuneforge.errors import ConfigError, TuneforgeError

log = logging.getLogger(__name__)

PROBE_FILES = ("lengths.json", "bias.json", "forgetting.json", "lm_eval.json", "explanations.json")

# how to get a good copy of each file back (RUN_DIR is replaced by the run folder)
FIXES = {
    "eval.json": "`tuneforge eval RUN_DIR` rewrites eval.json from the final model",
    "data.json": "data.json is written when training starts; delete it and the report leaves out the split sizes",
    "run.json": "run.json is written when training ends; delete it and the report shows the run as unfinished",
    "metrics.jsonl": "metrics.jsonl holds one JSON object per line, written by training",
    "config.yaml": "config.yaml is the resolved config training saved; restore it from your own config file",
    **{
        name: f"`tuneforge report RUN_DIR --recompute` rewrites {name} (this loads the model)"
        for name in PROBE_FILES
    },
}

# eval.json result types (the "result" field) and the kind of model each describes
RESULT_KINDS = {
    "classification": "classifier",
    "language_model": "language_model",
    "preference": "policy",
    "reward_model": "reward_model",
    "policy_reward": "policy",
}


def fix_for(path: Path) -> str:
    """The sentence that says how to repair ``path``, with the run folder filled in."""
    return FIXES.get(path.name, "delete it and rebuild the report").replace("RUN_DIR", str(path.parent))


def check_run_folder(folder: str | Path) -> Path:
    """The run folder, or a TuneforgeError that says what was given instead."""
    path = Path(folder)
    if not path.exists():
        raise TuneforgeError(
            f"{path}: no such run folder. Give the folder `tuneforge train` wrote (runs/NAME)."
        )
    if not path.is_dir():
        raise TuneforgeError(f"{path}: a file, not a run folder. Give the folder `tuneforge train` wrote.")
    if not (path / "config.yaml").is_file():
        raise TuneforgeError(
            f"{path}: not a tuneforge run folder (no config.yaml). Give the folder `tuneforge train` wrote "
            f"(it holds config.yaml, metrics.jsonl and run.json); if config.yaml was deleted, restore it from "
            f"your own config file."
        )
    return path


def read_json(path: Path) -> dict | None:
    """A JSON object file of the run, None when absent; a garbled one is named with its fix."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TuneforgeError(f"{path}: not UTF-8 text (the file is damaged). {fix_for(path)}.") from None
    except json.JSONDecodeError as e:
        raise TuneforgeError(
            f"{path}, line {e.lineno}: not valid JSON ({e.msg}; the file is damaged or was cut short). "
            f"{fix_for(path)}."
        ) from None
    if not isinstance(data, dict):
        raise TuneforgeError(
            f"{path}: holds a JSON {type(data).__name__}, not the object tuneforge writes. {fix_for(path)}."
        )
    return data


def read_metrics(path: Path) -> list[dict]:
    """The lines of metrics.jsonl. A torn last line (a kill during a write) is left out with a warning;
    a damaged line before it is an error naming the line."""
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise TuneforgeError(f"{path}: not UTF-8 text (the file is damaged). {fix_for(path)}.") from None
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row, problem = None, e.msg
        else:
            problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
        if problem is None and not isinstance(row.get("step"), int):
            problem = "no integer 'step'"
        if problem is None:
            rows.append(row)
        elif n == len(lines):
            log.warning(
                "%s, line %d: torn last line left out (%s); the run was stopped mid-write.", path, n, problem
            )
        else:
            raise TuneforgeError(
                f"{path}, line {n}: not a metrics record ({problem}). {fix_for(path)}: delete or repair line {n} "
                f"and rebuild the report."
            )
    return rows


def result_type(ev: dict, path: Path) -> str:
    """The type of an eval.json: its ``result`` field (classification, language_model, preference,
    reward_model, policy_reward), which every eval.json since schema_version 1 carries."""
    if "result" not in ev:
        raise TuneforgeError(
            f"{path}: written by an older tuneforge (no schema_version/result field), so its shape is unknown. "
            f"{fix_for(path)}."
        )
    return str(ev["result"])


class RunFiles:
    """Everything a report reads from a run folder (nothing else: no model, no task)."""

    def __init__(self, folder: str | Path):
        self.path = check_run_folder(folder)
        try:
            self.config = load_config(self.path / "config.yaml")
        except ConfigError as e:  # the saved config, not the user's: say how to get it back
            raise TuneforgeError(f"{e} {fix_for(self.path / 'config.yaml')}.") from None
        self.config_text = (self.path / "config.yaml").read_text(encoding="utf-8", errors="replace")
        self.summary = read_json(self.path / "run.json") or {}
        self.metrics = read_metrics(self.path / "metrics.jsonl")
        self.data = read_json(self.path / "data.json") or {}
        self.eval = read_json(self.path / "eval.json")
        self.bias = read_json(self.path / "bias.json")
        self.forgetting = read_json(self.path / "forgetting.json")
        self.lengths = read_json(self.path / "lengths.json")
        self.lm_eval = read_json(self.path / "lm_eval.json")

    @property
    def result(self) -> str | None:
        """The eval.json result type, None without an eval.json."""
        return None if self.eval is None else result_type(self.eval, self.path / "eval.json")

    @property
    def kind(self) -> str | None:
        """classifier, language_model, reward_model or policy; None when no eval.json says."""
        if self.eval is None:
            return None
        return self.eval.get("kind") or RESULT_KINDS.get(self.result)

    @property
    def samples(self) -> int:
        """Bootstrap resamples for the intervals (eval.bootstrap_samples)."""
        return self.config.eval.bootstrap_samples
