"""Audit speed: rows per second on 100,000 short synthetic rows (target: under 60 s on a 2-core machine).

    python benchmarks/bench_audit.py [--rows 100000] [--test-rows 0] [--prepare]

Rows are 6-30 word sentences over a 5,000-word Zipf vocabulary with three labels, and planted problems:
2% exact duplicates, 2% near-duplicates (one word changed), 0.5% conflicting labels. The timed call is the
whole ``audit(path)``: reading the JSONL file, every check, exact and near-duplicate detection. Results go
to ``benchmarks/results/audit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "audit.json"


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """``n`` short labelled rows with planted exact duplicates, near-duplicates and conflicting labels."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like word frequencies
    labels = ["positive", "negative", "neutral"]
    from tuneforge.data.dedup import is_near_duplicate

    planted = {"exact": int(0.02 * n), "near": int(0.02 * n), "conflict": int(0.005 * n)}
    base_n = n - sum(planted.values())
    rows = []
    for i in range(base_n):
        words = rng.choices(vocab, weights, k=rng.randint(6, 30))
        rows.append({"text": " ".join(words) + f" r{i}.", "label": labels[i % 3]})
    for _ in range(planted["exact"]):
        rows.append(dict(rows[rng.randrange(base_n)]))
    for _ in range(planted["near"]):
        src = rows[rng.randrange(base_n)]
        words = src["text"].split()
        words[rng.randrange(len(words) - 1)] = "changed"
        rows.append({"text": " ".join(words), "label": src["label"]})
        # one changed word in a 7-word row is below the 0.8 threshold (6/8): count what the rule says
        planted["near_at_threshold"] = planted.get("near_at_threshold", 0) + is_near_duplicate(
            src["text"], rows[-1]["text"]
        )
    for _ in range(planted["conflict"]):
        src = rows[rng.randrange(base_n)]
        rows.append({"text": src["text"], "label": labels[(labels.index(src["label"]) + 1) % 3]})
    rng.shuffle(rows)
    return rows, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--prepare", action="store_true", help="also time `prepare` on the same file")
    args = parser.parse_args()

    from tuneforge.data.audit import audit
    from tuneforge.data.io import write_jsonl

    rows, planted = synthetic_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        write_jsonl(path, rows)
        t0, c0 = time.perf_counter(), time.process_time()
        report = audit(path)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        result = {
            "rows": args.rows,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "rows_per_second": round(args.rows / seconds),
            "target_seconds": 60,
            "headline": report.headline(),
            "planted": planted,
            "found": {
                "exact_duplicates": report.splits[0].exact_duplicates,
                "near_duplicates": report.splits[0].near_duplicates,
                "conflicting_label_rows": report.splits[0].conflicting_labels,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_1min": round(
                    os.getloadavg()[0], 1
                ),  # other work on the machine slows the wall clock
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
        }
        if args.prepare:
            from tuneforge.data.prepare import prepare

            t0 = time.perf_counter()
            prepare(path, Path(tmp) / "out")
            result["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    load = result["machine"]["load_average_1min"]
    print(
        f"audit: {args.rows:,} rows in {result['seconds']:.1f} s ({result['rows_per_second']:,} rows/s, "
        f"{result['cpu_seconds']:.1f} s CPU; load average {load}); target < 60 s"
    )
    print(f"  {result['headline']}")
    if "prepare_seconds" in result:
        print(f"prepare: {result['prepare_seconds']:.1f} s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
