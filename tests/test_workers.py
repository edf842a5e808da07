"""Evaluation over worker processes (engine/run/workers.py, ``run --workers N``,
``execution.workers``): the results of a saved model are the same whatever N.

Each case starts a Dask LocalCluster (about a second here) whose workers build the data and
map the model file; the runs call ``engine.cli.main`` in this process.
"""

import json
from pathlib import Path

import pytest

from engine.cli import main

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
#: fields that measure time or the machine, or how the evaluation was spread
VOLATILE = {"compile_s", "run_s", "train_s", "data_s", "data_compile_s", "matching_step_s", "openmp_wait_policy",
            "openmp_wait_policy_source", "workers", "eval_s", "cluster_start_s", "kernel_calls"}


def _run(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _episodes(folder):
    lines = (folder / "episodes.csv").read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("seconds") if "seconds" in header else None
    return [[v for i, v in enumerate(line.split(",")) if i != drop] for line in lines]


def _summary(folder):
    s = json.loads((folder / "summary.json").read_text())
    return s, {k: v for k, v in s.items() if k not in VOLATILE and k != "config"}


@pytest.mark.parametrize("config, extra, counts", [
    ("demo.yaml", [], (2,)),
    ("nearest_spiral.yaml", ["--set", "data.size=400", "--set", "experiment.max_train_steps=400",
                             "--set", "experiment.max_eval_steps=400", "--set", "experiment.n_eval_epochs=3"], (3,)),
    ("recorded_evidence.yaml", [], (2, 3)),
])
def test_same_results_whatever_the_workers(tmp_path, capsys, config, extra, counts):
    cfg = ROOT / "configs" / config
    model = tmp_path / "m.npz"
    assert _run(capsys, "train", cfg, "--save", model, "-q", *extra)[0] == 0
    rc, out, err = _run(capsys, "run", cfg, "--model", model, "--out", tmp_path / "w1", "-q", *extra)
    assert rc == 0, err
    one, one_fields = _summary(tmp_path / "w1")
    assert one["workers"] == 1 and one["cluster_start_s"] is None and one["eval_s"] == one["run_s"]
    for n in counts:
        rc, out, err = _run(capsys, "run", cfg, "--model", model, "--out", tmp_path / f"w{n}", "-q",
                            "--workers", n, *extra)
        assert rc == 0, err
        assert _episodes(tmp_path / f"w{n}") == _episodes(tmp_path / "w1")
        many, many_fields = _summary(tmp_path / f"w{n}")
        assert many_fields == one_fields
        assert many["workers"] == n and many["config"]["execution"]["workers"] == n
        assert many["cluster_start_s"] > 0 and many["eval_s"] > 0 and many["run_s"] >= many["eval_s"]
        assert err == ""  # the cluster's log lines stay quiet


def test_workers_need_a_saved_model(tmp_path, capsys):
    rc, out, err = _run(capsys, "run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "o", "--workers", 2)
    assert rc == 2 and err.count("\n") == 1 and "evaluates a saved model" in err and "--model" in err
    rc, out, err = _run(capsys, "run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "o", "--workers", 0)
    assert rc == 2 and "execution.workers: expected an integer >= 1 and <= 1024, got 0" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
