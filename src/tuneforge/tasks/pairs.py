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
    sizes = _right_padded_lengths(attention_mask)
    if sizes is None:
        return None  # left padding or holes: keep the padded batch
    plan = cheapest_packs(sizes, attention_share, padded=input_ids.shape)
    if plan is None:
        return None
    packs, width = plan
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


def _right_padded_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Each row's length when every row is right-padded (its tokens first, then padding); else None."""
    lengths = attention_mask.sum(1)  # (N,)
    right_padded = torch.arange(attention_mask.shape[1], device=attention_mask.device) < lengths[:, None]
    return lengths.tolist() if torch.equal(attention_mask.bool(), right_padded) else None


def row_cost(width: int, attention_share: float | None) -> float:
    """What a row of ``width`` positions computes, in token-equivalents: its tokens through the linear
    layers plus every query-key pair of its attention (``attention_share`` each)."""
    return width * (1 + (attention_share or 0.0) * width)


def cheapest_packs(
    sizes: list[int], attention_share: float | None, padded: tuple[int, int] | None = None
) -> tuple[list[list[int]], int] | None:
    """The cheapest packing of sequences of ``sizes`` into rows, as (packs of indices, row width), or None
    when none costs less than the ``padded`` batch (rows, width) it would replace. A row of width W costs
    ``W * (1 + attention_share * W)``; capacities of 1, 2, 3 ... times the longest sequence are planned
    (best-fit decreasing); with ``attention_share=None`` only the longest sequence is tried (no row grows
    wider than it)."""
    longest, total = max(sizes), sum(sizes)
    cost = lambda rows, width: rows * row_cost(width, attention_share)  # noqa: E731
    best: tuple[float, list[list[int]] | None, int] = (cost(*padded) if padded else float("inf"), None, 0)
    for k in range(1, len(sizes) + 1):
        packs = plan_packs(sizes, longest * k)
        width = max(sum(sizes[i] for i in p) for p in packs)
        if cost(len(packs), width) < best[0]:
            best = (cost(len(packs), width), packs, width)
        if attention_share is None or longest * k >= total:
            break
    return None if best[1] is None else (best[1], best[2])


def shared_prefix(
    ids_a: list[int], ids_b: list[int], labels_a: list[int], labels_b: list[int], ignore: int = -100
) -> int:
    """How many tokens two rows begin with that are the same and carry no loss in either (a pair's prompt):
    what ``share_prompts`` computes once."""
    n = 0
    for x, y, lx, ly in zip(ids_a, ids_b, labels_a, labels_b):
        if x != y or lx != ignore or ly != ignore:
            break
        n += 1
    return n


def share_prompts(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    pad_id: int = 0,
    attention_share: float | None = 0.0,
    ignore: int = -100,
) -> dict[str, torch.Tensor] | None:
    """Paired right-padded rows (2N, T), N chosen then their N rejected, -> each pair as one sequence whose
    prompt is computed once, packed into rows; None when the rows are not right-padded.

    A pair's two rows begin with the same prompt tokens (the chat template renders the prompt the same
    way before either answer). The pair becomes ``prompt + chosen answer + rejected answer``: the
    rejected answer's positions continue from the prompt's (as in its own row), and a mask lets it see
    the prompt and itself but never the chosen answer. Every token's hidden state is then the one its own
    row gives it, so the log-probs and gradients are the padded batch's, with the shared prefix computed
    once instead of twice (``shared_prefix``).

    Returns ``input_ids`` and ``position_ids`` (R, W); ``tree_mask`` (R, W, W) bool, True where a query
    (row) may attend to a key (column): causal, within one pair, and never across the two answers (a
    padding position sees itself only); and for each loss token, flat over (R, W): ``predictors`` (the
    position whose output predicts it), ``targets`` (its id) and ``sequence`` (its row in the padded
    batch, 0 .. 2N-1).
    """
    device = input_ids.device
    sizes = _right_padded_lengths(attention_mask)
    if sizes is None or len(sizes) % 2:
        return None
    n = len(sizes) // 2
    rows = []  # per pair: (ids, positions, branch, targets, sequence of each target, predictor offsets)
    for i in range(n):
        c_len, r_len = sizes[i], sizes[n + i]
        c, r = input_ids[i, :c_len], input_ids[n + i, :r_len]
        lc, lr = labels[i, :c_len], labels[n + i, :r_len]
        p = shared_prefix(c.tolist(), r.tolist(), lc.tolist(), lr.tolist(), ignore)
        ids = torch.cat([c, r[p:]])
        positions = torch.cat([torch.arange(c_len, device=device), torch.arange(p, r_len, device=device)])
        branch = torch.cat(
            [
                torch.zeros(p, dtype=torch.long, device=device),
                torch.ones(c_len - p, dtype=torch.long, device=device),
                torch.full((r_len - p,), 2, dtype=torch.long, device=device),
            ]
        )
        # loss tokens: chosen token t (t >= 1) is predicted by position t - 1; rejected token j >= p sits at
        # c_len + j - p and is predicted by the one before it in its own row (the prefix's last for j == p)
        tc = torch.nonzero(lc[1:] != ignore).squeeze(1) + 1
        tr = torch.nonzero(lr[max(p, 1) :] != ignore).squeeze(1) + max(p, 1)
        pred_r = torch.where(tr == p, tr - 1, c_len + tr - 1 - p)
        at = torch.cat([tc, c_len + tr - p])  # where each loss token sits in the pair's sequence
        pred = torch.cat([tc - 1, pred_r])
        seq = torch.cat([torch.full_like(tc, i), torch.full_like(tr, n + i)])
        rows.append((ids, positions, branch, ids[at], seq, pred))
    plan = cheapest_packs([len(t[0]) for t in rows], attention_share)
    assert plan is not None
    packs, width = plan
    shape = (len(packs), width)
    out_ids = torch.full(shape, pad_id, dtype=input_ids.dtype, device=device)
    positions = torch.arange(width, device=device).repeat(len(packs), 1)
    owner = torch.full(shape, -1, dtype=torch.long, device=device)  # the pair of each position, -1 padding
    branch = torch.zeros(shape, dtype=torch.long, device=device)
    predictors, targets, sequence = [], [], []
    for row, pack in enumerate(packs):
        at = 0
        for i in sorted(pack):
            ids, pos, br, tgt, seq, pred = rows[i]
            span = slice(at, at + len(ids))
            out_ids[row, span], positions[row, span], branch[row, span], owner[row, span] = ids, pos, br, i
            predictors.append(row * width + at + pred)
            targets.append(tgt)
            sequence.append(seq)
            at += len(ids)
    col = torch.arange(width, device=device)
    same_pair = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    causal = col[None, :] <= col[:, None]
    tree_mask = (same_pair & visible & causal) | torch.eye(width, dtype=torch.bool, device=device)
    return {
        "input_ids": out_ids,
        "position_ids": positions,
        "tree_mask": tree_mask,
        "predictors": torch.cat(predictors),
        "targets": torch.cat(targets),
        "sequence": torch.cat(sequence),
    }


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
