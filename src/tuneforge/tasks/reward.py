"""Reward models: a sequence classifier with one output, trained on preference pairs (Bradley-Terry).

Data: ``{prompt, chosen, rejected}`` rows -> (prompt + chosen, prompt + rejected) token ids, rendered with the
chat template when the tokenizer has one (else as a text pair, for encoders) -> batches of B chosen rows then
B rejected rows. Loss: ``-log sigmoid(r_chosen - r_rejected)`` per pair. Evaluation: pairwise accuracy on
held-out pairs (the reward ranks chosen above rejected), beside the "longer answer wins" baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from tuneforge.data.chat import encode_prompt_response
from tuneforge.data.formats import Example
from tuneforge.errors import ConfigError
from tuneforge.models.load import load_classifier, load_tokenizer
from tuneforge.models.save import save_model_folder
from tuneforge.tasks.base import Metric, Task, load_splits
from tuneforge.tasks.classification import load_sequence_classifier
from tuneforge.tasks.lm import prompt_text
from tuneforge.tasks.pairs import Running, pad, pairwise_accuracy, read_examples
from tuneforge.train.losses import bradley_terry_loss

log = logging.getLogger(__name__)


def encode_response(
    tokenizer, prompt: list[dict], response: list[dict], max_length: int
) -> tuple[list[int], bool]:
    """Token ids of a prompt and its response as the reward model reads them; returns (ids, truncated).

    Chat models: the chat template, and a too-long conversation loses its start (the model scores the last
    token, so the response's end must stay). Encoders: ``[CLS] prompt [SEP] response [SEP]``, longest part cut.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = encode_prompt_response(tokenizer, prompt, response, None).input_ids
        if len(ids) <= max_length:
            return ids, False
        keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
        return (ids[:1] + ids[len(ids) - max_length + 1 :]) if keep_bos else ids[-max_length:], True
    p, r = "\n".join(m["content"] for m in prompt), "\n".join(m["content"] for m in response)
    full = tokenizer(p, r, add_special_tokens=True)["input_ids"]
    if len(full) <= max_length:
        return full, False
    return tokenizer(p, r, add_special_tokens=True, truncation="longest_first", max_length=max_length)[
        "input_ids"
    ], True


class RewardTask(Task):
    name = "reward"
    kind = "reward_model"
    result = "reward_model"
    metrics = (
        Metric("accuracy", True, "share of held-out pairs whose chosen answer gets the higher reward"),
        Metric("loss", False, "Bradley-Terry loss"),
        Metric("margin", True, "mean reward of chosen minus rejected"),
    )
    sections = ("preference",)  # center_rewards
    methods = ("full", "freeze", "unfreeze", "lora", "dora", "ia3", "houlsby", "pfeiffer")
    data_format = "preference"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cfg.preference
        if (p.loss_type, p.beta, p.label_smoothing) != ("sigmoid", 0.1, 0.0):
            raise ConfigError(
                "preference.loss_type/beta/label_smoothing tune task 'dpo'; a reward model (task: reward) trains "
                "with the Bradley-Terry loss: remove them (preference.center_rewards is the reward model's option)."
            )

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        self.user_split = True
        if splits is None:
            read = lambda spec: read_examples(spec, cfg.data, ("preference",), "reward")  # noqa: E731
            splits, _, self.user_split = load_splits(cfg.data, cfg.training.seed, read)
        self.splits = splits
        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.chat_template)
        self.encoded = {name: self.encode(exs) for name, exs in self.splits.items()}
        train = self.encoded["train"]
        self.lengths = [len(c) + len(r) for c, r in zip(train["chosen"], train["rejected"])]
        self.counts = [1] * len(self.lengths)
        self.running = Running()
        self.model = None
        if load_model:
            self.model = load_classifier(
                cfg.model.name,
                ["reward"],
                cfg.model.dtype,
                cfg.model.dropout,
                pad_token_id=self.tokenizer.pad_token_id,
            )

    # ---- data
    def read_file(self, spec: str) -> list[Example]:
        return read_examples(spec, self.cfg.data, ("preference",), "reward")[0]

    def encode(self, examples: list[Example]) -> dict:
        n = self.cfg.data.max_length
        chosen = [encode_response(self.tokenizer, e.messages, e.chosen, n) for e in examples]
        rejected = [encode_response(self.tokenizer, e.messages, e.rejected, n) for e in examples]
        out = {
            "chosen": [ids for ids, _ in chosen],
            "rejected": [ids for ids, _ in rejected],
            "truncated": sum(t1 or t2 for (_, t1), (_, t2) in zip(chosen, rejected)),
        }
        out["input_ids"] = out["chosen"] + out["rejected"]  # every sequence (the report's length figures)
        return out

    def data_summary(self) -> dict:
        return {
            name: {"pairs": len(enc["chosen"]), "truncated": enc["truncated"]}
            for name, enc in self.encoded.items()
        }

    def collate_encoded(self, enc: dict, indices: list[int]) -> dict[str, torch.Tensor]:
        """B chosen rows then B rejected rows, right-padded to one width: (2B, T)."""
        ids, mask = pad(
            [enc["chosen"][i] for i in indices] + [enc["rejected"][i] for i in indices],
            self.tokenizer.pad_token_id,
        )
        return {"input_ids": ids, "attention_mask": mask}

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.collate_encoded(self.encoded["train"], indices)

    # ---- training
    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        rewards = (
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .logits.squeeze(-1)
            .float()
        )
        chosen, rejected = rewards.chunk(2)  # (B,), (B,)
        losses = bradley_terry_loss(chosen, rejected, center_coefficient=self.cfg.preference.center_rewards)
        self.running.add("accuracy", (chosen > rejected).float() + 0.5 * (chosen == rejected).float())
        self.running.add("margin", chosen - rejected)
        self.running.add("reward_chosen", chosen)
        self.running.add("reward_rejected", rejected)
        return losses.sum(), len(chosen)

    def pop_train_metrics(self) -> dict[str, float]:
        return self.running.pop()

    @torch.no_grad()
    def scores(self, model, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of every chosen and rejected response of ``enc``: (N,), (N,)."""
        model.eval()
        n = len(enc["chosen"])
        order = sorted(range(n), key=lambda i: len(enc["chosen"][i]) + len(enc["rejected"][i]))
        chosen, rejected = torch.zeros(n), torch.zeros(n)
        device = next(model.parameters()).device
        bs = max(1, self.cfg.eval.batch_size // 2)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            batch = {k: v.to(device) for k, v in self.collate_encoded(enc, idx).items()}
            r = model(**batch).logits.squeeze(-1).float().cpu()
            chosen[idx], rejected[idx] = r.chunk(2)
        return chosen, rejected

    def pair_metrics(self, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
        loss = bradley_terry_loss(
            chosen, rejected, center_coefficient=self.cfg.preference.center_rewards
        ).mean()
        return {
            "loss": round(float(loss), 6),
            "accuracy": round(pairwise_accuracy(chosen, rejected), 6),
            "margin": round(float((chosen - rejected).mean()), 6),
            "reward_chosen": round(float(chosen.mean()), 6),
            "reward_rejected": round(float(rejected.mean()), 6),
        }

    def evaluate(self, model, split: str) -> dict[str, float]:
        enc = self.encoded.get(split)
        if not enc or not enc["chosen"]:
            return {}
        return self.pair_metrics(*self.scores(model, enc))

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Pairwise accuracy of the reward on held-out pairs, beside "the longer answer wins" and chance."""
        enc, examples = self.encoded[split], self.splits[split]
        chosen, rejected = self.scores(model, enc)
        out = {
            "split": split,
            "task": "reward",
            "tuned": {**self.pair_metrics(chosen, rejected), "n": len(examples)},
        }
        if baseline:
            c_len = torch.tensor([float(sum(len(m["content"]) for m in e.chosen)) for e in examples])
            r_len = torch.tensor([float(sum(len(m["content"]) for m in e.rejected)) for e in examples])
            out["baseline"] = {
                "accuracy": round(pairwise_accuracy(c_len, r_len), 6),
                "predicts": "the longer answer",
                "chance": 0.5,
                "n": len(examples),
            }
        out["examples"] = [
            {
                "prompt": prompt_text(e.messages),
                "chosen": e.chosen[-1]["content"],
                "rejected": e.rejected[-1]["content"],
                "reward_chosen": round(float(c), 4),
                "reward_rejected": round(float(r), 4),
            }
            for e, c, r in list(zip(examples, chosen, rejected))[:5]
        ]
        # per-pair scores (the report's intervals): the reward of every chosen and rejected answer; the baseline
        # "scores" an answer by its length
        out["per_example"] = {"tuned": {"chosen": chosen.tolist(), "rejected": rejected.tolist()}}
        if baseline:
            out["per_example"]["baseline"] = {"chosen": c_len.tolist(), "rejected": r_len.tolist()}
        return self.stamp(out)

    def save_model(self, model, out: Path, notes: dict | None = None) -> None:
        save_model_folder(
            model, self.tokenizer, out, labels=["reward"], notes=notes
        )  # rebuilds the one-output head

    @classmethod
    def load_model(cls, model_dir: Path, cfg=None):
        return load_sequence_classifier(Path(model_dir))

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        return format_eval(result)


@torch.no_grad()
def score_responses(
    model, tokenizer, max_length: int, prompts: list, responses: list[str], batch_size: int = 16
) -> list[float]:
    """Rewards of responses to prompts (a prompt is a string or a conversation), one per response."""
    as_turns = lambda p: [{"role": "user", "content": p}] if isinstance(p, str) else list(p)  # noqa: E731
    ids = [
        encode_response(tokenizer, as_turns(p), [{"role": "assistant", "content": r}], max_length)[0]
        for p, r in zip(prompts, responses)
    ]
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(ids), batch_size):
        batch, mask = pad(ids[start : start + batch_size], tokenizer.pad_token_id)
        logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits  # (B, 1)
        out += logits[:, 0].float().tolist()
    return out


def format_eval(result: dict) -> list[str]:
    """Lines that summarise a reward eval.json."""
    t, b = result["tuned"], result.get("baseline")
    lines = [
        f"{result['split']} split: pairwise accuracy {t['accuracy']:.4f} on {t['n']} held-out pairs "
        f"(mean margin {t['margin']:+.3f})"
    ]
    if b:
        lines.append(f"baselines: {b['predicts']} {b['accuracy']:.4f}, chance {b['chance']:.2f}")
    return lines
