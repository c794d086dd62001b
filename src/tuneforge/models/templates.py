"""Chat templates: the model's own, or a named one for base models that have none.

``model.chat_template`` is a name (``chatml``, ``gemma``, ``zephyr``, ``llama3``), a path to a
``.jinja`` file, or a Jinja string. ``ensure_template`` sets it on a tokenizer and makes sure an
assistant turn ends with a single end-of-turn token (so a tuned model learns to stop): when the
template's end marker is not one token of this vocabulary, the tokenizer's EOS token is used instead.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import ConfigError

# {eot} is replaced by the end-of-turn marker; {bos} by "{{ bos_token }}" when the tokenizer expects a BOS.
_TEMPLATES = {
    "chatml": (
        "{bos}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'{eot}' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "<|im_end|>",
    ),
    "gemma": (
        "{bos}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '{eot}' + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        "<end_of_turn>",
    ),
    "zephyr": (
        "{bos}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '{eot}' + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        "</s>",
    ),
    "llama3": (
        "{bos}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
        "message['content'] | trim + '{eot}' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        "<|eot_id|>",
    ),
}
TEMPLATE_NAMES = tuple(_TEMPLATES)


def resolve_template(name_or_jinja: str, eot: str | None = None, bos: bool = False) -> str:
    """The Jinja text of a named template (``chatml``, ...), a ``.jinja`` file, or the string itself.

    ``eot`` replaces a named template's end-of-turn marker; ``bos`` starts it with ``{{ bos_token }}``.
    """
    key = name_or_jinja.strip().lower()
    if key in _TEMPLATES:
        text, default_eot = _TEMPLATES[key]
        return text.replace("{eot}", eot or default_eot).replace("{bos}", "{{ bos_token }}" if bos else "")
    if name_or_jinja.endswith((".jinja", ".j2")):
        path = Path(name_or_jinja).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.chat_template: file {path} not found.")
        return path.read_text()
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ConfigError(
        f"model.chat_template '{name_or_jinja}' is neither a template name ({', '.join(TEMPLATE_NAMES)}), "
        f"a .jinja file, nor a Jinja string."
    )


def _single_token(tokenizer, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def ensure_template(tokenizer, name: str | None = None):
    """Give ``tokenizer`` a chat template: ``name`` when set, else its own; fail clearly when it has none.

    A named template whose end-of-turn marker is not a single token here ends turns with the EOS token
    instead; it starts with the BOS token when the tokenizer normally adds one. Returns the tokenizer.
    """
    if name is not None:
        key = name.strip().lower()
        if key in _TEMPLATES:
            eot = _TEMPLATES[key][1]
            if not _single_token(tokenizer, eot) and tokenizer.eos_token is not None:
                eot = tokenizer.eos_token
            bos_in_markers = tokenizer.bos_token is not None and tokenizer.bos_token in _TEMPLATES[key][0]
            tokenizer.chat_template = resolve_template(
                key, eot=eot, bos=_adds_bos(tokenizer) and not bos_in_markers
            )
        else:
            tokenizer.chat_template = resolve_template(name)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template (a base model?). "
            f"Set model.chat_template to a name ({', '.join(TEMPLATE_NAMES)}) or a Jinja string."
        )
    return tokenizer
