"""The SFT LoRA workload on a GPU: tuneforge against the transformers Trainer + PEFT, TRL, and Liger.

Called by ``benchmarks/gpu.sh`` (which checks versions first). Every arm runs in its own process (its
peak GPU memory is its own), on the same token ids and loss masks (tuneforge's chat encoding of the same
synthetic conversations, each cut to the sequence length, so no arm pads), LoRA r=16 alpha=32 on the
seven projections, AdamW lr 2e-4, bf16, SDPA attention, ``--warmup`` untimed then ``--steps`` timed steps.
Reported per arm: real tokens/s, peak allocated and reserved GPU memory, the last training loss.

Models: ``--models DIR`` (subfolders ``smollm2`` and ``gemma3``: transformers folders), else tuneforge's
bundled models where installed (SmolLM2-135M-Instruct; Gemma-3-270M from its GGUF), else the same
architectures with random weights from ``benchmarks/gpu_models/*/config.json`` (throughput and memory are
those of the real model; the loss is not) — the results say which.

    python benchmarks/gpu.py                  # on a GPU: every model and arm, results/gpu.{json,md}
    python benchmarks/gpu.py --cpu --tiny     # the same code on a tiny random model, on the CPU, in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, R, ALPHA = 2e-4, 16, 32
# (model key, bundled alias, chat template for a base model, sequence length, batch) on a GPU
WORKLOADS = [
    ("smollm2", "smollm2-135m-instruct", None, 2048, 16),
    ("gemma3", "gemma3-270m", "chatml", 2048, 8),
]
TINY = [("tiny", None, None, 64, 2)]
ARMS = ("tuneforge", "tuneforge-liger", "trainer", "trl", "trl-liger")
WORDS = "river stone cloud lamp violin garden pencil window tiger apple ocean candle mirror forest".split()


# ---- models and data


def model_folder(key: str, alias: str | None, models: str | None, work: Path) -> tuple[str, str]:
    """(folder, where its weights come from)."""
    if key == "tiny":
        return tiny_model(work), "random (tiny Llama)"
    if models and (Path(models) / key).is_dir():
        return str(Path(models) / key), f"{models}/{key}"
    try:
        from tuneforge.models.load import resolve_model

        return str(resolve_model(alias)), f"bundled {alias}"
    except Exception as e:  # noqa: BLE001 - not installed here: the same architecture, random weights
        print(f"{alias}: {e}; using its architecture with random weights", file=sys.stderr)
    return random_model(key, work), "random weights, same architecture (throughput and memory only)"


def _save_with_tokenizer(model, out: Path) -> str:
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    carried = HERE / "wheels" / "tokenizer"  # copied by gpu_wheels.sh beside the wheels it carries
    if carried.is_dir():
        tok = AutoTokenizer.from_pretrained(carried)
    else:
        from tuneforge.models.load import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tok.save_pretrained(out)
    return str(out)


def tiny_model(work: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = work / "tiny"
    if not out.exists():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        )  # fmt: skip
        _save_with_tokenizer(LlamaForCausalLM(cfg), out)
    return str(out)


def random_model(key: str, work: Path) -> str:
    """The architecture of ``benchmarks/gpu_models/<key>/config.json`` with random weights (bf16 on disk)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = work / f"random-{key}"
    if not out.exists():
        config = AutoConfig.from_pretrained(HERE / "gpu_models" / key)
        torch.manual_seed(0)
        _save_with_tokenizer(AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16), out)
    return str(out)


def conversations(tok, n: int, seq: int, seed: int = 0) -> list[dict]:
    """``n`` synthetic conversations whose chat encoding is just under ``seq`` tokens (never cut: tuneforge
    refuses answers whose end-of-turn is truncated away)."""
    from tuneforge.data.chat import encode_chat

    rng = random.Random(seed)
    cost = {w: len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
    rows = []
    for i in range(n):
        user = {"role": "user", "content": f"Tell me a story about the {rng.choice(WORDS)} ({i})."}
        used = len(encode_chat(tok, [user, {"role": "assistant", "content": "a"}], None).input_ids)
        words: list[str] = []
        while True:
            w = rng.choice(WORDS)
            if used + cost[w] > seq - 2:  # a margin for merges at the word boundaries
                break
            words.append(w)
            used += cost[w]
        rows.append({"messages": [user, {"role": "assistant", "content": "a " + " ".join(words)}]})
    return rows


def workload(args, key: str, template: str | None, seq: int, batch: int, folder: str):
    """(the JSONL file tuneforge reads, the encoded examples the other arms train on, the tokenizer)."""
    from transformers import AutoTokenizer

    from tuneforge.data.chat import encode_chat
    from tuneforge.models.templates import ensure_template

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if template or not tok.chat_template:
        ensure_template(tok, template or "chatml")
    rows = conversations(tok, batch * (args.warmup + args.steps), seq)
    path = Path(args.work) / f"{key}-{seq}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoded = [encode_chat(tok, r["messages"], seq) for r in rows]
    assert all(len(e.input_ids) <= seq for e in encoded)
    return str(path), encoded, tok


# ---- arms (each in its own process)


def arm_tuneforge(args, folder, template, seq, batch, liger: bool) -> dict:
    import tuneforge

    data, _, _ = workload(args, args.key, template, seq, batch, folder)
    cfg = {
        "task": "sft",
        "model": {
            "name": folder,
            "attn_implementation": "auto",
            **({"chat_template": template} if template else {}),
        },
        "data": {"train": data, "max_length": seq, "validation_fraction": 0.0, "audit": False},
        "method": {"name": "lora", "r": R, "alpha": ALPHA, "target_modules": TARGETS, "lora_dropout": 0.0},
        "training": {
            "max_steps": args.warmup + args.steps,
            "batch_size": batch,
            "lr": LR,
            "warmup_steps": 0,
            "log_every": 1,
            "eval_every": 10_000,
            "save_every": 10_000,
            "max_batch_tokens": None,
            "group_by_length": False,
            "device": "cpu" if args.cpu else "cuda",
            "precision": "fp32" if args.cpu else "bf16",
            "liger": liger,
            "compile": False,
            "memory_check": False,
        },
        "sft": {"samples": 0},
        "eval": {"baseline": False, "report": False, "forgetting": False, "bias": False},
        "output": {"dir": str(Path(args.work) / "runs"), "name": f"{args.key}-{args.arm}", "overwrite": True},
    }
    run = tuneforge.train(cfg)
    logs = [m for m in run.metrics() if m["split"] == "train"]
    timed = [m for m in logs if m["step"] > args.warmup]
    return {
        "tokens_per_s": sum(m["tokens"] for m in timed) / sum(m["seconds"] for m in timed),
        "last_loss": logs[-1]["loss"],
        "attention": run.summary().get("attention"),
    }


def arm_reference(args, folder, template, seq, batch, kind: str, liger: bool) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback

    _, encoded, tok = workload(args, args.key, template, seq, batch, folder)
    torch.manual_seed(42)
    dtype = torch.float32 if args.cpu else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    marks: dict[str, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if args.cuda:
                torch.cuda.synchronize()
            if state.global_step == args.warmup:
                marks["start"] = time.perf_counter()
            if state.global_step == args.warmup + args.steps:
                marks["end"] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    common = dict(
        output_dir=str(Path(args.work) / f"hf-{args.key}-{args.arm}"),
        per_device_train_batch_size=batch,
        learning_rate=LR,
        max_steps=args.warmup + args.steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        seed=42,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=args.cpu,
        bf16=not args.cpu,
        dataloader_num_workers=0,
    )
    if kind == "trainer":
        from peft import get_peft_model
        from transformers import Trainer, TrainingArguments

        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]

        def collate(b):  # the examples are within a few tokens of ``seq``: right-padded to the longest
            width, pad = max(len(r["input_ids"]) for r in b), tok.pad_token_id
            return {
                "input_ids": torch.tensor(
                    [r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in b]
                ),
                "attention_mask": torch.tensor(
                    [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in b]
                ),
                "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in b]),
            }

        trainer = Trainer(
            model=get_peft_model(model, lora),
            args=TrainingArguments(**common),
            train_dataset=rows,
            data_collator=collate,
            callbacks=[Clock()],
        )
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list(
            [
                {"input_ids": e.input_ids, "assistant_masks": [int(x != -100) for x in e.labels]}
                for e in encoded
            ]
        )
        extra = {"use_liger_kernel": True} if liger else {}
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, max_length=seq, **extra),
            train_dataset=ds,
            processing_class=tok,
            peft_config=lora,
            callbacks=[Clock()],
        )
    trainer.train()
    tokens = sum(len(e.input_ids) for e in encoded[batch * args.warmup :])
    return {
        "tokens_per_s": tokens / (marks["end"] - marks["start"]),
        "last_loss": losses[-1] if losses else None,
    }


def run_arm(args) -> dict:
    import torch

    args.cuda = torch.cuda.is_available() and not args.cpu
    folder, template, seq, batch = args.folder, args.template or None, args.seq, args.batch
    if args.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.arm.startswith("tuneforge"):
        out = arm_tuneforge(args, folder, template, seq, batch, liger=args.arm.endswith("liger"))
    else:
        kind = "trainer" if args.arm == "trainer" else "trl"
        out = arm_reference(args, folder, template, seq, batch, kind, liger=args.arm.endswith("liger"))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.cuda:
        out["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    else:
        import resource

        out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


# ---- the driver


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "trl",
        "liger-kernel",
        "bitsandbytes",
        "datasets",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# what tuneforge needs (pyproject.toml), and the arms' optional packages
REQUIRED = {
    "torch": ">=2.5",
    "transformers": ">=5.23,<5.24",
    "peft": ">=0.21,<0.22",
    "accelerate": ">=1.15,<1.16",
    "datasets": ">=5.2,<5.3",
    "gguf": ">=0.19,<0.20",
    "safetensors": ">=0.4",
    "pyyaml": ">=6",
    "rich": ">=13",
}
OPTIONAL = {"trl": ">=1.16", "liger-kernel": ">=0.5"}


def _unmet(name: str, spec: str) -> bool:
    import importlib.metadata as md

    from packaging.specifiers import SpecifierSet

    try:
        return md.version(name) not in SpecifierSet(spec)
    except md.PackageNotFoundError:
        return True


def plan_wheels(folder: str) -> list[str]:
    """The carried wheels to install: those of packages this machine lacks or has in a version tuneforge
    cannot use (the machine's own torch and CUDA stack are never replaced)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    wanted = {canonicalize_name(n): s for n, s in {**REQUIRED, **OPTIONAL}.items() if n != "torch"}
    chosen = []
    for wheel in sorted(Path(folder).glob("*.whl")):
        name, version = parse_wheel_filename(wheel.name)[:2]
        name = canonicalize_name(name)
        if name in wanted and _unmet(name, wanted[name]):
            chosen.append(str(wheel))
        elif name not in wanted and _unmet(name, f">={version}"):  # a dependency, missing or older here
            chosen.append(str(wheel))
    return chosen


def check_environment() -> int:
    """Print the versions; 1 when a requirement is not met (the message says which and how)."""
    have = versions()
    print("versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in have.items()))
    bad = [f"{n}{s}" for n, s in REQUIRED.items() if _unmet(n, s)]
    try:
        import torch

        print(f"CUDA: {torch.cuda.is_available()} ({torch.version.cuda}), GPU: "
              f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}")  # fmt: skip
    except ImportError:
        bad.append("torch")
    if bad:
        print(
            f"missing or unusable: {', '.join(bad)}: carry their wheels (benchmarks/gpu_wheels.sh)",
            file=sys.stderr,
        )
        return 1
    return 0


def skip_reason(arm: str, have: dict, cpu: bool) -> str | None:
    if arm.endswith("liger"):
        if cpu:
            return "Liger's kernels need a CUDA GPU"
        if not have.get("liger-kernel"):
            return "liger-kernel is not installed"
    if arm.startswith("trl") and not have.get("trl"):
        return "trl is not installed"
    return None


def write_results(args, gpu, have, results, started) -> None:
    """results/gpu.{json,md} as they stand (rewritten after every arm: a time limit keeps what ran)."""
    payload = {
        "device": gpu or "cpu",
        "versions": have,
        "settings": {"warmup": args.warmup, "steps": args.steps, "lora_r": R, "lr": LR, "tiny": args.tiny},
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".json").write_text(json.dumps(payload, indent=1))
    mem = "peak_allocated_gb" if gpu else "peak_rss_gb"
    lines = [
        f"# SFT LoRA on {gpu or 'the CPU'}: tuneforge, Trainer + PEFT, TRL, Liger",
        "",
        f"LoRA r={R} on 7 projections, lr {LR}, {'bf16' if gpu else 'fp32'}, {args.warmup} warm-up + {args.steps} "
        f"timed steps; versions: " + ", ".join(f"{k} {v}" for k, v in have.items() if v),
        "",
        f"| model | weights | arm | seq x batch | tokens/s | {mem.replace('_', ' ')} | last loss | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = r.get("skipped") or r.get("failed") or ""
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        loss = f"{r['last_loss']:.4f}" if r.get("last_loss") is not None else "-"
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['arm']} | {r['seq']} x {r['batch']} | {tps} | "
            f"{r.get(mem, '-')} | {loss} | {note} |"
        )
    Path(args.results + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on the CPU (the check of this script)")
    p.add_argument("--tiny", action="store_true", help="a tiny random model, short sequences, few steps")
    p.add_argument("--models", help="folder with smollm2/ and gemma3/ transformers folders")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--work", default="/tmp/tuneforge-gpu-bench")
    p.add_argument("--results", default=str(HERE / "results" / "gpu"), help="output path without extension")
    p.add_argument("--timeout", type=int, default=150, help="seconds one arm may take")
    p.add_argument(
        "--plan-wheels", metavar="DIR", help="print the carried wheels this machine needs, and exit"
    )
    p.add_argument("--check", action="store_true", help="check the versions, and exit")
    for hidden in ("arm", "key", "folder", "template"):
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plan_wheels:
        print("\n".join(plan_wheels(args.plan_wheels)))
        return
    if args.check:
        sys.exit(check_environment())
    if args.arm:  # one arm, in this process
        print(json.dumps(run_arm(args)))
        return
    if args.tiny:
        args.warmup, args.steps = 1, 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    have = versions()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else None
    if not args.cpu and gpu is None:
        sys.exit("no CUDA GPU visible: run with --cpu --tiny to check the script on the CPU")
    results = []
    started = time.perf_counter()
    for key, alias, template, seq, batch in TINY if args.tiny else WORKLOADS:
        folder, source = model_folder(key, alias, args.models, work)
        for arm in [a for a in args.arms.split(",") if a]:
            row = {"model": key, "weights": source, "arm": arm, "seq": seq, "batch": batch}
            reason = skip_reason(arm, have, args.cpu)
            if reason:
                results.append({**row, "skipped": reason})
                continue
            cmd = [sys.executable, __file__, "--arm", arm, "--key", key, "--folder", folder, "--template",
                   template or "", "--seq", str(seq), "--batch", str(batch), "--warmup", str(args.warmup),
                   "--steps", str(args.steps), "--work", str(work)] + (["--cpu"] if args.cpu else [])  # fmt: skip
            print(f"{key} / {arm} ...", flush=True)
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results.append({**row, "failed": f"over {args.timeout} s"})
                continue
            if out.returncode != 0:
                results.append(
                    {**row, "failed": out.stderr.strip().splitlines()[-1][:300] if out.stderr else "?"}
                )
                continue
            results.append({**row, **json.loads(out.stdout.strip().splitlines()[-1])})
            write_results(args, gpu, have, results, started)
    write_results(args, gpu, have, results, started)


if __name__ == "__main__":
    main()
