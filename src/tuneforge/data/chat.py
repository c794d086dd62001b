"""Chat examples -> token ids and loss labels, with the model's chat template.

Masks work for any template (no ``{% generation %}`` markers needed): the conversation is rendered up
to each assistant turn (with the generation prompt) and through it, and the two texts are tokenised
piece by piece. So the prompt of every turn is tokenised exactly as it is at generation time, and the
tokens of each assistant turn are known by construction. By default only assistant tokens carry loss,
up to and including the end-of-turn token (``<|im_end|>`` for ChatML); when a template does not end
an assistant turn with a single special token, the EOS token is appended so the tuned model stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge.errors import DataError

IGNORE = -100


@dataclass
class EncodedChat:
    """One tokenised conversation: ``labels`` is -100 where no loss is taken (same length as ``input_ids``)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_loss(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The conversation so far, rendered with the generation prompt (the text to continue)."""
    return _render(tokenizer, messages, add_generation_prompt=True)


_EOT_CACHE: dict[tuple[str, str], tuple[int, bool]] = {}


def end_of_turn(tokenizer) -> tuple[int, bool]:
    """(token id that ends an assistant turn, whether the template writes it itself).

    Found by rendering a tiny conversation: the first special token after the assistant's words. A
    template that writes none gets the EOS token appended to each assistant turn (``False``).
    """
    key = (str(getattr(tokenizer, "name_or_path", "")), str(tokenizer.chat_template))
    if key not in _EOT_CACHE:
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        before = _render(tokenizer, probe[:1], add_generation_prompt=True)
        full = _render(tokenizer, probe)
        if not full.startswith(before):
            raise DataError(_prefix_error(tokenizer))
        tail = full[len(before) :]
        tail = tail[tail.find("Hello") + len("Hello") :] if "Hello" in tail else tail
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        found = next((t for t in _ids(tokenizer, tail) if t in special), None)
        if found is None and tokenizer.eos_token_id is None:
            raise DataError(
                "the chat template ends assistant turns with no special token and the tokenizer has no EOS "
                "token, so a tuned model could never stop. Use a template with an end-of-turn token."
            )
        _EOT_CACHE[key] = (found, True) if found is not None else (tokenizer.eos_token_id, False)
    return _EOT_CACHE[key]


def _prefix_error(tokenizer) -> str:
    return (
        f"the chat template of {getattr(tokenizer, 'name_or_path', 'this model')} renders a conversation's start "
        f"differently once later turns are added, so assistant tokens cannot be located. Set model.chat_template "
        f"to a template that renders turns in order (e.g. chatml)."
    )


def _encode(
    tokenizer,
    messages: list[dict],
    max_length: int | None,
    train_on_inputs: bool,
    first_trained: int,
    source: str,
) -> EncodedChat:
    if not messages:
        raise DataError(f"{source}: empty conversation.")
    eot, written = end_of_turn(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # text rendered so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise DataError(
                f"{source}: the conversation starts with an assistant turn; it needs a user (or system) "
                f"turn before the first answer."
            )
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not prompt.startswith(done) or not through.startswith(prompt):
            raise DataError(f"{source}: {_prefix_error(tokenizer)}")
        prompt_ids = _ids(tokenizer, prompt[len(done) :])
        turn_ids = _ids(tokenizer, through[len(prompt) :])
        trains = i >= first_trained
        if written:
            if eot not in turn_ids:
                raise DataError(
                    f"{source}: assistant turn {i} does not end with the end-of-turn token "
                    f"{tokenizer.convert_ids_to_tokens(eot)!r} in this template."
                )
            cut = len(turn_ids) - turn_ids[::-1].index(eot)  # through the last end-of-turn token
        else:
            turn_ids = turn_ids + [eot]
            cut = len(turn_ids)
        ids += prompt_ids + turn_ids
        labels += [IGNORE] * len(prompt_ids)
        labels += (turn_ids[:cut] if trains else [IGNORE] * cut) + [IGNORE] * (len(turn_ids) - cut)
        done = through
    full = _render(tokenizer, messages)
    if not full.startswith(done):
        raise DataError(f"{source}: {_prefix_error(tokenizer)}")
    rest = _ids(tokenizer, full[len(done) :])  # turns after the last assistant turn (context only)
    ids += rest
    labels += [IGNORE] * len(rest)
    if train_on_inputs:
        labels = list(ids)
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedChat(ids, labels, truncated, source)


def encode_chat(
    tokenizer, messages: list[dict], max_length: int | None, train_on_inputs: bool = False, source: str = ""
) -> EncodedChat:
    """Token ids and labels of a conversation: loss on every assistant turn (or every token)."""
    return _encode(tokenizer, messages, max_length, train_on_inputs, 0, source)


def encode_prompt_response(
    tokenizer,
    prompt_messages: list[dict],
    response_messages: list[dict],
    max_length: int | None,
    source: str = "",
) -> EncodedChat:
    """A prompt and its response: loss only on the response's assistant turn(s), each ending with end-of-turn."""
    if not response_messages:
        raise DataError(f"{source}: empty response.")
    return _encode(
        tokenizer,
        list(prompt_messages) + list(response_messages),
        max_length,
        False,
        len(prompt_messages),
        source,
    )


def encode_text(tokenizer, text: str, max_length: int | None, source: str = "") -> EncodedChat:
    """Raw text for continued pre-training: BOS (when the tokenizer uses one) + text + EOS, loss on every token."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    truncated = max_length is not None and len(ids) > max_length
    ids = ids[:max_length] if truncated else ids
    return EncodedChat(ids, list(ids), truncated, source)


def show_trained(tokenizer, enc: EncodedChat, markup: bool = True) -> str:
    """The example as text with the tokens that carry loss marked (rich markup, or ⟦…⟧ when markup=False)."""
    out, run, trained = [], [], None
    for tok, label in zip(enc.input_ids, enc.labels):
        t = label != IGNORE
        if trained is not None and t != trained:
            out.append(_span(tokenizer.decode(run), trained, markup))
            run = []
        run.append(tok)
        trained = t
    if run:
        out.append(_span(tokenizer.decode(run), bool(trained), markup))
    return "".join(out)


def _span(text: str, trained: bool, markup: bool) -> str:
    if not markup:
        return f"⟦{text}⟧" if trained else text
    from rich.markup import escape

    return f"[bold green]{escape(text)}[/bold green]" if trained else f"[dim]{escape(text)}[/dim]"


@dataclass
class MaskReport:
    """What the pre-flight check found about the loss mask of a set of examples."""

    examples: int
    tokens: int
    loss_tokens: int
    truncated: int
    no_loss: int  # examples with no loss token left (e.g. truncated inside the prompt)
    eot_trained: int  # examples whose end-of-turn token carries loss

    @property
    def loss_fraction(self) -> float:
        return self.loss_tokens / max(1, self.tokens)

    def headline(self) -> str:
        return (
            f"{self.examples} examples, {self.tokens:,} tokens, {100 * self.loss_fraction:.1f}% carry loss; "
            f"{self.truncated} truncated, {self.no_loss} with no loss token, end-of-turn trained in "
            f"{self.eot_trained}"
        )


def mask_report(tokenizer, encoded: list[EncodedChat]) -> MaskReport:
    eot, _ = end_of_turn(tokenizer)
    return MaskReport(
        examples=len(encoded),
        tokens=sum(len(e.input_ids) for e in encoded),
        loss_tokens=sum(e.n_loss for e in encoded),
        truncated=sum(e.truncated for e in encoded),
        no_loss=sum(e.n_loss == 0 for e in encoded),
        eot_trained=sum(eot in e.labels for e in encoded),
    )


def check_masks(tokenizer, encoded: list[EncodedChat], where: str = "training data") -> MaskReport:
    """Fail when no token carries loss, or when the end-of-turn token is never trained."""
    report = mask_report(tokenizer, encoded)
    if report.loss_tokens == 0:
        raise DataError(
            f"{where}: no token carries loss. Are there assistant turns? Are the prompts longer than "
            f"data.max_length ({report.truncated} examples truncated)? Raise data.max_length, or set "
            f"sft.train_on_inputs=true for plain text."
        )
    if report.eot_trained == 0:
        eot, _ = end_of_turn(tokenizer)
        raise DataError(
            f"{where}: the end-of-turn token {tokenizer.convert_ids_to_tokens(eot)!r} is never trained, so "
            f"the tuned model would not learn to stop. Raise data.max_length so answers are not cut "
            f"({report.truncated} of {report.examples} examples truncated)."
        )
    return report
