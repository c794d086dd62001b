"""The command line: one command per user verb.

tuneforge train CONFIG [key=value ...] [--resume [RUN_DIR]] [--nproc N] [--nnodes N --node-rank K --master HOST:PORT]
tuneforge eval RUN_DIR [--data FILE]
tuneforge predict RUN_DIR "some text" ... [--explain]
tuneforge explain RUN_DIR "some text" | --data FILE [--out FILE] | --prompt "..." --response "..."
tuneforge chat RUN_DIR | generate RUN_DIR --prompt "..." [--base] | export RUN_DIR OUT [--merge]
tuneforge score RUN_DIR --prompt "..." --response "..." [--response "..."]
tuneforge report RUN_DIR | compare RUN_A RUN_B ...
tuneforge models | datasets | config [CONFIG] | demo
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console, stdout, text_lines


def _table(title: str, columns: list[str], rows: list[list[str]]):
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")  # never "…": a piped table keeps every name whole
    for r in rows:
        t.add_row(*r)
    return t


def print_eval(result: dict) -> None:
    """The terminal summary of an eval.json, as its task writes it."""
    from tuneforge.tasks import get_task

    console.print("\n".join(get_task(result["task"]).format_eval(result)), highlight=False, markup=False)


# torchrun's own log lines (glog format, from torch/distributed/elastic or run.py): a child's failure is reported
# by the child; torchrun's "Sending process ... SIGTERM", "failed (exitcode ...)" and its traceback add nothing
_TORCHRUN_LOG = re.compile(r"^[WEI]\d{4} [\d:.]+ \d+ torch/distributed/(elastic|run\.py)")
_TORCHRUN_FAILED = re.compile(r"failed \(exitcode: -?\d+\)")


def _launch(nproc: int, argv: list[str], nodes: list[str] | None = None) -> int:
    """Run ``tuneforge ARGV`` on ``nproc`` local processes through torchrun (rendezvous, DDP), each with its
    share of the cores. A failure ends in the failing process's own message (one line for a user's mistake),
    not torchrun's log lines and traceback. ``nodes``: torchrun's options for several machines (else one)."""
    from tuneforge.threads import launcher_env

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    where = nodes or ["--standalone"]
    cmd = [torchrun, *where, f"--nproc_per_node={nproc}", "-m", "tuneforge.cli", *argv]
    env = {**os.environ, **launcher_env(nproc), "TUNEFORGE_LAUNCHED": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    hiding = explained = False
    said: set[str] = set()
    for raw in proc.stderr:  # line by line, as the processes write them
        line = raw.decode("utf-8", "replace")
        if _TORCHRUN_FAILED.search(line) and _TORCHRUN_LOG.match(line):
            hiding = True  # what follows is torchrun's traceback and failure summary
        if hiding or _TORCHRUN_LOG.match(line):
            continue
        if line.startswith("error:"):
            if line in said:  # every process failed the same way: say it once
                continue
            said.add(line)
            explained = True
        sys.stderr.write(line)
        sys.stderr.flush()
    code = proc.wait()
    if code and not explained:
        console.print(
            f"[bold red]error:[/bold red] {nproc}-process training stopped: a process failed (exit code {code}); "
            f"its output is above. Run with --nproc 1 to see the failure on its own.",
            highlight=False,
        )
    return 2 if code else 0


def _peer_failed(e: BaseException) -> bool:
    """In a process of ``tuneforge train --nproc N``: a collective broke because another process ended first
    (that process prints the reason; this one only adds a traceback of the broken connection)."""
    if os.environ.get("TUNEFORGE_LAUNCHED") != "1" or not isinstance(e, RuntimeError):
        return False
    text = str(e)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _node_options(args) -> list[str] | None:
    """torchrun's static rendezvous for ``--nnodes N --node-rank K --master HOST:PORT`` (None: one machine).
    Every machine runs the same command with its own --node-rank; node 0's processes are ranks 0..P-1."""
    if args.nnodes < 1:
        raise TuneforgeError(f"--nnodes must be at least 1, got {args.nnodes}.")
    if args.nnodes == 1:
        return None
    if not args.master or not re.fullmatch(r"[^:\s]+:\d+", args.master):
        raise TuneforgeError(
            f"--nnodes {args.nnodes} needs --master HOST:PORT, the address of node 0 that every node can reach "
            f"(e.g. --master 10.0.0.1:29500); got {args.master!r}."
        )
    if not 0 <= args.node_rank < args.nnodes:
        raise TuneforgeError(
            f"--node-rank must be 0 to {args.nnodes - 1} (this machine's place), got {args.node_rank}."
        )
    host, port = args.master.rsplit(":", 1)
    return [
        f"--nnodes={args.nnodes}",
        f"--node_rank={args.node_rank}",
        f"--master_addr={host}",
        f"--master_port={port}",
    ]


def cmd_train(args) -> None:
    from tuneforge.recipe import train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):
        config, overrides = None, [config, *overrides]
    resume = args.resume or False
    if isinstance(resume, str) and "=" in resume and not os.path.exists(resume):
        resume, overrides = (
            True,
            [*overrides, resume],
        )  # `train CFG --resume a.b=1`: an override, not a folder
    if getattr(args, "from_run", None):  # --from RUN_DIR: update a previous run's model (docs/continual.md)
        overrides = [*overrides, f"model.from_run={args.from_run}"]
    if args.nproc < 1:
        raise TuneforgeError(f"--nproc must be at least 1, got {args.nproc}.")
    nodes = _node_options(args)
    if (args.nproc > 1 or nodes) and "LOCAL_RANK" not in os.environ:
        argv = ["train", *([config] if config else []), *overrides]
        if resume:
            argv += ["--resume"] + ([resume] if isinstance(resume, str) else [])
        sys.exit(_launch(args.nproc, argv, nodes))
    run = train(config, overrides, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        if (run.path / "eval.json").exists():
            print_eval(json.loads((run.path / "eval.json").read_text()))
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
    if texts == ["-"]:
        texts = text_lines("-", "text")
        if not texts:
            raise TuneforgeError("predict -: standard input held no text; give one text per line.")
    if args.file:
        texts += text_lines(args.file, "text")
    if not texts:
        raise TuneforgeError(
            'predict: give texts (tuneforge predict RUN_DIR "some text"), --file FILE, or - to read standard input.'
        )
    if args.explain:  # the label and each word's contribution to it (integrated gradients)
        from tuneforge.serve.explain_cli import print_explanations

        return print_explanations(Run(args.run_dir).explain(texts), as_json=args.json)
    for text, p in zip(texts, Run(args.run_dir).predict(texts)):
        if args.json:
            print(json.dumps({"text": text, **p}))
        elif "output" in p:  # a text-to-text run (seq2seq)
            print(f"{p['output']}\t{text}")
        else:
            print(f"{p['label']}\t{p['score']:.3f}\t{text}")


def cmd_models(args) -> None:
    from tuneforge.models.catalogue import MODELS

    stdout.print(
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

    stdout.print(
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
    """Print the resolved config after checking what can be checked cheaply: data files, the model."""
    from tuneforge.config import describe, load_config

    if args.reference:
        print(describe())
        return
    cfg = load_config(args.config, list(args.overrides))
    problems = check_paths(cfg)
    print(cfg.to_yaml(), end="")
    if problems:
        raise TuneforgeError("the config is valid, but:\n  " + "\n  ".join(problems))


def check_paths(cfg) -> list[str]:
    """What would stop a run at its start, found without loading anything heavy."""
    from tuneforge.data.bundled import is_bundled
    from tuneforge.models.load import resolve_model

    problems = []
    for key in ("train", "validation", "test"):
        spec = getattr(cfg.data, key)
        if spec and not is_bundled(spec.split(":")[0]) and not Path(spec).is_file():
            problems.append(f"data.{key}: {spec} is not a file or a bundled dataset (`tuneforge datasets`).")
    try:
        resolve_model(cfg.model.name)
    except TuneforgeError as e:
        problems.append(f"model.name: {e}")
    return problems


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
    from tuneforge.recipe import train

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
    p.add_argument("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
    p.add_argument(
        "--node-rank", type=int, default=0, help="this machine's place among --nnodes (0 is the master)"
    )
    p.add_argument(
        "--master", metavar="HOST:PORT", help="node 0's address and a free port, reachable by every node"
    )
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_DIR",
        help="start from a previous run's tuned model or adapter (sets model.from_run; see continual.*)",
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
    p.add_argument(
        "texts", nargs="*", help="texts to classify (- reads them from standard input, one per line)"
    )
    p.add_argument("--file", help="a text file, one input per line (- for standard input)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per text, with every label's probability"
    )
    p.add_argument(
        "--explain", action="store_true", help="also show each word's contribution to the label (Captum)"
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
    from tuneforge.serve.explain_cli import add_explain_command

    add_explain_command(sub)  # explain (integrated gradients)
    from tuneforge.probes import recompute
    from tuneforge.report.cli import add_report_commands

    add_report_commands(sub, recompute=recompute)  # report, compare (the probes it may need run models)
    from tuneforge.data.cli import add_data_commands

    add_data_commands(sub)  # data audit, data prepare
    from tuneforge.advise.cli import add_advise_commands

    add_advise_commands(sub)  # assess, plan, sweep, probe
    return parser


# commands that train or hold models: restarted once under jemalloc where installed (tuneforge.allocator)
RELAUNCHED = {
    "train",
    "eval",
    "demo",
    "assess",
    "plan",
    "probe",
    "sweep",
    "serve",
    "worker",
    "chat",
    "generate",
}


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in RELAUNCHED:  # (not when called in-process)
        from tuneforge.allocator import relaunch

        relaunch(sys.argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after options (`train CFG --nproc 2 a.b=1`) belong to the overrides
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    import logging

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        from tuneforge.utils import quiet_libraries

        quiet_libraries()
    try:
        args.func(args)
    except BrokenPipeError:  # `tuneforge ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except TuneforgeError as e:
        if args.verbose:
            raise
        if not getattr(e, "quiet", False):  # (an error another process already printed)
            console.print(f"[bold red]error:[/bold red] {_escape(str(e))}", highlight=False)
        sys.exit(128 + e.signum if getattr(e, "signum", None) else 2)
    except KeyboardInterrupt:
        console.print("interrupted.")
        sys.exit(130)
    except Exception as e:
        if args.verbose or not _peer_failed(e):
            raise
        sys.exit(1)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


if __name__ == "__main__":
    main()
