"""The merged sampling copy of a policy (tuneforge.models.rollout): LoRA folded into plain weights."""

import pytest
import torch

from tuneforge.models.engine import Engine, SamplingParams
from tuneforge.models.rollout import MergedCopy, why_not


def policy(path: str, **lora):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)
    model = get_peft_model(model, config)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # as after some training: B starts at zero
            torch.nn.init.normal_(p, std=0.05)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def nudge(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)


def test_the_merged_copy_gives_the_policys_logits_and_follows_its_training(tiny_llama):
    model = policy(tiny_llama).eval()
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    copy = MergedCopy(model, torch.float32)
    assert not any(type(m).__name__.startswith("Lora") for m in copy.model.modules())  # plain layers
    assert torch.allclose(logits(copy.model, ids), logits(model, ids), atol=1e-4)
    nudge(model)  # a training step changes the adapters
    assert not torch.allclose(logits(copy.model, ids), logits(model, ids), atol=1e-3)
    assert torch.allclose(logits(copy.refresh(), ids), logits(model, ids), atol=1e-4)
    # only the adapted layers are re-folded, not the embeddings or norms
    assert 0 < copy.live_weights < sum(1 for _ in copy.model.modules())
    half = MergedCopy(model, torch.bfloat16).model
    assert half.dtype == torch.bfloat16
    assert (logits(half, ids) - logits(model, ids)).abs().max() < 0.1


def test_a_full_fine_tune_is_copied_and_greedy_answers_agree(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    copy = MergedCopy(model, torch.float32)
    nudge(model)
    copy.refresh()
    params = SamplingParams(max_tokens=8, temperature=0)
    prompts = [[5, 9, 14, 3], [7, 7, 30]]
    mine = [c[0].token_ids for c in Engine(copy.model, max_batch=4).generate(prompts, params)]
    theirs = [c[0].token_ids for c in Engine(model, max_batch=4).generate(prompts, params)]
    assert mine == theirs


@pytest.mark.parametrize(("extra", "why"), [({"use_dora": True}, "DoRA"), ({"modules_to_save": None}, None)])
def test_what_cannot_be_merged_is_named(tiny_llama, extra, why):
    model = policy(tiny_llama, **extra)
    reason = why_not(model)
    assert (reason is None) if why is None else (why in reason)
    if why:
        with pytest.raises(ValueError, match=why):
            MergedCopy(model, torch.float32)
