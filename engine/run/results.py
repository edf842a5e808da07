"""Run results of any model type: ``summary.json`` and ``episodes.csv`` from one report shape,
written into the output folder as one unit.

The pair (and any extra files a model writes, such as plots) is one result: a reader of
the output folder finds the earlier complete result or the new one, never the summary of
one run beside the episodes of another. How (see also the README's "Result writing"):

1. **Lock.** A run holds ``OUT/.engine.lock`` (``fcntl.flock``, exclusive, non-blocking)
   from before its data is built until it ends; a second run into the same folder fails
   at once with "another run is writing to OUT (pid N)". The file holds the pid and is
   removed when the run ends; the kernel releases the lock of a killed run.
2. **Stage.** Every result file is written complete and fsynced into a private folder
   ``OUT/.engine-stage.<pid>.<random>/``. A failure here (a full disk, an exception, a
   signal) deletes the staging folder: the earlier result is untouched.
3. **Journal.** ``OUT/.engine.pending`` (written atomically) names the staging folder
   and its files: from here on the new result is complete on disk and will be moved in.
4. **Commit.** Each staged file is renamed onto its name in ``OUT`` (extras first,
   ``episodes.csv``, then ``summary.json``), the folder fsynced, the journal removed.
   SIGINT, SIGTERM and SIGHUP are held back during steps 3-4 and delivered after them.
5. **Recovery.** Taking the lock first completes a journal left by a killed run (the
   renames not yet done are done: roll forward) and deletes what a killed run left
   before its journal existed (staging folders, the journal's or the pair's
   ``.NAME.<hex>.tmp`` temporaries): under the lock no other run writes there, so they
   are stale.

Only a SIGKILL or a power loss in the microseconds between the renames of step 4 can
leave the two files from different runs; the journal then says so, and the next run into
the folder, or :func:`recover`, completes the commit.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.files import atomic_write_text, fsync_folder, unwritable_folder, write_new_file

SUMMARY_NAME = "summary.json"
EPISODES_NAME = "episodes.csv"
LOCK_NAME = ".engine.lock"
JOURNAL_NAME = ".engine.pending"
STAGE_PREFIX = ".engine-stage."
#: what a killed run can leave in an output folder: staging folders, the journal's
#: temporary, and the temporaries of the earlier writer (which wrote the pair in place);
#: other ``.NAME.<hex>.tmp`` files may be another command's work in progress (a dataset
#: written into the folder) and are left alone
_STALE = re.compile(r"^\.(summary\.json|episodes\.csv|engine\.pending)\.[0-9a-f]{12}\.tmp$|^"
                    + re.escape(STAGE_PREFIX) + r"\d+\.[0-9a-f]+$")
#: the signals held back while a result is moved into place
DEFERRED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@dataclass
class RunReport:
    """One result shape for every model type: what a run prints and writes.

    ``summary``: the content of ``summary.json`` (plain data; each model documents its
    keys); ``columns``: the header of ``episodes.csv``; ``rows``: one list of values per
    episode (already formatted where the model wants a fixed format); ``table``: the
    text printed after the run.
    """

    summary: dict
    columns: tuple[str, ...]
    rows: list[list]
    table: str


class OutputBusy(UserError):
    """Another run holds the output folder's lock."""


def episodes_csv(columns, rows) -> str:
    """episodes.csv's text: the header ``columns``, then one line per row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def check_output_folder(out_dir: str | Path) -> None:
    """Raise a one-line :class:`UserError` naming ``out_dir`` when results cannot be
    written there (not a folder, read-only, no permission); creates nothing. ``run``
    and ``validate`` call it before anything runs."""
    why = unwritable_folder(out_dir)
    if why is not None:
        if why.startswith("exists and"):
            raise UserError(f"output folder {out_dir} exists and is not a folder")
        if why.endswith("is not a folder"):
            raise UserError(f"output folder {out_dir} cannot be created ({why})")
        raise UserError(f"output folder {out_dir} is not writable ({why})")


class ResultFolder:
    """An output folder held by one run: ``with ResultFolder(out) as rf: ... rf.commit(report)``.

    Entering checks the folder (:func:`check_output_folder`), creates it if missing,
    takes the lock (:class:`OutputBusy` when another run holds it) and recovers what a
    killed run left. :attr:`stage` is the staging folder that extra files are written
    into before :meth:`commit`. Leaving deletes an uncommitted staging folder, removes
    the lock file, and removes the folders entering created if they stayed empty (a run
    that fails leaves no folder).

    ``committed`` tells whether the result was moved into place (what an interrupted
    run may truthfully say); ``recovered`` lists what entering completed or deleted.
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.committed = False
        self.recovered: list[str] = []
        self._fd: int | None = None
        self._stage: Path | None = None
        self._created: list[Path] = []

    # -- holding the folder ---------------------------------------------------------
    def __enter__(self) -> "ResultFolder":
        check_output_folder(self.out)
        try:
            self._make_folders()
            self._fd = _lock(self.out)
            self.recovered = _recover_locked(self.out)
        except OSError as exc:
            self._release()
            raise UserError(f"cannot write results to {self.out}: {_reason(exc)}") from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        with deferred_signals():  # a second Ctrl-C does not cut the clean-up short
            self._release()

    def _make_folders(self) -> None:
        missing = []
        p = self.out.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            self._created.append(d)

    def _release(self) -> None:
        if self._stage is not None and not self.committed:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._stage = None
        if self._fd is not None:
            try:
                os.unlink(self.out / LOCK_NAME)  # while still holding it: see _lock
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        for d in reversed(self._created):
            try:
                d.rmdir()  # only an empty folder: results, extras or user files stay
            except OSError:
                break
        self._created = []

    @property
    def stage(self) -> Path:
        """The staging folder (created on first use): files written here are committed
        with the pair."""
        if self._fd is None:
            raise RuntimeError("the result folder is not held (use it in a with block)")
        if self._stage is None:
            stage = self.out / f"{STAGE_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
            try:
                stage.mkdir()
            except OSError as exc:
                raise UserError(f"cannot write results to {self.out}: {_reason(exc)}") from None
            self._stage = stage
        return self._stage

    # -- writing --------------------------------------------------------------------
    def _abandon_stage(self, exc: OSError):
        """A write before the journal failed: delete the staged files and say the earlier
        result is unchanged (raises :class:`UserError`)."""
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
        self._stage = None
        raise UserError(f"cannot write results to {self.out}: {_reason(exc)}; "
                        "earlier results there are unchanged") from None

    def commit(self, report: RunReport) -> tuple[Path, Path]:
        """Write ``summary.json`` and ``episodes.csv`` (and everything already in
        :attr:`stage`) into the output folder as one unit; returns the two paths.

        A failure before the journal exists (a full disk, say) deletes the staged files
        and raises a :class:`UserError` that says the earlier result is unchanged.
        """
        stage = self.stage
        out = self.out
        try:
            write_new_file(stage / EPISODES_NAME, episodes_csv(report.columns, report.rows).encode())
            write_new_file(stage / SUMMARY_NAME, (json.dumps(report.summary, indent=2) + "\n").encode())
            fsync_folder(stage)
        except OSError as exc:
            self._abandon_stage(exc)
        pause_point("writing")
        names = sorted(n for n in os.listdir(stage) if n not in (EPISODES_NAME, SUMMARY_NAME))
        names += [EPISODES_NAME, SUMMARY_NAME]  # summary.json last: it completes the unit
        with deferred_signals():
            try:
                atomic_write_text(out / JOURNAL_NAME, json.dumps({"stage": stage.name, "files": names}) + "\n")
                fsync_folder(out)
            except OSError as exc:
                self._abandon_stage(exc)
            self._stage = None  # the journal's now: only a commit or a recovery removes it
            try:
                for i, name in enumerate(names):
                    os.replace(stage / name, out / name)
                    if i == 0:
                        pause_point("commit")
                _finish(out, stage)
            except OSError as exc:
                try:  # one more try from the journal (what the next run would do)
                    _recover_locked(out)
                except OSError:
                    raise UserError(f"cannot write results to {out}: {_reason(exc)}; the new result is "
                                    f"partly moved in: the next run into {out} completes it "
                                    f"(from {JOURNAL_NAME})") from None
            self.committed = True
        return out / SUMMARY_NAME, out / EPISODES_NAME


def write_report(out_dir: str | Path, report: RunReport) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``episodes.csv`` into ``out_dir`` as one unit (lock,
    stage, commit: see the module's docstring); returns their paths. Raises
    :class:`UserError` (:class:`OutputBusy` while a run writes there)."""
    with ResultFolder(out_dir) as rf:
        return rf.commit(report)


def recover(out_dir: str | Path) -> list[str]:
    """Complete or clean up what a killed run left in ``out_dir`` (see the module's
    docstring); returns what was done, one line per item. Raises :class:`OutputBusy`
    while a run writes there. For readers that must not meet an unfinished commit."""
    out = Path(out_dir)
    fd = _lock(out)
    try:
        return _recover_locked(out)
    finally:
        os.unlink(out / LOCK_NAME)
        os.close(fd)


# ------------------------------------------------------------------------------ internals


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _lock(out: Path) -> int:
    """Take ``out/.engine.lock``; returns its descriptor. The file is unlinked by its
    holder on release, so after locking we check that the file we locked is still the
    one at that name (else another run released and removed it meanwhile: try again)."""
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                pid = os.read(fd, 32).decode("ascii", "replace").strip()
            except OSError:
                pid = ""
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise OutputBusy(f"another run is writing to {out} (pid {pid or 'unknown'}); "
                             "wait for it to finish or choose another output folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:  # for the message a second run prints; a full disk may refuse it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        return fd


def _finish(out: Path, stage: Path) -> None:
    fsync_folder(out)
    os.unlink(out / JOURNAL_NAME)
    shutil.rmtree(stage, ignore_errors=True)
    fsync_folder(out)


def _recover_locked(out: Path) -> list[str]:
    """Roll a journaled commit forward, delete stale temporaries (the lock is held)."""
    done = []
    journal = out / JOURNAL_NAME
    keep = None
    if journal.exists():
        try:
            plan = json.loads(journal.read_text())
            stage, names = out / plan["stage"], list(plan["files"])
            ok = all(isinstance(n, str) and n == os.path.basename(n) and n not in ("", ".", "..")
                     for n in [plan["stage"], *names])
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            keep = stage.name
            moved = [n for n in names if (stage / n).exists()]
            for n in moved:
                os.replace(stage / n, out / n)
            done.append(f"completed an interrupted commit ({', '.join(moved) or 'nothing left to move'})")
            _finish(out, stage)
        else:  # cannot happen with an atomically written journal; never guess
            journal.unlink()
            done.append(f"removed an unreadable {JOURNAL_NAME}")
    for name in sorted(os.listdir(out)):
        if name != keep and _STALE.match(name):
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(f"removed {name} (left by an interrupted run)")
    return done


@contextlib.contextmanager
def deferred_signals(signals=DEFERRED_SIGNALS):
    """Hold back ``signals`` (SIGINT, SIGTERM, SIGHUP) inside the block and deliver them,
    to the handlers there were before, when it ends. Only in the main thread (where
    Python runs signal handlers); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for s in signals:
        prev = signal.getsignal(s)
        if prev is None:  # a handler installed outside Python: leave it alone
            continue
        old[s] = signal.signal(s, lambda n, _frame: got.append(n))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)


def pause_point(phase: str) -> None:
    """Test-only hook for the fault-injection tests (tests/test_faults.py).

    With ``ENGINE_TEST_PAUSE_AT=PHASE`` and ``ENGINE_TEST_PAUSE_FILE=PATH`` in the
    environment, a run that reaches ``phase`` writes ``"<pid> <phase>"`` to PATH and
    waits until PATH is deleted (at most 120 s), so a test can send a signal or start a
    second run at that moment. Phases: ``simulation`` (before the data is built),
    ``compile``, ``training``, ``evaluation`` (first evaluation epoch), ``writing`` (the
    staged result files are complete, nothing is moved in yet), ``commit`` (between the
    first and the later renames), ``sweep_point`` (a sweep, after each point's result and
    sweep.csv are written: ``engine.run.sweep``); ``worker_task`` is a Dask worker's
    (``engine.run.workers``). Without those variables it does nothing.
    """
    if os.environ.get("ENGINE_TEST_PAUSE_AT") != phase:
        return
    path = os.environ.get("ENGINE_TEST_PAUSE_FILE")
    if not path:
        return
    with open(path, "w") as f:
        f.write(f"{os.getpid()} {phase}\n")
    deadline = time.monotonic() + 120
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def shown_rows(rows: list, max_rows: int) -> list:
    """The rows a summary table shows: all, or the first and last ``max_rows // 2`` with
    None standing for the ones left out."""
    return rows if len(rows) <= max_rows else rows[: max_rows // 2] + [None] + rows[-max_rows // 2:]
