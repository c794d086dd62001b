"""``tuneforge report RUN_DIR`` and ``tuneforge compare RUN_A RUN_B ...``."""

from __future__ import annotations

import argparse
import json

from tuneforge.utils import console


def cmd_report(args) -> None:
    from tuneforge.report.build import build_report
    from tuneforge.report.probes import PROBE_FILES
    from tuneforge.run import Run
    from tuneforge.utils import quiet_libraries

    quiet_libraries()
    run = Run(args.run_dir)
    if args.recompute:
        for name in PROBE_FILES:
            (run.path / name).unlink(missing_ok=True)
    paths = build_report(run.path, probes=not args.no_probes)
    for line in json.loads(paths["json"].read_text())["summary"]:
        console.print(f"• {line}", highlight=False)
    console.print(f"report: [bold]{paths['html']}[/bold] and {paths['markdown'].name}")


def cmd_compare(args) -> None:
    from tuneforge.report.compare import compare_runs

    result = compare_runs(args.runs, args.out, args.name)
    from rich.table import Table

    t = Table(title="runs side by side")
    t.add_column("")
    for n in result["names"]:
        t.add_column(n)
    for key, vals in result["config_differences"].items():
        t.add_row(key, *[str(v) for v in vals])
    for key, label in (
        ("accuracy", "test accuracy"),
        ("macro_f1", "test macro-F1"),
        ("perplexity", "test perplexity"),
    ):
        vals = [r.get(key) for r in result["rows"]]
        if any(vals):
            t.add_row(
                label,
                *[
                    f"{v['value']:.4f}" + (f" [{v['low']:.4f}, {v['high']:.4f}]" if "low" in v else "")
                    if v
                    else "-"
                    for v in vals
                ],
            )
    t.add_row("overfitting", *[r["overfitting"] for r in result["rows"]])
    t.add_row(
        "training time (s)",
        *[f"{r['train_seconds']:.1f}" if r.get("train_seconds") else "-" for r in result["rows"]],
    )
    console.print(t)
    console.print(f"comparison: [bold]{result['html']}[/bold]")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare",
        help="put runs side by side: config differences, metrics, curves",
        description="Compare run folders; writes NAME.html, NAME.md and NAME.json into --out.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=".", help="folder for the comparison files (default: the current folder)")
    p.add_argument("--name", default="compare", help="file name stem (default: compare)")
    p.set_defaults(func=cmd_compare)
