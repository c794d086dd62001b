"""``tuneforge report RUN_DIR`` and ``tuneforge compare RUN_A RUN_B ...``.

The report layer reads run files and never runs a model, so the probes ``tuneforge report`` computes first
come from the caller: ``add_report_commands(sub, recompute=tuneforge.probes.recompute)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console

# (run folder, only_missing) -> names of the probe files written
Recompute = Callable[..., list[str]]


def cmd_report(args, recompute: Recompute | None = None) -> None:
    from tuneforge.report.build import build_report
    from tuneforge.report.files import check_run_folder
    from tuneforge.utils import quiet_libraries

    quiet_libraries()
    folder = check_run_folder(args.run_dir)
    if args.recompute and args.no_probes:
        raise TuneforgeError("report: --recompute and --no-probes contradict each other; give one of them.")
    if not args.no_probes:
        if recompute is not None:
            recompute(folder, only_missing=not args.recompute)
        elif args.recompute:
            raise TuneforgeError(
                "report --recompute: this command line was built without the probes (add_report_commands got "
                f"no recompute function); run `tuneforge report {folder} --no-probes` to rebuild from the files."
            )
    paths = build_report(folder)
    for line in json.loads(paths["json"].read_text())["summary"]:
        console.print(f"• {line}", highlight=False)
    console.print(f"report: [bold]{paths['html']}[/bold] and {paths['markdown'].name}")


def compare_table(result: dict) -> list[list[str]]:
    """The rows ``tuneforge compare`` prints: a header of run names, then one row per key or metric."""
    from tuneforge.report.compare import fmt_ci

    rows = [["", *result["names"]]]
    rows += [[key, *[str(v) for v in vals]] for key, vals in result["config_differences"].items()]
    for key, label in (
        ("accuracy", "test accuracy"),
        ("macro_f1", "test macro-F1"),
        ("perplexity", "test perplexity"),
    ):
        vals = [r.get(key) for r in result["rows"]]
        if any(vals):
            rows.append([label, *[fmt_ci(v) for v in vals]])
    rows.append(["overfitting", *[r["overfitting"] for r in result["rows"]]])
    rows.append(
        [
            "training time (s)",
            *[f"{r['train_seconds']:.1f}" if r.get("train_seconds") else "-" for r in result["rows"]],
        ]
    )
    return rows


def print_table(rows: list[list[str]], title: str, out=None) -> None:
    """Print a table whole: on a terminal as a rich table whose cells wrap (never cut to "…"); piped or
    redirected as tab-separated lines, one per row, for other programs."""
    out = out or sys.stdout
    if not out.isatty():
        clean = lambda c: " ".join(str(c).split())  # noqa: E731  (no tabs or newlines inside a cell)
        out.write("".join("\t".join(clean(c) for c in row) + "\n" for row in rows))
        out.flush()
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in rows[0]:
        t.add_column(h, overflow="fold")
    for row in rows[1:]:
        t.add_row(*row)
    Console(file=out).print(t)


def cmd_compare(args) -> None:
    from tuneforge.report.compare import compare_runs

    result = compare_runs(args.runs, args.out, args.name)
    print_table(compare_table(result), "runs side by side")
    console.print(f"comparison: [bold]{result['html']}[/bold]")


def add_report_commands(sub: argparse._SubParsersAction, recompute: Recompute | None = None) -> None:
    """Add ``report`` and ``compare``. ``recompute(run_dir, only_missing=...)`` computes the probe files
    (``tuneforge.probes.recompute``); without it ``report`` only renders the files already in the run."""
    p = sub.add_parser(
        "report",
        help="(re)build a run's report.html and report.md",
        description="Rebuild report.md/report.html/report.json of a run folder. Probe results "
        "(bias, forgetting) missing from the folder are computed first (this loads the model).",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--recompute", action="store_true", help="recompute the bias and forgetting probes even if saved"
    )
    p.add_argument(
        "--no-probes", action="store_true", help="only re-render from the files already in the run folder"
    )
    p.set_defaults(func=lambda args: cmd_report(args, recompute))

    p = sub.add_parser(
        "compare",
        help="put runs side by side: config differences, metrics, curves",
        description="Compare run folders; writes NAME.html, NAME.md and NAME.json into --out. The table is "
        "printed to standard output (tab-separated when piped).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", type=Path)
    p.add_argument("--out", default=".", help="folder for the comparison files (default: the current folder)")
    p.add_argument("--name", default="compare", help="file name stem (default: compare)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "lineage", help="print the chain of runs that led to a run's model (parents, data hashes)"
    )
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print the chain as JSON")
    p.set_defaults(func=cmd_lineage)


def cmd_lineage(args) -> None:
    from tuneforge.report.lineage import format_lineage, read_lineage

    chain = read_lineage(args.run_dir)
    print(json.dumps(chain, indent=1) if args.json else format_lineage(chain))
