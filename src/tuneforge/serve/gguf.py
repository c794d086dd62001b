"""``tuneforge export RUN out.gguf --quant f16|q8_0``: one GGUF file for llama.cpp and Ollama.

The run's adapter (LoRA, DoRA, IA3) is merged into the base weights first; the tokenizer and the run's chat
template travel in the file's metadata, so ``llama-cli -m out.gguf`` and ``ollama create`` need nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.models.gguf_write import QUANTS, write_gguf
from tuneforge.serve.export import MERGEABLE


def export_gguf(run_dir: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False) -> Path:
    """Write the run's final model, merged, to the GGUF file ``out``; returns ``out``."""
    from tuneforge.run import Run

    out = Path(out)
    if out.suffix != ".gguf":
        raise TuneforgeError(f"export: {out} must end in .gguf to write a GGUF file.")
    if quant not in QUANTS:
        raise TuneforgeError(f"export: --quant {quant!r} is not one of {', '.join(QUANTS)}.")
    if out.is_dir():
        raise TuneforgeError(f"export: {out} is a folder; give a file name ending in .gguf.")
    if out.exists() and not overwrite:
        raise TuneforgeError(f"{out} exists: choose another name or pass --overwrite.")
    run = Run(run_dir)
    src = run.check_model_files()
    if run.config.task not in ("sft", "dpo", "grpo"):
        raise TuneforgeError(
            f"export: a {run.config.task} run's model is not a text generator; GGUF export writes causal language "
            f"models (sft, dpo, grpo runs). Export a folder instead: tuneforge export {run_dir} OUT_DIR."
        )
    model = run.load_model()
    if run.is_adapter:
        peft_type = json.loads((src / "adapter_config.json").read_text()).get("peft_type")
        if peft_type not in MERGEABLE:
            raise TuneforgeError(
                f"{run.path}: a {peft_type} adapter cannot be merged into the weights, and a GGUF file holds one "
                f"set of weights. Export the PEFT folder instead (tuneforge export {run_dir} OUT_DIR), or train "
                f"with lora/dora/ia3/full."
            )
        model = model.merge_and_unload()
    name = f"{run.config.model.name} tuned by tuneforge ({run.config.method.name}, {run.path.name})"
    return write_gguf(model.float().eval(), run.load_tokenizer(), out, quant=quant, name=name)
