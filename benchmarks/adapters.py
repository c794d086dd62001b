"""Bottleneck adapters beside LoRA: MiniLM-L6 on Rotten Tomatoes at about the same number of trainable parameters.

LoRA r=16 on every linear layer of MiniLM-L6 (hidden 384, 6 blocks) trains 663,552 adapter weights; Houlsby
adapters with reduction factor 5 (bottleneck 76, two per block) train 705,936 and Pfeiffer adapters with
reduction factor 3 (bottleneck 128, one per block) 592,896. The head (pooler + classifier, 148,610) trains in
every arm. Same data, seed and schedule for every arm: the bundled split, ``BENCH_LIMIT`` training rows
(default 3,000), the test split (``BENCH_EVAL_LIMIT`` rows, default all 2,549), 1 epoch, batch 32, max length
64, linear decay without warmup. Each method runs at its usual learning rate (LoRA 5e-4 as in
configs/classify-minilm-lora.yaml; bottleneck adapters 1e-3) and LoRA and Houlsby also at each other's.
Each arm runs in its own process.

    nice -n 15 python benchmarks/adapters.py              # every arm, writes results/adapters.{json,md}
    nice -n 15 python benchmarks/adapters.py --resume     # only the arms not yet in results/adapters.json
    nice -n 15 python benchmarks/adapters.py houlsby      # one arm, prints its JSON
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, machine, run_isolated, write  # noqa: E402

os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")
LIMIT = int(os.environ.get("BENCH_LIMIT", "3000"))
EVAL_LIMIT = int(os.environ.get("BENCH_EVAL_LIMIT", "0")) or None  # test rows (default: all 2,549)
ARMS = {
    "lora": ({"name": "lora", "r": 16, "alpha": 32, "lora_dropout": 0.05}, 5e-4),
    "houlsby": ({"name": "houlsby", "reduction_factor": 5}, 1e-3),
    "pfeiffer": ({"name": "pfeiffer", "reduction_factor": 3}, 1e-3),
    # each method at the other's learning rate, so the comparison does not rest on the choice of lr
    "lora-lr1e-3": ({"name": "lora", "r": 16, "alpha": 32, "lora_dropout": 0.05}, 1e-3),
    "houlsby-lr5e-4": ({"name": "houlsby", "reduction_factor": 5}, 5e-4),
}


def arm(name: str) -> dict:
    import tuneforge

    method, lr = ARMS[name]
    cfg = {
        "model": {"name": "minilm-l6"},
        "data": {
            "train": "rotten-tomatoes",
            "max_length": 64,
            "validation_fraction": 0.0,
            "limit": LIMIT,
            "eval_limit": EVAL_LIMIT,
            "audit": False,
        },
        "method": method,
        "training": {
            "epochs": 1,
            "batch_size": 32,
            "lr": lr,
            "weight_decay": 0.01,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "seed": 42,
            "log_every": 20,
        },
        "eval": {"baseline": False, "report": False, "bias": False, "forgetting": False},
        "output": {"dir": "/tmp/tuneforge-bench", "name": f"adapters-{name}", "overwrite": True},
    }
    run = tuneforge.train(cfg)
    ev = json.loads((run.path / "eval.json").read_text())
    s = run.summary()
    return {
        "arm": name,
        "method": method["name"],
        "config": method,
        "lr": lr,
        "trainable_parameters": s.get("trainable_parameters") or s.get("parameters", {}).get("trainable"),
        "accuracy": ev["tuned"]["accuracy"],
        "macro_f1": ev["tuned"]["macro_f1"],
        "test_n": ev["tuned"]["n"],
        "train_seconds": s.get("train_seconds"),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ARMS:
        print(json.dumps(arm(sys.argv[1])))
        return
    done = {}  # --resume: arms already in results/adapters.json with the same settings are kept
    if "--resume" in sys.argv and (RESULTS / "adapters.json").exists():
        old = json.loads((RESULTS / "adapters.json").read_text())
        if (old.get("limit"), old.get("eval_limit")) == (LIMIT, EVAL_LIMIT):
            done = {r.get("arm", r["method"]): r for r in old["rows"]}
    rows = []
    for name in ARMS:  # the results so far are written after every arm
        rows.append(done.get(name) or run_isolated(__file__, name))
        write(
            "adapters",
            {"machine": machine(), "limit": LIMIT, "eval_limit": EVAL_LIMIT, "rows": rows},
            table(rows),
        )


def table(rows: list[dict]) -> str:
    lines = [
        f"Bottleneck adapters beside LoRA: MiniLM-L6, Rotten Tomatoes ({LIMIT} training rows, 1 epoch, batch 32, "
        f"max length 64, seed 42; test: {rows[0]['test_n']} rows) ({machine()['date']}, {machine()['cpu']})",
        "",
        "| method | settings | lr | trainable parameters (with head) | test accuracy | macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k != "name")
        lines.append(
            f"| {r['method']} | {settings} | {r['lr']:g} | {r['trainable_parameters']:,} | "
            f"{r['accuracy']:.4f} | {r['macro_f1']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
