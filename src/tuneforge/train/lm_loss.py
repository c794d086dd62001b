"""Causal language-model loss on loss tokens only: a pure function and the forward pass around it.

The fast path (``positions_only=True``) runs the transformer body, keeps the hidden states of the
positions that carry loss, and applies the output layer to those alone, in chunks, with the loss
gradient computed on the way (``LinearCrossEntropy``): neither the (B, T, V) logits nor the (N, V)
float32 logits of the loss positions are ever held whole, which saves time and memory (assistant-only
loss, large vocabularies). It gives the same loss as the plain path (tested) and falls back to it when it cannot apply:
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


def ce_chunk_rows(vocab: int) -> int:
    """Rows of logits the fused loss holds at once: about 16M float32 values (64 MB)."""
    return max(64, (1 << 24) // max(1, vocab))


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, never holding all the logits.

    The forward pass walks the rows in chunks: logits of a chunk (float32), their log-sum-exp and the
    loss, then at once the chunk's gradients (softmax minus one-hot, times the weight for the hidden
    states; transposed, times the hidden states for the weight when it trains). Only the (N, H) and
    (V, H) gradients are kept for the backward pass, instead of the (N, V) float32 logits, their
    log-softmax and its gradient. Matmuls run in the autocast dtype when autocast is on.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        kind = hidden.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
        with torch.autocast(kind, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = (
                torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                if ctx.needs_input_grad[1]
                else None
            )
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h.shape[0], chunk):
                hc, tc = h[start : start + chunk], targets[start : start + chunk]
                logits = (hc @ w.T).float()  # (c, V)
                picked = logits.gather(1, tc[:, None]).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(top).exp_()  # one exp pass, in place: unnormalised softmax
                total = probs.sum(dim=-1, keepdim=True)
                loss += (total.log() + top - picked[:, None]).sum()
                if grad_h is None and grad_w is None:
                    continue
                probs.div_(total)  # softmax
                probs[torch.arange(len(tc), device=probs.device), tc] -= 1.0
                g = probs.to(dtype)
                if grad_h is not None:
                    grad_h[start : start + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return (
            None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad_loss).to(ctx.weight_dtype),
            None,
            None,
        )


def _chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T``, chunk by chunk, with no gradient work (evaluation).

    ``hidden`` (N, H), ``weight`` (V, H), ``targets`` (N,). One matmul per chunk, in the autocast dtype when
    autocast is on (as the training path), with the log-sum-exp in float32.
    """
    kind = hidden.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    with torch.autocast(kind, enabled=False):
        w = weight.to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start : start + chunk].to(dtype) @ w.T).float()  # (c, V)
            loss += F.cross_entropy(logits, targets[start : start + chunk], reduction="sum")
    return loss


def linear_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (a bias-free Linear) without materialising all the logits.

    The gradients are computed in the forward pass only when they will be used: grad mode is on and the
    hidden states or the weight require a gradient. Otherwise (evaluation, probes, reference passes under
    ``torch.no_grad``) it is a plain chunked forward: one vocabulary x hidden matmul per chunk, not three.
    """
    weight = head.weight
    if getattr(head, "bias", None) is not None:  # rare for output layers: the plain path
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    chunk = chunk or ce_chunk_rows(weight.shape[0])
    # needs_input_grad inside an autograd.Function ignores grad mode, so decide here
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _chunked_cross_entropy(hidden, weight, targets, chunk)
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk)


def _body_and_head(model: torch.nn.Module):
    """(transformer body, output layer) of a plain or LoRA/DoRA/IA3-wrapped causal LM, or None."""
    if hasattr(model, "module"):  # DDP / FSDP wrapper: gradients sync only through its own forward
        return None
    if type(model).__name__.startswith("FSDP"):  # FSDP2 (train/distributed.py): the root gathers in forward
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
        return linear_cross_entropy(hidden[:, :-1][keep], head, targets[keep]), n
    logits = model(**inputs, use_cache=False).logits  # (B, P+T, V); P > 0 only for prompt tuning
    extra = logits.shape[1] - batch["input_ids"].shape[1]
    if extra:
        logits = logits[:, extra:]
    return token_nll(logits, batch["labels"])


# ---- per-token log-probabilities (preference losses: DPO, IPO, ORPO, KTO)


class LinearTokenLogps(torch.autograd.Function):
    """Log-probability of each target under ``softmax(hidden @ weight.T)``, never holding all the logits.

    Like ``LinearCrossEntropy`` but per row (a preference loss weighs each sequence's tokens by its own
    gradient). When only the hidden states need a gradient (adapters: the output layer is frozen), the
    forward pass stores ``d logp_i / d h_i`` (N, H) chunk by chunk and the backward pass scales each row
    by its incoming gradient: the plain path's matmuls, none of its (N, V) float32 tensors. When the
    weight trains too, its gradient depends on every row's incoming gradient, so the backward pass
    recomputes each chunk's logits from the saved log-sum-exp instead (one more matmul per chunk).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        kind = hidden.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
        precompute = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        with torch.autocast(kind, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            out = torch.empty(h.shape[0], dtype=torch.float32, device=hidden.device)  # (N,)
            lse = torch.empty_like(out)  # (N,)
            grad_h = torch.empty_like(hidden) if precompute else None  # (N, H): d logp_i / d h_i
            for start in range(0, h.shape[0], chunk):
                hc, tc = h[start : start + chunk], targets[start : start + chunk]
                logits = (hc @ w.T).float()  # (c, V)
                picked = logits.gather(1, tc[:, None]).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(top).exp_()  # in place: unnormalised softmax
                total = probs.sum(dim=-1, keepdim=True)
                norm = (total.log() + top).squeeze(1)  # (c,) log-sum-exp
                out[start : start + chunk] = picked - norm
                lse[start : start + chunk] = norm
                if grad_h is not None:
                    probs.div_(total)
                    probs[torch.arange(len(tc), device=probs.device), tc] -= 1.0  # softmax - one-hot
                    grad_h[start : start + chunk] = (probs.to(dtype) @ w).neg_()
        ctx.dtype, ctx.chunk, ctx.weight_dtype = dtype, chunk, weight.dtype
        if precompute:
            ctx.save_for_backward(grad_h)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.precompute = precompute
        return out

    @staticmethod
    def backward(ctx, grad_out):  # grad_out (N,)
        if ctx.precompute:
            (grad_h,) = ctx.saved_tensors
            return grad_h * grad_out[:, None].to(grad_h.dtype), None, None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        kind, dtype, chunk = hidden.device.type, ctx.dtype, ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(kind, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            for start in range(0, h.shape[0], chunk):
                hc, tc = h[start : start + chunk], targets[start : start + chunk]
                probs = ((hc @ w.T).float() - lse[start : start + chunk, None]).exp_()  # (c, V) softmax
                probs[torch.arange(len(tc), device=probs.device), tc] -= 1.0
                g = (probs * -grad_out[start : start + chunk, None].float()).to(dtype)  # d loss / d logits
                if grad_h is not None:
                    grad_h[start : start + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.T @ hc).float()
        return grad_h, None if grad_w is None else grad_w.to(ctx.weight_dtype), None, None


def linear_token_logps(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Log-probability (N,) float32 of each target under ``head(hidden)``; ``hidden`` (N, H), ``targets`` (N,)."""
    if getattr(head, "bias", None) is not None:  # rare for output layers: the plain path
        logits = head(hidden).float()  # (N, V)
        return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    weight = head.weight
    chunk = chunk or ce_chunk_rows(weight.shape[0])
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        with torch.no_grad():  # reference and evaluation passes: forward only
            return LinearTokenLogps.apply(hidden, weight, targets, chunk)
    return LinearTokenLogps.apply(hidden, weight, targets, chunk)


def response_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], rows: int, positions_only: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs (rows,) and loss-token counts (rows,) of the sequences in a padded or packed batch.

    ``batch["segments"]`` (B, T) names the sequence (0 .. rows-1) each token belongs to, -1 on padding,
    so one row may hold several sequences (``tasks/pairs.pack_padded``); each label is predicted by the
    position before it. A batch whose sequences share positions (``tasks/pairs.share_prompts``: a pair's
    prompt computed once) names its loss tokens instead, flat over (B, T): ``predictors`` (the position
    that predicts each), ``targets`` and ``sequence``, with a 4D ``attention_mask``. With
    ``positions_only`` the output layer sees only the predicting positions (``linear_token_logps``);
    otherwise full logits, as the plain path, which is also the fallback where ``lm_loss``'s fast path
    cannot apply.
    """
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    width = batch["input_ids"].shape[1]
    if "predictors" in batch:
        src, tgt, seg = batch["predictors"], batch["targets"], batch["sequence"]  # (N,) each
    else:
        labels = batch["labels"]
        keep = labels[:, 1:] != IGNORE  # (B, T-1): position t predicts label t + 1
        at = torch.arange(labels.numel(), device=labels.device).view(labels.shape)[:, :-1]
        src, tgt, seg = at[keep], labels[:, 1:][keep], batch["segments"][:, 1:][keep]
    parts = _body_and_head(model) if positions_only else None
    if parts is not None:
        body, head = parts
        hidden = body(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
        lp = linear_token_logps(hidden.flatten(0, 1)[src], head, tgt)  # (N,)
    else:  # logits from the earliest predicting position on only (prompt tuning adds virtual positions before)
        first = int((src % width).min()) if len(src) else width - 1
        keep = width - first  # positions first .. T-1
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits[:, -keep:]  # (B, keep, V)
        picked = logits.flatten(0, 1)[(src // width) * keep + src % width - first].float()  # (N, V)
        lp = picked.gather(1, tgt[:, None]).squeeze(1) - torch.logsumexp(picked, dim=-1)
    sums = torch.zeros(rows, dtype=torch.float32, device=lp.device).index_add(0, seg, lp)
    counts = torch.zeros(rows, dtype=torch.long, device=lp.device).index_add(0, seg, torch.ones_like(seg))
    return sums, counts
