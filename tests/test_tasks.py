"""Every task with every method it accepts, from one table of (task x method) rows.

Each row trains a few steps through the real loop (``train.loop.fit``, with the task, ``methods.prepare`` and
``recipe.make_accelerator`` wired as the recipe wires them) on a tiny random model and tiny synthetic data, and
checks what every (task, method) pair owes a user:

1. exactly the trainable parameters change (every one of them, and no frozen one);
2. the saved model loads back (``task.save_model`` -> ``Task.load_model``) to the same validation metrics;
3. adapters: switched off they are exactly the base model; LoRA/DoRA/IA3 merge into the same outputs;
4. a run resumed from its mid-run checkpoint ends with the weights of an uninterrupted run;
5. gradient accumulation (2 x 2) is exactly a larger batch (4 x 1): same weights, losses and gradient norms.

Properties 1-3 run for every row; 4 and 5 (two or three more trainings each) for the rows in ``DEEP_ROWS``:
every task with full and LoRA, and gradual unfreezing and prompt learning where they meet a task's own step.
The whole module takes about 1.5 minutes on two CPU cores. Adding a task or a method: add it to ``TASK_ROWS``
or ``method_config``; the rows follow ``get_task(name).methods``.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import sentiment_rows

from tuneforge.config import PEFT_METHODS, from_dict
from tuneforge.methods import prepare
from tuneforge.recipe import make_accelerator
from tuneforge.tasks import TASKS, get_task
from tuneforge.tasks.pairs import pad
from tuneforge.train.loop import fit

STEPS = 2  # optimizer steps of a row's run; the resume test checkpoints at STEPS / 2 and dies in the next
SEED = 7

# ---------------------------------------------------------------- the table
# row id -> (task, data file, extra config sections)
TASK_ROWS: dict[str, tuple[str, str, dict]] = {
    "classification": ("classification", "sentiment", {}),
    "sft": ("sft", "chat", {"sft": {"samples": 0, "max_new_tokens": 3}}),
    "seq2seq": ("seq2seq", "source_target", {"seq2seq": {"samples": 0, "max_new_tokens": 3}}),
    "reward": ("reward", "pairs", {}),
    "dpo-sigmoid": ("dpo", "pairs", {"preference": {"loss_type": "sigmoid"}, "sft": {"samples": 0}}),
    "dpo-kto": ("dpo", "pairs", {"preference": {"loss_type": "kto"}, "sft": {"samples": 0}}),
    "grpo": (
        "grpo",
        "pairs",
        {
            # kl_beta > 0: the reference model (adapter off, or a frozen copy) is used at every step
            "grpo": {"group_size": 2, "max_new_tokens": 3, "kl_beta": 0.04, "eval_prompts": 4},
            "sft": {"samples": 0, "max_new_tokens": 3},
        },
    ),
}


def method_config(method: str, head: bool) -> dict:
    """The method section of a row: small adapters; a classifier's freeze trains its head only."""
    return {
        "full": {},
        "freeze": {} if head else {"freeze_layers": 1},
        # stage k (step k) unfreezes k blocks from the top: after STEPS=2 steps the lowest block is still frozen
        "unfreeze": {"unfreeze_every": 1},
        "lora": {"r": 4, "alpha": 8},
        "dora": {"r": 4, "alpha": 8},
        "ia3": {},
        "prefix": {"num_virtual_tokens": 4},
        "prompt": {"num_virtual_tokens": 4},
        "houlsby": {"reduction_factor": 8},
        "pfeiffer": {"reduction_factor": 8},
    }[method]


ROWS = [
    pytest.param(row, method, id=f"{row}-{method}")
    for row, (task, _, _) in TASK_ROWS.items()
    for method in get_task(task).methods
]
# properties 4 and 5 (resume, accumulation): full and LoRA for every task, and the other kinds of method
# (a per-step unfreezing hook, prompt learning) where they meet what a task does in its step
DEEP_ROWS = [(row, m) for row in TASK_ROWS for m in ("full", "lora")] + [
    ("classification", "unfreeze"),
    ("sft", "prompt"),
    ("dpo-kto", "prefix"),
    ("grpo", "unfreeze"),
]
DEEP = [pytest.param(row, method, id=f"{row}-{method}") for row, method in DEEP_ROWS]


def test_the_table_covers_every_task():
    assert {task for task, _, _ in TASK_ROWS.values()} == set(TASKS)
    assert {"sigmoid", "kto"} <= {s.get("preference", {}).get("loss_type") for _, _, s in TASK_ROWS.values()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (their time goes to the vocabulary projection and to
    overheads); the process's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- data
WORDS = ["apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil", "window", "tiger"]
GOOD = ["Yes, gladly.", "Sure, here it is.", "Of course.", "Happy to help."]
BAD = ["No.", "Go away.", "Ask someone else.", "Not interested."]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Tiny synthetic data files (a few dozen rows) and a GRPO reward function whose values vary."""
    root = tmp_path_factory.mktemp("task-table-data")
    rng = random.Random(0)
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"Say {WORDS[i % len(WORDS)]} {i}."},
                {"role": "assistant", "content": f"{WORDS[i % len(WORDS)]} {WORDS[i % len(WORDS)]}!"},
            ]
        }
        for i in range(40)
    ]
    pairs = [
        {
            "prompt": f"Tell me about {rng.choice(WORDS)} {i}.",
            "chosen": rng.choice(GOOD),
            "rejected": rng.choice(BAD),
        }
        for i in range(40)
    ]
    reward = root / "table_rewards.py"
    # a random policy's completions differ in length, so every group has advantages to learn from
    reward.write_text("def chars(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    return {
        "sentiment": _write(root / "sentiment.jsonl", sentiment_rows(40)),
        "chat": _write(root / "chat.jsonl", chat),
        "source_target": _write(
            root / "source_target.jsonl",
            [{"source": c["messages"][0]["content"], "target": c["messages"][1]["content"]} for c in chat],
        ),
        "pairs": _write(root / "pairs.jsonl", pairs),
        "reward": f"{reward}:chars",
    }


@pytest.fixture(scope="module")
def models(tiny_bert, tiny_llama, tiny_t5) -> dict[str, str]:
    return {"classification": tiny_bert, "seq2seq": tiny_t5, "default": tiny_llama}


def make_config(row: str, method: str, models: dict, files: dict, **training):
    """The run config of a row: fp32, no dropout, nothing split or regrouped, so runs compare exactly."""
    task, data, sections = TASK_ROWS[row]
    head = get_task(task).has_head()
    raw = {
        "task": task,
        "model": {"name": models.get(task, models["default"]), "dropout": 0.0},
        "data": {
            "train": files[data],
            "max_length": 32 if head else 64,  # the chat template's default system prompt is ~30 tokens
            "validation_fraction": 0.15,
            "test_fraction": 0.1,
            "audit": False,
        },
        "method": {"name": method, **method_config(method, head)},
        "training": {
            "max_steps": STEPS,
            "batch_size": 4,
            "grad_accum": 1,
            "lr": 1e-2,
            "weight_decay": 0.0,  # a weight changes only through its gradient
            "warmup_steps": 0,
            "precision": "fp32",
            "seed": SEED,
            "eval_every": STEPS,
            "save_every": STEPS // 2,
            "keep_checkpoints": 10,
            "log_every": 1,
            "group_by_length": False,
            "max_batch_tokens": None,
            "compile": "false",
            **training,
        },
        "eval": {"batch_size": 32, "baseline": False, "report": False, "forgetting": False, "bias": False},
        "output": {"dir": "unused", "name": "run"},
    }
    for section, values in copy.deepcopy(sections).items():
        raw.setdefault(section, {}).update(values)
    if task == "grpo":
        raw["grpo"]["rewards"] = [files["reward"]]
    return from_dict(raw)


def build(cfg):
    """The task with its model, seeded so every build of a row starts from the same weights."""
    torch.manual_seed(SEED)
    return get_task(cfg.task)(cfg)


def prepared_for(task, cfg):
    torch.manual_seed(SEED + 1)  # adapter initialisation
    return prepare(task.model, cfg.method, cfg.training, head=task.has_head())


def run(task, prepared, cfg, out: Path, resume: bool = False):
    out.mkdir(parents=True, exist_ok=True)
    return fit(task, prepared, cfg, out, make_accelerator(cfg), resume=resume)


# ---------------------------------------------------------------- helpers
def trainable_keys(model) -> set[str]:
    """State-dict keys of the trainable parameters (tied weights share storage: both keys count)."""
    ptrs = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    return {k for k, v in model.state_dict().items() if v.data_ptr() in ptrs}


def weights(model, keys: set[str]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def probe_batch(task) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of a few examples (GRPO: held-out prompts, left-padded as it samples)."""
    if task.name == "grpo":
        return pad(task.prompt_ids["validation"][:4], task.tokenizer.pad_token_id, left=True)
    batch = task.collate([0, 1, 2])
    return batch["input_ids"], batch["attention_mask"]


@torch.no_grad()
def outputs(model, batch) -> torch.Tensor:
    """Logits of the probe batch in eval mode: (B, C) for classifiers, (B, T, V) for language models (prompt
    tuning's virtual positions dropped)."""
    ids, mask = batch
    was = model.training
    model.eval()
    decoder = (
        {"decoder_input_ids": ids} if getattr(model.config, "is_encoder_decoder", False) else {}
    )  # seq2seq
    logits = model(input_ids=ids, attention_mask=mask, **decoder).logits.float()
    model.train(was)
    return logits[:, -ids.shape[1] :] if logits.dim() == 3 else logits


def metrics_close(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert a and a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=rel, abs=1e-5, nan_ok=True), k


def train_log(out: Path) -> list[dict]:
    return [
        m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["split"] == "train"
    ]


# ---------------------------------------------------------------- properties 1-3: every row
@pytest.mark.parametrize("row,method", ROWS)
def test_trains_saves_loads_disables_merges(row, method, models, files, tmp_path):
    cfg = make_config(row, method, models, files)
    task = build(cfg)
    probe = probe_batch(task)
    adapter = method in PEFT_METHODS
    if adapter:  # the base model, before the adapter is added (prepare changes the model in place)
        base_out, base_metrics = outputs(task.model, probe), task.evaluate(task.model, "validation")
    prepared = prepared_for(task, cfg)
    model = prepared.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = run(task, prepared, cfg, tmp_path / "run")
    assert result.steps == STEPS

    # 1. every trainable weight changed, and nothing else (unfreeze: what its last stage trains)
    after = model.state_dict()
    trainable = trainable_keys(model)
    frozen = set(after) - trainable
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert trainable, "nothing trains"
    assert changed == trainable, (
        f"trainable but unchanged: {sorted(trainable - changed)[:5]}; frozen but changed: {sorted(changed - trainable)[:5]}"
    )
    if method == "full":
        assert all(p.requires_grad for p in model.parameters())
    else:
        assert any(k.endswith("weight") for k in frozen), "the method freezes nothing"
    if method in ("freeze", "unfreeze"):  # the lowest block stays frozen, and the embeddings...
        assert any(".0." in k and "layer" in k for k in frozen)
        # ...except where unfreezing trains a language model's output layer from the start: tied to the
        # embeddings in the tiny Llama
        assert any("embed" in k for k in frozen) == (method == "freeze" or task.has_head())

    # 2. the saved folder loads back to the same validation metrics
    tuned_metrics = task.evaluate(model, "validation")
    task.save_model(model, tmp_path / "model")
    assert (tmp_path / "model" / "adapter_config.json").exists() == adapter
    loaded = type(task).load_model(tmp_path / "model", cfg)
    metrics_close(tuned_metrics, task.evaluate(loaded, "validation"))
    tuned_out = outputs(model, probe)
    torch.testing.assert_close(outputs(loaded, probe), tuned_out, rtol=1e-4, atol=1e-4)

    if not adapter:
        return
    # 3. switched off, the adapter is exactly the base model; trained, it is not
    assert (tuned_out - base_out).abs().max() > 1e-4, "the adapter did not change the outputs"
    with model.disable_adapter():
        torch.testing.assert_close(outputs(model, probe), base_out, rtol=0, atol=1e-6)
        metrics_close(base_metrics, task.evaluate(model, "validation"), rel=1e-6)
    torch.testing.assert_close(outputs(model, probe), tuned_out, rtol=0, atol=0)  # and back on afterwards
    if method in ("lora", "dora", "ia3"):  # merged into the base weights: the same outputs, no adapter left
        merged = copy.deepcopy(model).merge_and_unload()
        assert not any(("lora_" in k or "ia3_" in k) for k in merged.state_dict())
        torch.testing.assert_close(outputs(merged, probe), tuned_out, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- property 4: resume equals uninterrupted
class Crash(RuntimeError):
    pass


def crash_at_step(task, step: int) -> None:
    """Make ``task`` die when the loop starts optimizer step ``step`` (1-based), as a killed process would."""
    real, calls = task.begin_step, {"n": 0}

    def begin_step(model, micro, reduce):
        calls["n"] += 1
        if calls["n"] == step:
            raise Crash(f"simulated crash in step {step}")
        return real(model, micro, reduce)

    task.begin_step = begin_step


@pytest.mark.parametrize("row,method", DEEP)
def test_resume_equals_uninterrupted(row, method, models, files, tmp_path):
    cfg = make_config(row, method, models, files)
    task = build(cfg)
    prepared = prepared_for(task, cfg)
    run(task, prepared, cfg, tmp_path / "a")
    keys = trainable_keys(prepared.model)
    uninterrupted = weights(prepared.model, keys)

    # the same run, killed in the step after its mid-run checkpoint
    task = build(cfg)
    crash_at_step(task, STEPS // 2 + 1)
    prepared = prepared_for(task, cfg)
    with pytest.raises(Crash):
        run(task, prepared, cfg, tmp_path / "b")
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == f"step-{STEPS // 2}"
    at_crash = weights(prepared.model, keys)

    # a fresh process: new task, model and optimizer, resumed in the same folder
    task = build(cfg)
    prepared = prepared_for(task, cfg)
    result = run(task, prepared, cfg, tmp_path / "b", resume=True)
    assert result.steps == STEPS
    resumed = weights(prepared.model, keys)
    assert max_diff(resumed, at_crash) > 1e-4  # it trained on after the checkpoint
    assert max_diff(resumed, uninterrupted) <= 1e-6
    log_a, log_b = train_log(tmp_path / "a"), train_log(tmp_path / "b")
    assert [m["step"] for m in log_b] == list(range(1, STEPS + 1))  # nothing logged twice
    for a, b in zip(log_a, log_b):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-9), a["step"]


# ---------------------------------------------------------------- property 5: accumulation equals a larger batch
def sample_each_prompt_alone(task) -> None:
    """Sample each prompt's group alone with its own seed, so both runs train on the same completions whatever
    the engine's batch, and the comparison is of the loss and gradient path (token counts over the whole step,
    each micro-batch trimmed to its own width)."""
    real = task._sample

    def sample(raw, indices):
        rolls = []
        for i in indices:
            with torch.random.fork_rng():
                torch.manual_seed(1000 + i)
                rolls.append(real(raw, [i]))
        return merge_rollouts(rolls, task.tokenizer.pad_token_id)

    task._sample = sample


def merge_rollouts(rolls: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One rollout of several prompts: prompts left-padded, completions right-padded to common widths."""
    widths = [r["completion"].shape[1] for r in rolls]
    prompts = [r["input_ids"].shape[1] - c for r, c in zip(rolls, widths)]
    P, C = max(prompts), max(widths)

    def fit_to(x: torch.Tensor, p: int, c: int, fill: int) -> torch.Tensor:  # (G, p + c) -> (G, P + C)
        left = torch.full((x.shape[0], P - p), fill, dtype=x.dtype)
        right = torch.full((x.shape[0], C - c), fill, dtype=x.dtype)
        return torch.cat([left, x, right], 1)

    def fit_completion(x: torch.Tensor, c: int, fill: int) -> torch.Tensor:  # (G, c) -> (G, C)
        return torch.cat([x, torch.full((x.shape[0], C - c), fill, dtype=x.dtype)], 1)

    return {
        "input_ids": torch.cat(
            [fit_to(r["input_ids"], p, c, pad_id) for r, p, c in zip(rolls, prompts, widths)]
        ),
        "attention_mask": torch.cat(
            [fit_to(r["attention_mask"], p, c, 0) for r, p, c in zip(rolls, prompts, widths)]
        ),
        "completion": torch.cat([fit_completion(r["completion"], c, pad_id) for r, c in zip(rolls, widths)]),
        "completion_mask": torch.cat(
            [fit_completion(r["completion_mask"], c, 0) for r, c in zip(rolls, widths)]
        ),
        "advantages": torch.cat([r["advantages"] for r in rolls]),
    }


@pytest.mark.parametrize("row,method", DEEP)
def test_accumulation_equals_a_larger_batch(row, method, models, files, tmp_path):
    """2 micro-batches of 2 == 1 batch of 4: the same weights, and the same logged loss and gradient norm per
    step (the gradient norm catches a wrongly scaled gradient, which Adam's update would hide)."""
    results = {}
    for name, batch_size, grad_accum in (("big", 4, 1), ("accumulated", 2, 2)):
        # lr 1e-3: Adam turns float noise in a near-zero gradient (|g| ~ eps) into a step of up to lr; the
        # equality is checked in units of lr, and exactly through the logged gradient norm below
        cfg = make_config(row, method, models, files, batch_size=batch_size, grad_accum=grad_accum, lr=1e-3)
        task = build(cfg)
        if task.name == "grpo":
            sample_each_prompt_alone(task)
        prepared = prepared_for(task, cfg)
        keys = trainable_keys(prepared.model)
        start = weights(prepared.model, keys)
        run(task, prepared, cfg, tmp_path / name)
        results[name] = (weights(prepared.model, keys), train_log(tmp_path / name))
    (big, big_log), (acc, acc_log) = results["big"], results["accumulated"]
    assert max_diff(big, start) > 1e-4  # it trained
    # a tenth of lr: on an AVX2 machine one weight of a full fine-tune (of ~10^5) moved 4.7e-5 apart, Adam's
    # normalised step of a gradient element near zero that the two summation orders round differently; the
    # gradient norms below agree to 1e-6
    assert max_diff(big, acc) < 1e-4
    assert len(big_log) == len(acc_log) == 2
    for a, b in zip(big_log, acc_log):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["step"]


def test_a_micro_batch_cut_from_the_steps_rollout_keeps_only_its_own_width():
    from tuneforge.tasks.grpo import trim

    # 2 rows of a 4-row rollout: prompts padded on the left to 4 (theirs are 2 and 3), completions on the
    # right to 5 (theirs end after 2 and 3 tokens)
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0, 0]])
    mask = attention[:, 4:]
    roll = {"input_ids": torch.arange(18).view(2, 9), "attention_mask": attention,
            "completion": torch.arange(10).view(2, 5), "completion_mask": mask,
            "advantages": torch.tensor([0.5, -0.5])}  # fmt: skip
    out = trim(roll)
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15]]
    assert out["completion"].tolist() == [[0, 1, 2], [5, 6, 7]]
    assert out["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.equal(out["advantages"], roll["advantages"])


def grpo_logps_and_grads(task, model, args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logps = task.completion_logps(model, *args)
    (logps * torch.linspace(-1, 1, logps.numel()).view_as(logps)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), grads


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("attention", ["tuneforge", "sdpa", "eager"])
def test_grpo_prompt_once_gives_the_log_probs_and_gradients_of_whole_sequences(
    attention, method, models, files, monkeypatch
):
    """GRPO's update runs each group as one sequence, its prompt once and every completion after it (each
    seeing the prompt and itself only): the same per-token log-probs and the same gradients as running every
    whole sequence, with and without gradient checkpointing; an attention kernel that takes no custom mask
    runs the whole sequences."""
    from tuneforge.tasks import grpo as grpo_module
    from tuneforge.train.compile import choose_attention

    cfg = make_config("grpo", method, models, files)
    cfg.grpo.max_new_tokens = 6
    cfg.grpo.group_size = 4
    task = build(cfg)
    model = prepared_for(task, cfg).model
    choose_attention(attention, model, 64, torch.device("cpu"))
    task.begin_step(model, [[0, 1, 2]], None)
    b = task.collate([0, 1, 2])
    C = b["completion"].shape[1]
    assert C >= 3 and task.shares_prompts(model, b["input_ids"], b["completion"])
    b["completion_mask"][1, 2:] = 0  # the second completion stopped after 2 tokens: padding in its block
    b["attention_mask"][1, -C + 2 :] = 0
    args = (b["input_ids"], b["attention_mask"], b["completion"], b["completion_mask"])
    model.train()
    task.g.share_prompts = False
    whole, g_whole = grpo_logps_and_grads(task, model, args)
    task.g.share_prompts = True
    with torch.no_grad():
        assert task.shared_prompt_logps(model, *args) is not None  # the one-sequence path, not the fallback
    results = []
    for per_row in (4, 2):  # the whole group in a row; two rows of two completions, each with the prompt
        monkeypatch.setattr(task, "completions_per_row", lambda *a, k=per_row: k)
        results.append(grpo_logps_and_grads(task, model, args))
    raw = model.get_base_model() if hasattr(model, "get_base_model") else model
    raw.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    results.append(grpo_logps_and_grads(task, model, args))
    raw.gradient_checkpointing_disable()
    for shared, grads in results:
        assert torch.allclose(shared, whole, atol=2e-5), (shared - whole).abs().max()
        assert grads.keys() == g_whole.keys() and grads
        for n in grads:
            assert torch.allclose(grads[n], g_whole[n], rtol=1e-3, atol=1e-6), n
    monkeypatch.setattr(grpo_module, "custom_mask", lambda model, allowed: None)  # flash/flex attention
    assert task.shared_prompt_logps(model, *args) is None
    torch.testing.assert_close(task.completion_logps(model, *args).detach(), whole)


def test_grpo_puts_as_many_completions_behind_a_prompt_as_pays(models, files):
    """completions_per_row: the whole group behind one prompt on GRPO's usual shapes; fewer completions a row
    when long completions would make a row's attention cost more than the prompt copies it saves."""
    cfg = make_config("grpo", "lora", models, files)
    cfg.grpo.group_size = 4
    task = build(cfg)
    task._attention_share = 6.6e-4  # SmolLM2-135M's blocks (pairs.attention_share)
    assert task.completions_per_row(None, 40, 32) == 4  # the shipped config's shapes
    task.g.group_size = 16
    assert (
        task.completions_per_row(None, 40, 32) == 8
    )  # a row of 552 positions: attention outgrows the saving
    assert 1 < task.completions_per_row(None, 1024, 1024) < 8
    assert task.completions_per_row(None, 16, 4096) == 1  # long answers, a short prompt: rows of their own
    task._attention_share = None  # no blocks found: count tokens only
    assert task.completions_per_row(None, 16, 4096) == 16


@pytest.mark.slow
def test_grpo_prompt_once_under_compiled_blocks(models, files):
    """training.compile on GRPO: the one-sequence-per-group update through compiled blocks gives the eager
    log-probs and gradients, and the rollout on the same policy decodes without compiling."""
    import torch._dynamo

    from tuneforge.train.compile import can_compile, compile_blocks, compile_settings

    if not can_compile(torch.device("cpu"))[0]:
        pytest.skip("no compiler here")
    cfg = make_config("grpo", "lora", models, files)
    cfg.grpo.max_new_tokens = 6
    cfg.grpo.sampler = "policy"
    task = build(cfg)
    task._attention_share = None  # count tokens only: the whole group in a row (the tiny model's attention
    # share would put each completion in its own row)
    model = prepared_for(task, cfg).model
    task.begin_step(model, [[0, 1, 2]], None)
    b = task.collate([0, 1, 2])
    args = (b["input_ids"], b["attention_mask"], b["completion"], b["completion_mask"])
    assert task.completions_per_row(model, 8, 6) == cfg.grpo.group_size
    model.train()
    eager = grpo_logps_and_grads(task, model, args)
    with compile_settings():
        assert compile_blocks(model) == 2
        compiled = grpo_logps_and_grads(task, model, args)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        task.begin_step(model, [[3, 4]], None)  # sampling through the compiled policy: eager decoding
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-4, atol=1e-5)
    for n in eager[1]:
        torch.testing.assert_close(compiled[1][n], eager[1][n], rtol=1e-3, atol=1e-5)


def test_grpo_samples_from_a_merged_copy_of_the_policy_or_the_policy_itself(models, files):
    """grpo.sampler: `merged` samples from a plain copy with the LoRA folded in (the policy's logits, refreshed
    each step); `policy` from the training model; an adapter that cannot be folded is named."""
    from tuneforge.errors import TuneforgeError

    cfg = make_config("grpo", "lora", models, files)
    cfg.grpo.sampler = "merged"
    task = build(cfg)
    model = prepared_for(task, cfg).model.eval()
    ids = torch.tensor([[5, 9, 14, 3, 8]])
    copy = task.sampling_model(model)
    assert copy is not model and not hasattr(copy, "peft_config")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
        copy = task.sampling_model(model)  # the next step's rollout sees the trained weights
        assert torch.allclose(copy(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    task.g.sampler = "policy"
    assert task.sampling_model(model) is model
    cfg = make_config("grpo", "dora", models, files)
    task = build(cfg)
    model = prepared_for(task, cfg).model
    for choice, expect in (("auto", model), ("merged", None)):
        task.g.sampler = choice
        if expect is None:
            with pytest.raises(TuneforgeError, match="DoRA"):
                task.sampling_model(model)
        else:
            assert task.sampling_model(model) is model
