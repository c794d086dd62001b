"""Continual updates (model.from_run), lineage, and counterfactual augmentation, on tiny random models."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import tiny_cfg

from tuneforge.data.counterfactual import Swapper, augment, load_terms
from tuneforge.data.formats import Example
from tuneforge.errors import ConfigError, DataError
from tuneforge.train.continual import Anchor, estimate_fisher

WORDS = {"pos": ["great", "superb", "moving"], "neg": ["awful", "dull", "tedious"]}


def rows(n: int, labels=("pos", "neg"), seed: int = 0, tag: str = "film") -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        word = rng.choice(WORDS.get(label, [label + "ish"]))
        out.append(
            {"text": f"the {tag} was {word} {rng.choice(['indeed', 'truly', 'quite'])} {i}", "label": label}
        )
    return out


def write(path, data):
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


def first_run(tiny_bert, tmp_path, **sections):
    import tuneforge

    data = write(tmp_path / "old.jsonl", rows(160))
    cfg = tiny_cfg(tiny_bert, data, tmp_path / "runs", **sections)
    cfg["output"]["name"] = "old"
    cfg["eval"].update(report=False)
    return tuneforge.train(cfg)


# ---- the penalties against autograd on the closed formula
def test_l2sp_and_ewc_gradients_match_the_closed_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    anchor = Anchor(ref, l2=0.3, ewc=2.0, fisher=fisher)
    anchor(model).backward()
    for n, p in model.named_parameters():
        expected = (0.3 + 2.0 * fisher[n]) * (p.detach() - ref[n])  # d/dw of l2/2 d^2 + ewc/2 F d^2
        torch.testing.assert_close(p.grad, expected)
    value = float(anchor(model).detach())
    closed = sum(
        float((0.15 * (p - ref[n]) ** 2 + fisher[n] * (p - ref[n]) ** 2).sum())
        for n, p in model.named_parameters()
    )
    assert value == pytest.approx(closed, rel=1e-5)


def test_fisher_is_the_mean_squared_per_example_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    xs, ys = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])

    class T:  # a task with one-example batches
        def collate(self, idx):
            return {"x": xs[idx], "y": ys[idx]}

        def loss(self, model, b):
            return torch.nn.functional.cross_entropy(model(b["x"]), b["y"], reduction="sum"), len(b["y"])

    f = estimate_fisher(T(), lin, ["weight", "bias"], list(range(5)))
    expected = torch.zeros_like(lin.weight)
    for i in range(5):
        g = torch.autograd.grad(
            torch.nn.functional.cross_entropy(lin(xs[i : i + 1]), ys[i : i + 1]), lin.weight
        )[0]
        expected += g**2 / 5
    torch.testing.assert_close(f["weight"], expected)


# ---- counterfactual augmentation
def test_counterfactual_swap_on_fixed_sentences():
    sw = Swapper(load_terms()["gender"]["groups"])
    assert (
        sw.swap("He said his Mother was a WAITER.", "male", "female") == "She said her Father was a WAITRESS."
    )
    exs = [Example(text="she loved the film", label="pos"), Example(text="no people here", label="neg")]
    out, added = augment(exs, {"gender": load_terms()["gender"]}, seed=0)
    assert [(e.text, e.label) for e in out[2:]] == [("he loved the film", "pos")]
    assert added == {"gender": 1} and len(out) == 3
    chat = Example(
        messages=[
            {"role": "user", "content": "Is Emily there?"},
            {"role": "assistant", "content": "Yes, she is."},
        ]
    )
    (_, copy), _ = augment([chat], {"gender": load_terms()["gender"]}, seed=0)
    assert copy.messages[1]["content"] == "Yes, he is." and copy.messages[0]["content"] == "Is Emily there?"


# ---- two-stage runs on a tiny model
def test_from_continues_from_the_previous_weights_and_records_lineage(tiny_bert, tmp_path):
    import tuneforge
    from tuneforge.config import from_dict
    from tuneforge.continual import build_task, resolve_from_run

    old = first_run(tiny_bert, tmp_path)
    parent = old.load_model().state_dict()
    new = write(tmp_path / "new.jsonl", rows(120, labels=("pos", "neg", "mixed"), seed=1, tag="show"))
    raw = tiny_cfg(tiny_bert, new, tmp_path / "runs", model={"from_run": str(old.path)})
    cfg = resolve_from_run(from_dict(raw))
    assert cfg.data.labels == ["neg", "pos", "mixed"]  # the old labels first, the new after
    task, update = build_task(cfg, tmp_path / "x")
    start = task.model.state_dict()
    for k, v in parent.items():  # step 0 = the parent's final weights; the head's old rows by label
        if k.startswith("classifier"):
            torch.testing.assert_close(start[k][:2], v)
        else:
            torch.testing.assert_close(start[k], v)
    raw["output"]["name"] = "new"
    run = tuneforge.train(raw)
    lineage = run.summary()["lineage"]
    assert lineage["parent"] == str(old.path.resolve()) and lineage["method"] == "full"
    assert lineage["data_files"][0]["sha256"] and lineage["data_files"][0]["path"].endswith("new.jsonl")
    cont = json.loads((run.path / "continual.json").read_text())
    before = json.loads((old.path / "eval.json").read_text())["tuned"]["accuracy"]
    assert cont["old_task"]["before"]["value"] == pytest.approx(
        before
    )  # the previous model, its own test set
    assert cont["old_task"]["after"]["n"] == cont["old_task"]["before"]["n"] > 0 and "message" in cont


def test_replay_rows_come_from_the_previous_data_in_the_stated_fraction(tiny_bert, tmp_path):
    from tuneforge.config import from_dict
    from tuneforge.continual import build_task, resolve_from_run

    old = first_run(tiny_bert, tmp_path)
    n_old = len(old.task_class(old.config, load_model=False).splits["train"])
    new = write(tmp_path / "new.jsonl", rows(120, seed=1, tag="show"))
    raw = tiny_cfg(
        tiny_bert, new, tmp_path / "runs", model={"from_run": str(old.path)}, continual={"replay": 0.25}
    )
    task, update = build_task(resolve_from_run(from_dict(raw)), tmp_path / "x")
    replayed = [e for e in task.splits["train"] if "film" in e.text]
    assert len(replayed) == update.replayed == round(0.25 * n_old)
    assert all("show" in e.text for e in task.splits["train"] if e not in replayed)


def test_a_changed_previous_data_file_is_reported(tiny_bert, tmp_path):
    from tuneforge.config import from_dict
    from tuneforge.continual import build_task, resolve_from_run

    old = first_run(tiny_bert, tmp_path)
    (tmp_path / "old.jsonl").write_text(
        (tmp_path / "old.jsonl").read_text() + json.dumps({"text": "x", "label": "pos"}) + "\n"
    )
    new = write(tmp_path / "new.jsonl", rows(120, seed=1, tag="show"))
    raw = tiny_cfg(
        tiny_bert, new, tmp_path / "runs", model={"from_run": str(old.path)}, continual={"replay": 0.2}
    )
    with pytest.raises(DataError, match=r"old\.jsonl changed since that run"):
        build_task(resolve_from_run(from_dict(raw)), tmp_path / "x")


def test_continual_options_need_from_run():
    from tuneforge.config import from_dict

    with pytest.raises(ConfigError, match="without model.from_run"):
        from_dict({"continual": {"ewc": 1.0}})


def test_lineage_survives_a_resume_and_guards_train_lora_continue(tiny_bert, tmp_path):
    import tuneforge
    from tuneforge.cli import main
    from tuneforge.report.lineage import read_lineage
    from tuneforge.train.continual import ANCHOR_FILE

    old = first_run(tiny_bert, tmp_path, method={"name": "lora", "r": 4, "alpha": 8})
    new = write(tmp_path / "new.jsonl", rows(120, seed=1, tag="show"))
    raw = tiny_cfg(
        tiny_bert,
        new,
        tmp_path / "runs",
        model={"from_run": str(old.path)},
        method={"name": "lora", "r": 4, "alpha": 8},
        continual={"ewc": 50.0, "l2_to_previous": 1.0, "ewc_samples": 16, "replay": 0.1},
    )
    raw["output"]["name"] = "new"
    raw["training"].update(max_steps=4, save_every=2, eval_every=4)
    first = tuneforge.train(raw)
    anchor = (first.path / ANCHOR_FILE).read_bytes()
    lineage = json.loads((first.path / "run.json").read_text())["lineage"]
    assert lineage["continual"]["ewc"] == 50.0 and lineage["continual"]["adapter"] == "continue"
    # as if stopped mid-run: no final model yet, run.json as written at the start
    import shutil

    shutil.rmtree(first.path / "best", ignore_errors=True)
    (first.path / "model").rename(first.path / "best")  # the best model so far, as mid-run
    summary = json.loads((first.path / "run.json").read_text())
    (first.path / "run.json").write_text(
        json.dumps(
            {
                "status": "running",
                "started": summary["started"],
                "resolved_from_auto": summary["resolved_from_auto"],
                "lineage": lineage,
            }
        )
    )
    run = tuneforge.train(None, ["training.max_steps=6"], resume=first.path)
    assert run.summary()["steps"] == 6 and run.summary()["lineage"] == lineage
    assert (run.path / ANCHOR_FILE).read_bytes() == anchor  # the same pull point after the resume
    chain = read_lineage(run.path)
    assert [r["run"] for r in chain] == [str(run.path), str(old.path.resolve())]
    assert main(["lineage", str(run.path)]) in (0, None)


def test_counterfactual_augmentation_removes_a_planted_gender_dependence(tiny_bert, tmp_path):
    """The bias test's fixture (the label follows a pronoun) beside rows without a gendered word (the label
    follows an adjective): augmentation drives the gender flip rate from high to near zero, and accuracy on
    the rows without a gendered word holds."""
    from test_bias import gender_rows

    import tuneforge

    plain = rows(480, seed=3)
    train = write(tmp_path / "train.jsonl", gender_rows(240, 0, True) + plain[:240])
    unaffected = write(tmp_path / "plain.jsonl", plain[240:])
    flip, acc = {}, {}
    for cda in (False, True):
        cfg = tiny_cfg(
            tiny_bert,
            train,
            tmp_path / "runs",
            output={"name": f"cda-{cda}"},
            data={"counterfactual_augmentation": cda},
            training={"max_steps": 150, "eval_every": 150, "save_every": 1000, "lr": 5e-4},
        )
        run = tuneforge.train(cfg)
        flip[cda] = json.loads((run.path / "bias.json").read_text())["categories"]["gender"]["flip_rate"]
        acc[cda] = run.evaluate(data=unaffected)["tuned"]["accuracy"]
    assert flip[False] >= 0.7 and flip[True] <= 0.1, flip
    assert acc[True] >= 0.9 and acc[True] >= acc[False] - 0.05, acc


@pytest.mark.parametrize("adapter", ["continue", "merge"])
def test_a_language_model_adapter_is_continued_or_merged_and_the_old_task_scored(
    tiny_llama, tmp_path, adapter
):
    from test_sft import chat_rows, sft_config

    import tuneforge
    from tuneforge.config import from_dict
    from tuneforge.continual import after_prepare, build_task, resolve_from_run
    from tuneforge.methods import prepare

    old_data = write(tmp_path / "old.jsonl", chat_rows(40))
    old = tuneforge.train(sft_config(tiny_llama, old_data, tmp_path / "runs", "lora", output={"name": "old"}))
    new_data = write(tmp_path / "new.jsonl", chat_rows(60)[40:])
    raw = sft_config(
        tiny_llama,
        new_data,
        tmp_path / "runs",
        "lora",
        model={"from_run": str(old.path)},
        continual={"adapter": adapter, "replay": 0.5},
        eval={"report": True, "baseline": True},
        output={"name": "new"},
    )
    cfg = resolve_from_run(from_dict(raw))
    assert (cfg.model.name == tiny_llama) == (adapter == "continue")
    task, update = build_task(cfg, tmp_path / "x")
    prepared = prepare(task.model, cfg.method, cfg.training, head=False)
    after_prepare(cfg, update, task, prepared, tmp_path / "x", False)
    batch = task.collate([0])
    previous = old.load_model().eval()
    prepared.model.eval()
    with torch.no_grad():  # step 0 computes what the previous model computes
        torch.testing.assert_close(
            prepared.model(input_ids=batch["input_ids"]).logits,
            previous(input_ids=batch["input_ids"]).logits,
            rtol=1e-4,
            atol=1e-4,
        )
    run = tuneforge.train(raw)
    cont = json.loads((run.path / "continual.json").read_text())
    assert cont["metric"] == "loss" and cont["old_task"]["before"]["n"] == len(
        old.task_class(old.config, load_model=False).splits["test"]
    )
    assert "Continual update" in (run.path / "report.md").read_text()


def test_l2_to_previous_keeps_the_weights_closer(tiny_bert, tmp_path):
    import tuneforge
    from tuneforge.train.continual import Anchor

    old = first_run(tiny_bert, tmp_path)
    new = write(tmp_path / "new.jsonl", rows(120, labels=("pos", "neg"), seed=1, tag="show"))
    dist = {}
    for l2 in (0.0, 100.0):
        raw = tiny_cfg(
            tiny_bert, new, tmp_path / "runs", model={"from_run": str(old.path)}, output={"name": f"l2-{l2}"}
        )
        if l2:
            raw["continual"] = {"l2_to_previous": l2}
        run = tuneforge.train(raw)
        ref = {k: v for k, v in old.load_model().state_dict().items() if not k.startswith("classifier")}
        dist[l2] = Anchor(ref).distance(run.load_model())
    assert dist[100.0] < 0.5 * dist[0.0], dist


def test_train_from_on_the_command_line(tiny_bert, tmp_path):
    import yaml

    from tuneforge.cli import main
    from tuneforge.report.lineage import format_lineage, read_lineage

    old = first_run(tiny_bert, tmp_path)
    new = write(tmp_path / "new.jsonl", rows(80, seed=1, tag="show"))
    cfg = tmp_path / "update.yaml"
    raw = tiny_cfg(tiny_bert, new, tmp_path / "runs", output={"name": "cli"}, eval={"report": False})
    cfg.write_text(yaml.safe_dump(raw))
    main(["train", str(cfg), "--from", str(old.path), "training.max_steps=2"])
    text = format_lineage(read_lineage(tmp_path / "runs" / "cli"))
    assert "<- " + str(old.path.resolve()) in text and "new.jsonl" in text and "old.jsonl" in text
