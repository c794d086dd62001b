"""CPU threads: the cores a process may use (affinity, cgroup quota), training.threads, the busy-machine warning."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from tuneforge import threads
from tuneforge.errors import ConfigError
from tuneforge.threads import (
    apply_threads,
    available_cores,
    busy_cores,
    cgroup_cpu_limit,
    launcher_env,
    machine_busy_warning,
    others_busy,
    threads_for,
)


def _files(root, files: dict[str, str]):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_cgroup_v2_quota_caps_the_affinity(tmp_path, eight_cpus):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    me.write_text("0::/\n")
    _files(root, {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, me) == 1.5
    assert available_cores(root, me) == 2  # a quota of 1.5 cores: two threads share it
    _files(root, {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, me) is None
    assert available_cores(root, me) == 8  # no quota: the affinity
    _files(root, {"cpu.max": "20000 100000\n"})
    assert available_cores(root, me) == 1  # a fifth of a core: still one thread


def test_cgroup_v2_quota_of_a_parent_folder_applies(tmp_path, eight_cpus):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    me.write_text("0::/user.slice/job.scope\n")
    _files(root, {"user.slice/cpu.max": "300000 100000", "user.slice/job.scope/cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, me) == 3.0
    assert available_cores(root, me) == 3


def test_cgroup_v1_quota(tmp_path, eight_cpus):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    me.write_text("4:memory:/x\n3:cpu,cpuacct:/\n")
    _files(root, {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, me) == 4.0
    assert available_cores(root, me) == 4
    _files(root, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n"})  # v1's "no limit"
    assert available_cores(root, me) == 8


def test_missing_or_garbled_cgroup_files_mean_no_quota(tmp_path, eight_cpus):
    root, me = tmp_path / "cg", tmp_path / "self_cgroup"
    assert cgroup_cpu_limit(root, me) is None  # neither exists (macOS, no cgroup)
    me.write_text("garbage\n0::/\n")
    _files(
        root, {"cpu.max": "lots of cpu\n", "cpu/cpu.cfs_quota_us": "\x00\x01", "cpu/cpu.cfs_period_us": ""}
    )
    assert cgroup_cpu_limit(root, me) is None
    assert available_cores(root, me) == 8


def test_available_cores_on_this_machine():
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def test_auto_threads_divide_the_cores_among_local_processes():
    assert threads_for("auto", cores=8, environ={}) == 8
    assert threads_for("auto", 2, cores=8, environ={}) == 4
    assert threads_for("AUTO", 3, cores=8, environ={}) == 2
    assert threads_for("auto", 4, cores=2, environ={}) == 1  # never 0


def test_auto_inside_torchrun_ignores_its_one_thread_default():
    """--nproc N: torchrun exports OMP_NUM_THREADS=1 to every child; each must get its share instead."""
    env = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    assert threads_for("auto", 2, cores=8, environ=env) == 4
    # what tuneforge's launcher puts in torchrun's environment gives each child the same share
    env = {"LOCAL_WORLD_SIZE": "2", **launcher_env(2, cores=8, environ={})}
    assert env["OMP_NUM_THREADS"] == "4"
    assert threads_for("auto", 2, cores=8, environ=env) == 4


def test_auto_keeps_a_users_omp_num_threads_but_not_one_tuneforge_exported():
    assert threads_for("auto", cores=8, environ={"OMP_NUM_THREADS": "3"}) == 3
    assert threads_for("auto", cores=8, environ={"OMP_NUM_THREADS": "junk"}) == 8
    # a notebook's second run: the value the first run exported is not a user's choice
    assert threads_for("auto", cores=8, environ={"OMP_NUM_THREADS": "2", threads.MARKER: "2"}) == 8


def test_a_number_is_used_as_given_with_a_warning_above_the_cores(caplog):
    assert threads_for(3, cores=8, environ={}) == 3
    assert threads_for("6", cores=8, environ={}) == 6
    with caplog.at_level(logging.WARNING, logger="tuneforge.threads"):
        assert threads_for(16, cores=8, environ={}) == 16
    assert "may use 8 cores" in caplog.text and "training.threads=auto" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tuneforge.threads"):
        threads_for(4, 2, cores=8, environ={})  # 2 processes x 4 threads fit on 8 cores
    assert not caplog.text


@pytest.mark.parametrize("bad", [0, -2, "two", "2.5", 2.5, True, None, ""])
def test_bad_thread_settings_are_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match=r"training\.threads.*training\.threads=auto"):
        threads_for(bad, cores=8, environ={})


def test_apply_threads_sets_torch_and_the_environment_for_children(monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", threads.MARKER):
        monkeypatch.delenv(var, raising=False)
    old = torch.get_num_threads()
    try:
        apply_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
        apply_threads(2)  # a second run in the same process: the inter-op pool is fixed, no error
        assert torch.get_num_threads() == 2
        assert threads_for("auto", cores=8) == 8  # the exported value is not mistaken for the user's
    finally:
        torch.set_num_threads(old)


def test_launcher_env_gives_each_child_its_share():
    assert launcher_env(2, cores=8, environ={})["OMP_NUM_THREADS"] == "4"
    assert launcher_env(2, cores=8, environ={})["MKL_NUM_THREADS"] == "4"
    assert launcher_env(16, cores=8, environ={})["OMP_NUM_THREADS"] == "1"
    assert launcher_env(2, cores=8, environ={"OMP_NUM_THREADS": "3"}) == {}  # the user's choice stays


def test_others_busy_subtracts_this_process():
    # 2 CPUs, 100 ticks each elapsed; 150 busy ticks of which 30 were this process's: 1.2 cores by others
    assert others_busy((100, 400), (250, 600), 10, 40, 2) == pytest.approx(1.2)
    assert others_busy((100, 400), (100, 400), 0, 0, 2) == 0.0  # no time elapsed
    assert others_busy((0, 0), (500, 200), 0, 0, 2) == 2.0  # never more than the CPUs


def test_busy_cores_reads_proc_stat_of_the_allowed_cpus(tmp_path, monkeypatch):
    stat, me = tmp_path / "stat", tmp_path / "self_stat"
    line = "cpu{} {} 0 {} {} 0 0 0 0 0 0\n"  # user nice system idle iowait irq softirq steal guest guest_nice
    own = "123 (python (x)) S " + " ".join(["0"] * 10) + " {} {} 0 0\n"  # utime, stime: fields 14 and 15

    def write(busy: int, idle: int, mine: int) -> None:
        stat.write_text(
            "cpu 0 0 0 0 0 0 0 0\n"
            + line.format(0, busy, 0, idle)
            + line.format(1, busy, 0, idle)
            # cpu2 is not ours (affinity {0, 1}): fully busy, never counted
            + line.format(2, busy * 10, 0, 0)
            + "intr 1 2 3\n"
        )
        me.write_text(own.format(mine, 0))

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.time, "sleep", lambda s: write(busy=190, idle=10, mine=20))
    write(busy=100, idle=0, mine=0)
    # each CPU: 90 busy + 10 idle ticks; 180 busy in all, 20 of them ours: 1.6 cores by others
    assert busy_cores(proc_stat=stat, self_stat=me) == pytest.approx(1.6)


def test_busy_cores_on_this_machine():
    busy = busy_cores(interval=0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1)


def test_busy_machine_warning():
    text = machine_busy_warning(2, busy=1.8, cores=2)
    assert "about 1.8 of 2 cores are in use by other processes" in text
    assert "training.threads=1" in text and "far more than 2x" in text
    assert machine_busy_warning(2, busy=0.5, cores=2) is None  # others use less than half
    assert machine_busy_warning(1, busy=1.0, cores=2) is None  # already sharing: one thread on the free core
    assert "training.threads=6" in machine_busy_warning(8, busy=10.0, cores=16)


def test_trainings_on_one_machine_share_its_cores(tmp_path, monkeypatch):
    """training.threads: auto: a second training on the machine halves this one's threads, and when it ends
    this one takes the cores back; a dead process's registration is not counted."""
    import subprocess
    import sys

    import torch

    from tuneforge import threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        with threads.CoreShare(cores=4, folder=tmp_path, every=0.0) as share:
            share.rebalance(force=True)
            assert share.threads == 4 and torch.get_num_threads() == 4
            other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            (tmp_path / str(other.pid)).write_text("")  # another training registers
            assert threads.rebalance() == "threads: 4 -> 2 (another training started on these cores)"
            assert torch.get_num_threads() == 2
            other.kill()
            other.wait()
            assert threads.rebalance() == "threads: 2 -> 4 (the cores are free again)"
            assert not (tmp_path / str(other.pid)).exists()  # the dead one's file is cleaned up
        assert not any(tmp_path.iterdir()) and threads.rebalance() is None  # unregistered on exit
    finally:
        torch.set_num_threads(before)


def test_releasing_openmp_workers_keeps_torch_working_in_every_thread():
    """The engine's loading thread gives its idle OpenMP workers back (torch ships GNU OpenMP on Linux);
    parallel ops afterwards, here and in another thread, start workers again and give the same results."""
    import sys
    import threading

    import torch

    from tuneforge.threads import release_openmp_workers

    x = torch.randn(256, 4096)
    want = x @ x.T
    released = release_openmp_workers()
    assert isinstance(released, bool)
    if sys.platform == "linux":
        assert released
    assert torch.equal(x @ x.T, want)
    out = []
    t = threading.Thread(target=lambda: out.append(torch.equal(x @ x.T, want)))
    t.start()
    t.join()
    assert out == [True]
