"""`make bench`: every benchmark in one invocation, one after the other (run nothing else heavy meanwhile).

Writes benchmarks/results/{sft,classification,audit,contention}.{json,md} and refreshes the tables in README.md.
Select some with BENCH_ONLY=sft,classification.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = {
    "sft": "sft.py",
    "classification": "classification.py",
    "audit": "bench_audit.py",
    "contention": "contention.py",
    "serve": "serve.py",
    "dpo": "dpo.py",
    "grpo": "grpo.py",
}


def main() -> None:
    only = os.environ.get("BENCH_ONLY")
    for name, script in SCRIPTS.items():
        if only and name not in only.split(","):
            continue
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
    subprocess.run([sys.executable, str(HERE / "update_readme.py")], check=True)


if __name__ == "__main__":
    main()
