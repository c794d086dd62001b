"""The preference tasks' speed levers against the plain path, on the tiny random Llama.

Each lever (packing the chosen and rejected rows without padding, the fused output-layer log-probs,
compiled blocks, a bf16 frozen base) must give the plain path's loss and gradients: for every loss
type (sigmoid, ipo, orpo, kto) within float32 tolerance, and within bf16 tolerance for the bf16 base.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_preference import cfg_for

from tuneforge.config import from_dict

WORDS = ["sure", "here", "is", "the", "answer", "you", "asked", "for", "today", "friend", "no", "maybe"]


def ragged_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose answers differ a lot in length (1-20 words), so padding is a large share of a batch."""
    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."  # noqa: E731
    return [
        {
            "prompt": f"Question {i}: {say(rng.randint(2, 12))}",
            "chosen": say(rng.randint(1, 20)),
            "rejected": say(rng.randint(1, 20)),
        }
        for i in range(n)
    ]


@pytest.fixture
def ragged_file(tmp_path):
    path = tmp_path / "ragged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ragged_rows(48)))
    return str(path)


def make_task(
    model_path,
    data,
    out,
    loss_type="sigmoid",
    packing=False,
    fast=False,
    method="lora",
    share=False,
    attention=None,
):
    from tuneforge.tasks.dpo import PreferenceTask

    cfg = cfg_for(
        "dpo",
        model_path,
        data,
        out,
        preference={"loss_type": loss_type, "packing": packing, "share_prompts": share},
        sft={"fast_loss": fast},
        method={"name": method},
        data={"max_length": 64},
    )
    task = PreferenceTask(from_dict(cfg))
    if attention:
        from tuneforge.train.compile import choose_attention

        assert choose_attention(attention, task.model, 64, torch.device("cpu")) == attention
    task._attention_share = 0.0  # pack whenever it saves positions (the tiny model's cost model rarely would)
    return task


def lora_model(task, seed=0):
    """The task's model with a LoRA adapter whose B matrices are non-zero (so policy != reference)."""
    from tuneforge.methods import prepare

    torch.manual_seed(seed)  # lora_A's initialisation
    prepared = prepare(task.model, task.cfg.method, task.cfg.training, head=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prepared.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return prepared.model


def step_loss_and_grads(task, model, indices):
    """One micro-batch of the task's training step: (loss, {name: grad}) of the trainable weights."""
    model.zero_grad(set_to_none=True)
    model.train()
    if task.loss_type == "kto":
        task.begin_step(model, [indices], lambda x: x)
    batch = task.collate(indices)
    loss, _ = task.loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, rtol=1e-4, atol=1e-5):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=rtol, atol=atol, msg=name)


def test_pack_padded_keeps_every_sequence_and_never_widens(tiny_llama, ragged_file, tmp_path):
    from tuneforge.tasks.pairs import pack_padded

    task = make_task(tiny_llama, ragged_file, tmp_path)
    batch = task.collate(list(range(8)))  # (16, T): 8 chosen then 8 rejected
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    packed = pack_padded(ids, mask, labels, task.pad_id, attention_share=0.0)
    rows, width = packed["input_ids"].shape
    assert rows < len(ids) and packed["input_ids"].numel() < ids.numel()  # fewer positions computed
    for i in range(len(ids)):
        where = packed["segments"] == i
        n = int(mask[i].sum())
        assert int(where.sum()) == n
        assert packed["input_ids"][where].tolist() == ids[i, :n].tolist()
        assert packed["position_ids"][where].tolist() == list(range(n))
        # the same loss tokens (the first token of a sequence is never a target)
        assert packed["labels"][where].tolist()[1:] == labels[i, 1:n].tolist()
    assert pack_padded(ids, mask.flip(1), labels) is None  # left padding: the padded path
    for share in (None, 1.0):  # rows never wider than the longest sequence (or the padded batch)
        narrow = pack_padded(ids, mask, labels, attention_share=share)
        assert narrow is None or narrow["input_ids"].shape[1] == int(mask.sum(1).max())


def test_packing_cost_model_picks_the_cheapest_rows():
    """Attention cheap beside the linear layers: fewer, wider rows; dear: rows no wider than the longest."""
    from tuneforge.tasks.pairs import pack_padded

    sizes = [30, 10, 12, 8, 20, 6]
    ids = torch.zeros(len(sizes), 30, dtype=torch.long)
    mask = (torch.arange(30) < torch.tensor(sizes)[:, None]).long()
    cheap = pack_padded(ids, mask, ids.clone(), attention_share=1e-4)
    assert cheap["input_ids"].shape == (1, sum(sizes))  # one row: 86 positions instead of 180
    for share in (None, 0.5):
        same_width = pack_padded(ids, mask, ids.clone(), attention_share=share)
        assert same_width["input_ids"].shape == (3, 30)  # 30 | 20+10 | 12+8+6
    full = torch.ones(2, 30, dtype=torch.long)
    assert pack_padded(full, full, full) is None  # nothing to save


@pytest.mark.parametrize("weight_trains", [False, True])
def test_fused_token_logps_match_log_softmax(weight_trains):
    """The fused output layer: per-token log-probs and both gradients, chunk by chunk, as the plain path."""
    from tuneforge.train.lm_loss import linear_token_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(weight_trains)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    upstream = torch.randn(37)  # a different weight per token, as a sequence-level loss gives
    fused = linear_token_logps(hidden, head, targets, chunk=8)
    (fused * upstream).sum().backward()
    got = hidden.grad.clone(), head.weight.grad.clone() if weight_trains else None
    hidden.grad, head.weight.grad = None, None
    plain = torch.log_softmax(head(hidden), -1).gather(1, targets[:, None]).squeeze(1)
    (plain * upstream).sum().backward()
    torch.testing.assert_close(fused, plain.detach())
    torch.testing.assert_close(got[0], hidden.grad)
    if weight_trains:
        torch.testing.assert_close(got[1], head.weight.grad)
    with torch.no_grad():  # reference and evaluation passes: forward only
        torch.testing.assert_close(linear_token_logps(hidden, head, targets, chunk=8), plain.detach())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "orpo", "kto"])
def test_levers_give_the_plain_loss_and_gradients(tiny_llama, ragged_file, tmp_path, loss_type):
    """Packing, the fused log-probs and both together: the plain path's loss and LoRA gradients."""
    indices = [0, 3, 5, 9, 11, 14]
    results = {}
    for packing, fast in [(False, False), (True, False), (False, True), (True, True)]:
        task = make_task(tiny_llama, ragged_file, tmp_path, loss_type, packing, fast)
        model = lora_model(task)
        results[packing, fast] = step_loss_and_grads(task, model, indices)
        if loss_type != "orpo":  # the cached reference log-probs are the same too
            ref = task._ref_cache["train"]
            results[packing, fast, "ref"] = ref[~torch.isnan(ref)]
    plain = results[False, False]
    for lever in [(True, False), (False, True), (True, True)]:
        assert_same(results[lever], plain)
        if loss_type != "orpo":
            torch.testing.assert_close(
                results[(*lever, "ref")], results[False, False, "ref"], rtol=1e-5, atol=1e-4
            )


def test_levers_with_a_trained_output_layer(tiny_llama, ragged_file, tmp_path):
    """Full fine-tuning trains the (tied) output layer: the fused path recomputes its gradient exactly."""
    indices = [1, 2, 7, 8]
    runs = []
    for packing, fast in [(False, False), (True, True)]:
        task = make_task(tiny_llama, ragged_file, tmp_path, "sigmoid", packing, fast, method="full")
        torch.manual_seed(1)
        with torch.no_grad():  # move the policy off its frozen reference copy
            for p in task.model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        runs.append(step_loss_and_grads(task, task.model, indices))
    assert "model.embed_tokens.weight" in runs[0][1]  # tied with the output layer: it trains
    assert_same(runs[1], runs[0])


def test_evaluation_is_the_same_with_the_levers(tiny_llama, ragged_file, tmp_path):
    metrics = []
    for packing, fast in [(False, False), (True, True)]:
        task = make_task(tiny_llama, ragged_file, tmp_path, "sigmoid", packing, fast)
        metrics.append(task.evaluate(lora_model(task), "test"))
    assert metrics[0].keys() == metrics[1].keys()
    for key in metrics[0]:
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-5), key


def test_prompt_tuning_keeps_the_padded_rows(tiny_llama, ragged_file, tmp_path):
    """Virtual tokens would be shared by the sequences of a packed row: prompt tuning never packs."""
    import peft

    task = make_task(tiny_llama, ragged_file, tmp_path, packing=True, fast=True)
    prompt_tuned = peft.get_peft_model(
        task.model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    assert task.packs(task.model) and not task.packs(prompt_tuned)
    batch = task.collate([0, 1, 2])
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with torch.no_grad():
        torch.testing.assert_close(task.logps(prompt_tuned, *args), task.plain_logps(prompt_tuned, *args))


@pytest.mark.slow
def test_compiled_blocks_give_the_plain_loss(tiny_llama, ragged_file, tmp_path):
    """Compiled transformer blocks (training.compile) under the packed, fused path: the eager loss and gradients."""
    from tuneforge.train.compile import can_compile, compile_blocks, compile_settings

    if not can_compile(torch.device("cpu"))[0]:
        pytest.skip("no compiler here")
    indices = [0, 3, 5, 9]
    task = make_task(tiny_llama, ragged_file, tmp_path, "sigmoid", packing=True, fast=True)
    model = lora_model(task)
    eager = step_loss_and_grads(task, model, indices)
    with compile_settings():
        assert compile_blocks(model) == 2
        compiled = step_loss_and_grads(task, model, indices)
    assert_same(compiled, eager, rtol=1e-4, atol=1e-5)


def test_bf16_frozen_base_gives_the_loss_within_bf16_tolerance(tiny_llama, ragged_file, tmp_path):
    """training.bf16_frozen_base (recipe.frozen_to_bf16) under bf16 autocast: the loss of the fp32 base."""
    from tuneforge.recipe import frozen_to_bf16

    indices = [0, 3, 5, 9]
    task = make_task(tiny_llama, ragged_file, tmp_path, "sigmoid", packing=True, fast=True)
    model = lora_model(task)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = step_loss_and_grads(task, model, indices)
        task._ref_cache.clear()
        assert frozen_to_bf16(model) > 0
        half = step_loss_and_grads(task, model, indices)
    torch.testing.assert_close(half[0], full[0], rtol=2e-2, atol=2e-2)
    for name in full[1]:
        assert half[1][name].dtype == torch.float32  # the adapter's weights and gradients stay fp32
        cos = torch.nn.functional.cosine_similarity(half[1][name].flatten(), full[1][name].flatten(), dim=0)
        assert cos > 0.99, name


def short_run_logs(model_path, data, out, preference: dict, sft: dict, **training) -> list[dict]:
    """The training log lines of a 4-step fp32 run (eager blocks) of the ragged pairs."""
    from tuneforge.recipe import train

    cfg = cfg_for(
        "dpo",
        model_path,
        data,
        out,
        preference=preference,
        sft={"samples": 0, **sft},
        training={
            "max_steps": 4,
            "eval_every": 4,
            "log_every": 2,
            "precision": "fp32",
            "compile": False,
            **training,
        },
        data={"max_length": 64},
    )
    return [m for m in train(cfg).metrics() if m["split"] == "train"]


def assert_same_logs(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3, abs=1e-4)
        assert y["margin"] == pytest.approx(x["margin"], rel=1e-2, abs=1e-4)
        assert y["tokens"] == x["tokens"]  # the data's tokens, counted the same way


def test_training_with_the_levers_follows_the_plain_run(tiny_llama, ragged_file, tmp_path):
    """A short run with packing and the fused loss ends where the plain run ends (same batches, same updates)."""
    runs = [
        short_run_logs(
            tiny_llama,
            ragged_file,
            tmp_path / f"p{on}",
            {"packing": on, "share_prompts": False},
            {"fast_loss": on},
        )
        for on in (False, True)
    ]
    assert_same_logs(*runs)


def test_share_prompts_keeps_every_loss_token_and_computes_each_prompt_once(
    tiny_llama, ragged_file, tmp_path
):
    """Each pair becomes prompt + chosen + rejected: fewer positions, every loss token kept with the
    position that predicts it in its own row, and the rejected answer never sees the chosen one."""
    from tuneforge.tasks.pairs import share_prompts, shared_prefix

    task = make_task(tiny_llama, ragged_file, tmp_path)
    indices = [0, 3, 5, 9, 11]
    batch = task.collate(indices)  # (10, T): 5 chosen then 5 rejected
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    tree = share_prompts(ids, mask, labels, task.pad_id, attention_share=0.0)
    rows, half = task.train["rows"], len(task.train["rows"]) // 2
    prefixes = [
        shared_prefix(rows[i].input_ids, rows[half + i].input_ids, rows[i].labels, rows[half + i].labels)
        for i in indices
    ]
    assert all(p > 0 for p in prefixes)
    assert int((tree["input_ids"] != task.pad_id).sum()) <= int(mask.sum()) - sum(prefixes)
    flat_ids = tree["input_ids"].flatten()
    flat_pos = tree["position_ids"].flatten()
    for k in range(len(ids)):
        mine = tree["sequence"] == k
        n = int(mask[k].sum())
        want = labels[k, 1:n][labels[k, 1:n] != -100]
        assert tree["targets"][mine].tolist() == want.tolist()
        # the predicting position holds the token before the target in the original row, at its position
        before = [t for t in range(1, n) if labels[k, t] != -100]
        pred = tree["predictors"][mine]
        assert flat_ids[pred].tolist() == [int(ids[k, t - 1]) for t in before]
        assert flat_pos[pred].tolist() == [t - 1 for t in before]
    allowed = tree["tree_mask"]
    assert allowed.any(-1).all()  # every query sees at least itself (no empty softmax row)
    width = allowed.shape[-1]
    for k in range(len(indices)):  # no rejected predictor sees a chosen answer token of its pair
        rej = tree["predictors"][tree["sequence"] == len(indices) + k]
        cho = tree["predictors"][tree["sequence"] == k]
        for q in rej.tolist():
            for c in cho.tolist():
                if c % width != q % width and flat_pos[c] >= prefixes[k]:
                    assert not allowed[q // width, q % width, c % width]
    assert share_prompts(ids, mask.flip(1), labels) is None  # left padding: not shared


@pytest.mark.parametrize("attention", ["sdpa", "eager", "tuneforge"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_shared_prompts_give_the_plain_loss_and_gradients(
    tiny_llama, ragged_file, tmp_path, attention, loss_type
):
    """A pair's prompt computed once (with and without the fused log-probs): the plain path's loss,
    gradients and reference log-probs, with each attention implementation's mask."""
    indices = [0, 3, 5, 9, 11, 14]
    results = {}
    for share, fast in [(False, False), (True, False), (True, True)]:
        task = make_task(
            tiny_llama, ragged_file, tmp_path, loss_type, True, fast, share=share, attention=attention
        )
        model = lora_model(task)
        results[share, fast] = step_loss_and_grads(task, model, indices)
        if loss_type != "orpo":
            ref = task._ref_cache["train"]
            results[share, fast, "ref"] = ref[~torch.isnan(ref)]
    for lever in [(True, False), (True, True)]:
        assert_same(results[lever], results[False, False])
        if loss_type != "orpo":
            torch.testing.assert_close(
                results[(*lever, "ref")], results[False, False, "ref"], rtol=1e-5, atol=1e-4
            )


def test_shared_prompts_fall_back_where_the_attention_takes_no_custom_mask(tiny_llama, ragged_file, tmp_path):
    """Flash or flex attention takes no custom 4D mask: the rows are computed as they are (same loss)."""
    task = make_task(tiny_llama, ragged_file, tmp_path, packing=True, fast=True, share=True)
    model = lora_model(task)
    batch = task.collate([0, 1, 2])
    args = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert task.shared(model, *args) is not None
    model.get_base_model().config._attn_implementation = "flash_attention_2"
    assert task.shared(model, *args) is None
    model.get_base_model().config._attn_implementation = "sdpa"
    assert task.token_cost(0) > task.lengths[0]  # counts the data's tokens, computes fewer


def test_a_run_with_shared_prompts_follows_the_plain_run(tiny_llama, ragged_file, tmp_path):
    """A short run with shared prompts ends where the run without them ends (same batches, same updates).
    Length grouping would sort by what a pair computes, which sharing changes: without it the batches are
    the same (micro-batches may split differently: the same gradient)."""
    runs = [
        short_run_logs(
            tiny_llama, ragged_file, tmp_path / f"s{on}", {"share_prompts": on}, {}, group_by_length=False
        )
        for on in (False, True)
    ]
    assert_same_logs(*runs)
