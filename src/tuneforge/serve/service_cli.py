"""Command-line verbs of the fine-tuning service: ``serve``, ``worker``, ``keys create|list|revoke``."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.utils import console

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _store(args):
    from tuneforge.serve.app import default_home, require_extra
    from tuneforge.serve.store import Store, database_url

    require_extra()
    home = Path(args.home).expanduser() if args.home else default_home()
    home.mkdir(parents=True, exist_ok=True)
    return Store(database_url(args.database, home)), home


def cmd_serve(args) -> None:
    from tuneforge.serve.app import create_app, require_extra

    require_extra()
    import uvicorn

    if args.jobs < 1:
        raise TuneforgeError(f"--jobs must be at least 1, got {args.jobs}.")
    if args.prompt_cache_mb < 0:
        raise TuneforgeError(f"--prompt-cache-mb must be 0 (off) or more, got {args.prompt_cache_mb}.")
    for m in args.model or []:
        if not (Path(m) / "config.yaml").exists():
            raise TuneforgeError(
                f"--model {m}: not a run folder (no config.yaml). Give a folder `tuneforge train` wrote."
            )
    app = create_app(
        args.home, args.database, runs=args.runs or [], models=args.model or [], worker=not args.no_worker,
        jobs=args.jobs, max_upload_mb=args.max_upload_mb, lease_seconds=args.lease_seconds,
        engine=args.engine, max_batch=args.max_batch, dtype=args.dtype, prompt_cache_mb=args.prompt_cache_mb,
    )  # fmt: skip
    ctx = app.state.ctx
    keys = ctx.store.has_keys()
    if args.host not in LOCAL_HOSTS and not keys:
        raise TuneforgeError(
            f"--host {args.host} would open the service to other machines, and it has no API keys. Create one first: "
            f"tuneforge keys create --project NAME" + (f" --home {args.home}" if args.home else "")
            + (" --database ..." if args.database else "") + "."
        )  # fmt: skip
    console.print(
        f"[bold]tuneforge serve[/bold] on http://{args.host}:{args.port}/v1 · home {ctx.home} · database "
        f"{'PostgreSQL' if args.database and args.database.startswith('postgres') else 'SQLite'} · "
        + ("no worker here (run `tuneforge worker`)" if args.no_worker else f"worker: {args.jobs} job(s) at a time"),
        highlight=False,
    )  # fmt: skip
    if not keys:
        console.print(
            "no API keys yet: open to this machine only, as project 'default'. `tuneforge keys create --project "
            "NAME` turns keys on.",
            highlight=False,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def cmd_worker(args) -> None:
    from tuneforge.serve.worker import LEASE_SECONDS, Worker

    if args.jobs < 1:
        raise TuneforgeError(f"--jobs must be at least 1, got {args.jobs}.")
    store, home = _store(args)
    for sub in ("files", "runs", "jobs"):
        (home / sub).mkdir(exist_ok=True)
    worker = Worker(store, home, jobs=args.jobs, lease=args.lease_seconds or LEASE_SECONDS)
    console.print(f"[bold]tuneforge worker[/bold] {worker.id} · home {home} · {args.jobs} job(s) at a time",
                  highlight=False)  # fmt: skip

    def _stop(signum, frame):
        console.print("stopping: running jobs save a checkpoint and go back to the queue ...")
        worker.stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    worker.run()


def cmd_keys(args) -> None:
    from tuneforge.serve.auth import create_key

    store, _ = _store(args)
    if args.keys_command == "create":
        key, row = create_key(store, args.project)
        console.print(f"API key for project [bold]{row['project']}[/bold] (shown once; only its hash is stored):",
                      highlight=False)  # fmt: skip
        print(key)
    elif args.keys_command == "list":
        rows = store.keys()
        if not rows:
            console.print("no API keys: create one with `tuneforge keys create --project NAME`.")
        import time

        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"]))
            state = "revoked" if r["revoked_at"] else "active"
            print(f"{r['id']}\t{r['prefix']}...\t{r['project']}\t{when}\t{state}")
    else:
        row = store.revoke_key(args.key)
        if row is None:
            raise TuneforgeError(
                f"no key {args.key!r}: give a key id or the prefix `tuneforge keys list` shows."
            )
        console.print(
            f"revoked {row['id']} ({row['prefix']}...) of project {row['project']}", highlight=False
        )


def _common(p) -> None:
    p.add_argument("--home", default=None, help="state folder (default $TUNEFORGE_HOME or ~/.tuneforge)")
    p.add_argument("--database", default=None, help="postgresql://user@host/db (default: SQLite in the home)")


def add_service_commands(sub) -> None:
    p = sub.add_parser(
        "serve", help="the fine-tuning service: OpenAI's files, jobs, models and chat API, and a worker"
    )
    _common(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (another than 127.0.0.1 needs API keys)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--jobs", type=int, default=1, help="jobs trained at once (default 1: each gets every core)"
    )
    p.add_argument(
        "--no-worker", action="store_true", help="API only; `tuneforge worker` processes train the jobs"
    )
    p.add_argument(
        "--runs", action="append", help="another folder of runs to show in the dashboard (repeatable)"
    )
    p.add_argument(
        "--model", action="append", help="a run folder to serve as a model by its name (repeatable)"
    )
    p.add_argument(
        "--engine",
        choices=["tuneforge", "vllm"],
        default="tuneforge",
        help="generation engine for chat/completions (vllm: GPU machines with vLLM installed)",
    )
    p.add_argument("--max-batch", type=int, default=32, help="sequences the engine decodes together")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="served weights' dtype (default: each run's own; bfloat16 decodes ~1.7x faster on CPUs with AMX)",
    )
    p.add_argument(
        "--prompt-cache-mb",
        type=float,
        default=256.0,
        help="MiB of recent prompts' keys and values each engine keeps: a prompt that starts like one of them "
        "(a shared system prompt, earlier turns) is prefilled from where they part (0: off)",
    )
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="largest upload accepted, in MiB")
    p.add_argument("--lease-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (info shows every request)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "worker", help="train the service's queued jobs (more workers: more machines on one queue)"
    )
    _common(p)
    p.add_argument(
        "--jobs", type=int, default=1, help="jobs trained at once (default 1: each gets every core)"
    )
    p.add_argument("--lease-seconds", type=float, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="API keys of the service: create, list, revoke")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ks.add_parser("create", help="create a key for a project and print it (once)")
    k.add_argument("--project", required=True, help="the project the key acts for (its files, jobs, models)")
    _common(k)
    k = ks.add_parser("list", help="list keys (id, prefix, project, created, state)")
    _common(k)
    k = ks.add_parser("revoke", help="revoke a key by its id or prefix")
    k.add_argument("key")
    _common(k)
    p.set_defaults(func=cmd_keys)
