"""Two trainings on the same cores: each started together with an identical one, against one alone.

The workload is the shipped SFT LoRA config (configs/sft-smollm2-lora.yaml: SmolLM2-135M-Instruct on the
bundled ChatterBot conversations) cut to a few optimizer steps, each run a `tuneforge train` process of its
own. Three arms:

    alone    one run, training.threads=auto (every core this process may use)
    shared   two runs started together with the defaults (training.threads=auto): the runs register in
             tuneforge's machine-wide list and each takes its share of the cores, then all of them again
             when the other ends (threads.CoreShare)
    halves   two runs started together, each with training.threads = cores // 2 set by hand (what the
             busy-machine warning tells a user to set)
    naive    two runs started together, each with training.threads = all the cores (every process spins a
             thread per core: what the issue measured, ~480 -> ~11-18 tokens/s)

Reported: each run's wall time (process start to exit: model loading, training, final evaluation) and its
training-loop seconds (run.json), and the ratio of the slower of two runs together to one alone. Target:
shared <= 2.3x. Run it alone on the machine: it refuses when other processes already use half the cores.

    python benchmarks/contention.py              # writes results/contention.{json,md}
    python benchmarks/contention.py --dry-run    # prints the commands, runs nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "sft-smollm2-lora.yaml"
TARGET = 2.3  # each of two runs together finishes in at most this many times one alone


def train_command(name: str, threads: int | str, steps: int, out_dir: str) -> list[str]:
    """`tuneforge train` on the shipped SFT LoRA config, cut to ``steps`` steps, no side work."""
    overrides = {
        "training.max_steps": steps,
        "training.threads": threads,
        "training.eval_every": 100_000,  # no validation during the run
        "training.save_every": 100_000,
        "training.log_every": 1,
        # no torch.compile: its kernels are cached per thread count, so the first arm with a new count would
        # pay the compile inside its timing and the comparison would measure the cache, not the sharing
        "training.compile": "false",
        "data.eval_limit": 16,  # a short final evaluation
        "data.audit": "false",
        "sft.samples": 0,
        "eval.baseline": "false",
        "eval.report": "false",
        "eval.forgetting": "false",
        "eval.bias": "false",
        "output.dir": out_dir,
        "output.name": name,
        "output.overwrite": "true",
    }
    return [sys.executable, "-m", "tuneforge.cli", "train", str(CONFIG)] + [
        f"{k}={v}" for k, v in overrides.items()
    ]


def arms(cores: int, steps: int, out_dir: str) -> dict[str, list[list[str]]]:
    """Each arm's commands; the commands of one arm start together."""
    half = max(1, cores // 2)
    return {
        "warmup": [train_command("warmup", "auto", 1, out_dir)],  # page cache, kernel caches: not timed
        "alone": [train_command("alone", "auto", steps, out_dir)],
        "shared": [train_command(f"shared-{i}", "auto", steps, out_dir) for i in (1, 2)],
        "halves": [train_command(f"halves-{i}", half, steps, out_dir) for i in (1, 2)],
        "naive": [train_command(f"naive-{i}", cores, steps, out_dir) for i in (1, 2)],
    }


def child_env() -> dict[str, str]:
    """The environment of every run: offline, no progress bars, no thread count inherited from this shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNEFORGE_THREADS")
    }
    return {**env, "TUNEFORGE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}


def run_together(commands: list[list[str]], out_dir: str) -> list[dict]:
    """Start the commands at once; each one's wall seconds, training-loop seconds and exit status."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for cmd in commands
    ]
    out = []
    for cmd, proc in zip(commands, procs):
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        name = next(a.split("=", 1)[1] for a in cmd if a.startswith("output.name="))
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{err[-3000:]}")
        summary = json.loads((Path(out_dir) / name / "run.json").read_text())
        out.append({"run": name, "wall_s": round(wall, 2), "train_s": summary.get("train_seconds")})
    return out


def table(result: dict) -> str:
    alone = result["arms"]["alone"][0]
    lines = [
        f"Two identical SFT LoRA runs ({result['steps']} steps, SmolLM2-135M, ChatterBot) on {result['cores']} cores,"
        " started together, against one alone:",
        "",
        "| arm | threads per run | wall s (each) | training s (each) | slower run / alone (wall) |",
        "|---|---|---|---|---|",
    ]
    for arm in ("alone", "shared", "halves", "naive"):
        runs = result["arms"][arm]
        ratio = max(r["wall_s"] for r in runs) / alone["wall_s"]
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
        trains = ", ".join("-" if r["train_s"] is None else f"{r['train_s']:.1f}" for r in runs)
        lines.append(f"| {arm} | {result['threads'][arm]} | {walls} | {trains} | {ratio:.2f}x |")
    verdict = "met" if result["shared_ratio"] <= TARGET else "NOT met"
    lines += ["", f"Target: each of two runs together in <= {TARGET}x the time of one alone: {verdict}."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default 10)")
    parser.add_argument(
        "--cores", type=int, default=None, help="cores to share (default: the cores available)"
    )
    parser.add_argument("--out-dir", default="/tmp/tuneforge-contention", help="run folders")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    parser.add_argument("--force", action="store_true", help="run even when the machine is busy")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.cores is not None and args.cores < 1:
        parser.error(f"--cores must be >= 1, got {args.cores}")
    return args


def main(argv: list[str] | None = None) -> int:
    from tuneforge.threads import available_cores, busy_cores

    args = parse_args(argv)
    cores = args.cores or available_cores()
    commands = arms(cores, args.steps, args.out_dir)
    if args.dry_run:
        for arm, cmds in commands.items():
            print(f"# {arm}: {'started together' if len(cmds) > 1 else 'alone'}")
            for cmd in cmds:
                print(shlex.join(cmd))
        return 0
    busy = busy_cores(interval=1.0)
    if busy is not None and busy >= 0.5 * cores and not args.force:
        print(
            f"other processes use about {busy:.1f} of {cores} cores: the timings would measure them too. "
            "Run this alone on the machine, or add --force.",
            file=sys.stderr,
        )
        return 2
    from common import machine, write

    timings = {}
    for arm, cmds in commands.items():
        print(f"== {arm} ({len(cmds)} run{'s' if len(cmds) > 1 else ''})", flush=True)
        timings[arm] = run_together(cmds, args.out_dir)
    alone = timings["alone"][0]["wall_s"]
    result = {
        "machine": machine(),
        "cores": cores,
        "steps": args.steps,
        "busy_before": busy,
        "threads": {
            "alone": f"auto ({cores})",
            "shared": "auto",
            "halves": max(1, cores // 2),
            "naive": cores,
        },
        "arms": {k: v for k, v in timings.items() if k != "warmup"},
        "shared_ratio": round(max(r["wall_s"] for r in timings["shared"]) / alone, 3),
        "halves_ratio": round(max(r["wall_s"] for r in timings["halves"]) / alone, 3),
        "naive_ratio": round(max(r["wall_s"] for r in timings["naive"]) / alone, 3),
        "target": TARGET,
    }
    result["target_met"] = result["shared_ratio"] <= TARGET
    write("contention", result, table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
