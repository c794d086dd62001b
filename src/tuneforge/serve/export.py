"""Export a run's model: a merged standalone transformers folder, or the standard PEFT adapter folder.

``--merge`` folds a LoRA/DoRA/IA3 adapter into the base weights (``merge_and_unload``) and writes
safetensors, the tokenizer with its chat template, and the generation config (stopping at the
end-of-turn token), so ``AutoModelForCausalLM.from_pretrained(OUT)`` needs nothing from tuneforge.
Without ``--merge`` an adapter run is copied as its PEFT adapter folder (``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.models.save import save_model_folder

MERGEABLE = ("LORA", "IA3")  # DoRA is LoRA with use_dora; prefix/prompt tuning have no weights to merge into


def export(run_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the run's final model to ``out``; returns ``out``."""
    from tuneforge.run import Run

    run = Run(run_dir)
    out = Path(out)
    src = run.check_model_files()  # a missing or damaged file is reported, not copied
    here, there = run.path.resolve(), out.resolve()
    if there == here or here in there.parents or there in here.parents:
        raise TuneforgeError(
            f"export: {out} is {'the run folder' if there == here else 'inside the run folder' if here in there.parents else 'a folder that holds the run'} "
            f"{run.path}; exporting there would overwrite the run. Choose a folder outside it."
        )
    if out.exists() and not out.is_dir():
        raise TuneforgeError(f"export: {out} is a file; give a folder to write the model into.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TuneforgeError(f"{out} exists and is not empty: choose another folder or pass --overwrite.")
        shutil.rmtree(out)
    # a full model is already standalone, and an adapter folder is a standard PEFT adapter
    if not run.is_adapter or not merge:
        shutil.copytree(src, out)
        return out
    adapter = json.loads((src / "adapter_config.json").read_text())
    if (
        adapter.get("peft_type") == "BOTTLENECK"
    ):  # non-linear (houlsby/pfeiffer): the adapter and its base instead
        from tuneforge.methods.bottleneck import export_with_base

        return export_with_base(run.load_model(), run.load_tokenizer(), src, out)
    if adapter.get("peft_type") not in MERGEABLE:
        raise TuneforgeError(
            f"{run.path}: a {adapter.get('peft_type')} adapter adds virtual tokens and has no weights to merge into the "
            f"model. Export it without --merge (a standard PEFT adapter folder), or train with lora/dora/ia3/full."
        )
    model = run.load_model()
    manifest = {
        "run": str(run.path),
        "merged": True,
        "base": run.config.model.name,
        "method": run.config.method.name,
    }
    save_model_folder(
        model.merge_and_unload(),
        run.load_tokenizer(),
        out,
        generation_config=True,
        notes={"tuneforge_export.json": manifest},
    )
    return out
