"""Tests of the reference implementations (engine.bench.baselines) and the seed benchmark (engine.bench.seed).

The baselines must agree with the engine episode by episode (steps, reasons,
confidence), on the seed workload and on thresholded runs with several
episodes; the benchmark must return and write rows of the documented shape.
No wall-clock assertions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.bench import baselines
from engine.bench import seed as bench
from engine.data import sources
from engine.config import from_dict
from engine.models.similarity import Experiment

BASELINES = ("numpy", "python")


def engine_run(obs, *, n_train_epochs=1, n_eval_epochs=1, max_train_steps=10_000, max_eval_steps=10_000,
               threshold=None, stepwise=False):
    cfg = from_dict({"experiment": {"n_train_epochs": n_train_epochs, "n_eval_epochs": n_eval_epochs,
                                    "max_train_steps": max_train_steps, "max_eval_steps": max_eval_steps},
                     "model": {"confidence_threshold": threshold},
                     "data": {"source": "seed_spiral"},
                     "execution": {"stepwise": stepwise}})
    return Experiment(cfg, obs).run()


def assert_agree(engine, base, rtol=1e-6):
    """Same per-episode steps, stored counts and reasons; confidences within ``rtol``."""
    np.testing.assert_array_equal(engine.train_steps, np.asarray(base.train_steps))
    np.testing.assert_array_equal(engine.train_stored, np.asarray(base.train_stored))
    np.testing.assert_array_equal(engine.train_reason, np.asarray(base.train_reason))
    np.testing.assert_array_equal(engine.eval_steps, np.asarray(base.eval_steps))
    np.testing.assert_array_equal(engine.eval_reason, np.asarray(base.eval_reason))
    assert engine.n_stored == base.n_stored
    np.testing.assert_allclose(engine.eval_confidence, np.asarray(base.eval_confidence, np.float64),
                               rtol=rtol, atol=1e-7)
    if engine.final_confidence is None:
        assert base.final_confidence is None
    else:
        assert base.final_confidence == pytest.approx(engine.final_confidence, rel=rtol)


def test_reason_codes_match_the_engine():
    from kernels import loop as kloop

    assert (baselines.DONE, baselines.DATA_EXHAUSTED, baselines.STEP_LIMIT) == (kloop.DONE, kloop.DATA_EXHAUSTED,
                                                                                 kloop.STEP_LIMIT)
    assert baselines.REASON_NAMES == kloop.REASON_NAMES


@pytest.mark.parametrize("impl", BASELINES)
@pytest.mark.parametrize("size,epochs,max_steps", [(10, 10, 10_000), (50, 10, 10_000), (37, 3, 10_000), (30, 2, 7)])
def test_baselines_agree_with_engine_on_seed_rows(impl, size, epochs, max_steps):
    obs = sources.seed_spiral(size)
    kw = dict(n_train_epochs=epochs, n_eval_epochs=epochs, max_train_steps=max_steps, max_eval_steps=max_steps)
    base = baselines.run_observations(impl, obs, **kw)
    assert_agree(engine_run(obs, **kw), base)
    assert_agree(engine_run(obs, stepwise=True, **kw), base)
    assert base.final_confidence == pytest.approx(
        baselines.run_seed(impl, size, epochs, max_steps).final_confidence, rel=0, abs=0)


@pytest.mark.parametrize("impl", BASELINES)
@pytest.mark.parametrize("obs,threshold", [
    (sources.cube(4), 0.5),
    (sources.random_points(60, n_features=1, seed=3), 0.5),
    (sources.random_points(60, n_features=0, seed=3), 0.6),
    (sources.random_points(60, n_features=3, seed=3), 0.4),
    (sources.random_points(60, n_features=3, seed=3), 0.45),   # never reached: data exhausted
], ids=["cube", "random-F1", "random-F0", "random-F3-done", "random-F3-exhausted"])
def test_baselines_agree_with_engine_thresholded(impl, obs, threshold):
    kw = dict(n_train_epochs=2, n_eval_epochs=2, threshold=threshold)
    base = baselines.run_observations(impl, obs, **kw)
    assert_agree(engine_run(obs, **kw), base)
    assert_agree(engine_run(obs, stepwise=True, **kw), base)


def multi_episode_observations():
    """Random points split into several training and evaluation episodes (one of them empty)."""
    r = sources.random_points(200, n_features=1, seed=7)
    return sources.Observations(
        r.location, r.features, r.feature_names,
        train_starts=np.array([0, 50, 120], np.int64), train_stops=np.array([50, 120, 200], np.int64),
        eval_starts=np.array([200, 260, 263, 263, 300], np.int64),
        eval_stops=np.array([260, 263, 263, 300, 400], np.int64))


@pytest.mark.parametrize("impl", BASELINES)
def test_baselines_agree_with_engine_several_episodes(impl):
    obs = multi_episode_observations()
    kw = dict(n_train_epochs=2, n_eval_epochs=2, max_train_steps=60, max_eval_steps=40, threshold=0.5)
    base = baselines.run_observations(impl, obs, **kw)
    assert_agree(engine_run(obs, **kw), base)
    assert_agree(engine_run(obs, stepwise=True, **kw), base)
    reasons = set(np.asarray(base.eval_reason).tolist()) | set(np.asarray(base.train_reason).tolist())
    assert reasons == {baselines.DONE, baselines.DATA_EXHAUSTED, baselines.STEP_LIMIT}


def test_numpy_baseline_keeps_float32():
    for n_feat in (0, 1, 3):
        obs = sources.random_points(20, n_features=n_feat, seed=1)
        store = np.ascontiguousarray(np.concatenate([obs.location[:20].T, obs.features[:20].T]))
        terms = baselines.numpy_terms(store, obs.location[0], obs.features[0])
        assert terms.dtype == np.float32 and terms.shape == (20,)
        assert type(baselines.numpy_similarity(store, obs.location[0], obs.features[0])) is np.float32
        assert type(baselines.numpy_similarity(store[:, :0], obs.location[0], obs.features[0])) is np.float32
    obs = sources.seed_spiral(20)
    # float64 inputs are converted: the run stays float32
    r = baselines.numpy_experiment(obs.location.astype(np.float64), obs.features.astype(np.float64),
                                   obs.train_starts, obs.train_stops, obs.eval_starts, obs.eval_stops,
                                   n_train_epochs=2, n_eval_epochs=2)
    assert r.eval_confidence.dtype == np.float32
    assert r.bytes_per_observation == 16
    assert r.final_confidence == baselines.run_numpy(20, 2)


@pytest.mark.parametrize("size,epochs", [(10, 10), (50, 10)])
def test_parity_of_seed_rows(size, epochs):
    expected = bench.SEED_REFERENCE[(size, epochs)]["final_confidence"]
    assert baselines.run_python(size, epochs) == pytest.approx(expected, rel=bench.PARITY_RTOL)
    assert baselines.run_numpy(size, epochs) == pytest.approx(expected, rel=bench.PARITY_RTOL)


def test_bytes_per_observation():
    assert baselines.numpy_bytes_per_observation(10_000) == pytest.approx(16, abs=0.5)
    py = baselines.python_bytes_per_observation(10_000)
    assert 100 < py < 400   # a tuple of four floats and a list pointer


def test_run_suite_rows_json_and_table(tmp_path):
    path = tmp_path / "out" / "bench.json"
    rows = bench.run_suite("seed", repeats=1, json_path=path, rows=[(10, 10)])
    assert [r["implementation"] for r in rows] == list(bench.IMPLEMENTATIONS)
    assert set(bench.IMPLEMENTATIONS) == {"engine", "engine-stepwise", "numpy", "python"}
    for r in rows:
        assert set(r) == set(bench.ROW_KEYS)
        assert r["suite"] == "seed" and r["case"] == "10x10" and (r["size"], r["epochs"]) == (10, 10)
        assert r["comparisons"] == 100 * 100
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["steps_per_s"] == pytest.approx(200 / r["median_s"])
        assert r["parity_expected"] == bench.SEED_REFERENCE[(10, 10)]["final_confidence"]
        assert r["parity_rel_error"] <= bench.PARITY_RTOL
        assert r["vs_rust"] is not None and r["vs_numpy"] is not None and r["vs_python"] is not None
        assert (r["compile_s"] is not None) == r["implementation"].startswith("engine")
        assert r["bytes_per_observation"] > 0
    by = {r["implementation"]: r for r in rows}
    assert by["numpy"]["vs_numpy"] == pytest.approx(1.0) and by["python"]["vs_python"] == pytest.approx(1.0)
    assert by["engine"]["bytes_per_observation"] == 16

    data = json.loads(path.read_text())
    assert len(data) == len(rows)
    assert all(set(d) == set(bench.ROW_KEYS) for d in data)
    assert not [p for p in path.parent.iterdir() if p.name != "bench.json"]   # no temp file left

    table = bench.format_table(rows)
    for impl in bench.IMPLEMENTATIONS:
        assert impl in table
    assert "OK" in table and "FAIL" not in table
    assert "Compile" in table and "Bytes per stored observation" in table
    assert "OpenMP workers: OMP_WAIT_POLICY" in table
    # a plain list read back from the JSON formats too
    assert all(impl in bench.format_table(data) for impl in bench.IMPLEMENTATIONS)


@pytest.mark.parametrize("warm_up", [True, False])
def test_run_suite_asks_for_a_warm_up_on_short_rows(monkeypatch, warm_up):
    calls = []
    real = bench._timed_run

    def recording(impl, case, warm=False, rust_binary=None):
        calls.append((impl, case.size, warm))
        return real(impl, case, warm, rust_binary)

    monkeypatch.setattr(bench, "_timed_run", recording)
    rows = bench.run_suite("seed", repeats=2, rows=[(10, 10)], implementations=("engine", "numpy"),
                           warm_up=warm_up)
    # the last four calls are the timed loop (the calibration and compile runs come first)
    assert calls[-4:] == [("engine", 10, warm_up), ("numpy", 10, warm_up)] * 2
    assert all(r["warm_up_runs"] == int(warm_up) for r in rows)
    table = bench.format_table(rows)
    assert ("Warm-up (runs marked +)" in table) == warm_up
    assert ("2+" in table) == warm_up


@pytest.mark.parametrize("impl", ["engine", "numpy", "python"])
@pytest.mark.parametrize("warm_up", [True, False])
def test_timed_run_warm_up_runs_the_same_implementation_once_before_the_timed_run(monkeypatch, impl, warm_up):
    from engine.models import similarity as experiment

    target = {"engine": (experiment.Experiment, "run"), "numpy": (baselines, "numpy_experiment"),
              "python": (baselines, "python_experiment")}[impl]
    real = getattr(*target)
    n = [0]

    def counting(*args, **kw):
        n[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(*target, counting)
    dt, fc, _ = bench._timed_run(impl, bench._Case(10, 10, bench.SEED_MAX_STEPS), warm_up)
    assert n[0] == 2 if warm_up else n[0] == 1
    assert dt > 0 and fc == pytest.approx(bench.SEED_REFERENCE[(10, 10)]["final_confidence"], rel=bench.PARITY_RTOL)


def test_run_suite_skips_rows_over_budget(tmp_path):
    path = tmp_path / "bench.json"
    rows = bench.run_suite("seed", repeats=1, json_path=path, rows=[(10, 10)],
                           implementations=("engine", "python"), budgets={"python": 0.0})
    assert [r["implementation"] for r in rows] == ["engine"]
    assert rows[0]["vs_python"] is None and rows[0]["vs_numpy"] is None
    assert [s["implementation"] for s in rows.skipped] == ["python"]
    assert [d["implementation"] for d in json.loads(path.read_text())] == ["engine"]
    table = bench.format_table(rows)
    assert "python" in table and "skipped" in table


@pytest.fixture
def wait_policy_env(monkeypatch):
    """A process state where nobody chose OpenMP's wait policy and the pool has not started.

    Only the recorded state is faked: libgomp read its variables when this
    process's pool started, so changing them here changes nothing real.
    """
    import kernels
    from numba.np.ufunc import parallel as numba_parallel

    monkeypatch.setenv("OMP_WAIT_POLICY", "x")   # registers the variables for restoring after the test
    monkeypatch.setenv("GOMP_SPINCOUNT", "x")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setattr(kernels, "OPENMP_WAIT_POLICY_SOURCE", "default")
    monkeypatch.setattr(numba_parallel, "_is_initialized", False)
    return kernels, numba_parallel


def test_seed_suite_keeps_workers_spinning_on_an_idle_machine(wait_policy_env):
    import os

    line = bench.keep_workers_spinning()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert line.startswith("OMP_WAIT_POLICY=ACTIVE") and "idle machine" in line


@pytest.mark.parametrize("state", ["user", "busy", "started"])
def test_seed_suite_leaves_a_chosen_wait_policy_alone(wait_policy_env, monkeypatch, state):
    import os

    kernels, numba_parallel = wait_policy_env
    if state == "user":
        monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
        monkeypatch.setattr(kernels, "OPENMP_WAIT_POLICY_SOURCE", "user")
    elif state == "busy":
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        monkeypatch.setattr(kernels, "OPENMP_WAIT_POLICY_SOURCE", "busy")
    else:
        monkeypatch.setattr(numba_parallel, "_is_initialized", True)
    line = bench.keep_workers_spinning()
    assert os.environ.get("OMP_WAIT_POLICY") != "ACTIVE"
    expected = {"user": "OMP_WAIT_POLICY unset (libgomp's default), GOMP_SPINCOUNT=1000 (set by the user)",
                "busy": "OMP_WAIT_POLICY=PASSIVE (passive: the load average was high at import; OMP_WAIT_POLICY=ACTIVE "
                        "makes the workers spin anyway)",
                "started": "OMP_WAIT_POLICY unset (libgomp's default) (thread pool already started, left as it was)"}
    assert line == expected[state]


def test_wait_policy_choice_at_import(engine_env, root):
    """In a fresh process: the user's variable is reported as the user's, and kept."""
    import subprocess
    import sys

    env = {**engine_env, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("GOMP_SPINCOUNT", None)
    code = "import os, kernels; print(kernels.OPENMP_WAIT_POLICY_SOURCE, os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["user", "PASSIVE"]


def test_scaling_rows_consume_every_observation():
    assert bench.max_steps_for(100_000) == 100_000 and bench.max_steps_for(10) == bench.SEED_MAX_STEPS
    assert bench.comparisons_of(100_000, 1) == 100_000 ** 2
    assert bench.comparisons_of(500, 5) == 2500 ** 2
    assert (10_000, 2) in bench.SUITES["seed"] and (100_000, 1) in bench.SUITES["seed"]
    with pytest.raises(ValueError):
        bench.run_suite("nope")
