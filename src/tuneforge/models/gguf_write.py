"""Write a transformers causal LM and its tokenizer as one GGUF file (llama.cpp, Ollama, LM Studio).

The file follows llama.cpp's conventions, so that llama.cpp and transformers (``gguf_file=``) both read it:
tensor names from gguf-py's own name map, Llama-family query/key rows permuted into llama.cpp's rotary
layout, Gemma's RMSNorm weights stored as ``1 + w``, the tokenizer's vocabulary, merges, special ids and chat
template in the metadata, and the weights as F32 (1-D tensors), F16 or Q8_0 (gguf-py's quantiser).

What it writes: ``llama`` and ``mistral`` (rotary permutation), ``qwen2`` (no permutation, q/k/v biases) and
``gemma3`` (text). Any other architecture, or a RoPE scaling llama.cpp would not read back the same, gets an
error naming what it can write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.errors import ModelError

QUANTS = ("f32", "f16", "q8_0")
# model_type -> the name gguf-py and llama.cpp use for it
ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
}
_PERMUTED = {"llama"}  # llama.cpp's Llama graph expects q/k rows in its interleaved rotary order

# transformers' pre-tokenizer regexes, by the name llama.cpp gives them (tokenizer.ggml.pre)
_PRE_BY_SPLIT = {"(?i:'s|'t|'re|'ve|'m|'ll|'d)": "llama-bpe"}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type (Gemma 3)
        params = params["full_attention"]
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(cfg, "rope_theta", 10000.0))


def _check_rope(cfg, arch: str) -> None:
    params = getattr(cfg, "rope_parameters", None) or {}
    kinds = [params.get("rope_type", "default")] if "rope_type" in params else []
    kinds += [p.get("rope_type", "default") for p in params.values() if isinstance(p, dict)]
    allowed = {"default", "linear"} if arch == "gemma3" else {"default"}
    odd = sorted({k for k in kinds if k not in allowed})
    if odd:
        raise ModelError(
            f"GGUF export: this model uses RoPE scaling {odd}, which the GGUF writer does not carry over yet; "
            f"export a transformers folder instead (`tuneforge export RUN OUT_DIR --merge`)."
        )


def permute_for_rotary(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k projection rows from transformers' half-split rotary layout to llama.cpp's interleaved one
    (the inverse of transformers' ``reverse_permute`` when it reads the file back). ``w``: [n_head*dim, in]."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: str, cfg) -> list[tuple[str, torch.Tensor]]:
    """The model's weights under their GGUF names, in the layout llama.cpp expects."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    out: list[tuple[str, torch.Tensor]] = []
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        stem, _, suffix = hf_name.rpartition(".")
        if stem.startswith("model.language_model."):  # multimodal wrappers keep the text model one level down
            stem = "model." + stem[len("model.language_model.") :]
        if tied and stem == "lm_head":
            continue
        gguf_name = name_map.get_name(stem)
        if gguf_name is None:
            raise ModelError(
                f"GGUF export: no GGUF name for the {arch} tensor {hf_name!r}; this model differs from the "
                f"architecture llama.cpp knows. Export a transformers folder instead (`--merge` without .gguf)."
            )
        t = tensor.detach().to(torch.float32).cpu()
        if arch in _PERMUTED and suffix == "weight" and gguf_name.endswith(("attn_q", "attn_k")):
            t = permute_for_rotary(t, n_head if gguf_name.endswith("attn_q") else n_kv)
        if arch == "gemma3" and gguf_name.endswith("norm") and suffix == "weight":
            t = t + 1.0  # llama.cpp's Gemma norm multiplies by w; transformers' by (1 + w)
        out.append((f"{gguf_name}.{suffix}", t))
    return out


def _pre_tokenizer(tok_json: dict, name_hint: str) -> str:
    """llama.cpp's name for how this tokenizer splits text before its merges (``tokenizer.ggml.pre``)."""
    text = json.dumps(tok_json.get("pre_tokenizer") or {})
    for marker, pre in _PRE_BY_SPLIT.items():
        if json.dumps(marker)[1:-1] in text:
            return pre
    if "smollm" in name_hint.lower():
        return "smollm"
    return "gpt-2"  # a plain ByteLevel pre-tokenizer splits with GPT-2's regex


def _vocabulary(tokenizer, n_vocab: int) -> dict[str, Any]:
    """Tokens, their types, merges and the tokenizer model name, from the fast tokenizer's own JSON."""
    import gguf

    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tok_json["model"]
    if model.get("type") != "BPE":
        raise ModelError(
            f"GGUF export: the tokenizer is {model.get('type')}, and the GGUF writer writes BPE tokenizers; "
            f"export a transformers folder instead."
        )
    byte_fallback = bool(model.get("byte_fallback"))
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:  # the embedding has rows the tokenizer never emits
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif tok in added:
            tokens.append(tok)
            types.append(gguf.TokenType.CONTROL if added[tok].get("special") else gguf.TokenType.USER_DEFINED)
        elif byte_fallback and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            tokens.append(tok)
            types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(tok)
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(i))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    kind = "llama" if byte_fallback else "gpt2"  # sentencepiece-style BPE vs byte-level BPE
    return {
        "tokens": tokens,
        "types": types,
        "scores": scores,
        "merges": merges,
        "model": kind,
        "json": tok_json,
    }


def _quantise(name: str, t: torch.Tensor, quant: str) -> tuple[np.ndarray, Any]:
    """The array to store and its GGML type: 1-D tensors (norms, biases) stay F32, as llama.cpp keeps them."""
    import gguf

    a = t.numpy()
    if quant == "f32" or a.ndim == 1:
        return a.astype(np.float32), gguf.GGMLQuantizationType.F32
    if quant == "q8_0" and a.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(a.astype(np.float32), qtype), qtype
    return a.astype(np.float16), gguf.GGMLQuantizationType.F16


def write_gguf(model, tokenizer, out: str | Path, quant: str = "f16", name: str = "tuneforge model") -> Path:
    """Write ``model`` (a transformers causal LM with merged weights) and ``tokenizer`` to ``out`` (.gguf).

    Written to a temporary file and renamed, so an interrupted export never leaves a half file at ``out``.
    """
    import gguf

    if quant not in QUANTS:
        raise ModelError(f"GGUF export: --quant {quant!r} is not one of {', '.join(QUANTS)}.")
    cfg = _text_config(model.config)
    model_type = getattr(cfg, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ModelError(
            f"GGUF export: the {model_type!r} architecture is not one the GGUF writer knows "
            f"(it writes llama, mistral, qwen2 and gemma3 models). Export a transformers folder instead "
            f"(`tuneforge export RUN OUT_DIR --merge`) and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    _check_rope(cfg, arch)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    voc = _vocabulary(tokenizer, n_vocab)
    tensors = _tensors(model, arch, cfg)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(name)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(int(cfg.num_attention_heads))
    w.add_head_count_kv(int(getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_vocab_size(n_vocab)
    if arch == "gemma3":
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
        if getattr(cfg, "sliding_window", None):
            w.add_sliding_window(int(cfg.sliding_window))
    else:
        w.add_rope_dimension_count(int(head_dim))
    w.add_file_type(
        {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
            quant, gguf.LlamaFileType.MOSTLY_Q8_0
        )
    )
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_tokenizer_model(voc["model"])
    if voc["model"] == "gpt2":
        w.add_tokenizer_pre(_pre_tokenizer(voc["json"], str(getattr(model.config, "_name_or_path", ""))))
    w.add_token_list(voc["tokens"])
    w.add_token_types(voc["types"])
    if voc["model"] == "llama":
        w.add_token_scores(voc["scores"])
    if voc["merges"]:
        w.add_token_merges(voc["merges"])
    for setter, tid in (
        (w.add_bos_token_id, tokenizer.bos_token_id),
        (w.add_eos_token_id, tokenizer.eos_token_id),
        (w.add_pad_token_id, tokenizer.pad_token_id),
        (w.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if tid is not None:
            setter(int(tid))
    probe = tokenizer("a")["input_ids"]  # what the tokenizer adds on its own (its post-processor, not a flag)
    w.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    w.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)

    for gguf_name, t in tensors:
        data, qtype = _quantise(gguf_name, t, quant)
        w.add_tensor(gguf_name, data, raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
