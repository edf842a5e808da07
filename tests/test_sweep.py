"""Sweeps (engine/run/sweep.py, ``python -m engine sweep``): a grid or list of overrides of a
base config, one result folder per point, one training per distinct set of training settings,
``sweep.csv``; resuming an interrupted sweep; bad sweep files.

Each point's results are compared with a plain ``run`` of the base config with the point's
overrides (which trains for itself), so sharing a saved model between points cannot change a
result unseen. The sweeps use the two smallest configs (demo.yaml: the similarity model on a
cube; recorded_evidence.yaml: the evidence model on the bundled 4-object dataset) and run in
this process (``engine.cli.main``), except the one that is killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main

from cli_helpers import ok_cli, run_cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
EVIDENCE = ROOT / "configs" / "recorded_evidence.yaml"

DEMO_SWEEP = f"""\
base: {DEMO}
set:
  experiment.n_eval_epochs: 2
grid:
  model.confidence_threshold: [0.3, 0.9]
  experiment.max_train_steps: [20, 50]
"""
#: the folders the grid above must produce (written out here, not computed by the code under test)
DEMO_POINTS = {
    "model.confidence_threshold=0.3__experiment.max_train_steps=20": ["model.confidence_threshold=0.3",
                                                                      "experiment.max_train_steps=20"],
    "model.confidence_threshold=0.3__experiment.max_train_steps=50": ["model.confidence_threshold=0.3",
                                                                      "experiment.max_train_steps=50"],
    "model.confidence_threshold=0.9__experiment.max_train_steps=20": ["model.confidence_threshold=0.9",
                                                                      "experiment.max_train_steps=20"],
    "model.confidence_threshold=0.9__experiment.max_train_steps=50": ["model.confidence_threshold=0.9",
                                                                      "experiment.max_train_steps=50"],
}

#: base relative to the sweep file's folder (the sweep file is written into a temporary folder)
EVIDENCE_SWEEP = """\
base: {base}
list:
  - {}
  - {evidence.max_nneighbors: 10, evidence.x_percent_threshold: 10}
  - {evidence.voxels_per_dim: 50}
"""
EVIDENCE_POINTS = {
    "base": [],
    "evidence.max_nneighbors=10__evidence.x_percent_threshold=10": ["evidence.max_nneighbors=10",
                                                                   "evidence.x_percent_threshold=10"],
    "evidence.voxels_per_dim=50": ["evidence.voxels_per_dim=50"],
}




def _episodes(folder):
    with (folder / "episodes.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _table(path, drop=("step_s", "eval_s")):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def _write_sweep(folder: Path, text: str, name="sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def demo_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo_sweep")
    sweep = _write_sweep(tmp, DEMO_SWEEP)
    assert main(["sweep", str(sweep), "--out", str(tmp / "out"), "-q"]) == 0
    return sweep, tmp / "out"


@pytest.fixture(scope="module")
def evidence_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evidence_sweep")
    sweep = _evidence_sweep_file(tmp / "sweep")
    assert main(["sweep", str(sweep), "--out", str(tmp / "out"), "-q"]) == 0
    return tmp / "out"


def _evidence_sweep_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return _write_sweep(folder, EVIDENCE_SWEEP.replace("{base}", os.path.relpath(EVIDENCE, folder)))


def test_grid_sweep_folders_models_and_csv(demo_sweep, capsys, tmp_path):
    sweep, out = demo_sweep
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([*DEMO_POINTS, "models"])
    # two distinct training settings (max_train_steps); the threshold is an evaluation setting
    assert len(list((out / "models").glob("similarity-*.npz"))) == 2
    rows = _table(out / "sweep.csv", drop=())
    assert list(rows[0]) == ["point", "model.confidence_threshold", "experiment.max_train_steps", "model",
                             "n_eval_episodes", "accuracy", "accuracy_incl_mlh", "mean_rotation_error_deg",
                             "mean_steps", "mean_eval_confidence", "step_s", "eval_s"]
    assert [r["point"] for r in rows] == list(DEMO_POINTS)
    models = {}
    for row in rows:
        name = row["point"]
        sets = [a for kv in DEMO_POINTS[name] for a in ("--set", kv)]
        threshold, steps = (kv.split("=")[1] for kv in DEMO_POINTS[name])
        assert (row["model.confidence_threshold"], row["experiment.max_train_steps"]) == (threshold, steps)
        models.setdefault(steps, set()).add(row["model"])
        direct = tmp_path / name
        ok_cli(capsys, "run", DEMO, "--out", direct, "-q", "--set", "experiment.n_eval_epochs=2", *sets)
        assert _episodes(out / name) == _episodes(direct)  # the shared training changed nothing
        want = _summary(direct)
        assert int(row["n_eval_episodes"]) == want["n_eval_episodes"] == 2
        assert float(row["mean_eval_confidence"]) == want["mean_eval_confidence"]
        assert float(row["mean_steps"]) == want["eval_steps"] / 2
        assert row["accuracy"] == "" and float(row["step_s"]) > 0
        point = json.loads((out / name / "point.json").read_text())
        assert point["overrides"] == {"model.confidence_threshold": float(threshold),
                                      "experiment.max_train_steps": int(steps)}
        assert point["digest"].startswith("sha256:") and point["config"]["experiment"]["n_eval_epochs"] == 2
    assert all(len(m) == 1 for m in models.values()) and models["20"] != models["50"]


def test_list_sweep_shares_training_across_evaluation_settings(evidence_sweep, capsys, tmp_path):
    out = evidence_sweep
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([*EVIDENCE_POINTS, "models"])
    # max_nneighbors and x_percent_threshold are evaluation settings; voxels_per_dim is learned
    assert len(list((out / "models").glob("evidence-*.npz"))) == 2
    rows = {r["point"]: r for r in _table(out / "sweep.csv")}
    assert list(rows) == list(EVIDENCE_POINTS)
    assert rows["base"]["model"] == rows["evidence.max_nneighbors=10__evidence.x_percent_threshold=10"]["model"]
    assert rows["base"]["model"] != rows["evidence.voxels_per_dim=50"]["model"]
    assert rows["base"]["evidence.max_nneighbors"] == "5"  # the base's value where a point sets none
    assert rows["evidence.voxels_per_dim=50"]["evidence.voxels_per_dim"] == "50"
    for name, kvs in EVIDENCE_POINTS.items():
        direct = tmp_path / name
        ok_cli(capsys, "run", EVIDENCE, "--out", direct, "-q", *[a for kv in kvs for a in ("--set", kv)])
        assert _episodes(out / name) == _episodes(direct)
        want = _summary(direct)
        for key in ("accuracy", "accuracy_incl_mlh", "mean_rotation_error_deg", "mean_steps"):
            assert rows[name][key] == ("" if want[key] is None else repr(want[key])), key
        assert int(rows[name]["n_eval_episodes"]) == want["n_eval_episodes"] == 8
        assert _summary(out / name)["model_path"] == str(out / rows[name]["model"])


def test_resume_runs_only_what_is_missing(tmp_path, capsys):
    sweep = _write_sweep(tmp_path, DEMO_SWEEP)
    out = tmp_path / "out"
    ok_cli(capsys, "sweep", sweep, "--out", out, "-q")
    first = _table(out / "sweep.csv")
    names = list(DEMO_POINTS)
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    model_stamps = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    (out / names[1] / "summary.json").unlink()  # an interrupted point
    text = ok_cli(capsys, "sweep", sweep, "--out", out)
    assert "4 points (1 run, 3 complete already); 0 models trained, 1 reused" in text
    assert _table(out / "sweep.csv") == first
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in names if n != names[1]} == \
        {n: s for n, s in stamps.items() if n != names[1]}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == model_stamps
    # an evaluation setting changed for every point: every point runs again, nothing is trained
    sweep.write_text(DEMO_SWEEP.replace("n_eval_epochs: 2", "n_eval_epochs: 3"))
    text = ok_cli(capsys, "sweep", sweep, "--out", out)
    assert "4 points (4 run, 0 complete already); 0 models trained, 2 reused" in text
    assert {int(r["n_eval_episodes"]) for r in _table(out / "sweep.csv")} == {3}
    # a corrupt saved model is trained again, not used
    sweep.write_text(DEMO_SWEEP)
    victim = sorted((out / "models").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    text = ok_cli(capsys, "sweep", sweep, "--out", out)
    assert "4 points (4 run, 0 complete already); 1 models trained, 1 reused" in text
    assert _table(out / "sweep.csv") == first


def _sweep_paused_after_its_first_point(tmp_path, engine_env):
    """A demo sweep in a subprocess, stopped once its first point is complete
    (ENGINE_TEST_PAUSE_AT=sweep_point): (sweep file, output folder, process). The process gets
    SIGINT's default action even when pytest runs with it ignored (a background job)."""
    sweep = _write_sweep(tmp_path, DEMO_SWEEP)
    out = tmp_path / "out"
    flag = tmp_path / "pause"
    env = dict(engine_env, ENGINE_TEST_PAUSE_AT="sweep_point", ENGINE_TEST_PAUSE_FILE=str(flag))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "sweep", str(sweep), "--out", str(out), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep did not complete a point"
        time.sleep(0.01)
    return sweep, out, proc


def test_killed_sweep_resumes_to_the_same_csv(tmp_path, capsys, demo_sweep, engine_env):
    """SIGKILL right after the first point is complete (ENGINE_TEST_PAUSE_AT=sweep_point); the
    sweep run again runs the other points only, and sweep.csv is the uninterrupted sweep's."""
    sweep, out, proc = _sweep_paused_after_its_first_point(tmp_path, engine_env)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(_table(out / "sweep.csv")) == 1
    text = ok_cli(capsys, "sweep", sweep, "--out", out)
    assert "4 points (3 run, 1 complete already)" in text
    assert _table(out / "sweep.csv") == _table(demo_sweep[1] / "sweep.csv")
    for name in DEMO_POINTS:
        assert _episodes(out / name) == _episodes(demo_sweep[1] / name)
        assert not [n for n in os.listdir(out / name) if n.startswith(".engine")]


def test_interrupted_sweep_says_how_to_resume(tmp_path, engine_env):
    """Ctrl-C (SIGINT) after the first point: exit 130, one line that says what is kept."""
    sweep, out, proc = _sweep_paused_after_its_first_point(tmp_path, engine_env)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"interrupted: the points completed so far keep their results in {out} "
                                            "(sweep.csv lists them); run the sweep again to resume")
    assert "Traceback" not in err and len(_table(out / "sweep.csv")) == 1
    assert not [n for n in os.listdir(out) if n.startswith(".engine")]


def test_sweep_over_workers_same_results(evidence_sweep, capsys, tmp_path):
    pytest.importorskip("distributed")
    sweep = _evidence_sweep_file(tmp_path / "sweep")
    ok_cli(capsys, "sweep", sweep, "--out", tmp_path / "out", "-q", "--workers", 2)
    assert _table(tmp_path / "out" / "sweep.csv") == _table(evidence_sweep / "sweep.csv")
    for name in EVIDENCE_POINTS:
        assert _episodes(tmp_path / "out" / name) == _episodes(evidence_sweep / name)
        s = _summary(tmp_path / "out" / name)
        assert s["workers"] == 2 and s["cluster_start_s"] > 0 and s["config"]["execution"]["workers"] == 2


# --------------------------------------------------------------------------- bad sweep files

GOOD_GRID = "grid:\n  model.confidence_threshold: [0.5]\n"
BAD = {
    "unknown_key": (f"base: {DEMO}\n{GOOD_GRID}grdi: 1\n", "grdi: unknown key (allowed: base, set, grid, list, "
                                                           "output_dir)"),
    "missing_base": (GOOD_GRID, "base: required"),
    "base_not_found": (f"base: nope.yaml\n{GOOD_GRID}", "nope.yaml: config file not found"),
    "base_not_a_name": (f"base: [a]\n{GOOD_GRID}", "base: expected a config file name"),
    "base_invalid": ("base: bad_base.yaml\n" + GOOD_GRID, "model.bogus: unknown key"),
    "unknown_override": (f"base: {DEMO}\ngrid:\n  evidence.max_neighbors: [5]\n",
                         "grid.evidence.max_neighbors: unknown config key"),
    "unknown_list_key": (f"base: {DEMO}\nlist:\n  - {{model.confidence: 0.5}}\n",
                         "list[0].model.confidence: unknown config key"),
    "empty_grid": (f"base: {DEMO}\ngrid: {{}}\n", "grid: empty"),
    "grid_not_mapping": (f"base: {DEMO}\ngrid: [1, 2]\n", "grid: expected a mapping of config keys to lists"),
    "grid_value_not_list": (f"base: {DEMO}\ngrid:\n  model.confidence_threshold: 0.5\n",
                            "grid.model.confidence_threshold: expected a non-empty list of values, got 0.5"),
    "grid_value_empty": (f"base: {DEMO}\ngrid:\n  model.confidence_threshold: []\n",
                         "expected a non-empty list of values"),
    "grid_repeated_value": (f"base: {DEMO}\ngrid:\n  model.confidence_threshold: [0.5, 0.5]\n",
                            "the value 0.5 appears twice"),
    "list_not_list": (f"base: {DEMO}\nlist: {{a: 1}}\n", "list: expected a non-empty list of mappings"),
    "list_item_not_mapping": (f"base: {DEMO}\nlist: [1]\n", "list[0]: expected a mapping"),
    "list_repeated_point": (f"base: {DEMO}\nlist:\n  - {{model.confidence_threshold: 0.5}}\n"
                            f"  - {{model.confidence_threshold: 0.5}}\n", "list[1]: repeats point 0"),
    "grid_and_list": (f"base: {DEMO}\n{GOOD_GRID}list: [{{}}]\n", "not both"),
    "no_points": (f"base: {DEMO}\n", "expected one of grid"),
    "too_many_points": (f"base: {DEMO}\ngrid:\n  experiment.n_eval_epochs: {list(range(1, 31))}\n"
                        f"  experiment.max_eval_steps: {list(range(1, 31))}\n"
                        f"  experiment.max_train_steps: {list(range(1, 31))}\n",
                        "27,000 points; a sweep may have at most 10,000"),
    "bad_value": (f"base: {DEMO}\ngrid:\n  model.confidence_threshold: [0.5, 2]\n",
                  "point model.confidence_threshold=2: "),
    "wrong_type": (f"base: {DEMO}\ngrid:\n  experiment.n_eval_epochs: [two]\n", "expected an integer"),
    "reserved_key": (f"base: {DEMO}\ngrid:\n  output_dir: [a, b]\n", "grid.output_dir: a sweep sets it itself"),
    "set_not_mapping": (f"base: {DEMO}\nset: 3\n{GOOD_GRID}", "set: expected a mapping"),
    "malformed": (f"base: {DEMO}\ngrid: [\n", "malformed YAML"),
    "not_a_mapping": ("- 1\n- 2\n", "expected a mapping with base and grid"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_file_exit_2(tmp_path, capsys, case):
    text, expected = BAD[case]
    (tmp_path / "bad_base.yaml").write_text("model: {type: similarity, bogus: 1}\ndata: {source: cube}\n")
    sweep = _write_sweep(tmp_path, text)
    rc, out, err = run_cli(capsys, "sweep", sweep, "--out", tmp_path / "out")
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err and str(sweep) in err, err
    assert not (tmp_path / "out").exists()


def test_bad_sweep_command_line(tmp_path, capsys, engine_env):
    rc, out, err = run_cli(capsys, "sweep", tmp_path / "none.yaml", "--out", tmp_path / "out")
    assert rc == 2 and "none.yaml: sweep file not found" in err and err.count("\n") == 1
    sweep = _write_sweep(tmp_path, f"base: {DEMO}\n{GOOD_GRID}")
    rc, out, err = run_cli(capsys, "sweep", sweep, "--out", tmp_path / "out", "--workers", 0)
    assert rc == 2 and "--workers: expected an integer 1..1024, got 0" in err
    # through python -m engine: one line, exit 2, no traceback
    (tmp_path / "s2.yaml").write_text(f"base: {DEMO}\ngrid:\n  data.sidee: [1]\n")
    p = subprocess.run([sys.executable, "-m", "engine", "sweep", str(tmp_path / "s2.yaml"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=engine_env, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "grid.data.sidee: unknown config key" in p.stderr and "did you mean 'data.side'?" in p.stderr
    assert not (tmp_path / "out").exists()
