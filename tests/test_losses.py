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
    kto_kl_from_step,
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


@pytest.fixture(scope="module")
def grpo_case(tiny_llama):
    """A TRL GRPOTrainer on the tiny model and one sampled-looking batch (B=4 completions of up to C=6 tokens)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        args = GRPOConfig(
            output_dir="/tmp/tuneforge-trl-test",
            per_device_train_batch_size=4,
            num_generations=4,
            beta=0.1,
            report_to=[],
            use_cpu=True,
            bf16=False,
            max_completion_length=8,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **kw: [0.0] * len(completions),
            args=args,
            train_dataset=Dataset.from_list([{"prompt": f"question {i}?"} for i in range(8)]),
            processing_class=tok,
        )
    trainer.current_gradient_accumulation_steps = 1
    B, P, C = 4, 5, 6
    g = torch.Generator().manual_seed(1)
    prompt_ids, completion_ids = (
        torch.randint(0, 1000, (B, P), generator=g),
        torch.randint(0, 1000, (B, C), generator=g),
    )
    completion_mask = torch.ones(B, C, dtype=torch.long)
    completion_mask[0, 4:] = 0
    completion_mask[2, 2:] = 0
    ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, P + C)
    labels = torch.cat([torch.full((B, P), -100), completion_ids], 1)
    with torch.no_grad():
        current = token_logps(model(input_ids=ids).logits, labels)[0][:, -C:]  # (B, C)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.3, -0.8]),
        "old_per_token_logps": current
        + 0.3 * torch.randn(B, C, generator=g),  # off-policy: clipping is exercised
        "ref_per_token_logps": current + 0.2 * torch.randn(B, C, generator=g),
        "num_items_in_batch": completion_mask.sum(),  # dapo: tokens of the whole (here: one-batch) step
    }
    return trainer, model, ids, labels, inputs


@pytest.mark.parametrize(
    "aggregation,kl_importance_weight,epsilon_high",
    [
        ("grpo", True, None),
        ("grpo", False, None),
        ("dapo", True, None),
        ("dapo", True, 0.28),
        ("bnpo", True, None),
        ("dr_grpo", True, None),
    ],
)
def test_grpo_loss_and_gradient_match_trl(grpo_case, aggregation, kl_importance_weight, epsilon_high):
    trainer, model, ids, labels, inputs = grpo_case
    trainer.loss_type = aggregation  # what TRL's _compute_loss reads (GRPOConfig.loss_type)
    trainer.epsilon_high = 0.2 if epsilon_high is None else epsilon_high
    trainer.args.use_bias_correction_kl = kl_importance_weight
    model.train()
    model.zero_grad()
    expected = trainer._compute_loss(model, inputs)
    expected.backward()
    trl_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    C = inputs["completion_ids"].shape[1]
    logps = token_logps(model(input_ids=ids).logits, labels)[0][:, -C:]
    loss_sum, items, kl = grpo_loss(
        logps,
        inputs["old_per_token_logps"],
        inputs["ref_per_token_logps"],
        inputs["advantages"],
        inputs["completion_mask"],
        kl_beta=0.1,
        aggregation=aggregation,
        max_completion_length=8,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        kl_importance_weight=kl_importance_weight,
    )
    loss = loss_sum / items  # one micro-batch, one process: the step's loss
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip((p.grad for p in model.parameters()), trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert kl.dim() == 0 and float(kl) > 0 and not kl.requires_grad


def _reference_step_loss(micro, aggregation, beta, eps, eps_high, max_len):
    """The step loss of a list of micro-batches, token by token in plain Python (the definitions in TRL's docs)."""
    seq_means, token_terms, micro_means, n_seqs = [], [], [], 0
    for lp, old, ref, adv, mask in micro:
        terms_here = []
        for i in range(lp.shape[0]):
            n_seqs += 1
            terms = []
            for t in range(lp.shape[1]):
                if not mask[i, t]:
                    continue
                ratio = torch.exp(lp[i, t] - old[i, t])
                clipped = torch.clamp(ratio, 1 - eps, 1 + eps_high)
                d = ref[i, t] - lp[i, t]
                terms.append(
                    -torch.min(ratio * adv[i], clipped * adv[i]) + beta * (torch.exp(d) - d - 1) * ratio
                )
            seq_means.append(sum(terms) / max(len(terms), 1) if terms else torch.zeros(()))
            terms_here += terms
        token_terms += terms_here
        micro_means.append(sum(terms_here) / len(terms_here))
    if aggregation == "grpo":
        return sum(seq_means) / n_seqs
    if aggregation == "dapo":
        return sum(token_terms) / len(token_terms)
    if aggregation == "bnpo":
        return sum(micro_means) / len(micro_means)
    return sum(token_terms) / (n_seqs * max_len)  # dr_grpo


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "bnpo", "dr_grpo"])
def test_grpo_aggregation_over_a_step_matches_a_plain_reference(aggregation):
    """Micro-batches of different sizes and random masks: sum(loss_sum) / sum(items) is the step's aggregate,
    in value and in gradient (bnpo: each micro-batch's token mean counts as one item, as the task returns it)."""
    g = torch.Generator().manual_seed(3)
    micro = []
    for b in (3, 1, 4):  # unequal micro-batches, as the token cap makes them
        T = 5
        lp = (-torch.rand(b, T, generator=g) * 3).requires_grad_()
        old, ref = (
            lp.detach() + 0.2 * torch.randn(b, T, generator=g),
            lp.detach() + 0.3 * torch.randn(b, T, generator=g),
        )
        mask = (torch.rand(b, T, generator=g) < 0.7).long()
        mask[:, 0] = 1  # every completion has at least one token
        micro.append((lp, old, ref, torch.randn(b, generator=g), mask))
    args = {"beta": 0.05, "eps": 0.2, "eps_high": 0.28, "max_len": 5}
    expected = _reference_step_loss(micro, aggregation, **args)
    expected_grads = torch.autograd.grad(expected, [m[0] for m in micro])
    total, items = torch.zeros(()), 0.0
    for lp, old, ref, adv, mask in micro:
        loss_sum, n, _ = grpo_loss(
            lp,
            old,
            ref,
            adv,
            mask,
            kl_beta=0.05,
            aggregation=aggregation,
            max_completion_length=5,
            epsilon_high=0.28,
        )
        if aggregation == "bnpo":
            loss_sum, n = loss_sum / n, 1.0
        total, items = total + loss_sum, items + n
    loss = total / items
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for ours, ref_grad in zip(torch.autograd.grad(loss, [m[0] for m in micro]), expected_grads):
        torch.testing.assert_close(ours, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_grpo_sequence_mean_is_length_biased_and_token_aggregations_are_not(advantage):
    """Two completions with the same advantage, 1 and 3 tokens long, on-policy, no KL. Each token's gradient is
    -A times its weight: grpo gives the short completion's token 1/2 and each long one's 1/6 (a short correct
    answer is pushed 3x harder per token, a long wrong one punished 3x less); dapo gives every token 1/4, and
    dr_grpo 1/(2 * 3)."""
    lp = torch.full((2, 3), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([advantage, advantage])
    weights = {}
    for aggregation in ("grpo", "dapo", "dr_grpo"):
        loss_sum, items, _ = grpo_loss(
            lp, lp.detach(), None, adv, mask, 0.0, aggregation, max_completion_length=3
        )
        (grad,) = torch.autograd.grad(loss_sum / items, lp)
        weights[aggregation] = (grad / -advantage)[mask.bool()].tolist()  # short token, then the long ones
    assert weights["grpo"] == pytest.approx([1 / 2, 1 / 6, 1 / 6, 1 / 6])
    assert weights["dapo"] == pytest.approx([1 / 4] * 4)
    assert weights["dr_grpo"] == pytest.approx([1 / 6] * 4)


def test_grpo_loss_refuses_unknown_aggregation_and_dr_grpo_without_length():
    x, mask, adv = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2)
    with pytest.raises(ValueError, match="dapo, grpo, bnpo, dr_grpo"):
        grpo_loss(x, x, None, adv, mask, 0.0, aggregation="token_mean")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(x, x, None, adv, mask, 0.0, aggregation="dr_grpo")


def test_kto_kl_over_the_whole_step_across_processes():
    """Sums and counts from every micro-batch of every process give the step's KL: the same as one batch of all
    the mismatched pairs, and not the mean of per-micro-batch estimates (those are clamped one by one)."""
    policy = torch.tensor([-3.0, -1.0, -2.5, -2.0, -4.0, -1.5], requires_grad=True)
    ref = torch.tensor([-1.0, -1.5, -2.0, -2.2, -3.0, -2.5])
    parts = [(0, 1), (1, 3), (3, 6)]  # process 0: micro-batches of 1 and 2 pairs; process 1: one of 3
    sums = torch.stack(
        [torch.stack([policy[a:b].sum(), ref[a:b].sum(), torch.tensor(float(b - a))]) for a, b in parts]
    )
    step = sums.sum(0)  # what one all-reduce (sum) of each process's three numbers gives
    kl = kto_kl_from_step(*step)
    torch.testing.assert_close(kl, kto_kl(policy, ref))
    assert not kl.requires_grad
    per_batch = torch.stack([kto_kl(policy[a:b], ref[a:b]) for a, b in parts]).mean()
    assert float(per_batch) > float(kl)  # clamping each batch's estimate at 0 biases it upwards
    assert float(kto_kl_from_step(torch.tensor(-5.0), torch.tensor(-1.0), 2)) == 0.0  # policy below ref: 0
    # the reduced totals as one tensor (sum of policy - reference, pairs), as a task may gather them
    totals = torch.tensor([3.0, 2.0])
    assert float(kto_kl_from_step(totals[0], 0.0, totals[1])) == 1.5
    with pytest.raises(ValueError, match="batch_size >= 2"):
        kto_kl_from_step(torch.tensor(0.0), torch.tensor(0.0), 0)
