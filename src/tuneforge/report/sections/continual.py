"""An update of a previous run (model.from_run): where the model came from, the previous task's test score
before and after the update (continual.json, with intervals), and the bias figure beside the task score when
the training data was counterfactually augmented. Reads run files only."""

from __future__ import annotations

from tuneforge.report.files import RunFiles, read_json
from tuneforge.report.format import ci
from tuneforge.report.render import Doc


def build(doc: Doc, f: RunFiles) -> dict | None:
    lineage = f.summary.get("lineage") or {}
    cont = read_json(f.path / "continual.json")
    cda = lineage.get("counterfactual_augmentation") or f.config.data.counterfactual_augmentation
    if not f.config.model.from_run and not cda:
        return None
    doc.h2("Continual update and bias reduction")
    out: dict = {}
    if f.config.model.from_run:
        c = lineage.get("continual") or {}
        guards = [
            f"replay {c.get('replay', 0):g} ({c.get('replayed_rows', 0):,} rows)"
            if c.get("replay")
            else None,
            f"L2-SP {c.get('l2_to_previous'):g}" if c.get("l2_to_previous") else None,
            f"EWC {c.get('ewc'):g}" if c.get("ewc") else None,
        ]
        guards = [g for g in guards if g] or ["none"]
        doc.p(
            f"Updated from run `{f.config.model.from_run}`"
            + (f" (adapter: {c['adapter']})" if c.get("adapter") else "")
            + f"; guards against forgetting: {', '.join(guards)}. `tuneforge lineage {f.path}` prints the chain."
        )
        if cont is None:
            doc.p(
                "The previous task was not measured yet: `tuneforge report RUN_DIR` computes continual.json."
            )
        elif cont.get("error"):
            doc.note(cont["error"], "warn")
            out["error"] = cont["error"]
        else:
            doc.note(cont["message"], "warn" if cont["warning"] else "ok")
            rows = [
                [
                    "previous task, its labels",
                    ci(cont["old_task"]["before"]),
                    ci(cont["old_task"]["after"]),
                    ci(cont["old_task"]["change"]),
                ]
            ]
            if cont.get("all_labels"):
                rows.append(
                    [
                        "previous task, among all labels",
                        ci(cont["all_labels"]["before"]),
                        ci(cont["all_labels"]["after"]),
                        ci(cont["all_labels"]["change"]),
                    ]
                )
            doc.table(
                [
                    f"test {cont['metric']} [95% CI]",
                    "before (previous model)",
                    "after (this model)",
                    "change",
                ],
                rows,
            )
            doc.p(
                f"Warning threshold: a fall of more than {100 * cont['threshold']:.0f}% "
                f"(continual.forgetting_threshold). The new task's own score is in the sections above."
            )
            out = {"headline": cont["message"], **cont}
    if cda:
        bias = f.bias or {}
        task_score = (f.eval or {}).get("tuned") or {}
        score = next((f"{k} {task_score[k]:.4f}" for k in ("accuracy", "loss") if k in task_score), "-")
        doc.p(
            "Training rows that mention a bias-probe term were added again with the terms swapped "
            "(data.counterfactual_augmentation). This run: task score "
            + score
            + "; bias probe: "
            + (bias.get("summary") or "not measured")
            + " To see the gain and its cost, compare with the same run without augmentation: "
            "`tuneforge compare RUN_WITHOUT RUN_WITH` shows both task scores, and each run's report its bias probe."
        )
        out["counterfactual"] = {"task_score": score, "bias": bias.get("summary")}
    return out
