"""Causal language-model loss on loss tokens only: a pure function and the forward pass around it.

The fast path (``positions_only=True``) runs the transformer body, keeps the hidden states of the
positions that carry loss, and applies the output layer to those alone: the (B, T, V) logits tensor is
never built, which saves time and memory when a fraction of the tokens are trained (assistant-only
loss). It gives the same loss as the plain path (tested) and falls back to it when it cannot apply:
prompt/prefix tuning, a DDP/FSDP wrapper (whose forward must run), or a model that post-processes
its logits (e.g. soft-capping).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.data.chat import IGNORE

_LOGIT_POSTPROCESSING = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier_scale",
)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over positions whose label is not -100, and their count.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned (label t is the token at t); position t
    predicts label t+1. Only the selected positions are upcast to float32.
    """
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    picked = logits[:, :-1][keep].float()  # (N, V)
    n = int(keep.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(picked, targets[keep], reduction="sum"), n


def _body_and_head(model: torch.nn.Module):
    """(transformer body, output layer) of a plain or LoRA/DoRA/IA3-wrapped causal LM, or None."""
    if hasattr(model, "module"):  # DDP / FSDP wrapper: gradients sync only through its own forward
        return None
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return None
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(lm, "get_output_embeddings") or not hasattr(lm, "base_model_prefix"):
        return None
    head, body = lm.get_output_embeddings(), getattr(lm, lm.base_model_prefix, None)
    config = getattr(lm, "config", None)
    if head is None or body is None or body is lm or config is None:
        return None
    if any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_POSTPROCESSING):
        return None
    return body, head


def lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], positions_only: bool = True
) -> tuple[torch.Tensor, int]:
    """Forward a padded or packed batch and return (summed loss, loss tokens).

    Prompt tuning prepends virtual tokens, so the model returns more positions than it was given:
    those leading positions are dropped before the loss.
    """
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    parts = _body_and_head(model) if positions_only else None
    if parts is not None:
        body, head = parts
        hidden = body(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        targets = batch["labels"][:, 1:]  # (B, T-1)
        keep = targets != IGNORE  # (B, T-1)
        n = int(keep.sum())
        if n == 0:
            return hidden.sum() * 0.0, 0
        logits = head(hidden[:, :-1][keep]).float()  # (N, V)
        return F.cross_entropy(logits, targets[keep], reduction="sum"), n
    logits = model(**inputs, use_cache=False).logits  # (B, P+T, V); P > 0 only for prompt tuning
    extra = logits.shape[1] - batch["input_ids"].shape[1]
    if extra:
        logits = logits[:, extra:]
    return token_nll(logits, batch["labels"])
