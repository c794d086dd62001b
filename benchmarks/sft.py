"""SFT LoRA workload: tuneforge against the transformers Trainer + PEFT and TRL's SFTTrainer.

The workload of the performance issue: SmolLM2-135M-Instruct, LoRA r=16 alpha=32 (no dropout, PEFT's default) on all
seven linear projections, AdamW lr 2e-4, batch 8, max length 512, the ChatterBot conversations
as in the issue (all 2,026 in the corpus files, repeats included, less 64 held out) with loss on
assistant tokens only, 3 warm-up steps then 30 timed optimizer steps. Every arm gets the same
token ids and loss masks (tuneforge's chat encoding) and runs in its own process, so its peak RSS is its
own. Reported: real (non-padding) tokens/s over the timed steps, the share of computed positions that
were padding, peak RSS, the loss on 64 fixed held-out
conversations after the 33 steps (plain fp32 evaluation, same code for every arm), and the fraction of
this machine's measured matmul peak that the arm reached.

    python benchmarks/sft.py                 # every arm, writes results/sft.{json,md}
    python benchmarks/sft.py tuneforge       # one arm, prints its JSON
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, peak_rss_mb, run_isolated, write  # noqa: E402

os.environ.setdefault("TUNEFORGE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
WARMUP, TIMED = 3, int(os.environ.get("BENCH_STEPS", "30"))
STEPS = WARMUP + TIMED
BATCH, MAX_LEN, LR = 8, 512, 2e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODEL = "smollm2-135m-instruct"
RESULTS_FILE = os.path.join(os.path.dirname(__file__), "results", "sft.json")
TRAIN_FILE = "/tmp/tuneforge-bench/chatterbot-all.jsonl"
HELDOUT = 64


def split_corpus() -> tuple[list[dict], list[dict]]:
    """The issue's workload: all 2,026 ChatterBot conversations, repeats included as in the corpus files,
    less 64 held out. The held-out ones open with a question asked only once in the corpus, so none of
    them is also in training."""
    from collections import Counter

    from tuneforge.data.bundled import chatterbot_conversations, opening_question

    rows = chatterbot_conversations(distinct=False).rows
    question = lambda row: opening_question(row["messages"][0]["content"])  # noqa: E731
    asked = Counter(question(r) for r in rows)
    once = [i for i, r in enumerate(rows) if asked[question(r)] == 1]
    held = set(random.Random(0).sample(once, HELDOUT))
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def training_file() -> str:
    """The training conversations as a JSONL file: tuneforge reads it like a user's own data."""
    os.makedirs(os.path.dirname(TRAIN_FILE), exist_ok=True)
    with open(TRAIN_FILE, "w", encoding="utf-8") as f:
        for r in split_corpus()[0]:
            f.write(json.dumps({"messages": r["messages"]}) + "\n")
    return TRAIN_FILE


def encoded_splits():
    from tuneforge.data.chat import encode_chat
    from tuneforge.models.load import load_tokenizer

    tok = load_tokenizer(MODEL)
    train, held = split_corpus()
    encode = lambda rows: [encode_chat(tok, r["messages"], MAX_LEN) for r in rows]  # noqa: E731
    return tok, encode(train), encode(held)


def heldout_loss(model, heldout) -> float:
    """Mean next-token loss over the held-out assistant tokens (fp32, padded batches of 8)."""
    import torch

    from tuneforge.data.packing import pad_batch
    from tuneforge.train.lm_loss import token_nll

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(heldout), 8):
            b = pad_batch(heldout[i : i + 8], 0)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss, k = token_nll(logits, b["labels"])
            total, n = total + float(loss), n + k
    return total / n


def lora_flops_per_token(model) -> float:
    """The issue's estimate: 4·N (forward + activation gradients) + 6·N_lora (adapter weights train too)."""
    n_all = sum(p.numel() for p in model.parameters())
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return 4 * (n_all - n_lora) + 6 * n_lora


def arm_tuneforge(precision: str | None = None, compile_: bool | None = None, cold: bool = False) -> dict:
    if cold:  # an empty kernel cache: what the first compiled run of this model costs
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    import tuneforge

    _, _, heldout = encoded_splits()
    cfg = {
        "task": "sft",
        "model": {"name": MODEL},
        "data": {"train": training_file(), "max_length": MAX_LEN, "validation_fraction": 0.0, "audit": False},
        "method": {"name": "lora", "r": 16, "alpha": 32, "target_modules": TARGETS},
        "training": {
            "max_steps": STEPS,
            "batch_size": BATCH,
            "lr": LR,
            "warmup_steps": 0,
            "log_every": 1,
            "eval_every": 10_000,
            "save_every": 10_000,
        },
        "sft": {"samples": 0},
        "eval": {"baseline": False, "report": False, "forgetting": False, "bias": False},
        "output": {"dir": "/tmp/tuneforge-bench", "name": "sft", "overwrite": True},
    }
    if precision:
        cfg["training"]["precision"] = precision
    if compile_ is not None:
        cfg["training"]["compile"] = compile_
    run = tuneforge.train(cfg)
    rss = run.summary()["peak_rss_mb"]  # measured when training ended, before the final evaluation
    train_logs = [m for m in run.metrics() if m["split"] == "train"]
    logs = [m for m in train_logs if m["step"] > WARMUP]
    tokens, seconds = sum(m["tokens"] for m in logs), sum(m["seconds"] for m in logs)
    padded = sum(m["tokens"] / (1 - m["padding"]) for m in logs)
    warmup = sum(m["seconds"] for m in train_logs if m["step"] <= WARMUP)
    model = run.load_model()
    used = run.summary()["precision"]
    return {
        "tool": f"tuneforge ({used}"
        + (", defaults" if precision is None and compile_ is None and not cold else "")
        + (", no compile" if compile_ is False else "")
        + (", first compile: empty kernel cache" if cold else "")
        + ")",
        "precision": used,
        "tokens_per_s": tokens / seconds,
        "padding": 1 - tokens / padded,
        "peak_rss_mb": rss,
        "heldout_loss": heldout_loss(model, heldout),
        "flops_per_token": lora_flops_per_token(model),
        "warmup_seconds": warmup,
        "compiled": run.summary().get("compiled_blocks", 0) > 0,
    }


def _reference(kind: str, bf16: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback

    from tuneforge.models.load import resolve_model

    tok, train, heldout = encoded_splits()
    torch.manual_seed(42)
    path = resolve_model(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM")
    marks: dict[str, float] = {}
    tokens: list[tuple[int, int]] = []  # (real, padded) per training forward

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.setdefault("begin", time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                marks["start"] = time.perf_counter()
                tokens.clear()
            if state.global_step == STEPS:
                marks["end"] = time.perf_counter()

    def count_tokens(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if module.training and mask is not None:
            tokens.append((int(mask.sum()), mask.numel()))

    common = dict(
        output_dir=f"/tmp/bench-{kind}",
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        max_steps=STEPS,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        seed=42,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        use_cpu=True,
        bf16=bf16,
        dataloader_num_workers=0,
    )
    if kind == "trainer":
        from peft import get_peft_model
        from transformers import Trainer, TrainingArguments

        model = get_peft_model(model, lora)
        rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in train]

        def collate(batch):
            width = max(len(r["input_ids"]) for r in batch)
            pad = tok.pad_token_id
            return {
                "input_ids": torch.tensor(
                    [r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch]
                ),
                "attention_mask": torch.tensor(
                    [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
                ),
                "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in batch]),
            }

        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=rows,
            data_collator=collate,
            callbacks=[Clock()],
        )
        model.get_base_model().register_forward_pre_hook(count_tokens, with_kwargs=True)
    else:
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list(
            [{"input_ids": e.input_ids, "assistant_masks": [int(x != -100) for x in e.labels]} for e in train]
        )
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, max_length=MAX_LEN),
            train_dataset=ds,
            processing_class=tok,
            peft_config=lora,
            callbacks=[Clock()],
        )
        trainer.model.get_base_model().register_forward_pre_hook(count_tokens, with_kwargs=True)
    trainer.train()
    rss = peak_rss_mb()
    name = "transformers Trainer + PEFT" if kind == "trainer" else "TRL SFTTrainer (defaults)"
    return {
        "tool": f"{name} ({'bf16' if bf16 else 'fp32'})",
        "precision": "bf16" if bf16 else "fp32",
        "tokens_per_s": sum(r for r, _ in tokens[:TIMED]) / (marks["end"] - marks["start"]),
        "padding": 1 - sum(r for r, _ in tokens[:TIMED]) / sum(p for _, p in tokens[:TIMED]),
        "peak_rss_mb": rss,
        "heldout_loss": heldout_loss(trainer.model, heldout),
        "flops_per_token": lora_flops_per_token(trainer.model),
        "warmup_seconds": marks["start"] - marks["begin"],
    }


def matmul_peak() -> dict:
    import torch

    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        a @ b
        best = float("inf")
        for _ in range(5):  # the best of five rounds: the peak, not a moment of contention
            t = time.perf_counter()
            for _ in range(5):
                a @ b
            best = min(best, time.perf_counter() - t)
        out[name] = 5 * 2 * 2048**3 / best
    return out


ARMS = {
    "tuneforge": lambda: arm_tuneforge(),
    "tuneforge-fp32": lambda: arm_tuneforge("fp32"),
    "tuneforge-nocompile": lambda: arm_tuneforge(compile_=False),
    "tuneforge-cold": lambda: arm_tuneforge(cold=True),
    "trainer-fp32": lambda: _reference("trainer", False),
    "trainer-bf16": lambda: _reference("trainer", True),
    "trl-fp32": lambda: _reference("trl", False),
    "trl-bf16": lambda: _reference("trl", True),
    "peak": matmul_peak,
}


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(ARMS[sys.argv[1]]()))
        return
    arms = os.environ.get(
        "BENCH_ARMS",
        "peak,tuneforge,tuneforge-cold,tuneforge-nocompile,tuneforge-fp32,trainer-fp32,trainer-bf16,trl-fp32,trl-bf16",
    ).split(",")
    arms = [a for a in arms if a]  # BENCH_REUSE=1 BENCH_ARMS= re-renders the last results
    results = {}
    previous = os.path.exists(RESULTS_FILE) and os.environ.get("BENCH_REUSE")
    if previous:  # BENCH_REUSE=1: keep the arms measured last time that are not re-run now
        results = {k: v for k, v in json.loads(open(RESULTS_FILE).read())["results"].items() if k not in arms}
    for arm in arms:
        print(f"running {arm} ...", flush=True)
        results[arm] = run_isolated(__file__, arm)
    peak = results.pop("peak", None) or (
        json.loads(open(RESULTS_FILE).read())["peak_flops"] if previous else matmul_peak()
    )
    rows = list(results.values())
    for r in rows:
        r["peak_fraction"] = r["tokens_per_s"] * r["flops_per_token"] / peak[r["precision"]]
    m = machine()
    ref = {k: results[k] for k in ("trainer-fp32", "trainer-bf16", "trl-fp32", "trl-bf16") if k in results}
    lines = [
        f"SFT LoRA workload: SmolLM2-135M-Instruct, LoRA r=16 on 7 projections, batch 8, max length 512, "
        f"ChatterBot as in the issue ({len(split_corpus()[0]):,} conversations, repeats included; {HELDOUT} others held out), "
        f"{TIMED} timed steps ({m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}; "
        f"measured matmul peak {peak['fp32'] / 1e9:.0f} GFLOP/s fp32, {peak['bf16'] / 1e9:.0f} GFLOP/s bf16)",
        "",
        "| tool | real tokens/s | padding | peak RSS (GB) | held-out loss | share of matmul peak | 3 warm-up steps (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['tokens_per_s']:.1f} | {100 * r.get('padding', float('nan')):.0f}% | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {r['heldout_loss']:.4f} | "
            f"{100 * r['peak_fraction']:.0f}% | {r.get('warmup_seconds', float('nan')):.1f} |"
        )
    ours = results.get("tuneforge")
    if ours and ref:
        fastest = max(ref.values(), key=lambda r: r["tokens_per_s"])
        lines.append("")
        if "trainer-fp32" in ref:
            tr = ref["trainer-fp32"]
            lines.append(
                f"tuneforge defaults vs Trainer fp32: {ours['tokens_per_s'] / tr['tokens_per_s']:.2f}x tokens/s, "
                f"{ours['peak_rss_mb'] / tr['peak_rss_mb']:.2f}x peak RSS, held-out loss "
                f"{100 * (ours['heldout_loss'] / tr['heldout_loss'] - 1):+.1f}%."
            )
        lines.append(
            f"vs the fastest reference ({fastest['tool']}): {ours['tokens_per_s'] / fastest['tokens_per_s']:.2f}x."
        )
        trl = [r for k, r in ref.items() if k.startswith("trl")]
        if trl:
            lines.append(
                f"peak RSS vs TRL's lowest: {ours['peak_rss_mb'] / min(r['peak_rss_mb'] for r in trl):.2f}x."
            )
    write("sft", {"machine": m, "peak_flops": peak, "results": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
