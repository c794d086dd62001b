"""Resumable checkpoints: written atomically, verified by checksum, loaded without running pickled code.

A checkpoint is a folder ``checkpoints/step-N``::

    weights.safetensors   the trainable weights (and buffers)
    state.pt              optimizer and scheduler states: tensors and plain values only
    rng-<rank>.pt         the RNG states of every training process (python, numpy, torch, cuda)
    trainer_state.json    step, data position, early stopping, best metric ...
    manifest.json         format version, and every file's size and sha256

Under ``training.distributed: fsdp`` (``save_sharded_checkpoint``) ``weights.safetensors`` is replaced by
``shards/``: ``torch.distributed.checkpoint``'s folder, where every process writes its own shard of the weights
and of the optimizer state (``state.pt`` then holds the scheduler); the manifest says ``"sharded": true``.
A sharded checkpoint resumes on any number of processes.

It is written as ``.tmp-step-N``: every file and the folder are fsync'ed, the folder is renamed into
place and the parent fsync'ed, and only then does ``checkpoints/latest`` move (also atomically). A crash
at any moment leaves the previous checkpoint whole. On resume :func:`find_resumable` takes the newest
checkpoint whose manifest matches its files (whatever ``latest`` says) and warns about the damaged ones
it passes over; :func:`load_checkpoint` verifies again and loads every file with
``torch.load(weights_only=True)``, so a crafted ``state.pt`` is refused, never executed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneforge.errors import TuneforgeError
from tuneforge.train.runfolder import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

FORMAT = 1  # manifest.json "format": bump when the folder layout changes
MANIFEST = "manifest.json"
WEIGHTS, STATE, TRAINER_STATE = "weights.safetensors", "state.pt", "trainer_state.json"
SHARDS = "shards"  # torch.distributed.checkpoint's folder in a sharded checkpoint
SHARDS_METADATA = f"{SHARDS}/.metadata"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_RNG_FILE = re.compile(r"^rng-(\d+)\.pt$")


# --- small file-system helpers -------------------------------------------------------------------------


def _sha256_and_fsync(path: Path) -> str:
    """sha256 of a file just written (read back from the page cache), after fsync'ing it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# --- state that loads with weights_only=True -------------------------------------------------------------


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that may train (requires_grad now, or later for gradual unfreezing) and buffers."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _is_plain(obj: Any) -> bool:
    """True for what ``torch.load(weights_only=True)`` reads: tensors, numbers, strings, None, containers."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in obj.items())
    return False


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain values and tensors (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:
            log.warning(
                "checkpoint holds %d CUDA RNG states, this machine has %d GPUs: CUDA RNG not restored",
                len(states),
                torch.cuda.device_count(),
            )


def _scheduler_state(scheduler) -> dict[str, Any]:
    """The scheduler's state without what only pickle can store (LambdaLR keeps its lambdas' ``__dict__``:
    the loop rebuilds the lambdas, so non-plain entries are dropped)."""
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [fn if _is_plain(fn) else None for fn in state["lr_lambdas"]]
    dropped = [k for k, v in state.items() if not _is_plain(v)]
    for key in dropped:
        log.debug("scheduler state %r is not a plain value; not saved", key)
        del state[key]
    return state


# --- disk full ------------------------------------------------------------------------------------------

_FULL_TEXT = (
    "no space left",
    "disk quota exceeded",
    "unexpected pos",
    "file write failed",
    "os error 28",
    "storagefull",
    "code: 28",
)


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when torch or safetensors surface it as a RuntimeError ("unexpected pos ...")."""
    seen: BaseException | None = exc
    for _ in range(4):  # the exception and its causes
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if not isinstance(seen, KeyboardInterrupt) and any(t in str(seen).lower() for t in _FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _device_of(path: Path) -> str:
    """'DEVICE (mounted at MOUNT)' for the file system holding path, as well as /proc/mounts tells."""
    mount = Path(os.path.abspath(path))
    while not mount.exists() or not os.path.ismount(mount):
        if mount.parent == mount:
            break
        mount = mount.parent
    device = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1] == str(mount):
                device = parts[0]  # the last entry for a mount point is the one in effect
    except OSError:
        pass
    return f"{device} (mounted at {mount})" if device else str(mount)


def _disk_full_error(root: Path, step: int, needed: int) -> TuneforgeError:
    try:
        free = f"{shutil.disk_usage(root).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    last = _newest_intact(root)
    kept = (
        f"the last checkpoint {last.name} is intact (resume with --resume)"
        if last is not None
        else "no checkpoint was written yet"
    )
    return TuneforgeError(
        f"no space left on device {_device_of(root)} at {root / f'step-{step}'}; {kept}. "
        f"A checkpoint needs about {needed / 2**20:.0f} MiB ({free}): free space there, or set output.dir "
        f"to a larger disk (or training.keep_checkpoints lower)."
    )


# --- writing --------------------------------------------------------------------------------------------


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``step-N`` folder, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>`` atomically and point ``latest`` at it; returns the folder.

    ``weights``: the tensors to store (default: the whole ``model.state_dict()``). ``rng_states``: the RNG
    states of every process, indexed by rank (gathered by the caller; default: this process's as rank 0).
    ``keep``: checkpoints kept, the new one included (<= 0 keeps all). Call on the main process only.
    A full disk raises TuneforgeError saying so, with the partial folder removed.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # unfinished writes of a run that was killed while saving
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    tensors = weights if weights is not None else trainable_state(model)
    moments = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    needed = sum(t.numel() * t.element_size() for t in [*tensors.values(), *moments])  # bytes, roughly
    try:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": _scheduler_state(scheduler)}, tmp / STATE
        )
        _seal(tmp, final, step, rng_states, trainer_state)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and _is_disk_full(e):
            raise _disk_full_error(root, step, needed) from e
        raise
    _prune(root, step, keep)
    return final


def _seal(tmp: Path, final: Path, step: int, rng_states, trainer_state: dict, **manifest) -> None:
    """The end of every checkpoint save (plain or sharded), once its weights and optimizer files are in ``tmp``:
    the RNG states and trainer state, the manifest (size and SHA-256 of every file, each fsynced), then the
    folder moved into place atomically and ``latest`` pointed at it."""
    root = final.parent
    for rank, state in enumerate(rng_states if rng_states is not None else [rng_state()]):
        torch.save(state, tmp / f"rng-{rank}.pt")
    _write_text(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=1))
    files = {
        p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_and_fsync(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    _write_text(
        tmp / MANIFEST, json.dumps({"format": FORMAT, "step": step, **manifest, "files": files}, indent=1)
    )
    for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):  # shards/, deepest first
        fsync_dir(folder)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again: move the old one aside until the new one is in place
        old = root / f".tmp-old-step-{step}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name)


def _prune(root: Path, step: int, keep: int) -> None:
    """Delete old checkpoints beyond ``keep`` (the one just written always stays), and any of a later step:
    those belong to the future the run abandoned when it resumed from an earlier (valid) checkpoint."""
    intact_kept = 0
    for s, path in _step_dirs(root):
        if s > step:
            log.info("removing %s: the run resumed from an earlier checkpoint", path)
            shutil.rmtree(path, ignore_errors=True)
        elif s == step:
            intact_kept = 1
        elif keep <= 0:
            continue
        elif intact_kept < keep and _quick_problem(path) is None:
            intact_kept += 1
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- verifying and finding ------------------------------------------------------------------------------

_verified: dict[Path, tuple] = {}  # folder -> stat signature of its files when last verified in full


def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    file = path / MANIFEST
    if not file.exists():
        return None, f"no {MANIFEST} (its write did not finish, or an older tuneforge wrote it)"
    try:
        manifest = json.loads(file.read_text())
        files = manifest["files"]
        assert isinstance(files, dict) and all(isinstance(v["size"], int) for v in files.values())
    except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError) as e:
        return None, f"{MANIFEST} is damaged ({type(e).__name__})"
    if manifest.get("format") != FORMAT:
        return None, f"{MANIFEST} has format {manifest.get('format')!r}; this tuneforge reads format {FORMAT}"
    for name in (SHARDS_METADATA if manifest.get("sharded") else WEIGHTS, STATE, TRAINER_STATE):
        if name not in files:
            return None, f"{MANIFEST} does not list {name}"
    if not any(_RNG_FILE.match(n) for n in files):
        return None, f"{MANIFEST} lists no rng-<rank>.pt"
    return manifest, None


def _quick_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint by its manifest and file sizes (no checksums); None if nothing."""
    manifest, problem = _read_manifest(path)
    if problem:
        return problem
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{name} is {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
    return None


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with a checkpoint folder (missing manifest or file, size or sha256 mismatch, unreadable
    trainer_state.json), or None when it is intact."""
    path = Path(path)
    problem = _quick_problem(path)
    if problem:
        return problem
    manifest, _ = _read_manifest(path)
    names = sorted(manifest["files"]) + [MANIFEST]
    signature = tuple((n, (st := (path / n).stat()).st_size, st.st_mtime_ns, st.st_ino) for n in names)
    key = path.resolve()
    if _verified.get(key) == signature:
        return None
    for name, entry in manifest["files"].items():
        if _sha256(path / name) != entry.get("sha256"):
            return f"{name} does not match its sha256 in {MANIFEST} (its bytes changed after it was written)"
    try:
        trainer = json.loads((path / TRAINER_STATE).read_text())
        int(trainer["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{TRAINER_STATE} is not a trainer state ({type(e).__name__}: {e})"
    _verified[key] = signature
    return None


def _newest_intact(root: Path) -> Path | None:
    """The newest checkpoint that passes the cheap check (manifest and sizes); for messages."""
    return next((p for _, p in _step_dirs(root) if _quick_problem(p) is None), None)


@dataclass
class Resumable:
    """The checkpoint a run resumes from, and what was wrong with the newer ones passed over."""

    path: Path
    step: int
    warnings: list[str] = field(default_factory=list)


def _read_latest(root: Path) -> tuple[str | None, str | None]:
    """(the step folder ``latest`` names, or None; what is wrong with ``latest``, or None)."""
    pointer = root / "latest"
    if not pointer.exists():
        return None, f"{pointer} is missing"
    raw = pointer.read_bytes()
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"{pointer} holds binary bytes, not a checkpoint name"
    if not name:
        return None, f"{pointer} is empty"
    if not _STEP_DIR.match(name):
        return None, f"{pointer} holds {name[:40]!r}, not a checkpoint name like step-8"
    if not (root / name).is_dir():
        return name, f"{pointer} names {name}, which does not exist"
    return name, None


def find_resumable(run_dir: Path) -> Resumable | None:
    """The newest valid checkpoint of a run, whatever ``checkpoints/latest`` says.

    Returns None when the run has no checkpoint at all. Damaged newer checkpoints (and a broken ``latest``)
    are passed over with a warning each. Raises TuneforgeError when checkpoints exist but none is valid.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    warnings: list[str] = []
    _, latest_problem = _read_latest(root)
    dirs = _step_dirs(root)
    unfinished = sorted(p.name for p in root.glob(".tmp-step-*"))
    damaged: list[str] = []
    for step, path in dirs:
        problem = verify_checkpoint(path)
        if problem is None:
            if latest_problem:
                warnings.append(f"{latest_problem}; using the newest valid checkpoint {path.name}")
            if unfinished:
                warnings.append(
                    f"{root}/{', '.join(unfinished)}: a checkpoint write that did not finish (ignored)"
                )
            return Resumable(path, step, warnings)
        damaged.append(f"{path.name}: {problem}")
        warnings.append(f"checkpoint {path} is damaged ({problem}); falling back to the previous one")
    if not dirs and not (root / "latest").exists():
        return None  # nothing was ever saved (perhaps a write that did not finish)
    if not dirs:
        detail = f"no checkpoint folder is left in {root} ({latest_problem})"
    else:
        names = ", ".join(p.name for _, p in reversed(dirs))
        detail = f"checkpoints {names} in {root} are damaged ({'; '.join(reversed(damaged))})"
    raise TuneforgeError(
        f"{detail}; the run cannot resume. Start it again without --resume, or with output.overwrite=true."
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from (see :func:`find_resumable`); its warnings are logged."""
    found = find_resumable(run_dir)
    if found is None:
        return None
    for warning in found.warnings:
        log.warning("%s", warning)
    return found.path


# --- loading --------------------------------------------------------------------------------------------


def _load_plain(file: Path) -> Any:
    """torch.load with weights_only=True; a file that needs more (a pickled callable) is refused."""
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - every failure becomes a message naming the file
        text = str(e)
        objects = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln]  # a class or function to import
        if "Weights only load failed" in text and objects:
            raise TuneforgeError(
                f"{file}: holds Python objects other than tensors and plain values ({objects[0]}); "
                f"tuneforge does not unpickle them, since that can run code. This file was not written by "
                f"this tuneforge or was altered: delete {file.parent} and resume from an earlier checkpoint, "
                f"or start the run again."
            ) from None
        why = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln), text[:200])
        raise TuneforgeError(
            f"{file}: cannot be read ({type(e).__name__}: {why}); {_damaged_fix(file)}"
        ) from None


def _damaged_fix(file: Path) -> str:
    return f"the checkpoint is damaged: delete {file.parent} to resume from the previous one, or start again."


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, rank: int = 0, world_size: int | None = None
) -> dict[str, Any]:
    """Verify the checkpoint, then restore weights, optimizer, scheduler and this rank's RNG states; returns
    the trainer state. ``world_size``: the processes now; when it differs from the run's, rank 0's RNG
    state is used where this rank has none (with a warning). Every failure is a TuneforgeError."""
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem:
        raise TuneforgeError(
            f"checkpoint {path} is damaged ({problem}); delete it to resume from the previous one, "
            f"or start the run again."
        )
    _check_kind(path, sharded=False)
    try:
        weights = load_file(path / WEIGHTS)
    except Exception as e:  # noqa: BLE001
        raise TuneforgeError(
            f"{path / WEIGHTS}: not a readable safetensors file ({e}); {_damaged_fix(path / WEIGHTS)}"
        ) from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise TuneforgeError(
            f"{path / WEIGHTS}: has weights this model lacks ({', '.join(unexpected[:5])}); the run's model or "
            f"method changed since the checkpoint. Resume with the run's own config.yaml, or start again."
        )
    state = _load_plain(path / STATE)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise TuneforgeError(
            f"{path / STATE}: optimizer or scheduler state does not fit this run ({type(e).__name__}: {e}); "
            f"the trainable parameters changed since the checkpoint. Resume with the run's own config.yaml."
        ) from None
    ranks = sorted(int(m.group(1)) for p in path.iterdir() if (m := _RNG_FILE.match(p.name)))
    if world_size is not None and world_size != len(ranks):
        log.warning(
            "%s was written by %d processes, now %d: data order and random draws will differ from "
            "an uninterrupted run",
            path.name,
            len(ranks),
            world_size,
        )
    if rank not in ranks:
        log.warning("%s has no RNG state of rank %d; using rank 0's", path.name, rank)
        rank = 0
    try:
        set_rng_state(_load_plain(path / f"rng-{rank}.pt"))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        file = path / f"rng-{rank}.pt"
        raise TuneforgeError(
            f"{file}: not an RNG state ({type(e).__name__}: {e}); {_damaged_fix(file)}"
        ) from None
    return json.loads((path / TRAINER_STATE).read_text())


# --- sharded checkpoints (training.distributed: fsdp) ---------------------------------------------------


def _check_kind(path: Path, sharded: bool) -> None:
    """A sharded checkpoint resumes only a sharded run and a whole one only a DDP run: say which to set."""
    manifest, _ = _read_manifest(path)
    if manifest is not None and bool(manifest.get("sharded")) != sharded:
        written, wanted = ("fsdp", "ddp") if manifest.get("sharded") else ("ddp", "fsdp")
        raise TuneforgeError(
            f"checkpoint {path} was written by a training.distributed={written} run and this one shards as "
            f"{wanted}: resume with training.distributed={written}."
        )


def _agree(failure: str | None) -> str | None:
    """The first failure any process had (None when none): every process takes the same decision."""
    import torch.distributed as dist

    every: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(every, failure)
    return next((f for f in every if f), None)


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep: int = 2,
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``checkpoints/step-<step>`` of an FSDP run: every process writes its shard of the weights and the
    optimizer state into ``.tmp-step-N/shards`` (``torch.distributed.checkpoint``, fsync'ed), then rank 0
    writes the rest, checksums every file into the manifest and renames the folder into place, as
    :func:`save_checkpoint` does. Every process calls it; every process raises the same TuneforgeError when
    any one failed (a full disk on one node stops them all, none waits forever). The run folder must be on a
    file system every process sees."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from tuneforge.train.distributed import sharded_state

    main = dist.get_rank() == 0
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    state = sharded_state(model, optimizer)
    failure = None
    if main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-*"):  # unfinished writes of a run killed while saving
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
            tmp.mkdir()
        except OSError as e:
            failure = str(_disk_full_error(root, step, 0) if _is_disk_full(e) else e)
    failure = _agree(failure)
    if failure is None:
        try:
            dcp.save(state, checkpoint_id=tmp / SHARDS)  # every process its shard; rank 0 the metadata
        except Exception as e:  # noqa: BLE001 - DCP raises on every rank when one failed
            failure = str(_disk_full_error(root, step, 0)) if _is_disk_full(e) else f"{type(e).__name__}: {e}"
        failure = _agree(failure)
    if failure is None and main:
        try:
            torch.save({"optimizer": None, "scheduler": _scheduler_state(scheduler)}, tmp / STATE)
            _seal(tmp, final, step, rng_states, trainer_state, sharded=True, processes=dist.get_world_size())
            _prune(root, step, keep)
        except Exception as e:  # noqa: BLE001
            failure = str(_disk_full_error(root, step, 0)) if _is_disk_full(e) else f"{type(e).__name__}: {e}"
    failure = _agree(failure)
    if failure is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise TuneforgeError(failure if "no space left" in failure else f"checkpoint step-{step}: {failure}")
    return final


def load_sharded_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, rank: int = 0, world_size: int | None = None
) -> dict[str, Any]:
    """Verify a sharded checkpoint and restore this process's shards of the weights and optimizer state (any
    number of processes: torch.distributed.checkpoint reshards), the scheduler and this rank's RNG states;
    returns the trainer state. Every process calls it."""
    import torch.distributed.checkpoint as dcp

    from tuneforge.train.distributed import load_sharded_state, sharded_state

    path = Path(path)
    problem = verify_checkpoint(path)
    if problem:
        raise TuneforgeError(
            f"checkpoint {path} is damaged ({problem}); delete it to resume from the previous one, "
            f"or start the run again."
        )
    _check_kind(path, sharded=True)
    state = sharded_state(model, optimizer)  # the structure to read into, already sharded as this run is
    try:
        dcp.load(state, checkpoint_id=path / SHARDS)
        load_sharded_state(model, optimizer, state)
    except Exception as e:  # noqa: BLE001
        raise TuneforgeError(
            f"{path / SHARDS}: the sharded weights do not fit this run ({type(e).__name__}: {str(e)[:300]}); "
            f"the model or method changed since the checkpoint. Resume with the run's own config.yaml."
        ) from None
    plain = _load_plain(path / STATE)
    try:
        scheduler.load_state_dict(plain["scheduler"])
    except (KeyError, ValueError, TypeError) as e:
        raise TuneforgeError(
            f"{path / STATE}: not a scheduler state ({e}); {_damaged_fix(path / STATE)}"
        ) from None
    ranks = sorted(int(m.group(1)) for p in path.iterdir() if (m := _RNG_FILE.match(p.name)))
    if world_size is not None and world_size != len(ranks):
        log.warning(
            "%s was written by %d processes, now %d: data order will differ",
            path.name,
            len(ranks),
            world_size,
        )
    set_rng_state(_load_plain(path / f"rng-{rank if rank in ranks else 0}.pt"))
    return json.loads((path / TRAINER_STATE).read_text())
