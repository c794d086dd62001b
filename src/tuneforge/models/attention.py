"""tuneforge's attention for CPU training: eager attention that stores less and copies nothing.

Registered with transformers' ``AttentionInterface`` as ``"tuneforge"`` (with the eager mask), so any
model that dispatches through the interface can use it (``model.attn_implementation: tuneforge``; the
``auto`` setting picks it for CPU training). It computes what the models' own ``eager_attention_forward``
computes, with two differences that matter for memory and speed:

- grouped-query attention without ``repeat_kv``: the query heads that share a key/value head are
  stacked into one matmul against that head, so the repeated keys and values are neither built nor
  stored for the backward pass (Llama, Qwen, SmolLM2, Mistral, ...);
- for queries longer than ``RECOMPUTE_FROM`` tokens during training, the scores and probabilities are
  recomputed in the backward pass instead of stored (flash attention's trade, in plain matmuls): their
  ``heads x T x T`` memory is what makes one long example cost more than a batch of short ones.

Calls it does not cover exactly (attention weights requested, logit soft-capping, attention sinks,
head masks) go to the model's own eager function, so the result is always the model's attention.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.checkpoint import checkpoint

NAME = "tuneforge"
RECOMPUTE_FROM = 256  # query length above which scores are recomputed in backward instead of stored
# keyword arguments the models pass that eager attention does not use (the mask already encodes them)
_IGNORED = {"position_ids", "sliding_window", "cache_position", "use_cache", "is_causal", "output_attentions"}


def _core(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    training: bool,
) -> torch.Tensor:
    b, heads, t, d = query.shape
    kv_heads, tk = key.shape[1], key.shape[2]
    group = heads // kv_heads
    # heads h = j * group + g share key/value head j: stack their queries along the rows
    scores = torch.matmul(query.reshape(b, kv_heads, group * t, d), key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = (scores.view(b, kv_heads, group, t, tk) + mask[:, :, None]).view(b, kv_heads, group * t, tk)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=training)
    out = torch.matmul(probs, value)  # (b, kv_heads, group * t, d) == (b, heads, t, d) in memory
    return out.view(b, heads, t, d).transpose(1, 2).contiguous()


def _model_eager(module: torch.nn.Module):
    """The eager attention function of the module's own modeling file."""
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return own


def lean_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    extra = [k for k, v in kwargs.items() if k not in _IGNORED and v is not None]
    if (
        extra
        or kwargs.get("output_attentions")
        or query.shape[1] % key.shape[1]
        or (attention_mask is not None and attention_mask.dim() != 4)
    ):
        return _model_eager(module)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    training = module.training
    if (
        query.shape[2] > RECOMPUTE_FROM
        and torch.is_grad_enabled()
        and dropout == 0.0
        and (query.requires_grad or key.requires_grad or value.requires_grad)
    ):
        out = checkpoint(
            _core, query, key, value, attention_mask, scaling, dropout, training, use_reentrant=False
        )
    else:
        out = _core(query, key, value, attention_mask, scaling, dropout, training)
    return out, None


def register() -> str:
    """Make ``attn_implementation="tuneforge"`` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, lean_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME


# implementations that take a custom 4D mask as transformers' mask functions would build it: boolean
# (True: attend) for SDPA, additive (0 or the dtype's minimum) for the eager family
_BOOL_MASK = {"sdpa"}
_ADDITIVE_MASK = {"eager", NAME}


def custom_mask(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor | None:
    """``allowed`` (B, T, T) bool (True where a query, the row, may attend to a key, the column) as the
    4D attention mask the model's attention implementation takes (transformers passes a 4D mask through
    unchanged), or None when the implementation takes no custom mask (flash attention, flex attention,
    an unknown kernel) or the model has no transformers config."""
    raw = getattr(model, "module", model)
    base = raw.get_base_model() if hasattr(raw, "get_base_model") else raw
    impl = getattr(getattr(base, "config", None), "_attn_implementation", None)
    mask = allowed[:, None]  # (B, 1, T, T)
    if impl in _BOOL_MASK:
        return mask
    if impl in _ADDITIVE_MASK:
        embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )
    return None
