"""Shared benchmark helpers: machine description, peak memory, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv  # a check of a script, on a slice


def shipped_config(name: str, output: str) -> tuple[str, list[str]]:
    """A shipped config (``configs/NAME``) and the overrides it is measured with: its own output folder,
    a log line every step, no report, samples or forgetting/bias probes (not timed, not what is measured).
    Arm processes see no progress bars and no hub."""
    os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = [
        "output.dir=/tmp/tuneforge-bench",
        f"output.name={output}",
        "output.overwrite=true",
        "training.log_every=1",
        "sft.samples=0",
        "eval.report=false",
        "eval.forgetting=false",
        "eval.bias=false",
    ]
    return str(ROOT / "configs" / name), overrides


def compare_arms(
    script: str, name: str, arms: dict[str, Callable[[], dict]], default: str, table, config: str, quick: str
) -> None:
    """A benchmark of several arms, each in its own process (its peak RSS its own), one after the other.

    ``script ARM`` runs one arm and prints its JSON; ``script`` runs the arms of ``BENCH_ARMS`` (default
    ``default``) and writes results/NAME.{json,md}, where an arm not run this time keeps its last
    measurement; ``--quick`` (``quick`` says what it checks) prints the table and writes nothing."""
    argv = [a for a in sys.argv[1:] if a != "--quick"]
    if QUICK:
        os.environ["BENCH_QUICK"] = "1"  # the arms' processes inherit it
    if argv:
        print(json.dumps(arms[argv[0]]()))
        return
    chosen = [a for a in os.environ.get("BENCH_ARMS", default).split(",") if a]
    results = {}
    kept = RESULTS / f"{name}.json"
    if not QUICK and kept.exists():
        results = {k: v for k, v in json.loads(kept.read_text())["results"].items() if k not in chosen}
    for arm in chosen:
        print(f"running {arm} ...", flush=True)
        t0 = time.perf_counter()
        # tuneforge's arms run as the `tuneforge` command would (its allocator); the others as their users run them
        results[arm] = run_isolated(script, arm, env=tuneforge_env() if arm.startswith("tuneforge") else None)
        print(f"  {time.perf_counter() - t0:.0f} s: {json.dumps(results[arm])}", flush=True)
    results = {k: results[k] for k in arms if k in results}  # the arms' own order
    m = machine()
    text = table(results, m)
    if QUICK:
        print(f"{text}\n\n(--quick: {quick}; nothing written)")
        return
    write(name, {"machine": m, "config": config, "results": results}, text)


def machine() -> dict:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # the vector units matmuls run on (AVX2, AVX512...): machines of the same name differ, and bf16 is
        # emulated (~4x slower than fp32) where the CPU has no native bf16
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        ),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tuneforge_env() -> dict[str, str] | None:
    """The environment the ``tuneforge`` command runs its training in (jemalloc preloaded where installed:
    ``tuneforge.allocator``), for arms that stand for it; None where it runs as is."""
    from tuneforge.allocator import relaunch_command

    command = relaunch_command([])
    return command[1] if command else None


def run_isolated(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run one benchmark arm in its own process (so peak RSS is its own) and return its JSON result; the
    result records the allocator the arm's process ran on."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.setdefault(
        "allocator", "jemalloc" if env and "libjemalloc" in env.get("LD_PRELOAD", "") else "system"
    )
    return result


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
