"""Text classification: a pre-trained model with a new head sized to the labels.

Data: rows -> ``Example(text, label)`` -> token ids (tokenised once) -> padded batches.
Loss: summed cross-entropy (the loop divides by the examples in the optimizer step).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneforge.data.bundled import resolve
from tuneforge.data.formats import Example, to_examples
from tuneforge.errors import DataError
from tuneforge.eval.metrics import classification_metrics, majority_baseline
from tuneforge.models.load import load_classifier, load_tokenizer
from tuneforge.models.save import save_model_folder
from tuneforge.tasks.base import Metric, Task, load_splits

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


class ClassificationTask(Task):
    name = "classification"
    kind = "classifier"
    result = "classification"
    metrics = (
        Metric("accuracy", True, "share of validation examples labelled right"),
        Metric("macro_f1", True, "F1 averaged over labels (each label counts the same)"),
        Metric("loss", False, "mean cross-entropy"),
    )
    probes = frozenset({"lengths", "bias"})
    methods = ("full", "freeze", "unfreeze", "lora", "dora", "ia3", "houlsby", "pfeiffer")
    data_format = "classification"

    def __init__(self, cfg, splits: dict[str, list[Example]] | None = None, load_model: bool = True):
        self.cfg = cfg
        d = cfg.data
        self.user_split = True
        if splits is None:
            read = lambda spec: (_examples(spec, d), "classification")  # noqa: E731
            splits, _, self.user_split = load_splits(d, cfg.training.seed, read, key=lambda e: e.label)
        self.splits = splits
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

    def read_file(self, spec: str) -> list[Example]:
        return _examples(spec, self.cfg.data)

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
        return self.stamp(out)

    def save_model(self, model, out: Path, notes: dict | None = None) -> None:
        save_model_folder(
            model, self.tokenizer, out, labels=self.labels, notes=notes
        )  # labels.json beside an adapter

    @classmethod
    def load_model(cls, model_dir: Path, cfg=None):
        return load_sequence_classifier(Path(model_dir))

    @staticmethod
    def format_eval(result: dict) -> list[str]:
        tuned, base = result["tuned"], result.get("baseline")
        lines = [f"{result['split']} split: {result.get('data', '')}"]
        lines.append(
            f"  tuned model: accuracy {tuned['accuracy']:.4f}, macro-F1 {tuned['macro_f1']:.4f} ({tuned['n']} examples)"
        )
        if base:
            lines.append(
                f"  baseline (always '{base['predicts']}'): accuracy {base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f}"
            )
        per = tuned.get("per_class") or {}
        if 0 < len(per) <= 25:
            lines.append("  per class (tuned): label precision recall F1 support")
            lines += [
                f"    {k}\t{v['precision']:.3f}\t{v['recall']:.3f}\t{v['f1']:.3f}\t{v['support']}"
                for k, v in per.items()
            ]
        return lines


def load_sequence_classifier(model_dir: Path):
    """A classifier folder, or a PEFT adapter on its base with the label set saved beside it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        adapter = json.loads((model_dir / "adapter_config.json").read_text())
        labels = json.loads((model_dir / "labels.json").read_text())
        base_path = adapter["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        if getattr(config, "pad_token_id", None) is None:
            from transformers import AutoTokenizer

            config.pad_token_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        base = AutoModelForSequenceClassification.from_pretrained(base_path, config=config)
        return PeftModel.from_pretrained(base, model_dir)
    return AutoModelForSequenceClassification.from_pretrained(model_dir)
