"""Which examples go into which optimizer step, on which process: deterministic, resumable, DDP-aware.

Each optimizer step takes the next ``batch_size * grad_accum * world_size`` examples of the epoch's
permutation and splits them into ``grad_accum * world_size`` micro-batches; process ``r`` gets
micro-batches ``r*grad_accum .. (r+1)*grad_accum-1``. So one process with ``grad_accum=2k`` and ``k``
processes with ``grad_accum=2`` see exactly the same examples in every step. The order depends only
on (seed, epoch), so a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import math

import torch


class StepSampler:
    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        grad_accum: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 42,
        group_by_length: bool = True,
        megabatch_steps: int = 16,
        max_batch_tokens: int | None = None,
    ):
        self.lengths = lengths
        self.max_batch_tokens = max_batch_tokens
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.megabatch_steps = megabatch_steps
        self.step_size = batch_size * grad_accum * world_size
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.step_size)
        # A last step too small to give every micro-batch an example is dropped (its examples come next epoch).
        return full + (1 if rest >= self.grad_accum * self.world_size else 0)

    def epoch_steps(self, epoch: int) -> list[list[int]]:
        """The global (all-process) example indices of every step of ``epoch``."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        steps = [perm[i : i + self.step_size] for i in range(0, len(perm), self.step_size)][
            : self.steps_per_epoch
        ]
        if self.group_by_length:
            # Within a megabatch of steps, give each step examples of similar length, then shuffle the steps.
            grouped: list[list[int]] = []
            for m in range(0, len(steps), self.megabatch_steps):
                chunk = steps[m : m + self.megabatch_steps]
                sizes = [len(s) for s in chunk]
                flat = sorted((i for s in chunk for i in s), key=lambda i: (-self.lengths[i], i))
                out, pos = [], 0
                for size in sizes:
                    out.append(flat[pos : pos + size])
                    pos += size
                order = torch.randperm(len(out), generator=g).tolist()
                grouped.extend(out[o] for o in order)
            steps = grouped
        self._epoch_cache = (epoch, steps)
        return steps

    def micro_batches(self, step_indices: list[int]) -> list[list[int]]:
        """This process's micro-batches for one step (examples sorted by length inside the step)."""
        ordered = (
            sorted(step_indices, key=lambda i: (-self.lengths[i], i))
            if self.group_by_length
            else step_indices
        )
        parts = self.grad_accum * self.world_size
        base, extra = divmod(len(ordered), parts)
        bounds, pos = [], 0
        for k in range(parts):
            size = base + (1 if k < extra else 0)
            bounds.append(ordered[pos : pos + size])
            pos += size
        mine = bounds[self.rank * self.grad_accum : (self.rank + 1) * self.grad_accum]
        return [piece for b in mine if b for piece in self._cap(b)]

    def _cap(self, batch: list[int]) -> list[list[int]]:
        """Split a micro-batch whose padded size (examples x longest) exceeds ``max_batch_tokens``.

        The batch is cut into consecutive pieces (in its order: by length when grouping by length): as
        few as fit the cap, and among those the split whose smallest piece is largest (then the least
        padding). So (8 x 81 tokens) under a 615-token cap becomes 4 + 4, not 7 + 1: a lone example makes
        slow matmuls and, compiled, a graph of its own. An example longer than the cap trains alone. The
        loop divides every micro-batch's summed loss by the item count of the whole step, so the split
        changes peak activation memory, not the gradient.
        """
        cap, n = self.max_batch_tokens, len(batch)
        if not cap:
            return [batch]
        lengths = [self.lengths[i] for i in batch]
        # best[p][j]: (smallest piece, -padded tokens, cut) of the best split of batch[:j] into p pieces
        best: list[dict[int, tuple[int, int, int]]] = [{0: (n, 0, 0)}]
        while n not in best[-1]:
            row: dict[int, tuple[int, int, int]] = {}
            for a, (small, neg_pad, _) in best[-1].items():
                width = 0
                for b in range(a + 1, n + 1):  # the piece batch[a:b]
                    width = max(width, lengths[b - 1])
                    if b - a > 1 and (b - a) * width > cap:
                        break
                    cand = (min(small, b - a), neg_pad - (b - a) * width, a)
                    if b not in row or cand[:2] > row[b][:2]:
                        row[b] = cand
            best.append(row)
        pieces, j = [], n
        for p in range(len(best) - 1, 0, -1):
            a = best[p][j][2]
            pieces.append(batch[a:j])
            j = a
        return pieces[::-1]

    def position(self, global_step: int) -> tuple[int, int]:
        """(epoch, step within epoch) of a global step."""
        return divmod(global_step, self.steps_per_epoch)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch))
