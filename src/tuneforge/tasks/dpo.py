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

import torch

from tuneforge.config import VIRTUAL_TOKEN_METHODS
from tuneforge.data.chat import EncodedChat, encode_prompt_response
from tuneforge.data.formats import Example
from tuneforge.errors import ConfigError, DataError
from tuneforge.models.attention import custom_mask
from tuneforge.tasks.base import Metric, load_splits
from tuneforge.tasks.lm import LMTask, prompt_text
from tuneforge.tasks.pairs import (
    Running,
    is_paired,
    pack_padded,
    pad,
    pairwise_accuracy,
    read_examples,
    share_prompts,
    shared_prefix,
    unpair,
)
from tuneforge.train.lm_loss import response_logps
from tuneforge.train.losses import dpo_loss, kto_kl_from_step, kto_loss, orpo_loss, token_logps

log = logging.getLogger(__name__)
IGNORE = -100


def n_loss(e: EncodedChat) -> int:
    """Loss tokens as the shifted loss sees them (position 0 is never a target)."""
    return sum(label != IGNORE for label in e.labels[1:])


def response_start(e: EncodedChat) -> int:
    return next(i for i, label in enumerate(e.labels) if label != IGNORE)


class PreferenceTask(LMTask):
    name = "dpo"
    kind = "policy"
    result = "preference"
    metrics = (
        Metric(
            "preference_accuracy", True, "share of held-out pairs whose implicit reward ranks chosen first"
        ),
        Metric("label_accuracy", True, "KTO rows: share whose implicit reward has the label's sign"),
        Metric("loss", False, "the preference loss on held-out pairs"),
        Metric("margin", True, "mean implicit reward of chosen minus rejected"),
        Metric("likelihood_accuracy", True, "share of pairs where chosen has the higher per-token log-prob"),
    )
    sections = ("sft", "preference")
    keeps_frozen_copy = True

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cfg.preference
        if p.center_rewards is not None:
            raise ConfigError(
                "preference.center_rewards is a weight for task 'reward' only: remove it or set task: reward."
            )
        if p.loss_type == "kto" and cfg.training.batch_size < 2:
            raise ConfigError(
                "preference.loss_type=kto needs training.batch_size >= 2: its KL reference point pairs each prompt "
                "with another row's completion, and a batch of one would pair a row with itself. Set "
                "training.batch_size=2 or more (lower data.max_length if memory is short)."
            )

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        p = cfg.preference
        self.loss_type, self.beta = p.loss_type, p.beta
        self.user_split = True
        if splits is None:
            read = lambda spec: read_examples(spec, cfg.data, ("preference", "kto"), "dpo")  # noqa: E731
            splits, self.data_format, self.user_split = load_splits(cfg.data, cfg.training.seed, read)
        else:
            self.data_format = "preference" if is_paired(splits["train"]) else "kto"
        if self.data_format == "kto" and self.loss_type != "kto":
            raise DataError(
                f"{cfg.data.train}: unpaired {{prompt, completion, label}} rows train with "
                f"preference.loss_type=kto; loss '{self.loss_type}' needs {{prompt, chosen, rejected}} pairs."
            )
        self.splits = splits
        self.keeps_frozen_copy = self.loss_type != "orpo"  # ORPO needs no reference model
        self.setup_lm(load_model)
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
        self.pair_tokens = self.lengths  # the tokens of each training example, as the data holds them
        if self.train_paired:  # a pair trains as one example: both of its rows
            half = len(self.lengths) // 2
            self.pair_tokens = [a + b for a, b in zip(self.lengths[:half], self.lengths[half:])]
            self.lengths = self.pair_tokens
            if self.cfg.preference.share_prompts and cfg.method.name not in VIRTUAL_TOKEN_METHODS:
                # what a pair computes: its prompt once (the sampler's token cap and the memory estimate)
                c, r = train["rows"][:half], train["rows"][half:]
                self.lengths = [
                    n - shared_prefix(a.input_ids, b.input_ids, a.labels, b.labels)
                    for n, a, b in zip(self.pair_tokens, c, r)
                ]
        self.counts = [1] * len(self.lengths)
        paired_eval = all(
            enc["paired"] for name, enc in self.encoded.items() if name != "train" and enc["rows"]
        )
        self.paired_eval = paired_eval
        self.running = Running()
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.chunked_loss = cfg.sft.fast_loss  # the memory estimate: one chunk of logits at a time
        self._ref_cache: dict[
            str, torch.Tensor
        ] = {}  # split -> reference log-probs of its rows (NaN: not yet)
        self._step_kl: torch.Tensor | None = None  # KTO: the KL reference point of the current optimizer step

    def default_metric(self) -> Metric:
        return self.metric("preference_accuracy" if self.paired_eval else "label_accuracy")

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
        return batch

    def mismatched(self, indices: list[int]) -> list[EncodedChat]:
        """KTO's reference point: each row's prompt with the completion of the next row of the step (a
        mismatched pair; the step has at least two rows, so never a row with itself)."""
        rows = [self.train["rows"][i] for i in indices]
        out = []
        for k, row in enumerate(rows):
            other = rows[(k + 1) % len(rows)]
            p, q = response_start(row), response_start(other)
            ids, labels = row.input_ids[:p] + other.input_ids[q:], [IGNORE] * p + other.labels[q:]
            n = self.cfg.data.max_length
            out.append(EncodedChat(ids[:n], labels[:n]))
        return out

    @torch.no_grad()
    def begin_step(self, model, micro: list[list[int]], reduce) -> None:
        """KTO: the KL reference point of this optimizer step, from mismatched pairs of ALL its rows on all
        processes (``reduce`` sums over processes): mean(policy - reference) log-prob, clamped at 0."""
        if self.loss_type != "kto":
            return None
        model = getattr(model, "module", model)  # the inner model: DDP's forward would sync buffers per call
        device = next(model.parameters()).device
        pairs = self.mismatched([i for idx in micro for i in idx])
        totals = torch.zeros(2, device=device)  # (sum of policy - reference, rows)
        bs = max(1, self.cfg.training.batch_size)
        for start in range(0, len(pairs), bs):
            b = {k: v.to(device) for k, v in self._batch(pairs[start : start + bs]).items()}
            args = b["input_ids"], b["attention_mask"], b["labels"]
            policy = self.logps(model, *args)[0].float()
            with self.reference(model) as ref_model:
                ref = self.logps(ref_model, *args)[0].float()
            totals += torch.stack([(policy - ref).sum(), torch.tensor(float(len(policy)), device=device)])
        totals = reduce(totals)
        self._step_kl = kto_kl_from_step(totals[0], 0.0, totals[1])
        return None

    def token_cost(self, i: int) -> int:
        """Tokens of training example ``i`` as the data holds them (a pair: both rows, its prompt in each,
        as peers count them), whether or not its prompt is computed once."""
        return self.pair_tokens[i]

    # ---- model side
    def merges_rows(self, model) -> bool:
        """Whether several sequences may share a row (packing, a pair's prompt computed once): not with
        virtual tokens (prefix/prompt tuning would share them between the sequences of a row)."""
        if self.cfg.method.name in VIRTUAL_TOKEN_METHODS:
            return False
        peft_config = getattr(getattr(model, "module", model), "active_peft_config", None)
        return not (peft_config is not None and peft_config.is_prompt_learning)

    def packs(self, model) -> bool:
        """Whether a batch's rows are packed (preference.packing)."""
        return self.cfg.preference.packing and self.merges_rows(model)

    def shared(
        self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor] | None:
        """A paired batch with each pair's prompt computed once (``pairs.share_prompts``), its mask in the
        form the model's attention takes; None where that cannot be done (the rows are not right-padded,
        or the attention implementation takes no custom mask: flash or flex attention)."""
        tree = share_prompts(input_ids, attention_mask, labels, self.pad_id, self.cost_model(model))
        mask = None if tree is None else custom_mask(model, tree.pop("tree_mask"))
        if mask is None:
            return None
        return {**tree, "attention_mask": mask}

    def logps(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        paired: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed response log-probs (N,) and response token counts (N,) of right-padded rows (N, T);
        ``paired``: the rows are N/2 chosen then their N/2 rejected (a training batch).

        The levers, each switchable and tested against the plain path (``plain_logps``):
        ``preference.share_prompts`` computes each pair's prompt once (``pairs.share_prompts``);
        ``preference.packing`` packs the rows into fewer rows when that computes less than padding them
        (``pairs.pack_padded``); ``sft.fast_loss`` applies the output layer to the response tokens only, chunk by chunk,
        never holding the (N, T, V) logits (``train.lm_loss.response_logps``).
        """
        fast = self.cfg.sft.fast_loss
        packed = None
        if paired and self.cfg.preference.share_prompts and self.merges_rows(model):
            packed = self.shared(model, input_ids, attention_mask, labels)
            if packed is not None:
                return response_logps(model, packed, len(input_ids), positions_only=fast)
        if self.packs(model):
            packed = pack_padded(input_ids, attention_mask, labels, self.pad_id, self.cost_model(model))
        if packed is None and not fast:
            return self.plain_logps(model, input_ids, attention_mask, labels)
        if packed is None:
            rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(input_ids)
            packed = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "labels": labels,
                "segments": rows.masked_fill(attention_mask == 0, -1),
            }
        return response_logps(model, packed, len(input_ids), positions_only=fast)

    @staticmethod
    def plain_logps(
        model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain path: padded rows, logits of every position from the earliest response token on.

        Only the positions from the earliest response token on get logits (``logits_to_keep``): the system
        prompt and most of each prompt never reach the vocabulary projection.
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

    @torch.no_grad()
    def reference_logps(self, model, split: str, index: torch.Tensor, batch: dict) -> torch.Tensor:
        """Reference log-probs of the rows ``index`` of ``split``: (N,), computed once per row and cached."""
        rows = self.train["rows"] if split == "train" else self.encoded[split]["rows"]
        cache = self._ref_cache.setdefault(split, torch.full((len(rows),), float("nan")))
        idx = index.cpu()
        if torch.isnan(cache[idx]).any():
            with self.reference(model) as ref:
                paired = split == "train" and self.train_paired  # a training batch: pairs
                args = batch["input_ids"], batch["attention_mask"], batch["labels"]
                cache[idx] = self.logps(ref, *args, paired=paired)[0].float().cpu()
        return cache[idx].to(batch["input_ids"].device)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        logps, n_tokens = self.logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], paired=self.train_paired
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
            if self._step_kl is None:
                raise RuntimeError("KTO: begin_step() must run before the step's micro-batches")
            kl = self._step_kl.to(logps.device)
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

    def pair_metrics(
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
        return self.pair_metrics(enc, policy, counts, ref)

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Preference accuracy of the tuned model on held-out pairs beside the base model, and sample answers.

        ``per_example`` keeps every held-out row's implicit reward (tuned and base) for the report's intervals.
        """
        t0 = time.perf_counter()
        enc = self.encoded[split]
        out: dict = {"split": split, "loss_type": self.loss_type, "beta": self.beta, "tuned": {}}
        if enc["rows"]:
            policy, counts = self.split_logps(model, enc["rows"])
            ref = self.split_reference(model, split)  # the base model's log-probs
            no_ref = self.loss_type == "orpo"
            out["tuned"] = self.pair_metrics(enc, policy, counts, None if no_ref else ref)
            out["per_example"] = self.per_example(enc, self.scores(policy, counts, None if no_ref else ref))
            if baseline:
                # ORPO's implicit reward is the model's own likelihood, which the base model has too; for the others
                # the base model is the reference, so its implicit reward is 0 for every answer (accuracy 0.5)
                out["baseline"] = self.pair_metrics(enc, ref, counts, None if no_ref else ref)
                out["baseline"].pop("loss", None)
                out["baseline"]["n"] = len(enc["examples"])
                base = self.scores(ref, counts, None if no_ref else ref)
                out["per_example"]["baseline"] = self.per_example(enc, base)["tuned"]
        out["tuned"]["n"] = len(enc["examples"])
        examples = enc["examples"][: self.cfg.sft.samples]
        tuned, base = self.sample_answers(model, [e.messages for e in examples], baseline)
        if examples:
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
        return self.stamp(out)

    @staticmethod
    def per_example(enc: dict, rewards: torch.Tensor) -> dict:
        """Every held-out row's implicit reward, as the report's intervals read them."""
        if enc["paired"]:
            chosen, rejected = rewards.chunk(2)
            return {"tuned": {"chosen": chosen.tolist(), "rejected": rejected.tolist()}}
        return {"desirable": list(enc["desirable"]), "tuned": {"reward": rewards.tolist()}}

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        return format_eval(result)


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
