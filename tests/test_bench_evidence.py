"""Tests of the evidence benchmark suite (engine.bench.evidence): a tiny run's rows, the JSON
output, skipped rows, the table and the CLI entry. No wall-clock assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bench import evidence as bench_evidence

SIZES = (1, 2)
CONTRACT = {"suite": str, "case": str, "implementation": str, "n_objects": int, "n_hypotheses": float,
            "matching_step_s": float, "train_s": float, "accuracy": float}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "evidence.json"
    rows = bench_evidence.run_evidence_suite(sizes=SIZES, repeats=2, json_path=path, n_points=800,
                                             eval_rotations=1, train_steps=60, eval_steps=30,
                                             workers_rows=False)
    return rows, json.loads(path.read_text())


def test_one_row_per_size_and_updater(run):
    rows, data = run
    assert [(r["n_objects"], r["implementation"]) for r in data] == [
        (n, impl) for n in SIZES for impl in ("engine-burst", "engine-classic")]
    assert len(rows) == len(data)


def test_json_rows_keep_the_contract_keys_and_types(run):
    _, data = run
    for r in data:
        assert tuple(r) == bench_evidence.ROW_KEYS
        for key, typ in CONTRACT.items():
            v = r[key]
            assert isinstance(v, (int, float) if typ is float else typ) and not isinstance(v, bool), (key, v)
        assert r["suite"] == "evidence"
        assert r["case"] == f"{r['n_objects']}obj"
        assert r["skipped"] is None
        assert r["n_hypotheses"] > 0
        assert r["matching_step_s"] > 0
        assert r["train_s"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["n_eval_episodes"] == r["n_objects"]   # one rotation per object
        assert r["matching_steps"] > 0 and r["mean_steps"] > 0
        assert 0 < r["nodes_per_object"] <= 2000
        assert r["n_points"] == 800 and r["train_steps"] == 60 and r["eval_steps"] == 30
        assert r["ns_per_hypothesis_step"] > 0 and r["vs_tbp_monty"] > 0


def test_classic_holds_every_node_rotation(run):
    _, data = run
    by = {(r["n_objects"], r["implementation"]): r for r in data}
    for n in SIZES:
        # the classic updater starts from every node x candidate rotation; burst from a sample
        assert by[(n, "engine-classic")]["n_hypotheses"] >= by[(n, "engine-burst")]["n_hypotheses"] * 0.5


def test_table(run):
    rows, data = run
    for source in (rows, data):
        text = bench_evidence.format_evidence(source)
        assert "engine-burst" in text and "engine-classic" in text
        assert "14.0 ms" in text
        assert "Linear in hypotheses" in text


def test_rows_over_the_memory_limit_are_skipped_with_a_reason(tmp_path):
    path = tmp_path / "skip.json"
    rows = bench_evidence.run_evidence_suite(sizes=(1,), repeats=1, json_path=path, n_points=400,
                                             eval_rotations=1, train_steps=20, eval_steps=10,
                                             updaters=("classic",), memory_fraction=1e-9, workers_rows=False)
    data = json.loads(path.read_text())
    assert len(data) == 1 and len(rows) == 1
    r = data[0]
    assert r["implementation"] == "engine-classic" and r["n_objects"] == 1
    assert isinstance(r["skipped"], str) and "MemAvailable" in r["skipped"]
    assert r["matching_step_s"] is None and r["est_memory_mb"] > 0
    assert "skipped:" in bench_evidence.format_evidence(rows)


def test_memory_estimate_grows_with_objects():
    from engine.models.evidence.settings import EvidenceSettings

    s = EvidenceSettings(updater="classic", graph="grid")
    one = bench_evidence.estimate_memory_bytes(1, s)
    assert bench_evidence.estimate_memory_bytes(100, s) == pytest.approx(100 * one)
    assert bench_evidence.estimate_memory_bytes(1, EvidenceSettings(updater="burst")) <= one


def test_object_names():
    names = bench_evidence.object_names(23)
    assert names[:10] == ["box", "sphere", "cylinder", "cone", "torus", "capsule", "mug", "bowl", "banana", "die"]
    assert names[10:13] == ["box~1", "sphere~1", "cylinder~1"]
    assert names[20:] == ["box~2", "sphere~2", "cylinder~2"]
    assert len(set(names)) == 23


def test_cli_lists_the_suite():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "engine", "bench", "--suite", "evidence", "--help"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "evidence" in out.stdout


def test_workers_rows(tmp_path):
    """The workers rows on a small version of shapes_10_noise (2 objects, small surfaces and
    walks): one row per worker count, the same accuracy and episodes, eval_s for each."""
    pytest.importorskip("distributed")
    rows = bench_evidence.run_workers_rows(data_overrides={
        "objects": ["box", "mug"], "n_points": 600, "train_steps": 40, "eval_rotations": 2, "eval_steps": 20})
    assert [r["implementation"] for r in rows] == ["engine-workers-1", "engine-workers-2"]
    one, two = rows
    for r in rows:
        assert tuple(r) == bench_evidence.ROW_KEYS and r["case"] == "workers" and r["skipped"] is None
        assert r["n_objects"] == 2 and r["n_eval_episodes"] == 4 and r["eval_rotations"] == 2
        assert r["eval_s"] > 0 and r["matching_step_s"] > 0 and 0.0 <= r["accuracy"] <= 1.0
    assert one["workers"] == 1 and one["cluster_start_s"] is None and one["worker_setup_s"] is None
    assert two["workers"] == 2 and two["cluster_start_s"] > 0 and two["worker_setup_s"] > 0
    assert (one["accuracy"], one["mean_steps"]) == (two["accuracy"], two["mean_steps"])
    text = bench_evidence.format_evidence(rows)
    assert "Evaluation over workers (shapes_10_noise.yaml from a saved model: 2 objects, 4 episodes" in text
    assert "1 worker: eval_s" in text and "2 workers: eval_s" in text and "cluster start" in text and "worker setup" in text


def test_module_rows():
    """bench --suite evidence's modules rows on a small setting: every key, one row per count, the
    per-module time the step time over the modules, and the table's lines."""
    from engine.bench.modules import format_modules, run_module_rows

    rows = run_module_rows(bench_evidence.ROW_KEYS, counts=(1, 2), n_points=800, train_steps=30, eval_rotations=1,
                           eval_steps=30, cost_steps=5, repeats=1)
    assert [r["n_modules"] for r in rows] == [1, 2]
    for r in rows:
        assert tuple(r) == bench_evidence.ROW_KEYS and r["case"] == "modules"
        assert r["matching_step_s"] > 0 and r["module_step_s"] == pytest.approx(r["matching_step_s"] / r["n_modules"])
        assert 0 <= r["accuracy"] <= 1 and 1 <= r["mean_steps"] <= 30
        assert r["n_eval_episodes"] == 10
    text = "\n".join(format_modules(rows))
    assert "ms/module-step" in text and "all-to-all voting" in text
    assert "\n".join(format_modules(rows)) in bench_evidence.format_evidence(rows)
