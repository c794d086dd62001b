"""Direct preference optimisation and its relatives: DPO (sigmoid), IPO, hinge, ORPO and KTO.

Data: ``{prompt, chosen, rejected}`` pairs (strings or chat messages), or for KTO unpaired
``{prompt, completion, label}`` rows (pairs are split into a desirable and an undesirable row). Each
response is rendered with the chat template after its prompt; only response tokens carry loss.

Reference model: with a PEFT method it is the same weights with the adapter switched off (no second copy
in memory); with full fine-tuning a frozen copy of the starting model is kept. ORPO needs none. The
reference's log-probs are computed once per training example (in eval mode, so they are deterministic)
and cached, so later epochs skip the reference forward pass.

Evaluation: on held-out pairs, preference accuracy = how often the implicit reward
``beta * (log pi(y|x) - log ref(y|x))`` ranks chosen above rejected (ties count half, so the base model,
whose implicit reward is 0, scores 0.5); also the rewards, their margin and ``likelihood_accuracy`` (how
often the model itself gives the chosen answer a higher per-token log-probability).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from tuneforge.data.chat import EncodedChat, encode_prompt_response
from tuneforge.data.formats import Example
from tuneforge.errors import DataError
from tuneforge.models.load import load_causal_lm, load_tokenizer
from tuneforge.models.templates import ensure_template
from tuneforge.tasks.pairs import (
    Running,
    configure_generation,
    frozen_copy,
    is_paired,
    load_splits,
    pad,
    pairwise_accuracy,
    prompt_text,
    read_examples,
    reference,
    save_lm,
    unpair,
)
from tuneforge.train.losses import dpo_loss, kto_kl, kto_loss, orpo_loss, token_logps

log = logging.getLogger(__name__)
IGNORE = -100


def n_loss(e: EncodedChat) -> int:
    """Loss tokens as the shifted loss sees them (position 0 is never a target)."""
    return sum(label != IGNORE for label in e.labels[1:])


def response_start(e: EncodedChat) -> int:
    return next(i for i, label in enumerate(e.labels) if label != IGNORE)


class PreferenceTask:
    greater_is_better = True

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        p = cfg.preference
        self.loss_type, self.beta = p.loss_type, p.beta
        if splits is None:
            splits, self.data_format = load_splits(cfg.data, cfg.training.seed, ("preference", "kto"), "dpo")
        else:
            self.data_format = "preference" if is_paired(splits["train"]) else "kto"
        if self.data_format == "kto" and self.loss_type != "kto":
            raise DataError(
                f"{cfg.data.train}: unpaired {{prompt, completion, label}} rows train with "
                f"preference.loss_type=kto; loss '{self.loss_type}' needs {{prompt, chosen, rejected}} pairs."
            )
        self.splits = splits
        self.tokenizer = load_tokenizer(cfg.model.name, cfg.model.chat_template)
        ensure_template(self.tokenizer)
        self.encoded = {name: self.encode(exs) for name, exs in splits.items()}
        self.train_paired = self.loss_type != "kto"
        train = self.encode(unpair(splits["train"])) if self.loss_type == "kto" else self.encoded["train"]
        if not train["rows"]:
            raise DataError(
                f"{cfg.data.train}: no training example has a response token left within data.max_length "
                f"({cfg.data.max_length}); raise it."
            )
        self.train = train
        self.lengths = [len(r.input_ids) for r in train["rows"]]
        if self.train_paired:  # a pair trains as one example: both of its rows
            half = len(self.lengths) // 2
            self.lengths = [a + b for a, b in zip(self.lengths[:half], self.lengths[half:])]
        self.counts = [1] * len(self.lengths)
        paired_eval = all(
            enc["paired"] for name, enc in self.encoded.items() if name != "train" and enc["rows"]
        )
        self.primary_metric = "preference_accuracy" if paired_eval else "label_accuracy"
        self.running = Running()
        self._ref_cache: dict[
            str, torch.Tensor
        ] = {}  # split -> reference log-probs of its rows (NaN: not yet)
        self.model = self.ref_model = None
        if load_model:
            self.model = load_causal_lm(cfg.model.name, cfg.model.dtype, cfg.model.dropout)
            self.configure_generation(self.model)
            if (
                self.loss_type != "orpo"
            ):  # full fine-tuning: the reference is a frozen copy of the starting weights
                self.ref_model = frozen_copy(self.model, cfg.method.name)

    # ---- data
    def read_file(self, spec: str) -> list[Example]:
        return read_examples(spec, self.cfg.data, ("preference", "kto"), "dpo")[0]

    def encode(self, examples: list[Example]) -> dict:
        """Paired: rows = all chosen then all rejected; unpaired (KTO): one row each, with ``desirable`` flags.

        Examples whose response has no token left within ``data.max_length`` are dropped (and counted).
        """
        n = self.cfg.data.max_length
        enc = lambda e, resp: encode_prompt_response(self.tokenizer, e.messages, resp, n, e.source)  # noqa: E731
        paired = is_paired(examples) or not examples
        if paired:
            pairs = [(e, enc(e, e.chosen), enc(e, e.rejected)) for e in examples]
            kept = [(e, c, r) for e, c, r in pairs if n_loss(c) and n_loss(r)]
            out = {
                "paired": True,
                "examples": [e for e, _, _ in kept],
                "rows": [c for _, c, _ in kept] + [r for _, _, r in kept],
                "dropped": len(pairs) - len(kept),
                "truncated": sum(c.truncated or r.truncated for _, c, r in kept),
            }
        else:
            rows = [(e, enc(e, e.chosen)) for e in examples]
            kept = [(e, r) for e, r in rows if n_loss(r)]
            out = {
                "paired": False,
                "examples": [e for e, _ in kept],
                "rows": [r for _, r in kept],
                "desirable": [e.label == "true" for e, _ in kept],
                "dropped": len(rows) - len(kept),
                "truncated": sum(r.truncated for _, r in kept),
            }
        out["input_ids"] = [
            r.input_ids for r in out["rows"]
        ]  # every row's tokens (the report's length figures)
        return out

    def data_summary(self) -> dict:
        out = {
            name: {"examples": len(enc["examples"]), "dropped": enc["dropped"], "truncated": enc["truncated"]}
            for name, enc in self.encoded.items()
        }
        if self.loss_type == "kto" and self.encoded["train"]["paired"]:
            out["train"]["kto_rows"] = len(self.train["rows"])
        out["format"], out["loss_type"] = self.data_format, self.loss_type
        return out

    def _batch(self, rows: list[EncodedChat]) -> dict[str, torch.Tensor]:
        ids, mask = pad([r.input_ids for r in rows], self.tokenizer.pad_token_id)
        labels, _ = pad([r.labels for r in rows], IGNORE)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.train["rows"]
        if self.train_paired:  # (2B, T): B chosen rows, then their B rejected rows
            half = len(rows) // 2
            batch = self._batch([rows[i] for i in indices] + [rows[half + i] for i in indices])
            batch["index"] = torch.tensor(indices + [half + i for i in indices])
            return batch
        picked = [rows[i] for i in indices]
        batch = self._batch(picked)
        batch["index"] = torch.tensor(indices)
        batch["desirable"] = torch.tensor([self.train["desirable"][i] for i in indices])
        # KTO's reference point: each prompt with the completion of the previous row (a mismatched pair)
        mismatched = []
        for k, row in enumerate(picked):
            other = picked[k - 1]
            p, q = response_start(row), response_start(other)
            ids, labels = row.input_ids[:p] + other.input_ids[q:], [IGNORE] * p + other.labels[q:]
            mismatched.append(
                EncodedChat(ids[: self.cfg.data.max_length], labels[: self.cfg.data.max_length])
            )
        kl = self._batch(mismatched)
        batch.update(
            {
                "kl_input_ids": kl["input_ids"],
                "kl_attention_mask": kl["attention_mask"],
                "kl_labels": kl["labels"],
            }
        )
        return batch

    # ---- model side
    @staticmethod
    def logps(
        model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs (N,) and response token counts (N,).

        Only the positions from the earliest response token on get logits (``logits_to_keep``): the system
        prompt and most of each prompt never reach the vocabulary projection, which saves time and memory.
        """
        width = input_ids.shape[1]
        first = int((labels != IGNORE).float().argmax(1).min())  # earliest response token in the batch
        keep = width - max(first - 1, 0)  # positions first-1 .. T-1 predict every response token
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep
        ).logits  # (N, keep', V)
        logits = logits[:, -keep:]  # prompt tuning prepends virtual tokens: keep the real positions
        lp, mask = token_logps(logits, labels[:, -keep:])  # (N, keep-1)
        return lp.sum(-1), mask.sum(-1)

    def reference(self, model):
        """The reference model (context manager): the frozen copy, or the adapter switched off."""
        return reference(model, self.ref_model, self.cfg)

    @torch.no_grad()
    def reference_logps(self, model, split: str, index: torch.Tensor, batch: dict) -> torch.Tensor:
        """Reference log-probs of the rows ``index`` of ``split``: (N,), computed once per row and cached."""
        rows = self.train["rows"] if split == "train" else self.encoded[split]["rows"]
        cache = self._ref_cache.setdefault(split, torch.full((len(rows),), float("nan")))
        idx = index.cpu()
        if torch.isnan(cache[idx]).any():
            with self.reference(model) as ref:
                cache[idx] = (
                    self.logps(ref, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
                    .float()
                    .cpu()
                )
        return cache[idx].to(batch["input_ids"].device)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        logps, n_tokens = self.logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"]
        )  # (N,)
        r = self.running
        if self.loss_type == "orpo":
            avg = logps / n_tokens.clamp(min=1)
            chosen, rejected = avg.chunk(2)
            losses, log_odds = orpo_loss(chosen, rejected, -chosen, self.beta)
            r.add("preference_accuracy", (chosen > rejected).float() + 0.5 * (chosen == rejected).float())
            r.add("reward_chosen", self.beta * chosen.detach())
            r.add("reward_rejected", self.beta * rejected.detach())
            r.add("margin", self.beta * (chosen - rejected).detach())
            r.add("log_odds_ratio", log_odds)
            r.add("nll", -chosen.detach())
            return losses.sum(), len(chosen)
        ref = self.reference_logps(model, "train", batch["index"], batch)
        if self.loss_type == "kto":
            with torch.no_grad():
                kl_args = batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]
                policy_kl = self.logps(model, *kl_args)[0]
                with self.reference(model) as ref_model:
                    ref_kl = self.logps(ref_model, *kl_args)[0]
                kl = kto_kl(policy_kl, ref_kl)
            p = self.cfg.preference
            losses, rewards = kto_loss(
                logps, ref, batch["desirable"], kl, self.beta, p.desirable_weight, p.undesirable_weight
            )
            good = batch["desirable"].bool()
            r.add("kl", float(kl))
            r.add("reward_desirable", rewards[good])
            r.add("reward_undesirable", rewards[~good])
            return losses.sum(), len(losses)
        pc, pr = logps.chunk(2)
        rc, rr = ref.chunk(2)
        ct, rt = n_tokens.chunk(2)
        losses, chosen_r, rejected_r = dpo_loss(
            pc, pr, rc, rr, self.beta, self.loss_type, self.cfg.preference.label_smoothing, ct, rt
        )
        r.add("preference_accuracy", (chosen_r > rejected_r).float() + 0.5 * (chosen_r == rejected_r).float())
        r.add("reward_chosen", chosen_r)
        r.add("reward_rejected", rejected_r)
        r.add("margin", chosen_r - rejected_r)
        r.add("logps_chosen", pc.detach())
        r.add("logps_rejected", pr.detach())
        return losses.sum(), len(losses)

    def pop_train_metrics(self) -> dict[str, float]:
        return self.running.pop()

    # ---- evaluation
    @torch.no_grad()
    def split_logps(self, model, rows: list[EncodedChat]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs and token counts of ``rows`` under ``model``: (N,), (N,)."""
        model.eval()
        n = len(rows)
        sums, counts = torch.zeros(n), torch.zeros(n)
        order = sorted(range(n), key=lambda i: len(rows[i].input_ids))
        device = next(model.parameters()).device
        for start in range(0, n, self.cfg.eval.batch_size):
            idx = order[start : start + self.cfg.eval.batch_size]
            b = {k: v.to(device) for k, v in self._batch([rows[i] for i in idx]).items()}
            s, c = self.logps(model, b["input_ids"], b["attention_mask"], b["labels"])
            sums[idx], counts[idx] = s.float().cpu(), c.float().cpu()
        return sums, counts

    def split_reference(self, model, split: str) -> torch.Tensor:
        """Reference log-probs of a held-out split's rows (computed once: the reference never changes)."""
        rows = self.encoded[split]["rows"]
        cache = self._ref_cache.get(split)
        if cache is None or torch.isnan(cache).any():
            with self.reference(model) as ref:
                self._ref_cache[split] = self.split_logps(ref, rows)[0]
        return self._ref_cache[split]

    def scores(self, policy: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """The implicit reward of each row: beta * (policy - reference), or ORPO's beta * mean log-prob."""
        if self.loss_type == "orpo" or ref is None:
            return self.beta * policy / counts.clamp(min=1)
        return self.beta * (policy - ref)

    def metrics(
        self, enc: dict, policy: torch.Tensor, counts: torch.Tensor, ref: torch.Tensor | None
    ) -> dict[str, float]:
        rewards = self.scores(policy, counts, ref)
        avg = policy / counts.clamp(min=1)
        if not enc["paired"]:
            good = torch.tensor(enc["desirable"])
            right = torch.where(good, rewards > 0, rewards < 0).float() + 0.5 * (rewards == 0).float()
            return {
                "label_accuracy": round(float(right.mean()), 6),
                "reward_desirable": round(float(rewards[good].mean()), 6) if good.any() else float("nan"),
                "reward_undesirable": round(float(rewards[~good].mean()), 6)
                if (~good).any()
                else float("nan"),
            }
        c, r = rewards.chunk(2)
        out = {
            "preference_accuracy": round(pairwise_accuracy(c, r), 6),
            "reward_chosen": round(float(c.mean()), 6),
            "reward_rejected": round(float(r.mean()), 6),
            "margin": round(float((c - r).mean()), 6),
            "likelihood_accuracy": round(pairwise_accuracy(*avg.chunk(2)), 6),
        }
        if self.loss_type in ("sigmoid", "ipo", "hinge") and ref is not None:
            (pc, pr), (rc, rr), (ct, rt) = policy.chunk(2), ref.chunk(2), counts.chunk(2)
            out["loss"] = round(
                float(
                    dpo_loss(
                        pc, pr, rc, rr, self.beta, self.loss_type, self.cfg.preference.label_smoothing, ct, rt
                    )[0].mean()
                ),
                6,
            )
        elif self.loss_type == "orpo":
            ac, ar = avg.chunk(2)
            out["loss"] = round(float(orpo_loss(ac, ar, -ac, self.beta)[0].mean()), 6)
        return out

    def evaluate(self, model, split: str) -> dict[str, float]:
        enc = self.encoded.get(split)
        if not enc or not enc["rows"]:
            return {}
        policy, counts = self.split_logps(model, enc["rows"])
        ref = None if self.loss_type == "orpo" else self.split_reference(model, split)
        return self.metrics(enc, policy, counts, ref)

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Preference accuracy of the tuned model on held-out pairs beside the base model, and sample answers."""
        from tuneforge.serve.generate import generate

        t0 = time.perf_counter()
        enc = self.encoded[split]
        out: dict = {
            "split": split,
            "task": "dpo",
            "loss_type": self.loss_type,
            "beta": self.beta,
            "tuned": {},
        }
        if enc["rows"]:
            policy, counts = self.split_logps(model, enc["rows"])
            ref = self.split_reference(model, split)  # the base model's log-probs
            out["tuned"] = self.metrics(enc, policy, counts, None if self.loss_type == "orpo" else ref)
            if baseline:
                # ORPO's implicit reward is the model's own likelihood, which the base model has too; for the others
                # the base model is the reference, so its implicit reward is 0 for every answer (accuracy 0.5)
                out["baseline"] = self.metrics(enc, ref, counts, None if self.loss_type == "orpo" else ref)
                out["baseline"].pop("loss", None)
                out["baseline"]["n"] = len(enc["examples"])
        out["tuned"]["n"] = len(enc["examples"])
        s = self.cfg.sft
        examples = enc["examples"][: s.samples]
        if examples:
            gen = dict(
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                batch_size=8,
                system_prompt=s.system_prompt,
            )
            convs = [e.messages for e in examples]
            tuned = generate(model, self.tokenizer, convs, **gen)
            base = [None] * len(convs)
            if baseline:
                with self.reference(model) as ref_model:
                    base = generate(ref_model, self.tokenizer, convs, **gen)
            out["samples"] = [
                {
                    "prompt": prompt_text(e.messages),
                    "reference": e.chosen[-1]["content"],
                    "base": b,
                    "tuned": a,
                }
                for e, a, b in zip(examples, tuned, base)
            ]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def configure_generation(self, model) -> None:
        configure_generation(model, self.tokenizer)

    def save_model(self, model, out: Path) -> None:
        save_lm(model, self.tokenizer, out)


def format_eval(result: dict) -> list[str]:
    """Lines that summarise a dpo eval.json: preference accuracy base vs tuned, then sample answers."""
    t, b = result["tuned"], result.get("baseline") or {}
    key = "preference_accuracy" if "preference_accuracy" in t else "label_accuracy"
    lines = [f"{result['split']} split ({t['n']} held-out examples, loss {result['loss_type']}):"]
    base = f"base {b[key]:.4f} -> " if key in b else ""
    lines.append(f"  {key.replace('_', ' ')} (implicit reward ranks chosen first): {base}tuned {t[key]:.4f}")
    if "likelihood_accuracy" in t:
        base = f"base {b['likelihood_accuracy']:.4f} -> " if "likelihood_accuracy" in b else ""
        lines.append(
            f"  likelihood accuracy (higher per-token log-prob for chosen): {base}tuned {t['likelihood_accuracy']:.4f}"
        )
    if "margin" in t:
        lines.append(
            f"  rewards: chosen {t['reward_chosen']:+.3f}, rejected {t['reward_rejected']:+.3f}, margin {t['margin']:+.3f}"
        )
    for s in result.get("samples", [])[:3]:
        lines.append(f"\nprompt:    {s['prompt']}\nchosen:    {s['reference']}")
        if s.get("base") is not None:
            lines.append(f"base:      {s['base']}")
        lines.append(f"tuned:     {s['tuned']}")
    return lines
