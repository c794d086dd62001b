"""Command-line verbs for language-model runs: chat, generate, export."""

from __future__ import annotations

import json

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console, text_lines


def _check_flags(args) -> None:
    """--max-new-tokens and --temperature, checked before a model is loaded."""
    from tuneforge.run import check_generation

    if args.max_new_tokens is not None or args.temperature is not None:
        check_generation(
            1 if args.max_new_tokens is None else args.max_new_tokens,
            0.0 if args.temperature is None else args.temperature,
            flags=True,
        )


def _run(run_dir: str):
    from tuneforge.run import Run
    from tuneforge.tasks import TASKS, get_task

    run = Run(run_dir)
    if not run.task_class.generates():
        lm = [name for name in TASKS if get_task(name).generates()]
        raise TuneforgeError(
            f"{run_dir}: a '{run.config.task}' run has no language model to talk to "
            f"(chat/generate need a run of task {', '.join(lm)})."
        )
    return run


def cmd_chat(args) -> None:
    from tuneforge.serve.chat import chat
    from tuneforge.tasks.lm import reference_model

    _check_flags(args)
    run = _run(args.run_dir)
    if getattr(run.task_class, "generate_for_run", None) is not None:  # seq2seq: one text in, one text out
        raise TuneforgeError(
            f"{args.run_dir}: a '{run.config.task}' run turns one text into another and holds no conversation: "
            f'use `tuneforge generate {args.run_dir} --prompt "..."` (or `tuneforge predict`).'
        )
    s = run.config.sft
    model, tok = run.load_model(), run.load_tokenizer()
    kw = dict(
        max_new_tokens=args.max_new_tokens or max(256, s.max_new_tokens),
        temperature=s.temperature if args.temperature is None else args.temperature,
        system_prompt=args.system if args.system is not None else s.system_prompt,
    )
    console.print(f"chatting with the {'base' if args.base else 'tuned'} model of [bold]{run.path}[/bold]")
    if args.base:
        with reference_model(model, run.config) as base:
            chat(base, tok, **kw)
    else:
        chat(model, tok, **kw)


def cmd_generate(args) -> None:
    _check_flags(args)
    run = _run(args.run_dir)
    prompts = list(args.prompt or [])
    if args.file:
        prompts += text_lines(args.file, "prompt")
    if not prompts:
        raise TuneforgeError(
            'generate: give --prompt "..." (repeatable) or --file FILE with one prompt per line.'
        )
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    tuned = run.generate(prompts, **kw)
    base = run.generate(prompts, base=True, **kw) if args.base else [None] * len(prompts)
    for p, t, b in zip(prompts, tuned, base):
        if args.json:
            print(json.dumps({"prompt": p, "tuned": t, **({"base": b} if args.base else {})}))
        elif args.base:
            console.print(
                f"[bold]prompt:[/bold] {p}\n[bold]base:[/bold]   {b}\n[bold]tuned:[/bold]  {t}\n",
                highlight=False,
            )
        else:
            print(t)


def cmd_export(args) -> None:
    from tuneforge.run import Run
    from tuneforge.serve.export import export

    if args.out.endswith(".gguf"):
        from tuneforge.serve.gguf import export_gguf

        out = export_gguf(args.run_dir, args.out, quant=args.quant or "f16", overwrite=args.overwrite)
        console.print(
            f"exported a merged {args.quant or 'f16'} GGUF file to [bold]{out}[/bold] (llama.cpp, Ollama)"
        )
        return
    if args.quant:
        raise TuneforgeError("export: --quant applies to GGUF files; give an OUT ending in .gguf.")
    out = export(args.run_dir, args.out, merge=args.merge, overwrite=args.overwrite)
    adapter = Run(args.run_dir).is_adapter
    if args.merge and adapter and (out / "base").is_dir():  # houlsby/pfeiffer: see methods/bottleneck.py
        kind = (
            "PEFT adapter folder with its base model in base/ "
            "(a houlsby/pfeiffer adapter is non-linear: it cannot be merged)"
        )
    elif args.merge and adapter:
        kind = "merged transformers folder"
    elif args.merge:
        kind = "model folder (a full fine-tune has no adapter: --merge had nothing to fold in)"
    else:
        kind = "PEFT adapter folder" if adapter else "model folder (a standalone transformers model)"
    console.print(f"exported the {kind} to [bold]{out}[/bold]")


def add_serve_commands(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal with a run's tuned model (streamed)")
    p.add_argument("run_dir")
    p.add_argument("--base", action="store_true", help="chat with the base model instead, for comparison")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest answer in tokens (default 256)")
    p.add_argument(
        "--temperature", type=float, default=None, help="0 is greedy; default from the run's sft.temperature"
    )
    p.add_argument("--system", default=None, help="system message for the conversation")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="answer prompts with a run's tuned model (and the base, with --base)")
    p.add_argument("run_dir")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--file", help="a text file, one prompt per line (- for standard input)")
    p.add_argument("--base", action="store_true", help="also ask the base model, side by side")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "export",
        help="write a run's model as a standalone folder (--merge folds an adapter in) or one .gguf file",
    )
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument(
        "--merge", action="store_true", help="merge the LoRA/DoRA/IA3 adapter into the base weights"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--quant",
        choices=["f32", "f16", "q8_0"],
        default=None,
        help="with OUT.gguf: the weights' type in the GGUF file (default f16)",
    )
    p.set_defaults(func=cmd_export)
    from tuneforge.serve.service_cli import add_service_commands

    add_service_commands(sub)  # serve, worker, keys: the fine-tuning service
