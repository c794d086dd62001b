"""Preference and RL losses against the TRL library, on the same batch (TRL is a test-only dependency).

TRL computes its losses inside its trainers, so each test builds a real TRL trainer on the tiny model, takes
a batch from TRL's own data pipeline (or feeds TRL the batch), and compares TRL's loss with ours computed from
the same tensors with ``tuneforge.train.losses``.
"""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch

from tuneforge.train.losses import (
    bradley_terry_loss,
    dpo_loss,
    group_advantages,
    grpo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    sequence_logps,
    token_logps,
)

trl = pytest.importorskip(
    "trl", reason="TRL is the reference for these tests: pip install --no-deps -r requirements-test.txt"
)

PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"question {i}?"}],
        "chosen": [{"role": "assistant", "content": f"answer {i} is a good one."}],
        "rejected": [{"role": "assistant", "content": "no " * (i % 3 + 1)}],
    }
    for i in range(8)
]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _models(path: str, noise: float = 0.03):
    """A policy and a different reference (perturbed weights), so log-ratios are not zero."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(path)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * noise)
    return policy.eval(), ref.eval()


def _logps(model, ids, attention, completion_mask, average=False):
    labels = ids.masked_fill(completion_mask == 0, -100)
    return sequence_logps(model(input_ids=ids, attention_mask=attention).logits, labels, average)


def test_token_logps_match_trl_reference():
    from trl.experimental.orpo import ORPOTrainer
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)  # (B, T, V)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[:, :3] = -100
    labels[1, 6] = -100
    for average in (False, True):
        ref = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=average)
        torch.testing.assert_close(sequence_logps(logits, labels, average), ref)
    logps, mask = token_logps(logits, labels)
    full = selective_log_softmax(logits[:, :-1], labels[:, 1:].clamp(min=0))
    torch.testing.assert_close(logps, full * mask)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_matches_trl(tiny_llama, loss_type):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    policy, ref = _models(tiny_llama)
    args = DPOConfig(
        output_dir="/tmp/tuneforge-trl-test",
        per_device_train_batch_size=4,
        beta=0.3,
        loss_type=[loss_type],
        report_to=[],
        use_cpu=True,
        bf16=False,
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok
    )
    batch = next(
        iter(trainer.get_train_dataloader())
    )  # input_ids (2B, T): B chosen rows, then B rejected rows
    with torch.no_grad():
        expected = trainer._compute_loss(trainer.model, batch, False)
        ids, att, cm = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        pc, pr = _logps(policy, ids, att, cm).chunk(2)
        rc, rr = _logps(ref, ids, att, cm).chunk(2)
        ct, rt = cm.sum(1).chunk(2)
        losses, chosen_r, rejected_r = dpo_loss(
            pc, pr, rc, rr, beta=0.3, loss_type=loss_type, chosen_tokens=ct, rejected_tokens=rt
        )
    torch.testing.assert_close(losses.mean(), expected, rtol=1e-5, atol=1e-6)
    assert abs(float((chosen_r - rejected_r).mean())) > 1e-4  # a real (non-zero) margin was compared


def test_dpo_label_smoothing_is_conservative_dpo():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    beta, eps = 0.2, 0.1
    logits = beta * ((pc - rc) - (pr - rr))
    expected = -(1 - eps) * torch.nn.functional.logsigmoid(logits) - eps * torch.nn.functional.logsigmoid(
        -logits
    )
    torch.testing.assert_close(dpo_loss(pc, pr, rc, rr, beta, "sigmoid", eps)[0], expected)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, rc, rr, beta, "nope")


def test_kto_loss_matches_trl(tiny_llama):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ref, policy = _models(tiny_llama)  # this way round the KL estimate is positive (it is clamped at 0)
    rows = [
        {"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
        for i, p in enumerate(PAIRS)
    ]
    args = KTOConfig(
        output_dir="/tmp/tuneforge-trl-test",
        per_device_train_batch_size=4,
        beta=0.3,
        desirable_weight=1.0,
        undesirable_weight=1.3,
        report_to=[],
        use_cpu=True,
        bf16=False,
        precompute_ref_log_probs=False,
    )
    trainer = KTOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    batch = next(iter(trainer.get_train_dataloader()))  # KL_*: the same completions paired with other prompts
    with torch.no_grad():
        expected = trainer._compute_loss(trainer.model, batch, False)
        kl_args = batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]
        kl = kto_kl(_logps(policy, *kl_args), _logps(ref, *kl_args))
        main = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        losses, _ = kto_loss(
            _logps(policy, *main), _logps(ref, *main), batch["label"], kl, beta=0.3, undesirable_weight=1.3
        )
    assert float(kl) > 0
    torch.testing.assert_close(losses.mean(), expected, rtol=1e-5, atol=1e-6)


def test_orpo_odds_ratio_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    chosen = torch.tensor(
        [-0.5, -2.0, -0.01, -3.0, -0.69, -0.70]
    )  # per-token averaged log-probs, both sides of -ln 2
    rejected = torch.tensor([-1.0, -0.3, -0.02, -5.0, -0.70, -0.69])
    nll = torch.tensor([0.5, 0.1, 0.3, 0.2, 0.4, 0.6])
    fake = types.SimpleNamespace(beta=0.2, accelerator=types.SimpleNamespace(device="cpu"))
    trl_terms, *_ = ORPOTrainer.odds_ratio_loss(fake, chosen, rejected)
    losses, log_odds = orpo_loss(chosen, rejected, nll, beta=0.2)
    torch.testing.assert_close(
        losses.mean(), nll.mean() - trl_terms.mean()
    )  # TRL: loss = nll - mean(beta * ratio)
    assert torch.isfinite(log_odds).all()


def test_bradley_terry_matches_trl_reward_trainer(tiny_llama):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        output_dir="/tmp/tuneforge-trl-test",
        per_device_train_batch_size=4,
        center_rewards_coefficient=0.01,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tok
    )
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        expected = trainer.compute_loss(model, dict(batch))
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(
            -1
        )  # (2B,)
        chosen, rejected = rewards.chunk(2)
        ours = bradley_terry_loss(chosen, rejected, center_coefficient=0.01).mean()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_group_advantages_match_trl_formula():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor(
        [1.0, 0.0, 2.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    )  # two groups of 4; the second has no spread
    mean = rewards.view(-1, 4).mean(1).repeat_interleave(4)
    std = nanstd(rewards.view(-1, 4), dim=1).repeat_interleave(4)
    torch.testing.assert_close(group_advantages(rewards, 4), (rewards - mean) / (std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False), rewards - mean)
    assert group_advantages(rewards, 4)[4:].abs().max() == 0  # equal rewards: no signal


@pytest.mark.parametrize("kl_importance_weight", [True, False])
def test_grpo_loss_and_gradient_match_trl(tiny_llama, kl_importance_weight):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    args = GRPOConfig(
        output_dir="/tmp/tuneforge-trl-test",
        per_device_train_batch_size=4,
        num_generations=4,
        beta=0.1,
        epsilon=0.2,
        loss_type="grpo",
        use_bias_correction_kl=kl_importance_weight,
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_completion_length=8,
    )
    prompts = Dataset.from_list([{"prompt": f"question {i}?"} for i in range(8)])
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=prompts,
        processing_class=tok,
    )
    trainer.current_gradient_accumulation_steps = 1
    B, P, C = 4, 5, 6
    g = torch.Generator().manual_seed(1)
    prompt_ids, completion_ids = (
        torch.randint(0, 1000, (B, P), generator=g),
        torch.randint(0, 1000, (B, C), generator=g),
    )
    prompt_mask, completion_mask = torch.ones(B, P, dtype=torch.long), torch.ones(B, C, dtype=torch.long)
    completion_mask[0, 4:] = 0
    completion_mask[2, 2:] = 0
    advantages = torch.tensor([1.0, -0.5, 0.3, -0.8])
    ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, P + C)
    labels = torch.cat([torch.full((B, P), -100), completion_ids], 1)
    with torch.no_grad():
        current = token_logps(model(input_ids=ids).logits, labels)[0][:, -C:]  # (B, C)
    old = current + 0.3 * torch.randn(B, C, generator=g)  # off-policy, so clipping is exercised
    ref = current + 0.2 * torch.randn(B, C, generator=g)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
    }
    model.train()
    expected = trainer._compute_loss(model, inputs)
    expected.backward()
    trl_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logps = token_logps(model(input_ids=ids).logits, labels)[0][:, -C:]
    losses, kl = grpo_loss(
        logps, old, ref, advantages, completion_mask, kl_beta=0.1, kl_importance_weight=kl_importance_weight
    )
    losses.mean().backward()
    torch.testing.assert_close(losses.mean(), expected, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip((p.grad for p in model.parameters()), trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(kl).all() and (kl >= 0).all()
