"""Group-relative policy optimisation (GRPO): online RL from reward functions, with a KL penalty to the reference.

Each optimizer step takes ``training.batch_size`` prompts (times ``grad_accum``), samples ``grpo.group_size``
completions for each with the current policy, scores them with ``grpo.rewards`` (``tuneforge.tasks.rewards``),
turns the rewards into advantages relative to the other completions of the same prompt, and takes one
policy-gradient step on ``-A * log pi`` plus ``grpo.kl_beta`` times the KL to the reference model (the
adapter switched off, or a frozen copy for full fine-tuning). One update per sampled batch, so the policy
ratio is 1 and the PPO clip never binds (as in TRL's default). It runs in the same training loop as every
task: the sampling happens inside ``loss``.

Data: prompts from any chat format (the conversation up to its last answer), preference or KTO rows (their
prompt), or a file with just a ``prompt`` column. Evaluation: mean reward of greedy answers to held-out
prompts, tuned beside the base model.
"""

from __future__ import annotations

import logging
import time

import torch

from tuneforge.data.bundled import resolve
from tuneforge.data.chat import render_prompt
from tuneforge.data.formats import SHAPES, Example, _messages, detect_format, to_examples
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.models.attention import custom_mask
from tuneforge.models.engine import Engine, SamplingParams, supports
from tuneforge.models.generate import generate, stop_ids
from tuneforge.models.rollout import MergedCopy, why_not
from tuneforge.tasks.base import Metric, load_splits
from tuneforge.tasks.lm import LMTask, prompt_text
from tuneforge.tasks.pairs import Running, pad, row_cost
from tuneforge.tasks.rewards import Reward, load_rewards
from tuneforge.train.losses import group_advantages, grpo_loss, target_logps, token_logps
from tuneforge.utils import bf16_native

log = logging.getLogger(__name__)


def read_prompts(spec: str, d) -> tuple[list[Example], str]:
    """Prompts (as conversations) and, where the data has one, a reference answer in ``Example.chosen``."""
    table, hint = resolve(spec)
    fmt = d.format if d.format != "auto" else (hint or "auto")
    if fmt == "auto" and "prompt" in table.columns:
        try:
            fmt = detect_format(table, d.text_column, d.label_column)
        except DataError:
            fmt = "prompt"
    if fmt == "prompt":  # just prompts: {"prompt": "..."} or {"prompt": [{"role": "user", ...}]}
        return [
            Example(messages=_messages(r["prompt"], table.where(i), "prompt"), source=table.where(i))
            for i, r in enumerate(table.rows)
        ], fmt
    examples, fmt = to_examples(table, fmt, d.text_column, d.label_column)
    out = []
    for e in examples:
        if e.chosen is not None:  # preference / kto: their prompt, the chosen answer as reference
            out.append(
                Example(messages=e.messages, chosen=e.chosen if e.label != "false" else None, source=e.source)
            )
        elif e.messages:
            last = max(
                (i for i, m in enumerate(e.messages) if m["role"] == "assistant"), default=len(e.messages)
            )
            ref = e.messages[last : last + 1] if last < len(e.messages) else None
            if last:
                out.append(Example(messages=e.messages[:last], chosen=ref, source=e.source))
        elif e.text:
            out.append(Example(messages=[{"role": "user", "content": e.text}], source=e.source))
    if not out:
        raise DataError(
            f'{table.path}: found no prompts for task \'grpo\'. Give {{"prompt": "..."}} rows, or any chat '
            f"or preference format.\n{SHAPES}"
        )
    return out, fmt


def trim(roll: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows taken out of a bigger rollout keep only their own width: prompt columns that are padding in every
    row (left) and completion columns past every row's end (right) go."""
    attention, mask = roll["attention_mask"], roll["completion_mask"]
    width = mask.shape[1]
    prompt = attention[:, : attention.shape[1] - width]
    lead = int((prompt.sum(0) == 0).long().cumprod(0).sum())
    keep = int(mask.sum(0).nonzero().max()) + 1 if mask.any() else 1
    drop = width - keep
    out = {}
    for k, v in roll.items():
        if k in ("input_ids", "attention_mask"):
            v = v[:, lead : v.shape[1] - drop]
        elif k in ("completion", "completion_mask"):
            v = v[:, :keep]
        out[k] = v
    return out


class GRPOTask(LMTask):
    name = "grpo"
    kind = "policy"
    result = "policy_reward"
    metrics = (
        Metric("reward", True, "mean reward of greedy answers to held-out prompts"),
        Metric("words", False, "mean words per answer"),
    )
    sections = ("sft", "grpo")
    samples_during_training = True
    data_format = "messages"

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        self.g = cfg.grpo
        self.user_split = True
        if splits is None:
            read = lambda spec: read_prompts(spec, cfg.data)  # noqa: E731
            splits, _, self.user_split = load_splits(cfg.data, cfg.training.seed, read)
        self.splits = splits
        self.keeps_frozen_copy = self.g.kl_beta > 0  # the KL penalty needs the reference at every step
        self.setup_lm(load_model)
        self.rewards: list[Reward] = load_rewards(self.g.rewards, self.g.reward_weights)
        self.prompt_ids = {name: [self.encode_prompt(e) for e in exs] for name, exs in splits.items()}
        # what a step computes for a prompt: group_size sequences of prompt + completion (at most max_new_tokens);
        # the token cap, the memory estimate and the token counts see this, not the prompt alone
        g = self.g
        if g.share_prompts:  # the prompt once, then the group's completions (shared_prompt_logps)
            self.lengths = [len(p) + g.group_size * g.max_new_tokens for p in self.prompt_ids["train"]]
        else:
            self.lengths = [g.group_size * (len(p) + g.max_new_tokens) for p in self.prompt_ids["train"]]
        # completions per prompt; the loop takes the step's exact loss items from begin_step instead
        self.counts = [g.group_size] * len(self.lengths)
        self.running = Running()
        self._rollouts: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
        self._copy: MergedCopy | None = None  # grpo.sampler's merged copy, made at the first rollout

    # ---- data
    def read_file(self, spec: str) -> list[Example]:
        return read_prompts(spec, self.cfg.data)[0]

    def encode_prompt(self, e: Example) -> list[int]:
        """The prompt rendered for generation; a too-long one keeps its end (where the question is)."""
        ids = self.tokenizer(render_prompt(self.tokenizer, e.messages), add_special_tokens=False)["input_ids"]
        return ids[-self.cfg.data.max_length :]

    def data_summary(self) -> dict:
        return {
            name: {"prompts": len(p), "truncated": sum(len(x) >= self.cfg.data.max_length for x in p)}
            for name, p in self.prompt_ids.items()
        }

    # ---- the step: sample every micro-batch's completions first, then train on them
    @torch.no_grad()
    def begin_step(self, model, micro: list[list[int]], reduce) -> float:
        """Sample ``group_size`` completions for every prompt of this process's micro-batches (all of them in
        one batch on the engine: a decode step costs about the same for 4 rows as for 16), score them and
        compute their advantages; returns this process's loss items for the step (``grpo.loss_aggregation``)."""
        raw = getattr(model, "module", model)  # DDP wraps the model; generate on the inner one
        was_training = raw.training
        raw.eval()
        try:
            roll = self._sample(raw, [i for idx in micro for i in idx])
        finally:
            raw.train(was_training)
        self._rollouts, items, row = {}, 0.0, 0
        for idx in micro:
            rows = slice(row, row + len(idx) * self.g.group_size)
            part = trim({k: v[rows] for k, v in roll.items()})
            part["items"] = torch.tensor(self.loss_items(part["completion_mask"]))
            self._rollouts[tuple(idx)] = part
            items += float(part["items"])
            row = rows.stop
        return items

    def loss_items(self, mask: torch.Tensor) -> float:
        """What a micro-batch's loss is divided by, summed over the step (``grpo.loss_aggregation``)."""
        g, n = self.g, mask.shape[0]
        return {"grpo": n, "dapo": int(mask.sum()), "bnpo": 1, "dr_grpo": n * g.max_new_tokens}[
            g.loss_aggregation
        ]

    def _sample(self, raw, indices: list[int]) -> dict[str, torch.Tensor]:
        g, device = self.g, next(raw.parameters()).device
        prompt_ids, prompt_mask = pad(
            [self.prompt_ids["train"][i] for i in indices], self.tokenizer.pad_token_id, left=True
        )  # (B, P), left-padded
        prompt_ids = prompt_ids.repeat_interleave(g.group_size, 0).to(device)  # (N, P), N = B * G
        prompt_mask = prompt_mask.repeat_interleave(g.group_size, 0).to(device)
        completion = self.rollout(raw, indices, prompt_ids, prompt_mask)  # (N, C)
        mask, stopped = self.completion_mask(completion)  # (N, C), (N,)
        texts = [
            t.strip()
            for t in self.tokenizer.batch_decode(
                completion.masked_fill(mask == 0, self.tokenizer.pad_token_id), skip_special_tokens=True
            )
        ]
        rows = [self.splits["train"][i] for i in indices for _ in range(g.group_size)]
        rewards, each = self.score(
            [prompt_text(e.messages) for e in rows],
            texts,
            [e.chosen[-1]["content"] if e.chosen else None for e in rows],
        )
        r = self.running
        r.add("reward", rewards)
        r.add("reward_std", rewards.view(-1, g.group_size).std(1))
        for name, values in each.items():
            if len(each) > 1:
                r.add(f"reward/{name}", values)
        r.add("completion_tokens", mask.sum(1).float())
        r.add("stopped", stopped.float())  # fraction of completions that ended before max_new_tokens
        return {
            "input_ids": torch.cat([prompt_ids, completion], 1).cpu(),  # (N, P + C)
            "attention_mask": torch.cat([prompt_mask, mask], 1).cpu(),
            "completion": completion.cpu(),
            "completion_mask": mask.cpu(),
            "advantages": group_advantages(rewards, g.group_size, g.scale_rewards),  # (N,)
        }

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The sampled sequences of these prompts (``begin_step`` must have run for the step)."""
        roll = self._rollouts.get(tuple(indices))
        if roll is None:
            raise RuntimeError("GRPO: begin_step() samples the step's completions before its micro-batches")
        return roll

    # ---- sampling and scoring
    def rollout(
        self, raw, indices: list[int], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
    ) -> torch.Tensor:
        """``group_size`` sampled completions of each prompt, (N, C) right-padded with the pad token, on the
        generation engine (continuous batching; seeds drawn from torch's generator, so runs reproduce);
        ``model.generate`` for a model the engine cannot run (prefix/prompt tuning)."""
        g, pad_id = self.g, self.tokenizer.pad_token_id
        if supports(raw) is not None:
            out = raw.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.sampling_config()
            )
            return out[:, prompt_ids.shape[1] :]
        params = SamplingParams(
            max_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            stop_token_ids=stop_ids(self.tokenizer),
            n=g.group_size,
        )
        prompts = [self.prompt_ids["train"][i] for i in indices]
        sampler = self.sampling_model(raw)
        engine = Engine(sampler, max_batch=len(prompts) * g.group_size)  # no tokenizer: rewards decode tokens
        rows = [c.token_ids for group in engine.generate(prompts, params) for c in group]
        width = max(len(r) for r in rows)
        completion = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            completion[i, : len(r)] = torch.tensor(r)
        return completion.to(prompt_ids.device)

    def sampling_model(self, raw):
        """What this step's rollout samples from (``grpo.sampler``): the policy itself, or its merged copy
        (``tuneforge.models.rollout``) refreshed to the policy's current weights."""
        choice = self.g.sampler
        if choice == "policy":
            return raw
        if self._copy is None or self._copy.policy is not raw:
            why = why_not(raw)
            if why:
                if choice == "auto":
                    return raw
                raise TuneforgeError(
                    f"grpo.sampler={choice}: no merged copy of a model with {why}; use grpo.sampler=policy."
                )
            device = next(raw.parameters()).device
            bf16 = choice == "merged-bf16" or (choice == "auto" and bf16_native(device.type == "cuda"))
            dtype = torch.bfloat16 if bf16 else raw.get_input_embeddings().weight.dtype
            self._copy = MergedCopy(raw, dtype)
        return self._copy.refresh()

    def end_training(self) -> None:
        super().end_training()
        self._copy = None  # the merged sampling copy: the final evaluation samples from the saved model

    def sampling_config(self):
        from transformers import GenerationConfig

        g = self.g
        return GenerationConfig(
            do_sample=True,
            temperature=g.temperature,
            top_p=g.top_p,
            top_k=0,
            max_new_tokens=g.max_new_tokens,
            eos_token_id=stop_ids(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def completion_mask(self, completion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1 for each completion token up to and including the first stop token (N, C); whether one came (N,)."""
        stops = torch.isin(
            completion, torch.tensor(stop_ids(self.tokenizer), device=completion.device)
        )  # (N, C)
        width = completion.shape[1]
        first = torch.where(
            stops.any(1), stops.float().argmax(1), torch.full_like(stops[:, 0], width, dtype=torch.long)
        )
        return (torch.arange(width, device=completion.device)[None, :] <= first[:, None]).long(), stops.any(1)

    def score(
        self, prompts: list[str], completions: list[str], references: list[str | None]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of every reward function, and each function's values: (N,), {name: (N,)}."""
        each = {
            r.name: torch.tensor(r(prompts, completions, references), dtype=torch.float32)
            for r in self.rewards
        }
        total = sum(r.weight * each[r.name] for r in self.rewards)
        return total, each

    def completion_logps(
        self, model, ids: torch.Tensor, attention: torch.Tensor, completion: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-token log-probs of the completion tokens under ``model``, at the sampling temperature: (N, C).

        The ``group_size`` completions of a prompt share it, so each group runs as one sequence, the prompt
        once and its completions after it, each seeing the prompt and itself (:meth:`shared_prompt_logps`): a
        step computes ``B * P + N * C`` tokens instead of ``N * (P + C)``, about half on GRPO's usual shapes.
        A model that cannot take that path (prompt-learning adapters, sliding-window layers, an attention
        kernel without custom masks) runs the whole sequences."""
        if self.shares_prompts(model, ids, completion):
            per_row = self.completions_per_row(model, ids.shape[1] - completion.shape[1], completion.shape[1])
            logps = (
                None
                if per_row == 1
                else self.shared_prompt_logps(model, ids, attention, completion, mask, per_row)
            )
            if logps is not None:
                return logps
        width = completion.shape[1]
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions as generate saw them
        logits = model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids,
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, -(width + 1) :]  # (N, C+1, V)
        labels = torch.cat(
            [torch.full_like(completion[:, :1], -100), completion.masked_fill(mask == 0, -100)], 1
        )
        return token_logps(logits / self.g.temperature, labels)[0]  # (N, C)

    def shares_prompts(self, model, ids: torch.Tensor, completion: torch.Tensor) -> bool:
        """Whether the prompt-once path applies: groups of identical prompts, a model it is exact for."""
        G = self.g.group_size
        if not self.g.share_prompts or G < 2 or ids.shape[0] % G or completion.shape[1] < 1:
            return False
        if supports(getattr(model, "module", model)) is not None:
            return False  # prompt learning (virtual tokens before the prompt) or sliding-window layers
        prompts = ids[:, : ids.shape[1] - completion.shape[1]].view(-1, G, ids.shape[1] - completion.shape[1])
        return bool((prompts == prompts[:, :1]).all())

    def completions_per_row(self, model, prompt_len: int, completion_len: int) -> int:
        """How many of a group's completions share a row behind one copy of the prompt: the divisor k of
        ``group_size`` that computes least, a row of width ``W = P + k * C`` costing its tokens plus
        ``attention_share * W**2`` for attention (every query against every key, masked or not). The whole
        group in one row on GRPO's usual shapes; fewer for long completions, where a row's attention would
        outgrow the prompt it saves (1: every completion in its own row)."""
        share, G = self.cost_model(model), self.g.group_size
        cost = lambda k: row_cost(prompt_len + k * completion_len, share) / k  # noqa: E731 (per completion)
        return min((k for k in range(1, G + 1) if G % k == 0), key=lambda k: (cost(k), -k))

    def shared_prompt_logps(
        self,
        model,
        ids: torch.Tensor,
        attention: torch.Tensor,
        completion: torch.Tensor,
        mask: torch.Tensor,
        per_row: int | None = None,
    ) -> torch.Tensor | None:
        """:meth:`completion_logps` with each group as one sequence, ``prompt + completion 1 + ... +
        completion G`` (or ``per_row`` completions a row, a divisor of ``group_size``): (N, C), or None when
        the model's attention takes no custom mask (flash, flex).

        Each completion's positions continue from the prompt's, as in its own row, and a (B, W, W) mask lets
        it see the prompt and itself, never another completion, so every token's hidden state is the one its
        own row gives it. One plain forward (no cache), so compiled blocks, gradient checkpointing and DDP
        take it as they take any batch."""
        G, C = per_row or self.g.group_size, completion.shape[1]  # completions a row
        N, P = ids.shape[0], ids.shape[1] - C
        B, device = N // G, ids.device
        prompt_att = attention[::G, :P]  # (B, P), left-padded
        valid = torch.cat([prompt_att, mask.reshape(B, G * C)], 1).bool()  # (B, W)
        width = P + G * C
        branch = torch.cat(  # 0 for the prompt, j for the j-th completion
            [torch.zeros(P, dtype=torch.long), torch.arange(1, G + 1).repeat_interleave(C)]
        ).to(device)
        col = torch.arange(width, device=device)
        rule = (col[None, :] <= col[:, None]) & (
            (branch[None, :] == 0) | (branch[None, :] == branch[:, None])
        )
        allowed = (rule[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
        attention_mask = custom_mask(model, allowed)  # a padding position sees itself only
        if attention_mask is None:
            return None
        positions = torch.cat(
            [
                (prompt_att.cumsum(-1) - 1).clamp(min=0),
                prompt_att.sum(-1, keepdim=True) + torch.arange(C, device=device).repeat(G),
            ],
            1,
        )  # (B, W)
        t = torch.arange(C, device=device)
        predictors = (
            torch.where(  # completion token t is predicted by its own t - 1, the first by the prompt's end
                t == 0, P - 1, P + torch.arange(G, device=device)[:, None] * C + t - 1
            ).reshape(-1)
        )  # (G * C,)
        logits = model(
            input_ids=torch.cat([ids[::G, :P], completion.reshape(B, G * C)], 1),
            attention_mask=attention_mask,
            position_ids=positions,
            logits_to_keep=predictors,
            use_cache=False,
        ).logits  # (B, G * C, V)
        logits = logits.reshape(N, C, -1).float()
        return target_logps(logits / self.g.temperature, completion.masked_fill(mask == 0, -100))[0]  # (N, C)

    def loss(self, model, batch) -> tuple[torch.Tensor, float]:
        g = self.g
        ids, attention = batch["input_ids"], batch["attention_mask"]
        completion, mask = batch["completion"], batch["completion_mask"]
        logps = self.completion_logps(model, ids, attention, completion, mask)  # (N, C)
        ref = None
        if g.kl_beta > 0:
            with torch.no_grad(), self.reference(model) as ref_model:
                ref = self.completion_logps(ref_model, ids, attention, completion, mask)
        loss_sum, items, kl = grpo_loss(
            logps,
            logps.detach(),  # one update per sample: the policy ratio is 1 (TRL's default num_iterations=1)
            ref,
            batch["advantages"].to(logps.device),
            mask,
            kl_beta=g.kl_beta,
            aggregation=g.loss_aggregation,
            max_completion_length=g.max_new_tokens,
        )
        if ref is not None:
            self.running.add("kl", kl)
        if g.loss_aggregation == "bnpo":  # a token mean per micro-batch: one item each
            return loss_sum / max(float(items), 1.0), 1.0
        return loss_sum, float(items)

    def pop_train_metrics(self) -> dict[str, float]:
        return self.running.pop()

    # ---- evaluation
    def answers(self, model, split: str, limit: int | None = None) -> tuple[list[Example], list[str]]:
        examples = (self.splits.get(split) or [])[:limit]
        if not examples:
            return [], []
        return examples, generate(
            model,
            self.tokenizer,
            [e.messages for e in examples],
            max_new_tokens=self.g.max_new_tokens,
            temperature=0.0,
            batch_size=self.cfg.eval.batch_size,
        )

    def reward_metrics(self, examples: list[Example], answers: list[str]) -> dict[str, float]:
        total, each = self.score(
            [prompt_text(e.messages) for e in examples],
            answers,
            [e.chosen[-1]["content"] if e.chosen else None for e in examples],
        )
        out = {"reward": round(float(total.mean()), 6)}
        if len(each) > 1:
            out.update({f"reward/{k}": round(float(v.mean()), 6) for k, v in each.items()})
        out["words"] = round(sum(len(a.split()) for a in answers) / len(answers), 3)
        return out

    def evaluate(self, model, split: str) -> dict[str, float]:
        examples, answers = self.answers(model, split, self.g.eval_prompts)
        return self.reward_metrics(examples, answers) if examples else {}

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Mean reward of greedy answers to the held-out prompts: the tuned model beside the base model.

        ``per_example`` keeps each prompt's reward (tuned and base) for the report's intervals.
        """
        t0 = time.perf_counter()
        examples, tuned = self.answers(model, split)
        out: dict = {"split": split, "rewards": list(self.g.rewards), "tuned": {}}
        if not examples:
            return self.stamp(out)
        prompts = [prompt_text(e.messages) for e in examples]
        refs = [e.chosen[-1]["content"] if e.chosen else None for e in examples]
        out["tuned"] = {**self.reward_metrics(examples, tuned), "n": len(examples)}
        t_scores = self.score(prompts, tuned, refs)[0]
        out["per_example"] = {"tuned": {"reward": t_scores.tolist()}}
        base: list[str | None] = [None] * len(examples)
        b_scores = None
        if baseline:
            with self.reference(model) as ref_model:
                _, base = self.answers(ref_model, split)
            out["baseline"] = {**self.reward_metrics(examples, base), "n": len(examples)}
            b_scores = self.score(prompts, base, refs)[0]
            out["per_example"]["baseline"] = {"reward": b_scores.tolist()}
        out["samples"] = [
            {
                "prompt": prompts[k],
                "base": b,
                "tuned": a,
                "reward_tuned": float(t_scores[k]),
                "reward_base": float(b_scores[k]) if b_scores is not None else None,
            }
            for k, (a, b) in enumerate(list(zip(tuned, base))[: self.cfg.sft.samples])
        ]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return self.stamp(out)

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        return format_eval(result)


def format_eval(result: dict) -> list[str]:
    """Lines that summarise a grpo eval.json: mean reward base vs tuned, then sample answers."""
    t, b = result.get("tuned") or {}, result.get("baseline") or {}
    if not t:
        return ["no held-out prompts to evaluate"]
    base = f"base {b['reward']:.4f} -> " if b else ""
    base_words = f"base {b['words']:.1f} -> " if b else ""
    lines = [
        f"{result['split']} split: mean reward of greedy answers to {t['n']} held-out prompts "
        f"({' + '.join(result['rewards'])}): {base}tuned {t['reward']:.4f}",
        f"  mean words per answer: {base_words}tuned {t['words']:.1f}",
    ]
    for s in result.get("samples", [])[:3]:
        lines.append(f"\nprompt: {s['prompt']}")
        if s.get("base") is not None:
            lines.append(f"base   ({s['reward_base']:.2f}): {s['base']}")
        lines.append(f"tuned  ({s['reward_tuned']:.2f}): {s['tuned']}")
    return lines
