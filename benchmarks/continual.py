"""Two-stage update of MiniLM (docs/continual.md), and counterfactual augmentation on Rotten Tomatoes.

Stage 1 tunes minilm-l6 on Rotten Tomatoes; stage 2 updates it on 20 Newsgroups (new labels) with no guard,
with replay, with L2-SP and with EWC. Recorded: Rotten Tomatoes test accuracy before/after (continual.json,
with 95% intervals) beside the new task's test accuracy. Then Rotten Tomatoes with and without
data.counterfactual_augmentation: the bias probe's gender flip rate and the test accuracy.

Run alone (one training at a time), e.g.:
    nice -n 15 .venv/bin/python benchmarks/continual.py            # the recorded setting
    nice -n 15 .venv/bin/python benchmarks/continual.py --quick    # a smoke test of the script
Writes benchmarks/results/continual.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tuneforge


def base(out: Path, name: str, dataset: str, limit: int, epochs: float, method: str, **extra) -> dict:
    cfg = {
        "task": "classification",
        "model": {"name": "minilm-l6"},
        "data": {"train": dataset, "limit": limit, "eval_limit": 500, "max_length": 48, "audit": False},
        "method": {"name": method},
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 1e-4 if method == "full" else 5e-4,
            "compile": "false",
        },
        "eval": {"bootstrap_samples": 1000, "baselines": "none", "bias": False},
        "output": {"dir": str(out), "name": name, "overwrite": True},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def train(cfg: dict):
    """Train, or reuse the finished run of the same name (so a stopped benchmark continues where it was)."""
    from tuneforge.run import Run

    path = Path(cfg["output"]["dir"]) / cfg["output"]["name"]
    if (path / "run.json").exists() and json.loads((path / "run.json").read_text()).get("finished"):
        return Run(path)
    return tuneforge.train(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny limits, to check the script runs")
    ap.add_argument("--method", default="full", choices=("full", "lora"))
    ap.add_argument("--out", default="runs/bench-continual", help="run folders (git-ignored)")
    args = ap.parse_args()
    out = Path(args.out)
    limit, epochs = (200, 1) if args.quick else (1200, 2)
    results: dict = {
        "method": args.method,
        "limit": limit,
        "epochs": epochs,
        "stage2": {},
        "counterfactual": {},
    }

    first = train(base(out, "rt", "rotten-tomatoes", limit, epochs, args.method))
    results["stage1_rt_accuracy"] = json.loads((first.path / "eval.json").read_text())["tuned"]["accuracy"]
    guards = {
        "no guard": {},
        "replay 0.2": {"replay": 0.2},
        "L2-SP 1.0": {"l2_to_previous": 1.0},
        "EWC 1000": {"ewc": 1000.0, "ewc_samples": 200},
    }
    for label, guard in guards.items():
        name = "update-" + label.split()[0].lower().replace("-", "")
        cfg = base(out, name, "20newsgroups", limit, epochs, args.method, model={"from_run": str(first.path)})
        if guard:
            cfg["continual"] = guard
        run = train(cfg)
        cont = json.loads((run.path / "continual.json").read_text())
        results["stage2"][label] = {
            "new_task_accuracy": json.loads((run.path / "eval.json").read_text())["tuned"]["accuracy"],
            "rt_before": cont["old_task"]["before"],
            "rt_after_among_rt_labels": cont["old_task"]["after"],
            "rt_after_among_all_labels": (cont.get("all_labels") or cont["old_task"])["after"],
            "train_seconds": run.summary()["train_seconds"],
        }
    for cda in (False, True):
        run = train(
            base(
                out,
                f"rt-cda-{cda}",
                "rotten-tomatoes",
                limit,
                epochs,
                args.method,
                data={"counterfactual_augmentation": cda},
                eval={"bias": True},
            )
        )
        bias = json.loads((run.path / "bias.json").read_text())
        results["counterfactual"][str(cda)] = {
            "accuracy": json.loads((run.path / "eval.json").read_text())["tuned"]["accuracy"],
            "flip_rate": {c: v.get("flip_rate") for c, v in bias["categories"].items()},
            "summary": bias["summary"],
        }
    path = Path("benchmarks/results") / ("continual-quick.json" if args.quick else "continual.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print("| stage 2 | new task (20NG) accuracy | RT accuracy among RT labels | RT among all labels |")
    print("|---|---|---|---|")
    for label, r in results["stage2"].items():
        a, b = r["rt_after_among_rt_labels"], r["rt_after_among_all_labels"]
        print(
            f"| {label} | {r['new_task_accuracy']:.3f} | {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] | {b['value']:.3f} |"
        )
    print(f"RT accuracy before the update: {results['stage1_rt_accuracy']:.3f}")
    for cda, r in results["counterfactual"].items():
        print(f"counterfactual augmentation {cda}: accuracy {r['accuracy']:.3f}, flip rates {r['flip_rate']}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
