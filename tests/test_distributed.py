"""Several processes behave like one process with the same global batch (issue 13 fault 4, fault 5).

Each 2-process run goes through the real command line (``tuneforge train CFG --nproc 2``: the launcher, torchrun,
gloo on the CPU) and is compared with ONE in-process run of the same global batch (``batch_size`` B and
``grad_accum`` 2 against B and 1 on each of two processes): the step sampler gives each process its share of the
same global step, so the final weights and the logged train losses and metrics must agree (DDP sums gradients
in another order: a tolerance of 1e-4).

A small ``sitecustomize`` (put on the children's PYTHONPATH, active only inside torchrun's children) records what
a run folder cannot show: each rank's final trainable weights (the ranks must agree), how often each rank ran
validation (once, on the main process), the step each rank stopped at, whether its optimizer went through
``accelerator.prepare`` and whether backward ran inside autocast; and, when asked, it delivers a SIGTERM to
rank 1 alone at a given step (the stop must be shared, saved, and resumable exactly).

GRPO samples its completions: two processes draw them from two RNG streams (seed + rank) where one process
draws the same micro-batches one after the other from one stream, so the completions, and with them the
weights, cannot be equal. Its test checks what must still hold: it trains, every rank holds the same weights,
the logged figures are over the whole global batch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import sentiment_rows
from safetensors.torch import load_file

TIMEOUT = 300  # seconds for one 2-process launch; a hang fails the test instead of blocking the suite
TOL = 1e-4

# Imported by every Python process that has its folder on PYTHONPATH; acts only in torchrun's children.
HOOK = """
import os

if os.environ.get("TUNEFORGE_TEST_DUMP") and "RANK" in os.environ:
    import json
    import signal

    import torch
    from accelerate import Accelerator

    from tuneforge.train import loop  # (the package's `train` attribute is the function)

    _rank, _out = int(os.environ["RANK"]), os.environ["TUNEFORGE_TEST_DUMP"]
    _stop_at = int(os.environ.get("TUNEFORGE_TEST_SIGTERM_RANK1_AT", "0"))
    _seen = {"evaluate_calls": 0, "backward_in_autocast": False, "optimizer": None, "precision": None}
    _fit, _run, _backward = loop.fit, loop._Loop.run, Accelerator.backward

    def fit(task, *args, **kwargs):
        evaluate = task.evaluate

        def counting(*a, **k):
            _seen["evaluate_calls"] += 1
            return evaluate(*a, **k)

        task.evaluate = counting
        try:
            result = _fit(task, *args, **kwargs)
        finally:
            task.evaluate = evaluate
        raw = getattr(result.model, "module", result.model)
        weights = {n: p.detach().cpu() for n, p in raw.named_parameters() if p.requires_grad}
        torch.save(weights, f"{_out}/rank{_rank}.pt")
        _seen.update(steps=result.steps, stopped_early=result.stopped_early)
        with open(f"{_out}/rank{_rank}.json", "w") as f:
            json.dump(_seen, f)
        return result

    def run(self):
        _seen.update(optimizer=type(self.optimizer).__module__, precision=self.acc.mixed_precision)
        return _run(self)

    def backward(self, loss, **kwargs):
        _seen["backward_in_autocast"] |= torch.is_autocast_enabled(self.device.type)
        return _backward(self, loss, **kwargs)

    loop.fit, loop._Loop.run, Accelerator.backward = fit, run, backward

    if _stop_at:
        _shared = loop._Loop._shared_signal

        def shared_signal(self, stop):
            if _rank == 1 and self.state["step"] == _stop_at:
                os.kill(os.getpid(), signal.SIGTERM)  # only this process gets it
            return _shared(self, stop)

        loop._Loop._shared_signal = shared_signal
"""


def launch(cfg: dict, tmp_path: Path, *extra: str, sigterm_rank1_at: int = 0, name: str = "ddp"):
    """``tuneforge train CFG --nproc 2 [extra]`` in a subprocess; returns (completed process, dump folder)."""
    hook_dir, dump = tmp_path / "hook", tmp_path / f"dump-{name}"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    dump.mkdir()
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TUNEFORGE_THREADS")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(hook_dir), *filter(None, [env.get("PYTHONPATH")])]),
        TUNEFORGE_TEST_DUMP=str(dump),
        TUNEFORGE_TEST_SIGTERM_RANK1_AT=str(sigterm_rank1_at),
    )
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", str(cfg_path), "--nproc", "2", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return out, dump


def show(out: subprocess.CompletedProcess) -> str:
    return f"exit {out.returncode}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-5000:]}"


def one_process(cfg: dict, out_dir: Path):
    """The same run on one process with twice the accumulation (the same global batch)."""
    from tuneforge.recipe import train

    cfg = json.loads(json.dumps(cfg))
    cfg["training"]["grad_accum"] = 2 * cfg["training"].get("grad_accum", 1)
    cfg["output"]["dir"] = str(out_dir)
    return train(cfg)


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final model folder's saved tensors (a whole model, or an adapter)."""
    files = sorted((run_dir / "model").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'model'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def last_checkpoint(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained weights of the run's newest checkpoint (saved at the last step)."""
    root = run_dir / "checkpoints"
    return load_file(root / (root / "latest").read_text().strip() / "weights.safetensors")


def assert_weights_moved(run_dir: Path) -> None:
    """The two kept checkpoints differ: training changed the weights (so agreeing weights mean something)."""
    steps = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(steps) >= 2, steps
    a, b = (load_file(p / "weights.safetensors") for p in steps[-2:])
    assert max_diff(a, b) > 10 * TOL


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def log_lines(run_dir: Path, split: str) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [m for m in lines if m["split"] == split]


# figures that depend on time or on how a step was cut into micro-batches, not on what was learned
NOT_COMPARED = {"seconds", "examples_per_s", "tokens_per_s", "padding", "lr", "epoch", "split", "step"}


def assert_same_logs(a: Path, b: Path, split: str = "train", tol: dict[str, float] | None = None) -> None:
    """The logged figures of two runs agree step by step (loss, grad norm, the task's training metrics), within
    TOL or the figure's own tolerance in ``tol``."""
    la, lb = log_lines(a, split), log_lines(b, split)
    assert [m["step"] for m in la] == [m["step"] for m in lb] and la
    for x, y in zip(la, lb):
        assert x.keys() == y.keys(), (x, y)
        for k in x.keys() - NOT_COMPARED:
            if isinstance(x[k], float) and isinstance(y[k], float):
                t = (tol or {}).get(k, TOL)
                assert math.isclose(x[k], y[k], rel_tol=t, abs_tol=t), (split, x["step"], k, x[k], y[k])
            elif not isinstance(x[k], (list, dict)):
                assert x[k] == y[k], (split, x["step"], k, x[k], y[k])


def assert_ranks_agree(dump: Path, run_dir: Path) -> dict:
    """Both ranks hold the same final weights, ran validation only on rank 0, stopped at the same step, stepped
    an optimizer prepared by accelerate and ran backward outside autocast."""
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert r0 and max_diff(r0, r1) == 0.0
    s0, s1 = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    evaluations = len(log_lines(run_dir, "validation"))
    assert s0["evaluate_calls"] == evaluations and s1["evaluate_calls"] == 0, (s0, s1, evaluations)
    assert (s0["steps"], s0["stopped_early"]) == (s1["steps"], s1["stopped_early"])
    for s in (s0, s1):  # the optimizer went through accelerator.prepare; backward ran outside autocast
        assert s["optimizer"].startswith("accelerate.") and not s["backward_in_autocast"], s
    return s0


def assert_threads_line(out: subprocess.CompletedProcess) -> None:
    """--nproc 2 gives each process its share of the cores, and each says so."""
    from tuneforge.threads import available_cores

    share = max(1, available_cores() // 2)
    for rank in (0, 1):
        assert f"rank {rank} of 2: {share} threads" in out.stdout + out.stderr, show(out)


def common(task: str, model_name: str, train: str, validation: str, test: str, out: Path, **sections) -> dict:
    """A small deterministic run: fp32, no dropout, no compile, no token cap, no length grouping, no probes."""
    cfg = {
        "task": task,
        "model": {"name": model_name, "dropout": 0.0},
        "data": {"train": train, "validation": validation, "test": test, "max_length": 48, "audit": False},
        "method": {"name": "lora", "r": 4, "alpha": 8, "lora_dropout": 0.0},
        "training": {
            "batch_size": 4,
            "grad_accum": 1,
            "lr": 1e-2,
            "log_every": 1,
            "warmup_steps": 0,
            "precision": "fp32",
            "compile": False,
            "group_by_length": False,
            "max_batch_tokens": None,
            "device": "cpu",
            "seed": 7,
        },
        "eval": {"batch_size": 16, "report": False, "baseline": False, "bias": False, "forgetting": False},
        "output": {"dir": str(out), "name": "run", "overwrite": True},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- data
WORDS = ["apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil", "window", "tiger"]
GOOD = ["Yes, gladly.", "Sure, here it is.", "Of course.", "Happy to help."]
BAD = ["No.", "Go away.", "Ask someone else.", "Not interested."]


def chat_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        w = WORDS[i % len(WORDS)]
        reply = " ".join([w] * (1 + i % 4)) + "!"  # answers of different lengths: the micro-batches differ
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w} {i}."},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return rows


def pair_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "prompt": f"Can you tell me about {WORDS[i % len(WORDS)]}? ({i})",
            "chosen": GOOD[i % len(GOOD)],
            "rejected": BAD[(i * 3) % len(BAD)],
        }
        for i in range(start, start + n)
    ]


def files(tmp_path: Path, rows_fn, n_train: int) -> tuple[str, str, str]:
    """Train, validation and test files. ``n_train`` = 45 with a global batch of 8 leaves a last step of 5
    examples, split 3 + 2 between the processes: uneven shares must still log the one-process figures."""
    return (
        write_jsonl(tmp_path / "train.jsonl", rows_fn(n_train)),
        write_jsonl(tmp_path / "validation.jsonl", rows_fn(8, start=1000)),
        write_jsonl(tmp_path / "test.jsonl", rows_fn(8, start=2000)),
    )


def classification_rows(n: int, start: int = 0) -> list[dict]:
    return sentiment_rows(n, seed=start)


# ---------------------------------------------------------------- 1. two processes == one with double accumulation
def check_two_equal_one(cfg: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``cfg`` on two processes and on one with double accumulation; assert weights and logs agree."""
    out, dump = launch(cfg, tmp_path)
    assert out.returncode == 0, show(out)
    ddp_dir = Path(cfg["output"]["dir"]) / "run"
    one = one_process(cfg, tmp_path / "one")
    summary = json.loads((ddp_dir / "run.json").read_text())
    assert summary["processes"] == 2 and summary["finished"]
    assert (
        summary["steps"] == one.summary()["steps"]
        and summary["examples_seen"] == one.summary()["examples_seen"]
    )
    assert max_diff(model_tensors(ddp_dir), model_tensors(one.path)) < TOL  # the final (best) model
    assert max_diff(last_checkpoint(ddp_dir), last_checkpoint(one.path)) < TOL  # the last step's weights
    assert_same_logs(ddp_dir, one.path, "train")
    assert_same_logs(ddp_dir, one.path, "validation")
    stats = assert_ranks_agree(dump, ddp_dir)
    assert_weights_moved(ddp_dir)
    return out, stats


def test_classification_two_processes_equal_one_and_stop_early_together(tiny_bert, tmp_path):
    """Full fine-tuning of a classifier; validation every 3 steps with patience 3 stops both runs at the same
    step, and the 2-process run exits 0 (the decision is taken once and shared: no rank waits for another).
    Each process says how many threads it took: its share of the cores."""
    train, validation, test = files(tmp_path, classification_rows, 45)
    cfg = common(
        "classification",
        tiny_bert,
        train,
        validation,
        test,
        tmp_path / "ddp",
        method={"name": "full"},
        # validation accuracy stays at chance for the first dozen steps: patience 3 stops the run in epoch 2
        training={
            "epochs": 8,
            "lr": 6e-3,
            "scheduler": "constant",
            "warmup_steps": 3,
            "eval_every": 3,
            "early_stopping_patience": 3,
            "metric": "accuracy",
        },
    )
    out, stats = check_two_equal_one(cfg, tmp_path)
    steps_per_epoch = 6  # 45 rows, global batch 8: 5 full steps and one of 5 (split 3 + 2)
    assert stats["stopped_early"] and steps_per_epoch < stats["steps"] < 8 * steps_per_epoch, stats
    assert_threads_line(out)


@pytest.mark.parametrize(
    "task, rows_fn, sections",
    [
        ("sft", chat_rows, {"sft": {"samples": 1, "max_new_tokens": 2}}),
        ("reward", pair_rows, {}),
        ("dpo", pair_rows, {"sft": {"samples": 1, "max_new_tokens": 2}}),
    ],
)
def test_language_model_tasks_two_processes_equal_one(task, rows_fn, sections, tiny_llama, tmp_path):
    """LoRA on the tiny Llama, one epoch (6 steps, the last one split 3 + 2 between the processes): the same
    adapter, the same logged losses and training metrics (rewards, margins, accuracies) as one process."""
    train, validation, test = files(tmp_path, rows_fn, 45)
    cfg = common(
        task, tiny_llama, train, validation, test, tmp_path / "ddp", training={"eval_every": 3}, **sections
    )
    check_two_equal_one(cfg, tmp_path)


def test_grpo_two_processes_train_in_step(tiny_llama, tmp_path):
    """GRPO cannot equal one process exactly (each process samples from its own RNG stream; see the module
    docstring). What must hold, here under bf16 autocast: the run trains and exits 0, every rank holds the same
    weights, validation runs once, the step counts cover the whole global batch and the logged figures are sane."""
    train, validation, test = files(tmp_path, pair_rows, 45)
    cfg = common(
        "grpo",
        tiny_llama,
        train,
        validation,
        test,
        tmp_path / "ddp",
        training={"eval_every": 3, "precision": "bf16"},  # bf16 autocast: backward must run outside it
        sft={"samples": 1, "max_new_tokens": 2},
        grpo={
            "rewards": ["regex:^[A-Z]"],
            "group_size": 4,
            "max_new_tokens": 3,
            "kl_beta": 0.04,
            "eval_prompts": 2,
        },
    )
    out, dump = launch(cfg, tmp_path)
    assert out.returncode == 0, show(out)
    run_dir = tmp_path / "ddp" / "run"
    summary = json.loads((run_dir / "run.json").read_text())
    assert (summary["processes"], summary["steps"], summary["examples_seen"]) == (2, 6, 45)
    stats = assert_ranks_agree(dump, run_dir)
    assert stats["steps"] == 6 and stats["evaluate_calls"] == 2 and stats["precision"] == "bf16"
    log = log_lines(run_dir, "train")
    assert [m["step"] for m in log] == [1, 2, 3, 4, 5, 6]
    for m in log:
        assert math.isfinite(m["loss"]) and 0 <= m["reward"] <= 1 and 0 <= m["kl"] < 100, m
        assert 1 <= m["completion_tokens"] <= 3, m
    assert_weights_moved(run_dir)


# ---------------------------------------------------------------- 3. resume: every rank's RNG state comes back
def test_resume_after_a_stop_equals_an_uninterrupted_run_with_dropout(tiny_bert, tmp_path):
    """Dropout on. A SIGTERM to rank 1 alone at step 3: both ranks stop at that step, save one checkpoint with
    each rank's RNG state (they differ: each rank draws its own dropout masks) and exit with the resume
    command; ``--resume`` then finishes with exactly the weights of an uninterrupted run."""
    train, validation, test = files(tmp_path, classification_rows, 45)

    def cfg_for(name: str) -> dict:
        return common(
            "classification",
            tiny_bert,
            train,
            validation,
            test,
            tmp_path / name,
            model={"dropout": 0.1},
            method={"name": "full"},
            training={"max_steps": 8, "lr": 3e-3, "eval_every": 4, "save_every": 2},
        )

    out, _ = launch(cfg_for("whole"), tmp_path, name="whole")
    assert out.returncode == 0, show(out)

    out, _ = launch(cfg_for("stopped"), tmp_path, name="stopped", sigterm_rank1_at=3)
    run_dir = tmp_path / "stopped" / "run"
    assert out.returncode != 0, show(out)
    said = out.stdout + out.stderr
    assert "stopped by SIGTERM at step 3 of 8; checkpoint step-3 is saved" in said, show(out)
    assert "stopped by  " not in said and "Traceback" not in said, show(out)  # every rank names the signal
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-3"
    rng = [torch.load(run_dir / "checkpoints" / "step-3" / f"rng-{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(rng[0]["torch"], rng[1]["torch"])  # restoring rank 0's state on both would show

    out, dump = launch(cfg_for("stopped"), tmp_path, "--resume", str(run_dir), name="resumed")
    assert out.returncode == 0, show(out)
    assert "resumed from step 3 of 8" in out.stdout + out.stderr, show(out)
    whole = tmp_path / "whole" / "run"
    assert max_diff(model_tensors(whole), model_tensors(run_dir)) < 1e-6
    assert_same_logs(whole, run_dir, "train")  # one line per step, none repeated after the resume
    assert_same_logs(whole, run_dir, "validation")
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert max_diff(r0, r1) == 0.0


# ---------------------------------------------------------------- 4. a start that fails on rank 0 only
def test_a_failure_on_rank_0_prints_one_clear_error(tiny_bert, tmp_path):
    """output.dir is a file: rank 0 (which alone chooses the run folder) refuses; rank 1, waiting for it, must
    not hang, and the user reads the cause once, without torchrun's traceback."""
    train, validation, test = files(tmp_path, classification_rows, 45)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file\n")
    cfg = common("classification", tiny_bert, train, validation, test, blocker, method={"name": "full"})
    out, _ = launch(cfg, tmp_path)
    said = out.stdout + out.stderr
    assert out.returncode != 0, show(out)
    assert said.count(f"output.dir: {blocker} is a file") == 1, show(out)
    assert sum(line.startswith("error:") for line in said.splitlines()) == 1, show(out)
    for noise in ("ChildFailedError", "torch.distributed.elastic", "Traceback"):
        assert noise not in said, show(out)
