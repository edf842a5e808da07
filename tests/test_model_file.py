"""Saved models (engine/run/model_file.py, ``train --save``, ``run --model``, ``model.path``).

Round trips: a run from a saved model gives the results of a run that trains, bit for bit
(episodes.csv and summary.json, timing fields and the fields that name the model aside),
for every model type. Every corrupt or mismatched model file is an exit 2 with a one-line
message and no traceback. The runs call ``engine.cli.main`` in this process so that the
kernels compile (or load from the cache) once; one bad-model case goes through
``python -m engine`` in a subprocess.
"""

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main

from cli_helpers import ok_cli, run_cli
from engine.run import model_file
from kernels import npzfile

ROOT = Path(__file__).resolve().parents[1]
#: summary.json fields that measure time or the machine, or name where the model came from
VOLATILE = {"compile_s", "run_s", "train_s", "eval_s", "data_s", "data_compile_s", "matching_step_s",
            "openmp_wait_policy", "openmp_wait_policy_source", "model_path", "model_digest", "trained_on", "config",
            "eval_threads"}
SMALL_NEAREST = ["--set", "data.size=400", "--set", "experiment.max_train_steps=400",
                 "--set", "experiment.max_eval_steps=400"]




def _episodes(folder, drop=("seconds",)):
    with (folder / "episodes.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _same_results(trained, loaded, also_volatile=()):
    assert _episodes(trained) == _episodes(loaded)
    a, b = _summary(trained), _summary(loaded)
    skip = VOLATILE | set(also_volatile)
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    ca, cb = a["config"], b["config"]
    assert ca["model"].pop("path") is None and cb["model"].pop("path") is not None
    assert ca == cb


def _saved_digest(stdout):
    return stdout.split("(sha256:")[1].split(")")[0]


@pytest.mark.parametrize("config, extra, also_volatile", [
    ("demo.yaml", [], ()),
    ("recorded_demo.yaml", [], ()),
    # the loaded nearest (and stepwise) run makes no training calls: kernel_calls counts the
    # evaluation's only
    ("nearest_spiral.yaml", SMALL_NEAREST, ("kernel_calls",)),
    ("nearest_spiral.yaml", SMALL_NEAREST + ["--set", "model.storage=float16", "--set", "model.dedup_distance=0.05"],
     ("kernel_calls",)),
    ("demo.yaml", ["--set", "model.storage=float16", "--set", "execution.stepwise=true"], ("kernel_calls",)),
])
def test_similarity_round_trip(tmp_path, root, capsys, config, extra, also_volatile):
    cfg = root / "configs" / config
    model = tmp_path / "m.npz"
    ok_cli(capsys, "run", cfg, "--out", tmp_path / "trained", *extra)
    out = ok_cli(capsys, "train", cfg, "--save", model, *extra)
    table = ok_cli(capsys, "run", cfg, "--out", tmp_path / "loaded", "--model", model, *extra)
    _same_results(tmp_path / "trained", tmp_path / "loaded", also_volatile)
    s = _summary(tmp_path / "loaded")
    assert s["model_path"] == str(model) and s["model_digest"] == "sha256:" + _saved_digest(out)
    assert s["trained_on"].startswith("sha256:") and len(s["trained_on"]) == 7 + 64
    assert s["n_train_episodes"] > 0 and s["stored_observations"] > 0
    assert "train" in {r["mode"] for r in _episodes(tmp_path / "loaded")}
    assert s["eval_steps"] > 0 and table


def test_similarity_evaluation_settings_may_differ(tmp_path, root, capsys):
    """A saved store is evaluated with another threshold and step limit exactly as a run that
    trains with them; model.path in the config (relative to its folder) works as --model."""
    model = tmp_path / "m.npz"
    ok_cli(capsys, "train", root / "configs" / "demo.yaml", "--save", model)
    cfg = tmp_path / "demo.yaml"
    cfg.write_text((root / "configs" / "demo.yaml").read_text() + "\n")
    changed = ["--set", "model.confidence_threshold=0.3", "--set", "experiment.max_eval_steps=7",
               "--set", "execution.chunk_size=3"]
    ok_cli(capsys, "run", root / "configs" / "demo.yaml", "--out", tmp_path / "trained", *changed)
    ok_cli(capsys, "run", cfg, "--out", tmp_path / "loaded", *changed, "--set", "model.path=m.npz")
    _same_results(tmp_path / "trained", tmp_path / "loaded")
    assert _summary(tmp_path / "loaded")["model_path"] == str(model)


def test_trained_on_follows_the_training_data(tmp_path, root, capsys):
    cfg = root / "configs" / "demo.yaml"
    digests = []
    for i, extra in enumerate([[], [], ["--set", "experiment.max_train_steps=20"]]):
        model = tmp_path / f"m{i}.npz"
        ok_cli(capsys, "train", cfg, "--save", model, *extra)
        digests.append(model_file.read_model(model).trained_on)
    assert digests[0] == digests[1] != digests[2]


@pytest.fixture(scope="module")
def evidence_runs(tmp_path_factory):
    """recorded_evidence.yaml: a run that trains, and a saved model of the same training."""
    tmp = tmp_path_factory.mktemp("evidence")
    cfg = ROOT / "configs" / "recorded_evidence.yaml"
    assert main(["run", str(cfg), "--out", str(tmp / "trained"), "-q"]) == 0
    assert main(["train", str(cfg), "--save", str(tmp / "m.npz"), "-q"]) == 0
    return cfg, tmp


def test_evidence_round_trip(evidence_runs, capsys):
    cfg, tmp = evidence_runs
    table = ok_cli(capsys, "run", cfg, "--out", tmp / "loaded", "--model", tmp / "m.npz")
    _same_results(tmp / "trained", tmp / "loaded")
    s = _summary(tmp / "loaded")
    assert s["train_s"] == 0.0 and s["model_path"] == str(tmp / "m.npz")
    assert s["model_digest"] == model_file.read_model(tmp / "m.npz").digest
    assert s["n_train_episodes"] == _summary(tmp / "trained")["n_train_episodes"] > 0
    assert "saved model" in table and _summary(tmp / "trained")["model_path"] is None
    # the file is an ordinary npz that numpy reads, every array 64-byte aligned and mapped
    saved = model_file.read_model(tmp / "m.npz")
    assert isinstance(saved.arrays["node_pos"].base, np.memmap)
    with np.load(tmp / "m.npz") as z:
        assert str(z["format"]) == "engine-model/1"
        assert np.array_equal(z["node_pos"], saved.arrays["node_pos"])
    with open(tmp / "m.npz", "rb") as fh, zipfile.ZipFile(fh) as zf:
        for info in zf.infolist():
            assert npzfile.member_header(fh, info).data_offset % 64 == 0


@pytest.mark.parametrize("changed", [
    ["--set", "evidence.max_nneighbors=12"],                # the node grid is rebuilt for these
    ["--set", "evidence.max_match_distance=0.012"],
    ["--set", "evidence.x_percent_threshold=10", "--set", "evidence.min_eval_steps=10", "--stepwise"],
])
def test_evidence_evaluation_settings_may_differ(evidence_runs, capsys, changed, tmp_path):
    cfg, tmp = evidence_runs
    ok_cli(capsys, "run", cfg, "--out", tmp_path / "trained", "-q", *changed)
    ok_cli(capsys, "run", cfg, "--out", tmp_path / "loaded", "-q", "--model", tmp / "m.npz", *changed)
    _same_results(tmp_path / "trained", tmp_path / "loaded")


# --------------------------------------------------------------------------- bad model files


def _members(path):
    """Every member of an npz as raw arrays (no pickles)."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename[:-4]: np.lib.format.read_array(zf.open(i), allow_pickle=False) for i in zf.infolist()}


def _write_members(path, members, pickled=None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in members.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
            zf.writestr(name + ".npy", buf.getvalue())
        if pickled is not None:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, pickled, allow_pickle=True)
            zf.writestr("extra.npy", buf.getvalue())


def _rewrite_model(src, dst, change):
    """A model file written through write_model (so its digest matches) with ``change``d arrays."""
    saved = model_file.read_model(src, mmap=False)
    arrays = {k: np.array(v) for k, v in saved.arrays.items()}
    change(arrays)
    m = saved.meta
    model_file.write_model(dst, m["model_type"], arrays, config=m["config"], trained_on=m["trained_on"],
                           feature_columns=m["feature_columns"], settings=m["settings"], training=m["training"])


def _poke_nan(src, dst, member):
    """The model file with one NaN in ``member`` (an archive whose CRCs are right)."""
    members = _members(src)
    members[member].reshape(-1)[7] = np.nan
    _write_members(dst, members)


def _bad_evidence(kind, good, path):
    if kind == "nan":
        _poke_nan(good, path, "node_pos")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "wrong_shape":
        _rewrite_model(good, path, lambda a: a.update(node_pos=np.ascontiguousarray(a["node_pos"][:, :2])))
    elif kind == "wrong_count":
        _rewrite_model(good, path, lambda a: a.update(node_pfd=a["node_pfd"][:-1]))
    elif kind == "bad_index":
        def change(a):
            a["cand_node"][0] = 10 ** 6
        _rewrite_model(good, path, change)
    elif kind == "unknown_version":
        members = _members(good)
        members["format"] = np.array("engine-model/99")
        _write_members(path, members)
    elif kind == "pickled":
        _write_members(path, _members(good), pickled=np.array([{"a": 1}], dtype=object))
    elif kind == "flipped_byte":
        data = bytearray(good.read_bytes())
        with open(good, "rb") as fh, zipfile.ZipFile(good) as zf:
            h = npzfile.member_header(fh, zf.getinfo("cand_start.npy"))
        data[h.data_offset + 8 * 3] ^= 1
        path.write_bytes(bytes(data))
    elif kind == "not_zip":
        path.write_text("node_pos: [1, 2, 3]\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    else:
        raise AssertionError(kind)


BAD_EVIDENCE = {
    "nan": "member 'node_pos' holds NaN",
    "truncated": "truncated or corrupt",
    "wrong_shape": "member 'node_pos': shape (",
    "wrong_count": "member 'node_pfd': shape (",
    "bad_index": "member 'cand_node'",
    "unknown_version": "unknown model format 'engine-model/99'",
    "pickled": "pickled",
    "flipped_byte": "does not match its digest",
    "not_zip": "not a model file",
    "empty": "empty file",
    "directory": "is a directory",
    "missing": "model file not found",
}


def _assert_exit_2(rc, out, err, expected, path, results):
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err and str(path) in err, err
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize("kind", sorted(BAD_EVIDENCE))
def test_bad_evidence_model_exit_2(evidence_runs, capsys, tmp_path, kind):
    cfg, tmp = evidence_runs
    bad = tmp_path / "bad.npz"
    _bad_evidence(kind, tmp / "m.npz", bad)
    rc, out, err = run_cli(capsys, "run", cfg, "--out", tmp_path / "out", "--model", bad)
    _assert_exit_2(rc, out, err, BAD_EVIDENCE[kind], bad, tmp_path / "out")


@pytest.mark.parametrize("changed, expected", [
    (["--set", "evidence.voxels_per_dim=50"], "learned with evidence.voxels_per_dim = 100, but"),
    (["--set", "evidence.graph=graph"], "learned with evidence.graph = 'grid'"),
])
def test_evidence_incompatible_settings_exit_2(evidence_runs, capsys, tmp_path, changed, expected):
    cfg, tmp = evidence_runs
    rc, out, err = run_cli(capsys, "run", cfg, "--out", tmp_path / "out", "--model", tmp / "m.npz", *changed)
    _assert_exit_2(rc, out, err, expected, tmp / "m.npz", tmp_path / "out")


def test_evidence_other_feature_columns_exit_2(evidence_runs, capsys, tmp_path, root):
    """A dataset with a hue column, evaluated with a model learned without one."""
    import dataclasses

    from engine.data.dataset import read_dataset, write_dataset

    cfg, tmp = evidence_runs
    ds = read_dataset(root / "configs" / "data" / "evidence_example.npz", mmap=False)
    assert list(ds.feature_names) == []
    ds = dataclasses.replace(ds, features=np.zeros((ds.n_steps, 1), np.float32), feature_names=np.array(["hue"]))
    write_dataset(tmp_path / "hue.npz", ds)
    rc, out, err = run_cli(capsys, "run", cfg, "--out", tmp_path / "out", "--model", tmp / "m.npz",
                        "--set", f"data.path={tmp_path / 'hue.npz'}")
    _assert_exit_2(rc, out, err, "learned with feature columns [], but the data of", tmp / "m.npz",
                   tmp_path / "out")


@pytest.fixture(scope="module")
def similarity_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("similarity")
    for name, config, extra in (("demo", "demo.yaml", []), ("nearest", "nearest_spiral.yaml", SMALL_NEAREST)):
        assert main(["train", str(ROOT / "configs" / config), "--save", str(tmp / f"{name}.npz"), "-q",
                     *extra]) == 0
    return tmp


@pytest.mark.parametrize("config, model, extra, expected", [
    ("demo.yaml", "nearest", [], "a 'nearest' model, but"),                          # wrong model type
    ("recorded_evidence.yaml", "demo", [], "a 'similarity' model, but"),
    ("recorded_demo.yaml", "demo", [], "learned with feature columns ['height'], but"),  # other columns
    ("demo.yaml", "demo", ["--set", "model.storage=float16"], "learned with model.storage = 'float32'"),
    ("nearest_spiral.yaml", "nearest", SMALL_NEAREST + ["--set", "model.dedup_distance=0.1"],
     "learned with model.dedup_distance = None"),
])
def test_mismatched_model_exit_2(similarity_models, root, capsys, tmp_path, config, model, extra, expected):
    path = similarity_models / f"{model}.npz"
    rc, out, err = run_cli(capsys, "run", root / "configs" / config, "--out", tmp_path / "out", "--model", path,
                        *extra)
    _assert_exit_2(rc, out, err, expected, path, tmp_path / "out")


@pytest.mark.parametrize("kind, expected", [
    ("nan", "member 'store' holds NaN"), ("wrong_shape", "member 'store': shape ("),
    ("bad_reason", "member 'train_reason'"), ("unknown_version", "unknown model format"),
])
def test_bad_similarity_model_exit_2(similarity_models, root, capsys, tmp_path, kind, expected):
    good, bad = similarity_models / "demo.npz", tmp_path / "bad.npz"
    if kind == "nan":
        _poke_nan(good, bad, "store")
    elif kind == "wrong_shape":
        _rewrite_model(good, bad, lambda a: a.update(store=np.ascontiguousarray(a["store"][1:])))
    elif kind == "bad_reason":
        def change(a):
            a["train_reason"][0] = 9
        _rewrite_model(good, bad, change)
    else:
        members = _members(good)
        members["format"] = np.array("engine-model/2")
        _write_members(bad, members)
    rc, out, err = run_cli(capsys, "run", root / "configs" / "demo.yaml", "--out", tmp_path / "out", "--model", bad)
    _assert_exit_2(rc, out, err, expected, bad, tmp_path / "out")


def test_bad_nearest_tree_exit_2(similarity_models, root, capsys, tmp_path):
    bad = tmp_path / "bad.npz"

    def change(a):
        a["tree_leaf_start"][1] = 10 ** 6
    _rewrite_model(similarity_models / "nearest.npz", bad, change)
    rc, out, err = run_cli(capsys, "run", root / "configs" / "nearest_spiral.yaml", "--out", tmp_path / "out",
                        "--model", bad, *SMALL_NEAREST)
    _assert_exit_2(rc, out, err, "KD-tree is corrupt", bad, tmp_path / "out")


def test_bad_model_from_the_command_line(tmp_path, root, engine_env):
    """Through python -m engine: one line on stderr, exit 2, no traceback; validate checks it too."""
    bad = tmp_path / "m.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    for args in (["run", root / "configs" / "demo.yaml", "--out", tmp_path / "out", "--model", bad],
                 ["validate", root / "configs" / "demo.yaml", "--set", f"model.path={bad}"]):
        p = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                           env=engine_env, cwd=root, timeout=300)
        _assert_exit_2(p.returncode, p.stdout, p.stderr, "truncated or corrupt", bad, tmp_path / "out")


def test_train_errors_exit_2(tmp_path, root, capsys):
    cfg = root / "configs" / "demo.yaml"
    (tmp_path / "folder").mkdir()
    cases = [
        (["--save", tmp_path / "folder"], "is a directory"),
        (["--save", tmp_path / "no" / "m.npz"], "does not exist"),
        (["--save", tmp_path / "m.npz", "--set", "experiment.do_train=false"], "nothing to train"),
        (["--save", tmp_path / "m.npz", "--set", f"model.path={tmp_path / 'x.npz'}"], "model.path is set"),
    ]
    for extra, expected in cases:
        rc, out, err = run_cli(capsys, "train", cfg, *extra)
        assert rc == 2 and expected in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "m.npz").exists()


# --------------------------------------------------------------------------- the file itself


def _tiny(path, **arrays):
    return model_file.write_model(path, "similarity", arrays or {"store": np.ones((4, 3), np.float32)},
                                  config={"a": 1}, trained_on="sha256:0", feature_columns=["f"],
                                  settings={"storage": "float32"}, training={"n": 1})


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    _tiny(path)
    before = path.read_bytes()

    def fail(self, name, array):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(npzfile.AlignedNpzWriter, "add", fail)
    with pytest.raises(model_file.ModelFileError, match="cannot save the model"):
        _tiny(path, store=np.zeros((4, 5), np.float32))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


def test_same_model_same_bytes_and_digest(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert _tiny(a) == _tiny(b)
    assert a.read_bytes() == b.read_bytes()
    assert _tiny(b, store=np.full((4, 3), 2, np.float32)) != _tiny(a)


def test_read_copy_on_write(tmp_path):
    path = tmp_path / "m.npz"
    _tiny(path)
    before = path.read_bytes()
    store = model_file.read_model(path).arrays["store"]
    assert store.flags.writeable and isinstance(store.base, np.memmap)
    store[0, 0] = 5  # stays in this process
    assert path.read_bytes() == before
    assert float(model_file.read_model(path).arrays["store"][0, 0]) == 1.0


def test_compressed_member_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    _tiny(path)
    members = _members(path)
    np.savez_compressed(tmp_path / "c.npz", **members)
    with pytest.raises(model_file.ModelFileError, match="compressed"):
        model_file.read_model(tmp_path / "c.npz")


def test_meta_must_be_the_documented_object(tmp_path):
    path = tmp_path / "m.npz"
    _tiny(path)
    members = _members(path)
    members["meta"] = np.array(json.dumps({"model_type": "similarity"}))
    _write_members(tmp_path / "b.npz", members)
    with pytest.raises(model_file.ModelFileError, match="member 'meta': missing engine_version"):
        model_file.read_model(tmp_path / "b.npz")
