"""engine.run.results: the result pair written as one unit, in-process.

Each window of a commit that a killed run can leave (staged files without a journal, a
journal before any rename, between the renames, after the last) is built on disk as the
writer leaves it, then recovered; the output must be the earlier pair or the new one.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal

import pytest

from engine.errors import UserError
from engine.run import results
from engine.run.results import ResultFolder, RunReport, recover, write_report

PAIR = ["episodes.csv", "summary.json"]


def report(n: int) -> RunReport:
    return RunReport({"n_eval_episodes": n}, ("mode", "episode"), [["eval", i] for i in range(n)], "")


def read_pair(out) -> int:
    """The number of episodes of the pair in ``out``, checked to be one run's."""
    n = json.loads((out / "summary.json").read_text())["n_eval_episodes"]
    rows = list(csv.reader((out / "episodes.csv").open()))[1:]
    assert len(rows) == n, "summary.json and episodes.csv are from different runs"
    return n


@pytest.fixture
def earlier(tmp_path):
    out = tmp_path / "out"
    write_report(out, report(2))
    return out


def staged(out, n: int, journal: bool, moved: int = 0, extra: dict | None = None):
    """The state a run killed during its commit leaves: the new pair (``n`` episodes) staged,
    the journal written or not, the first ``moved`` files renamed into place."""
    stage = out / f"{results.STAGE_PREFIX}999999.abcdef012345"
    stage.mkdir()
    rep = report(n)
    files = dict(extra or {})
    files["episodes.csv"] = results.episodes_csv(rep.columns, rep.rows)
    files["summary.json"] = json.dumps(rep.summary)
    for name, text in files.items():
        (stage / name).write_text(text)
    if journal:
        (out / results.JOURNAL_NAME).write_text(json.dumps({"stage": stage.name, "files": list(files)}))
    for name in list(files)[:moved]:
        os.replace(stage / name, out / name)
    (out / results.LOCK_NAME).write_text("999999\n")  # the killed run's lock file
    return stage


# --------------------------------------------------------------------------- writing


def test_write_report_writes_the_pair_and_nothing_else(tmp_path):
    out = tmp_path / "a" / "b"
    s, e = write_report(out, report(3))
    assert (s, e) == (out / "summary.json", out / "episodes.csv")
    assert sorted(os.listdir(out)) == PAIR and read_pair(out) == 3
    write_report(out, report(1))
    assert sorted(os.listdir(out)) == PAIR and read_pair(out) == 1


def test_extras_are_committed_with_the_pair(tmp_path):
    out = tmp_path / "out"
    with ResultFolder(out) as rf:
        (rf.stage / "plot.png").write_bytes(b"png")
        assert not (out / "plot.png").exists()  # not before the commit
        rf.commit(report(1))
    assert sorted(os.listdir(out)) == ["episodes.csv", "plot.png", "summary.json"]


def test_a_failed_run_leaves_no_folder_it_created_and_no_staged_file(tmp_path, earlier):
    new = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError):
        with ResultFolder(new) as rf:
            (rf.stage / "plot.png").write_bytes(b"png")
            raise RuntimeError("the run failed")
    assert not (tmp_path / "new").exists()
    with pytest.raises(KeyboardInterrupt):
        with ResultFolder(earlier) as rf:
            (rf.stage / "plot.png").write_bytes(b"png")
            raise KeyboardInterrupt
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 2


def test_the_folder_is_locked_while_held(earlier):
    with ResultFolder(earlier):
        with pytest.raises(results.OutputBusy, match=f"another run is writing to {earlier} \\(pid {os.getpid()}\\)"):
            ResultFolder(earlier).__enter__()
        with pytest.raises(results.OutputBusy):
            recover(earlier)
    assert sorted(os.listdir(earlier)) == PAIR  # the lock file goes with the run
    with ResultFolder(earlier) as rf:  # and the folder can be held again
        rf.commit(report(4))
    assert read_pair(earlier) == 4


def test_a_failing_write_leaves_the_earlier_pair(earlier, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "write_new_file", full)
    with pytest.raises(UserError, match="No space left on device; earlier results there are unchanged"):
        write_report(earlier, report(5))
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 2


def test_a_failing_journal_leaves_the_earlier_pair(earlier, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results, "atomic_write_text", full)
    with pytest.raises(UserError, match="earlier results there are unchanged"):
        write_report(earlier, report(5))
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 2


@pytest.mark.parametrize("failures", [1, 100])
def test_a_failing_rename_is_completed_from_the_journal(earlier, monkeypatch, failures):
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if str(dst).endswith("summary.json") and len([c for c in calls if str(c).endswith("summary.json")]) <= failures:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(src, dst)

    monkeypatch.setattr(results.os, "replace", flaky)
    if failures == 1:  # retried at once from the journal
        write_report(earlier, report(5))
    else:  # the journal stays for the next run
        with pytest.raises(UserError, match="the next run into .* completes it"):
            write_report(earlier, report(5))
        assert results.JOURNAL_NAME in os.listdir(earlier)
        monkeypatch.setattr(results.os, "replace", real)
        recover(earlier)
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 5


# --------------------------------------------------------------------------- recovery, window by window


def test_killed_before_the_journal_rolls_back(earlier):
    staged(earlier, 5, journal=False)
    (earlier / ".engine.pending.0123456789ab.tmp").write_text("{")  # killed while writing the journal
    done = recover(earlier)
    assert len(done) == 2
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 2


@pytest.mark.parametrize("moved", [0, 1, 2, 3])
def test_killed_after_the_journal_rolls_forward(earlier, moved):
    staged(earlier, 5, journal=True, moved=moved, extra={"plot.png": "png"})
    done = recover(earlier)
    assert done[0].startswith("completed an interrupted commit")
    assert sorted(os.listdir(earlier)) == ["episodes.csv", "plot.png", "summary.json"]
    assert read_pair(earlier) == 5


def test_an_unreadable_journal_is_not_guessed_at(earlier):
    staged(earlier, 5, journal=False)
    (earlier / results.JOURNAL_NAME).write_text('{"stage": "../elsewhere", "files": ["summary.json"]}')
    recover(earlier)
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 2


def test_recovery_keeps_the_users_files(earlier):
    mine = ["notes.txt", ".hidden", ".x.tmp", ".engine-stage.mine", ".data.npz.0123456789ab.tmp"]
    for name in mine:
        (earlier / name).write_text("mine")
    assert recover(earlier) == []
    assert sorted(os.listdir(earlier)) == sorted(PAIR + mine)


def test_the_next_write_recovers_first(earlier):
    staged(earlier, 5, journal=True, moved=1)
    with ResultFolder(earlier) as rf:
        assert rf.recovered and rf.recovered[0].startswith("completed an interrupted commit")
        assert read_pair(earlier) == 5
        rf.commit(report(6))
    assert sorted(os.listdir(earlier)) == PAIR and read_pair(earlier) == 6


# --------------------------------------------------------------------------- checks and signals


def test_check_output_folder(tmp_path, monkeypatch):
    results.check_output_folder(tmp_path / "new" / "deeper")  # creatable: fine
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match=f"^output folder {tmp_path / 'f'} exists and is not a folder$"):
        results.check_output_folder(tmp_path / "f")
    with pytest.raises(UserError, match=f"cannot be created \\({tmp_path / 'f'} is not a folder\\)$"):
        results.check_output_folder(tmp_path / "f" / "x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=f"^output folder {tmp_path} is not writable \\(permission denied\\)$"):
        results.check_output_folder(tmp_path)


def test_signals_are_deferred_to_the_end_of_the_block(sigint_default):
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with results.deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler would run here, between bytecodes
                seen.append(1)
            seen.append("end")
    assert seen[-1] == "end"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
