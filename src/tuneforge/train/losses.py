"""Preference and RL losses as pure functions of log-probabilities and rewards.

Each function returns one loss per example (pair or row), not a mean, so a task can sum them and the
training loop divides by the examples in the optimizer step (exact gradient accumulation); ``grpo_loss``
returns a micro-batch's summed loss with its item count (sequences or tokens, by aggregation) for the same
division. ``tests/test_losses.py`` checks every one against the TRL library on the same batch.

    token_logps          logits, labels -> per-token log-probabilities of the labels and their mask
    bradley_terry_loss   reward model: -log sigmoid(r_chosen - r_rejected)
    dpo_loss             DPO (sigmoid), IPO, hinge, against a reference model
    orpo_loss            ORPO: NLL of the chosen response + odds-ratio term, no reference model
    kto_loss             KTO: unpaired desirable/undesirable completions against a reference and a KL estimate
    kto_kl_from_step     KTO: the KL estimate of a whole optimizer step from summed log-probs
    group_advantages     GRPO: rewards normalised within each group of completions of one prompt
    grpo_token_losses    GRPO: clipped policy-gradient objective with a KL penalty to the reference, per token
    grpo_loss            GRPO: the token losses aggregated as TRL's loss types (dapo, grpo, bnpo, dr_grpo)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")
GRPO_AGGREGATIONS = ("dapo", "grpo", "bnpo", "dr_grpo")  # TRL's loss_type names; dapo is TRL 1.16's default


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the loss mask, shifted so position t predicts t + 1.

    ``logits`` (B, T, V); ``labels`` (B, T) with -100 where there is no loss (prompt, padding).
    Returns ``(logps, mask)``, both (B, T - 1); logps are 0 where the mask is 0.
    """
    return target_logps(logits[:, :-1].float(), labels[:, 1:])  # (B, T-1, V) against (B, T-1)


def target_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target under the logits at the same position (no shift): ``logits`` (B, T, V),
    ``targets`` (B, T) with -100 where there is none. Returns ``(logps, mask)``, (B, T); logps 0 where masked."""
    mask = targets != -100
    safe = targets.masked_fill(~mask, 0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    logps = picked - torch.logsumexp(logits, dim=-1)  # (B, T), without materialising log_softmax
    return logps * mask, mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Summed (or per-token averaged) log-probability of the labelled tokens of each sequence: (B,)."""
    logps, mask = token_logps(logits, labels)
    total = logps.sum(-1)  # (B,)
    return total / mask.sum(-1).clamp(min=1) if average else total


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coefficient: float | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss per pair (B,): ``-log sigmoid(r_c - r_r - margin)``.

    ``center_coefficient`` adds ``c * (r_c + r_r)^2``, which keeps rewards centred on zero.
    """
    diff = chosen - rejected if margin is None else chosen - rejected - margin  # (B,)
    loss = -F.logsigmoid(diff)
    if center_coefficient:
        loss = loss + center_coefficient * (chosen + rejected) ** 2
    return loss


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family loss per pair from summed response log-probs (all (B,)).

    sigmoid  ``-log sigmoid(beta * delta)`` (DPO; with ``label_smoothing`` e, the conservative cDPO form)
    ipo      ``(delta' - 1 / (2 beta))^2`` where delta' uses per-token averaged log-ratios when the token
             counts are given (as the IPO authors and TRL do), else the summed ones
    hinge    ``max(0, 1 - beta * delta)`` (SLiC)

    with ``delta = (pi_c - ref_c) - (pi_r - ref_r)``. Returns ``(losses, chosen_rewards, rejected_rewards)``;
    the implicit rewards ``beta * (pi - ref)`` are detached.
    """
    chosen_ratio = policy_chosen - ref_chosen  # (B,)
    rejected_ratio = policy_rejected - ref_rejected  # (B,)
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * delta) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta) * label_smoothing
        )
    elif loss_type == "ipo":
        if chosen_tokens is not None and rejected_tokens is not None:
            delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        raise ValueError(f"unknown DPO loss_type '{loss_type}': choose one of {', '.join(DPO_LOSS_TYPES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO per pair: ``nll_chosen - beta * log sigmoid(log odds(chosen) - log odds(rejected))``.

    Inputs are per-token averaged response log-probs (B,) and the chosen response's mean NLL (B,).
    Returns ``(losses, log_odds_ratio)``; log_odds_ratio (B,) is detached.
    """
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))  # (B,)
    losses = chosen_nll - beta * F.logsigmoid(log_odds)
    return losses, log_odds.detach()


def kto_kl(policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point from one batch of mismatched (prompt, completion) pairs: the mean log-ratio,
    detached, at least 0. For a whole optimizer step across processes use ``kto_kl_from_step``."""
    return (policy_mismatched - ref_mismatched).mean().detach().clamp(min=0)


def kto_kl_from_step(
    policy_kl_sum: torch.Tensor, ref_kl_sum: torch.Tensor, count: torch.Tensor | int
) -> torch.Tensor:
    """KTO's reference point for an optimizer step: the mean of ``policy - ref`` over all its mismatched pairs.

    Each process sums its micro-batches' mismatched-pair log-probs (policy and reference) and counts the
    pairs; the three numbers are summed over processes (one all-reduce) and passed here. The mean is taken
    before the clamp at 0 (the mean of clamped per-batch estimates would be biased upwards), and detached.
    """
    n = float(count)
    if n < 1:
        raise ValueError("kto_kl_from_step: the step has no mismatched pairs (KTO needs batch_size >= 2)")
    return (torch.as_tensor(policy_kl_sum - ref_kl_sum, dtype=torch.float32) / n).detach().clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO per row (B,): ``w_d (1 - sigmoid(beta (ratio - kl)))`` for desirable rows and
    ``w_u (1 - sigmoid(beta (kl - ratio)))`` for undesirable ones, ``ratio = pi - ref``.

    Returns ``(losses, rewards)``; ``rewards = beta * ratio`` (detached).
    """
    ratio = policy_logps - ref_logps  # (B,)
    good = desirable.bool()
    losses = torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))),
    )
    return losses, beta * ratio.detach()


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages (N,): each reward minus its group's mean, divided by the group's std when ``scale``.

    ``rewards`` (N,) holds ``group_size`` consecutive completions per prompt.
    """
    grouped = rewards.view(-1, group_size)  # (P, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)  # unbiased std, as in GRPO and TRL
    return adv.reshape(-1)


def grpo_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    kl_beta: float,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    kl_importance_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO per token (B, T): the clipped surrogate ``-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A)`` plus
    ``kl_beta * KL``, and the per-token KL (B, T) (zeros without a reference).

    ``logps``, ``old_logps`` (sampling-time) and ``ref_logps`` are (B, T) over completion tokens;
    ``advantages`` (B,); ``epsilon_high`` None means ``epsilon``. KL is the unbiased, non-negative k3 estimate
    ``exp(ref - pi) - (ref - pi) - 1``; ``kl_importance_weight`` multiplies it by the ratio ``rho`` (1 in value
    on-policy), which adds the score-function term its gradient needs because the tokens were sampled from
    the policy (TRL's ``use_bias_correction_kl``, on by default). Positions outside the completion are not
    masked here.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - epsilon, 1 + high) * adv)  # (B, T)
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1  # (B, T)
        if kl_beta:
            per_token = per_token + kl_beta * (kl * ratio if kl_importance_weight else kl)
    return per_token, kl


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kl_beta: float,
    aggregation: str = "dapo",
    max_completion_length: int | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    kl_importance_weight: bool = True,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """GRPO loss of a micro-batch as ``(loss_sum, items, kl_mean)``, aggregated over tokens as TRL offers it.

    The per-token losses are ``grpo_token_losses``; ``mask`` (B, T) marks the completion tokens. The loss of
    the optimizer step is ``sum(loss_sum) / sum(items)`` over its micro-batches (and processes):

    dapo     (TRL's default) a token mean over the whole step: ``loss_sum`` sums the token losses,
             ``items`` counts the tokens. No length bias.
    grpo     a mean over each sequence's tokens, then over the sequences: ``loss_sum`` sums the sequence
             means, ``items`` = B. Length-biased: a short completion's tokens weigh more than a long one's.
    bnpo     a token mean over each micro-batch: ``loss_sum`` sums the token losses and ``items`` counts
             this micro-batch's tokens; the caller divides by them and counts the micro-batch as 1 item.
    dr_grpo  ``loss_sum`` sums the token losses, ``items`` = B * ``max_completion_length`` (a constant per
             sequence: no length bias, and no dependence on how many tokens the step sampled).

    ``kl_mean`` is the token mean of the KL over this micro-batch (detached; 0 without a reference).
    """
    per_token, kl = grpo_token_losses(
        logps, old_logps, ref_logps, advantages, kl_beta, epsilon, epsilon_high, kl_importance_weight
    )  # (B, T), (B, T)
    mask = mask.to(per_token.dtype)
    seq_tokens = mask.sum(-1)  # (B,)
    tokens = float(seq_tokens.sum())
    seq_sums = (per_token * mask).sum(-1)  # (B,)
    kl_mean = ((kl * mask).sum() / max(tokens, 1.0)).detach()
    if aggregation in ("dapo", "bnpo"):
        return seq_sums.sum(), tokens, kl_mean
    if aggregation == "grpo":
        return (seq_sums / seq_tokens.clamp(min=1)).sum(), float(len(seq_sums)), kl_mean
    if aggregation == "dr_grpo":
        if not max_completion_length or max_completion_length < 1:
            raise ValueError(
                "grpo_loss: aggregation 'dr_grpo' needs max_completion_length (grpo.max_new_tokens)"
            )
        return seq_sums.sum(), float(len(seq_sums) * max_completion_length), kl_mean
    raise ValueError(
        f"unknown GRPO aggregation '{aggregation}': choose one of {', '.join(GRPO_AGGREGATIONS)}"
    )
