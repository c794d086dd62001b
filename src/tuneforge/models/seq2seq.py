"""Encoder-decoder (text-to-text) models: loading, warm-starting from an encoder, the target-only loss, and
batched generation.

``model.name`` is a T5 / BART / Marian / Pegasus folder or cached hub id (what a user normally brings), or a
saved ``EncoderDecoderModel``. With ``model.seq2seq_warm_start`` an encoder (BERT-like, e.g. the bundled
``minilm-l6``) becomes both halves of an ``EncoderDecoderModel`` (Rothe, Narayan and Severyn 2020,
"Leveraging Pre-trained Checkpoints for Sequence Generation Tasks"): the decoder is the same checkpoint
with causal self-attention and new, randomly initialised cross-attention; the start token is [CLS], the end
token [SEP].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.errors import ModelError
from tuneforge.models.load import _dtype, resolve_model, set_dropout
from tuneforge.utils import tracked

IGNORE = -100


def is_seq2seq(config) -> bool:
    """An encoder-decoder transformers config (T5, BART, Marian, EncoderDecoderModel, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return bool(getattr(config, "is_encoder_decoder", False)) or (
        getattr(config, "model_type", None) in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    )


def check_seq2seq_model(name: str, warm_start: bool) -> None:
    """Refuse, before any loading, a model that cannot be a seq2seq model as configured."""
    from transformers import AutoConfig

    path = resolve_model(name)
    if not (path / "config.json").exists():
        return  # an adapter folder: its base is checked when it loads
    config = AutoConfig.from_pretrained(path)
    if warm_start:
        if is_seq2seq(config):
            raise ModelError(
                f"{name}: already an encoder-decoder ('{config.model_type}'); model.seq2seq_warm_start builds one "
                f"from an encoder. Remove model.seq2seq_warm_start."
            )
        if getattr(config, "model_type", None) not in WARM_START_TYPES:
            raise ModelError(
                f"{name}: a '{config.model_type}' model cannot warm-start an encoder-decoder here (its "
                f"architecture has no cross-attention decoder in transformers). Use a BERT-like encoder "
                f"({', '.join(WARM_START_TYPES)}), or a T5/BART folder without model.seq2seq_warm_start."
            )
    elif not is_seq2seq(config):
        hint = (
            " It is an encoder: set model.seq2seq_warm_start=true to build an encoder-decoder from it."
            if config.model_type in WARM_START_TYPES
            else ""
        )
        raise ModelError(
            f"{name}: a '{config.model_type}' model is not an encoder-decoder, so task seq2seq cannot train it.{hint} "
            f"The usual start is your own T5, BART or Marian folder (or a cached hub id such as t5-small)."
        )


WARM_START_TYPES = ("bert", "roberta", "electra", "xlm-roberta", "camembert")


def warm_start_ids(tokenizer) -> dict[str, int]:
    """decoder_start / eos / pad token ids of a warm-started BERT2BERT: [CLS] starts, [SEP] ends."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or eos is None or tokenizer.pad_token_id is None:
        raise ModelError(
            "the encoder's tokenizer has no [CLS]/[SEP] (or BOS/EOS) and pad tokens to start, end and pad the "
            "decoder's output; warm-start from a BERT-like encoder."
        )
    return {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}


def load_seq2seq(
    name: str, tokenizer, dtype: str = "float32", dropout: float | None = None, warm_start=False
):
    """An encoder-decoder model: ``name`` as it is, or (``warm_start``) two copies of an encoder joined by new
    cross-attention. Its generation settings stop at the tokenizer's end token."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderModel

    check_seq2seq_model(name, warm_start)
    path = resolve_model(name)
    if warm_start:
        kw = (
            {}
            if dropout is None
            else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        )
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            str(path),
            str(path),
            encoder_add_pooling_layer=False,
            **{f"encoder_{k}": v for k, v in kw.items()},
            **{f"decoder_{k}": v for k, v in kw.items()},
        )
        ids = warm_start_ids(tokenizer)
        for key, value in ids.items():
            setattr(model.config, key, value)
            setattr(model.generation_config, key, value)
        model.config.vocab_size = model.config.decoder.vocab_size
        return model.to(_dtype(dtype))
    config = AutoConfig.from_pretrained(path)
    if dropout is not None:
        set_dropout(config, dropout)
        for key in ("dropout_rate", "activation_dropout"):  # T5's and BART's names beside the shared ones
            if hasattr(config, key):
                setattr(config, key, dropout)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, dtype=_dtype(dtype))
    configure_generation(model, tokenizer)
    return model


def configure_generation(model, tokenizer) -> None:
    """Fill the ids generation needs from the model config or the tokenizer (a tiny config may lack them)."""
    gc, c = model.generation_config, model.config
    if gc.decoder_start_token_id is None:
        gc.decoder_start_token_id = c.decoder_start_token_id
    if gc.pad_token_id is None:
        gc.pad_token_id = c.pad_token_id if c.pad_token_id is not None else tokenizer.pad_token_id
    if gc.eos_token_id is None:
        gc.eos_token_id = c.eos_token_id if c.eos_token_id is not None else tokenizer.eos_token_id


def load_seq2seq_dir(model_dir: Path, cfg=None):
    """A saved seq2seq folder (``AutoModelForSeq2SeqLM``), or a PEFT adapter on its base model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        tok = AutoTokenizer.from_pretrained(model_dir)
        if cfg is not None:
            base = load_seq2seq(cfg.model.name, tok, cfg.model.dtype)
        else:
            base_path = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
            base = AutoModelForSeq2SeqLM.from_pretrained(base_path)
        return PeftModel.from_pretrained(base, model_dir)
    return AutoModelForSeq2SeqLM.from_pretrained(model_dir)


def _config(model):
    """The transformers config of a plain, PEFT-wrapped or DDP-wrapped model."""
    raw = getattr(model, "module", model)
    return raw.get_base_model().config if hasattr(raw, "get_base_model") else raw.config


def decoder_inputs(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Teacher forcing: the labels shifted one position right behind the start token; -100 becomes pad.
    (B, T) -> (B, T)."""
    out = labels.new_full(labels.shape, pad)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start
    return out.masked_fill(out == IGNORE, pad)


def seq2seq_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over target tokens, target tokens) of a batch with ``input_ids``,
    ``attention_mask`` and ``labels`` (-100 on padding). Source tokens are never targets."""
    config = _config(model)
    labels = batch["labels"]  # (B, T)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    dec = decoder_inputs(labels, config.decoder_start_token_id, pad)
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=dec,
        decoder_attention_mask=(labels != IGNORE)
        | (torch.arange(labels.shape[1], device=labels.device) == 0),
        use_cache=False,
    )
    logits = out.logits[:, -labels.shape[1] :]  # (B, T, V); prompt tuning may prepend positions
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((labels != IGNORE).sum())


def _first(*values):
    """The first value that is not None (a token id may be 0)."""
    return next((v for v in values if v is not None), None)


@torch.no_grad()
def generate_seq2seq(
    model,
    tokenizer,
    sources: Sequence[str],
    max_new_tokens: int = 64,
    max_length: int = 512,
    num_beams: int = 1,
    temperature: float = 0.0,
    batch_size: int = 16,
) -> list[str]:
    """The output text for each source (greedy, beam search, or sampling when ``temperature`` > 0)."""
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    base = _config(model)
    raw = getattr(model, "module", model)
    gc = getattr(raw, "generation_config", None)
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=0.95 if sample else None,
        top_k=None,
        decoder_start_token_id=_first(
            getattr(gc, "decoder_start_token_id", None), base.decoder_start_token_id
        ),
        eos_token_id=_first(getattr(gc, "eos_token_id", None), base.eos_token_id, tokenizer.eos_token_id),
        pad_token_id=_first(getattr(gc, "pad_token_id", None), base.pad_token_id, tokenizer.pad_token_id),
    )
    if config.decoder_start_token_id is None:
        config.decoder_start_token_id = config.pad_token_id
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths: little padding
    answers: list[str] = [""] * len(sources)
    try:
        for start in tracked(range(0, len(order), batch_size), "generate"):
            rows = order[start : start + batch_size]
            enc = tokenizer(
                [sources[i] for i in rows],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                generation_config=config,
            )  # (B, new): the decoder's tokens only
            for i, text in zip(rows, tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers
