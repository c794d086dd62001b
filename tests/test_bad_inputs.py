"""Bad inputs at the command line (issue 21): each row runs `tuneforge ...` on a tiny trained run (or a damaged
copy of one) and must end with a non-zero exit, a message that names the file, field or option and the fix,
and no traceback. Inputs that must simply work (standard input, options around overrides, piped tables) are
checked beside them.

Config-file, data-file and report inputs have their own tables (tests/test_config_inputs.py,
tests/test_data_inputs.py, tests/test_report_inputs.py); this one covers the run commands.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows

from tuneforge.cli import main

CLI = [sys.executable, "-m", "tuneforge.cli"]
WORDS = ["apple", "river", "cloud", "stone", "lamp", "violin", "garden", "pencil"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _chat_rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Say {WORDS[i % 8]} {i}."},
                {"role": "assistant", "content": f"{WORDS[i % 8]} {WORDS[i % 8]}!"},
            ]
        }
        for i in range(n)
    ]


QUICK = {
    "training": {
        "max_steps": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 0,
        "eval_every": 2,
        "threads": 1,
        "precision": "fp32",
    },
    "eval": {"report": False, "bias": False, "forgetting": False, "baseline": False, "batch_size": 32},
}


def _config(
    task: str, model: str, data_file: Path, out: Path, name: str, method: dict, **sections: dict
) -> dict:
    """A 2-step run config: no audit, report, probes or baseline (this module tests inputs, not training)."""
    cfg = {
        "task": task,
        "model": {"name": model, "dropout": 0.0},
        "data": {"train": str(data_file), "max_length": 64 if task == "sft" else 32, "audit": False},
        "method": method,
        **json.loads(json.dumps(QUICK)),
        "output": {"dir": str(out), "name": name, "overwrite": True},
        "sft": {"samples": 0} if task == "sft" else {},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-inputs-data")
    return {
        "classification": _write_jsonl(d / "sentiment.jsonl", sentiment_rows(80)),
        "chat": _write_jsonl(d / "chat.jsonl", _chat_rows(40)),
    }


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_llama, files, tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs trained once for the module: a classifier (full), an SFT LoRA adapter, an SFT prefix
    adapter. Cases that damage a run work on a copy."""
    import tuneforge

    out = tmp_path_factory.mktemp("bad-inputs-runs")
    cls = tuneforge.train(
        _config("classification", tiny_bert, files["classification"], out, "cls", {"name": "full"})
    )
    lora = {"name": "lora", "r": 4, "alpha": 8}
    sft = tuneforge.train(_config("sft", tiny_llama, files["chat"], out, "sft", lora))
    prefix = {"name": "prefix", "num_virtual_tokens": 4}
    pre = tuneforge.train(_config("sft", tiny_llama, files["chat"], out, "prefix", prefix))
    return {"cls": cls.path, "sft": sft.path, "prefix": pre.path}


def cli(argv: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stdout+stderr with whitespace runs made one space)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, " ".join((out.out + out.err).split())


def _copy(runs: dict, key: str, tmp: Path) -> Path:
    dest = tmp / f"{key}-copy"
    shutil.copytree(runs[key], dest)
    return dest


def _damaged(verb: str, key: str, damage: Callable[[Path], None]):
    """argv builder: ``verb`` on a copy of run ``key`` whose model/ went through ``damage(model_dir)``."""
    extra = {"eval": [], "predict": ["a fine film"], "generate": ["--prompt", "hi"]}

    def make(runs, tmp):
        run = _copy(runs, key, tmp)
        damage(run / "model")
        return [verb, run, *extra.get(verb, [tmp / "exported"])]

    return make


def _truncate(name: str):
    def damage(model: Path) -> None:
        data = (model / name).read_bytes()
        (model / name).write_bytes(data[: len(data) // 3])

    return damage


def _remove(name: str):
    return lambda model: (model / name).unlink()


def _garble(name: str, text: str):
    return lambda model: (model / name).write_text(text)


def _fifo(tmp: Path) -> Path:
    path = tmp / "texts.txt"
    os.mkfifo(path)  # opening it for reading blocks until a writer appears
    return path


def _cfg_file(tmp: Path, cfg: dict) -> Path:
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_cfg(task: str, model_key: str, data_key: str, name: str = "new", **sections):
    """argv builder for `train CFG`: a fresh config on the module's tiny models and data files."""

    def make(runs, tmp, models, files):
        method = sections.pop("method", {"name": "full"})
        cfg = _config(task, models[model_key], files[data_key], tmp / "out", name, method, **sections)
        return ["train", _cfg_file(tmp, cfg)]

    return make


# (id, argv builder (runs, tmp) -> argv, words the message must hold)
Case = tuple[str, Callable, list[str]]
RUN_CASES: list[Case] = [
    # predict
    ("predict an SFT run", lambda r, t: ["predict", r["sft"], "hello"], ["predict needs a run whose model is a classifier", "task is 'sft'"]),
    ("predict --file missing", lambda r, t: ["predict", r["cls"], "--file", t / "nope.txt"], ["--file", "nope.txt: not found", "give a text file"]),
    ("predict --file a folder", lambda r, t: ["predict", r["cls"], "--file", t], ["is a folder", "give a text file"]),
    ("predict an empty string", lambda r, t: ["predict", r["cls"], ""], ["text 1 of 1 is empty", "give the text to classify"]),
    ("predict a blank string", lambda r, t: ["predict", r["cls"], "fine", "   "], ["text 2 of 2 is empty"]),
    ("predict --file a named pipe", lambda r, t: ["predict", r["cls"], "--file", _fifo(t)], ["texts.txt", "not a regular file", "save the texts to a file"]),
    ("predict nothing", lambda r, t: ["predict", r["cls"]], ["give texts", "--file FILE", "- to read standard input"]),
    ("predict not a run", lambda r, t: ["predict", t, "hello"], ["not a tuneforge run folder", "no config.yaml"]),
    # generate / chat
    ("generate --max-new-tokens 0", lambda r, t: ["generate", r["sft"], "--prompt", "hi", "--max-new-tokens", "0"], ["--max-new-tokens must be at least 1, got 0"]),
    ("generate --max-new-tokens -3", lambda r, t: ["generate", r["sft"], "--prompt", "hi", "--max-new-tokens", "-3"], ["--max-new-tokens must be at least 1, got -3"]),
    ("generate negative temperature", lambda r, t: ["generate", r["sft"], "--prompt", "hi", "--temperature", "-0.5"], ["--temperature must be 0 (greedy) or more, got -0.5"]),
    ("generate nan temperature", lambda r, t: ["generate", r["sft"], "--prompt", "hi", "--temperature", "nan"], ["--temperature must be 0 (greedy) or more, got nan"]),
    ("chat --max-new-tokens 0", lambda r, t: ["chat", r["sft"], "--max-new-tokens", "0"], ["--max-new-tokens must be at least 1, got 0"]),
    ("chat negative temperature", lambda r, t: ["chat", r["sft"], "--temperature", "-1"], ["--temperature must be 0 (greedy) or more, got -1"]),
    ("generate a classification run", lambda r, t: ["generate", r["cls"], "--prompt", "hi"], ["'classification' run has no language model", "task sft"]),
    ("chat a classification run", lambda r, t: ["chat", r["cls"]], ["'classification' run has no language model", "task sft"]),
    ("generate --file a named pipe", lambda r, t: ["generate", r["sft"], "--file", _fifo(t)], ["texts.txt", "not a regular file"]),
    ("generate --file missing", lambda r, t: ["generate", r["sft"], "--file", t / "nope.txt"], ["nope.txt: not found", "one prompt per line"]),
    ("generate an empty prompt", lambda r, t: ["generate", r["sft"], "--prompt", " "], ["prompt 1 of 1 is empty", "give the prompt"]),
    # score and eval
    ("score a classification run", lambda r, t: ["score", r["cls"], "--prompt", "p", "--response", "a"], ["score needs a run whose model is a reward model", "task is 'classification'"]),
    ("score an SFT run", lambda r, t: ["score", r["sft"], "--prompt", "p", "--response", "a"], ["score needs a run whose model is a reward model"]),
    ("eval --data of chat rows on a classifier", lambda r, t: ["eval", r["cls"], "--data", _write_jsonl(t / "chat.jsonl", _chat_rows(4))], ["chat.jsonl", "label"]),
    ("eval --data missing", lambda r, t: ["eval", r["cls"], "--data", t / "gone.jsonl"], ["gone.jsonl: file not found"]),
    ("eval a finished run without model/", lambda r, t: ["eval", _without_model(r, t)], ["model/ is missing although the run finished", "train the run again"]),
    ("eval a run that never finished", lambda r, t: ["eval", _unfinished(r, t)], ["no final model yet", "tuneforge train --resume"]),
    # export
    ("export into an existing file", lambda r, t: ["export", r["cls"], _touch(t / "out.bin")], ["out.bin is a file", "give a folder"]),
    ("export of a damaged model", _damaged("export", "cls", _truncate("model.safetensors")), ["model.safetensors is damaged", "Restore"]),
    ("export --merge of a prefix run", lambda r, t: ["export", r["prefix"], t / "merged", "--merge"], ["PREFIX_TUNING adapter", "no weights to merge", "without --merge"]),
    # config
    ("config a folder", lambda r, t: ["config", t], ["is a folder, not a config file"]),
    ("config with a missing data file", lambda r, t: ["config", _cfg_file(t, {"data": {"train": str(t / "no.jsonl")}})], ["data.train:", "no.jsonl is not a file or a bundled dataset", "tuneforge datasets"]),
    ("config with an unknown model", lambda r, t: ["config", _cfg_file(t, {"model": {"name": "no-such-model"}})], ["model.name:", "'no-such-model' is not a bundled alias", "tuneforge models"]),
    # damaged model folders
    ("eval: truncated model.safetensors", _damaged("eval", "cls", _truncate("model.safetensors")), ["model.safetensors", "damaged", "train the run again"]),
    ("predict: truncated model.safetensors", _damaged("predict", "cls", _truncate("model.safetensors")), ["model.safetensors", "damaged"]),
    ("predict: missing config.json", _damaged("predict", "cls", _remove("config.json")), ["config.json is missing", "train the run again"]),
    ("predict: garbled tokenizer_config.json", _damaged("predict", "cls", _garble("tokenizer_config.json", "{not json")), ["tokenizer_config.json", "damaged"]),
    ("predict: missing tokenizer.json", _damaged("predict", "cls", _remove("tokenizer.json")), ["tokenizer.json", "unknown token", "Copy the tokenizer files"]),
    ("generate: missing adapter_config.json", _damaged("generate", "sft", _remove("adapter_config.json")), ["adapter_config.json is missing", "lora"]),
    ("generate: truncated adapter weights", _damaged("generate", "sft", _truncate("adapter_model.safetensors")), ["adapter_model.safetensors", "damaged"]),
    ("generate: garbled adapter_config.json", _damaged("generate", "sft", _garble("adapter_config.json", "[1, 2")), ["adapter_config.json", "damaged"]),
    ("generate: missing tokenizer.json", _damaged("generate", "sft", _remove("tokenizer.json")), ["tokenizer.json", "Copy the tokenizer files"]),
    ("eval: missing adapter_config.json", _damaged("eval", "sft", _remove("adapter_config.json")), ["adapter_config.json is missing"]),
]  # fmt: skip


def _touch(path: Path) -> Path:
    path.write_text("taken")
    return path


def _without_model(runs, tmp) -> Path:
    run = _copy(runs, "cls", tmp)
    shutil.rmtree(run / "model")
    return run


def _unfinished(runs, tmp) -> Path:
    """A run stopped before its end: no model/, run.json not finished."""
    run = _without_model(runs, tmp)
    summary = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**summary, "finished": False, "status": "running"}))
    return run


@pytest.mark.parametrize("case,make,words", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_input_is_a_clear_error(runs, tmp_path, capsys, case, make, words):
    argv = make(runs, tmp_path)
    started = time.monotonic()
    code, _, out = cli(argv, capsys)
    assert code not in (0, None), out
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in: {out}"
    assert time.monotonic() - started < 60  # nothing hangs (named pipes)


def test_row_ids_are_unique():
    ids = [c[0] for c in RUN_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("inside", [".", "model"])
def test_export_overwrite_into_the_run_refuses_and_deletes_nothing(runs, tmp_path, capsys, inside):
    run = _copy(runs, "cls", tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    code, _, out = cli(["export", run, run / inside, "--overwrite"], capsys)
    assert code == 2 and "Traceback" not in out
    assert "would overwrite the run" in out and "Choose a folder outside it" in out
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


def test_export_overwrite_of_a_folder_holding_the_run_refuses(runs, tmp_path, capsys):
    run = _copy(runs, "cls", tmp_path)
    code, _, out = cli(["export", run, tmp_path, "--overwrite"], capsys)
    assert code == 2 and "a folder that holds the run" in out and (run / "model" / "config.json").exists()


def test_export_merge_of_a_full_run_says_there_was_nothing_to_merge(runs, tmp_path, capsys):
    code, _, out = cli(["export", runs["cls"], tmp_path / "merged", "--merge"], capsys)
    assert code == 0 and "a full fine-tune has no adapter: --merge had nothing to fold in" in out, out
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_predict_reads_standard_input(runs, capsys, monkeypatch):
    code, stdout, out = cli(
        ["predict", runs["cls"], "-"],
        capsys,
        stdin="a great film\n\nan awful plot\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0, out
    lines = stdout.splitlines()
    assert [line.split("\t")[2] for line in lines] == ["a great film", "an awful plot"]
    assert all(line.split("\t")[0] in ("pos", "neg") for line in lines)
    code, stdout, out = cli(["predict", runs["cls"], "--file", "-", "--json"], capsys, stdin="a dull plot\n", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and json.loads(stdout)["text"] == "a dull plot", out


def test_predict_empty_standard_input_is_an_error(runs, capsys, monkeypatch):
    code, _, out = cli(["predict", runs["cls"], "-"], capsys, stdin="\n  \n", monkeypatch=monkeypatch)
    assert code == 2 and "standard input" in out and "Traceback" not in out


def _id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def test_encoders_are_refused_for_text_generation(tiny_bert, tiny_llama):
    from tuneforge.errors import ModelError
    from tuneforge.models.load import load_causal_lm, require_causal_lm

    require_causal_lm(tiny_llama)
    for check in (require_causal_lm, load_causal_lm):  # transformers itself would add an untrained LM head
        with pytest.raises(ModelError, match=r"'bert' model is an encoder.*task: classification or reward"):
            check(tiny_bert)


# training inputs: (id, argv builder (runs, tmp, models, files) -> argv, words)
TRAIN_CASES: list[Case] = [
    ("encoder for sft", _train_cfg("sft", "bert", "chat"), ["'bert' model is an encoder, not a causal", "task: classification"]),
    ("max_length beyond a decoder's positions", _train_cfg("sft", "llama", "chat", data={"max_length": 2048}), ["data.max_length=2048", "1024 positions", "data.max_length=1024 or less"]),
    ("max_length beyond an encoder's positions", _train_cfg("classification", "bert", "classification", data={"max_length": 300}, training={"memory_check": False}), ["data.max_length=300", "256 positions"]),
    ("sft on classification rows", _train_cfg("sft", "llama", "classification"), ["sentiment.jsonl", "drop every label", "task: classification"]),
    ("--nproc -1", lambda r, t, m, f: ["train", "--nproc", "-1"], ["--nproc must be at least 1, got -1"]),
    ("--nproc 0", lambda r, t, m, f: ["train", "--nproc", "0"], ["--nproc must be at least 1, got 0"]),
    ("--resume of a missing folder", lambda r, t, m, f: ["train", "--resume", t / "gone"], ["gone"]),
]  # fmt: skip


@pytest.mark.parametrize("case,make,words", TRAIN_CASES, ids=[_id(c) for c in TRAIN_CASES])
def test_bad_train_input_is_a_clear_error(
    runs, tiny_bert, tiny_llama, files, tmp_path, capsys, case, make, words
):
    argv = make(runs, tmp_path, {"bert": tiny_bert, "llama": tiny_llama}, files)
    code, _, out = cli(argv, capsys)
    assert code not in (0, None), out
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in: {out}"


def test_options_before_and_after_overrides(tiny_bert, files, tmp_path, capsys, monkeypatch):
    """`train CFG --resume a.b=1` reads a.b=1 as an override (no folder of that name), and options may come
    before or after the overrides."""
    import tuneforge.recipe

    calls = []
    monkeypatch.setattr(tuneforge.recipe, "train", lambda config, overrides, resume: calls.append((config, overrides, resume)) or _NoRun())  # fmt: skip
    cfg = str(
        _cfg_file(
            tmp_path,
            _config("classification", tiny_bert, files["classification"], tmp_path, "x", {"name": "full"}),
        )
    )
    monkeypatch.chdir(tmp_path)
    main(["train", cfg, "--resume", "training.lr=1e-4"])
    main(["train", cfg, "training.lr=1e-4", "--nproc", "1"])
    main(["train", "--nproc", "1", cfg, "training.lr=1e-4", "data.limit=40"])
    main(["train", cfg, "training.lr=1e-4", "--nproc", "1", "data.limit=40"])
    assert calls == [
        (cfg, ["training.lr=1e-4"], True),
        (cfg, ["training.lr=1e-4"], False),
        (cfg, ["training.lr=1e-4", "data.limit=40"], False),
        (cfg, ["training.lr=1e-4", "data.limit=40"], False),
    ]
    assert not (tmp_path / "training.lr=1e-4").exists()


class _NoRun:
    path = Path("/nonexistent-run")


def test_resume_with_an_override_end_to_end(tiny_bert, files, tmp_path, capsys, monkeypatch):
    """The real thing once: `train CFG --resume training.max_steps=3` resumes the run named in CFG (here finished,
    so nothing to do) instead of looking for a run folder called "training.max_steps=3"."""
    cfg = _config("classification", tiny_bert, files["classification"], tmp_path, "r", {"name": "full"})
    path = _cfg_file(tmp_path, cfg)
    monkeypatch.chdir(tmp_path)
    code, _, out = cli(["train", path], capsys)
    assert code == 0, out
    code, _, out = cli(["train", path, "--resume", "training.max_steps=3"], capsys)
    assert code == 0 and "Traceback" not in out, out
    assert "already finished" in out and "nothing to do" in out, out
    assert not (tmp_path / "training.max_steps=3").exists()


# --- subprocess cases: pipes and processes ---------------------------------------------------------------


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "COLUMNS": "60"}


def test_reference_into_a_closed_pipe_is_quiet():
    """`tuneforge config --reference | head -1`: the reader leaves early; no traceback, exit 0."""
    proc = subprocess.run(
        f"{' '.join(CLI)} config --reference | head -1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert (
        "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "Exception" not in proc.stderr
    )


@pytest.mark.parametrize("verb", ["models", "datasets"])
def test_tables_stay_whole_when_piped(verb):
    from tuneforge.data.bundled import DATASETS
    from tuneforge.models.catalogue import MODELS

    proc = subprocess.run(
        f"{' '.join(CLI)} {verb} | cat", shell=True, capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    text = " ".join(proc.stdout.split())
    items = MODELS.values() if verb == "models" else DATASETS.values()
    for item in items:
        assert item.description in text, item.description


def test_ddp_start_that_fails_on_rank_0_is_one_clear_line(tiny_bert, files, tmp_path):
    """`--nproc 2` with output.dir a file: one clear line from the process, none of torchrun's traceback."""
    (tmp_path / "taken").write_text("a file")
    cfg = _config(
        "classification", tiny_bert, files["classification"], tmp_path / "taken", "ddp", {"name": "full"}
    )
    proc = subprocess.run(
        [*CLI, "train", str(_cfg_file(tmp_path, cfg)), "--nproc", "2"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    err = proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in err and "ChildFailedError" not in err and "torch.distributed" not in err, err
    assert "output.dir" in err and "is a file" in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) <= 2, err
