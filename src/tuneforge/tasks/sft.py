"""Instruction fine-tuning (SFT) of a causal LM on chat data, with the model's chat template.

Data: rows (messages / ShareGPT / Alpaca / prompt-completion / raw text) -> ``Example`` -> token ids
and labels (``tuneforge.data.chat``: loss on assistant tokens by default) -> padded batches, or packed
rows (``sft.packing``). Loss: summed cross-entropy over loss tokens; ``counts`` are the loss tokens of
each training row, so the loop's step mean is a mean over tokens and accumulation stays exact.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from tuneforge.data.bundled import resolve
from tuneforge.data.chat import EncodedChat, check_masks, encode_chat, encode_text, show_trained
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.packing import pack, packed_batch, pad_batch, plan_packs
from tuneforge.errors import DataError
from tuneforge.eval import textgen
from tuneforge.eval.perplexity import nll
from tuneforge.tasks.base import Metric, load_splits
from tuneforge.tasks.lm import LMTask, eval_lines
from tuneforge.train.lm_loss import lm_loss
from tuneforge.utils import console

log = logging.getLogger(__name__)

SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")


def read_examples(spec: str, d) -> tuple[list[Example], str]:
    """Examples of a file or bundled split in one of the chat formats (or raw text)."""
    table, hint = resolve(spec)
    fmt = d.format if d.format != "auto" else (hint or "auto")
    if fmt == "classification" and d.format == "auto":
        fmt = "auto"
    examples, fmt = to_examples(table, fmt, d.text_column, d.label_column)
    if fmt == "classification":
        raise DataError(
            f"{table.path}: rows with a text and a label ('{d.text_column}', '{d.label_column}') are classification "
            f"data; task 'sft' would train on the text and drop every label. Use task: classification, or to train "
            f"a language model on the text alone, remove the label column or set data.format=text."
        )
    if fmt not in SFT_FORMATS:
        raise DataError(
            f"{table.path}: '{fmt}' data cannot train task 'sft'; it needs one of {', '.join(SFT_FORMATS)} "
            f"(preference pairs train with task dpo or reward)."
        )
    return examples, fmt


def loss_count(e: EncodedChat) -> int:
    """Loss tokens of a row as the loss counts them (the first position is never a target)."""
    return sum(label != -100 for label in e.labels[1:])


class SFTTask(LMTask):
    name = "sft"
    kind = "language_model"
    result = "language_model"
    metrics = (
        Metric("loss", False, "mean cross-entropy of the trained (answer) tokens"),
        Metric("perplexity", False, "exp(loss)"),
    )

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        d, s = cfg.data, cfg.sft
        self.user_split = True
        if splits is None:
            read = lambda spec: read_examples(spec, d)  # noqa: E731
            splits, self.data_format, self.user_split = load_splits(d, cfg.training.seed, read)
        else:
            self.data_format = "text" if all(not e.messages for e in splits["train"]) else "messages"
        self.splits = splits
        self.setup_lm(load_model, template=self.data_format != "text")
        self.encoded = {name: self.encode(exs) for name, exs in splits.items()}
        dropped = [e for e in self.encoded["train"] if loss_count(e) == 0]
        if dropped and len(dropped) < len(self.encoded["train"]):
            log.warning(
                "%d training examples have no loss token left after truncation (e.g. %s) and are skipped",
                len(dropped),
                dropped[0].source,
            )
        self.mask = check_masks(self.tokenizer, self.encoded["train"], f"{d.train} (training split)")
        train = [e for e in self.encoded["train"] if loss_count(e) > 0]
        self.packs = plan_packs([len(e.input_ids) for e in train], d.max_length) if s.packing else None
        self.rows = [pack([train[i] for i in p]) for p in self.packs] if self.packs else train
        self.lengths = [len(r.input_ids) for r in self.rows]
        self.counts = [loss_count(r) for r in self.rows]
        self.chunked_loss = s.fast_loss  # the memory estimate: one chunk of logits at a time

    # ---- data
    def read_file(self, spec: str) -> list[Example]:
        """Examples of another file or bundled split (for ``tuneforge eval RUN --data FILE``)."""
        return read_examples(spec, self.cfg.data)[0]

    def encode(self, examples: list[Example]) -> list[EncodedChat]:
        """Tokenise once, with the chat template and loss labels."""
        d, s = self.cfg.data, self.cfg.sft
        out = []
        for e in examples:
            if e.messages:
                messages = e.messages
                if s.system_prompt and messages[0]["role"] != "system":
                    messages = [{"role": "system", "content": s.system_prompt}, *messages]
                out.append(encode_chat(self.tokenizer, messages, d.max_length, s.train_on_inputs, e.source))
            elif e.text is not None:
                out.append(encode_text(self.tokenizer, e.text, d.max_length, e.source))
            else:
                raise DataError(f"{e.source}: no conversation or text in this example.")
        return out

    def data_summary(self) -> dict:
        out = {
            name: {
                "examples": len(enc),
                "truncated": sum(e.truncated for e in enc),
                "tokens": sum(len(e.input_ids) for e in enc),
                "loss_tokens": sum(loss_count(e) for e in enc),
            }
            for name, enc in self.encoded.items()
        }
        out["format"] = self.data_format
        out["loss_fraction"] = round(self.mask.loss_fraction, 4)
        if self.packs is not None:
            fill = sum(self.lengths) / (len(self.rows) * self.cfg.data.max_length)
            out["packing"] = {"rows": len(self.rows), "fill": round(fill, 4)}
        return out

    def preflight(self) -> str:  # type: ignore[override]
        """Print one rendered training example with its trained tokens marked, and the loss fraction."""
        example = next(e for e in self.encoded["train"] if loss_count(e) > 0)
        color = console.is_terminal
        marked = "[bold green]trained tokens[/bold green]" if color else "trained tokens ⟦marked⟧"
        console.print(f"[bold]pre-flight:[/bold] one training example, {marked} ({example.source}):")
        console.print(show_trained(self.tokenizer, example, markup=color), highlight=False, markup=color)
        console.print(f"[bold]loss mask:[/bold] {self.mask.headline()}")
        if self.packs is not None:
            summary = self.data_summary()["packing"]
            console.print(
                f"[bold]packing:[/bold] {len(self.encoded['train'])} examples in {summary['rows']} rows of "
                f"{self.cfg.data.max_length} tokens ({100 * summary['fill']:.1f}% filled)"
            )
        return show_trained(self.tokenizer, example, markup=False)

    # ---- training
    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in indices]
        pad = self.tokenizer.pad_token_id
        return packed_batch(rows, pad) if self.packs is not None else pad_batch(rows, pad)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        return lm_loss(model, batch, positions_only=self.cfg.sft.fast_loss)

    def split_nll(self, model, split: str) -> tuple[float, int]:
        return nll(model, self.tokenizer, self.encoded.get(split) or [], self.cfg.eval.batch_size)

    def evaluate(self, model, split: str) -> dict[str, float]:
        total, n = self.split_nll(model, split)
        if not n:
            return {}
        return {"loss": round(total / n, 6), "perplexity": round(math.exp(total / n), 4)}

    # ---- after training
    def held_out_prompts(self, split: str, k: int) -> list[tuple[list[dict], str]]:
        """(conversation up to the last answer, that answer) for the first ``k`` chat examples of ``split``."""
        out = []
        for e in self.splits.get(split) or []:
            last = max((i for i, m in enumerate(e.messages) if m["role"] == "assistant"), default=0)
            if last:
                out.append((e.messages[:last], e.messages[last]["content"]))
            if len(out) == k:
                break
        return out

    def answer_count(self) -> int:
        """Held-out prompts to answer: the samples shown, or (eval.generation_metrics) those scored too."""
        e, shown = self.cfg.eval, self.cfg.sft.samples
        if e.generation_metrics is True:
            return max(shown, len(self.splits.get("test") or []))
        return max(shown, e.max_generate) if e.generation_metrics == "auto" else shown

    def answer(self, model, convs: list) -> list[str]:
        """Answers to held-out conversations, for the samples and the generation metrics. One place to switch
        the generation path (now ``tuneforge.models.generate``'s batched generate, greedy by default)."""
        return self.generate(model, convs)

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Perplexity of the tuned (and base) model on validation and test; answers of both to held-out prompts,
        scored against the reference answers (``generation``) and a few shown side by side (``samples``)."""
        t0 = time.perf_counter()
        out: dict = {"split": split, "tuned": {}, "baseline": {} if baseline else None}
        for name in ("validation", "test"):
            m = self.evaluate(model, name)
            if m:
                out["tuned"][name] = m
        prompts = self.held_out_prompts(split, self.answer_count())
        convs = [p for p, _ in prompts]
        tuned_answers = self.answer(model, convs)
        base_answers: list[str | None] = [None] * len(convs)
        if baseline:
            with self.reference(model) as base:  # loaded at most once
                for name in ("validation", "test"):
                    m = self.evaluate(base, name)
                    if m:
                        out["baseline"][name] = m
                base_answers = self.answer(base, convs)
            for name, m in out["tuned"].items():
                if name in out["baseline"]:
                    b = out["baseline"][name]["perplexity"]
                    m["perplexity_change"] = round((m["perplexity"] - b) / b, 4)
        if self.cfg.eval.generation_metrics is not False and prompts:
            out["generation"] = textgen.generation_metrics(
                [ref for _, ref in prompts],
                tuned_answers,
                [b or "" for b in base_answers] if baseline else None,
                self.cfg.eval.bootstrap_samples,
            )
        out["samples"] = [
            {"prompt": conv[-1]["content"], "reference": ref, "base": b, "tuned": a}
            for (conv, ref), a, b in list(zip(prompts, tuned_answers, base_answers))[: self.cfg.sft.samples]
        ]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return self.stamp(out)

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        """Lines that summarise an SFT eval.json: perplexity base vs tuned, generation metrics, samples."""
        return eval_lines(result, "answer", "prompt")
