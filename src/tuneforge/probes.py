"""The measurements the report needs beyond eval.json, computed once with the final model and saved in the run:

lengths.json      token lengths of every split (for the histogram)
bias.json         the bias probe (classifier: flip rates; language model: Δ log-likelihood, base and tuned)
forgetting.json   language models: base vs tuned perplexity on the reference text (and eval.forgetting_data)
lm_eval.json      language models: per-example NLL of the test split, base and tuned (for the intervals)

Which probes a run gets is the task's to say (its ``kind`` and ``probes``); the config switches them off
(``eval.bias``, ``eval.forgetting``). This module runs models; ``tuneforge.report`` only reads the files.
The recipe calls ``finish_run`` after evaluation; ``tuneforge report`` calls ``recompute``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from tuneforge.errors import TuneforgeError
from tuneforge.report import build_report
from tuneforge.report.files import PROBE_FILES, check_run_folder
from tuneforge.utils import console

log = logging.getLogger(__name__)


def capabilities(task_name: str) -> tuple[str, frozenset[str]]:
    """(kind, probes) the task declares: kind one of classifier, language_model, reward_model, policy;
    probes a subset of lengths, bias, forgetting, lm_eval, samples."""
    from tuneforge.tasks import get_task

    spec = get_task(task_name)
    return spec.kind, frozenset(spec.probes)


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


def wanted_probes(cfg, kind: str, probes: frozenset[str]) -> list[str]:
    """The probe files a run of this config gets: what the task supports and the config leaves on."""
    lm = kind in ("language_model", "policy")
    wanted = {
        "lengths.json": "lengths" in probes,
        "bias.json": cfg.eval.bias and "bias" in probes and (lm or kind == "classifier"),
        "forgetting.json": cfg.eval.forgetting and "forgetting" in probes and lm,
        "lm_eval.json": "lm_eval" in probes and lm,
        "explanations.json": cfg.eval.explain > 0 and kind == "classifier",
    }
    return [name for name, on in wanted.items() if on]


def run_probes(run, task=None, only_missing: bool = False) -> list[str]:
    """Compute what the task supports and the config enables, and write the files into the run folder;
    returns the names written. ``task`` is the built task (from training), or None to build it from the config."""
    cfg, folder = run.config, run.path
    kind, probes = capabilities(cfg.task)
    write_continual(
        run, only_missing
    )  # model.from_run: the previous task's score before/after (continual.json)
    todo = [n for n in wanted_probes(cfg, kind, probes) if not only_missing or not (folder / n).exists()]
    base = cfg.eval.baselines != "none" and not (only_missing and (folder / "baselines.json").exists())
    if not todo and not base:
        return []
    if task is None:
        from tuneforge.tasks import get_task

        task = get_task(cfg.task)(cfg, load_model=False)
    written = write_baselines(run, task) if base else []  # eval.baselines: scores without fine-tuning
    if "lengths.json" in todo:
        _write(folder / "lengths.json", split_lengths(task))
        written.append("lengths.json")
    if kind == "classifier":
        if "bias.json" in todo:
            written += _classifier_bias(run, task)
        if "explanations.json" in todo:
            written += _classifier_explanations(run, task)
    elif set(todo) - {"lengths.json", "explanations.json"}:
        written += _lm_probes(run, task, todo, kind)
    return written


def write_continual(run, only_missing: bool = False) -> list[str]:
    """continual.json for an update (model.from_run): the previous run's test set, before and after."""
    if not run.config.model.from_run or (only_missing and (run.path / "continual.json").exists()):
        return []
    from tuneforge.run import Run
    from tuneforge.tasks import get_task
    from tuneforge.train.continual import old_task_probe

    previous = Run(run.config.model.from_run)
    result = old_task_probe(previous, run, get_task(previous.config.task), run.config.eval.bootstrap_samples)
    _write(run.path / "continual.json", result)
    console.print(f"[bold]continual:[/bold] {result.get('message') or result.get('error')}", highlight=False)
    return ["continual.json"]


def write_baselines(run, task) -> list[str]:
    """baselines.json: the base model's scores without fine-tuning on the test split (``eval.baselines``)."""
    from tuneforge.eval.baselines import for_task, headline_value
    from tuneforge.report.sections.baselines import title

    try:
        result = for_task(task, run.config, split="test")
    except Exception as e:  # a baseline never costs the run its other probes
        log.debug("baselines failed", exc_info=True)
        console.print(
            f"[bold yellow]baselines:[/bold yellow] skipped ({type(e).__name__}: {e})", highlight=False
        )
        return []
    _write(run.path / "baselines.json", result)
    for b in result["baselines"]:
        metric, value, low, high = headline_value(b)
        console.print(f"baseline {title(b)}: {metric} {value:.4f} [{low:.4f}, {high:.4f}]", highlight=False)
    return ["baselines.json"]


def recompute(run_dir: str | Path, only_missing: bool = True) -> list[str]:
    """``tuneforge report``: compute the probe files missing from a finished run (``only_missing``), or redo
    them all (``--recompute``). Returns the names written; an unfinished run (no model/) gets none."""
    from tuneforge.run import Run

    folder = check_run_folder(run_dir)
    if not (folder / "model").is_dir():
        if only_missing:
            return []  # an unfinished run: the report is built from what is there
        raise TuneforgeError(
            f"{folder}: no final model (model/), so the probes cannot be recomputed. Finish the run with "
            f"`tuneforge train --resume {folder}`, or rebuild the report without probes: "
            f"`tuneforge report {folder} --no-probes`."
        )
    if not only_missing:
        for name in (*PROBE_FILES, "baselines.json"):
            (folder / name).unlink(missing_ok=True)
    return run_probes(Run(folder), only_missing=True)


def finish_run(run, task=None) -> Path | None:
    """End of ``tuneforge train``: compute the probes the task supports and the config enables, and write the
    report. A failure here never loses the trained run: it is reported with the command that retries it."""
    if not run.config.eval.report:
        return None
    try:
        run_probes(run, task)
    except Exception as e:  # the report is still written, without the probe that failed
        log.debug("probes failed", exc_info=True)
        console.print(
            f"[bold yellow]report:[/bold yellow] the bias/forgetting probes failed ({type(e).__name__}: {e}); "
            f"retry them with `tuneforge -v report {run.path} --recompute`.",
            highlight=False,
        )
    try:
        paths = build_report(run.path)
    except Exception as e:  # the run itself is complete; the report can be rebuilt
        log.debug("report failed", exc_info=True)
        console.print(
            f"[bold yellow]report:[/bold yellow] could not be written ({type(e).__name__}: {e}). The run is "
            f"complete; retry with `tuneforge -v report {run.path}`.",
            highlight=False,
        )
        return None
    console.print(f"report: [bold]{paths['html']}[/bold]")
    return paths["html"]


def _held_out_texts(task) -> list[str]:
    from tuneforge.eval.forgetting import example_text

    return [example_text(e) for e in task.splits.get("test") or []]


def _classifier_explanations(run, task) -> list[str]:
    """explanations.json: integrated gradients for a sample of test errors and every bias-probe flip."""
    from tuneforge.eval.bias import load_terms, make_counterfactuals
    from tuneforge.eval.explain import INSTALL, captum_available, explain_for_report

    if not captum_available():
        console.print(f"explanations: skipped (Captum is not installed: {INSTALL})", highlight=False)
        return []
    cfg, e, t0 = run.config, run.config.eval, time.perf_counter()
    texts, predict = _held_out_texts(task), classifier_predict_proba(task, run.load_model())
    terms = load_terms(e.bias_terms) if e.bias else {}  # the flips explained are the bias probe's
    cfs = make_counterfactuals(texts, terms, e.bias_max_examples, cfg.training.seed)[0] if terms else []
    result = explain_for_report(
        run.load_model(),
        run.load_tokenizer(),
        texts,
        [task.labels.index(x.label) for x in task.splits.get("test") or []],
        predict(texts) if texts else [],
        task.labels,
        cfs,
        predict([c.text for c in cfs]) if cfs else [],
        e.explain,
        cfg.data.max_length,
        cfg.training.seed,
    )
    result["seconds"] = round(time.perf_counter() - t0, 2)
    _write(run.path / "explanations.json", result)
    return ["explanations.json"]


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


def _lm_probes(run, task, todo: list[str], kind: str) -> list[str]:
    """Everything that needs the base model is computed inside one ``task.reference`` block (the base model:
    the adapter switched off, or loaded at most once)."""
    from tuneforge.data.chat import EncodedChat
    from tuneforge.eval.bias import lm_probe, load_terms
    from tuneforge.eval.forgetting import example_nll, forgetting_result, reference_texts

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
        if e.forgetting_data and kind == "language_model":  # scored like the task's own data
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
    with task.reference(model) as base:
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
