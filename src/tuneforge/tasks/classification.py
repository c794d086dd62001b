"""Text classification: a pre-trained model with a new head sized to the labels.

Data: rows -> ``Example(text, label)`` -> token ids (tokenised once) -> padded batches.
Loss: summed cross-entropy (the loop divides by the examples in the optimizer step).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.data.bundled import DATASETS, load_bundled, resolve
from tuneforge.data.formats import Example, to_examples
from tuneforge.data.split import split, subsample
from tuneforge.errors import DataError
from tuneforge.eval.metrics import classification_metrics, majority_baseline
from tuneforge.models.load import load_classifier, load_tokenizer
from tuneforge.models.save import save_model_folder

log = logging.getLogger(__name__)


def _examples(spec: str, d) -> list[Example]:
    table, hint = resolve(spec)
    fmt = d.format if d.format != "auto" else (hint or "auto")
    if fmt not in ("auto", "classification"):
        raise DataError(
            f"{spec}: format '{fmt}' is not classification data; task 'classification' needs text and label columns."
        )
    examples, fmt = to_examples(
        table, "classification" if fmt == "classification" else "auto", d.text_column, d.label_column
    )
    if fmt != "classification":
        raise DataError(
            f"{table.path}: looks like '{fmt}' data, but task 'classification' needs a text and a label column "
            f"(data.text_column='{d.text_column}', data.label_column='{d.label_column}'; columns here: {', '.join(table.columns)})."
        )
    return examples


def load_splits(d, seed: int) -> dict[str, list[Example]]:
    """train / validation / test examples, from files or bundled splits, split off (stratified) when absent."""
    train = _examples(d.train, d)
    alias = d.train.split(":")[0]
    test = _examples(d.test, d) if d.test else None
    if test is None and alias in DATASETS and "test" in load_bundled(alias) and ":" not in d.train:
        test = _examples(f"{alias}:test", d)
    if test is None:
        train, test = split(train, d.test_fraction, seed + 1, key=lambda e: e.label)
    validation = _examples(d.validation, d) if d.validation else None
    if validation is None:
        train, validation = split(train, d.validation_fraction, seed, key=lambda e: e.label)
    train = subsample(train, d.limit, seed)
    validation = subsample(validation, d.eval_limit, seed)
    test = subsample(test, d.eval_limit, seed)
    if not train:
        raise DataError(f"{d.train}: no training examples left after splitting.")
    return {"train": train, "validation": validation, "test": test}


def label_list(d, train: list[Example]) -> list[str]:
    labels = list(d.labels) if d.labels else sorted({e.label for e in train})
    if len(labels) < 2:
        raise DataError(
            f"{d.train}: found {len(labels)} label(s) {labels}; classification needs at least two."
        )
    return labels


def check_labels(examples: list[Example], label2id: dict[str, int]) -> None:
    for e in examples:
        if e.label not in label2id:
            raise DataError(
                f"{e.source}: label '{e.label}' is not one of the labels ({', '.join(label2id)}). "
                f"Add it to data.labels, or fix or remove the row."
            )


class ClassificationTask:
    primary_metric = "accuracy"
    greater_is_better = True

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        d = cfg.data
        self.splits = splits or load_splits(d, cfg.training.seed)
        self.labels = label_list(d, self.splits["train"])
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        for exs in self.splits.values():
            check_labels(exs, self.label2id)
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.encoded = {name: self.encode(exs) for name, exs in self.splits.items()}
        train = self.encoded["train"]
        self.lengths = [len(x) for x in train["input_ids"]]
        self.counts = [1] * len(self.lengths)
        self.model = None
        if load_model:
            self.model = load_classifier(
                cfg.model.name,
                self.labels,
                cfg.model.dtype,
                cfg.model.dropout,
                pad_token_id=self.tokenizer.pad_token_id,
            )

    def encode(self, examples: list[Example]) -> dict:
        """Tokenise once; count truncated examples."""
        max_len = self.cfg.data.max_length
        if not examples:
            return {"input_ids": [], "labels": [], "truncated": 0}
        ids = self.tokenizer([e.text for e in examples], truncation=False, add_special_tokens=True)[
            "input_ids"
        ]
        truncated = sum(len(x) > max_len for x in ids)
        if truncated:
            eos = self.tokenizer.sep_token_id  # encoders end with [SEP]: keep it; causal LMs are cut plainly
            ids = [
                x if len(x) <= max_len else (x[: max_len - 1] + [eos] if eos is not None else x[:max_len])
                for x in ids
            ]
        labels = [self.label2id.get(e.label, -1) for e in examples]
        return {"input_ids": ids, "labels": labels, "truncated": truncated}

    def data_summary(self) -> dict:
        return {
            name: {"examples": len(enc["labels"]), "truncated": enc["truncated"]}
            for name, enc in self.encoded.items()
        }

    def collate_encoded(self, enc: dict, indices: list[int]) -> dict[str, torch.Tensor]:
        seqs = [enc["input_ids"][i] for i in indices]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):  # right padding
            input_ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([enc["labels"][i] for i in indices], dtype=torch.long),
        }

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.collate_encoded(self.encoded["train"], indices)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, C)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), len(batch["labels"])

    @torch.no_grad()
    def predict_encoded(self, model, enc: dict) -> tuple[list[int], torch.Tensor, float]:
        """Predicted ids, probabilities (N, C) and mean loss over ``enc``."""
        model.eval()
        bs = self.cfg.eval.batch_size
        order = sorted(range(len(enc["input_ids"])), key=lambda i: len(enc["input_ids"][i]))
        probs = torch.zeros(len(order), len(self.labels))
        device = next(model.parameters()).device
        loss = 0.0
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = {k: v.to(device) for k, v in self.collate_encoded(enc, idx).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            if (batch["labels"] >= 0).all():
                loss += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            probs[idx] = logits.softmax(-1).cpu()
        return probs.argmax(-1).tolist(), probs, loss / max(1, len(order))

    def evaluate(self, model, split: str) -> dict[str, float]:
        enc = self.encoded.get(split)
        if not enc or not enc["labels"]:
            return {}
        pred, _, loss = self.predict_encoded(model, enc)
        m = classification_metrics(enc["labels"], pred, self.labels)
        return {"loss": round(loss, 6), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def full_evaluation(self, model, split: str = "test", baseline: bool = True) -> dict:
        enc = self.encoded[split]
        pred, probs, loss = self.predict_encoded(model, enc)
        out = {
            "split": split,
            "tuned": {"loss": loss, **classification_metrics(enc["labels"], pred, self.labels)},
        }
        out["predictions"] = {
            "y_true": enc["labels"],
            "y_pred": pred,
            "confidence": probs.max(-1).values.tolist(),
        }
        if baseline:
            out["baseline"] = majority_baseline(self.encoded["train"]["labels"], enc["labels"], self.labels)
        return out

    def save_model(self, model, out: Path) -> None:
        save_model_folder(model, self.tokenizer, out, labels=self.labels)  # labels.json beside an adapter
