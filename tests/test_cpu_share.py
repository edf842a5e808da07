"""The evidence run's per-episode thread choice (engine.run.cpu_share) and the import-time
OpenMP wait policy: the arithmetic against hand-computed cases, and the decisions on a
scripted /proc/stat."""

import numba
import pytest

import kernels
from engine.run import cpu_share
from engine.run.cpu_share import CpuShare, others_cores, threads_for


def test_others_cores_subtracts_this_process():
    # the machine was busy 3.0 core-seconds over 2 s of wall time; 1.0 of them were ours
    assert others_cores(10.0, 13.0, 1.0, 2.0) == pytest.approx(1.0)
    # ticks are coarse: ours can exceed the machine's count; never negative
    assert others_cores(10.0, 10.5, 0.8, 1.0) == 0.0
    assert others_cores(10.0, 12.0, 0.0, 0.0) == 0.0


@pytest.mark.parametrize("others, cpus, max_threads, expected", [
    (0.0, 2, 2, 2), (0.3, 2, 2, 2), (0.5, 2, 2, 1), (1.0, 2, 2, 1), (2.0, 2, 2, 1), (5.0, 2, 2, 1),
    (1.0, 8, 8, 7), (0.0, 8, 4, 4), (2.7, 8, 8, 5), (0.0, 1, 1, 1),
])
def test_threads_for(others, cpus, max_threads, expected):
    assert threads_for(others, cpus, max_threads) == expected


class _Clock:
    """A scripted machine: ``others`` cores busy besides this process, which uses ``ours`` cores."""

    def __init__(self):
        self.t, self.busy, self.cpu = 100.0, 1000.0, 5.0
        self.others, self.ours = 0.0, 1.0

    def advance(self, dt):
        self.t += dt
        self.busy += (self.others + self.ours) * dt
        self.cpu += self.ours * dt


@pytest.fixture
def machine(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(cpu_share, "_proc_stat", lambda: (clock.busy, clock.t * 2))
    monkeypatch.setattr(cpu_share.time, "perf_counter", lambda: clock.t)
    monkeypatch.setattr(cpu_share.time, "process_time", lambda: clock.cpu)
    monkeypatch.setattr(cpu_share.time, "sleep", lambda s: clock.advance(s))
    monkeypatch.setattr(cpu_share.os, "cpu_count", lambda: 2)
    set_calls = []
    monkeypatch.setattr(numba, "set_num_threads", lambda n: set_calls.append(n))
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    monkeypatch.delenv("ENGINE_CPU_SHARE", raising=False)
    clock.set_calls = set_calls
    return clock


def test_busy_before_the_run_gives_one_thread_then_back(machine):
    machine.others, machine.ours = 1.0, 0.0  # a busy loop, and this process idle while it looks
    share = CpuShare(max_threads=2)
    assert share.enabled and share.start() == 1 and machine.set_calls == [1]
    machine.ours = 1.0
    for _ in range(10):  # episodes of 0.05 s: decisions once WINDOW_S has passed
        assert share.before_episode() == 1
        machine.advance(0.05)
    machine.others = 0.0  # the busy process ends
    got = []
    for _ in range(10):
        got.append(share.before_episode())
        machine.advance(0.05)
    assert got[-1] == 2 and machine.set_calls == [1, 2] and share.changes == 2
    assert share.used == {1, 2}
    share.restore()
    assert machine.set_calls == [1, 2]  # already at the maximum


def test_busy_during_the_run(machine):
    share = CpuShare(max_threads=2)
    assert share.start() == 2 and machine.set_calls == []
    machine.ours = 2.0
    for _ in range(6):
        assert share.before_episode() == 2
        machine.advance(0.05)
    machine.others, machine.ours = 1.0, 1.0  # a busy loop starts; ours get one core's worth
    got = []
    for _ in range(12):
        got.append(share.before_episode())
        machine.advance(0.05)
    assert got[-1] == 1 and machine.set_calls == [1]
    share.restore()
    assert machine.set_calls == [1, 2]


def test_no_decision_inside_the_window(machine):
    share = CpuShare(max_threads=2)
    share.start()
    machine.others = 2.0
    machine.advance(cpu_share.WINDOW_S / 3)
    assert share.before_episode() == 2  # too soon to tell
    machine.advance(cpu_share.WINDOW_S)
    assert share.before_episode() == 1


def test_disabled_cases(machine, monkeypatch):
    assert not CpuShare(max_threads=1).enabled
    monkeypatch.setenv("ENGINE_CPU_SHARE", "0")
    share = CpuShare(max_threads=2)
    machine.others = 2.0
    assert not share.enabled and share.start() == 2 and share.before_episode() == 2
    monkeypatch.delenv("ENGINE_CPU_SHARE")
    monkeypatch.setattr(cpu_share, "_proc_stat", lambda: None)
    assert not CpuShare(max_threads=2).enabled
    assert machine.set_calls == []


def test_proc_stat_reads_this_machine():
    st = cpu_share._proc_stat()
    if st is None:
        pytest.skip("no /proc/stat on this platform")
    busy, total = st
    assert 0 < busy <= total


def test_others_running_counts_other_tasks(monkeypatch, tmp_path):
    """The import-time count: /proc/loadavg's runnable tasks less this one, the least of its samples."""
    values = iter(["0.50 0.40 0.30 3/120 999\n", "0.50 0.40 0.30 2/120 999\n", "0.50 0.40 0.30 4/120 999\n"])
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/proc/loadavg":
            f = tmp_path / "loadavg"
            f.write_text(next(values))
            return real_open(f, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert kernels._others_running(samples=3, gap_s=0.0) == 1
