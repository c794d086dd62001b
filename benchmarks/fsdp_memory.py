"""Per-process peak memory of full fine-tuning: DDP against FSDP2, two processes (gloo on the CPU, or GPUs).

Each mode trains a randomly initialised Llama (``--hidden``/``--layers``: ~38M parameters by default) for a
few AdamW steps on random tokens, on ``--nproc`` processes started by torchrun, wrapped exactly as tuneforge
wraps it (DDP through accelerate's ``prepare``; FSDP through ``tuneforge.train.distributed.shard_model``).
Each process records its peak resident memory (``ru_maxrss``, CPU) or peak allocated memory (CUDA), and the
bytes of the weights, gradients and AdamW moments it holds. Results: ``benchmarks/results/fsdp_memory.json``
and ``.md``.

    nice -n 15 python benchmarks/fsdp_memory.py                 # ~38M parameters, 2 processes
    python benchmarks/fsdp_memory.py --tiny                      # a seconds-long check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    """Resident memory now (MB)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> None:
    """One process of one mode: build, wrap, train ``--steps`` steps, write this rank's figures."""
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.train.distributed import shard_model

    cuda = torch.cuda.is_available() and not args.cpu
    rank = int(os.environ["RANK"])
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        tie_word_embeddings=False,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stages = {"start": rss_mb()}
    model = LlamaForCausalLM(config)
    stages["model built"] = rss_mb()
    n_params = sum(p.numel() for p in model.parameters())
    if args.mode == "fsdp":
        shard_model(model, "fp32", device)
        wrapped = model
    else:
        model.to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None
        )
    stages["wrapped"] = rss_mb()
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(rank)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the steady state
        stages[f"step {len(stages) - 2}"] = rss_mb()

    def local_bytes(t) -> int:
        t = getattr(t, "_local_tensor", t)  # a DTensor's shard on this process
        return t.numel() * t.element_size()

    params = list(wrapped.parameters())
    state = {
        "weights": sum(local_bytes(p) for p in params),
        "gradients": sum(local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if v.dim()),
    }
    out = {
        "mode": args.mode,
        "rank": rank,
        "parameters": n_params,
        "device": device.type,
        "seconds": round(time.perf_counter() - t0, 2),
        "state_mb": {k: round(v / 2**20, 1) for k, v in state.items()},
        "state_total_mb": round(sum(state.values()) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_model_mb": round(rss_before / 2**20, 1),
        "rss_by_stage_mb": {k: round(v, 1) for k, v in stages.items()},
    }
    if cuda:
        out["peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    Path(args.out, f"{args.mode}-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a small model: checks the script in seconds")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU (gloo) even where a GPU is visible")
    p.add_argument("--results", default=str(RESULTS / "fsdp_memory"), help="output path without extension")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("ddp", "fsdp"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.hidden, args.layers, args.vocab, args.seq, args.steps = 128, 4, 1024, 32, 2
    if args.worker:
        return worker(args)
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="fsdp-memory-"))  # each process's figures; gathered below
    rows = []
    for mode in ("ddp", "fsdp"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            __file__,
            "--worker",
            "--mode",
            mode,
            "--out",
            str(out),
            *[f"--{k}={getattr(args, k)}" for k in ("hidden", "layers", "vocab", "seq", "batch", "steps")],
            *(["--cpu"] if args.cpu else []),
        ]
        # large blocks straight from mmap, so memory freed goes back to the system and RSS follows live tensors
        env = {
            **os.environ,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "MALLOC_MMAP_THRESHOLD_": "65536",
        }
        subprocess.run(cmd, check=True, env=env)
        rows += [json.loads((out / f"{mode}-{r}.json").read_text()) for r in range(args.nproc)]
    by = {m: [r for r in rows if r["mode"] == m] for m in ("ddp", "fsdp")}
    peak = "peak_allocated_mb" if "peak_allocated_mb" in rows[0] else "peak_rss_mb"
    summary = {
        m: {
            "state_total_mb": max(r["state_total_mb"] for r in rs),
            peak: max(r[peak] for r in rs),
            "rss_before_model_mb": max(r["rss_before_model_mb"] for r in rs),
        }
        for m, rs in by.items()
    }
    result = {
        "settings": {
            k: getattr(args, k) for k in ("nproc", "hidden", "layers", "vocab", "seq", "batch", "steps")
        },
        "parameters": rows[0]["parameters"],
        "device": rows[0]["device"],
        "peak_metric": peak,
        "summary": summary,
        "processes": rows,
    }
    Path(args.results + ".json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Full fine-tuning, per-process memory: DDP vs FSDP2 ({args.nproc} processes, {rows[0]['device']})",
        "",
        f"Llama, {rows[0]['parameters'] / 1e6:.1f}M parameters (fp32), AdamW, batch {args.batch} x {args.seq} "
        f"tokens, {args.steps} steps. `python benchmarks/fsdp_memory.py` writes this file.",
        "",
        f"| mode | weights+gradients+AdamW per process (MB) | {peak.replace('_', ' ')} per process |"
        " before the model (MB) |",
        "|---|---|---|---|",
    ]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['state_total_mb']} | {s[peak]} | {s['rss_before_model_mb']} |")
    Path(args.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
