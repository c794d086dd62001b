"""Batches of tokenised examples: padded, or packed into fixed-length rows.

Padded batches are right-padded with an attention mask. Packed rows hold several examples one after
another with position ids that restart at 0 for each example and no attention mask: transformers then
builds a block-diagonal causal mask from the position ids (sdpa/eager; flash attention uses them as
variable-length boundaries), so no example attends to another and each keeps its own positions. The
first label of every packed example is dropped, exactly as in an unpacked batch where nothing predicts
the first token, so a packed batch has the same loss as the same examples padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneforge.data.chat import IGNORE, EncodedChat


def pad_batch(examples: Sequence[EncodedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding), each (B, T)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def plan_packs(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: groups of example indices whose lengths sum to at most ``capacity``.

    Deterministic; examples longer than ``capacity`` (none after truncation) get a row of their own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        best, best_free = -1, capacity + 1
        for p, f in enumerate(free):
            if n <= f < best_free:
                best, best_free = p, f
                if f == n:
                    break
        if best < 0:
            packs.append([i])
            free.append(capacity - n)
        else:
            packs[best].append(i)
            free[best] -= n
    return packs


def pack(examples: Sequence[EncodedChat]) -> EncodedChat:
    """Concatenate examples into one row; ``meta['position_ids']`` restarts at 0 for each example."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for e in examples:
        ids += e.input_ids
        labels += [IGNORE] + e.labels[1:]  # nothing predicts an example's first token
        positions += list(range(len(e.input_ids)))
    return EncodedChat(
        ids,
        labels,
        any(e.truncated for e in examples),
        meta={"position_ids": positions, "n_examples": len(examples)},
    )


def packed_batch(rows: Sequence[EncodedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """(B, T) ``input_ids``, ``labels`` and ``position_ids`` of packed rows, no attention mask.

    Padding at the end of a row gets its own positions (0, 1, ...), so it forms a separate block that
    nothing real attends to, and carries no loss.
    """
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.arange(width).repeat(len(rows), 1)  # (B, T)
    for row, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[row, :n] = torch.tensor(r.input_ids)
        labels[row, :n] = torch.tensor(r.labels)
        position_ids[row, :n] = torch.tensor(r.meta["position_ids"])
        position_ids[row, n:] = torch.arange(width - n)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padding tokens when ``batches`` (lists of indices) are padded to their longest example."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1 - sum(lengths[i] for b in batches for i in b) / max(1, total)
