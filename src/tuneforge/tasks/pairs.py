"""What the preference tasks (reward, dpo, grpo) share: reading preference data, padding, running metrics.

Preference rows ``{prompt, chosen, rejected}`` (strings or chat messages) become ``Example(messages=prompt,
chosen=[...], rejected=[...])``; KTO rows ``{prompt, completion, label}`` become ``Example(messages=prompt,
chosen=[...], label="true"/"false")`` (see ``tuneforge.data.formats``).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

from tuneforge.data.bundled import DATASETS, load_bundled, resolve
from tuneforge.data.formats import SHAPES, Example, to_examples
from tuneforge.data.split import split, subsample
from tuneforge.errors import DataError
from tuneforge.models.save import save_model_folder


def read_examples(spec: str, d, allowed: tuple[str, ...], task: str) -> tuple[list[Example], str]:
    """Examples of a file or bundled split whose format is one of ``allowed``."""
    table, hint = resolve(spec)
    fmt = d.format if d.format != "auto" else (hint or "auto")
    examples, fmt = to_examples(table, fmt, d.text_column, d.label_column)
    if fmt not in allowed:
        raise DataError(
            f"{table.path}: '{fmt}' rows cannot train task '{task}', which needs {' or '.join(allowed)} rows "
            f"(columns here: {', '.join(table.columns)}).\n{SHAPES}"
        )
    return examples, fmt


def load_splits(
    d, seed: int, allowed: tuple[str, ...], task: str, reader=None
) -> tuple[dict[str, list[Example]], str]:
    """train / validation / test: files or bundled splits, split off the training data when absent.

    ``reader(spec) -> (examples, format)`` reads one file or split (default: ``read_examples`` with ``allowed``).
    """
    read = reader or (lambda spec: read_examples(spec, d, allowed, task))
    train, fmt = read(d.train)
    alias = d.train.split(":")[0]
    test = read(d.test)[0] if d.test else None
    if test is None and alias in DATASETS and "test" in load_bundled(alias) and ":" not in d.train:
        test = read(f"{alias}:test")[0]
    if test is None:
        train, test = split(train, d.test_fraction, seed + 1)
    validation = read(d.validation)[0] if d.validation else None
    if validation is None:
        train, validation = split(train, d.validation_fraction, seed)
    splits = {
        "train": subsample(train, d.limit, seed),
        "validation": subsample(validation, d.eval_limit, seed),
        "test": subsample(test, d.eval_limit, seed),
    }
    if not splits["train"]:
        raise DataError(f"{d.train}: no training examples left after splitting.")
    return splits, fmt


def is_paired(examples: list[Example]) -> bool:
    return bool(examples) and all(e.rejected is not None for e in examples)


def unpair(examples: list[Example]) -> list[Example]:
    """Preference pairs -> KTO rows: the chosen answer is desirable, the rejected one undesirable."""
    out = []
    for e in examples:
        if e.rejected is None:
            out.append(e)
            continue
        out.append(Example(messages=e.messages, chosen=e.chosen, label="true", source=e.source))
        out.append(Example(messages=e.messages, chosen=e.rejected, label="false", source=e.source))
    return out


PEFT = ("lora", "dora", "ia3", "prefix", "prompt")


def frozen_copy(model, method: str):
    """The reference for full fine-tuning: a frozen copy of the starting weights (PEFT methods need none)."""
    import copy

    return None if method in PEFT else copy.deepcopy(model).eval().requires_grad_(False)


@contextmanager
def reference(model, frozen, cfg):
    """The reference model beside ``model``: ``frozen`` (a copy), else the adapter switched off, else the base loaded.

    Switching the adapter off needs no second copy of the weights; the model is put in eval mode meanwhile
    (deterministic reference log-probs) and restored after.
    """
    raw = getattr(model, "module", model)  # DDP wraps the model
    device = next(raw.parameters()).device
    if frozen is not None:
        yield frozen.to(device)
    elif hasattr(raw, "disable_adapter"):
        was_training = raw.training
        raw.eval()
        try:
            with raw.disable_adapter():
                yield raw
        finally:
            raw.train(was_training)
    else:
        from tuneforge.models.load import load_causal_lm

        yield load_causal_lm(cfg.model.name, cfg.model.dtype).to(device).eval()


def configure_generation(model, tokenizer) -> None:
    """Generation stops at the template's end-of-turn token (and EOS) and pads with the pad token."""
    from tuneforge.serve.generate import stop_ids

    gc = getattr(model, "generation_config", None)
    if gc is not None:
        gc.eos_token_id = stop_ids(tokenizer)
        gc.pad_token_id = tokenizer.pad_token_id


def save_lm(model, tokenizer, out) -> None:
    """Save a causal LM (or its adapter), tokenizer and generation config, atomically."""
    save_model_folder(model, tokenizer, out, generation_config=True)


def prompt_text(messages: list[dict]) -> str:
    """The last user turn of a prompt (what reward functions and reports show)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else "")


def pad(seqs: list[list[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists into (B, T) ids and an attention mask (right padding unless ``left``)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[row, span] = torch.tensor(s, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Fraction of pairs scored chosen > rejected; a tie counts one half (so equal scores give 0.5, chance)."""
    if chosen.numel() == 0:
        return float("nan")
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return float(wins.mean())


class Running:
    """Means of training metrics since the last ``pop`` (the loop logs them every ``training.log_every`` steps)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, values: torch.Tensor | float, n: int | None = None) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().float()
            if values.numel() == 0:
                return
            self.sums[name] += float(values.sum())
            self.counts[name] += values.numel()
        else:
            self.sums[name] += float(values) * (n or 1)
            self.counts[name] += n or 1

    def pop(self) -> dict[str, float]:
        out = {k: round(self.sums[k] / self.counts[k], 6) for k in self.sums if self.counts[k]}
        self.sums.clear()
        self.counts.clear()
        return out
