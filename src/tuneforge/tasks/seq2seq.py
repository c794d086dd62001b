"""Text-to-text fine-tuning (summarisation, translation, headline writing, ...) of an encoder-decoder model.

Model: ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, a saved ``EncoderDecoderModel``), or with
``model.seq2seq_warm_start`` an encoder-decoder built from a BERT-like encoder such as the bundled MiniLM
(``tuneforge.models.seq2seq``).

Data: rows with a source and a target column (``seq2seq.source_column`` / ``target_column``, default
``source``/``target``), or any chat format (the first user turn is the source, the last assistant turn the
target). Every example becomes a two-turn conversation, so the data audit checks it as it checks
prompt/completion rows.

Loss: summed cross-entropy over the target tokens only (the source is the encoder's input, never a target);
``counts`` are the target tokens, so the loop's step mean is a mean over target tokens.

Evaluation: loss and perplexity of the target tokens, base beside tuned; then the base and the tuned model
write outputs for the test sources, scored with ROUGE, chrF and BLEU (or exact match and per-label F1 when
the targets are short labels) with bootstrap intervals (``tuneforge.eval.textgen``).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.config import PEFT_METHODS
from tuneforge.data.bundled import resolve
from tuneforge.data.formats import Example, as_text, to_examples
from tuneforge.errors import ConfigError, DataError, TuneforgeError
from tuneforge.eval import textgen
from tuneforge.models.load import load_tokenizer
from tuneforge.models.save import save_model_folder
from tuneforge.models.seq2seq import (
    IGNORE,
    check_seq2seq_model,
    generate_seq2seq,
    load_seq2seq,
    load_seq2seq_dir,
    seq2seq_loss,
)
from tuneforge.tasks.base import Metric, Task, load_splits
from tuneforge.tasks.lm import adapter_off, eval_lines
from tuneforge.utils import console

CHAT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")


@dataclass
class EncodedPair:
    """One example as token ids: the encoder's input and the decoder's targets."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    source: str = ""


def pair_of(e: Example) -> tuple[str, str]:
    """(source, target) of an example: its first user turn and its last assistant turn."""
    users = [m["content"] for m in e.messages if m["role"] == "user"]
    answers = [m["content"] for m in e.messages if m["role"] == "assistant"]
    if not users or not answers:
        raise DataError(
            f"{e.source}: a seq2seq example needs a source and a target (a user turn and an assistant turn)."
        )
    return users[0], answers[-1]


def read_pairs(spec: str, cfg) -> tuple[list[Example], str]:
    """Examples of a file or bundled split: source/target rows, or chat rows; each a user and an assistant turn."""
    d, s = cfg.data, cfg.seq2seq
    table, hint = resolve(spec)
    cols = set(table.columns)
    if d.format == "auto" and {s.source_column, s.target_column} <= cols:
        examples = []
        for i, row in enumerate(table.rows):
            where = table.where(i)
            src, tgt = (row.get(c) for c in (s.source_column, s.target_column))
            if src is None or tgt is None or not str(src).strip() or not str(tgt).strip():
                empty = s.source_column if src is None or not str(src).strip() else s.target_column
                raise DataError(
                    f"{where}: field '{empty}' is empty. Fill it in or delete the row (`tuneforge data prepare` "
                    f"drops such rows with a report)."
                )
            src, tgt = as_text(src, where, s.source_column), as_text(tgt, where, s.target_column)
            messages = [{"role": "user", "content": src}, {"role": "assistant", "content": tgt}]
            examples.append(Example(messages=messages, source=where))
        return examples, "prompt_completion"
    fmt = d.format if d.format != "auto" else (hint or "auto")
    if fmt == "auto" and not ({"messages", "conversations", "instruction", "prompt"} & cols):
        raise DataError(
            f"{table.path}: no '{s.source_column}' and '{s.target_column}' columns (columns: "
            f"{', '.join(sorted(cols))}). Name them with seq2seq.source_column / seq2seq.target_column, or give "
            f"chat rows (messages, prompt/completion, alpaca)."
        )
    examples, fmt = to_examples(table, fmt, d.text_column, d.label_column)
    if fmt not in CHAT_FORMATS:
        raise DataError(
            f"{table.path}: '{fmt}' rows cannot train task seq2seq; it needs source/target columns "
            f"({s.source_column}, {s.target_column}) or chat rows ({', '.join(CHAT_FORMATS)})."
        )
    out = []
    for e in examples:
        src, tgt = pair_of(e)
        out.append(
            Example(
                messages=[{"role": "user", "content": src}, {"role": "assistant", "content": tgt}],
                source=e.source,
            )
        )
    return out, fmt


class Seq2SeqTask(Task):
    name = "seq2seq"
    kind = "language_model"
    result = "language_model"
    metrics = (
        Metric("loss", False, "mean cross-entropy of the target tokens"),
        Metric("perplexity", False, "exp(loss)"),
    )
    sections = ("seq2seq",)
    probes = frozenset({"lengths"})
    encoder_decoder = True
    # no gradual unfreezing: it unfreezes the encoder's blocks from the top while the whole decoder waits for
    # the last stage, the wrong order for an encoder-decoder. Adapters (PEFT's SEQ_2_SEQ_LM task type) refuse
    # a warm start, whose new cross-attention must train (check_config).
    methods = ("full", "freeze", "lora", "dora", "ia3", "prefix", "prompt")

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        m = cfg.method.name
        if cfg.model.seq2seq_warm_start and m in PEFT_METHODS:
            raise ConfigError(
                f"method '{m}' with model.seq2seq_warm_start: the warm-started decoder's cross-attention is new "
                f"(random) and must train with the rest, and an adapter would leave it untrained and unsaved. "
                f"Use method full or freeze (method.freeze_layers), or start from a T5/BART model."
            )

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        self.user_split = True
        self.data_format = "prompt_completion"
        if splits is None:
            read = lambda spec: read_pairs(spec, cfg)  # noqa: E731
            splits, self.data_format, self.user_split = load_splits(cfg.data, cfg.training.seed, read)
        self.splits = splits
        check_seq2seq_model(cfg.model.name, cfg.model.seq2seq_warm_start)
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.model = self.build_model(cfg, self.tokenizer) if load_model else None
        self.encoded = {name: self.encode(exs) for name, exs in splits.items()}
        self.rows = self.encoded["train"]
        if not self.rows:
            raise DataError(f"{cfg.data.train}: no training examples.")
        self.lengths = [len(r.input_ids) + len(r.labels) for r in self.rows]
        self.counts = [len(r.labels) for r in self.rows]

    @staticmethod
    def build_model(cfg, tokenizer, dropout: bool = True):
        """The model before tuning; a warm start's new cross-attention is drawn from the run's seed, so the base
        model of the report is exactly the model training started from."""
        with torch.random.fork_rng():
            torch.manual_seed(cfg.training.seed)
            return load_seq2seq(
                cfg.model.name,
                tokenizer,
                cfg.model.dtype,
                cfg.model.dropout if dropout else None,
                cfg.model.seq2seq_warm_start,
            )

    # ---- data
    def read_file(self, spec: str) -> list[Example]:
        return read_pairs(spec, self.cfg)[0]

    def source_text(self, text: str) -> str:
        return self.cfg.seq2seq.source_prefix + text

    def encode(self, examples: list[Example]) -> list[EncodedPair]:
        """Source ids (truncated to data.max_length) and target ids with the end token (to
        seq2seq.max_target_length), both with the tokenizer's special tokens."""
        d, s, tok = self.cfg.data, self.cfg.seq2seq, self.tokenizer
        pairs = [pair_of(e) for e in examples]
        if not pairs:
            return []
        if not hasattr(self, "_drop"):
            self._drop = self.target_start()
        src = tok([self.source_text(p[0]) for p in pairs], truncation=False)["input_ids"]
        tgt = tok(text_target=[p[1] for p in pairs], truncation=False)["input_ids"]
        out = []
        for e, a, b in zip(examples, src, tgt):
            cut = len(a) > d.max_length or len(b) > s.max_target_length
            a = a[: d.max_length - 1] + a[-1:] if len(a) > d.max_length else a  # keep the end token
            b = b[: s.max_target_length - 1] + b[-1:] if len(b) > s.max_target_length else b
            labels = b[1:] if self._drop is not None and b and b[0] == self._drop else b
            out.append(EncodedPair(a, labels, cut, e.source))
        return out

    def target_start(self) -> int | None:
        """The token a target must not begin with: a BERT tokenizer starts every text with [CLS], which a
        BERT2BERT decoder is already given as its start token, so the decoder learns the text and [SEP], not a
        second [CLS]. (T5 adds no start token; BART's <s> differs from its decoder start </s> and is kept.)"""
        from transformers import AutoConfig

        from tuneforge.models.load import resolve_model

        cls_id = self.tokenizer.cls_token_id
        if cls_id is None:
            return None
        if self.cfg.model.seq2seq_warm_start:
            return cls_id
        path = resolve_model(self.cfg.model.name)
        if not (path / "config.json").exists():
            return None
        start = getattr(AutoConfig.from_pretrained(path), "decoder_start_token_id", None)
        return cls_id if start == cls_id else None

    def data_summary(self) -> dict:
        out: dict = {
            name: {
                "examples": len(enc),
                "truncated": sum(e.truncated for e in enc),
                "source_tokens": sum(len(e.input_ids) for e in enc),
                "target_tokens": sum(len(e.labels) for e in enc),
            }
            for name, enc in self.encoded.items()
        }
        out["format"] = self.data_format
        return out

    def preflight(self) -> None:
        """Print one training pair as the model sees it, and how many pairs were truncated."""
        e, tok = self.rows[0], self.tokenizer
        console.print(f"[bold]pre-flight:[/bold] one training pair ({e.source}):", highlight=False)
        console.print(f"  source: {tok.decode(e.input_ids)}", highlight=False, markup=False)
        console.print(f"  target (trained tokens): {tok.decode(e.labels)}", highlight=False, markup=False)
        cut = sum(r.truncated for r in self.rows)
        if cut:
            console.print(
                f"[bold yellow]truncated:[/bold yellow] {cut} of {len(self.rows)} training pairs exceed "
                f"data.max_length={self.cfg.data.max_length} (source) or seq2seq.max_target_length="
                f"{self.cfg.seq2seq.max_target_length} (target)",
                highlight=False,
            )

    # ---- training
    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = [self.rows[i] for i in indices]
        return pad_pairs(rows, self.tokenizer.pad_token_id)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        return seq2seq_loss(model, batch)

    @torch.no_grad()
    def split_nll(self, model, split: str) -> tuple[float, int]:
        rows = self.encoded.get(split) or []
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        bs = self.cfg.eval.batch_size
        for start in range(0, len(rows), bs):
            batch = pad_pairs(rows[start : start + bs], self.tokenizer.pad_token_id)
            loss, n = seq2seq_loss(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + float(loss), count + n
        model.train(was_training)
        return total, count

    def evaluate(self, model, split: str) -> dict[str, float]:
        total, n = self.split_nll(model, split)
        if not n:
            return {}
        return {"loss": round(total / n, 6), "perplexity": round(math.exp(min(total / n, 50)), 4)}

    # ---- the model
    @classmethod
    def load_model(cls, model_dir: Path, cfg):
        return load_seq2seq_dir(Path(model_dir), cfg)

    def save_model(self, model, out: Path, notes: dict | None = None) -> None:
        save_model_folder(model, self.tokenizer, out, generation_config=True, notes=notes)

    def reference(self, model):
        return base_model(model, self.cfg, self.tokenizer)

    def generate(self, model, sources: list[str]) -> list[str]:
        s = self.cfg.seq2seq
        return generate_seq2seq(
            model,
            self.tokenizer,
            [self.source_text(x) for x in sources],
            max_new_tokens=s.max_new_tokens,
            max_length=self.cfg.data.max_length,
            num_beams=s.num_beams,
            batch_size=min(self.cfg.eval.batch_size, 32),
        )

    # ---- after training
    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        """Target-token loss and perplexity of the tuned (and base) model on validation and test; outputs of
        both for the test sources, scored (``generation``), and a few shown side by side (``samples``)."""
        t0 = time.perf_counter()
        e = self.cfg.eval
        out: dict = {"split": split, "tuned": {}, "baseline": {} if baseline else None}
        for name in ("validation", "test"):
            m = self.evaluate(model, name)
            if m:
                out["tuned"][name] = m
        pairs = [pair_of(x) for x in self.splits.get(split) or []]
        k = len(pairs) if e.generation_metrics is True else self.cfg.seq2seq.samples
        if e.generation_metrics == "auto":
            k = max(k, e.max_generate)
        pairs = pairs[:k]
        sources = [p[0] for p in pairs]
        tuned = self.generate(model, sources)
        base: list[str] | None = None
        if baseline:
            with self.reference(model) as ref:
                for name in ("validation", "test"):
                    m = self.evaluate(ref, name)
                    if m:
                        out["baseline"][name] = m
                base = self.generate(ref, sources)
            for name, m in out["tuned"].items():
                if name in out["baseline"]:
                    b = out["baseline"][name]["perplexity"]
                    m["perplexity_change"] = round((m["perplexity"] - b) / b, 4) if b else None
        if e.generation_metrics is not False and pairs:
            out["generation"] = textgen.generation_metrics(
                [p[1] for p in pairs], tuned, base, e.bootstrap_samples
            )
        out["samples"] = [
            {"prompt": src, "reference": ref, "base": base[i] if base else None, "tuned": tuned[i]}
            for i, (src, ref) in enumerate(pairs[: self.cfg.seq2seq.samples])
        ]
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return self.stamp(out)

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        return eval_lines(result, "target", "source")

    # ---- what Run does with a seq2seq run (generate, predict)
    @classmethod
    def generate_for_run(
        cls, model, tokenizer, cfg, prompts: list, max_new_tokens=None, temperature=None, base=False
    ) -> list[str]:
        """Outputs for sources (strings, or conversations whose first user turn is the source)."""
        s = cfg.seq2seq
        n = s.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = 0.0 if temperature is None else temperature
        if n < 1 or not math.isfinite(temp) or temp < 0:
            raise TuneforgeError(
                f"generate: max_new_tokens must be at least 1 and temperature 0 or more, got {n} and {temp}."
            )
        sources = [
            p if isinstance(p, str) else next(m["content"] for m in p if m["role"] == "user") for p in prompts
        ]
        sources = [s.source_prefix + x for x in sources]
        kw = dict(max_new_tokens=n, max_length=cfg.data.max_length, num_beams=s.num_beams, temperature=temp)
        if not base:
            return generate_seq2seq(model, tokenizer, sources, **kw)
        with base_model(model, cfg, tokenizer) as b:
            return generate_seq2seq(b, tokenizer, sources, **kw)

    @classmethod
    def predict_for_run(cls, model, tokenizer, cfg, texts: list[str]) -> list[dict]:
        """``tuneforge predict`` on a seq2seq run: the output text for each input."""
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise TuneforgeError(
                f"predict: text {empty[0] + 1} of {len(texts)} is empty; give the text to rewrite."
            )
        return [{"output": o} for o in cls.generate_for_run(model, tokenizer, cfg, texts)]


def pad_pairs(rows: list[EncodedPair], pad: int) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask (B, S) padded with ``pad``; labels (B, T) padded with -100."""
    s, t = max(len(r.input_ids) for r in rows), max(len(r.labels) for r in rows)
    ids = torch.full((len(rows), s), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), s), dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, : len(r.input_ids)] = 1
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@contextmanager
def base_model(model, cfg, tokenizer):
    """The model before tuning beside ``model``: the adapter switched off, else the base built again (a warm
    start from the run's seed, so exactly the starting model)."""
    raw = getattr(model, "module", model)
    device = next(raw.parameters()).device
    if hasattr(raw, "disable_adapter"):
        with adapter_off(raw) as base:
            yield base
    else:
        yield Seq2SeqTask.build_model(cfg, tokenizer, dropout=False).to(device).eval()
