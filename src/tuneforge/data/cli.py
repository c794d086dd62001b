"""``tuneforge data audit`` and ``tuneforge data prepare``: parse arguments, call the library, print.

tuneforge data audit FILE [--against OTHER ...] [--model NAME] [--max-length N] [--out DIR]
tuneforge data prepare FILE --out DIR [--against TEST ...] [--validation-fraction F] [--test-fraction F]
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from tuneforge.errors import DataError


def _require(module: str, package: str, needed_for: str) -> Any:
    """Import ``module`` or stop with what is missing and how to install it (never skip a check silently)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name.split(".")[0] if e.name and not e.name.startswith("tuneforge") else package
        raise DataError(
            f"{needed_for} needs the package '{missing}', which cannot be imported ({e}). Install it: "
            f"`pip install {missing}` (or `make setup`)."
        ) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", help="a data file (.jsonl/.json/.csv/.tsv/.parquet), a bundled alias, or alias:split"
    )
    p.add_argument(
        "--against",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="validation/test files (or alias:split) to check for leakage",
    )
    p.add_argument("--format", default="auto", help="row format (default: detected)")
    p.add_argument("--text-column", default="text", help="column with the text (classification)")
    p.add_argument("--label-column", default="label", help="column with the label (classification)")
    p.add_argument(
        "--near-dup-threshold",
        type=float,
        default=0.8,
        metavar="T",
        help="word-set Jaccard similarity from which two rows are near-duplicates (default 0.8)",
    )


def add_data_commands(sub: Any) -> None:
    """Add the ``data`` command group (``audit``, ``prepare``) to the main parser's subcommands."""
    group = sub.add_parser(
        "data", help="audit and prepare data files", description="Audit and prepare data files."
    )
    actions = group.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = actions.add_parser(
        "audit",
        help="report what is wrong with a data file and what to do about it",
        description="Report problems (malformed rows, duplicates, near-duplicates, conflicting "
        "labels, leakage, imbalance, token lengths) and write audit.json and audit.html.",
    )
    _common(p)
    p.add_argument(
        "--model", help="model whose tokenizer measures token lengths (bundled alias, folder, hub id)"
    )
    p.add_argument(
        "--max-length", type=int, help="the max_length to check truncation against (default 128 with --model)"
    )
    p.add_argument("--no-pii", action="store_true", help="skip the e-mail address and phone number checks")
    p.add_argument(
        "--out", default=".", help="folder for audit.json and audit.html (default: current folder)"
    )
    p.add_argument("--json", action="store_true", help="print audit.json to stdout instead of the report")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when the audit finds errors")
    p.set_defaults(func=cmd_audit)

    p = actions.add_parser(
        "prepare",
        help="clean, de-duplicate and split a data file (with a reason per dropped row)",
        description="Write train/validation/test JSONL, rejects.jsonl (every dropped row and why) "
        "and prepare.json. The same input and settings give byte-identical files.",
    )
    _common(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--validation-fraction", type=float, default=0.1, help="fraction held out for validation (0.1)"
    )
    p.add_argument("--test-fraction", type=float, default=0.1, help="fraction held out for test (0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split (42)")
    p.add_argument(
        "--keep-near-duplicates",
        action="store_true",
        help="keep near-duplicates (each group stays within one split) instead of dropping them",
    )
    p.add_argument(
        "--on-conflict",
        choices=("drop", "majority"),
        default="drop",
        help="duplicates with different labels: drop them all, or keep the majority label's rows",
    )
    p.set_defaults(func=cmd_prepare)


def cmd_audit(args: argparse.Namespace) -> None:
    audit_mod = _require("tuneforge.data.audit", "numpy", "`tuneforge data audit`")
    from tuneforge.utils import console

    tokenizer = model_config = None
    max_length = args.max_length
    if args.model:
        transformers = _require("transformers", "transformers", "`data audit --model` (token lengths)")
        from tuneforge.config import DataConfig
        from tuneforge.models.load import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(args.model)
        model_config = transformers.AutoConfig.from_pretrained(resolve_model(args.model))
        max_length = max_length or DataConfig().max_length
    report = audit_mod.audit(
        [args.file, *args.against],
        fmt=args.format,
        text_column=args.text_column,
        label_column=args.label_column,
        tokenizer=tokenizer,
        max_length=max_length,
        near_dup_threshold=args.near_dup_threshold,
        pii=not args.no_pii,
        model_config=model_config,
    )
    report.settings["model"] = args.model
    paths = audit_mod.write(report, args.out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        console.print(audit_mod.render(report))
        console.print(f"wrote {paths[0]} and {paths[1]}")
    if args.strict and report.errors:
        rows = sum(f.count for f in report.errors)
        console.print(
            f"data audit --strict: {len(report.errors)} error finding(s) covering {rows:,} rows "
            f"(listed in {paths[0]}); fix them or drop them with `tuneforge data prepare {args.file} --out DIR`.",
            highlight=False,
            markup=False,
        )
        raise SystemExit(1)


def cmd_prepare(args: argparse.Namespace) -> None:
    prepare_mod = _require("tuneforge.data.prepare", "numpy", "`tuneforge data prepare`")
    from tuneforge.utils import console

    result = prepare_mod.prepare(
        args.file,
        args.out,
        fmt=args.format,
        text_column=args.text_column,
        label_column=args.label_column,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        near_dup_threshold=args.near_dup_threshold,
        drop_near_duplicates=not args.keep_near_duplicates,
        on_conflict=args.on_conflict,
        against=args.against,
    )
    console.print(result.summary(), highlight=False)
    console.print(f"wrote {args.out}/train.jsonl, validation.jsonl, test.jsonl, rejects.jsonl, prepare.json")
