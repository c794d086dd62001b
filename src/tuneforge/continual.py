"""Updating a tuned model: ``model.from_run`` (``tuneforge train CONFIG --from RUN_DIR``).

The recipe calls three functions here (recipe layer: it reads run folders, builds tasks and models):

- ``resolve_from_run(cfg)``: the config of an update. ``model.name`` becomes what the previous run's model
  stands on, and a classifier's labels become the previous run's labels followed by the new ones (so the
  old head rows are kept and the old task can still be measured);
- ``build_task(cfg, run_dir, resuming)``: the task with the training data as this run uses it: the new rows,
  the replayed previous rows (``continual.replay``) and the counterfactual copies
  (``data.counterfactual_augmentation``); the previous run's weights are copied in;
- ``after_prepare(...)``: a continued adapter gets its previous weights; the L2-SP / EWC anchor (starting
  weights and Fisher diagonal) is built once, saved in the run folder, and read back on resume.

Where the previous model's weights go, by the previous method and ``continual.adapter``:

| previous run | continue (default)                              | merge                                       |
|--------------|-------------------------------------------------|---------------------------------------------|
| full/freeze  | all its weights (a classifier's head rows by label; a language model: model.name = its model/) |
| adapter      | same base, the same adapter trained on          | the adapter folded into the base, a new adapter on it |

The lineage (parent run, data files with sha256, method) goes into run.json (``lineage_record``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.config import PEFT_METHODS, VIRTUAL_TOKEN_METHODS, RunConfig, from_dict, load_config
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.utils import console

log = logging.getLogger(__name__)

ADAPTER_KEYS = ("r", "alpha", "target_modules", "num_virtual_tokens")  # must match to continue an adapter


@dataclass
class Previous:
    """The run an update starts from."""

    path: Path
    config: RunConfig
    summary: dict

    @property
    def adapter(self) -> bool:
        return self.config.method.name in PEFT_METHODS


@dataclass
class Update:
    """What the recipe needs about an update while it trains."""

    previous: Previous
    labels_before: list[str] | None = None  # the previous classifier's labels (a prefix of this run's)
    inherited: set[str] = field(default_factory=set)  # parameter names copied from the previous model
    fisher_rows: list = field(default_factory=list)  # previous training rows for the EWC Fisher
    replayed: int = 0


def previous_run(path: str | Path) -> Previous:
    """The finished run folder ``path``, with a clear error when it is not one."""
    p = Path(path)
    where = f"model.from_run {p}"
    if not (p / "config.yaml").is_file():
        raise ConfigError(
            f"{where}: not a tuneforge run folder (no config.yaml). Give a folder `tuneforge train` wrote."
        )
    summary = json.loads((p / "run.json").read_text()) if (p / "run.json").exists() else {}
    if not (p / "model").is_dir() or summary.get("final_step") is None:
        raise ConfigError(
            f"{where}: that run has no final model yet. Finish it first: tuneforge train --resume {p}"
        )
    return Previous(p.resolve(), load_config(p / "config.yaml"), summary)


def resolve_from_run(cfg: RunConfig) -> RunConfig:
    """The config of an update (unchanged without model.from_run); idempotent, so a resume resolves the same."""
    if not cfg.model.from_run:
        return cfg
    from tuneforge.tasks import get_task

    prev = previous_run(cfg.model.from_run)
    old, new = get_task(prev.config.task), get_task(cfg.task)
    if (old.has_head(), old.generates()) != (new.has_head(), new.generates()):
        raise ConfigError(
            f"model.from_run: run {prev.path.name} trained a {old.kind.replace('_', ' ')} (task {old.name}); task "
            f"{new.name} needs a {new.kind.replace('_', ' ')}. Start it from a run of a compatible task."
        )
    if cfg.continual.replay and prev.config.task != cfg.task:
        raise ConfigError(
            f"continual.replay: the previous run is task {prev.config.task}, this one {cfg.task}; replayed rows "
            f"must be this task's kind of row. Set continual.replay=0."
        )
    raw = cfg.to_dict()
    raw["model"]["from_run"] = str(prev.path)
    raw["model"]["name"] = start_model_name(cfg, prev)
    for key in ("dtype", "chat_template", "trust_remote_code"):
        raw["model"][key] = getattr(prev.config.model, key)
    if new.kind == "classifier" and not cfg.data.labels:
        raw["data"]["labels"] = _union_labels(prev, cfg)
    return from_dict(raw, "config (model.from_run)")


def start_model_name(cfg: RunConfig, prev: Previous) -> str:
    """The model.name an update loads (the previous weights are copied over it where needed)."""
    m, pm = cfg.method, prev.config.method
    if prev.adapter and cfg.continual.adapter == "continue":
        if m.name != pm.name:
            raise ConfigError(
                f"continual.adapter=continue: run {prev.path.name} trained a {pm.name} adapter, this config says "
                f"method {m.name}. Set method.name={pm.name}, or continual.adapter=merge to fold it into the base."
            )
        differ = [k for k in ADAPTER_KEYS if getattr(m, k) != getattr(pm, k)]
        if differ:
            raise ConfigError(
                "continual.adapter=continue trains the previous adapter on, so its shape must stay: "
                + ", ".join(
                    f"method.{k} is {getattr(m, k)!r}, the previous run's {getattr(pm, k)!r}" for k in differ
                )
                + ". Use the previous values, or continual.adapter=merge."
            )
        return prev.config.model.name
    if prev.adapter and pm.name in VIRTUAL_TOKEN_METHODS:
        raise ConfigError(
            f"continual.adapter=merge: a {pm.name} adapter cannot be folded into the base. Use "
            f"continual.adapter=continue with method.name={pm.name}."
        )
    if get_task_kind(cfg) == "classifier":
        return prev.config.model.name  # the previous weights are copied in after loading (head rows by label)
    if not prev.adapter:
        return str(prev.path / "model")
    return str(merged_folder(prev, cfg))


def get_task_kind(cfg: RunConfig) -> str:
    from tuneforge.tasks import get_task

    return get_task(cfg.task).kind


def _union_labels(prev: Previous, cfg: RunConfig) -> list[str]:
    """The previous labels in their order, then this run's new labels (sorted)."""
    from tuneforge.tasks import get_task

    old = list(json.loads((prev.path / "data.json").read_text()).get("labels") or [])
    probe = copy.deepcopy(cfg)
    probe.model.name, probe.model.from_run = prev.config.model.name, None
    probe.continual = type(cfg.continual)()
    found = get_task(cfg.task)(probe, load_model=False).labels
    return old + sorted(set(found) - set(old))


def merged_folder(prev: Previous, cfg: RunConfig) -> Path:
    """The previous adapter folded into its base, written once under output.dir/.tuneforge-start/."""
    key = hashlib.sha256(f"{prev.path}|{prev.summary.get('final_step')}".encode()).hexdigest()[:10]
    out = Path(cfg.output.dir) / ".tuneforge-start" / f"{prev.path.name}-merged-{key}"
    if (out / "config.json").exists():
        return out.resolve()
    from tuneforge.tasks import get_task

    console.print(f"merging the adapter of {prev.path.name} into its base -> {out}", highlight=False)
    model = get_task(prev.config.task).load_model(prev.path / "model", prev.config).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(prev.path / "model").save_pretrained(tmp)
    tmp.rename(out)
    return out.resolve()


# ---- the task and its training data


def build_task(cfg: RunConfig, run_dir: Path, resuming: bool = False):
    """(task, update or None): the task with replayed and counterfactual rows in its training split and the
    previous run's weights copied into its model."""
    from tuneforge.tasks import get_task

    cls = get_task(cfg.task)
    if not cfg.model.from_run and not cfg.data.counterfactual_augmentation:
        return cls(cfg), None
    update = None
    first = cls(cfg, load_model=False)
    splits = dict(first.splits)
    notes = []
    if cfg.model.from_run:
        update = Update(previous_run(cfg.model.from_run))
        old_rows = (
            previous_rows(update.previous, "train") if (cfg.continual.replay or cfg.continual.ewc) else []
        )
        rng = random.Random(cfg.training.seed + 17)
        if cfg.continual.replay:
            k = round(cfg.continual.replay * len(old_rows))
            replay = rng.sample(old_rows, k)
            splits["train"] = [*splits["train"], *replay]
            update.replayed = k
            notes.append(
                f"replay: {k:,} of the previous run's {len(old_rows):,} training rows mixed in "
                f"(continual.replay={cfg.continual.replay})"
            )
        if cfg.continual.ewc:
            update.fisher_rows = rng.sample(old_rows, min(cfg.continual.ewc_samples, len(old_rows)))
    if cfg.data.counterfactual_augmentation:
        from tuneforge.data.counterfactual import augment, load_terms

        terms = load_terms(cfg.data.counterfactual_terms, key="data.counterfactual_terms")
        before = len(splits["train"])
        splits["train"], added = augment(splits["train"], terms, cfg.training.seed)
        notes.append(
            f"counterfactual augmentation: {len(splits['train']) - before:,} swapped copies added ("
            + ", ".join(f"{c} {n:,}" for c, n in added.items())
            + ")"
        )
    task = cls(cfg, splits=splits)
    task.user_split = getattr(first, "user_split", True)
    for line in notes:
        console.print(line, highlight=False)
    if update is not None:
        update.labels_before = json.loads((update.previous.path / "data.json").read_text()).get("labels")
        continued = update.previous.adapter and cfg.continual.adapter == "continue"
        if not continued and cls.kind == "classifier":
            update.inherited = copy_weights(task.model, previous_weights(update.previous, cfg), update, task)
        elif not continued and not update.previous.adapter:  # model.name is the previous model/ itself
            update.inherited = {n for n, _ in task.model.named_parameters()}
    return task, update


def previous_rows(prev: Previous, split: str) -> list:
    """The previous run's ``split`` rows, exactly as it read them (its data files checked against run.json)."""
    from tuneforge.data.fingerprint import check_data_files
    from tuneforge.tasks import get_task

    recorded = (prev.summary.get("lineage") or {}).get("data_files")
    if recorded is None:
        raise TuneforgeError(
            f"{prev.path}: its run.json records no data files (a run from before lineage was recorded), so its "
            f"rows cannot be checked. Set continual.replay=0 and continual.ewc=0, or train that run again."
        )
    check_data_files(recorded, prev.path)
    return get_task(prev.config.task)(prev.config, load_model=False).splits[split]


def previous_weights(prev: Previous, cfg: RunConfig) -> dict:
    """The previous model's weights as a plain model (an adapter folded into its base)."""
    from tuneforge.tasks import get_task

    model = get_task(prev.config.task).load_model(prev.path / "model", prev.config)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return {k: v.detach() for k, v in model.state_dict().items()}


def copy_weights(model, weights: dict, update: Update, task) -> set[str]:
    """Copy ``weights`` into ``model`` by name; rows of a resized head by label. Returns the parameter names
    copied whole (the ones the L2-SP/EWC anchor may pull toward)."""
    import torch

    state = model.state_dict()
    old, new = update.labels_before or [], list(getattr(task, "labels", None) or [])
    rows = [(new.index(label), i) for i, label in enumerate(old) if label in new]
    whole, skipped = set(), []
    with torch.no_grad():
        for name, value in state.items():
            src = weights.get(name)
            if src is None:
                skipped.append(name)
            elif src.shape == value.shape:
                value.copy_(src)
                whole.add(name)
            elif src.dim() >= 1 and src.shape[1:] == value.shape[1:] and rows:  # a head with more labels
                for j, i in rows:
                    value[j] = src[i]
            else:
                skipped.append(name)
    if skipped:
        log.info("not copied from the previous run: %s", ", ".join(skipped[:10]))
    params = {n for n, _ in model.named_parameters()}
    return whole & params


def after_prepare(
    cfg: RunConfig, update: Update | None, task, prepared, run_dir: Path, resuming: bool
) -> None:
    """A continued adapter gets its previous weights; the L2-SP/EWC anchor is attached to ``prepared``."""
    if update is None:
        return
    if update.previous.adapter and cfg.continual.adapter == "continue":
        prev_model = type(task).load_model(update.previous.path / "model", update.previous.config)
        update.inherited = copy_weights(
            prepared.model, {k: v.detach() for k, v in prev_model.state_dict().items()}, update, task
        )
    l2, ewc = cfg.continual.l2_to_previous, cfg.continual.ewc
    if not (l2 or ewc):
        return
    from tuneforge.train.continual import Anchor, estimate_fisher

    anchor = Anchor.load(run_dir, l2, ewc) if resuming else None
    if anchor is None:
        names = [n for n, p in prepared.model.named_parameters() if p.requires_grad and n in update.inherited]
        if not names:
            raise ConfigError(
                "continual.l2_to_previous/ewc: none of the weights that train comes from the previous run (a new "
                "adapter on a merged model starts fresh). Use continual.adapter=continue, or method full."
            )
        params = dict(prepared.model.named_parameters())
        fisher = None
        if ewc:
            rows_task = type(task)(
                cfg, splits={"train": update.fisher_rows, "validation": [], "test": []}, load_model=False
            )
            console.print(
                f"EWC: estimating the Fisher diagonal on {len(update.fisher_rows)} previous rows ...",
                highlight=False,
            )
            fisher = estimate_fisher(rows_task, prepared.model, names, list(range(len(update.fisher_rows))))
        anchor = Anchor({n: params[n].detach().clone() for n in names}, l2, ewc, fisher)
        anchor.save(run_dir)
    prepared.info["continual_penalty"] = anchor
    no_decay_toward_zero(prepared, anchor)


def no_decay_toward_zero(prepared, anchor) -> None:
    """The anchored weights get no AdamW weight decay: decay pulls them toward zero, against the pull toward
    the previous weights that replaces it (L2-SP's point); the new head keeps its decay. Measured on a tiny
    model: with decay kept, a strong L2-SP pull left the weights *farther* from the previous ones than no pull
    (Adam's normalisation turns the tiny decay-made differences into full-size steps)."""
    params = dict(prepared.model.named_parameters())
    anchored = {id(params[n]) for n in anchor.reference if n in params}
    groups = []
    for g in prepared.param_groups:
        keep = [p for p in g["params"] if id(p) not in anchored]
        pulled = [p for p in g["params"] if id(p) in anchored]
        if keep:
            groups.append({**g, "params": keep})
        if pulled:
            groups.append({**g, "params": pulled, "weight_decay": 0.0})
    prepared.param_groups[:] = groups


# ---- lineage


def lineage_record(cfg: RunConfig, update: Update | None) -> dict:
    """What run.json records about where this model came from."""
    from tuneforge.data.fingerprint import data_files

    rec = {
        "parent": str(update.previous.path) if update else None,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "task": cfg.task,
        "data_files": data_files(cfg.data),
    }
    if update:
        c = cfg.continual
        rec["continual"] = {
            "adapter": c.adapter if update.previous.adapter else None,
            "replay": c.replay,
            "replayed_rows": update.replayed,
            "l2_to_previous": c.l2_to_previous,
            "ewc": c.ewc,
        }
    if cfg.data.counterfactual_augmentation:
        rec["counterfactual_augmentation"] = True
    return rec
