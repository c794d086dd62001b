"""Generation with a chat model (plain transformers or a PEFT adapter), stopping at the end-of-turn token."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneforge.data.chat import end_of_turn, render_prompt
from tuneforge.utils import tracked


def stop_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: the template's end-of-turn token and EOS."""
    ids = [end_of_turn(tokenizer)[0]] if getattr(tokenizer, "chat_template", None) else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generation_config(tokenizer, max_new_tokens: int = 64, temperature: float = 0.0, **kw):
    """A complete GenerationConfig (greedy when temperature is 0), independent of the model's defaults."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=0.95 if sample else None,
        top_k=None,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        **kw,
    )


def as_conversation(prompt: str | Sequence[dict], system_prompt: str | None = None) -> list[dict]:
    """A prompt string becomes one user turn (after an optional system message)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def generate(
    model,
    tokenizer,
    prompts: Sequence[str | Sequence[dict]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> list[str]:
    """Answer each prompt (a string or a conversation) with the chat template; returns the answers' text.

    Runs on the generation engine (continuous batching, ``batch_size`` answers at once; greedy answers equal
    ``model.generate``'s); a model the engine cannot run (prompt-learning adapters) uses ``model.generate``.
    Sampling (temperature > 0, top-p 0.95) draws from torch's global generator, so ``torch.manual_seed``
    makes it reproducible.
    """
    from tuneforge.models.engine import Engine, SamplingParams, supports

    texts = [render_prompt(tokenizer, as_conversation(p, system_prompt)) for p in prompts]
    if supports(model) is not None:
        return _generate_hf(model, tokenizer, texts, max_new_tokens, temperature, batch_size)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    params = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_p=0.95 if temperature > 0 else 1.0,
        stop_token_ids=stop_ids(tokenizer),
    )
    # weights fixed for the call: the lean forward, and prompts that start alike (a system prompt) share it
    engine = Engine(model, tokenizer, max_batch=max(1, batch_size), fast=True, prompt_cache_mb=64)
    return [c[0].text.strip() for c in engine.generate(ids, params)]


@torch.no_grad()
def _generate_hf(
    model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float, batch_size: int
):
    """``model.generate`` in left-padded batches (for models the engine cannot run)."""
    model.eval()
    device = next(model.parameters()).device
    config = generation_config(tokenizer, max_new_tokens, temperature)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    answers: list[str] = []
    try:
        for start in tracked(range(0, len(texts), batch_size), "generate"):
            enc = tokenizer(
                texts[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(**enc, generation_config=config)  # (B, T + new)
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers
