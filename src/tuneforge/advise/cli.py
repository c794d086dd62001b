"""``tuneforge assess | plan | sweep | probe``: parse arguments, call ``tuneforge.advise``, print.

tuneforge assess CONFIG [OVERRIDES] [--split validation] [--baselines knn,logreg] [--tuned RUN] [--out DIR]
tuneforge plan CONFIG [OVERRIDES] [--methods full,lora] [--batch-sizes 8,16] [--max-lengths 128] [--precisions fp32,bf16]
tuneforge sweep CONFIG [OVERRIDES] --space SPACE.yaml [--trials N] [--subset 0.2] [--rungs 3] [--eta 3] [--final]
tuneforge probe CONFIG [OVERRIDES] [--tolerance 0.01] [--out DIR]
"""

from __future__ import annotations

import argparse
from typing import Any

from tuneforge.utils import console


def _list(kind=str):
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML run config (see configs/); omit to use the defaults")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. data.limit=2000 model.name=smollm2-135m-instruct"
    )
    p.add_argument("--out", help="folder for the results (default: output.dir/COMMAND-TASK-MODEL)")


def _show_md(path: str) -> None:
    from pathlib import Path

    console.print(Path(path).read_text(), markup=False, highlight=False)


def cmd_assess(args) -> None:
    from tuneforge.advise.assess import assess

    names = args.baselines if args.baselines in ("auto",) else _list()(args.baselines)
    r = assess(args.config, args.overrides, split=args.split, baselines=names, tuned=args.tuned, out=args.out)
    _show_md(r["files"][1])


def cmd_plan(args) -> None:
    from tuneforge.advise.plan import plan

    r = plan(
        args.config,
        args.overrides,
        methods=args.methods,
        batch_sizes=args.batch_sizes,
        max_lengths=args.max_lengths,
        precisions=args.precisions,
        probe_steps=args.probe_steps,
        out=args.out,
    )
    _show_md(r["files"][1])


def cmd_sweep(args) -> None:
    from tuneforge.advise.sweep import sweep

    r = sweep(
        args.config,
        args.overrides,
        space=args.space,
        trials=args.trials,
        subset=args.subset,
        rungs=args.rungs,
        eta=args.eta,
        timeout=args.timeout,
        out=args.out,
        final=args.final,
    )
    _show_md(r["files"][0])
    if r.get("final"):
        console.print(
            f"final run: [bold]{r['final']['run']}[/bold] (validation {r['metric']} {r['final']['best_metric']:.4f})"
        )


def cmd_probe(args) -> None:
    from tuneforge.advise.depth import probe

    r = probe(args.config, args.overrides, split=args.split, tolerance=args.tolerance, out=args.out)
    _show_md(r["files"][1])


def add_advise_commands(sub: Any) -> None:
    """Add ``assess``, ``plan``, ``sweep`` and ``probe`` to the main parser's subcommands."""
    p = sub.add_parser(
        "assess",
        help="score the task without training (zero/k-shot, k-NN, probes) and say whether fine-tuning is needed",
        description="What the base model scores without training, on the validation split, with 95% intervals.",
    )
    _common(p)
    p.add_argument("--split", default="validation", help="split to score (default validation)")
    p.add_argument(
        "--baselines",
        default="auto",
        help="auto, or a comma list of zero_shot,k_shot,knn,logreg,logprob_margin,length,bt_probe",
    )
    p.add_argument(
        "--tuned", metavar="RUN", help="a trained run folder whose validation score goes beside them"
    )
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser(
        "plan",
        help="estimate memory and run time of candidate set-ups on this machine and recommend one",
        description="Trainable parameters, peak memory and run time (from measured probe steps) per set-up.",
    )
    _common(p)
    p.add_argument(
        "--methods", type=_list(), help="comma list of methods (default: the config's, full, freeze, lora)"
    )
    p.add_argument(
        "--batch-sizes", type=_list(int), help="comma list of batch sizes (the effective batch is kept)"
    )
    p.add_argument("--max-lengths", type=_list(int), help="comma list of data.max_length values")
    p.add_argument(
        "--precisions", type=_list(), help="comma list of fp32,bf16 (default: what this machine runs)"
    )
    p.add_argument(
        "--probe-steps",
        type=int,
        default=5,
        help="optimizer steps measured per set-up, shortest to longest batch (default 5)",
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "sweep",
        help="hyperparameter search (Optuna TPE, successive halving from a data subset); resumable",
        description="Search SPACE for the best validation metric; run the same command again to resume a killed sweep. "
        "SPACE.yaml: one config key per line, e.g. 'training.lr: {low: 1.0e-5, high: 1.0e-3, log: true}' or "
        "'method.r: {choices: [8, 16, 32]}'.",
    )
    _common(p)
    p.add_argument("--space", required=True, metavar="SPACE.yaml", help="the search space (see above)")
    p.add_argument(
        "--trials", type=int, default=20, help="trials in all, counting those already done (default 20)"
    )
    p.add_argument(
        "--subset",
        type=float,
        default=0.2,
        help="fraction of the training rows for the first rung (default 0.2)",
    )
    p.add_argument(
        "--rungs",
        type=int,
        default=3,
        help="rungs per trial; the last trains the config's whole budget (default 3)",
    )
    p.add_argument(
        "--eta", type=int, default=3, help="budget ratio between rungs; the best 1/eta go on (default 3)"
    )
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--final", action="store_true", help="then train the best values on the full data (SWEEP/final)"
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "probe",
        help="linear probe on every layer of the base model; the freeze depth it implies",
        description="Probe accuracy by depth on the validation split, and method.freeze_layers to use.",
    )
    _common(p)
    p.add_argument("--split", default="validation", help="split to score (default validation)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="accuracy within this of the best layer serves (default 0.01)",
    )
    p.set_defaults(func=cmd_probe)
