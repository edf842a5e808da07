"""The evidence model from the command line: the bundled evidence configs, the fused and
stepwise paths, evidence plots, make-dataset's shapes source, and bad input.

The first run, validate, make-dataset and every bad input go through ``python -m engine``
in a subprocess; the other runs call ``engine.cli.main`` in this process, so the evidence
kernels compile (or load from the cache) once for them all. Bad input must exit 2 with
one message naming the key (or file), print no traceback and leave no result file.
Simulations are kept small (few surface points, short walks).
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from engine.cli import main
from engine.data.dataset import EVAL, TRAIN, read_dataset
from engine.models.evidence.run import EPISODE_COLUMNS

CONTRACT_KEYS = {"accuracy", "accuracy_incl_mlh", "outcomes", "mean_rotation_error_deg", "median_rotation_error_deg",
                 "p90_rotation_error_deg", "mean_steps",
                 "matching_step_s", "train_s"}
OUTCOMES = {"correct", "confused", "no_match", "time_out"}
EVIDENCE_CONFIGS = ["recorded_evidence.yaml", "my_meshes.yaml", "shapes_10.yaml"]
SMALL_SHAPES = ["--set", "data.n_points=1500", "--set", "data.train_steps=100", "--set", "data.eval_rotations=1",
                "--set", "data.eval_steps=40"]


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _ok(p):
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr


def _rows(out):
    with (out / "episodes.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == EPISODE_COLUMNS
        return list(reader)


def _check_summary(out):
    s = json.loads((out / "summary.json").read_text())
    assert CONTRACT_KEYS <= set(s)
    n = s["n_eval_episodes"]
    assert isinstance(n, int) and n > 0
    for key in ("accuracy", "accuracy_incl_mlh"):
        assert isinstance(s[key], float) and 0.0 <= s[key] <= 1.0
    assert s["accuracy_incl_mlh"] >= s["accuracy"]
    assert set(s["outcomes"]) == OUTCOMES
    assert all(isinstance(v, int) and v >= 0 for v in s["outcomes"].values())
    assert sum(s["outcomes"].values()) == n
    assert s["used_mlh"] == s["outcomes"]["time_out"] / n
    assert s["accuracy_incl_mlh"] - s["accuracy"] <= s["used_mlh"]  # only time-outs are decided by the MLH
    err = s["mean_rotation_error_deg"]
    assert err is None if s["outcomes"]["correct"] == 0 else (isinstance(err, float) and 0.0 <= err <= 180.0)
    assert isinstance(s["mean_steps"], float) and s["mean_steps"] >= 1
    assert isinstance(s["matching_step_s"], float) and s["matching_step_s"] > 0
    assert isinstance(s["train_s"], float) and s["train_s"] >= 0
    assert isinstance(s["data_s"], float) and s["data_s"] >= 0
    # the sensor's kernels are warmed up apart only when the data is simulated
    assert isinstance(s["data_compile_s"], float)
    assert (s["data_compile_s"] == 0.0) == (s["data_source"] == "dataset")
    assert isinstance(s["threads"], int) and s["threads"] >= 1
    assert s["openmp_wait_policy_source"] in ("user", "busy", "default") and s["openmp_wait_policy"]
    assert s["eval_threads"] and all(1 <= t <= s["threads"] for t in s["eval_threads"])
    rows = _rows(out)
    assert len(rows) == n
    assert all(r["outcome"] in OUTCOMES for r in rows)
    assert {k: sum(r["outcome"] == k for r in rows) for k in OUTCOMES} == s["outcomes"]
    assert np.isclose(np.mean([int(r["steps"]) for r in rows]), s["mean_steps"])
    # mean, median and 90th percentile of the correct episodes' errors, from episodes.csv (4 decimals)
    errs = [float(r["rotation_error_deg"]) for r in rows if r["outcome"] == "correct" and r["rotation_error_deg"]]
    if errs:
        for key, value in (("mean", np.mean(errs)), ("median", np.median(errs)), ("p90", np.percentile(errs, 90))):
            assert abs(s[f"{key}_rotation_error_deg"] - value) < 1e-3, key
    return s, rows


def _key_columns(rows):
    return [(r["object"], r["detected_object"], r["outcome"], r["steps"]) for r in rows]


# --------------------------------------------------------------------------- bundled configs


def test_recorded_evidence_fused_and_stepwise(tmp_path, root, engine_env):
    fused, step = tmp_path / "fused", tmp_path / "step"
    p = cli("run", "configs/recorded_evidence.yaml", "--out", fused, env=engine_env, cwd=root)
    _ok(p)
    assert "accuracy" in p.stdout
    s, rows = _check_summary(fused)
    ds = read_dataset(root / "configs/data/evidence_example.npz")
    assert s["n_eval_episodes"] == int(np.count_nonzero(ds.episode_split == EVAL)) == 8
    assert s["objects"] == ["box", "cylinder", "mug", "banana"] and s["path"] == "fused"
    assert [r["object"] for r in rows] == [str(ds.object_names[o]) for o in ds.episode_object[ds.episode_split == EVAL]]
    assert s["accuracy"] >= 0.75  # a clean, easy set (all 8 correct when it was made)
    assert sorted(x.name for x in fused.iterdir()) == ["episodes.csv", "summary.json"]

    assert main(["-q", "run", str(root / "configs/recorded_evidence.yaml"), "--out", str(step), "--stepwise"]) == 0
    s2, rows2 = _check_summary(step)
    assert s2["path"] == "stepwise"
    assert _key_columns(rows2) == _key_columns(rows)
    assert s2["outcomes"] == s["outcomes"] and s2["mean_steps"] == s["mean_steps"]


def test_time_outs_are_scored_by_the_most_likely_hypothesis(tmp_path, root):
    """A 3-step budget: no episode can decide (the terminal check waits for min_eval_steps), so
    every one times out and is scored by its MLH, as tbp.monty's used-MLH episodes are."""
    out = tmp_path / "o"
    assert main(["-q", "run", str(root / "configs/recorded_evidence.yaml"), "--out", str(out),
                 "--set", "experiment.max_eval_steps=3"]) == 0
    s, rows = _check_summary(out)
    assert s["outcomes"]["time_out"] == s["n_eval_episodes"] == 8 and s["accuracy"] == 0.0
    assert s["used_mlh"] == 1.0 and s["mean_steps"] == 3.0
    assert s["accuracy_incl_mlh"] == s["time_out_mlh_correct"] / 8
    assert s["time_out_mlh_correct"] == sum(r["mlh_object"] == r["object"] for r in rows)


def test_my_meshes_runs(tmp_path, root):
    out = tmp_path / "o"
    assert main(["-q", "run", str(root / "configs/my_meshes.yaml"), "--out", str(out), *SMALL_SHAPES]) == 0
    s, rows = _check_summary(out)
    assert s["objects"] == ["gem", "pebble"] and s["data_source"] == "shapes"
    assert [r["object"] for r in rows] == ["gem", "pebble"]


def test_a_busy_start_is_said_beside_the_step_time(tmp_path, root, monkeypatch, capsys):
    """When kernels chose passive OpenMP workers (load high at import), the table line says so."""
    import kernels

    out = tmp_path / "o"
    for source, said in (("busy", True), ("default", False)):
        monkeypatch.setattr(kernels, "OPENMP_WAIT_POLICY_SOURCE", source)
        assert main(["run", str(root / "configs/my_meshes.yaml"), "--out", str(out), *SMALL_SHAPES]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if "ms per matching step" in x]
        assert len(line) == 1 and ("OpenMP workers passive" in line[0]) == said
        assert json.loads((out / "summary.json").read_text())["openmp_wait_policy_source"] == source


def test_episodes_on_fewer_threads_are_said_and_change_no_result(tmp_path, root, monkeypatch, capsys):
    """When other processes hold cores, the episodes run on fewer threads (engine.run.cpu_share):
    the table line says so, summary.json lists the counts, and the results are those of a run
    on all threads."""
    import numba

    from engine.run import cpu_share

    if numba.config.NUMBA_NUM_THREADS < 2 or cpu_share._proc_stat() is None:
        pytest.skip("needs two kernel threads and /proc/stat")
    runs = {}
    for name, taken in (("all", 0.0), ("fewer", 1.0)):
        monkeypatch.setattr(cpu_share, "others_cores", lambda *a, taken=taken: taken)
        out = tmp_path / name
        assert main(["run", str(root / "configs/my_meshes.yaml"), "--out", str(out), *SMALL_SHAPES]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if "ms per matching step" in x][0]
        s = json.loads((out / "summary.json").read_text())
        runs[name] = _rows(out)
        if name == "fewer":
            assert s["eval_threads"] == [1] and "episodes on 1 of" in line
        else:
            assert s["eval_threads"] == [s["threads"]] and "other processes held cores" not in line
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(runs["fewer"]) == drop(runs["all"])
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # restored after the run


def test_sensor_kernels_compile_before_the_simulation(tmp_path, root, monkeypatch):
    """data_s holds the simulation only: the sensor's kernels are warmed up first, apart."""
    from engine.data import episodes
    from engine.models.evidence import model as evidence_model

    calls = []
    real_warmup, real_build = evidence_model.warmup_sensor_kernels, episodes.build_dataset

    def warmup():
        calls.append("warmup_sensor")
        return real_warmup()

    def build(cfg):
        calls.append("build_dataset")
        return real_build(cfg)

    monkeypatch.setattr(evidence_model, "warmup_sensor_kernels", warmup)
    monkeypatch.setattr(episodes, "build_dataset", build)
    out = tmp_path / "o"
    assert main(["-q", "run", str(root / "configs/my_meshes.yaml"), "--out", str(out), *SMALL_SHAPES]) == 0
    assert calls == ["warmup_sensor", "build_dataset"]
    s, _ = _check_summary(out)
    assert s["data_compile_s"] > 0


@pytest.mark.parametrize("config", EVIDENCE_CONFIGS)
def test_validate_evidence_configs(root, config, engine_env):
    p = cli("validate", f"configs/{config}", env=engine_env, cwd=root)
    _ok(p)
    assert ": ok (evidence model" in p.stdout


def test_plot_evidence(tmp_path, root):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert main(["-q", "run", str(root / "configs/recorded_evidence.yaml"), "--out", str(out),
                 "--set", "experiment.plot_evidence=true"]) == 0
    rows = _rows(out)
    pngs = sorted(x.name for x in out.glob("evidence_*.png"))
    assert pngs == sorted(f"evidence_{r['epoch']}_{r['episode']}.png" for r in rows) and len(pngs) == 8
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [x for x in out.iterdir() if x.name.startswith(".")]  # no temporary files left


# --------------------------------------------------------------------------- make-dataset --source shapes


def test_make_dataset_shapes_round_trip_then_run(tmp_path, engine_env):
    data = tmp_path / "x.npz"
    p = cli("make-dataset", "--source", "shapes", "--objects", "box,sphere", "--n-points", 1000, "--train-steps", 50,
            "--eval-rotations", 1, "--eval-steps", 30, "--out", data, env=engine_env)
    _ok(p)
    assert str(data) in p.stdout and "30 episodes (28 training, 2 evaluation)" in p.stdout
    ds = read_dataset(data)
    assert list(ds.object_names) == ["box", "sphere"]
    assert ds.n_episodes == 2 * 14 + 2 and ds.n_steps == 28 * 50 + 2 * 30
    np.testing.assert_array_equal(ds.episode_split, [TRAIN] * 28 + [EVAL] * 2)
    np.testing.assert_array_equal(ds.episode_object, [0] * 14 + [1] * 14 + [0, 1])
    np.testing.assert_array_equal(np.diff(ds.episode_offsets), [50] * 28 + [30] * 2)
    np.testing.assert_allclose(ds.episode_rotation[0], [1, 0, 0, 0], atol=1e-6)  # canonical pose first
    assert ds.n_features == 0 and ds.meta["source"] == "shapes" and ds.meta["seed"] == 0

    # the same observations as data.source: shapes with the same settings
    from engine.config import from_dict
    from engine.data.episodes import build_dataset

    cfg = from_dict({"model": {"type": "evidence"},
                     "data": {"source": "shapes", "objects": ["box", "sphere"], "n_points": 1000,
                              "train_steps": 50, "eval_rotations": 1, "eval_steps": 30}})
    sim = build_dataset(cfg)
    for key in ("location", "pose_vectors", "pose_defined", "curvature", "episode_offsets", "episode_rotation"):
        np.testing.assert_array_equal(getattr(ds, key), getattr(sim, key), err_msg=key)

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"model:\n  type: evidence\ndata:\n  source: dataset\n  path: {data.name}\n")
    out = tmp_path / "o"
    assert main(["-q", "run", str(cfg_path), "--out", str(out)]) == 0
    s, rows = _check_summary(out)
    assert s["n_eval_episodes"] == 2 and [r["object"] for r in rows] == ["box", "sphere"]


@pytest.mark.parametrize("args, expected", [
    (["--objects", "box,teapot"], "--objects: unknown name 'teapot'"),
    (["--n-points", 10], "--n-points: expected an integer >= 100"),
    (["--size", 10], "--size: does not apply to --source shapes"),
    (["--mesh-dir", "/nonexistent"], "--mesh-dir: folder not found"),
])
def test_make_dataset_shapes_bad_flags(tmp_path, args, expected, engine_env):
    out = tmp_path / "x.npz"
    p = cli("make-dataset", "--source", "shapes", "--out", out, *args, env=engine_env)
    assert p.returncode == 2 and "Traceback" not in p.stderr and expected in p.stderr, p.stderr
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- bad input


EVIDENCE_BASE = "model:\n  type: evidence\ndata:\n  source: dataset\n  path: {data}\n"
SHAPES_BASE = "model:\n  type: evidence\ndata:\n  source: shapes\n  n_points: 500\n"
BAD_CONFIGS = {
    "bad_updater": (EVIDENCE_BASE + "evidence:\n  updater: fast\n", "evidence.updater: expected one of 'burst'"),
    "zero_neighbors": (EVIDENCE_BASE + "evidence:\n  max_nneighbors: 0\n",
                       "evidence.max_nneighbors: expected an integer >= 1 and <= 1000, got 0"),
    "string_nodes": (EVIDENCE_BASE + "evidence:\n  max_nodes: many\n", "evidence.max_nodes: expected an integer"),
    "unknown_key": (EVIDENCE_BASE + "evidence:\n  foo: 1\n", "evidence.foo: unknown key"),
    "evidence_section_similarity": ("model:\n  type: similarity\ndata:\n  source: cube\nevidence:\n  updater: burst\n",
                                    "evidence: only the evidence model reads it"),
    "evidence_on_seed_spiral": ("model:\n  type: evidence\ndata:\n  source: seed_spiral\n",
                                "data.source: the evidence model needs pose vectors"),
    "shapes_similarity": ("model:\n  type: similarity\ndata:\n  source: shapes\n",
                          "data.source: 'shapes' feeds the evidence model only"),
    "unknown_object": (SHAPES_BASE + "  objects: [teapot]\n", "data.objects: unknown name 'teapot'"),
    "missing_mesh_dir": (SHAPES_BASE + "  mesh_dir: /nonexistent\n", "data.mesh_dir: folder not found"),
}


def _assert_user_error(p, text, out_dir):
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.startswith("error: ") and text in p.stderr, p.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_exit_2(tmp_path, root, name, engine_env):
    text, expected = BAD_CONFIGS[name]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text.format(data=root / "configs/data/evidence_example.npz"))
    out = tmp_path / "out"
    _assert_user_error(cli("run", cfg, "--out", out, env=engine_env), expected, out)


def test_corrupt_mesh_file_exit_2(tmp_path, root, engine_env):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    good = (root / "configs/data/meshes/gem.stl").read_bytes()
    (meshes / "gem.stl").write_bytes(good)
    (meshes / "broken.stl").write_bytes(good[: len(good) // 3])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SHAPES_BASE + "  objects: []\n  mesh_dir: meshes\n")
    out = tmp_path / "out"
    _assert_user_error(cli("run", cfg, "--out", out, env=engine_env), str(meshes / "broken.stl"), out)


def test_truncated_dataset_exit_2(tmp_path, root, engine_env):
    data = tmp_path / "d.npz"
    good = (root / "configs/data/evidence_example.npz").read_bytes()
    data.write_bytes(good[: len(good) // 2])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EVIDENCE_BASE.format(data=data.name))
    out = tmp_path / "out"
    p = cli("run", cfg, "--out", out, env=engine_env)
    _assert_user_error(p, "truncated", out)
    assert str(data) in p.stderr  # the message names the file
