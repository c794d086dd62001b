"""The command line: one command per user verb.

tuneforge train CONFIG [key=value ...] [--resume [RUN_DIR]] [--nproc N]
tuneforge eval RUN_DIR [--data FILE]
tuneforge predict RUN_DIR "some text" ...
tuneforge chat RUN_DIR | generate RUN_DIR --prompt "..." [--base] | export RUN_DIR OUT [--merge]
tuneforge score RUN_DIR --prompt "..." --response "..." [--response "..."]
tuneforge report RUN_DIR | compare RUN_A RUN_B ...
tuneforge models | datasets | config [CONFIG] | demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    return t


def print_eval(result: dict) -> None:
    if result.get("task") == "sft":  # language models: perplexity base vs tuned, sample answers
        from tuneforge.tasks.sft import format_eval

        console.print("\n".join(format_eval(result)), highlight=False)
        return
    if result.get("task") in (
        "reward",
        "dpo",
        "grpo",
    ):  # preference tuning: accuracy or reward, base vs tuned
        import importlib

        lines = importlib.import_module(f"tuneforge.tasks.{result['task']}").format_eval(result)
        console.print("\n".join(lines), highlight=False)
        return
    tuned, base = result["tuned"], result.get("baseline")
    rows = [["tuned model", f"{tuned['accuracy']:.4f}", f"{tuned['macro_f1']:.4f}", str(tuned["n"])]]
    if base:
        rows.append(
            [
                f"baseline (always '{base['predicts']}')",
                f"{base['accuracy']:.4f}",
                f"{base['macro_f1']:.4f}",
                str(base["n"]),
            ]
        )
    console.print(
        _table(
            f"{result['split']} split: {result['data']}", ["model", "accuracy", "macro-F1", "examples"], rows
        )
    )
    per = tuned["per_class"]
    if len(per) <= 25:
        console.print(
            _table(
                "per class (tuned)",
                ["label", "precision", "recall", "F1", "support"],
                [
                    [k, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
                    for k, v in per.items()
                ],
            )
        )


def cmd_train(args) -> None:
    from tuneforge.train.recipe import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):
        config, overrides = None, [config, *overrides]
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={args.nproc}", "-m", "tuneforge.cli", "train"]
        cmd += ([config] if config else []) + overrides
        if args.resume:
            cmd += ["--resume"] + ([args.resume] if isinstance(args.resume, str) else [])
        sys.exit(subprocess.call(cmd))
    run = train(config, overrides, resume=args.resume or False)
    if run.path.joinpath("eval.json").exists() and int(os.environ.get("RANK", "0")) == 0:
        result = json.loads((run.path / "eval.json").read_text())
        if "tuned" in result and (
            "accuracy" in result["tuned"] or result.get("task") in ("sft", "reward", "dpo", "grpo")
        ):
            print_eval(result)
        console.print(f"run folder: [bold]{run.path}[/bold]")


def cmd_eval(args) -> None:
    from tuneforge.run import Run

    result = Run(args.run_dir).evaluate(data=args.data)
    print_eval(result)


def cmd_score(args) -> None:
    """Score responses with a reward model run: one prompt and its responses, or a JSONL file of rows."""
    from tuneforge.run import Run

    run = Run(args.run_dir)
    if args.file:
        from tuneforge.data.io import read_table

        table = read_table(args.file)
        if {"prompt", "chosen", "rejected"} <= set(table.columns):
            rows = table.rows
            chosen = run.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
            rejected = run.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
            for r, c, j in zip(rows, chosen, rejected):
                print(
                    json.dumps(
                        {
                            "prompt": r["prompt"],
                            "chosen_score": round(c, 4),
                            "rejected_score": round(j, 4),
                            "prefers_chosen": c > j,
                        }
                    )
                )
            console.print(
                f"pairwise accuracy: {sum(c > j for c, j in zip(chosen, rejected)) / max(1, len(rows)):.4f} "
                f"on {len(rows)} pairs"
            )
            return
        if not {"prompt", "response"} <= set(table.columns):
            raise TuneforgeError(
                f"{args.file}: score needs rows with prompt and response (or prompt, chosen, rejected)."
            )
        for r, s in zip(
            table.rows, run.score([r["prompt"] for r in table.rows], [r["response"] for r in table.rows])
        ):
            print(json.dumps({"prompt": r["prompt"], "response": r["response"], "score": round(s, 4)}))
        return
    if not args.prompt or not args.response:
        raise TuneforgeError(
            'score: give --prompt "..." and one or more --response "...", or --file FILE.jsonl.'
        )
    for response, s in zip(args.response, run.score(args.prompt, args.response)):
        print(f"{s:+.4f}\t{response}")


def cmd_predict(args) -> None:
    from tuneforge.run import Run

    texts = list(args.texts)
    if args.file:
        with open(args.file) as fh:
            texts += [line.rstrip("\n") for line in fh if line.strip()]
    if not texts:
        raise TuneforgeError('predict: give texts (tuneforge predict RUN_DIR "some text") or --file FILE.')
    for text, p in zip(texts, Run(args.run_dir).predict(texts)):
        if args.json:
            print(json.dumps({"text": text, **p}))
        else:
            print(f"{p['label']}\t{p['score']:.3f}\t{text}")


def cmd_models(args) -> None:
    from tuneforge.models.catalogue import MODELS

    console.print(
        _table(
            "bundled models (model.name)",
            ["alias", "kind", "params", "licence", "description"],
            [[m.alias, m.kind, m.params, m.licence, m.description] for m in MODELS.values()],
        )
    )
    console.print(
        "Also accepted: a local transformers folder, a .gguf file, or a hub id already in the local cache."
    )


def cmd_datasets(args) -> None:
    from tuneforge.data.bundled import DATASETS

    console.print(
        _table(
            "bundled datasets (data.train)",
            ["alias", "format", "description"],
            [[d.name, d.format, d.description] for d in DATASETS.values()],
        )
    )
    console.print(
        "Use alias:split (e.g. rotten-tomatoes:test) for a split; any JSONL/CSV/TSV/Parquet file works too."
    )


def cmd_config(args) -> None:
    from tuneforge.config import describe, load_config

    if args.reference:
        print(describe())
        return
    print(load_config(args.config, list(args.overrides)).to_yaml(), end="")


DEMO = {
    "task": "classification",
    "model": {"name": "minilm-l6"},
    "data": {"train": "rotten-tomatoes", "max_length": 64, "limit": 4000, "eval_limit": 1000},
    "method": {"name": "full"},
    "training": {"epochs": 1, "batch_size": 32, "lr": 1e-4, "eval_every": 50},
    "output": {"dir": "runs", "name": "demo", "overwrite": True},
}


def cmd_demo(args) -> None:
    """The main job on embedded defaults: MiniLM-L6 fine-tuned for Rotten Tomatoes sentiment."""
    from tuneforge.train.recipe import train

    console.print(
        "[bold]demo:[/bold] full fine-tuning of MiniLM-L6 on Rotten Tomatoes sentiment "
        "(4,000 training snippets, 1 epoch; the full recipe is configs/classify-minilm-rotten.yaml)"
    )
    run = train(DEMO, list(args.overrides))
    print_eval(json.loads((run.path / "eval.json").read_text()))
    for p, text in zip(
        run.predict(["A gripping, beautifully acted film.", "Dull, lifeless and far too long."]),
        ["A gripping, beautifully acted film.", "Dull, lifeless and far too long."],
    ):
        console.print(f"  predict: {text!r} -> {p['label']} ({p['score']:.2f})")
    console.print(f"run folder: [bold]{run.path}[/bold]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge", description="Fine-tune pre-trained models on your own task data."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="fine-tune a model as a YAML config says",
        description="Fine-tune a model and write a run folder.",
    )
    p.add_argument("config", nargs="?", help="YAML run config (see configs/); omit to use the defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=1e-4 data.limit=500")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        metavar="RUN_DIR",
        help="continue a stopped run from its latest checkpoint (the run folder, or the newest matching run)",
    )
    p.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (DDP through torchrun)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's final model on its test split or a file")
    p.add_argument("run_dir")
    p.add_argument(
        "--data", help="a labelled file (or alias:split) to evaluate on instead of the run's test split"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify texts with a run's final model")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="a text file, one input per line")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per text, with every label's probability"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="score responses with a reward model run (task: reward)")
    p.add_argument("run_dir")
    p.add_argument("--prompt", help="the prompt (one user turn)")
    p.add_argument("--response", action="append", help="a response to score (repeat for several)")
    p.add_argument(
        "--file", help="JSONL/CSV rows of prompt+response, or prompt+chosen+rejected (prints the accuracy)"
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("models", help="list the bundled offline models")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("datasets", help="list the bundled offline datasets")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("config", help="check a config and print it resolved (or the reference of every key)")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="fine-tune MiniLM-L6 on Rotten Tomatoes and compare with the baseline")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)
    from tuneforge.serve.cli import add_serve_commands

    add_serve_commands(sub)  # chat, generate, export
    from tuneforge.report.cli import add_report_commands

    add_report_commands(sub)  # report, compare
    # ---- data commands (audit / prepare) are added below by add_data_commands when available
    try:
        from tuneforge.data.cli import add_data_commands
    except ImportError:
        add_data_commands = None
    if add_data_commands is not None:
        add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from tuneforge.utils import quiet_libraries

        quiet_libraries()
    try:
        args.func(args)
    except TuneforgeError as e:
        if args.verbose:
            raise
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: the last checkpoint is whole; continue with --resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
