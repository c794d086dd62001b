"""Shared fixtures: tiny random models (2 layers, hidden 64) with the real bundled tokenizers, and small data files.

The tiny models are saved as ordinary local transformers folders, so they go through exactly the path a
user's own model folder takes (``model.name: /path/to/folder``).
"""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")


def bundled_tokenizer(alias: str):
    """The tokenizer of a bundled model (``minilm-l6``, ``smollm2-135m-instruct``)."""
    from transformers import AutoTokenizer

    from tuneforge.models.load import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(alias))


def save_tiny(tmp_path_factory, name: str, model_cls, config, tok) -> str:
    """A random ``model_cls(config)`` (seed 0) saved with ``tok`` as an ordinary local model folder."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name)
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT (hidden 64) with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    tok = bundled_tokenizer("minilm-l6")
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    return save_tiny(tmp_path_factory, "tiny-bert", BertModel, cfg, tok)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 2-layer Llama (hidden 64) with SmolLM2's tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bundled_tokenizer("smollm2-135m-instruct")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return save_tiny(tmp_path_factory, "tiny-llama", LlamaForCausalLM, cfg, tok)


POS = ["great", "wonderful", "brilliant", "moving", "superb", "delightful", "charming", "excellent"]
NEG = ["awful", "boring", "dreadful", "tedious", "terrible", "clumsy", "dull", "lifeless"]
FILL = ["film", "story", "cast", "plot", "script", "ending", "music", "pacing", "direction", "acting"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic, learnable sentiment rows: the label follows the adjective."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        adj = rng.choice(POS if good else NEG)
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randrange(len(words) + 1), adj)
        rows.append({"text": f"the {' '.join(words)} {i}", "label": "pos" if good else "neg"})
    return rows


@pytest.fixture
def sentiment_file(tmp_path):
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(240)))
    return str(path)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A 2+2-layer T5 (d_model 64) with MiniLM's tokenizer: [SEP] ends a target, [PAD] starts the decoder."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = bundled_tokenizer("minilm-l6")
    cfg = T5Config(
        vocab_size=tok.vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return save_tiny(tmp_path_factory, "tiny-t5", T5ForConditionalGeneration, cfg, tok)
