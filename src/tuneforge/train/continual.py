"""Guards for updating a tuned model on new data without forgetting the old task.

Two penalties pull the weights that train toward the weights the update started from (the previous run's
model), added to the loss once per optimizer step (``train/loop.py`` calls ``Anchor`` there):

- L2-SP (Li et al. 2018): ``l2/2 * sum_i (w_i - w0_i)^2``;
- EWC (Kirkpatrick et al. 2017): ``ewc/2 * sum_i F_i (w_i - w0_i)^2`` with ``F`` the diagonal of the
  empirical Fisher information of the previous task, ``mean over rows of (d log p(row) / dw)^2``, estimated
  on the previous run's training rows at the starting weights (``estimate_fisher``).

The anchor (starting weights and Fisher) is saved in the run folder (``continual/anchor.safetensors``), so
a resumed run pulls toward exactly the same point. ``old_task_scores`` measures the previous run's test set
with a model (before: the previous run's model; after: this run's), per example, for the report's intervals.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ANCHOR_FILE = "continual/anchor.safetensors"


class Anchor:
    """The L2-SP and EWC pull of the named parameters toward their reference values."""

    def __init__(
        self,
        reference: dict[str, torch.Tensor],
        l2: float = 0.0,
        ewc: float = 0.0,
        fisher: dict[str, torch.Tensor] | None = None,
    ):
        self.reference = {k: v.detach().float() for k, v in reference.items()}
        self.l2, self.ewc = float(l2), float(ewc)
        self.fisher = {k: v.detach().float() for k, v in (fisher or {}).items()}
        if self.ewc and set(self.fisher) != set(self.reference):
            missing = sorted(set(self.reference) - set(self.fisher))[:3]
            raise ValueError(f"EWC needs a Fisher value for every anchored parameter (missing: {missing})")

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty (a scalar with gradient) for ``model``'s current weights."""
        params = {n.replace("_orig_mod.", ""): p for n, p in model.named_parameters()}  # (compiled blocks)
        total = None
        for name, ref in self.reference.items():
            p = params[name]
            if ref.device != p.device:  # moved once, with the model
                self.reference[name] = ref = ref.to(p.device)
                if name in self.fisher:
                    self.fisher[name] = self.fisher[name].to(p.device)
            diff2 = (p.float() - ref).pow(2)  # same shape as the parameter
            term = 0.0
            if self.l2:
                term = term + 0.5 * self.l2 * diff2.sum()
            if self.ewc:
                term = term + 0.5 * self.ewc * (self.fisher[name] * diff2).sum()
            total = term if total is None else total + term
        if total is None or isinstance(total, float):
            return torch.zeros((), device=next(model.parameters()).device)
        return total

    def distance(self, model: nn.Module) -> float:
        """L2 distance of the anchored weights from their reference (for the logs and tests)."""
        params = {n.replace("_orig_mod.", ""): p for n, p in model.named_parameters()}
        with torch.no_grad():
            return float(
                sum(
                    (params[n].float() - r.to(params[n].device)).pow(2).sum()
                    for n, r in self.reference.items()
                )
                ** 0.5
            )

    # ---- saved in the run folder, so a resume pulls toward the same point
    def save(self, run_dir: Path) -> None:
        from safetensors.torch import save_file

        path = Path(run_dir) / ANCHOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"reference/{k}": v.cpu().contiguous() for k, v in self.reference.items()}
        tensors.update({f"fisher/{k}": v.cpu().contiguous() for k, v in self.fisher.items()})
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"l2": str(self.l2), "ewc": str(self.ewc)})
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: Path, l2: float, ewc: float) -> Anchor | None:
        path = Path(run_dir) / ANCHOR_FILE
        if not path.exists():
            return None
        from safetensors.torch import load_file

        t = load_file(str(path))
        ref = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("reference/")}
        fisher = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("fisher/")}
        return cls(ref, l2, ewc, fisher)


def estimate_fisher(task, model: nn.Module, names: list[str], indices: list[int], device=None) -> dict:
    """Diagonal empirical Fisher of ``names`` on training examples ``indices`` of ``task``: the mean over
    examples of the squared gradient of the example's mean loss (its negative log-likelihood). Model in eval
    mode (no dropout); one example per backward pass, so each gradient is that example's own."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in chosen]
    was_training = model.training
    model.eval()
    device = device or chosen[0].device
    try:
        for i in indices:
            batch = {k: v.to(device) for k, v in task.collate([i]).items()}
            loss_sum, items = task.loss(model, batch)
            grads = torch.autograd.grad(loss_sum / max(float(items), 1.0), chosen, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().float().pow(2))
    finally:
        model.train(was_training)
    n = max(len(indices), 1)
    return {name: (f / n).cpu() for name, f in zip(names, fisher)}


# ---- the previous task's test set, scored per example
@torch.no_grad()
def classifier_correct(task, model: nn.Module, n_old: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per test example of ``task`` (the previous run's classification task): right or wrong among the old
    task's labels (the first ``n_old`` outputs; a model updated on new labels keeps the old ones first) and
    among all of the model's labels."""
    enc = task.encoded["test"]
    model.eval()
    device = next(model.parameters()).device
    y = np.asarray(enc["labels"])
    among_old = np.zeros(len(y), dtype=bool)
    among_all = np.zeros(len(y), dtype=bool)
    for start in range(0, len(y), batch_size):
        idx = list(range(start, min(start + batch_size, len(y))))
        batch = task.collate_encoded(enc, idx)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits.float()  # (B, C) with C >= n_old
        among_old[idx] = (logits[:, :n_old].argmax(-1).cpu().numpy()) == y[idx]
        among_all[idx] = (logits.argmax(-1).cpu().numpy()) == y[idx]
    return {"among_old_labels": among_old, "among_all_labels": among_all}


def score_change(before: np.ndarray, after: np.ndarray, samples: int, greater_is_better: bool = True) -> dict:
    """Before/after means of per-example scores with 95% intervals, and the paired change."""
    from tuneforge.eval.bootstrap import mean_ci, paired_difference_ci

    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    change = paired_difference_ci(lambda v: v.mean(-1), after, before, samples)
    return {
        "before": mean_ci(before, samples).to_dict(),
        "after": mean_ci(after, samples).to_dict(),
        "change": change.to_dict(),
        "greater_is_better": greater_is_better,
    }


def dropped(result: dict, threshold: float) -> bool:
    """The score fell by more than ``threshold`` (a fraction of its value before)."""
    b, a = result["before"]["value"], result["after"]["value"]
    if not b:
        return False
    fall = (b - a) / abs(b) if result["greater_is_better"] else (a - b) / abs(b)
    return fall > threshold


def old_task_probe(previous, run, task_class, samples: int = 1000) -> dict:
    """continual.json: the previous run's test set scored by its own model (before) and by ``run``'s (after).

    ``previous`` and ``run`` are ``tuneforge.run.Run`` objects, ``task_class`` the previous run's task class.
    """
    from tuneforge.data.fingerprint import check_data_files
    from tuneforge.errors import TuneforgeError

    cfg = run.config
    out: dict = {"parent": str(previous.path), "threshold": cfg.continual.forgetting_threshold}
    recorded = (previous.summary().get("lineage") or {}).get("data_files")
    try:
        if recorded is None:
            raise TuneforgeError(f"{previous.path}: its run.json records no data files to check")
        check_data_files(recorded, previous.path)
    except TuneforgeError as e:
        out["error"] = f"old task not measured: {e}"
        return out
    prev_task = task_class(previous.config, load_model=False)
    if task_class.kind == "classifier":
        n_old = len(prev_task.labels)
        before = classifier_correct(prev_task, previous.load_model(), n_old)["among_all_labels"]
        after = classifier_correct(prev_task, run.load_model(), n_old)
        out["metric"] = "accuracy"
        out["old_task"] = score_change(before, after["among_old_labels"], samples)
        out["labels_added"] = len(getattr(run, "labels", None) or []) or None
        if not np.array_equal(after["among_old_labels"], after["among_all_labels"]):
            out["all_labels"] = score_change(before, after["among_all_labels"], samples)
    elif task_class.kind == "language_model" and prev_task.encoded.get("test"):
        from tuneforge.eval.forgetting import example_nll

        test, bs, max_len = prev_task.encoded["test"], 8, previous.config.data.max_length
        nb, tok = example_nll(previous.load_model(), previous.load_tokenizer(), test, bs, max_len)
        na, _ = example_nll(run.load_model(), run.load_tokenizer(), test, bs, max_len)
        out["metric"] = "loss"
        out["old_task"] = score_change(nb / np.maximum(tok, 1), na / np.maximum(tok, 1), samples, False)
    else:
        out["error"] = f"old task not measured: task {task_class.name} has no per-example test score here"
        return out
    r = out["old_task"]
    out["warning"] = dropped(r, out["threshold"])
    b, a = r["before"]["value"], r["after"]["value"]
    verb = "fell" if (a < b) == r["greater_is_better"] else "rose" if a != b else "held"
    out["message"] = (
        f"previous task ({previous.path.name}) test {out['metric']}: {b:.4f} before the update, {a:.4f} after "
        f"({verb}; change {r['change']['value']:+.4f} [{r['change']['low']:+.4f}, {r['change']['high']:+.4f}])"
        + (f" - dropped more than {100 * out['threshold']:.0f}%" if out["warning"] else "")
    )
    return out
