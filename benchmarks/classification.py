"""Classification workload: MiniLM-L6 full fine-tuning on Rotten Tomatoes, tuneforge vs the transformers Trainer.

Same recipe on both: the bundled fixed, de-duplicated 80/20 split (10,196 train / 2,549 test), seed 42, 1 epoch,
batch 32, lr 5e-5, linear decay, weight decay 0.01, max length 128, fp32. Each arm runs in its own
process; a third arm trains the head only (`freeze`, lr 1e-3) to show what the encoder's own training adds.
Reports test accuracy, macro-F1, training examples/s and peak RSS.

    python benchmarks/classification.py            # both arms, writes results/classification.{json,md}
    python benchmarks/classification.py trainer    # one arm, prints its JSON
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, peak_rss_mb, run_isolated, write  # noqa: E402

os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")
LIMIT = int(os.environ.get("BENCH_LIMIT", "0")) or None  # a smaller run for a quick look


def arm_tuneforge(method: str = "full", lr: float = 5e-5) -> dict:
    import tuneforge

    cfg = {
        "model": {"name": "minilm-l6"},
        "data": {
            "train": "rotten-tomatoes",
            "max_length": 128,
            "validation_fraction": 0.0,
            "limit": LIMIT,
            "audit": False,
        },
        "method": {"name": method},
        "training": {
            "epochs": 1,
            "batch_size": 32,
            "lr": lr,
            "weight_decay": 0.01,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "seed": 42,
            "log_every": 50,
        },
        "eval": {"baseline": True, "report": False, "bias": False},
        "output": {"dir": "/tmp/tuneforge-bench", "name": f"classification-{method}", "overwrite": True},
    }
    run = tuneforge.train(cfg)
    ev = json.loads((run.path / "eval.json").read_text())
    s = run.summary()
    return {
        "tool": f"tuneforge {method} ({s['precision']})",
        "accuracy": ev["tuned"]["accuracy"],
        "macro_f1": ev["tuned"]["macro_f1"],
        "train_examples_per_s": s["examples_seen"] / s["train_seconds"],
        "train_seconds": s["train_seconds"],
        "peak_rss_mb": s["peak_rss_mb"],
    }


def arm_trainer() -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tuneforge.data.bundled import load_bundled
    from tuneforge.models.load import resolve_model

    torch.manual_seed(42)
    splits = load_bundled("rotten-tomatoes")
    labels = ["fresh", "rotten"]
    path = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    train_rows = splits["train"].rows[:LIMIT] if LIMIT else splits["train"].rows

    class DS(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.enc = tok([r["text"] for r in rows], truncation=True, max_length=128)
            self.y = [labels.index(r["label"]) for r in rows]

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {
                "input_ids": self.enc["input_ids"][i],
                "attention_mask": self.enc["attention_mask"][i],
                "labels": self.y[i],
            }

    train, test = DS(train_rows), DS(splits["test"].rows)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = TrainingArguments(
        output_dir="/tmp/trainer-bench",
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=5e-5,
        weight_decay=0.01,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        seed=42,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = trainer.predict(test)
    y_pred = np.argmax(pred.predictions, -1)
    from sklearn.metrics import f1_score

    return {
        "tool": "transformers Trainer",
        "accuracy": float((y_pred == np.array(test.y)).mean()),
        "macro_f1": float(f1_score(test.y, y_pred, average="macro")),
        "train_examples_per_s": len(train) / seconds,
        "train_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    if len(sys.argv) > 1:
        arms = {
            "tuneforge": arm_tuneforge,
            "trainer": arm_trainer,
            "tuneforge-freeze": lambda: arm_tuneforge("freeze", 1e-3),
        }  # head only: the weak baseline
        print(json.dumps(arms[sys.argv[1]]()))
        return
    rows = [
        run_isolated(__file__, "tuneforge"),
        run_isolated(__file__, "trainer"),
        run_isolated(__file__, "tuneforge-freeze"),
    ]
    m = machine()
    ratio = rows[0]["train_examples_per_s"] / rows[1]["train_examples_per_s"]
    lines = [
        f"Classification: MiniLM-L6 full fine-tuning, Rotten Tomatoes, 1 epoch, batch 32, max length 128; Trainer in fp32, tuneforge with its defaults "
        f"({m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']})",
        "",
        "| tool | test accuracy | macro-F1 | train examples/s | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['train_examples_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lines.append(
        f"\ntuneforge / Trainer throughput: {ratio:.2f}x; accuracy difference "
        f"{100 * (rows[0]['accuracy'] - rows[1]['accuracy']):+.2f} points."
    )
    write(
        "classification", {"machine": m, "limit": LIMIT, "results": rows, "speedup": ratio}, "\n".join(lines)
    )


if __name__ == "__main__":
    main()
