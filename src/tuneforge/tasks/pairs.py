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
from tuneforge.data.packing import plan_packs
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


def pack_padded(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    pad_id: int = 0,
    attention_share: float | None = 0.0,
    ignore: int = -100,
) -> dict[str, torch.Tensor] | None:
    """Right-padded rows (N, T) -> the same sequences packed into fewer rows, or None when that saves nothing.

    A packed row of width W costs ``W * (1 + attention_share * W)``: its tokens through the block's linear
    layers, plus attention, whose (block-diagonal, but computed dense) scores grow with W per token;
    ``attention_share`` is one query-key pair's cost relative to one token's linear layers (``block_costs``).
    Capacities of 1, 2, 3 ... times the longest sequence are planned (best-fit decreasing,
    ``data.packing.plan_packs``) and the cheapest kept; None (keep the padded rows) unless it is cheaper
    than the padded batch. ``attention_share=None`` allows only the longest sequence as the capacity (no
    row grows). Returns ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 for each sequence, so
    transformers builds a block-diagonal causal mask: no sequence sees another) and ``segments`` (the
    original row of each token, -1 on padding), each (R, W), and no attention mask. The first label of
    every sequence is dropped (nothing predicts it, as in the padded batch). None too when the rows are
    not right-padded.
    """
    device = input_ids.device
    lengths = attention_mask.sum(1)  # (N,)
    right_padded = torch.arange(attention_mask.shape[1], device=device) < lengths[:, None]  # (N, T)
    if not torch.equal(attention_mask.bool(), right_padded):
        return None  # left padding or holes: keep the padded batch
    sizes = lengths.tolist()
    longest, total = max(sizes), sum(sizes)
    share = attention_share or 0.0
    cost = lambda rows, width: rows * width * (1 + share * width)  # noqa: E731
    best = (cost(len(sizes), input_ids.shape[1]), None, 0)  # the padded batch
    for k in range(1, len(sizes) + 1):
        packs = plan_packs(sizes, longest * k)
        width = max(sum(sizes[i] for i in p) for p in packs)
        if cost(len(packs), width) < best[0]:
            best = (cost(len(packs), width), packs, width)
        if attention_share is None or longest * k >= total:
            break
    _, packs, width = best
    if packs is None:
        return None
    shape = (len(packs), width)
    ids = torch.full(shape, pad_id, dtype=input_ids.dtype, device=device)
    out_labels = torch.full(shape, ignore, dtype=labels.dtype, device=device)
    positions = torch.arange(width, device=device).repeat(len(packs), 1)  # padding: a block of its own
    segments = torch.full(shape, -1, dtype=torch.long, device=device)
    for r, pack in enumerate(packs):
        at = 0
        for i in sorted(pack):
            n = sizes[i]
            ids[r, at : at + n] = input_ids[i, :n]
            out_labels[r, at : at + n] = labels[i, :n]
            out_labels[r, at] = ignore
            positions[r, at : at + n] = torch.arange(n, device=device)
            segments[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at, device=device)
    return {"input_ids": ids, "labels": out_labels, "position_ids": positions, "segments": segments}


def attention_share(model) -> float | None:
    """One query-key pair's attention cost relative to one token through a block's linear layers.

    Attention costs about ``4 * hidden`` multiply-adds per pair (scores, softmax and mask, weighted values);
    the linear layers their weights' size per token. None when the model's blocks cannot be found.
    """
    from tuneforge.train.compile import repeated_blocks

    raw = getattr(model, "module", model)
    blocks = repeated_blocks(raw)
    hidden = getattr(getattr(raw, "config", None), "hidden_size", None)
    if not blocks or not hidden:
        return None
    macs = sum(p.numel() for p in blocks[0].parameters() if p.dim() == 2)
    return 4 * hidden / max(1, macs)


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
