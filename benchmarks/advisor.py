"""The advisor on the bundled data (docs/advisor.md): assess, probe, sweep and plan on Rotten Tomatoes.

    python benchmarks/advisor.py assess   # SmolLM2 zero-/5-shot and MiniLM k-NN/probe beside tuned MiniLM
    python benchmarks/advisor.py probe    # MiniLM's depth probe; its depth trained beside full and freeze
    python benchmarks/advisor.py sweep    # a LoRA sweep in <= 20 minutes against the default config (run alone)
    python benchmarks/advisor.py plan     # plan's estimates against measured memory and time, 6 set-ups (run alone)
    python benchmarks/advisor.py PART --tiny   # the same mechanics on a few rows (a check of the script)

Each part writes benchmarks/results/advisor_PART.json and .md (advisor_PART_tiny.* with --tiny). The timing
parts (sweep, plan) are meaningful only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, tuneforge_env, write  # noqa: E402

WORK = Path("runs/advisor-bench")
MINILM = {
    "task": "classification",
    "model": {"name": "minilm-l6"},
    "data": {"train": "rotten-tomatoes", "max_length": 128},
    "training": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "compile": "false"},
    "eval": {"bias": False, "baselines": "none"},
    "output": {"dir": str(WORK), "overwrite": True},
}


def cfg_with(base: dict, **sections) -> dict:
    out = json.loads(json.dumps(base))
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def train_cli(cfg: dict, name: str) -> dict:
    """`tuneforge train` in its own process (its own peak memory); returns run.json."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.yaml"
    import yaml

    cfg = cfg_with(cfg, output={"name": name})
    text = yaml.safe_dump(cfg)
    done = WORK / name / "run.json"
    if (
        path.exists()
        and path.read_text() == text
        and done.exists()
        and json.loads(done.read_text()).get("finished")
    ):
        summary = json.loads(done.read_text())  # the same run already finished: reuse it
        summary["test_accuracy"] = json.loads((WORK / name / "eval.json").read_text())["tuned"]["accuracy"]
        return summary
    path.write_text(text)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", str(path)], check=True, stdout=subprocess.DEVNULL
    )
    summary = json.loads((WORK / name / "run.json").read_text())
    summary["process_seconds"] = round(time.perf_counter() - t0, 1)
    ev = json.loads((WORK / name / "eval.json").read_text())
    summary["test_accuracy"] = ev["tuned"]["accuracy"]
    return summary


def ci(iv: dict) -> str:
    return f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


# ---------------------------------------------------------------- assess
def part_assess(tiny: bool) -> tuple[dict, str]:
    from tuneforge.advise import assess

    limit = {"limit": 300, "eval_limit": 60} if tiny else {}
    n_eval = 40 if tiny else EVAL_ROWS  # validation rows the baselines score (eval.baseline_examples)
    tuned = train_cli(
        cfg_with(MINILM, data=limit, training={"max_steps": 5} if tiny else {}), "assess-tuned-minilm"
    )
    tuned_dir = WORK / "assess-tuned-minilm"
    lm = assess(
        cfg_with(
            MINILM,
            model={"name": "smollm2-135m-instruct"},
            data=limit,
            eval={"few_shot_k": 5, "baseline_examples": n_eval},
        ),
        tuned=tuned_dir,
        out=WORK / "assess-smollm2",
    )
    enc = assess(
        cfg_with(MINILM, data=limit, eval={"baseline_examples": n_eval}),
        tuned=tuned_dir,
        out=WORK / "assess-minilm",
    )
    rows = []
    for r, model in ((lm, "SmolLM2-135M-Instruct"), (enc, "MiniLM-L6")):
        for b in r["baselines"]:
            rows.append([model, b["name"] if b["name"] != "k_shot" else f"{b['k']}-shot", ci(b["accuracy"])])
    rows.append(["MiniLM-L6", "tuned (full, 1 epoch), best validation step", f"{tuned['best_metric']:.3f}"])
    table = "\n".join(
        [
            f"assess on Rotten Tomatoes, validation split ({lm['n']} examples), 95% bootstrap intervals",
            "",
            "| model | baseline | validation accuracy [95% CI] |",
            "|---|---|---|",
            *[f"| {a} | {b} | {c} |" for a, b, c in rows],
            "",
            f"SmolLM2: {lm['recommendation']}",
            f"MiniLM: {enc['recommendation']}",
        ]
    )
    return {"smollm2": lm, "minilm": enc, "tuned": tuned}, table


# ---------------------------------------------------------------- probe
def part_probe(tiny: bool) -> tuple[dict, str]:
    from tuneforge.advise import probe

    limit = {"limit": 300, "eval_limit": 60} if tiny else {}
    steps = {"max_steps": 5} if tiny else {}
    p = probe(cfg_with(MINILM, data=limit), out=WORK / "probe-minilm")
    d = p["freeze_layers"]
    arms = {
        "full": cfg_with(MINILM, data=limit, training=steps),
        f"freeze_layers={d} (probe)": cfg_with(
            MINILM, data=limit, training=steps, method={"name": "freeze", "freeze_layers": d}
        ),
        "freeze (head only)": cfg_with(
            MINILM, data=limit, training={**steps, "lr": 1e-3}, method={"name": "freeze"}
        ),
    }
    runs = {k: train_cli(v, f"probe-{i}") for i, (k, v) in enumerate(arms.items())}
    layer_rows = [
        f"| {x['layer']} | {x['accuracy']:.3f} [{x['low']:.3f}, {x['high']:.3f}] |" for x in p["layers"]
    ]
    run_rows = [
        f"| {k} | {r['trainable_parameters']:,} | {r['best_metric']:.3f} | {r['test_accuracy']:.3f} | {r['train_seconds']:.0f} |"
        for k, r in runs.items()
    ]
    table = "\n".join(
        [
            f"Depth probe, MiniLM-L6 on Rotten Tomatoes (logistic regression per layer, {p['fit_rows']} training rows, "
            f"{p['n']} validation rows): implied freeze depth {d} of {p['blocks']} blocks",
            "",
            "| layer (0 = embeddings) | probe accuracy [95% CI] |",
            "|---|---|",
            *layer_rows,
            "",
            "| method | trainable parameters | validation accuracy (best step) | test accuracy | train seconds |",
            "|---|---|---|---|---|",
            *run_rows,
        ]
    )
    return {"probe": p, "runs": runs}, table


# ---------------------------------------------------------------- sweep
SWEEP_SPACE = {
    "training.lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "method.r": {"choices": [8, 16, 32]},
    "method.lora_dropout": {"choices": [0.0, 0.1]},
    "training.warmup_ratio": {"low": 0.0, "high": 0.2},
}


def part_sweep(tiny: bool) -> tuple[dict, str]:
    from tuneforge.advise import sweep

    lora = cfg_with(MINILM, method={"name": "lora", "r": 16, "alpha": 32}, training={"lr": 5e-4})
    if tiny:
        lora = cfg_with(lora, data={"limit": 300, "eval_limit": 60}, training={"max_steps": 9})
    t0 = time.perf_counter()
    default = train_cli(lora, "sweep-default")
    budget = 120 if tiny else 20 * 60
    start = time.perf_counter()
    # trials start while the clock allows; the last one must end inside the budget: stop starting at 80%
    r = sweep(
        lora,
        space=SWEEP_SPACE,
        trials=4 if tiny else 60,
        subset=0.2,
        rungs=3,
        eta=3,
        timeout=0.8 * budget,
        out=WORK / "sweep-lora",
    )
    wall = time.perf_counter() - start
    best = r["best"]
    table = "\n".join(
        [
            f"LoRA sweep, MiniLM-L6 on Rotten Tomatoes: {r['complete']} complete and {r['pruned']} pruned trials in "
            f"{wall / 60:.1f} minutes (budget {budget / 60:.0f}); TPE + successive halving (3 rungs, eta 3, rung 0 on 20% of "
            f"the rows)",
            "",
            "| configuration | validation accuracy |",
            "|---|---|",
            f"| default (lr 5e-4, r 16, dropout 0, warmup 6%) | {default['best_metric']:.4f} |",
            f"| best trial ({' '.join(best['overrides'])}) | {best['value']:.4f} |"
            if best
            else "| no trial completed | - |",
        ]
    )
    return {
        "default": default,
        "sweep": r,
        "wall_seconds": wall,
        "total_seconds": time.perf_counter() - t0,
    }, table


# ---------------------------------------------------------------- plan
PLAN_SETUPS = [
    {"method": "full", "batch_size": 32, "precision": "fp32", "max_length": 128},
    {"method": "full", "batch_size": 32, "precision": "bf16", "max_length": 128},
    {"method": "full", "batch_size": 16, "precision": "bf16", "max_length": 128},
    {"method": "lora", "batch_size": 32, "precision": "bf16", "max_length": 128},
    {"method": "lora", "batch_size": 32, "precision": "fp32", "max_length": 64},
    {"method": "freeze", "batch_size": 32, "precision": "bf16", "max_length": 128},
    {"method": "full", "batch_size": 8, "precision": "fp32", "max_length": 256},
]


def part_plan(tiny: bool) -> tuple[dict, str]:
    base = cfg_with(
        MINILM,
        data={"limit": 300 if tiny else 3000, "eval_limit": 60 if tiny else 500},
        eval={"report": False},
    )
    out = []
    for s in PLAN_SETUPS[: 2 if tiny else None]:
        cfg = cfg_with(
            base,
            method={"name": s["method"]},
            training={"batch_size": s["batch_size"], "precision": s["precision"]},
            data={"max_length": s["max_length"]},
        )
        est = (
            subprocess.run(
                [sys.executable, __file__, "_estimate", json.dumps(cfg)],
                check=True,
                capture_output=True,
                text=True,
                env=tuneforge_env(),  # the allocator `tuneforge plan` and `tuneforge train` run on
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        est = json.loads(est)
        name = f"plan-{s['method']}-{s['batch_size']}-{s['precision']}-{s['max_length']}"
        run = train_cli(cfg, name)
        out.append(
            {
                **s,
                "estimate": est,
                "measured": {"peak_rss_mb": run["peak_rss_mb"], "train_seconds": run["train_seconds"]},
            }
        )
    rows = []
    for r in out:
        e, m = r["estimate"], r["measured"]
        mem_err = e["memory_gb"] * 1024 / m["peak_rss_mb"] - 1
        t_err = e["seconds"] / m["train_seconds"] - 1
        r["memory_error"], r["time_error"] = mem_err, t_err
        rows.append(
            f"| {r['method']} | {r['batch_size']} | {r['max_length']} | {r['precision']} | {e['memory']['total']:,.0f} | "
            f"{e['memory'].get('measured_peak', 0):,.0f} | {e['memory_gb'] * 1024:,.0f} | "
            f"{m['peak_rss_mb']:,.0f} | {100 * mem_err:+.0f}% | {e['seconds']:,.0f} | {m['train_seconds']:,.0f} | {100 * t_err:+.0f}% |"
        )
    table = "\n".join(
        [
            f"plan's estimates against measured runs (MiniLM-L6, Rotten Tomatoes {base['data']['limit']} rows, 1 epoch, "
            "uncompiled; peak = process RSS, time = training with validation)",
            "",
            "| method | batch | max length | precision | live est. (MB) | probe peak (MB) | memory est. (MB) | "
            "measured (MB) | error | time est. (s) | measured (s) | error |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"largest |error|: memory {100 * max(abs(r['memory_error']) for r in out):.0f}%, time "
            f"{100 * max(abs(r['time_error']) for r in out):.0f}%",
        ]
    )
    return {"setups": out}, table


def _estimate(cfg_json: str) -> None:
    """One set-up's plan row, in a fresh process (as a run would start)."""
    from tuneforge.advise.plan import plan

    cfg = json.loads(cfg_json)
    r = plan(
        cfg,
        methods=[cfg["method"]["name"]],
        batch_sizes=[cfg["training"]["batch_size"]],
        max_lengths=[cfg["data"]["max_length"]],
        precisions=[cfg["training"]["precision"]],
        out=WORK / "plan-estimates",
    )
    print(json.dumps(r["rows"][0], default=float))


EVAL_ROWS = 500
PARTS = {"assess": part_assess, "probe": part_probe, "sweep": part_sweep, "plan": part_plan}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_estimate":
        return _estimate(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=list(PARTS))
    ap.add_argument(
        "--tiny", action="store_true", help="a few rows and steps: checks the script, measures nothing"
    )
    ap.add_argument(
        "--limit", type=int, help="training rows (data.limit) for the trained arms of assess/probe"
    )
    ap.add_argument("--eval-rows", type=int, help="validation rows the baselines score (default 500)")
    args = ap.parse_args()
    if args.limit:
        MINILM["data"]["limit"] = args.limit
    if args.eval_rows:
        global EVAL_ROWS
        EVAL_ROWS = args.eval_rows
    result, table = PARTS[args.part](args.tiny)
    name = f"advisor_{args.part}" + ("_tiny" if args.tiny else "")
    write(name, {"machine": machine(), **result}, f"{table}\n\n({machine()})")
    print(f"written: {RESULTS / name}.json / .md")


if __name__ == "__main__":
    main()
