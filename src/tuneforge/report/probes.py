"""The measurements the report needs beyond eval.json, computed once with the final model and saved in the run:

lengths.json      token lengths of every split (for the histogram)
bias.json         the bias probe (classifier: flip rates; language model: Δ log-likelihood, base and tuned)
forgetting.json   language models: base vs tuned perplexity on the reference text (and eval.forgetting_data)
lm_eval.json      language models: per-example NLL of the test split, base and tuned (for the intervals)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tuneforge.utils import console

PROBE_FILES = ("lengths.json", "bias.json", "forgetting.json", "lm_eval.json")
LM_TASKS = ("sft", "dpo", "grpo")


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=float))


def split_lengths(task) -> dict:
    """Token lengths per split, from the task's encoded splits (dict of ids, or a list of encoded examples)."""
    out, truncated = {}, {}
    for name, enc in (getattr(task, "encoded", None) or {}).items():
        if isinstance(enc, dict):
            out[name] = [len(x) for x in enc["input_ids"]]
            truncated[name] = int(enc.get("truncated", 0))
        else:
            out[name] = [len(e.input_ids) for e in enc]
            truncated[name] = int(sum(bool(getattr(e, "truncated", False)) for e in enc))
    return {"max_length": task.cfg.data.max_length, "splits": out, "truncated": truncated}


def classifier_predict_proba(task, model):
    """texts -> (N, C) probabilities, through the task's own tokenisation and truncation."""
    from tuneforge.data.formats import Example

    def predict(texts: list[str]) -> np.ndarray:
        enc = task.encode([Example(text=t) for t in texts])
        _, probs, _ = task.predict_encoded(model, enc)
        return probs.numpy()

    return predict


def run_probes(run, task=None, only_missing: bool = False) -> list[str]:
    """Compute what the config enables and write the files into the run folder; returns the names written."""
    from tuneforge.tasks import task_class

    cfg, folder = run.config, run.path
    missing = lambda name: not only_missing or not (folder / name).exists()  # noqa: E731
    wanted = {
        "lengths.json": True,
        "bias.json": cfg.eval.bias,
        "forgetting.json": cfg.eval.forgetting and cfg.task in LM_TASKS,
        "lm_eval.json": cfg.task in LM_TASKS,
    }
    todo = [name for name, on in wanted.items() if on and missing(name)]
    if not todo:
        return []
    if cfg.task not in ("classification", *LM_TASKS):
        return []
    task = task or task_class(cfg.task)(cfg, load_model=False)
    written = []
    if "lengths.json" in todo:
        _write(folder / "lengths.json", split_lengths(task))
        written.append("lengths.json")
    if cfg.task == "classification":
        if "bias.json" in todo:
            written += _classifier_bias(run, task)
    else:
        written += _lm_probes(run, task, todo)
    return written


def _held_out_texts(task) -> list[str]:
    from tuneforge.eval.forgetting import example_text

    return [example_text(e) for e in task.splits.get("test") or []]


def _classifier_bias(run, task) -> list[str]:
    from tuneforge.eval.bias import classifier_probe, load_terms

    cfg = run.config
    t0 = time.perf_counter()
    result = classifier_probe(
        _held_out_texts(task),
        classifier_predict_proba(task, run.load_model()),
        load_terms(cfg.eval.bias_terms),
        task.labels,
        cfg.eval.bias_max_examples,
        cfg.training.seed,
        cfg.eval.bootstrap_samples,
    )
    result["seconds"] = round(time.perf_counter() - t0, 2)
    _write(run.path / "bias.json", result)
    console.print(f"[bold]bias probe:[/bold] {result['summary']}", highlight=False)
    return ["bias.json"]


def _lm_probes(run, task, todo: list[str]) -> list[str]:
    """Everything that needs the base model is computed inside one ``base_model`` block (loaded at most once)."""
    from tuneforge.data.chat import EncodedChat
    from tuneforge.eval.bias import lm_probe, load_terms
    from tuneforge.eval.forgetting import example_nll, forgetting_result, reference_texts
    from tuneforge.tasks.sft import base_model

    cfg, e = run.config, run.config.eval
    model, tok = run.load_model(), run.load_tokenizer()
    bs, max_len = min(e.batch_size, 8), cfg.data.max_length
    t0 = time.perf_counter()
    jobs: dict[str, list] = {}  # name -> examples (strings or encoded chats) scored by both models
    test = (getattr(task, "encoded", None) or {}).get("test")
    if (
        "lm_eval.json" in todo and isinstance(test, list) and test and isinstance(test[0], EncodedChat)
    ):  # SFT: the same tokens eval.json scores
        jobs["test"] = test
    if "forgetting.json" in todo:
        ref, ref_name = reference_texts(e.forgetting_text, e.forgetting_max_texts)
        jobs["reference"] = ref
        if (
            e.forgetting_data and hasattr(task, "read_file") and cfg.task == "sft"
        ):  # scored like the task's own data
            jobs["forgetting_data"] = task.encode(task.read_file(e.forgetting_data)[: e.forgetting_max_texts])
        elif e.forgetting_data:
            jobs["forgetting_data"] = reference_texts(
                e.forgetting_data, e.forgetting_max_texts, "eval.forgetting_data"
            )[0]
    bias_texts = []
    if "bias.json" in todo:
        from tuneforge.eval.bias import make_counterfactuals

        terms = load_terms(e.bias_terms)
        bias_texts = _held_out_texts(task)
    scores: dict[str, dict] = {"tuned": {}, "base": {}}
    lls: dict[str, dict[str, float]] = {"tuned": {}, "base": {}}

    def score_all(which: str, m) -> None:
        for name, items in jobs.items():
            scores[which][name] = example_nll(m, tok, items, bs, max_len)
        if bias_texts:
            cfs, _ = make_counterfactuals(bias_texts, terms, e.bias_max_examples, cfg.training.seed)
            needed = list(dict.fromkeys([bias_texts[c.index] for c in cfs] + [c.text for c in cfs]))
            nll, _ = example_nll(m, tok, needed, bs, max_len)
            lls[which] = dict(zip(needed, (-nll).tolist()))

    score_all("tuned", model)
    with base_model(model, cfg) as base:
        score_all("base", base)
    written = []
    if "test" in jobs:
        (nt, ct), (nb, _) = scores["tuned"]["test"], scores["base"]["test"]
        _write(
            run.path / "lm_eval.json",
            {"split": "test", "tokens": ct.tolist(), "tuned_nll": nt.tolist(), "base_nll": nb.tolist()},
        )
        written.append("lm_eval.json")
    if "reference" in jobs:
        (nt, ct), (nb, _) = scores["tuned"]["reference"], scores["base"]["reference"]
        result = {
            "reference": forgetting_result(nt, nb, ct, e.forgetting_threshold, ref_name, e.bootstrap_samples)
        }
        if "forgetting_data" in jobs:
            (nt, ct), (nb, _) = scores["tuned"]["forgetting_data"], scores["base"]["forgetting_data"]
            result["data"] = forgetting_result(
                nt, nb, ct, e.forgetting_threshold, e.forgetting_data, e.bootstrap_samples
            )
        result["seconds"] = round(time.perf_counter() - t0, 2)
        _write(run.path / "forgetting.json", result)
        console.print(f"[bold]forgetting:[/bold] {result['reference']['message']}", highlight=False)
        written.append("forgetting.json")
    if bias_texts:
        result = lm_probe(
            bias_texts,
            lambda ts: np.array([lls["tuned"][t] for t in ts]),
            lambda ts: np.array([lls["base"][t] for t in ts]),
            terms,
            e.bias_max_examples,
            cfg.training.seed,
            e.bootstrap_samples,
        )
        _write(run.path / "bias.json", result)
        console.print(f"[bold]bias probe:[/bold] {result['summary']}", highlight=False)
        written.append("bias.json")
    return written
