"""The command line end to end: the demo, validate, and every class of bad input.

Bad input must exit 2 with one clear message naming what and where, print no
traceback, and leave no result file behind.
"""

import csv
import json
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from engine.cli import main
from engine.data.example_data import make_example_dataset
from engine.files import atomic_write_text

SUMMARY_KEYS = {"experiment", "model", "data_source", "path", "n_train_episodes", "n_eval_episodes", "train_steps",
                "eval_steps", "stored_observations", "bytes_per_observation", "final_confidence", "eval_done",
                "reasons", "run_s", "compile_s", "config", "engine_version"}


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_demo_end_to_end(tmp_path, root, engine_env):
    out = tmp_path / "demo"
    p = cli("run", "configs/demo.yaml", "--out", str(out), env=engine_env, cwd=root)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    for word in ("mode", "epoch", "steps", "stored", "confidence", "ended", "step limit", "done"):
        assert word in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_train_episodes"] == 2 and summary["n_eval_episodes"] == 1
    assert summary["stored_observations"] == 100 and summary["bytes_per_observation"] == 16
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert [r["mode"] for r in rows] == ["train", "train", "eval"]
    assert [int(r["steps"]) for r in rows[:2]] == [50, 50]  # max_train_steps of the demo
    assert rows[2]["reason"] == "done" and float(rows[2]["confidence"]) >= 0.6
    assert int(rows[2]["steps"]) <= 30
    assert sorted(x.name for x in out.iterdir()) == ["episodes.csv", "summary.json"]  # no temp files left


def test_stepwise_flag_and_set_override(tmp_path, root):
    fused, step = tmp_path / "f", tmp_path / "s"
    assert main(["-q", "run", str(root / "configs/demo.yaml"), "--out", str(fused)]) == 0
    assert main(["-q", "run", str(root / "configs/demo.yaml"), "--out", str(step), "--stepwise"]) == 0
    assert (fused / "episodes.csv").read_text() == (step / "episodes.csv").read_text()
    assert json.loads((step / "summary.json").read_text())["path"] == "stepwise"
    over = tmp_path / "o"
    assert main(["-q", "run", str(root / "configs/demo.yaml"), "--out", str(over),
                 "--set", "experiment.n_eval_epochs=3", "--set", "model.confidence_threshold=null"]) == 0
    rows = list(csv.DictReader((over / "episodes.csv").open()))
    assert [r["mode"] for r in rows].count("eval") == 3 and rows[-1]["reason"] == "step_limit"


def test_output_dir_from_config(tmp_path, root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", str(root / "configs/demo.yaml")]) == 0
    assert (tmp_path / "results" / "demo" / "summary.json").is_file()


def test_recorded_demo_runs(tmp_path, root):
    assert main(["-q", "run", str(root / "configs/recorded_demo.yaml"), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "episodes.csv").open()))
    ds = make_example_dataset()
    assert len(rows) == ds.n_episodes
    assert {r["object"] for r in rows} == {str(n) for n in ds.object_names}


@pytest.mark.parametrize("config", ["demo.yaml", "recorded_demo.yaml", "seed_benchmark.yaml", "nearest_spiral.yaml"])
def test_validate_bundled_configs(root, config, capsys):
    assert main(["validate", str(root / "configs" / config)]) == 0
    assert ": ok (" in capsys.readouterr().out


def _dataset_arrays():
    ds = make_example_dataset()
    arrays = {f.name: getattr(ds, f.name) for f in fields(ds) if f.name not in ("meta", "sensors")}
    arrays["format"] = np.array("monty-episodes/1")
    return arrays


def _bad_npz(kind, path):
    if kind == "nan":
        a = _dataset_arrays()
        a["location"] = a["location"].copy()
        a["location"][7, 1] = np.nan
        np.savez(path, **a)
    elif kind == "truncated":
        np.savez(path, **_dataset_arrays())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickled":
        a = _dataset_arrays()
        a["object_names"] = np.array([{"cube": 1}, "sphere", "cylinder"], dtype=object)
        np.savez(path, **a)
    elif kind == "not_npz":
        path.write_text("location,features\n1,2\n")
    elif kind == "missing_key":
        a = _dataset_arrays()
        del a["pose_vectors"]
        np.savez(path, **a)


BAD_CONFIGS = {
    "malformed": ("experiment:\n  name: [unclosed\n", "malformed YAML at line"),
    "unknown_key": ("experiment:\n  n_epochs: 2\ndata:\n  source: cube\n", "experiment.n_epochs: unknown key"),
    "wrong_type": ("experiment:\n  n_train_epochs: two\ndata:\n  source: cube\n",
                   "experiment.n_train_epochs: expected an integer >= 0 and <= 1000000, got 'two'"),
    "out_of_range": ("model:\n  confidence_threshold: 2\ndata:\n  source: cube\n",
                     "model.confidence_threshold: expected a number > 0.0 and <= 1.0"),
    "missing_dataset": ("data:\n  source: dataset\n  path: nothere.npz\n", "data.path: file not found"),
}


def _assert_user_error(p, text, out_dir):
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and text in p.stderr and p.stderr.startswith("error: ")
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_exit_2(tmp_path, name, engine_env):
    text, expected = BAD_CONFIGS[name]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    _assert_user_error(cli("run", str(cfg), "--out", str(out), env=engine_env), expected, out)
    _assert_user_error(cli("validate", str(cfg), env=engine_env), expected, out)


@pytest.mark.parametrize("kind, expected", [
    ("nan", "location"), ("truncated", "truncated"), ("pickled", "pickle"), ("not_npz", "not"),
    ("missing_key", "pose_vectors"),
])
def test_bad_dataset_exit_2(tmp_path, kind, expected, engine_env):
    data = tmp_path / "d.npz"
    _bad_npz(kind, data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: dataset\n  path: d.npz\n")
    out = tmp_path / "out"
    p = cli("run", str(cfg), "--out", str(out), env=engine_env)
    _assert_user_error(p, expected, out)
    assert str(data) in p.stderr  # the message names the file


def test_in_process_errors_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: cube\n")
    assert main(["run", str(cfg), "--set", "experiment.max_train_steps=0", "--out", str(tmp_path / "o")]) == 2
    assert "experiment.max_train_steps: expected an integer >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(cfg), "--out", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["bench", "--repeats", "0"]) == 2


def test_bad_flag_exit_2(engine_env):
    p = cli("run", "--no-such-flag", env=engine_env)
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import os

    target = tmp_path / "summary.json"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_writes_nothing(tmp_path, root, monkeypatch, capsys):
    from engine.models import similarity as experiment

    def interrupt(self, timers=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment.Experiment, "run", interrupt)
    assert main(["run", str(root / "configs/demo.yaml"), "--out", str(tmp_path / "o")]) == 130
    assert not (tmp_path / "o").exists()


def test_make_dataset_command_then_run(tmp_path, capsys):
    data = tmp_path / "spiral.npz"
    assert main(["make-dataset", "--source", "seed_spiral", "--size", "300", "--out", str(data)]) == 0
    assert "600 steps" in capsys.readouterr().out
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  source: dataset\n  path: {data.name}\nmodel:\n  type: nearest\n")
    assert main(["-q", "run", str(cfg), "--out", str(tmp_path / "o")]) == 0
    assert main(["make-dataset", "--source", "cube", "--size", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert "size" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
