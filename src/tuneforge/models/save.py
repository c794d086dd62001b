"""Write a model folder atomically: what every task saves as ``best/`` and ``model/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

MODEL_STEP_FILE = "tuneforge_model.json"  # {"step": N}: the training step a run's best/ or model/ holds


def save_model_folder(
    model,
    tokenizer,
    out: str | Path,
    labels: list[str] | None = None,
    generation_config: bool = False,
    notes: dict[str, dict] | None = None,
) -> None:
    """Save ``model`` (or its PEFT adapter) and ``tokenizer`` into ``out`` via ``out.tmp`` and a rename.

    ``labels``: written as ``labels.json`` beside an adapter, so a classifier head can be rebuilt on load.
    ``generation_config``: also write the model's generation config when ``save_pretrained`` did not.
    ``notes``: JSON files to add, by name (e.g. the export manifest).
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if labels is not None and (tmp / "adapter_config.json").exists():
        (tmp / "labels.json").write_text(json.dumps(labels))
    gc = getattr(model, "generation_config", None) if generation_config else None
    if gc is not None and not (tmp / "generation_config.json").exists():
        gc.save_pretrained(tmp)
    for name, content in (notes or {}).items():
        (tmp / name).write_text(json.dumps(content, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def model_step(folder: str | Path) -> int | None:
    """The training step a run's model folder holds (``MODEL_STEP_FILE``), or None when it does not say."""
    path = Path(folder) / MODEL_STEP_FILE
    try:
        return int(json.loads(path.read_text())["step"]) if path.exists() else None
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
