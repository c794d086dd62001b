"""GRPO LoRA workload: the shipped configs/grpo-smollm2-lora.yaml against TRL's GRPOTrainer.

Both arms train SmolLM2-135M-Instruct with LoRA (r=16, alpha=32, no dropout, all linear layers) on the
same ChatterBot prompts with the same rewards (short_answer:15 + ends_with_period + max_words:15, each
0 or 1; tuneforge's reward functions, wrapped for TRL), 4 prompts x 4 sampled completions per step
(temperature 1.0, top-p 1.0, at most 32 new tokens), a KL penalty to the adapter-off base of 0.2, the
"dapo" token aggregation with group-scaled advantages, lr 5e-4 constant after 2 warm-up steps, 20 optimizer
steps, one policy update per sampled batch, all 16 completions in one micro-batch. tuneforge runs the config's
precision (``auto``: where bf16 is native, autocast over a bf16 frozen base and rollouts from a merged bf16 copy;
fp32 elsewhere); TRL runs twice, fp32 (``trl``) and
bf16 autocast (``trl-bf16``), and the faster of the two is the reference. Each arm runs in its own process,
one after the other. Reported:

- seconds per optimizer step (sampling + scoring + update) over the steps after the first 2;
- the mean sampled reward of every step (the reward curve) and its mean over the last 5 steps;
- the mean reward of greedy answers to the config's 40 held-out prompts after training, computed by the
  same code for both arms (tuneforge's ``GRPOTask.evaluate``), and peak RSS.

    python benchmarks/grpo.py                 # both arms, writes results/grpo.{json,md} (about 20-40 min alone)
    python benchmarks/grpo.py --quick         # 3 steps, 8 held-out prompts: checks the script, writes nothing
    python benchmarks/grpo.py tuneforge       # one arm, prints its JSON
    BENCH_ARMS=tuneforge python benchmarks/grpo.py   # re-measure one arm; the other keeps its last result
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import QUICK, compare_arms, peak_rss_mb, shipped_config  # noqa: E402

CONFIG, OVERRIDES = shipped_config("grpo-smollm2-lora.yaml", "grpo")
WARMUP = 1 if QUICK else 2
if QUICK:
    OVERRIDES += ["training.max_steps=3", "data.eval_limit=8"]


def evaluator(cfg):
    from tuneforge.tasks.grpo import GRPOTask

    return GRPOTask(cfg, load_model=False)


def heldout_reward(task, model) -> float:
    """Mean reward of greedy answers to the held-out prompts (the same generation and scoring for both arms)."""
    import torch

    model = model.float().eval()
    with torch.no_grad():
        return task.evaluate(model, "test")["reward"]


def arm_tuneforge() -> dict:
    import tuneforge
    from tuneforge.config import load_config

    run = tuneforge.train(CONFIG, overrides=OVERRIDES)
    rss = peak_rss_mb()
    logs = [m for m in run.metrics() if m["split"] == "train"]
    timed = [m for m in logs if m["step"] > WARMUP]
    task = evaluator(load_config(CONFIG, OVERRIDES))
    return {
        "tool": "tuneforge (shipped config)",
        "steps": len(logs),
        "seconds_per_step": sum(m["seconds"] for m in timed) / len(timed),
        "reward_curve": [m.get("reward") for m in logs],
        "peak_rss_mb": rss,
        "heldout_reward": heldout_reward(task, run.load_model()),
    }


def arm_trl(bf16: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tuneforge.config import load_config
    from tuneforge.models.load import resolve_model
    from tuneforge.tasks.lm import prompt_text
    from tuneforge.tasks.rewards import load_rewards

    cfg = load_config(CONFIG, OVERRIDES)
    task = evaluator(cfg)  # the same prompts: tuneforge's split of the bundled data
    t, m, g = cfg.training, cfg.method, cfg.grpo
    rows = [{"prompt": e.messages} for e in task.splits["train"]]

    def wrap(reward):
        """A tuneforge reward as a TRL reward function (conversational completions -> text)."""

        def fn(prompts, completions, **_):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            asked = [prompt_text(p) if isinstance(p, list) else p for p in prompts]
            return reward(asked, texts, [None] * len(texts))

        fn.__name__ = reward.name.replace(":", "_")
        return fn

    rewards = load_rewards(g.rewards, g.reward_weights)
    torch.manual_seed(t.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model.name), dtype=torch.float32)
    lora = LoraConfig(
        r=m.r,
        lora_alpha=m.alpha,
        lora_dropout=m.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    marks: dict[int, float] = {}
    begins: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            begins[state.global_step + 1] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            marks[state.global_step] = time.perf_counter() - begins[state.global_step]

    args = GRPOConfig(
        output_dir="/tmp/bench-trl-grpo",
        per_device_train_batch_size=t.batch_size * g.group_size,  # completions per step: 4 prompts x 4
        num_generations=g.group_size,
        steps_per_generation=1,  # one update per sampled batch, as tuneforge
        max_completion_length=g.max_new_tokens,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.kl_beta,
        loss_type=g.loss_aggregation,
        scale_rewards="group" if g.scale_rewards else "none",
        reward_weights=g.reward_weights,
        learning_rate=t.lr,
        lr_scheduler_type="constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        warmup_steps=t.warmup_steps or 0,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_steps=t.max_steps,
        bf16=bf16,
        use_cpu=True,
        seed=t.seed,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[wrap(r) for r in rewards],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=task.tokenizer,
        peft_config=lora,
        callbacks=[Clock()],
    )
    trainer.train()
    rss = peak_rss_mb()
    timed = [s for step, s in marks.items() if step > WARMUP]
    curve = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "tool": "TRL GRPOTrainer (same settings, " + ("bf16 autocast" if bf16 else "fp32") + ")",
        "steps": len(marks),
        "seconds_per_step": sum(timed) / len(timed),
        "reward_curve": curve,
        "peak_rss_mb": rss,
        "heldout_reward": heldout_reward(task, trainer.model),
    }


ARMS = {"tuneforge": arm_tuneforge, "trl": arm_trl, "trl-bf16": lambda: arm_trl(bf16=True)}


def table(results: dict, m: dict) -> str:
    lines = [
        f"GRPO LoRA workload: configs/grpo-smollm2-lora.yaml (SmolLM2-135M-Instruct, LoRA r=16 all-linear, 4 prompts "
        f"x 4 completions of at most 32 tokens per step, KL 0.2, 20 steps) against TRL's GRPOTrainer with "
        f"the same rewards and settings; seconds per step after {WARMUP} warm-up steps ({m['date']}, {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']})",
        "",
        "| tool | s/step | mean reward, last 5 steps | held-out reward (greedy) | peak RSS (GB) | reward curve |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.values():
        curve = [x for x in r["reward_curve"] if x is not None]
        tail = sum(curve[-5:]) / max(1, len(curve[-5:]))
        lines.append(
            f"| {r['tool']} | {r['seconds_per_step']:.2f} | {tail:.2f} | {r['heldout_reward']:.3f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {' '.join(f'{x:.2f}' for x in curve)} |"
        )
    ours = results.get("tuneforge")
    trls = [r for k, r in results.items() if k.startswith("trl")]
    if ours and trls:
        trl = min(trls, key=lambda r: r["seconds_per_step"])  # TRL's faster precision is the reference
        lines += [
            "",
            f"tuneforge vs TRL's faster arm ({trl['tool']}): {trl['seconds_per_step'] / ours['seconds_per_step']:.2f}x "
            "faster per step (target >= 2x).",
        ]
    return "\n".join(lines)


def main() -> None:
    compare_arms(
        __file__,
        "grpo",
        ARMS,
        "tuneforge,trl,trl-bf16",
        table,
        "configs/grpo-smollm2-lora.yaml",
        "a check of the script on 3 steps",
    )


if __name__ == "__main__":
    main()
