"""``tuneforge assess CONFIG``: what the task scores without any training, and whether fine-tuning is worth it.

On the validation split, with bootstrap 95% intervals: zero-shot and k-shot prompting of a causal LM, k-NN and
a logistic-regression probe on an encoder's frozen embeddings, the base model's k-shot answer perplexity
(SFT), or its preference accuracy (DPO, reward). Ends with a plain recommendation; ``--tuned RUN`` puts a
trained run's validation score beside them.

    from tuneforge.advise import assess
    result = assess("configs/classify-minilm-lora.yaml", ["data.limit=2000"])
    print(result["recommendation"])
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tuneforge.advise.common import as_config, default_folder, md_table, write
from tuneforge.errors import TuneforgeError
from tuneforge.eval.baselines import for_task, headline_value
from tuneforge.eval.bootstrap import accuracy_ci
from tuneforge.report.sections.baselines import title
from tuneforge.tasks import get_task

LOWER_IS_BETTER = {"perplexity"}


def majority(task, rows, samples: int) -> dict:
    """Always the most frequent training label: the floor every classifier baseline must clear."""
    top = Counter(e.label for e in task.splits["train"]).most_common(1)[0][0]
    y_true = [e.label for e in rows]
    return {
        "name": "majority",
        "metric": "accuracy",
        "predicts": top,
        "accuracy": accuracy_ci(y_true, [top] * len(rows), samples).to_dict(),
    }


def tuned_score(run_dir: str | Path) -> dict:
    """A trained run's best validation metric (run.json)."""
    summary_path = Path(run_dir) / "run.json"
    if not summary_path.is_file():
        raise TuneforgeError(f"--tuned {run_dir}: no run.json there; give a finished run folder (runs/NAME).")
    s = json.loads(summary_path.read_text())
    if s.get("best_metric") is None:
        raise TuneforgeError(
            f"--tuned {run_dir}: the run logged no validation metric (best_metric is empty); train it with "
            f"validation data (data.validation_fraction > 0)."
        )
    return {"run": str(run_dir), "metric": s["metric"], "value": float(s["best_metric"])}


def recommend(result: dict) -> str:
    """One plain sentence: is fine-tuning needed, given the baselines (and the tuned score when known)?"""
    rows = [b for b in result["baselines"] if b["name"] != "majority"]
    if not rows:
        return (
            "No baseline without training applies to this task and model; fine-tune, and judge the run by its "
            "report's base-versus-tuned section."
        )
    metric = rows[0]["metric"]
    lower = metric in LOWER_IS_BETTER
    best = (
        min(rows, key=lambda b: headline_value(b)[1])
        if lower
        else max(rows, key=lambda b: headline_value(b)[1])
    )
    _, v, lo, hi = headline_value(best)
    what = f"{title(best)} reaches {metric.replace('_', ' ')} {v:.3f} [{lo:.3f}, {hi:.3f}]"
    tuned = result.get("tuned")
    if tuned and tuned["metric"] == metric:
        t = tuned["value"]
        better = t < lo if lower else t > hi
        if better:
            return (
                f"Fine-tuning was worth it: the tuned run reaches {t:.3f}, beyond the interval of the best baseline "
                f"({what})."
            )
        return (
            f"Fine-tuning did not clearly beat the base model: the tuned run reaches {t:.3f}, while the "
            f"{what}; use the base model that way unless the tuned run is better on what you care about."
        )
    floor = next((b for b in result["baselines"] if b["name"] == "majority"), None)
    if floor and v <= floor["accuracy"]["value"] + 0.02:
        return (
            f"Without training the base model does no better than always answering '{floor['predicts']}' "
            f"({floor['accuracy']['value']:.3f}; best: {what}): fine-tune."
        )
    if metric == "preference_accuracy" and v < 0.55:
        return f"The base model barely tells the chosen answers from the rejected ones ({what}): fine-tune."
    if lower:
        em = best.get("exact_match")
        extra = f" and answers {em['value']:.3f} of the prompts exactly" if em else ""
        return (
            f"Without training, the base model with the {what}{extra}; fine-tuning is worth it if the tuned run's "
            f"validation perplexity is clearly lower (and its answers better) than that."
        )
    return f"The base model with the {what} already; fine-tuning is worth it only if you need more than that."


def assess(
    config=None,
    overrides: list[str] | None = None,
    split: str = "validation",
    baselines: str | list[str] = "auto",
    tuned: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Score the task without training (every baseline the task and model allow, or ``baselines``), write
    ``assess.json`` and ``assess.md`` to ``out`` (default ``output.dir/assess-TASK-MODEL``) and return the result."""
    cfg = as_config(config, overrides)
    task = get_task(cfg.task)(cfg, load_model=False)
    if not task.splits.get(split):
        raise TuneforgeError(
            f"assess: the {split} split is empty; set data.validation or data.validation_fraction > 0."
        )
    result = for_task(task, cfg, split=split, names=baselines)
    if result["result"] == "classification":
        from tuneforge.data.split import subsample

        rows = subsample(task.splits[split], cfg.eval.baseline_examples, cfg.training.seed)
        result["baselines"].insert(0, majority(task, rows, cfg.eval.bootstrap_samples))
    if tuned is not None:
        result["tuned"] = tuned_score(tuned)
    result["recommendation"] = recommend(result)
    folder = Path(out) if out else default_folder(cfg, "assess")
    result["files"] = [str(p) for p in write(folder, "assess", result, to_markdown(result, cfg))]
    return result


def rows_for_table(result: dict) -> list[list[str]]:
    rows = []
    for b in result["baselines"]:
        metric, v, lo, hi = headline_value(b)
        name = "majority class" if b["name"] == "majority" else title(b)
        extra = ""
        if "macro_f1" in b:
            extra = f"macro-F1 {b['macro_f1']['value']:.3f}"
        if "exact_match" in b:
            em = b["exact_match"]
            extra = f"exact match {em['value']:.3f} [{em['low']:.3f}, {em['high']:.3f}]"
        rows.append([name, metric.replace("_", " "), f"{v:.3f} [{lo:.3f}, {hi:.3f}]", extra])
    if result.get("tuned"):
        t = result["tuned"]
        rows.append([f"tuned run ({t['run']})", t["metric"], f"{t['value']:.3f}", "best validation step"])
    return rows


def to_markdown(result: dict, cfg) -> str:
    lines = [
        f"# Without fine-tuning: {cfg.task}, {cfg.model.name}",
        "",
        f"{result['split']} split, {result['n']} examples, 95% bootstrap intervals "
        f"({result['seconds']:.0f} s).",
        "",
        md_table(["baseline", "metric", "value [95% CI]", ""], rows_for_table(result)),
        "",
    ]
    prompt = next((b.get("prompt") for b in result["baselines"] if b.get("prompt")), None)
    if prompt:
        shown = prompt if isinstance(prompt, str) else json.dumps(prompt, indent=1)
        lines += [
            "The prompt (first example; eval.zero_shot_prompt / eval.few_shot_k change it):",
            "",
            "```",
            shown,
            "```",
            "",
        ]
    lines += [f"**Recommendation:** {result['recommendation']}", ""]
    return "\n".join(lines)
