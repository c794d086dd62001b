"""Chat data: formats -> one example, chat templates, assistant-only loss masks, truncation, pre-flight checks."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.chat import (
    IGNORE,
    check_masks,
    encode_chat,
    encode_prompt_response,
    encode_text,
    end_of_turn,
    render_prompt,
    show_trained,
)
from tuneforge.data.formats import to_examples
from tuneforge.data.io import Table
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.templates import ensure_template, resolve_template

CONV = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def trained_spans(tok, enc) -> list[str]:
    """Decoded runs of consecutive tokens that carry loss."""
    spans, run = [], []
    for t, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            run.append(t)
        elif run:
            spans.append(tok.decode(run))
            run = []
    if run:
        spans.append(tok.decode(run))
    return spans


def test_every_format_becomes_the_same_example(tok):
    rows = {
        "messages": {
            "messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
        },
        "sharegpt": {
            "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]
        },
        "alpaca": {"instruction": "Hi there", "input": "", "output": "Hello!"},
        "prompt_completion": {"prompt": "Hi there", "completion": "Hello!"},
    }
    encoded = []
    for fmt, row in rows.items():
        (example,), detected = to_examples(Table(f"{fmt}.jsonl", [row], [1]))
        assert detected == fmt
        assert example.messages == rows["messages"]["messages"]
        encoded.append(encode_chat(tok, example.messages, 128))
    assert all(e.input_ids == encoded[0].input_ids and e.labels == encoded[0].labels for e in encoded)


def test_unknown_shape_error_lists_accepted_shapes(tmp_path):
    from tuneforge.config import DataConfig
    from tuneforge.tasks.sft import read_examples

    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    with pytest.raises(DataError, match="Accepted row shapes") as e:
        read_examples(str(path), DataConfig())
    assert "conversations" in str(e.value) and "instruction" in str(e.value)


def test_loss_mask_covers_exactly_the_assistant_turns(tok):
    enc = encode_chat(tok, CONV, 512)
    assert trained_spans(tok, enc) == ["Paris.<|im_end|>", "Rome, of course.<|im_end|>"]
    # the ids are exactly the template's rendering of the whole conversation
    full = tok.apply_chat_template(CONV, tokenize=False)
    assert tok.decode(enc.input_ids) == full
    assert enc.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    assert enc.n_loss == sum(
        len(tok(s, add_special_tokens=False)["input_ids"]) for s in trained_spans(tok, enc)
    )
    # the pad token is the end-of-turn token here: the labels keep it where it ends an answer
    assert tok.pad_token_id == end_of_turn(tok)[0] and enc.labels.count(tok.pad_token_id) == 2


def test_loss_mask_matches_transformers_generation_markers(tok):
    """Reference: transformers' own assistant mask from a template with {% generation %} markers."""
    marked = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
        "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    tok = ensure_template(tok.__class__.from_pretrained(tok.name_or_path), marked)
    ref = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    enc = encode_chat(tok, CONV, 512)
    assert enc.input_ids == ref["input_ids"]
    assert [int(label != IGNORE) for label in enc.labels] == ref["assistant_masks"]


def test_train_on_inputs_and_prompt_response(tok):
    everything = encode_chat(tok, CONV, 512, train_on_inputs=True)
    assert everything.labels == everything.input_ids
    enc = encode_prompt_response(tok, CONV[:4], CONV[4:], 512)
    assert trained_spans(tok, enc) == ["Rome, of course.<|im_end|>"]
    assert enc.input_ids == encode_chat(tok, CONV, 512).input_ids


def test_render_prompt_ends_with_generation_prompt(tok):
    text = render_prompt(tok, CONV[:2])
    assert text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_truncation_is_flagged_and_checked(tok):
    full = encode_chat(tok, CONV, 512)
    cut = encode_chat(tok, CONV, len(full.input_ids) - 3)
    assert cut.truncated and not full.truncated and len(cut.input_ids) == len(full.input_ids) - 3
    report = check_masks(tok, [full, cut])
    assert report.truncated == 1 and report.eot_trained == 2 and 0 < report.loss_fraction < 0.5
    # answers cut before their end-of-turn token: the model would never learn to stop
    first_answer_end = full.labels.index(end_of_turn(tok)[0])
    with pytest.raises(DataError, match="never trained"):
        check_masks(tok, [encode_chat(tok, CONV[:3], first_answer_end)])
    with pytest.raises(DataError, match="no token carries loss"):
        check_masks(tok, [encode_chat(tok, CONV, 10)])


def test_named_template_for_a_base_model(tok):
    base = tok.__class__.from_pretrained(tok.name_or_path)
    base.chat_template = None
    with pytest.raises(ConfigError, match="model.chat_template"):
        ensure_template(base)
    ensure_template(base, "chatml")  # SmolLM2's vocabulary has <|im_end|>: it ends every turn
    assert end_of_turn(base) == (tok.convert_tokens_to_ids("<|im_end|>"), True)
    assert not base.chat_template.startswith("{{ bos_token }}")  # <|im_start|> is already its BOS
    # a template whose end marker is not one token here ends turns with the EOS token instead
    ensure_template(base, "gemma")
    assert "<|im_end|>" in base.chat_template and "<end_of_turn>" not in base.chat_template
    assert trained_spans(base, encode_chat(base, CONV, 512))[-1] == "Rome, of course.<|im_end|>"
    with pytest.raises(ConfigError, match="neither a template name"):
        resolve_template("no-such-template")


def test_template_without_end_token_gets_eos_appended(tok):
    plain = tok.__class__.from_pretrained(tok.name_or_path)
    plain.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    eot, written = end_of_turn(plain)
    assert eot == plain.eos_token_id and not written
    enc = encode_chat(plain, CONV[1:3], 512)
    assert enc.input_ids[-1] == plain.eos_token_id and enc.labels[-1] == plain.eos_token_id
    assert trained_spans(plain, enc) == ["Paris.\n<|im_end|>"]


def test_raw_text_and_preflight_marks(tok):
    enc = encode_text(tok, "Some plain prose.", 64)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tok.eos_token_id
    shown = show_trained(tok, encode_chat(tok, CONV[1:3], 512), markup=False)
    assert shown.endswith("<|im_start|>assistant\n⟦Paris.<|im_end|>⟧\n")
    with pytest.raises(DataError, match="starts with an assistant turn"):
        encode_chat(tok, CONV[2:3], 512)
