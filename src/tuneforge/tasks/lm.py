"""What every language-model task shares (sft, dpo, grpo): the tokenizer and chat template, the model and
its generation settings, the reference model, sample answers, and saving and loading.

The reference model is the model before tuning: with a PEFT adapter it is the same weights with the
adapter switched off (no second copy in memory); with full fine-tuning it is a frozen copy kept when the
loss needs it at every step (DPO, GRPO with a KL penalty), else the base loaded from disk on demand.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from pathlib import Path

from tuneforge.config import PEFT_METHODS
from tuneforge.models.generate import generate, stop_ids
from tuneforge.models.load import load_causal_lm, load_tokenizer, require_causal_lm
from tuneforge.models.save import save_model_folder
from tuneforge.models.templates import ensure_template
from tuneforge.tasks.base import Task
from tuneforge.tasks.pairs import attention_share


class LMTask(Task):
    """Base of the causal-LM tasks. Subclasses call ``setup_lm`` in ``__init__``."""

    sections = ("sft",)  # generation settings: samples, max_new_tokens, temperature, system_prompt
    probes = frozenset({"lengths", "bias", "forgetting", "lm_eval", "samples"})
    keeps_frozen_copy = False  # full fine-tuning keeps a frozen reference copy (the loss needs it each step)
    _attention_share: float | None | bool = False  # cost_model's measure, False until measured

    def cost_model(self, model) -> float | None:
        """One query-key pair's cost beside one token's linear layers (``pairs.attention_share``), which
        decides how sequences share rows (DPO's packing and shared prompts, GRPO's completions a row);
        measured once, from the model's blocks."""
        if self._attention_share is False:
            self._attention_share = attention_share(model)
        return self._attention_share

    def setup_lm(self, load_model: bool, template: bool = True) -> None:
        """The tokenizer (with a chat template unless the data is raw text) and, when asked, the model."""
        cfg = self.cfg
        require_causal_lm(cfg.model.name)  # an encoder cannot generate: say so before anything else
        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.chat_template)
        self.chat = template
        if template:
            ensure_template(self.tokenizer)
        self.model = self.ref_model = None
        if load_model:
            self.model = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.dropout)
            self.configure_generation(self.model)
            if self.keeps_frozen_copy and cfg.method.name not in PEFT_METHODS:
                self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def configure_generation(self, model) -> None:
        """Stop at the template's end-of-turn token (and EOS); pad with the pad token."""
        gc = getattr(model, "generation_config", None)
        if gc is not None:
            gc.eos_token_id = stop_ids(self.tokenizer) if self.chat else self.tokenizer.eos_token_id
            gc.pad_token_id = self.tokenizer.pad_token_id

    def reference(self, model):
        """The reference model beside ``model`` (context manager)."""
        return reference_model(model, self.cfg, self.ref_model)

    def generate(self, model, prompts: list, **kw) -> list[str]:
        """Answers to conversations, with the run's generation settings unless ``kw`` overrides them."""
        s = self.cfg.sft
        settings = dict(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            batch_size=8,
            system_prompt=s.system_prompt,
        )
        settings.update(kw)
        return generate(model, self.tokenizer, prompts, **settings) if prompts else []

    def sample_answers(self, model, convs: list, baseline: bool) -> tuple[list[str], list[str | None]]:
        """Tuned answers and (when ``baseline``) the reference model's answers to the same conversations."""
        tuned = self.generate(model, convs)
        base: list[str | None] = [None] * len(convs)
        if baseline and convs:
            with self.reference(model) as ref:
                base = self.generate(ref, convs)
        return tuned, base

    @classmethod
    def load_model(cls, model_dir: Path, cfg):
        return load_causal_lm_dir(Path(model_dir), cfg)

    def save_model(self, model, out: Path, notes: dict | None = None) -> None:
        save_model_folder(model, self.tokenizer, out, generation_config=True, notes=notes)


@contextmanager
def reference_model(model, cfg, frozen=None):
    """The model before tuning, beside ``model``: ``frozen`` (a copy), else the adapter switched off (in eval
    mode meanwhile, so its log-probs are deterministic), else the base model loaded from disk."""
    raw = getattr(model, "module", model)  # DDP wraps the model
    device = next(raw.parameters()).device
    if frozen is not None:
        yield frozen.to(device)
    elif hasattr(raw, "disable_adapter"):
        with adapter_off(raw) as base:
            yield base
    else:
        yield load_causal_lm(cfg.model.name, cfg.model.dtype).to(device).eval()


@contextmanager
def adapter_off(model):
    """A PEFT model as its base: the adapter switched off, in eval mode meanwhile (deterministic log-probs)."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


def eval_lines(result: dict, tokens: str, first: str) -> list[str]:
    """The terminal summary of a text-producing task's eval.json: perplexity of the ``tokens`` (base -> tuned,
    with the change where recorded), the generation metrics, and up to 5 samples (``first``: prompt, source)."""
    from tuneforge.eval import textgen

    lines = []
    for name, m in result.get("tuned", {}).items():
        b = (result.get("baseline") or {}).get(name)
        change = f" ({100 * m['perplexity_change']:+.1f}%)" if "perplexity_change" in m else ""
        base = f"base {b['perplexity']:.3f} -> " if b else ""
        lines.append(f"{name} perplexity ({tokens} tokens): {base}tuned {m['perplexity']:.3f}{change}")
    lines += textgen.summary_lines(result.get("generation"))
    for s in result.get("samples", [])[:5]:
        lines.append(f"\n{first + ':':<10} {s['prompt']}\nreference: {s['reference']}")
        if s.get("base") is not None:
            lines.append(f"base:      {s['base']}")
        lines.append(f"tuned:     {s['tuned']}")
    return lines


def load_causal_lm_dir(model_dir: Path, cfg=None):
    """A causal LM folder, or a PEFT adapter on its base (the run's model.name, else the adapter's base path)."""
    from transformers import AutoModelForCausalLM

    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        if cfg is not None:
            base = load_causal_lm(cfg.model.name, cfg.model.dtype)
        else:
            base_path = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
            base = AutoModelForCausalLM.from_pretrained(base_path)
        if (model_dir / "generation_config.json").exists():
            from transformers import GenerationConfig

            base.generation_config = GenerationConfig.from_pretrained(model_dir)
        return PeftModel.from_pretrained(base, model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir)


def prompt_text(messages: list[dict]) -> str:
    """The last user turn of a prompt (what reward functions and reports show)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else "")
