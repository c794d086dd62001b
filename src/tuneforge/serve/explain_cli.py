"""``tuneforge explain`` and ``tuneforge predict --explain``: integrated-gradients explanations of a run's model.

tuneforge predict RUN "a gripping film" --explain          # the label, then each word's contribution
tuneforge explain RUN --data rows.jsonl --out expl.jsonl   # one JSON object per row
tuneforge explain RUN --prompt "Name a fruit." --response "An apple."   # a language model
"""

from __future__ import annotations

import json
import sys

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console


def print_explanations(explanations: list[dict], as_json: bool = False, out=None) -> None:
    """A table per explanation (or one JSON object per line) on ``out`` (standard output)."""
    from tuneforge.eval.explain import format_explanation

    out = out or sys.stdout
    for i, e in enumerate(explanations):
        if as_json:
            out.write(json.dumps(e) + "\n")
            continue
        what = e.get("text") or f"{e['prompt']!r} → {e['response']!r}"
        out.write(("\n" if i else "") + f"{what}\n{format_explanation(e)}\n")


def rows_to_explain(path: str, kind: str) -> dict:
    """Run.explain's arguments from a data file: classifier rows need ``text`` (a ``label`` is explained instead of
    the prediction); language-model rows are prompt + response (or completion / chosen), or messages."""
    from tuneforge.data.formats import to_examples
    from tuneforge.data.io import read_table

    table = read_table(path)
    if not table.rows:
        raise TuneforgeError(f"{path}: no rows to explain.")
    if kind == "classifier":
        if "text" not in table.columns:
            raise TuneforgeError(f"{path}: rows need a 'text' field (columns: {', '.join(table.columns)}).")
        return {
            "texts": [str(r["text"]) for r in table.rows],
            "labels": [None if r.get("label") is None else str(r["label"]) for r in table.rows],
        }
    prompts, responses = [], []
    for i, row in enumerate(table.rows):
        answer = row.get("response") or row.get("completion") or row.get("chosen")
        if isinstance(row.get("prompt"), str) and isinstance(answer, str):
            prompts.append(row["prompt"])
            responses.append(answer)
            continue
        [ex], _ = to_examples(type(table)(table.path, [row], [table.lines[i]]))
        turns = ex.messages or []
        last = max((j for j, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            raise TuneforgeError(
                f"{table.where(i)}: no answer to explain: give prompt + response (or completion), or messages "
                f"that end with an assistant turn."
            )
        prompts.append(turns[:last])
        responses.append(turns[last]["content"])
    return {"prompts": prompts, "responses": responses}


def cmd_explain(args) -> None:
    from tuneforge.run import Run

    run = Run(args.run_dir)
    kind = run.task_class.kind
    if args.data:
        given = rows_to_explain(args.data, kind)
    elif kind == "classifier":
        if not args.texts:
            raise TuneforgeError('explain: give texts (tuneforge explain RUN "some text") or --data FILE.')
        given = {"texts": list(args.texts)}
    else:
        if not args.prompt or not args.response:
            raise TuneforgeError(
                'explain: give --prompt "..." --response "..." (or --data FILE) for a language model.'
            )
        given = {"prompts": [args.prompt], "responses": [args.response]}
    explanations = run.explain(**given, n_steps=args.steps)
    if args.out:
        from tuneforge.data.io import write_jsonl

        write_jsonl(args.out, explanations)
        worst = max((abs(e["delta"]) for e in explanations), default=0.0)
        console.print(
            f"wrote {len(explanations)} explanations to [bold]{args.out}[/bold] (largest |delta| {worst:.2g})"
        )
    else:
        print_explanations(explanations, as_json=args.json or bool(args.data))


def add_explain_command(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="which words moved a run's model (integrated gradients on the input embeddings; Captum)",
    )
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="classifier: texts to explain")
    p.add_argument("--data", help="a JSONL/CSV file of rows to explain (text[, label]; or prompt + response)")
    p.add_argument("--out", help="write the explanations here as JSONL (default: standard output)")
    p.add_argument("--prompt", help="language model: the prompt (one user turn)")
    p.add_argument("--response", help="language model: the answer whose log-probability is explained")
    p.add_argument(
        "--steps", type=int, default=50, help="integration steps (more: a smaller convergence delta)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per explanation instead of tables")
    p.set_defaults(func=cmd_explain)
