"""engine.data.make_dataset: synthetic sources written chunk by chunk as monty-episodes/1
datasets (npz or npy-dir), equal to engine.data.sources, byte-identical whatever the chunk
size, and bad input rejected as UserError before anything is written."""

from __future__ import annotations

import argparse
import hashlib
import os
import zipfile

import numpy as np
import pytest

import engine.data.make_dataset as md
from engine.data import sources
from engine.data.dataset import EVAL, FORMAT, TRAIN, DatasetError, read_dataset
from engine.errors import UserError
from engine.data.make_dataset import SOURCES, make_dataset

STEP_FIELDS = ["location", "pose_vectors", "pose_defined", "curvature", "features"]


def _engine_source(source: str, size: int, n_features: int, seed: int) -> sources.Observations:
    if source == "seed_spiral":
        return sources.seed_spiral(size)
    if source == "cube":
        return sources.cube(points_per_edge=size)
    if source == "sphere":
        return sources.sphere(n_points=size)
    return sources.random_points(n_points=size, n_features=n_features, seed=seed)


def _out(tmp_path, layout: str, name: str = "ds"):
    return tmp_path / (f"{name}.npz" if layout == "npz" else name)


def _digest(path) -> str:
    """Hash of a file, or of a folder's files (names and contents)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(name.encode())
            h.update((path / name).read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- contents


@pytest.mark.parametrize("layout", ["npz", "npy-dir"])
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", [1, 5])
def test_each_source_writes_a_valid_dataset(tmp_path, source, size, layout):
    n_features = 2 if source == "random" else 1
    path = _out(tmp_path, layout)
    made = make_dataset(source, size, path, n_features=n_features, seed=3, layout=layout)
    ds = read_dataset(path)  # validates every rule
    ref = _engine_source(source, size, n_features, 3)
    n = ref.train_stops[0]
    assert (made.n_steps, made.n_episodes, made.n_objects, made.n_features) == (
        ds.n_steps, ds.n_episodes, ds.n_objects, ds.n_features)
    assert ds.n_steps == 2 * n and made.n_features == ref.n_features == n_features
    np.testing.assert_array_equal(ds.episode_offsets, [0, n, 2 * n])
    np.testing.assert_array_equal(ds.episode_split, [TRAIN, EVAL])
    np.testing.assert_array_equal(ds.episode_object, [0, 0])
    np.testing.assert_array_equal(ds.episode_rotation, [[1, 0, 0, 0]] * 2)
    assert list(ds.object_names) == [ref.train_objects[0]]
    assert tuple(ds.feature_names) == ref.feature_names
    assert ds.meta["source"] == source and ds.meta["size"] == size
    # the engine's source arrays, bit for bit (random: the evaluation draw follows)
    np.testing.assert_array_equal(ds.location, ref.location if source == "random"
                                  else np.concatenate([ref.location, ref.location]))
    np.testing.assert_array_equal(ds.features, ref.features if source == "random"
                                  else np.concatenate([ref.features, ref.features]))
    for key in STEP_FIELDS:
        assert isinstance(getattr(ds, key), np.memmap) or getattr(ds, key).size == 0, key
    assert made.nbytes == (path.stat().st_size if layout == "npz"
                           else sum(p.stat().st_size for p in path.iterdir()))
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary left


@pytest.mark.parametrize(
    "source,size,n",
    [("seed_spiral", 3001, 3001), ("cube", 9, 9**3 - 7**3), ("sphere", 2001, 2001),
     ("random", 1500, 1500)],
)
def test_locations_equal_engine_sources(tmp_path, monkeypatch, source, size, n):
    monkeypatch.setattr(md, "WRITE_CHUNK", 97)  # many chunks, odd boundaries
    make_dataset(source, size, tmp_path / "ds.npz", n_features=3 if source == "random" else 1,
                 seed=11)
    ds = read_dataset(tmp_path / "ds.npz")
    ref = _engine_source(source, size, 3, 11)
    assert ds.n_steps == 2 * n
    if source == "random":
        np.testing.assert_array_equal(ds.location, ref.location)
        np.testing.assert_array_equal(ds.features, ref.features)
    else:
        for half in (slice(0, n), slice(n, 2 * n)):
            np.testing.assert_array_equal(ds.location[half], ref.location)
            np.testing.assert_array_equal(ds.features[half], ref.features)


def test_geometry(tmp_path):
    make_dataset("seed_spiral", 50, tmp_path / "s.npz")
    ds = read_dataset(tmp_path / "s.npz")
    loc = ds.location
    # on the unit cylinder: normal is the radial direction, curvature (-1, 0)
    np.testing.assert_allclose(ds.pose_vectors[:, 0, :2], loc[:, :2], atol=1e-6)
    np.testing.assert_array_equal(ds.pose_vectors[:, 0, 2], 0)
    np.testing.assert_array_equal(ds.curvature, [[-1, 0]] * 100)
    assert not ds.pose_defined.any()

    make_dataset("sphere", 40, tmp_path / "b.npz")
    ds = read_dataset(tmp_path / "b.npz")
    np.testing.assert_allclose(ds.pose_vectors[:, 0], ds.location / 0.05, atol=1e-6)
    np.testing.assert_allclose(ds.curvature, -20.0)

    make_dataset("cube", 4, tmp_path / "c.npz")
    ds = read_dataset(tmp_path / "c.npz")
    normal = ds.pose_vectors[:, 0]
    # the normal points out of the cube: along the location's saturated coordinates
    assert np.all(np.sum(normal * ds.location, axis=1) > 0)
    np.testing.assert_array_equal(ds.curvature, 0)

    make_dataset("random", 10, tmp_path / "r.npz", n_features=0)
    ds = read_dataset(tmp_path / "r.npz")
    assert ds.features.shape == (20, 0) and ds.feature_names.shape == (0,)
    np.testing.assert_array_equal(ds.pose_vectors[:, 0], [[0, 0, 1]] * 20)


@pytest.mark.parametrize("layout", ["npz", "npy-dir"])
@pytest.mark.parametrize("source,size", [("seed_spiral", 2500), ("cube", 12), ("sphere", 999),
                                         ("random", 1001)])
def test_chunked_equals_one_shot(tmp_path, monkeypatch, layout, source, size):
    digests = []
    for chunk in (1 << 20, 256, 7):
        monkeypatch.setattr(md, "WRITE_CHUNK", chunk)
        path = _out(tmp_path, layout, f"c{chunk}")
        make_dataset(source, size, path, n_features=2 if source == "random" else 1, seed=4,
                     layout=layout)
        digests.append(_digest(path))
    assert digests[0] == digests[1] == digests[2]


def test_npz_is_standard_and_aligned(tmp_path):
    path = tmp_path / "ds.npz"
    make_dataset("random", 333, path, n_features=3)
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
    ds = read_dataset(path)
    with np.load(path, allow_pickle=False) as npz:  # plain numpy reads our .npy headers
        assert str(npz["format"]) == FORMAT
        for key in ["location", "features", "pose_vectors", "episode_offsets"]:
            np.testing.assert_array_equal(npz[key], getattr(ds, key))
    for key in STEP_FIELDS:
        assert getattr(ds, key).offset % 64 == 0, key  # data 64-byte aligned in the file
        assert getattr(ds, key).ctypes.data % 64 == 0, key


def test_compressed(tmp_path):
    make_dataset("sphere", 300, tmp_path / "a.npz")
    make_dataset("sphere", 300, tmp_path / "z.npz", compress=True)
    with zipfile.ZipFile(tmp_path / "z.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    a, z = read_dataset(tmp_path / "a.npz"), read_dataset(tmp_path / "z.npz")
    assert not isinstance(z.location, np.memmap)
    assert a == z


def test_replaces_existing_output(tmp_path):
    path = tmp_path / "ds.npz"
    path.write_text("old")
    make_dataset("sphere", 10, path)
    assert read_dataset(path).n_steps == 20
    folder = tmp_path / "dir"
    make_dataset("sphere", 10, folder, layout="npy-dir")
    make_dataset("sphere", 12, folder, layout="npy-dir")
    assert read_dataset(folder).n_steps == 24
    assert sorted(os.listdir(tmp_path)) == ["dir", "ds.npz"]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"source": "spiral"}, "unknown source 'spiral'"),
        ({"size": 0}, "size: expected an integer 1..2147483647, got 0"),
        ({"size": -5}, "size"),
        ({"size": 2**31}, "size: expected an integer 1..2147483647, got 2147483648"),
        ({"source": "cube", "size": 100_001}, "size: expected an integer 1..100000"),
        ({"seed": 2**63}, "seed: expected an integer 0..9223372036854775807"),
        ({"size": 2.5}, "size: expected an integer"),
        ({"size": True}, "size: expected an integer"),
        ({"n_features": 2}, "features: expected an integer 0..1"),
        ({"source": "random", "n_features": 65}, "features: expected an integer 0..64"),
        ({"seed": -1}, "seed"),
        ({"layout": "zip"}, "unknown layout 'zip'"),
        ({"layout": "npy-dir", "compress": True}, "only the npz layout"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, text):
    args = {"source": "seed_spiral", "size": 10, "out": tmp_path / "x.npz", **kwargs}
    with pytest.raises(UserError, match=text):
        make_dataset(args.pop("source"), args.pop("size"), args.pop("out"), **args)
    assert os.listdir(tmp_path) == []


def test_bad_outputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_dataset("sphere", 10, tmp_path / "no" / "x.npz")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        make_dataset("sphere", 10, tmp_path / "folder")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        make_dataset("sphere", 10, tmp_path / "file", layout="npy-dir")
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an npy-dir dataset"):
        make_dataset("sphere", 10, tmp_path / "folder", layout="npy-dir")
    assert (tmp_path / "folder" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]


def test_read_only_folder(tmp_path):
    """A folder the process cannot write to: file modes for a normal user, a read-only bind mount for root."""
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root ignores file modes: make the folder read-only for real
        mounted = subprocess.run(["mount", "--bind", str(ro), str(ro)], capture_output=True).returncode == 0 and \
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode == 0
        if not mounted:
            subprocess.run(["umount", str(ro)], capture_output=True)
            pytest.skip("root, and no permission to mount a read-only folder")
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            make_dataset("sphere", 10, ro / "x.npz")
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], capture_output=True)
        ro.chmod(0o755)


def test_not_enough_disk_space(tmp_path, monkeypatch):
    monkeypatch.setattr(md.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(UserError, match="GB free"):
        make_dataset("seed_spiral", 10_000, tmp_path / "x.npz")


@pytest.mark.parametrize("layout", ["npz", "npy-dir"])
def test_invalid_data_is_never_written(tmp_path, monkeypatch, layout):
    """The temporary output is validated before it is renamed into place."""
    real = md._Sphere.block

    def with_nan(self, i0, i1, key):
        a = real(self, i0, i1, key)
        if key == "location" and i0 == 0:
            a = a.copy()
            a[3, 0] = np.nan
        return a

    monkeypatch.setattr(md._Sphere, "block", with_nan)
    with pytest.raises(DatasetError, match=r"location\[3\] contains NaN"):
        make_dataset("sphere", 10, _out(tmp_path, layout), layout=layout)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("layout", ["npz", "npy-dir"])
def test_interrupted_write_leaves_previous(tmp_path, monkeypatch, layout):
    path = _out(tmp_path, layout)
    make_dataset("sphere", 10, path, layout=layout)
    before = _digest(path)

    def interrupted(self, i0, i1, key):
        raise KeyboardInterrupt

    monkeypatch.setattr(md._Sphere, "block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("sphere", 20, path, layout=layout)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert _digest(path) == before


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine")
    md.add_cli(p.add_subparsers(dest="command"))
    return p


def test_cli(tmp_path, capsys):
    out = tmp_path / "d"
    args = _parser().parse_args(["make-dataset", "--source", "random", "--size", "20",
                                 "--out", str(out), "--seed", "2", "--features", "3",
                                 "--layout", "npy-dir"])
    printed = md.run_from_args(args)
    assert str(out) in printed and "40 steps" in printed
    ds = read_dataset(out)
    np.testing.assert_array_equal(ds.features, sources.random_points(20, 3, 2).features)

    args = _parser().parse_args(["make-dataset", "--source", "cube", "--size", "0",
                                 "--out", str(tmp_path / "c.npz")])
    with pytest.raises(UserError, match="size"):
        md.run_from_args(args)
    with pytest.raises(SystemExit):  # argparse: unknown source
        _parser().parse_args(["make-dataset", "--source", "torus", "--size", "3", "--out", "x"])


# --------------------------------------------------------------------------- shapes source

SMALL = {"n_points": 300, "train_steps": 6, "eval_rotations": 1, "eval_steps": 4}


def _shapes_config(**data):
    from engine.config import from_dict

    return from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes", **data}})


@pytest.mark.parametrize("layout, compress", [("npz", False), ("npz", True), ("npy-dir", False)])
def test_shapes_equals_data_source_shapes(tmp_path, root, layout, compress):
    from engine.data.episodes import build_dataset

    path = _out(tmp_path, layout)
    mesh_dir = root / "configs" / "data" / "meshes"
    made = md.make_shapes_dataset(path, objects=["box"], mesh_dir=mesh_dir, hue=True, noise=True, seed=4,
                                  layout=layout, compress=compress, **SMALL)
    ds = read_dataset(path)
    sim = build_dataset(_shapes_config(objects=["box"], mesh_dir=str(mesh_dir), hue=True, noise=True, seed=4,
                                       **SMALL))
    for key in STEP_FIELDS + ["feature_names", "episode_offsets", "episode_object", "episode_rotation",
                              "episode_split", "object_names"]:
        np.testing.assert_array_equal(getattr(ds, key), getattr(sim, key), err_msg=key)
    assert list(ds.object_names) == ["box", "gem", "pebble"] and list(ds.feature_names) == ["hue"]
    assert ds.meta["source"] == "shapes" and ds.meta["noise"] is not None and ds.meta["params"]["n_points"] == 300
    assert (made.source, made.size, made.layout, made.compressed) == ("shapes", 300, layout, compress)
    assert (made.n_objects, made.n_train_episodes, made.n_eval_episodes) == (3, 42, 3)
    assert (made.n_steps, made.n_episodes, made.n_features) == (42 * 6 + 3 * 4, 45, 1)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary files left


def test_shapes_defaults_are_the_configs(tmp_path):
    """No objects given: all ten built-ins (here with tiny walks); defaults as data.source: shapes."""
    path = tmp_path / "all.npz"
    made = md.make_shapes_dataset(path, n_points=100, train_steps=1, eval_rotations=0, eval_steps=1)
    ds = read_dataset(path)
    from engine.data.shapes import BUILTIN_SHAPES

    assert tuple(ds.object_names) == BUILTIN_SHAPES and made.n_eval_episodes == 0
    assert not ds.episode_split.any() and ds.n_features == 0


@pytest.mark.parametrize("kwargs, text", [
    ({"objects": ["teapot"]}, "objects: unknown name 'teapot'"),
    ({"objects": ["box", "box"]}, "objects: names must be distinct"),
    ({"objects": "box"}, "objects: expected a list"),
    ({"objects": []}, "objects: no objects to simulate"),
    ({"n_points": 99}, "n_points: expected an integer >= 100, got 99"),
    ({"train_steps": 0}, "train_steps: expected an integer >= 1"),
    ({"eval_rotations": -1}, "eval_rotations: expected an integer >= 0"),
    ({"eval_steps": 1.5}, "eval_steps: expected an integer"),
    ({"noise": 1}, "noise: expected true or false"),
    ({"seed": -1}, "seed: expected an integer >= 0"),
    ({"mesh_dir": "/nonexistent"}, "mesh_dir: folder not found"),
    ({"layout": "zip"}, "unknown layout 'zip'"),
    ({"layout": "npy-dir", "compress": True}, "only the npz layout"),
])
def test_shapes_bad_arguments(tmp_path, kwargs, text):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=text):
        md.make_shapes_dataset(out / "x.npz", **{**SMALL, **kwargs})
    assert os.listdir(out) == []


def test_shapes_bad_meshes(tmp_path, root):
    gem = (root / "configs" / "data" / "meshes" / "gem.stl").read_bytes()
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "box.stl").write_bytes(gem)
    with pytest.raises(UserError, match="mesh 'box' .* has the name of a built-in"):
        md.make_shapes_dataset(tmp_path / "x.npz", objects=["box"], mesh_dir=clash, **SMALL)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.stl").write_bytes(gem[:100])
    with pytest.raises(UserError, match="bad.stl"):
        md.make_shapes_dataset(tmp_path / "x.npz", mesh_dir=broken, **SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no mesh files"):
        md.make_shapes_dataset(tmp_path / "x.npz", mesh_dir=tmp_path / "empty", **SMALL)
    assert not (tmp_path / "x.npz").exists()


def test_shapes_cli(tmp_path, root):
    out = tmp_path / "m.npz"
    args = _parser().parse_args(["make-dataset", "--source", "shapes", "--objects", "", "--mesh-dir",
                                 str(root / "configs" / "data" / "meshes"), "--n-points", "300", "--train-steps", "6",
                                 "--eval-rotations", "1", "--eval-steps", "4", "--hue", "--noise", "--seed", "1",
                                 "--compress", "--out", str(out)])
    printed = md.run_from_args(args)
    assert printed.startswith(f"wrote {out} (npz, compressed): shapes, 176 steps in 30 episodes (28 training, "
                              "2 evaluation), 2 object(s), 1 feature(s)")
    ds = read_dataset(out)
    assert list(ds.object_names) == ["gem", "pebble"] and ds.meta["seed"] == 1 and ds.meta["noise"] is not None


@pytest.mark.parametrize("argv, text", [
    (["--source", "shapes", "--size", "5"], "--size: does not apply to --source shapes"),
    (["--source", "shapes", "--features", "1"], "--features: does not apply to --source shapes"),
    (["--source", "shapes", "--objects", "box,teapot"], "--objects: unknown name 'teapot'"),
    (["--source", "shapes", "--n-points", "5"], "--n-points: expected an integer >= 100, got 5"),
    (["--source", "shapes", "--mesh-dir", "/nonexistent"], "--mesh-dir: folder not found"),
    (["--source", "cube"], "--size: required for --source cube"),
    (["--source", "cube", "--size", "3", "--objects", "box"], "--objects: applies to --source shapes only"),
    (["--source", "sphere", "--size", "3", "--noise"], "--noise: applies to --source shapes only"),
    (["--source", "random", "--size", "3", "--eval-steps", "4"], "--eval-steps: applies to --source shapes only"),
])
def test_shapes_cli_flags_that_do_not_apply(tmp_path, argv, text):
    args = _parser().parse_args(["make-dataset", *argv, "--out", str(tmp_path / "x.npz")])
    with pytest.raises(UserError, match=text):
        md.run_from_args(args)
    assert os.listdir(tmp_path) == []


def test_make_dataset_points_shapes_elsewhere(tmp_path):
    with pytest.raises(UserError, match="make_shapes_dataset"):
        make_dataset("shapes", 10, tmp_path / "x.npz")
