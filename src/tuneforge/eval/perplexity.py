"""Perplexity of a causal LM on loss tokens only (token-weighted), for evaluation and forgetting checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tuneforge.data.chat import EncodedChat, encode_text
from tuneforge.data.packing import pad_batch
from tuneforge.train.lm_loss import lm_loss
from tuneforge.utils import tracked


@torch.no_grad()
def nll(
    model,
    tokenizer,
    examples: Sequence[EncodedChat] | Sequence[str],
    batch_size: int = 16,
    max_length: int | None = 1024,
) -> tuple[float, int]:
    """(summed negative log-likelihood, loss tokens) over ``examples``.

    ``examples`` are encoded chats (loss on their labelled tokens) or plain texts (loss on every token
    after the first). Batches are formed from examples of similar length, so padding costs little.
    """
    encoded = [encode_text(tokenizer, x, max_length) if isinstance(x, str) else x for x in examples]
    if not encoded:
        return 0.0, 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    total, count = 0.0, 0
    for start in tracked(range(0, len(order), batch_size), "perplexity"):
        batch = pad_batch([encoded[i] for i in order[start : start + batch_size]], pad)
        loss, n = lm_loss(model, {k: v.to(device) for k, v in batch.items()})
        total += float(loss)
        count += n
    model.train(was_training)
    return total, count


def perplexity(
    model,
    tokenizer,
    examples: Sequence[EncodedChat] | Sequence[str],
    batch_size: int = 16,
    max_length: int | None = 1024,
) -> float:
    """exp(mean negative log-likelihood per loss token): token-weighted over all ``examples``."""
    total, count = nll(model, tokenizer, examples, batch_size, max_length)
    return math.exp(total / count) if count else float("nan")
