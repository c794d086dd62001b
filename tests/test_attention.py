"""tuneforge's attention (models/attention.py) computes the model's own attention: same outputs and
gradients as eager and SDPA, through the grouped-query path, the recompute path and the fallbacks."""

from __future__ import annotations

import pytest
import torch

from tuneforge.models import attention
from tuneforge.train.compile import choose_attention


def _llama(path: str, attn: str):
    from transformers import AutoModelForCausalLM

    attention.register()
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn)


def _batch(vocab: int, t: int = 20) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 1, (3, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t - 6 :] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def _out_and_grads(model, batch):
    model.train()
    logits = model(**batch).logits
    keep = batch["attention_mask"].bool()
    loss = logits[keep].float().logsumexp(-1).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    return logits[keep].detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("recompute", [False, True])
def test_matches_eager_with_grouped_query_heads(tiny_llama, monkeypatch, recompute):
    if recompute:  # every query is "long": scores recomputed in backward
        monkeypatch.setattr(attention, "RECOMPUTE_FROM", 4)
    batch = _batch(49152)
    ref_out, ref_grads = _out_and_grads(_llama(tiny_llama, "eager"), batch)
    model = _llama(tiny_llama, "tuneforge")
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the grouped path runs
    out, grads = _out_and_grads(model, batch)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_matches_the_encoder_with_dropout(tiny_bert):
    """BERT: one key/value head per query head, a bidirectional mask, dropout on the probabilities in
    training (the same random mask as eager draws, from the same seed)."""
    from transformers import AutoModelForSequenceClassification

    attention.register()
    outs = []
    for attn in ("eager", "tuneforge"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            tiny_bert, num_labels=2, attn_implementation=attn, attention_probs_dropout_prob=0.3
        )
        model.train()
        torch.manual_seed(1)
        batch = _batch(model.config.vocab_size, 12)
        outs.append(model(**batch).logits)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)


def test_generation_and_attention_weights_fall_back_or_match(tiny_llama):
    ref = _llama(tiny_llama, "sdpa").eval()
    model = _llama(tiny_llama, "tuneforge").eval()
    prompt = torch.tensor([[5, 17, 99, 4, 250]])
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert model.generate(prompt, **kw).tolist() == ref.generate(prompt, **kw).tolist()  # 1 query vs cache
    out = model(prompt, output_attentions=True)  # weights requested: the model's own eager attention
    assert out.attentions is not None and out.attentions[0].shape == (1, 4, 5, 5)


def test_auto_picks_it_for_cpu_training_on_short_sequences(tiny_llama):
    cpu = torch.device("cpu")
    model = _llama(tiny_llama, "sdpa")
    assert choose_attention("auto", model, 2048, cpu) is None  # long sequences: the model's default
    assert model.config._attn_implementation == "sdpa"
    assert choose_attention("auto", model, 512, cpu) == "tuneforge"
    assert model.config._attn_implementation == "tuneforge"
