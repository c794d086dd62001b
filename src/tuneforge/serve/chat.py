"""An interactive chat in the terminal: the model's chat template, tokens streamed as they come.

Commands: ``/reset`` forgets the conversation, ``/exit`` (or Ctrl-D) ends the chat.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from threading import Thread
from typing import TextIO

import torch

from tuneforge.data.chat import render_prompt
from tuneforge.models.generate import as_conversation, generation_config, stop_ids

HELP = "Type a message and press Enter. /reset starts over, /exit (or Ctrl-D) quits."


def stream_answer(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    out: TextIO | None = None,
    engine=None,
) -> str:
    """Generate the next assistant turn on the generation engine, writing text to ``out`` as it comes; returns
    the answer. ``engine``: one kept for the whole conversation (``chat_engine``), so each turn reads the
    earlier turns' keys and values from its prompt cache instead of computing them again."""
    from tuneforge.models.engine import Delta, Engine, SamplingParams, supports

    out = out or sys.stdout
    if supports(model) is not None:  # prompt-learning adapters: transformers' generate
        return _stream_hf(model, tokenizer, messages, max_new_tokens, temperature, out)
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    params = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_p=0.95 if temperature > 0 else 1.0,
        stop_token_ids=stop_ids(tokenizer),
    )

    def show(event: Delta | BaseException) -> None:
        if isinstance(event, Delta):
            out.write(event.text)
            out.flush()

    engine = engine or Engine(model, tokenizer, max_batch=1)
    handle = engine.submit(ids, params, on_event=show)
    while not handle.done:
        engine.step()
    answer = handle.result()[0].text
    out.write("\n")
    return answer.strip()


def chat_engine(model, tokenizer):
    """The engine of a conversation (None where the engine cannot run the model): one row, a prompt cache
    for the earlier turns."""
    from tuneforge.models.engine import Engine, supports

    if supports(model) is not None:
        return None
    return Engine(model, tokenizer, max_batch=1, prompt_cache_mb=64)


def _stream_hf(
    model, tokenizer, messages: list[dict], max_new_tokens: int, temperature: float, out: TextIO
) -> str:
    """``stream_answer`` with transformers' generate and TextIteratorStreamer."""
    from transformers import TextIteratorStreamer

    device = next(model.parameters()).device
    enc = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = generation_config(tokenizer, max_new_tokens, temperature)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                model.generate(**enc, generation_config=config, streamer=streamer)
        except BaseException as e:  # surface errors from the generation thread
            errors.append(e)
            streamer.end()

    thread = Thread(target=run, daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        out.write(piece)
        out.flush()
    thread.join()
    if errors:
        raise errors[0]
    out.write("\n")
    return "".join(pieces).strip()


def chat(
    model,
    tokenizer,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system_prompt: str | None = None,
    input_fn: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict]:
    """Read messages with ``input_fn`` until /exit or end of input; returns the last conversation."""
    out = out or sys.stdout
    model.eval()
    out.write(HELP + "\n")
    messages: list[dict] = []
    engine = chat_engine(model, tokenizer)
    while True:
        try:
            text = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return messages
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return messages
        if text == "/reset":
            messages = []
            out.write("(conversation reset)\n")
            continue
        messages = as_conversation(messages + [{"role": "user", "content": text}], system_prompt)
        out.write("bot> ")
        out.flush()
        answer = stream_answer(model, tokenizer, messages, max_new_tokens, temperature, out, engine)
        messages.append({"role": "assistant", "content": answer})
