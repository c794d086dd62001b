"""Packing: several examples per row, each attending only to itself, with the same loss as unpacked batches."""

from __future__ import annotations

import pytest
import torch

from tuneforge.data.chat import encode_chat
from tuneforge.data.packing import pack, packed_batch, pad_batch, padding_fraction, plan_packs
from tuneforge.train.lm_loss import lm_loss

QA = [
    ("Hi", "Hello! How can I help?"),
    ("What is 2 + 2?", "4."),
    ("Name a colour.", "Blue, like the sky at noon."),
    ("Are you a robot?", "I am a program."),
    ("Tell me a joke.", "Why did the chicken cross the road?"),
    ("Bye", "Goodbye!"),
]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    # sharper next-token distributions, so a token that saw another example shows in the loss
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    examples = [
        encode_chat(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 256)
        for q, a in QA
    ]
    return tok, model, examples


def test_plan_packs_is_a_partition_within_capacity():
    lengths = [50, 10, 70, 30, 20, 90, 5, 64, 36]
    packs = plan_packs(lengths, 100)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= 100 for p in packs)
    assert len(packs) == 4 and packs == plan_packs(lengths, 100)  # 370 tokens in 4 rows, deterministic
    assert padding_fraction([4, 4, 8], [[0, 1, 2]]) == pytest.approx(1 - 16 / 24)


def test_packed_rows_restart_positions_and_drop_first_labels(tiny):
    tok, _, examples = tiny
    row = pack(examples[:3])
    starts = [0, len(examples[0].input_ids), len(examples[0].input_ids) + len(examples[1].input_ids)]
    assert [row.meta["position_ids"][s] for s in starts] == [0, 0, 0]
    assert all(row.labels[s] == -100 for s in starts)
    batch = packed_batch([row, pack(examples[3:4])], tok.pad_token_id)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    assert batch["position_ids"][1, len(examples[3].input_ids)] == 0  # padding starts a block of its own


def token_losses(model, batch) -> torch.Tensor:
    """Per-token losses at the positions that carry loss, in order (N,)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**inputs, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    targets = batch["labels"][:, 1:]  # (B, T-1)
    keep = targets != -100
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="none")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fast", [True, False])
def test_packed_loss_equals_unpacked_loss(tiny, attn, fast):
    tok, model, examples = tiny
    model.set_attn_implementation(attn)
    rows = [pack([examples[i] for i in p]) for p in plan_packs([len(e.input_ids) for e in examples], 96)]
    assert len(rows) < len(examples)
    padded, packed = pad_batch(examples, tok.pad_token_id), packed_batch(rows, tok.pad_token_id)
    with torch.no_grad():
        loss_pad, n_pad = lm_loss(model, padded, positions_only=fast)
        loss_pack, n_pack = lm_loss(model, packed, positions_only=fast)
        per_pad = token_losses(model, padded).sort().values
        per_pack = token_losses(model, packed).sort().values
        # the check is sharp: the same rows with positions that do not restart let examples see each other
        packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
        per_leaky = token_losses(model, packed).sort().values
    model.set_attn_implementation("sdpa")
    assert n_pack == n_pad == sum(e.n_loss for e in examples)
    assert abs(loss_pack.item() - loss_pad.item()) / n_pad < 1e-4  # mean per-token loss within 1e-4
    torch.testing.assert_close(per_pack, per_pad, atol=1e-4, rtol=1e-4)  # and every token's loss
    assert (per_leaky - per_pad).abs().max() > 1e-2


def test_no_example_sees_another(tiny):
    """Each example's logits inside a pack equal its logits when run alone."""
    tok, model, examples = tiny
    row = pack(examples[:3])
    batch = packed_batch([row], tok.pad_token_id)
    with torch.no_grad():
        # use_cache=False: with a cache transformers does not read packed rows from the position ids
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]  # (T, V)
        start = 0
        for e in examples[:3]:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]  # (t, V)
            torch.testing.assert_close(packed[start : start + len(e.input_ids)], alone, atol=1e-4, rtol=1e-4)
            start += len(e.input_ids)


def test_packed_gradients_equal_unpacked(tiny):
    tok, model, examples = tiny
    rows = [pack([examples[i] for i in p]) for p in plan_packs([len(e.input_ids) for e in examples], 96)]
    grads = []
    for batch in (pad_batch(examples, tok.pad_token_id), packed_batch(rows, tok.pad_token_id)):
        model.zero_grad()
        loss, n = lm_loss(model, batch)
        (loss / n).backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
