"""CPU threads: how many cores this process may use, how many threads a run takes, and whether others are busy.

Torch starts one compute thread per core of the machine, whatever share of it the process really has.
Two trainings on the same cores then spin twice the threads the cores can run, and each slows far more
than 2x (issue 21: one SFT run fell from ~480 to ~11-18 tokens/s beside two others). So a run takes the
cores it may use (CPU affinity, then the cgroup CPU quota of a container), divides them among the
processes it starts on this machine (``--nproc``), and warns at the start when other processes already
keep the cores busy.

    available_cores()            cores this process may use: affinity and cgroup quota, at least 1
    threads_for(setting, n)      training.threads (auto or a number) -> threads per process
    apply_threads(n)             torch's thread pools and OMP/MKL_NUM_THREADS for child processes
    machine_busy_warning(n)      a warning when other processes use at least half the cores, else None
    launcher_env(nproc)          environment for torchrun's children (each gets its share of the cores)
    release_openmp_workers()     free this thread's idle OpenMP workers (before another thread computes)
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from tuneforge.errors import ConfigError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
SELF_STAT = Path("/proc/self/stat")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MARKER = "TUNEFORGE_THREADS"  # set beside OMP_NUM_THREADS when tuneforge, not the user, chose the value
BUSY_SHARE = 0.5  # warn when other processes use at least this share of the cores


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(root: Path, relative: str) -> list[Path]:
    """``root/relative`` and each folder above it up to ``root``: a quota on any of them applies."""
    relative = relative.strip().lstrip("/")
    dirs, parts = [], Path(relative).parts if relative else ()
    for i in range(len(parts), -1, -1):
        dirs.append(root.joinpath(*parts[:i]))
    return dirs


def _quota_v2(folder: Path) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of -1 means no limit."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is none.

    Reads cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in the ``cpu``
    controller's folder), in this process's own cgroup and every folder above it; the smallest quota wins.
    Inside a container the cgroup is usually mounted at the root, which is always read.
    """
    v2_path, v1_path = "", ""
    for line in (_read(self_cgroup) or "").splitlines():  # "ID:CONTROLLERS:PATH"
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "cpu" in parts[1].split(","):
            v1_path = parts[2]
    limits = [_quota_v2(d) for d in _cgroup_dirs(root, v2_path)]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name).is_dir():
            limits += [_quota_v1(d) for d in _cgroup_dirs(root / name, v1_path)]
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (``sched_getaffinity``; all of them where that is missing)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cores(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup CPU quota (rounded up), at least 1."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit(root, self_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def threads_for(
    setting: int | str,
    local_processes: int = 1,
    cores: int | None = None,
    environ: dict[str, str] | None = None,
) -> int:
    """Compute threads for each process of a run from ``training.threads``.

    ``auto``: the cores this process may use (``available_cores``) divided among the ``local_processes``
    the run starts on this machine, at least 1; an OMP_NUM_THREADS the user exported is kept (torch's own
    rule), unless it is the 1 that torchrun puts there by default. A number is used as given, with a
    warning when it is above the available cores (the threads would take turns on the cores).
    """
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        omp = environ.get("OMP_NUM_THREADS")
        chosen = _positive_int(omp)
        by_torchrun = "LOCAL_WORLD_SIZE" in environ and omp == "1"
        if chosen is not None and omp != environ.get(MARKER) and not by_torchrun:
            return chosen
        return max(1, cores // max(1, local_processes))
    n = None
    if isinstance(setting, int) and not isinstance(setting, bool):
        n = setting if setting >= 1 else None
    elif isinstance(setting, str) and setting.strip().isdigit():
        n = _positive_int(setting)
    if n is None:
        raise ConfigError(
            f"training.threads: expected auto or a whole number of threads >= 1, got {setting!r}. "
            "Write training.threads=auto (the cores this process may use) or e.g. training.threads=4."
        )
    if n * max(1, local_processes) > cores:
        log.warning(
            "training.threads=%d with %d process(es) asks for %d threads, but this process may use %d cores: "
            "the threads will take turns and training will be slower; training.threads=auto uses %d",
            n,
            local_processes,
            n * local_processes,
            cores,
            max(1, cores // max(1, local_processes)),
        )
    return n


def apply_threads(n: int) -> None:
    """Use ``n`` compute threads in torch, and export OMP/MKL_NUM_THREADS so child processes do the same.

    Torch's inter-op pool can only be sized before its first parallel work; later calls leave it as it is.
    """
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already started (an earlier run in this process): the setting is fixed
        pass
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    os.environ[MARKER] = str(n)


def _cpu_ticks(proc_stat: Path, cpus: set[int] | None) -> tuple[int, int]:
    """(busy, total) clock ticks summed over the ``cpuN`` lines of ``/proc/stat`` (all CPUs when None)."""
    busy = total = 0
    for line in (_read(proc_stat) or "").splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            index, values = int(name[3:]), [int(x) for x in fields[:8]]
        except ValueError:
            continue
        if cpus is not None and index not in cpus:
            continue
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy += user + nice + system + irq + softirq + steal  # steal: another VM had the core
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return busy, total


def _own_ticks(self_stat: Path) -> int:
    """CPU ticks this process has used (user + system, all its threads) from ``/proc/self/stat``."""
    text = _read(self_stat) or ""
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)": fields 3.. of proc(5)
    try:
        return int(fields[11]) + int(fields[12])  # utime, stime
    except (IndexError, ValueError):
        return 0


def others_busy(
    before: tuple[int, int], after: tuple[int, int], own_before: int, own_after: int, cpus: int
) -> float:
    """Cores' worth of CPU that other processes used between two samples of (busy, total) ticks over ``cpus``
    CPUs, less this process's own ticks."""
    elapsed = (after[1] - before[1]) / max(1, cpus)  # ticks per CPU in the interval
    if elapsed <= 0:
        return 0.0
    used = (after[0] - before[0]) - (own_after - own_before)
    return min(float(cpus), max(0.0, used / elapsed))


def busy_cores(
    interval: float = 0.2, proc_stat: Path = PROC_STAT, self_stat: Path = SELF_STAT
) -> float | None:
    """Cores' worth of CPU used by other processes on the CPUs this process may run on, sampled over
    ``interval`` seconds from ``/proc/stat``; elsewhere the 1-minute load average less this process's one
    runnable thread; None when neither can be read."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    before, own_before = _cpu_ticks(proc_stat, cpus), _own_ticks(self_stat)
    if before[1] > 0:
        time.sleep(interval)
        after, own_after = _cpu_ticks(proc_stat, cpus), _own_ticks(self_stat)
        return others_busy(before, after, own_before, own_after, len(cpus) if cpus else os.cpu_count() or 1)
    try:
        return max(0.0, os.getloadavg()[0] - 1.0)
    except (AttributeError, OSError):
        return None


def machine_busy_warning(n_threads: int, busy: float | None = None, cores: int | None = None) -> str | None:
    """A warning to print at the start of training, or None.

    Warns when other processes use at least half the cores this process may use and its ``n_threads`` do
    not fit in the cores left free (a run already set to share them is not warned). ``busy`` (cores' worth
    used by others) and ``cores`` are measured when not given.
    """
    busy = busy_cores() if busy is None else busy
    cores = available_cores() if cores is None else cores
    free = max(1, math.floor(cores - (busy or 0.0) + 0.5))
    if busy is None or busy < BUSY_SHARE * cores or n_threads <= free:
        return None
    return (
        f"this machine is busy: about {busy:.1f} of {cores} cores are in use by other processes; training "
        f"with {n_threads} threads will be slower (two heavy runs on the same cores slow each other far more "
        f"than 2x). Set training.threads={free} to share the cores, or wait."
    )


def launcher_env(
    nproc: int, cores: int | None = None, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """Variables to add to torchrun's environment so each of its ``nproc`` children gets its share of the
    cores (torchrun's default is one thread each). An OMP_NUM_THREADS the user exported is kept."""
    environ = os.environ if environ is None else environ
    if _positive_int(environ.get("OMP_NUM_THREADS")) and environ.get("OMP_NUM_THREADS") != environ.get(
        MARKER
    ):
        return {}
    cores = available_cores() if cores is None else cores
    n = str(max(1, cores // max(1, nproc)))
    return {**{var: n for var in THREAD_VARS}, MARKER: n}


# ---- trainings that share the machine's cores (training.threads: auto)

SHARED_DIR = Path(os.environ.get("TUNEFORGE_SHARE_DIR", "/tmp/tuneforge-trainings"))
REBALANCE_SECONDS = 2.0  # how often a training looks again at who shares the cores


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class CoreShare:
    """Trainings on this machine whose ``training.threads`` is auto share its cores.

    Each training process registers (a file named by its pid in ``SHARED_DIR``, removed when it ends) and
    takes ``cores // live trainings`` threads, and looks again every ``REBALANCE_SECONDS`` while it trains:
    two runs started together split the cores, and the one left alone takes them all back. A process that
    died without cleaning up (kill -9) is not counted (its pid is gone).
    """

    def __init__(
        self, cores: int | None = None, folder: Path | None = None, every: float = REBALANCE_SECONDS
    ):
        self.cores = available_cores() if cores is None else cores
        self.folder = folder or SHARED_DIR
        self.file = self.folder / str(os.getpid())
        self.every, self._checked, self.threads = every, 0.0, None

    def __enter__(self) -> CoreShare:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self.folder.stat().st_uid == os.getuid():
                self.folder.chmod(
                    0o1777
                )  # every user's trainings register here (sticky: each removes its own)
            self.file.write_text(str(os.getpid()))
        except OSError as e:  # nowhere to register: this run cannot see the others, but trains
            log.warning(
                "cannot register in %s (%s): threads will not adapt to other trainings", self.folder, e
            )
            self.file = None
        global _CURRENT
        _CURRENT = self
        return self

    def __exit__(self, *exc) -> None:
        global _CURRENT
        _CURRENT = None
        if self.file is not None:
            self.file.unlink(missing_ok=True)

    def live(self) -> int:
        """Training processes registered and alive now (this one included)."""
        count = 0
        for entry in self.folder.iterdir() if self.folder.is_dir() else []:
            pid = _positive_int(entry.name)
            if pid is None:
                continue
            if _alive(pid):
                count += 1
            else:
                entry.unlink(missing_ok=True)
        # the ranks of this run count from the start, even before each has registered
        local = _positive_int(os.environ.get("LOCAL_WORLD_SIZE")) or 1
        return max(local, count if self.file is not None else 1)

    def share(self) -> int:
        return max(1, self.cores // self.live())

    def rebalance(self, force: bool = False) -> str | None:
        """Apply this training's share of the cores when it changed; returns a line to log, else None."""
        now = time.monotonic()
        if not force and now - self._checked < self.every:
            return None
        self._checked = now
        n = self.share()
        if n == self.threads:
            return None
        old, self.threads = self.threads, n
        apply_threads(n)
        if old is None:
            return None
        why = "another training started on these cores" if n < old else "the cores are free again"
        return f"threads: {old} -> {n} ({why})"


_CURRENT: CoreShare | None = None


def rebalance(force: bool = False) -> str | None:
    """While training (before the first step, then between micro-batches at most every
    ``REBALANCE_SECONDS``): follow the cores' share when this process is in a ``CoreShare``."""
    return _CURRENT.rebalance(force) if _CURRENT is not None else None


def release_openmp_workers() -> bool:
    """Free the OpenMP worker threads this thread keeps (``omp_pause_resource_all``, hard), so that another
    thread's parallel regions run at full speed; True when the runtime did it.

    Every thread that ran a parallel torch op keeps its own idle workers. GNU OpenMP counts all of them, and
    once there are more than cores it stops letting workers spin between regions: each region then waits for
    a sleeping worker to wake. A thread that loaded a model and hands decoding to a scheduler thread leaves
    that thread ~3x slower per small matmul (measured here: 140 against 40 us, a 16-row decode step 70
    against 48 ms) unless it gives its workers back. The next parallel op in this thread starts new ones.
    """
    import ctypes
    import glob

    try:
        import torch

        libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
        lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL(None)
        pause = lib.omp_pause_resource_all
    except (ImportError, OSError, AttributeError):
        return False  # no OpenMP runtime exposing it (another threading backend): nothing to release
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return pause(2) == 0  # omp_pause_hard
