"""Fault injection: signals at each phase of a run, concurrent runs into one folder, a full
disk, a read-only output folder.

After any fault the output folder must hold the earlier complete result or the new one
(summary.json and episodes.csv from the same run), never a mix, and no temporary file
(after SIGKILL: none once the folder is recovered); a second run into a folder that a run
is writing fails with a clear error; an unwritable folder is refused before anything runs.

Runs are subprocesses of ``python -m engine run`` on the demo and on a small evidence
config; ``ENGINE_TEST_PAUSE_AT`` / ``ENGINE_TEST_PAUSE_FILE`` (engine.run.results.pause_point,
test-only) stop a run at the start of a phase so that the signal lands there. Each folder
starts with an earlier result of a different run (more evaluation episodes), so an old
summary beside new episodes, or the reverse, is seen by the row counts.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.run import results

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
PAIR = ["episodes.csv", "summary.json"]

SMALL_EVIDENCE = """\
experiment:
  name: small_evidence
  n_train_epochs: 1
  n_eval_epochs: 1
  max_eval_steps: 500
model:
  type: evidence
evidence:
  updater: burst
  max_nneighbors: 5
  graph: grid
data:
  source: shapes
  objects: [box, sphere]
  train_steps: 50
  eval_rotations: 1
  eval_steps: 20
  noise: false
  seed: 0
"""

# (config, --set overrides of the earlier run, eval episodes of the earlier run, of the new run)
CASES = {
    "demo": (DEMO, ["--set", "experiment.n_eval_epochs=2"], 2, 1),
    "evidence": (None, ["--set", "data.eval_rotations=2"], 4, 2),
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    for k in ("ENGINE_TEST_PAUSE_AT", "ENGINE_TEST_PAUSE_FILE"):
        e.pop(k, None)
    return e


@pytest.fixture(scope="session")
def setup(tmp_path_factory, env):
    """Configs, a warm kernel cache, and each config's earlier result (a finished run)."""
    base = tmp_path_factory.mktemp("faults")
    small = base / "small_evidence.yaml"
    small.write_text(SMALL_EVIDENCE)
    configs = {"demo": DEMO, "evidence": str(small)}
    p = subprocess.run([sys.executable, "-m", "engine", "-q", "warmup", DEMO, str(small)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    earlier = {}
    for name, (_, overrides, n_eval, _) in CASES.items():
        out = base / f"earlier_{name}"
        p = engine("run", configs[name], "--out", str(out), *overrides, env=env)
        assert p.returncode == 0, p.stderr
        assert eval_rows(out) == n_eval  # what the earlier run was asked for
        earlier[name] = pair(out)
    return {"configs": configs, "earlier": earlier}


def engine(*args, env, timeout=120):
    return subprocess.run([sys.executable, "-m", "engine", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def pair(out: Path) -> tuple[bytes, bytes]:
    return (out / "summary.json").read_bytes(), (out / "episodes.csv").read_bytes()


def eval_rows(out: Path) -> int:
    """Evaluation episodes in episodes.csv, checked against summary.json's count (a mix
    of two runs fails here)."""
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    summary = json.loads((out / "summary.json").read_text())
    evals = [r for r in rows if r.get("mode", "eval") == "eval"]
    assert len(evals) == summary["n_eval_episodes"], "summary.json and episodes.csv are from different runs"
    if "mode" in rows[0]:
        assert len(rows) - len(evals) == summary["n_train_episodes"]
    return len(evals)


def folder_with_earlier_result(tmp_path: Path, setup, name: str) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    s, e = setup["earlier"][name]
    (out / "summary.json").write_bytes(s)
    (out / "episodes.csv").write_bytes(e)
    return out


def start_paused(config: str, out: Path, phase: str, env, tmp_path: Path, *extra, preexec_fn=None):
    """A run into ``out`` stopped at the start of ``phase``: (process, pause file)."""
    flag = tmp_path / f"pause_{phase}_{time.monotonic_ns()}"
    penv = dict(env, ENGINE_TEST_PAUSE_AT=phase, ENGINE_TEST_PAUSE_FILE=str(flag))

    def child_signals():
        # the run gets SIGINT's and SIGHUP's defaults even when pytest itself runs with them ignored
        # (a job a non-interactive shell started in the background, nohup): Python then raises
        # KeyboardInterrupt, and the engine's SIGHUP handler is installed
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", config, "--out", str(out), *extra], env=penv,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=child_signals)
    deadline = time.monotonic() + 120
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {phase}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach {phase}")
        time.sleep(0.01)
    return proc, flag


# --------------------------------------------------------------------------- signals at each phase

PHASES = ["simulation", "compile", "training", "evaluation", "writing"]
SIGNALS = {"INT": (signal.SIGINT, 130, "interrupted"), "TERM": (signal.SIGTERM, 143, "terminated (SIGTERM)"),
           "KILL": (signal.SIGKILL, -9, None)}
# every signal at every phase on the demo; one signal per phase on the evidence config
SIGNAL_CASES = [("demo", ph, s) for ph in PHASES for s in SIGNALS] + [
    ("evidence", ph, s) for ph, s in zip(PHASES, ["TERM", "INT", "KILL", "TERM", "INT"])]


@pytest.mark.parametrize("name,phase,sig", SIGNAL_CASES)
def test_signal_before_the_commit_keeps_the_earlier_result(tmp_path, setup, env, name, phase, sig):
    out = folder_with_earlier_result(tmp_path, setup, name)
    proc, _flag = start_paused(setup["configs"][name], out, phase, env, tmp_path)
    signum, rc, word = SIGNALS[sig]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert pair(out) == setup["earlier"][name]  # the earlier result, byte for byte
    if word is not None:  # a handled signal: clean exit, no temporaries, a true message
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == (f"{word}: no result files were written; earlier results in "
                                                f"{out}, if any, are unchanged")
        assert sorted(os.listdir(out)) == PAIR
    else:  # SIGKILL: the lock file (and at "writing" the staged files) stay until recovered
        left = set(os.listdir(out)) - set(PAIR)
        if phase == "writing":
            assert any(n.startswith(results.STAGE_PREFIX) for n in left)
        assert left <= {results.LOCK_NAME} | {n for n in left if n.startswith(results.STAGE_PREFIX)}
        results.recover(out)
        assert sorted(os.listdir(out)) == PAIR
        assert pair(out) == setup["earlier"][name]


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_signal_during_the_commit_is_delivered_after_it(tmp_path, setup, env, sig):
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    proc, flag = start_paused(DEMO, out, "commit", env, tmp_path)
    signum, rc, word = SIGNALS[sig]
    proc.send_signal(signum)
    time.sleep(0.2)
    flag.unlink()  # let the commit go on: the signal waits for its end
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert err.strip().splitlines()[-1] == f"{word}: the results were written to {out} before the signal arrived"
    assert eval_rows(out) == CASES["demo"][3]  # the new result, whole
    assert sorted(os.listdir(out)) == PAIR


@pytest.mark.parametrize("ignored", [False, True])
def test_sighup_cleans_up_unless_ignored(tmp_path, setup, env, ignored):
    """SIGHUP ends a run as SIGTERM does (exit 129); under nohup (SIGHUP ignored) the run goes on."""
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignored else None
    proc, flag = start_paused(DEMO, out, "training", env, tmp_path, preexec_fn=ignore)
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    flag.unlink()
    _, err = proc.communicate(timeout=60)
    assert sorted(os.listdir(out)) == PAIR
    if ignored:
        assert proc.returncode == 0, err
        assert eval_rows(out) == CASES["demo"][3]
    else:
        assert proc.returncode == 129, err
        assert err.strip().splitlines()[-1].startswith("terminated (SIGHUP): no result files were written")
        assert pair(out) == setup["earlier"]["demo"]


def test_sigkill_during_the_commit_is_completed_by_recovery(tmp_path, setup, env):
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    proc, _flag = start_paused(DEMO, out, "commit", env, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    # killed between the renames: the journal records the unfinished commit
    assert results.JOURNAL_NAME in os.listdir(out)
    assert (out / "episodes.csv").read_bytes() != setup["earlier"]["demo"][1]  # moved in before the kill
    done = results.recover(out)
    assert done and done[0].startswith("completed an interrupted commit")
    assert sorted(os.listdir(out)) == PAIR
    assert eval_rows(out) == CASES["demo"][3]  # rolled forward to the killed run's result


def test_next_run_recovers_what_a_killed_run_left(tmp_path, setup, env):
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    proc, _flag = start_paused(DEMO, out, "commit", env, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    (out / ".summary.json.0123456789ab.tmp").write_text("{")  # what the old writer could leave
    p = engine("run", DEMO, "--out", str(out), "--set", "experiment.n_eval_epochs=3", env=env)
    assert p.returncode == 0, p.stderr
    assert "completed an interrupted commit" in p.stderr and "removed .summary.json.0123456789ab.tmp" in p.stderr
    assert sorted(os.listdir(out)) == PAIR
    assert eval_rows(out) == 3


# --------------------------------------------------------------------------- concurrent runs


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, setup, env):
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    first, flag = start_paused(DEMO, out, "compile", env, tmp_path)
    try:
        t0 = time.monotonic()
        second = engine("run", DEMO, "--out", str(out), "--set", "experiment.n_eval_epochs=3", env=env)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: another run is writing to {out} (pid {first.pid}); "
                                         "wait for it to finish or choose another output folder")
        assert time.monotonic() - t0 < 30  # refused at once, not after its own run
        assert pair(out) == setup["earlier"]["demo"]
    finally:
        flag.unlink(missing_ok=True)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert eval_rows(out) == CASES["demo"][3]
    assert sorted(os.listdir(out)) == PAIR


def test_concurrent_runs_never_mix(tmp_path, setup, env):
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    procs = {n: subprocess.Popen([sys.executable, "-m", "engine", "run", DEMO, "--out", str(out),
                                  "--set", f"experiment.n_eval_epochs={n}"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
             for n in (1, 3, 4, 5)}
    finished = []
    for n, p in procs.items():
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, 2), err
        if p.returncode == 0:
            finished.append(n)
        else:
            assert err.startswith(f"error: another run is writing to {out} (pid ")
    assert finished
    assert eval_rows(out) in finished  # one whole result of a run that succeeded
    assert sorted(os.listdir(out)) == PAIR


# --------------------------------------------------------------------------- a full disk


def test_full_disk_in_process(tmp_path, setup, monkeypatch, capsys):
    """The second result file's write fails with ENOSPC: exit 2, the earlier pair intact."""
    out = folder_with_earlier_result(tmp_path, setup, "demo")
    real, calls = results.write_new_file, []

    def second_fails(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(results, "write_new_file", second_fails)
    assert main(["-q", "run", DEMO, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot write results to {out}: No space left on device; "
                   "earlier results there are unchanged\n")
    assert len(calls) == 2
    assert pair(out) == setup["earlier"]["demo"]
    assert sorted(os.listdir(out)) == PAIR


def _namespace_cmd() -> list[str]:
    """A private mount namespace (plain `unshare -m` as root, a user namespace otherwise)."""
    if shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs needs unshare(1), which is not installed; the full disk is checked "
                    "in-process by test_full_disk_in_process")
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]


def _in_namespace(script: str, tmp_path: Path, env, what: str) -> Path:
    """Run ``script`` (sh) in a private mount namespace with a tmpfs at $MNT; its findings
    go to $RES. Skips (with the reason) when the tmpfs cannot be mounted."""
    mnt, res = tmp_path / "mnt", tmp_path / "res"
    mnt.mkdir()
    res.mkdir()
    probe = subprocess.run([*_namespace_cmd(), "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(mnt)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.strip() or probe.returncode}); {what}")
    penv = dict(env, MNT=str(mnt), RES=str(res), PY=sys.executable)
    p = subprocess.run([*_namespace_cmd(), "sh", "-c", script], env=penv, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return res


def _earlier_pair_on_a_tmpfs(tmp_path: Path, setup) -> tuple[bytes, bytes, str]:
    """The demo's earlier pair, and the start of a namespace script that mounts a 256 KiB tmpfs
    at $MNT and puts that pair in $MNT/out."""
    s, e = setup["earlier"]["demo"]
    (tmp_path / "summary.json").write_bytes(s)
    (tmp_path / "episodes.csv").write_bytes(e)
    prelude = f"""
set -e
mount -t tmpfs -o size=256k tmpfs "$MNT"
mkdir "$MNT/out"
cp "{tmp_path}/summary.json" "{tmp_path}/episodes.csv" "$MNT/out/"
"""
    return s, e, prelude


def test_full_disk_on_a_small_tmpfs(tmp_path, setup, env):
    """A disk with room for one more small file (two 4 KiB pages): the run fails with
    exit 2, the earlier pair stays whole, nothing is left behind."""
    s, e, prelude = _earlier_pair_on_a_tmpfs(tmp_path, setup)
    script = prelude + f"""avail=$(df -k --output=avail "$MNT" | tail -1)
dd if=/dev/zero of="$MNT/fill" bs=1k count=$((avail - 8)) 2>/dev/null
df -k --output=avail "$MNT" | tail -1 > "$RES/avail"
set +e
"$PY" -m engine run {DEMO} --out "$MNT/out" 2> "$RES/stderr"
echo $? > "$RES/rc"
ls -A "$MNT/out" > "$RES/listing"
cp "$MNT/out/summary.json" "$MNT/out/episodes.csv" "$RES/"
"""
    res = _in_namespace(script, tmp_path, env, "the full disk is checked in-process by test_full_disk_in_process")
    assert int((res / "avail").read_text()) <= 8  # the disk really was (nearly) full
    assert (res / "rc").read_text().strip() == "2", (res / "stderr").read_text()
    err = (res / "stderr").read_text()
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert (res / "listing").read_text().split() == PAIR
    assert pair(res) == (s, e)


# --------------------------------------------------------------------------- a read-only output folder


def _refused_before_running(p, flag: Path, out: Path) -> None:
    assert p.returncode == 2, p.stderr
    assert not flag.exists()  # never reached the first phase
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: output folder {out} is not writable ("), p.stderr


def test_read_only_output_folder_is_refused_before_the_run(tmp_path, setup, env):
    flag = tmp_path / "pause"
    penv = dict(env, ENGINE_TEST_PAUSE_AT="simulation", ENGINE_TEST_PAUSE_FILE=str(flag))
    if os.geteuid() != 0:  # permissions stop an ordinary user
        out = folder_with_earlier_result(tmp_path, setup, "demo")
        out.chmod(0o555)
        try:
            _refused_before_running(engine("run", DEMO, "--out", str(out), env=penv), flag, out)
            _refused_before_running(engine("validate", DEMO, "--out", str(out), env=penv), flag, out)
            _refused_before_running(engine("run", DEMO, "--out", str(out / "sub"), env=penv), flag, out / "sub")
            assert pair(out) == setup["earlier"]["demo"]
        finally:
            out.chmod(0o755)
        return
    # root writes through permissions: a read-only mount instead
    s, e, prelude = _earlier_pair_on_a_tmpfs(tmp_path, setup)
    script = prelude + f"""mount -o remount,ro "$MNT"
set +e
for cmd in run validate; do
  ENGINE_TEST_PAUSE_AT=simulation ENGINE_TEST_PAUSE_FILE="$RES/pause" timeout 60 \\
    "$PY" -m engine $cmd {DEMO} --out "$MNT/out" > /dev/null 2> "$RES/$cmd.err"
  echo $? > "$RES/$cmd.rc"
done
ls -A "$MNT/out" > "$RES/listing"
cp "$MNT/out/summary.json" "$MNT/out/episodes.csv" "$RES/"
"""
    res = _in_namespace(script, tmp_path, env, "the check itself is covered by tests/test_results.py")
    out = tmp_path / "mnt" / "out"
    for cmd in ("run", "validate"):
        assert (res / f"{cmd}.rc").read_text().strip() == "2", (res / f"{cmd}.err").read_text()
        assert (res / f"{cmd}.err").read_text() == (f"error: output folder {out} is not writable "
                                                     "(read-only file system)\n")
    assert not (res / "pause").exists()  # refused before the run's first phase
    assert (res / "listing").read_text().split() == PAIR
    assert pair(res) == (s, e)


def test_plots_follow_the_pair(tmp_path, setup, env):
    """Extra files (the evidence model's plots) are staged and committed with the pair."""
    pytest.importorskip("matplotlib")
    out = folder_with_earlier_result(tmp_path, setup, "evidence")
    plots = ["--set", "experiment.plot_evidence=true"]
    proc, _flag = start_paused(setup["configs"]["evidence"], out, "writing", env, tmp_path, *plots)
    stage = [n for n in os.listdir(out) if n.startswith(results.STAGE_PREFIX)]
    assert len(stage) == 1 and any(n.endswith(".png") for n in os.listdir(out / stage[0]))  # staged
    assert sorted(os.listdir(out)) == sorted(PAIR + [results.LOCK_NAME] + stage)  # none moved in yet
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert sorted(os.listdir(out)) == PAIR and pair(out) == setup["earlier"]["evidence"]
    p = engine("run", setup["configs"]["evidence"], "--out", str(out), *plots, env=env)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["episodes.csv", "evidence_0_0.png", "evidence_0_1.png", "summary.json"]
    assert eval_rows(out) == CASES["evidence"][3]
