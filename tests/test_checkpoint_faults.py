"""Checkpoints and the run folder under faults (issue 21, faults 2-7): damaged or missing files, a broken
``latest``, a crafted pickle, a full disk, a second writer, runs started in the same second, a torn
metrics line, SIGTERM. Tiny torch modules only: each test runs in well under a second."""

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.errors import TuneforgeError
from tuneforge.train import checkpoint as ckpt
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.runfolder import MetricsLog, RunLock, atomic_write_json, new_run_dir, read_metrics
from tuneforge.train.signals import GracefulStop


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 2))
    optimizer = build_optimizer([{"params": list(model.parameters())}], 1e-2)
    scheduler = build_scheduler(optimizer, "cosine", 2, 20)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _save(run, step, parts, **kw) -> Path:
    model, optimizer, scheduler = parts
    return ckpt.save_checkpoint(run, step, model, optimizer, scheduler, {"step": step}, **kw)


@pytest.fixture
def run(tmp_path):
    """A run with two good checkpoints, step-4 and step-8 (latest)."""
    parts = _parts()
    _train(*parts, 4)
    _save(tmp_path, 4, parts)
    _train(*parts, 4)
    _save(tmp_path, 8, parts)
    return tmp_path


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


# --- a checkpoint restores everything, and loads without pickle ---------------------------------------------


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    parts = _parts()
    _train(*parts, 3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = _save(tmp_path, 3, parts)
    expected = _draws()
    model, optimizer, scheduler = _parts(seed=9)
    state = ckpt.load_checkpoint(path, model, optimizer, scheduler)
    assert state == {"step": 3}
    assert _draws() == expected
    for a, b in zip(parts[0].state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert scheduler.last_epoch == 3 and scheduler.get_last_lr() == parts[2].get_last_lr()
    assert optimizer.state_dict()["state"][0]["exp_avg"].equal(parts[1].state_dict()["state"][0]["exp_avg"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == ckpt.FORMAT
    assert set(manifest["files"]) == {"weights.safetensors", "state.pt", "rng-0.pt", "trainer_state.json"}
    for name, entry in manifest["files"].items():
        assert entry["size"] == (path / name).stat().st_size and len(entry["sha256"]) == 64
    for name in ("state.pt", "rng-0.pt"):  # plain values only: no pickled objects needed
        torch.load(path / name, weights_only=True)


def test_rng_state_of_every_rank(tmp_path, caplog):
    states = []
    for seed in (10, 11):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        states.append(ckpt.rng_state())
    expected = []
    for state in states:
        ckpt.set_rng_state(state)
        expected.append(_draws())
    path = _save(tmp_path, 2, _parts(), rng_states=states)
    assert (path / "rng-1.pt").exists()
    ckpt.load_checkpoint(path, *_parts(), rank=1, world_size=2)
    assert _draws() == expected[1]
    with caplog.at_level(logging.WARNING):  # four processes now: rank 3 takes rank 0's state
        ckpt.load_checkpoint(path, *_parts(), rank=3, world_size=4)
    assert _draws() == expected[0]
    assert "written by 2 processes, now 4" in caplog.text and "no RNG state of rank 3" in caplog.text


# --- damaged checkpoints: detected, passed over with a warning, clear errors --------------------------------


def _truncate(path: Path) -> None:
    w = path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _garble_header(path: Path) -> None:
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header, same size
    w.write_bytes(bytes(data))


def _garble_state(path: Path) -> None:
    s = path / "state.pt"
    s.write_bytes(b"garbage" * (s.stat().st_size // 7) + b"x" * (s.stat().st_size % 7))


def _flip_bytes_in_state(path: Path) -> None:
    s = path / "state.pt"
    data = bytearray(s.read_bytes())
    rng = random.Random(0)
    for i in rng.sample(range(len(data) // 4, len(data) * 3 // 4), 8):
        data[i] ^= 0x5A
    s.write_bytes(bytes(data))


def _no_manifest(path: Path) -> None:  # killed before the write finished (an older layout, too)
    (path / "manifest.json").unlink()


def _bad_trainer_state(path: Path) -> None:
    (path / "trainer_state.json").write_text("{not json")


def _missing_rng(path: Path) -> None:
    (path / "rng-0.pt").unlink()


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (_truncate, "weights.safetensors is"),
        (_garble_header, "weights.safetensors does not match its sha256"),
        (_garble_state, "state.pt does not match its sha256"),
        (_flip_bytes_in_state, "state.pt does not match its sha256"),
        (_no_manifest, "no manifest.json"),
        (_bad_trainer_state, "trainer_state.json"),
        (_missing_rng, "rng-0.pt is missing"),
    ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(run, damage, what):
    newest = run / "checkpoints" / "step-8"
    damage(newest)
    found = ckpt.find_resumable(run)
    assert found.path == run / "checkpoints" / "step-4" and found.step == 4
    assert len(found.warnings) == 1 and str(newest) in found.warnings[0] and what in found.warnings[0]
    assert ckpt.latest_checkpoint(run) == found.path
    with pytest.raises(TuneforgeError, match=f"checkpoint {newest} is damaged .*{what}"):
        ckpt.load_checkpoint(newest, *_parts())
    ckpt.load_checkpoint(found.path, *_parts())


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x00\xff\xfe\x89binary", "holds binary bytes"),
        (b"", "is empty"),
        (b"step-12", "names step-12, which does not exist"),
        (b"../../etc", "not a checkpoint name"),
        (None, "is missing"),
    ],
)
def test_broken_latest_pointer_uses_the_newest_valid_checkpoint(run, content, what):
    pointer = run / "checkpoints" / "latest"
    pointer.unlink() if content is None else pointer.write_bytes(content)
    found = ckpt.find_resumable(run)
    assert found.step == 8
    assert len(found.warnings) == 1 and what in found.warnings[0] and "step-8" in found.warnings[0]


def test_latest_behind_the_newest_valid_checkpoint_is_not_a_problem(run):
    (run / "checkpoints" / "latest").write_text("step-4")  # killed between the rename and the pointer move
    assert ckpt.find_resumable(run).step == 8 and ckpt.find_resumable(run).warnings == []


def test_no_valid_checkpoint_is_a_clear_error(run):
    _truncate(run / "checkpoints" / "step-8")
    _no_manifest(run / "checkpoints" / "step-4")
    with pytest.raises(TuneforgeError) as err:
        ckpt.find_resumable(run)
    message = str(err.value)
    assert f"checkpoints step-4, step-8 in {run / 'checkpoints'} are damaged" in message
    assert "no manifest.json" in message and "truncated" in message
    assert "cannot resume" in message and "without --resume" in message


def test_no_checkpoint_at_all(tmp_path):
    assert ckpt.find_resumable(tmp_path) is None
    (tmp_path / "checkpoints" / ".tmp-step-4").mkdir(parents=True)  # killed during the first write
    assert ckpt.find_resumable(tmp_path) is None
    (tmp_path / "checkpoints" / "latest").write_text("step-4")  # but the folders are gone
    with pytest.raises(TuneforgeError, match="no checkpoint folder is left.*names step-4.*cannot resume"):
        ckpt.find_resumable(tmp_path)


def _reseal(path: Path) -> None:
    """Rewrite the manifest to match the files: damage the checksums cannot catch."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        entry.update(size=(path / name).stat().st_size, sha256=ckpt._sha256(path / name))
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (_garble_header, "weights.safetensors: not a readable safetensors file"),
        (_truncate, "weights.safetensors: not a readable safetensors file"),
        (_garble_state, "state.pt: cannot be read"),
    ],
)
def test_load_failures_behind_a_matching_manifest_name_the_file(run, damage, file):
    path = run / "checkpoints" / "step-8"
    damage(path)
    _reseal(path)
    with pytest.raises(TuneforgeError, match=file):
        ckpt.load_checkpoint(path, *_parts())


def test_a_pickled_callable_in_state_pt_is_refused_and_never_run(run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = run / "checkpoints" / "step-8"
    torch.save({"optimizer": Payload(), "scheduler": {}}, path / "state.pt")
    _reseal(path)  # a careful attacker rewrites the manifest too
    assert ckpt.find_resumable(run).step == 8
    with pytest.raises(
        TuneforgeError, match=r"state.pt: holds Python objects .*posix.system.*does not unpickle"
    ):
        ckpt.load_checkpoint(path, *_parts())
    assert not marker.exists()


# --- disk full: a clear message, no partial folder ----------------------------------------------------------


def test_disk_full_removes_the_partial_folder_and_says_so(run, monkeypatch):
    real_save = ckpt.save_file

    def full_disk(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(TuneforgeError) as err:
        _save(run, 12, _parts())
    message = str(err.value)
    assert (
        message.startswith("no space left on device ") and f"at {run / 'checkpoints' / 'step-12'}" in message
    )
    assert "the last checkpoint step-8 is intact (resume with --resume)" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-4", "step-8"]
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.find_resumable(run).step == 8


def test_disk_full_inside_torch_save_and_before_any_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter: unexpected pos 64 vs 12"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TuneforgeError, match="no space left on device .*; no checkpoint was written yet"):
        _save(tmp_path, 4, _parts())
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_other_write_failures_propagate_and_clean_up(run, monkeypatch):
    def broken(tensors, path):
        raise ValueError("not a space problem")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(ValueError, match="not a space problem"):
        _save(run, 12, _parts())
    assert not (run / "checkpoints" / ".tmp-step-12").exists()


# --- writing: fsync, stale folders, pruning -----------------------------------------------------------------


def test_files_and_folders_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _save(tmp_path, 4, _parts())
    root, tmp = str(tmp_path / "checkpoints"), str(tmp_path / "checkpoints" / ".tmp-step-4")
    for name in ("weights.safetensors", "state.pt", "rng-0.pt", "trainer_state.json", "manifest.json"):
        assert f"{tmp}/{name}" in synced
    assert synced.index(tmp) < synced.index(root)  # the folder, then its parent after the rename
    assert synced[-1] == root and any(s.startswith(f"{root}/.tmp-latest-") for s in synced)


def test_stale_partial_folders_are_removed_and_a_step_can_be_saved_again(run):
    stale = run / "checkpoints" / ".tmp-step-10"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"x" * 100)
    _save(run, 8, _parts(seed=3))  # the same step again (a resumed, finished run)
    assert not stale.exists()
    assert ckpt.find_resumable(run).step == 8 and ckpt.find_resumable(run).warnings == []


def test_pruning_keeps_valid_checkpoints_and_drops_an_abandoned_future(run):
    _truncate(run / "checkpoints" / "step-8")
    assert ckpt.find_resumable(run).step == 4
    _save(run, 6, _parts())  # resumed from step 4; the damaged step-8 is not the run's future any more
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-4", "step-6"]
    _save(run, 7, _parts(), keep=1)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-7"]
    found = ckpt.find_resumable(run)
    assert found.step == 7 and found.warnings == []


# --- the run folder: one writer, unique names, metrics ------------------------------------------------------


def test_run_lock_refuses_a_second_writer_until_the_first_dies(tmp_path):
    holder = textwrap.dedent(
        f"""
        import sys, time
        from tuneforge.train.runfolder import RunLock
        with RunLock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(TuneforgeError) as err:
            RunLock(tmp_path).__enter__()
        message = str(err.value)
        assert f"run folder {tmp_path} is in use by process {proc.pid} on " in message
        assert "is it still training?" in message and "wait for it, or stop it first" in message
    finally:
        proc.kill()
        proc.wait()
    with RunLock(tmp_path) as lock:  # the kernel released the dead process's lock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    with RunLock(tmp_path):
        pass


def test_new_run_dirs_are_unique_within_one_second(tmp_path, monkeypatch):
    from tuneforge.train import runfolder

    monkeypatch.setattr(runfolder.time, "strftime", lambda fmt: "20250101-120000")
    made = [new_run_dir(tmp_path / "runs", "sft-tiny-lora") for _ in range(3)]
    assert [p.name for p in made] == [
        "sft-tiny-lora-20250101-120000",
        "sft-tiny-lora-20250101-120000-2",
        "sft-tiny-lora-20250101-120000-3",
    ]
    assert all(p.is_dir() for p in made)


def test_metrics_log_tolerates_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.append({"step": step, "split": "train", "loss": 1.0 / step})
    with open(path, "ab") as fh:
        fh.write(b'{"step": 4, "split": "tr')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "line 4: cut short or garbled" in caplog.text
    log.append({"step": 4, "split": "train"})  # the torn line is removed, not joined or left in the middle
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert path.read_text().count("\n") == 4
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_metrics_truncate_after_drops_later_steps_and_a_garbled_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (2, 4, 6, 8):
        log.append({"step": step, "split": "train"})
    with open(path, "ab") as fh:
        fh.write(b"\x00\xff\x13 binary tail")
    assert [r["step"] for r in log.truncate_after(4)] == [2, 4]
    assert path.read_text() == '{"step": 2, "split": "train"}\n{"step": 4, "split": "train"}\n'
    assert log.warnings and not list(tmp_path.glob(".*tmp*"))


def test_metrics_garbage_in_the_middle_names_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 4}\n')
    with pytest.raises(TuneforgeError, match=rf"{path} line 3: not a JSON record .*delete that line"):
        read_metrics(path)


def test_atomic_write_json_replaces_whole_files(tmp_path):
    target = tmp_path / "run.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2} and [p.name for p in tmp_path.iterdir()] == ["run.json"]


# --- SIGTERM and Ctrl-C -------------------------------------------------------------------------------------


def test_sigterm_becomes_a_stop_request():
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    with GracefulStop(notify=seen.append) as stop:
        assert stop.requested is None and stop.describe() == ""
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM and stop.describe() == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == before


def test_second_ctrl_c_interrupts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.describe() == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == before


def test_graceful_stop_is_a_no_op_outside_the_main_thread():
    result = {}

    def body():
        with GracefulStop() as stop:
            result["active"] = stop.active

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert result == {"active": False}
