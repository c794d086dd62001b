"""What the preference tasks (reward, dpo, grpo) share: reading preference data, padding, running metrics.

Splits, the reference model, generation and saving are shared by every task (``tasks/base.py``, ``tasks/lm.py``).

Preference rows ``{prompt, chosen, rejected}`` (strings or chat messages) become ``Example(messages=prompt,
chosen=[...], rejected=[...])``; KTO rows ``{prompt, completion, label}`` become ``Example(messages=prompt,
chosen=[...], label="true"/"false")`` (see ``tuneforge.data.formats``).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from tuneforge.data.bundled import resolve
from tuneforge.data.formats import SHAPES, Example, to_examples
from tuneforge.errors import DataError


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
