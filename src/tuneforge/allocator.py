"""The C allocator a ``tuneforge`` command runs on: jemalloc where it is installed.

PyTorch's CPU tensors come from ``malloc``. glibc's allocator keeps the blocks a training step frees and, as
batches of new shapes arrive, its heap fragments: measured on a MiniLM LoRA run, 1.9 GB resident for 1.0 GB of
live tensors, still creeping up after 90 steps. jemalloc (size classes, freed pages returned after a short
decay) holds close to the live memory at the same speed, as PyTorch's CPU performance guide recommends.

The ``tuneforge`` command restarts itself once under jemalloc (``LD_PRELOAD``) before it imports anything heavy,
when the library is installed (Debian/Ubuntu: ``apt install libjemalloc2``) and ``TUNEFORGE_ALLOCATOR`` is
``auto`` (the default). ``TUNEFORGE_ALLOCATOR=system`` keeps the C library's malloc; ``jemalloc`` requires it.
A Python program that calls ``tuneforge.train`` itself chooses its own allocator: start it with
``LD_PRELOAD=$(python -c "import tuneforge.allocator as a; print(a.find_jemalloc())")``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "TUNEFORGE_ALLOCATOR"
CHOICES = ("auto", "jemalloc", "system")
# jemalloc's settings unless the user set MALLOC_CONF: a background thread returns freed pages after 1 s of
# disuse (the default 10 s lets a phase's garbage pile up under the next phase)
MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
SEARCH = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)


def find_jemalloc() -> str | None:
    """Path of an installed jemalloc shared library, or None."""
    if not sys.platform.startswith("linux"):
        return None
    for folder in SEARCH:
        path = Path(folder) / "libjemalloc.so.2"
        if path.exists():
            return str(path)
    return None


def active() -> str:
    """The allocator this process runs on: ``jemalloc`` (mapped into it) or ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise SystemExit(f"error: {ENV}={value!r}: use one of {', '.join(CHOICES)}.")
    return value


def relaunch_command(argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The command line and environment that restart this command under jemalloc, or None to run as is
    (already under it, ``system`` chosen, or not installed with ``auto``)."""
    want = choice()
    if want == "system" or active() == "jemalloc":
        return None
    path = find_jemalloc()
    if path is None:
        if want == "jemalloc":
            raise SystemExit(
                f"error: {ENV}=jemalloc but no libjemalloc.so.2 was found in {', '.join(SEARCH)}; install it "
                "(Debian/Ubuntu: apt install libjemalloc2) or unset the variable."
            )
        return None
    env = dict(os.environ)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{path}:{preload}" if preload else path
    env.setdefault("MALLOC_CONF", MALLOC_CONF)
    env[ENV] = "jemalloc"  # the restarted process must find it mapped, or stop (never a loop)
    return [sys.executable, "-m", "tuneforge.cli", *argv], env


def relaunch(argv: list[str]) -> None:
    """Replace this process with the same command under jemalloc when ``relaunch_command`` says so."""
    command = relaunch_command(argv)
    if command is None:
        return
    args, env = command
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)
