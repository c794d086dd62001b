"""``tuneforge probe CONFIG``: a linear probe on every layer of the base model, and the freeze depth it implies.

The frozen base model reads the task's training rows; a logistic regression on each layer's mean-pooled
hidden states is scored on the validation split (95% intervals). The first block within ``tolerance`` of the
best layer's accuracy already produces what the task needs: freezing the blocks up to it and training the
rest is the "frozen layers chosen by task similarity" rule, measured. ``method.freeze_layers: auto`` runs the
same probe before training.

    from tuneforge.advise import probe
    result = probe("configs/classify-minilm-lora.yaml", ["data.limit=2000"])
    print(result["freeze_layers"], result["overrides"])
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.advise.common import as_config, default_folder, md_table, write
from tuneforge.data.split import subsample
from tuneforge.errors import TuneforgeError
from tuneforge.eval.baselines import base_is_encoder, load_base
from tuneforge.eval.depth import TOLERANCE, probe_layers
from tuneforge.tasks import get_task


def probe(
    config=None,
    overrides: list[str] | None = None,
    split: str = "validation",
    tolerance: float = TOLERANCE,
    out: str | Path | None = None,
) -> dict:
    """Probe accuracy by depth, the implied freeze depth and the overrides that use it; writes probe.json,
    probe.md and probe.png to ``out`` (default ``output.dir/probe-TASK-MODEL``)."""
    cfg = as_config(config, overrides)
    task = get_task(cfg.task)(cfg, load_model=False)
    labels = getattr(task, "labels", None)
    if not labels:
        raise TuneforgeError(
            f"probe: task '{cfg.task}' has no labels to probe for; the depth probe needs classification data."
        )
    rows = task.splits.get(split) or []
    if not rows:
        raise TuneforgeError(
            f"probe: the {split} split is empty; set data.validation or data.validation_fraction."
        )
    rows = subsample(rows, cfg.eval.baseline_examples, cfg.training.seed)
    model = load_base(cfg.model.name, base_is_encoder(cfg.model.name), cfg.model.dtype)
    result = probe_layers(
        model,
        task.tokenizer,
        task.splits["train"],
        rows,
        labels,
        cfg.training.seed,
        cfg.data.max_length,
        cfg.eval.batch_size,
        cfg.eval.bootstrap_samples,
        tolerance,
    )
    result.update(split=split, model=cfg.model.name)
    result["overrides"] = ["method.name=freeze", f"method.freeze_layers={result['freeze_layers']}"]
    folder = Path(out) if out else default_folder(cfg, "probe")
    result["files"] = [str(p) for p in write(folder, "probe", result, to_markdown(result))]
    result["files"].append(str(plot(result, folder / "probe.png")))
    return result


def to_markdown(r: dict) -> str:
    rows = [
        [
            "embeddings" if x["layer"] == 0 else f"block {x['layer']}",
            f"{x['accuracy']:.3f} [{x['low']:.3f}, {x['high']:.3f}]",
            "frozen" if x["layer"] <= r["freeze_layers"] else "trains",
        ]
        for x in r["layers"]
    ]
    return "\n".join(
        [
            f"# Depth probe: {r['model']}",
            "",
            f"Logistic regression on each layer's mean-pooled hidden states ({r['fit_rows']} training rows), "
            f"accuracy on {r['n']} {r['split']} rows with 95% intervals.",
            "",
            md_table(["layer", "probe accuracy [95% CI]", "with the implied depth"], rows),
            "",
            f"**Implied freeze depth: {r['freeze_layers']} of {r['blocks']} blocks** (the first block within "
            f"{r['tolerance']:.3f} of the best layer; at most all but the top block). Use it: "
            f"`{' '.join(r['overrides'])}` (or `method.freeze_layers=auto`).",
            "",
        ]
    )


def plot(r: dict, path: Path) -> Path:
    """Probe accuracy against depth, the implied freeze depth marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [x["layer"] for x in r["layers"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.errorbar(
        xs,
        [x["accuracy"] for x in r["layers"]],
        yerr=[
            [x["accuracy"] - x["low"] for x in r["layers"]],
            [x["high"] - x["accuracy"] for x in r["layers"]],
        ],
        marker="o",
        capsize=3,
    )
    ax.axvline(r["freeze_layers"] + 0.5, color="grey", linestyle="--", label="frozen | trains")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("probe accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
