"""Token findings (given a tokenizer): length percentiles as the model sees the examples, how many
examples ``max_length`` truncates, and (given a model config) the activation memory that length implies."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneforge.data.audit.report import Finding, SplitSummary, finding
from tuneforge.data.audit.rows import Flat
from tuneforge.data.formats import Example
from tuneforge.data.progress import track


def token_lengths(examples: list[Example], fmt: str, tokenizer: Any, batch: int = 1000) -> list[int]:
    """Tokens per example as the model would see it (through the chat template when there is one)."""
    if fmt in ("classification", "text"):
        return _lengths(tokenizer, [ex.text or "" for ex in examples], batch)
    lengths = _conv_lengths([ex.messages + (ex.chosen or []) for ex in examples], tokenizer, batch)
    if fmt == "preference":
        rejected = _conv_lengths([ex.messages + (ex.rejected or []) for ex in examples], tokenizer, batch)
        lengths = [max(x, y) for x, y in zip(lengths, rejected)]
    return lengths


def _lengths(tokenizer: Any, texts: list[str], batch: int) -> list[int]:
    out: list[int] = []
    starts = range(0, len(texts), batch)
    for s in track(starts, "token lengths (batches)", len(starts), every=1):
        ids = tokenizer(texts[s : s + batch], add_special_tokens=True, truncation=False, verbose=False)[
            "input_ids"
        ]
        out += [len(x) for x in ids]
    return out


def _conv_lengths(convs: list[list[dict[str, str]]], tokenizer: Any, batch: int) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        return _lengths(
            tokenizer, ["\n".join(f"{t['role']}: {t['content']}" for t in c) for c in convs], batch
        )
    out: list[int] = []
    starts = range(0, len(convs), batch)
    for s in track(starts, "token lengths (batches)", len(starts), every=1):
        out += [
            len(x)
            for x in tokenizer.apply_chat_template(convs[s : s + batch], tokenize=True, return_dict=False)
        ]
    return out


def activation_memory(
    seq_len: int, config: Any, language_model: bool = True, bytes_per_value: int = 4
) -> dict:
    """Estimated activation memory of one training example of ``seq_len`` tokens (no gradient checkpointing).

    Per transformer layer ``s*h*(34 + 5*a*s/h)`` bytes at 16 bits per value (Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models"), scaled to ``bytes_per_value``; the
    ``5*a*s/h`` term is the attention matrix, which fused (SDPA/flash) attention mostly avoids, so this is
    an upper bound. Language models add the fp32 logits and their gradient: ``2*s*V*4`` bytes.
    """
    h = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if not (h and layers and heads):
        return {}
    per_layer = seq_len * h * (34 + 5 * heads * seq_len / h) * bytes_per_value / 2
    logits = 2 * seq_len * vocab * 4 if language_model else 0
    total = layers * per_layer + logits
    return {
        "seq_len": seq_len, "bytes": int(total), "mib": round(total / 2**20, 1), "layers": layers,
        "hidden": h, "heads": heads, "vocab": vocab, "bytes_per_value": bytes_per_value,
        "logits_bytes": int(logits),
    }  # fmt: skip


def token_findings(
    a: Flat,
    summaries: list[SplitSummary],
    tokenizer: Any,
    max_length: int | None,
    model_config: Any,
    lengths_out: dict[str, list[int]],
) -> list[Finding]:
    """Token-length statistics per split (into ``summaries`` and ``lengths_out``) and the truncation finding."""
    out = []
    for k, name in enumerate(a.names):
        idx = a.indices(k)
        if not idx:
            continue
        lengths = np.asarray(token_lengths([a.examples[i] for i in idx], a.fmt, tokenizer))  # (n,)
        lengths_out[name] = lengths.tolist()
        limit = max_length or int(lengths.max())
        over = lengths > limit  # (n,) truncated
        p99 = int(np.percentile(lengths, 99))
        stats: dict[str, Any] = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
        stats.update(
            mean=round(float(lengths.mean()), 1), min=int(lengths.min()), max=int(lengths.max()),
            max_length=limit, truncated=int(over.sum()), truncated_pct=round(100 * float(over.mean()), 2),
            tokens_lost_pct=round(100 * float((lengths - limit).clip(0).sum() / max(lengths.sum(), 1)), 2),
            suggested_max_length=max(16, 1 << (max(p99, 1) - 1).bit_length()),  # next power of two over p99
        )  # fmt: skip
        if model_config is not None:
            stats["memory"] = _memory(
                limit, stats["suggested_max_length"], model_config, a.fmt != "classification"
            )
        summaries[k].tokens = stats
        if k == 0 and max_length and over.any():
            what = f"max_length {max_length} truncates {stats['truncated']:,} examples "
            what += f"({stats['truncated_pct']:.1f}%, {stats['tokens_lost_pct']:.1f}% of tokens)"
            rows = [a.examples[i].source for i, o in zip(idx, over.tolist()) if o]
            sev = "warning" if over.mean() > 0.01 else "info"
            out.append(
                finding("truncation", name, what, rows, severity=sev, suggested=stats["suggested_max_length"])
            )
    return out


def _memory(limit: int, suggested: int, config: Any, language_model: bool) -> dict[str, Any]:
    mem = activation_memory(limit, config, language_model)
    if not mem:
        return {}
    alt = activation_memory(suggested, config, language_model)
    mem["summary"] = (
        f"memory: ~{mem['mib']:,} MiB of activations per example at max_length {limit} "
        f"(~{alt['mib']:,} MiB at {suggested}, which covers 99% of examples); a batch multiplies it. "
        f"Estimate: {mem['layers']} layers x s*h*(34 + 5*a*s/h) bytes (h={mem['hidden']}, a={mem['heads']}; "
        "Korthikanti et al. 2022, fp32, no gradient checkpointing; an upper bound with fused attention)"
        + (f" + logits and their gradient, 2*s*V*4 bytes (V={mem['vocab']:,})." if language_model else ".")
    )
    return mem
