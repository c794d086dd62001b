"""Resolve a model name to a local transformers folder and load it for a task.

``model.name`` may be a bundled alias (``tuneforge models``), a local transformers folder, a
``.gguf`` file (dequantised once and cached as safetensors), or a hub id (found only in the local
Hugging Face cache: this tool never downloads at run time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from tuneforge.errors import ModelError
from tuneforge.models.catalogue import MODELS

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge"))


def resolve_model(name: str) -> Path:
    """Return a local transformers folder for ``name`` (converting a GGUF file once)."""
    if name in MODELS:
        path = MODELS[name].locate(cache_dir())
    else:
        path = Path(name).expanduser()
        if not path.exists():
            return _from_hub_cache(name)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{path}: a model file must be .gguf; otherwise give the folder with config.json."
            )
        return _gguf_to_folder(path)
    if not (path / "config.json").exists():
        if (path / "adapter_config.json").exists():
            return path
        raise ModelError(
            f"{path}: no config.json here. Give a transformers model folder, a .gguf file, or a bundled alias."
        )
    return path


def _from_hub_cache(name: str) -> Path:
    looks_like_hub = name.count("/") == 1 and not name.startswith((".", "/"))
    if not looks_like_hub:
        raise ModelError(
            f"model '{name}' is not a bundled alias ({', '.join(MODELS)}), nor an existing path. "
            f"Run `tuneforge models` to list the bundled ones."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        raise ModelError(
            f"model '{name}' looks like a hub id, but it is not in the local Hugging Face cache and this "
            f"machine is offline. Download it where there is a network (`huggingface-cli download {name}`), "
            f"copy the folder here and set model.name to that folder."
        ) from None


def _gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder; later loads take a fraction of a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").exists() and (target / ".complete").exists():
        return target
    log.info("converting %s to safetensors (once) in %s", gguf.name, target)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise ModelError(
            f"{gguf}: cannot read this GGUF file ({e}). Is the architecture supported by transformers?"
        ) from None
    if getattr(model, "hf_quantizer", None) is not None:
        # GGUF weights are dequantised to dense floats; drop the quantised marker so training and saving work.
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    (tmp / ".complete").write_text(json.dumps({"source": str(gguf)}))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def model_folder_fault(folder: Path, adapter: bool) -> str | None:
    """What is wrong with a saved model folder, found without loading it, or None: a missing config or weights
    file, a JSON file that does not parse, a safetensors file that is shorter or longer than its header says.

    ``adapter``: the folder holds a PEFT adapter (``adapter_config.json``) rather than a whole model.
    """
    config = "adapter_config.json" if adapter else "config.json"
    if not (folder / config).is_file():
        return f"{config} is missing"
    weights = ADAPTER_WEIGHT_FILES if adapter else WEIGHT_FILES
    if not any((folder / w).is_file() for w in weights):
        return f"the weights file ({weights[0]}) is missing"
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"{path.name} is damaged (not valid JSON: {str(e).splitlines()[0]})"
    for path in sorted(folder.glob("*.safetensors")):
        fault = safetensors_fault(path)
        if fault:
            return f"{path.name} is damaged ({fault})"
    return None


def safetensors_fault(path: Path) -> str | None:
    """A safetensors file checked against its own header: 8 bytes of header length, the JSON header, then the
    tensors, whose byte ranges must end exactly at the end of the file. None when it is whole."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            return f"truncated: {size} bytes, but the header alone needs {8 + n}"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"{'truncated' if size < expected else 'extra bytes'}: {size} bytes where its header says {expected}"
    return None


def is_encoder(config) -> bool:
    """An encoder (BERT, RoBERTa, ...) by its transformers config: transformers would give it a causal-LM head
    (``BertLMHeadModel``) without complaint, but it was pre-trained to fill in masked words, not to continue text."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return True
    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def require_causal_lm(name: str) -> None:
    """Refuse an encoder (or any model without a causal-LM head) for a task that generates text, before its
    tokenizer is set up (an encoder's missing chat template would otherwise be reported first)."""
    from transformers import AutoConfig

    path = resolve_model(name)
    if not (path / "config.json").exists():  # an adapter folder: its base model is checked when it loads
        return
    config = AutoConfig.from_pretrained(path)
    if is_encoder(config):
        raise ModelError(_encoder_message(name, config.model_type))


def _encoder_message(name: str, model_type: str | None) -> str:
    return (
        f"{name}: a '{model_type}' model is an encoder, not a causal (decoder) language model, so it cannot generate text "
        f"for tasks sft, dpo or grpo. Use a chat model (e.g. model.name=smollm2-135m-instruct; `tuneforge models`), "
        f"or train this encoder with task: classification or reward."
    )


def load_tokenizer(name: str, chat_template: str | None = None):
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if chat_template is not None:
        from tuneforge.models.templates import ensure_template

        ensure_template(tok, chat_template)
    return tok


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def set_dropout(config, p: float) -> None:
    """Set every dropout probability a transformers config names (hidden, attention, classifier)."""
    for key in (
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "attention_dropout",
        "hidden_dropout",
        "dropout",
        "classifier_dropout",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
    ):
        if hasattr(config, key):
            setattr(config, key, p)


def load_classifier(
    name: str,
    labels: list[str],
    dtype: str = "float32",
    dropout: float | None = None,
    pad_token_id: int | None = None,
):
    """A sequence classifier with a new head sized to ``labels`` (encoders and causal LMs alike)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(name)
    config = AutoConfig.from_pretrained(path)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id  # causal LMs pool the last non-pad token
    if dropout is not None:
        set_dropout(config, dropout)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=_dtype(dtype))
    except ValueError as e:
        raise ModelError(
            f"{name}: transformers has no sequence-classification head for this architecture ({e})."
        ) from None
    return model


def load_causal_lm(name: str, dtype: str = "float32", dropout: float | None = None):
    """A causal language model (refusing an encoder, which transformers would load with an untrained LM head)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(name)
    config = AutoConfig.from_pretrained(path)
    if is_encoder(config):
        raise ModelError(_encoder_message(name, config.model_type))
    if dropout is not None:
        set_dropout(config, dropout)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=_dtype(dtype))
