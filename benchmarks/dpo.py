"""DPO LoRA workload: the shipped configs/dpo-smollm2-lora.yaml against TRL's DPOTrainer.

Both arms train SmolLM2-135M-Instruct with LoRA (r=16, alpha=32, no dropout, all linear layers) on the
same ChatterBot preference pairs (the config's 288-pair slice, the same order-independent split), sigmoid
DPO loss with beta 0.1, batch 8, lr 5e-4 with 10% warm-up then cosine decay, weight decay 0.01, gradient
clipping at 1.0, the config's precision (``auto``: bf16 autocast where the CPU multiplies bf16 natively,
else fp32; TRL the same), one epoch (36 steps); the reference model is the same weights with the
adapter switched off in both. Each arm runs in its own process, one after the other, so its peak RSS is
its own. Reported:

- real tokens/s over the steps after the first 3 (warm-up, compilation): the chosen and rejected rows'
  tokens (prompt + answer, no padding) of each step, over the step's wall time, counted the same way in
  both arms (a pair's prompt counts twice, once in each row, though tuneforge computes it once);
- peak RSS (``ru_maxrss``) when training has ended, read the same way in both processes;
- held-out preference accuracy on the 75 test pairs: how often the implicit reward
  ``beta * (log pi - log ref)`` ranks chosen first, computed by the same code for both arms (fp32).

Arms: ``tuneforge`` (the shipped config as it is), ``tuneforge-plain`` (its speed levers off: each prompt
computed in both rows of its pair, no packing, full logits, no compile, fp32 frozen base), ``trl``
(DPOTrainer's defaults: the reference log-probs computed at every step) and ``trl-precompute``
(``precompute_ref_log_probs=True``).

    python benchmarks/dpo.py                  # every arm, writes results/dpo.{json,md} (about 40-60 min alone)
    python benchmarks/dpo.py --quick          # 24 pairs, 3 steps: checks the script, writes nothing
    python benchmarks/dpo.py tuneforge        # one arm, prints its JSON
    BENCH_ARMS=tuneforge python benchmarks/dpo.py   # re-measure one arm; the others keep their last result
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import QUICK, compare_arms, peak_rss_mb, shipped_config  # noqa: E402

CONFIG, OVERRIDES = shipped_config("dpo-smollm2-lora.yaml", "dpo")
WARMUP = 1 if QUICK else 3
if QUICK:
    OVERRIDES += ["data.limit=24", "data.eval_limit=16"]
PLAIN = [
    "preference.share_prompts=false",
    "preference.packing=false",
    "sft.fast_loss=false",
    "training.compile=false",
    "training.bf16_frozen_base=false",
]


def evaluator(cfg):
    """The task that scores held-out pairs, without a model of its own: the same code for every arm."""
    from tuneforge.tasks.dpo import PreferenceTask

    return PreferenceTask(cfg, load_model=False)


def heldout_accuracy(task, model) -> dict:
    """Preference accuracy, reward margin and likelihood accuracy on the test pairs (fp32, adapter off as reference)."""
    import torch

    model = model.float().eval()
    with torch.no_grad():
        m = task.evaluate(model, "test")
    out = {k: m[k] for k in ("preference_accuracy", "margin", "likelihood_accuracy") if k in m}
    return {**out, "n_test": len(task.encoded["test"]["examples"])}


def arm_tuneforge(plain: bool = False) -> dict:
    import tuneforge
    from tuneforge.config import load_config

    overrides = OVERRIDES + (PLAIN if plain else [])
    run = tuneforge.train(CONFIG, overrides=overrides)
    rss = peak_rss_mb()  # after training and its final evaluation (fp32 log-probs, no generation)
    logs = [m for m in run.metrics() if m["split"] == "train"]
    timed = [m for m in logs if m["step"] > WARMUP]
    tokens, seconds = sum(m["tokens"] for m in timed), sum(m["seconds"] for m in timed)
    padded = sum(m["tokens"] / (1 - m["padding"]) for m in timed if m.get("padding") is not None)
    task = evaluator(load_config(CONFIG, overrides))
    summary = run.summary()
    return {
        "tool": "tuneforge (shipped config" + (", levers off" if plain else "") + ")",
        "steps": len(logs),
        "tokens_per_s": tokens / seconds,
        "seconds_per_step": seconds / len(timed),
        "train_seconds": sum(m["seconds"] for m in logs),  # every step, reference passes included
        "padding_before_packing": 1 - tokens / padded if padded else None,
        "peak_rss_mb": rss,
        "peak_rss_training_mb": summary.get("peak_rss_mb"),
        "compiled": summary.get("compiled_blocks", 0) > 0,
        "train_loss_last": logs[-1]["loss"],
        **heldout_accuracy(task, run.load_model()),
    }


def arm_trl(precompute: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tuneforge.config import load_config
    from tuneforge.models.load import resolve_model
    from tuneforge.recipe import resolve_precision

    cfg = load_config(CONFIG, OVERRIDES)
    task = evaluator(cfg)  # the same pairs: tuneforge's split and slice of the bundled data
    t, m, p = cfg.training, cfg.method, cfg.preference
    precision = resolve_precision(t.precision, cpu=True)  # what the config's `auto` gives tuneforge here
    rows = [{"prompt": e.messages, "chosen": e.chosen, "rejected": e.rejected} for e in task.splits["train"]]
    torch.manual_seed(t.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.name), dtype=torch.float32)
    lora = LoraConfig(
        r=m.r,
        lora_alpha=m.alpha,
        lora_dropout=m.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    marks: dict[str, float] = {}
    tokens: list[int] = []  # real tokens of each policy forward (chosen and rejected rows of a step)
    steps = (len(rows) // t.batch_size) * int(t.epochs)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            marks.setdefault("begin", time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                marks["start"] = time.perf_counter()
                tokens.clear()
            marks["end"], marks["steps"] = time.perf_counter(), state.global_step

    def count_tokens(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if module.training and torch.is_grad_enabled() and mask is not None:  # not the reference pass
            tokens.append(int(mask.sum()))

    args = DPOConfig(
        output_dir="/tmp/bench-trl-dpo",
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=steps,
        lr_scheduler_type=t.scheduler,
        # a float < 1 is a ratio (tuneforge's default ratio is 0.06)
        warmup_steps=(t.warmup_ratio if t.warmup_ratio is not None else 0.06)
        if t.warmup_steps is None
        else t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        beta=p.beta,
        loss_type=[p.loss_type],
        max_length=cfg.data.max_length,
        precompute_ref_log_probs=precompute,
        bf16=precision == "bf16",
        use_cpu=True,
        seed=t.seed,
        report_to=[],
        save_strategy="no",
        logging_steps=t.log_every,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=task.tokenizer,
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.model.get_base_model().register_forward_pre_hook(count_tokens, with_kwargs=True)
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0  # every step, and the reference pass when precomputed
    seconds = marks["end"] - marks["start"]
    last_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rss = peak_rss_mb()
    return {
        "tool": "TRL DPOTrainer (" + ("precompute_ref_log_probs" if precompute else "defaults") + ")",
        "steps": marks["steps"],
        "tokens_per_s": sum(tokens) / seconds,
        "seconds_per_step": seconds / (marks["steps"] - WARMUP),
        "train_seconds": train_seconds,
        "peak_rss_mb": rss,
        "train_loss_last": last_loss[-1] if last_loss else None,
        **heldout_accuracy(task, trainer.model),
    }


ARMS = {
    "tuneforge": lambda: arm_tuneforge(),
    "tuneforge-plain": lambda: arm_tuneforge(plain=True),
    "trl": lambda: arm_trl(),
    "trl-precompute": lambda: arm_trl(precompute=True),
}


def table(results: dict, m: dict) -> str:
    n_test = next(iter(results.values()), {}).get("n_test", 75)
    lines = [
        f"DPO LoRA workload: configs/dpo-smollm2-lora.yaml (SmolLM2-135M-Instruct, LoRA r=16 all-linear, sigmoid "
        f"beta 0.1, batch 8, max length 96, 288 ChatterBot pairs, 1 epoch, bf16 where native) against TRL's DPOTrainer, "
        f"the same pairs and settings; tokens/s after {WARMUP} warm-up steps; preference accuracy on the "
        f"{n_test} held-out pairs ({m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']})",
        "",
        "| tool | real tokens/s | s/step | whole training (s) | peak RSS (GB) | held-out preference accuracy | margin |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {r['tool']} | {r['tokens_per_s']:.1f} | {r['seconds_per_step']:.2f} | {r['train_seconds']:.0f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {r.get('preference_accuracy', float('nan')):.3f} | "
            f"{r.get('margin', float('nan')):+.3f} |"
        )
    ours, trl = results.get("tuneforge"), results.get("trl")
    if ours and trl:
        lines += [
            "",
            f"tuneforge vs TRL (defaults): {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x tokens/s (target >= 3x), "
            f"{ours['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x peak RSS (target <= 0.5x), held-out preference "
            f"accuracy {ours.get('preference_accuracy', float('nan')):.3f} vs {trl.get('preference_accuracy', float('nan')):.3f}.",
        ]
    return "\n".join(lines)


def main() -> None:
    compare_arms(
        __file__,
        "dpo",
        ARMS,
        "tuneforge,tuneforge-plain,trl,trl-precompute",
        table,
        "configs/dpo-smollm2-lora.yaml",
        "a check of the script on a slice",
    )


if __name__ == "__main__":
    main()
