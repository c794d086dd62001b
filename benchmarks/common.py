"""Shared benchmark helpers: machine description, peak memory, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


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
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(script: str, *args: str) -> dict:
    """Run one benchmark arm in its own process (so peak RSS is its own) and return its JSON result."""
    import sys

    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
