"""Preference tuning on the tiny random Llama: reward models, DPO/IPO/hinge/ORPO/KTO and GRPO.

Each task trains a few steps on synthetic, learnable pairs (the chosen answer is always a "good" word, the
rejected one a "bad" word) and must lower its loss or raise its reward, keep frozen weights frozen, write
the run folder and load back. ``-m e2e`` runs the real SmolLM2 on the bundled ChatterBot pairs.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import max_diff, state

from tuneforge.config import from_dict
from tuneforge.errors import ConfigError

GOOD = ["Yes, gladly.", "Sure, here it is.", "Of course.", "Happy to help."]
BAD = ["No.", "Go away.", "Ask someone else.", "Not interested."]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    topics = ["the weather", "a poem", "your name", "the time", "a joke", "some help", "the news", "a recipe"]
    return [
        {
            "prompt": f"Can you tell me about {rng.choice(topics)}? ({i})",
            "chosen": rng.choice(GOOD),
            "rejected": rng.choice(BAD),
        }
        for i in range(n)
    ]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(72)))
    return str(path)


def cfg_for(task: str, model: str, train_file: str, out, **sections) -> dict:
    cfg = {
        "task": task,
        "model": {"name": model, "dropout": 0.0},
        "data": {
            "train": train_file,
            "max_length": 48,
            "validation_fraction": 0.1,
            "test_fraction": 0.15,
            "audit": False,
        },
        "method": {"name": "lora", "r": 8, "alpha": 16, "lora_dropout": 0.0},
        "training": {
            "max_steps": 12,
            "batch_size": 8,
            "lr": 5e-3,
            "eval_every": 12,
            "log_every": 3,
            "warmup_steps": 0,
        },
        "eval": {"batch_size": 32, "report": False},
        "output": {"dir": str(out), "name": "run", "overwrite": True},
    }
    if task != "reward":  # generation settings: only the language-model tasks read the sft section
        cfg["sft"] = {"samples": 2, "max_new_tokens": 4}
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def train_log(run) -> list[dict]:
    return [m for m in run.metrics() if m["split"] == "train"]


# ---------------------------------------------------------------- reward model
def test_reward_model_learns_and_scores(tiny_llama, pairs_file, tmp_path):
    from tuneforge.cli import main
    from tuneforge.recipe import train

    run = train(cfg_for("reward", tiny_llama, pairs_file, tmp_path, training={"lr": 1e-2}))
    log = train_log(run)
    assert log[-1]["loss"] < log[0]["loss"] and all(
        k in log[-1] for k in ("accuracy", "margin", "reward_chosen")
    )
    result = json.loads((run.path / "eval.json").read_text())
    assert (
        result["task"] == "reward" and result["tuned"]["accuracy"] >= 0.9
    )  # chosen is always a "good" answer
    assert result["baseline"]["predicts"] == "the longer answer"
    assert (run.path / "model" / "adapter_config.json").exists() and (
        run.path / "model" / "labels.json"
    ).exists()
    good, bad = run.score("Can you tell me about a joke?", ["Of course.", "Go away."])
    assert good > bad
    main(["score", str(run.path), "--prompt", "Can you tell me about a joke?", "--response", "Of course."])
    pairs = tmp_path / "score.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(4, seed=9)))
    main(["score", str(run.path), "--file", str(pairs)])
    with pytest.raises(SystemExit):  # a user error: printed without a traceback, exit status 2
        main(["score", str(run.path)])
    from tuneforge.tasks.rewards import load_reward

    as_reward = load_reward(str(run.path))  # a reward model run folder is a GRPO reward function
    scores = as_reward(["Can you tell me about a joke?"] * 2, ["Of course.", "Go away."], [None, None])
    assert scores == pytest.approx([good, bad], abs=1e-4)


def test_reward_rejects_prompt_tuning_and_kto_rows(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="reward model"):
        from_dict({"task": "reward", "method": {"name": "prompt"}})
    kto = tmp_path / "kto.jsonl"
    kto.write_text(json.dumps({"prompt": "hi", "completion": "hello", "label": True}) + "\n")
    from tuneforge.errors import DataError
    from tuneforge.tasks.reward import RewardTask

    with pytest.raises(DataError, match="cannot train task 'reward'"):
        RewardTask(from_dict(cfg_for("reward", tiny_llama, str(kto), tmp_path)), load_model=False)


# ---------------------------------------------------------------- DPO family
def test_dpo_lora_learns_with_adapter_as_reference(tiny_llama, pairs_file, tmp_path):
    from tuneforge.recipe import train

    run = train(
        cfg_for(
            "dpo",
            tiny_llama,
            pairs_file,
            tmp_path,
            training={"max_steps": 8, "eval_every": 8, "log_every": 2},
        )
    )
    log = train_log(run)
    assert log[-1]["loss"] < log[0]["loss"] < 0.7  # starts at log 2 = 0.693 (policy == reference)
    assert log[-1]["margin"] > 0 and log[-1]["preference_accuracy"] > 0.8
    result = json.loads((run.path / "eval.json").read_text())
    assert result["baseline"]["preference_accuracy"] == 0.5  # the base is the reference: implicit reward 0
    assert result["tuned"]["preference_accuracy"] > 0.8
    assert len(result["samples"]) == 2 and (run.path / "samples.jsonl").exists()
    model = run.load_model()  # the adapter on its base, loads back
    assert hasattr(model, "disable_adapter")


def test_reference_is_the_adapter_switched_off(tiny_llama, pairs_file, tmp_path):
    """With LoRA no copy is held: the reference log-probs equal the untouched base model's."""
    from transformers import AutoModelForCausalLM

    from tuneforge.methods import prepare
    from tuneforge.tasks.dpo import PreferenceTask

    cfg = from_dict(cfg_for("dpo", tiny_llama, pairs_file, tmp_path))
    task = PreferenceTask(cfg)
    assert task.ref_model is None
    prepared = prepare(task.model, cfg.method, cfg.training, head=False)
    with torch.no_grad():
        for name, p in prepared.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # make the adapter matter
    batch = task.collate([0, 1, 2])
    ref = task.reference_logps(prepared.model, "train", batch["index"], batch)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        expected = task.logps(base, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
        policy = task.logps(prepared.model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-4)
    assert (policy - expected).abs().max() > 1e-2
    assert not torch.isnan(task._ref_cache["train"][batch["index"]]).any()  # cached for later epochs


def test_response_only_logits_match_the_full_forward(tiny_llama, pairs_file, tmp_path):
    """PreferenceTask.logps projects only the response positions to the vocabulary: same numbers as the plain path."""
    import peft

    from tuneforge.tasks.dpo import PreferenceTask
    from tuneforge.train.losses import sequence_logps

    task = PreferenceTask(from_dict(cfg_for("dpo", tiny_llama, pairs_file, tmp_path)))
    batch = task.collate(list(range(6)))
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    prompt_tuned = peft.get_peft_model(
        task.model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    for model in (task.model, prompt_tuned):  # prompt tuning prepends virtual positions to the logits
        with torch.no_grad():
            fast, n = task.logps(model, *args)
            logits = model(input_ids=args[0], attention_mask=args[1]).logits[:, -args[0].shape[1] :]
            torch.testing.assert_close(fast, sequence_logps(logits, args[2]))
    assert n.tolist() == (args[2][:, 1:] != -100).sum(1).tolist()


def test_dpo_full_keeps_a_frozen_reference(tiny_llama, pairs_file, tmp_path):
    from tuneforge.methods import prepare
    from tuneforge.tasks.dpo import PreferenceTask

    cfg = from_dict(cfg_for("dpo", tiny_llama, pairs_file, tmp_path, method={"name": "full"}))
    task = PreferenceTask(cfg)
    assert task.ref_model is not None and not any(p.requires_grad for p in task.ref_model.parameters())
    ref_before = state(task.ref_model)
    prepared = prepare(task.model, cfg.method, cfg.training, head=False)
    opt = torch.optim.SGD([p for p in prepared.model.parameters() if p.requires_grad], lr=0.05)
    batch = task.collate(list(range(8)))
    for _ in range(2):
        loss, n = task.loss(prepared.model, batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad()
    assert max_diff(ref_before, state(task.ref_model)) == 0
    assert max_diff(ref_before, state(prepared.model)) > 0


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "orpo", "kto"])
def test_dpo_relatives_train(tiny_llama, pairs_file, tmp_path, loss_type):
    from tuneforge.recipe import train

    run = train(
        cfg_for(
            "dpo",
            tiny_llama,
            pairs_file,
            tmp_path,
            preference={"loss_type": loss_type},
            training={"max_steps": 6, "eval_every": 6},
            sft={"samples": 0},
        )
    )
    log = train_log(run)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in log)
    assert log[-1]["loss"] < log[0]["loss"]
    result = json.loads((run.path / "eval.json").read_text())
    assert (
        result["loss_type"] == loss_type and "preference_accuracy" in result["tuned"]
    )  # paired held-out data
    if loss_type == "kto":
        assert "kl" in log[0] and run.path.joinpath("data.json").exists()
        assert (
            json.loads((run.path / "data.json").read_text())["train"]["kto_rows"] > 0
        )  # pairs split into rows


def test_kto_mismatched_rows_are_real_encodings(tiny_llama, pairs_file, tmp_path):
    """KTO's KL rows (prompt i + completion of the next row of the step) equal encoding that prompt and completion directly."""
    from tuneforge.data.chat import encode_prompt_response
    from tuneforge.tasks.dpo import PreferenceTask

    cfg = from_dict(cfg_for("dpo", tiny_llama, pairs_file, tmp_path, preference={"loss_type": "kto"}))
    task = PreferenceTask(cfg, load_model=False)
    rows = [task.splits["train"][0], task.splits["train"][1]]
    batch = task._batch(task.mismatched([2, 3]))  # unpaired rows 2, 3 = pair 1's chosen and rejected
    train_rows = [r for e in rows for r in ((e, e.chosen), (e, e.rejected))]
    expected = encode_prompt_response(
        task.tokenizer, train_rows[3][0].messages, train_rows[2][1], 48
    )  # prompt 3, completion 2
    n = len(expected.input_ids)
    assert batch["input_ids"][1, :n].tolist() == expected.input_ids
    assert batch["labels"][1, :n].tolist() == expected.labels


def test_unpaired_rows_need_kto(tiny_llama, tmp_path):
    from tuneforge.errors import DataError
    from tuneforge.tasks.dpo import PreferenceTask

    path = tmp_path / "kto.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "completion": "a", "label": i % 2 == 0}) + "\n" for i in range(20)
        )
    )
    with pytest.raises(DataError, match="loss_type=kto"):
        PreferenceTask(from_dict(cfg_for("dpo", tiny_llama, str(path), tmp_path)), load_model=False)
    task = PreferenceTask(
        from_dict(cfg_for("dpo", tiny_llama, str(path), tmp_path, preference={"loss_type": "kto"})),
        load_model=False,
    )
    assert task.default_metric().name == "label_accuracy"


# ---------------------------------------------------------------- GRPO
@pytest.fixture(scope="module")
def small_vocab_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with 64 word tokens (half of them capitalised) carrying almost all of the next-token mass.

    A random model spreads its samples over 49k tokens, so no sampled token recurs and a policy gradient has
    nothing to build on within a few steps; with a small effective vocabulary GRPO's effect shows at once.
    """
    import re

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    words = [i for i in range(1000, 6000) if re.fullmatch(r" [A-Za-z]{3,}", tok.decode([i]))]
    subset = [i for i in words if tok.decode([i])[1].isupper()][:32] + [
        i for i in words if tok.decode([i])[1].islower()
    ][:32]
    with torch.no_grad():
        model.get_input_embeddings().weight[subset] *= 40  # tied: these logits dominate
    path = tmp_path_factory.mktemp("small-vocab-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_grpo_reward_rises_and_kl_stays_finite(small_vocab_llama, pairs_file, tmp_path):
    from tuneforge.recipe import train

    cfg = cfg_for(
        "grpo",
        small_vocab_llama,
        pairs_file,
        tmp_path,
        method={"name": "full"},
        data={"test_fraction": 0.06, "validation_fraction": 0.04},
        training={"max_steps": 10, "batch_size": 4, "lr": 1e-2, "log_every": 2, "eval_every": 10},
        grpo={
            "rewards": ["regex:^[A-Z]"],
            "group_size": 8,
            "max_new_tokens": 2,
            "kl_beta": 0.04,
            "eval_prompts": 2,
        },
    )
    run = train(cfg)
    log = train_log(run)
    assert log[-1]["reward"] >= log[0]["reward"] + 0.2  # the first word learns to be capitalised
    assert all(0 <= m["kl"] < 100 for m in log) and log[-1]["kl"] > 0  # finite, and the policy did move
    result = json.loads((run.path / "eval.json").read_text())
    assert result["task"] == "grpo" and {"tuned", "baseline", "samples"} <= set(result)
    assert run.load_model() is not None


def test_grpo_reads_prompt_only_files_and_rejects_bad_rewards(tiny_llama, tmp_path):
    from tuneforge.tasks.grpo import GRPOTask

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something {i}"}) + "\n" for i in range(30)))
    task = GRPOTask(from_dict(cfg_for("grpo", tiny_llama, str(path), tmp_path)), load_model=False)
    assert task.splits["train"][0].messages == [
        {"role": "user", "content": task.splits["train"][0].messages[0]["content"]}
    ]
    # a step computes each prompt once and group_size completions (grpo.share_prompts): lengths count that
    assert task.counts[0] == 4
    assert task.lengths[0] == len(task.prompt_ids["train"][0]) + 4 * task.g.max_new_tokens
    with pytest.raises(RuntimeError, match="begin_step"):  # the step samples first
        task.collate([0, 1])
    with pytest.raises(ConfigError, match="not a built-in reward"):
        GRPOTask(
            from_dict(cfg_for("grpo", tiny_llama, str(path), tmp_path, grpo={"rewards": ["nonsense"]})),
            load_model=False,
        )
    with pytest.raises(ConfigError, match="one per function"):
        from_dict({"task": "grpo", "grpo": {"rewards": ["ends_with_period"], "reward_weights": [1, 2]}})


# ---------------------------------------------------------------- reward functions and config
def test_builtin_and_imported_rewards(tmp_path):
    from tuneforge.tasks.rewards import load_reward, load_rewards

    answers = ["Yes.", "no", "This answer has far too many words in it.", "Paris is the capital."]
    assert load_reward("ends_with_period")([""] * 4, answers, [None] * 4) == [1.0, 0.0, 1.0, 1.0]
    assert load_reward("max_words:3")([""] * 4, answers, [None] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert load_reward("short_answer:5")([""] * 4, answers, [None] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert load_reward("regex:^[A-Z]")([""] * 4, answers, [None] * 4) == [1.0, 0.0, 1.0, 1.0]
    assert load_reward("contains:paris")([""] * 4, answers, [None] * 4) == [0.0, 0.0, 0.0, 1.0]
    assert load_reward("length:4")([""] * 2, ["a b c d", "a"], [None] * 2) == [1.0, 0.25]
    module = tmp_path / "my_rewards.py"
    module.write_text(
        "def exact(completions, references):\n"
        "    return [float(c == r) for c, r in zip(completions, references)]\n"
        "def broken(completions, **kw):\n    return [1.0]\n"
    )
    exact = load_rewards([f"{module}:exact"], [2.0])[0]
    assert exact.weight == 2.0 and exact(["q", "q"], ["a", "b"], ["a", "a"]) == [1.0, 0.0]
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match="one number per completion"):
        load_reward(f"{module}:broken")(["q", "q"], ["a", "b"], [None, None])
    for bad, match in [
        ("max_words", "needs an argument"),
        ("max_words:x", "whole number"),
        ("regex:(", "regular"),
        (f"{module}:missing", "no function"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_reward(bad)


@pytest.mark.parametrize(
    "section, match",
    [
        ({"preference": {"loss_type": "dpo"}}, "loss_type"),
        ({"preference": {"label_smoothing": 0.1, "loss_type": "ipo"}}, "sigmoid only"),
        ({"preference": {"desirable_weight": 2.0}}, "kto only"),
        ({"preference": {"beta": 0}}, "positive"),
        ({"preference": {"center_rewards": 0.01}}, "task 'reward' only"),
        ({"task": "grpo", "grpo": {"group_size": 1}}, "at least 2"),
        ({"task": "grpo", "grpo": {"temperature": 0}}, "temperature"),
        ({"task": "grpo", "grpo": {"rewards": []}}, "empty"),
        ({"task": "grpo", "grpo": {"reward_weights": ["a"]}}, "numbers"),
    ],
)
def test_preference_config_validation(section, match):
    raw = {"task": "dpo", **section}
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


# ---------------------------------------------------------------- real model (slow)
@pytest.mark.e2e
def test_dpo_smollm2_moves_preference_accuracy_off_chance(tmp_path):
    """DPO with LoRA on SmolLM2, a few steps over a slice of the bundled pairs (the full config reaches ~0.89)."""
    from tuneforge.recipe import train

    run = train(
        "configs/dpo-smollm2-lora.yaml",
        [
            "data.limit=16",
            "data.eval_limit=24",
            "data.max_length=64",
            "training.batch_size=4",
            "training.max_steps=4",
            "training.lr=1e-3",
            "data.audit=false",
            "sft.samples=0",
            "eval.report=false",
            f"output.dir={tmp_path}",
        ],
    )
    result = json.loads((run.path / "eval.json").read_text())
    assert result["baseline"]["preference_accuracy"] == 0.5  # the base model is the reference
    assert result["tuned"]["margin"] > 0 and result["tuned"]["preference_accuracy"] > 0.6
