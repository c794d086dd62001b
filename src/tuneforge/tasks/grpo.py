"""Group-relative policy optimisation (GRPO): online RL from reward functions, with a KL penalty to the reference.

Each optimizer step takes ``training.batch_size`` prompts (times ``grad_accum``), samples ``grpo.group_size``
completions for each with the current policy, scores them with ``grpo.rewards`` (``tuneforge.rewards``),
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
from pathlib import Path

import torch

from tuneforge.data.bundled import resolve
from tuneforge.data.chat import render_prompt
from tuneforge.data.formats import SHAPES, Example, _messages, detect_format, to_examples
from tuneforge.errors import DataError
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.models.templates import ensure_template
from tuneforge.rewards import Reward, load_rewards
from tuneforge.tasks.pairs import (
    Running,
    configure_generation,
    frozen_copy,
    load_splits,
    pad,
    prompt_text,
    reference,
    save_lm,
)
from tuneforge.train.losses import group_advantages, grpo_loss, token_logps

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


class GRPOTask:
    primary_metric = "reward"
    greater_is_better = True
    data_format = "messages"

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        self.g = cfg.grpo
        if splits is None:
            splits, _ = load_splits(
                cfg.data, cfg.training.seed, (), "grpo", reader=lambda s: read_prompts(s, cfg.data)
            )
        self.splits = splits
        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.chat_template)
        ensure_template(self.tokenizer)
        self.rewards: list[Reward] = load_rewards(self.g.rewards, self.g.reward_weights)
        self.prompt_ids = {name: [self.encode_prompt(e) for e in exs] for name, exs in splits.items()}
        self.lengths = [len(p) for p in self.prompt_ids["train"]]
        self.counts = [self.g.group_size] * len(self.lengths)  # the loss is a mean over sampled completions
        self.running = Running()
        self.model = self.ref_model = None
        if load_model:
            self.model = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.dropout)
            configure_generation(self.model, self.tokenizer)
            if self.g.kl_beta > 0:  # full fine-tuning: the reference is a frozen copy of the starting weights
                self.ref_model = frozen_copy(self.model, cfg.method.name)

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

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = pad(
            [self.prompt_ids["train"][i] for i in indices], self.tokenizer.pad_token_id, left=True
        )
        return {"prompt_ids": ids, "prompt_mask": mask, "index": torch.tensor(indices)}  # (B, P), left-padded

    # ---- sampling and scoring
    def sampling_config(self):
        from transformers import GenerationConfig

        from tuneforge.serve.generate import stop_ids

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
        from tuneforge.serve.generate import stop_ids

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
        """Per-token log-probs of the completion tokens under ``model``, at the sampling temperature: (N, C)."""
        width = completion.shape[1]
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: positions as generate saw them
        logits = model(
            input_ids=ids, attention_mask=attention, position_ids=position_ids, logits_to_keep=width + 1
        ).logits[:, -(width + 1) :]  # (N, C+1, V)
        labels = torch.cat(
            [torch.full_like(completion[:, :1], -100), completion.masked_fill(mask == 0, -100)], 1
        )
        return token_logps(logits / self.g.temperature, labels)[0]  # (N, C)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        g, raw = self.g, getattr(model, "module", model)  # DDP wraps the model; generate on the inner one
        prompt_ids = batch["prompt_ids"].repeat_interleave(g.group_size, 0)  # (N, P), N = B * G
        prompt_mask = batch["prompt_mask"].repeat_interleave(g.group_size, 0)
        with torch.no_grad():
            was_training = raw.training
            raw.eval()
            out = raw.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.sampling_config()
            )
            raw.train(was_training)
        completion = out[:, prompt_ids.shape[1] :]  # (N, C)
        mask, stopped = self.completion_mask(completion)  # (N, C), (N,)
        texts = [
            t.strip()
            for t in self.tokenizer.batch_decode(
                completion.masked_fill(mask == 0, self.tokenizer.pad_token_id), skip_special_tokens=True
            )
        ]
        rows = [self.splits["train"][int(i)] for i in batch["index"] for _ in range(g.group_size)]
        rewards, each = self.score(
            [prompt_text(e.messages) for e in rows],
            texts,
            [e.chosen[-1]["content"] if e.chosen else None for e in rows],
        )
        advantages = group_advantages(rewards, g.group_size, g.scale_rewards).to(prompt_ids.device)  # (N,)
        ids, attention = (
            torch.cat([prompt_ids, completion], 1),
            torch.cat([prompt_mask, mask], 1),
        )  # (N, P + C)
        logps = self.completion_logps(model, ids, attention, completion, mask)  # (N, C)
        ref = None
        if g.kl_beta > 0:
            with torch.no_grad(), reference(model, self.ref_model, self.cfg) as ref_model:
                ref = self.completion_logps(ref_model, ids, attention, completion, mask)
        losses, kl = grpo_loss(logps, logps.detach(), ref, advantages, mask, kl_beta=g.kl_beta)
        r = self.running
        r.add("reward", rewards)
        r.add("reward_std", rewards.view(-1, g.group_size).std(1))
        for name, values in each.items():
            if len(each) > 1:
                r.add(f"reward/{name}", values)
        if ref is not None:
            r.add("kl", kl)
        r.add("completion_tokens", mask.sum(1).float())
        r.add("stopped", stopped.float())  # fraction of completions that ended before max_new_tokens
        return losses.sum(), len(losses)

    def pop_train_metrics(self) -> dict[str, float]:
        return self.running.pop()

    # ---- evaluation
    def answers(self, model, split: str, limit: int | None = None) -> tuple[list[Example], list[str]]:
        from tuneforge.serve.generate import generate

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
        """Mean reward of greedy answers to the held-out prompts: the tuned model beside the base model."""
        t0 = time.perf_counter()
        examples, tuned = self.answers(model, split)
        out: dict = {"split": split, "task": "grpo", "rewards": list(self.g.rewards), "tuned": {}}
        if not examples:
            return out
        out["tuned"] = {**self.reward_metrics(examples, tuned), "n": len(examples)}
        base = [None] * len(examples)
        if baseline:
            with reference(model, self.ref_model, self.cfg) as ref_model:
                _, base = self.answers(ref_model, split)
            out["baseline"] = {**self.reward_metrics(examples, base), "n": len(examples)}
        t_scores = self.score([prompt_text(e.messages) for e in examples], tuned, [None] * len(tuned))[0]
        b_scores = (
            self.score([prompt_text(e.messages) for e in examples], base, [None] * len(base))[0]
            if baseline
            else None
        )
        out["samples"] = [
            {
                "prompt": prompt_text(e.messages),
                "base": b,
                "tuned": a,
                "reward_tuned": float(t_scores[k]),
                "reward_base": float(b_scores[k]) if b_scores is not None else None,
            }
            for k, (e, a, b) in enumerate(list(zip(examples, tuned, base))[: self.cfg.sft.samples])
        ]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def save_model(self, model, out: Path) -> None:
        save_lm(model, self.tokenizer, out)


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
