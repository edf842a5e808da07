"""Tests of the ``monty-episodes/1`` dataset format: engine.data.dataset, engine.data.rotations and
engine.data.example_data (the bundled configs/data/example_episodes.npz)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from engine.data.dataset import (
    EVAL,
    FORMAT,
    TRAIN,
    DatasetError,
    EpisodeDataset,
    points_dataset,
    read_dataset,
    validate_dataset,
    write_dataset,
)
from engine.data.example_data import EXAMPLE_DATASET_PATH, make_example_dataset
from engine.data.rotations import IDENTITY_QUATERNION, quat_to_matrix, random_quaternions

ARRAY_FIELDS = [f.name for f in dataclasses.fields(EpisodeDataset) if f.name not in ("meta", "sensors")]
FLOAT_FIELDS = ["location", "pose_vectors", "curvature", "features", "episode_rotation"]


@pytest.fixture(scope="module")
def example() -> EpisodeDataset:
    return make_example_dataset()


def _copy(ds: EpisodeDataset, **changes) -> EpisodeDataset:
    """A deep copy of ``ds`` (so mutations never leak into the shared fixture)."""
    fields = {key: np.array(getattr(ds, key), copy=True) for key in ARRAY_FIELDS}
    fields["meta"] = dict(ds.meta)
    fields.update(changes)
    return EpisodeDataset(**fields)


def _raw_arrays(ds: EpisodeDataset) -> dict:
    """What write_dataset stores, as a dict, for hand-made (broken) files."""
    arrays = {key: getattr(ds, key) for key in ARRAY_FIELDS}
    arrays["format"] = np.array(FORMAT)
    arrays["meta"] = np.array('{"k": 1}')
    return arrays


def _save_raw(path, arrays: dict) -> None:
    with open(path, "wb") as f:  # a file object: numpy must not append ".npz"
        np.savez(f, **arrays)


def _assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    for key in ARRAY_FIELDS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype, key
        assert x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)
    assert a.meta == b.meta
    assert a == b


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip(tmp_path, example, compress):
    path = tmp_path / "episodes.npz"
    write_dataset(path, example, compress=compress)
    back = read_dataset(path)
    _assert_same(example, back)
    for key in ARRAY_FIELDS:
        assert getattr(back, key).flags.c_contiguous, key
    assert sorted(os.listdir(tmp_path)) == ["episodes.npz"]  # no temporary file left


def test_write_uses_exact_name_and_str_path(tmp_path, example):
    path = str(tmp_path / "episodes.bin")  # numpy's savez would make this "episodes.bin.npz"
    write_dataset(path, example)
    assert sorted(os.listdir(tmp_path)) == ["episodes.bin"]
    _assert_same(example, read_dataset(path))


def test_write_replaces_existing_file(tmp_path, example):
    path = tmp_path / "episodes.npz"
    path.write_text("old contents")
    write_dataset(path, example)
    _assert_same(example, read_dataset(path))
    assert sorted(os.listdir(tmp_path)) == ["episodes.npz"]


def test_round_trip_empty_and_featureless(tmp_path):
    empty = points_dataset([], train_rotations=[], eval_rotations=[])
    assert (empty.n_steps, empty.n_episodes, empty.n_objects, empty.n_features) == (0, 0, 0, 0)
    write_dataset(tmp_path / "empty.npz", empty)
    _assert_same(empty, read_dataset(tmp_path / "empty.npz"))

    pts = np.eye(3, dtype=np.float32)
    ds = points_dataset(
        [("tri", pts, pts, np.zeros((3, 2)), None)],
        train_rotations=[IDENTITY_QUATERNION],
        eval_rotations=np.zeros((0, 4)),
        meta={"note": "no features", "values": [1, 2.5, None, True]},
    )
    assert ds.features.shape == (3, 0) and ds.feature_names.shape == (0,)
    write_dataset(tmp_path / "f0.npz", ds, compress=True)
    _assert_same(ds, read_dataset(tmp_path / "f0.npz"))


def test_unknown_keys_are_ignored(tmp_path, example):
    arrays = _raw_arrays(example)
    arrays["future_extension"] = np.arange(5)
    arrays["notes"] = np.array("anything")
    path = tmp_path / "extra.npz"
    _save_raw(path, arrays)
    back = read_dataset(path)
    assert back.meta == {"k": 1}
    _assert_same(_copy(example, meta={"k": 1}), back)


def test_meta_is_optional(tmp_path, example):
    arrays = _raw_arrays(example)
    del arrays["meta"]
    _save_raw(tmp_path / "nometa.npz", arrays)
    assert read_dataset(tmp_path / "nometa.npz").meta == {}


# --------------------------------------------------------------------------- example data


def test_bundled_example_file(example):
    assert EXAMPLE_DATASET_PATH.stat().st_size < 100_000
    bundled = read_dataset(EXAMPLE_DATASET_PATH)
    # Exact: the generator is seeded (regenerate with write_example_dataset() if it changes).
    _assert_same(example, bundled)


def test_example_is_deterministic(example):
    again = make_example_dataset(seed=0)
    for key in ARRAY_FIELDS:
        assert getattr(again, key).tobytes() == getattr(example, key).tobytes(), key
    assert make_example_dataset(seed=1) != example


def test_example_contents(example):
    assert list(example.object_names) == ["cube", "sphere", "cylinder"]
    assert list(example.feature_names) == ["hue"]
    assert np.all((example.features >= 0) & (example.features < 1))
    train, evaluation = example.episode_indices(TRAIN), example.episode_indices(EVAL)
    assert np.array_equal(np.bincount(example.episode_object[train]), [1, 1, 1])
    assert np.array_equal(np.bincount(example.episode_object[evaluation]), [2, 2, 2])
    np.testing.assert_array_equal(example.episode_rotation[train], [IDENTITY_QUATERNION] * 3)
    # The sphere's outward normal is location / r in every rotation; its curvature -1/r.
    for e in np.flatnonzero(example.episode_object == 1):
        s = slice(example.episode_offsets[e], example.episode_offsets[e + 1])
        np.testing.assert_allclose(example.pose_vectors[s, 0], example.location[s] / 0.03, atol=1e-5)
        np.testing.assert_allclose(example.curvature[s], -1 / 0.03, rtol=1e-6)
    # Only the cylinder has distinct principal curvatures.
    steps_object = np.repeat(example.episode_object, np.diff(example.episode_offsets))
    np.testing.assert_array_equal(example.pose_defined, steps_object == 2)


# --------------------------------------------------------------------------- points_dataset


def test_points_dataset_geometry():
    rng = np.random.default_rng(3)
    n = 20
    loc = rng.standard_normal((n, 3)).astype(np.float32)
    normals = rng.standard_normal((n, 3)).astype(np.float32)
    direction = rng.standard_normal((n, 3)).astype(np.float32)
    curv = np.stack([np.full(n, -30.0), np.linspace(-25, 5, n)], axis=1).astype(np.float32)
    feats = rng.random((n, 2)).astype(np.float32)
    train_q = np.array([[1, 0, 0, 0]], dtype=np.float32)
    eval_q = random_quaternions(2, rng)
    ds = points_dataset(
        [
            ("a", loc, normals, curv, feats),
            ("b", loc[:5], normals[:5], curv[:5], feats[:5], direction[:5]),
        ],
        train_rotations=train_q,
        eval_rotations=eval_q,
        feature_names=["f0", "f1"],
        seed=None,  # keep the point order, so steps line up with the input
    )
    np.testing.assert_array_equal(ds.episode_offsets, [0, 20, 25, 45, 50, 70, 75])
    np.testing.assert_array_equal(ds.episode_object, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(ds.episode_split, [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ds.episode_rotation, np.repeat([train_q[0], *eval_q], 2, axis=0))
    unit_normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    for e in range(ds.n_episodes):
        lo, hi = ds.episode_offsets[e], ds.episode_offsets[e + 1]
        m = hi - lo
        r = quat_to_matrix(ds.episode_rotation[e], dtype=np.float64)
        np.testing.assert_allclose(ds.location[lo:hi], loc[:m] @ r.T, atol=1e-6)
        canonical = ds.pose_vectors[lo:hi] @ r  # rotate back: rows v -> R^T v
        np.testing.assert_allclose(canonical[:, 0], unit_normals[:m], atol=1e-6)
        cross = np.cross(canonical[:, 0], canonical[:, 1])
        np.testing.assert_allclose(cross, canonical[:, 2], atol=1e-6)
        np.testing.assert_array_equal(ds.curvature[lo:hi], curv[:m])
        np.testing.assert_array_equal(ds.features[lo:hi], feats[:m])
        defined = np.abs(curv[:m, 0] - curv[:m, 1]) >= 10
        np.testing.assert_array_equal(ds.pose_defined[lo:hi], defined)
        if ds.episode_object[e] == 1:  # direction1 given: row 1 is it, made orthogonal
            n5 = unit_normals[:5]
            d = direction[:5] - np.sum(direction[:5] * n5, axis=1, keepdims=True) * n5
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            np.testing.assert_allclose(canonical[:, 1], d, atol=1e-5)


def test_points_dataset_seed_permutes_each_episode():
    pts = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    obj = ("o", pts, pts, np.zeros((30, 2)), None)
    q = np.tile(IDENTITY_QUATERNION, (2, 1))
    a = points_dataset([obj], train_rotations=q, eval_rotations=[], seed=5)
    b = points_dataset([obj], train_rotations=q, eval_rotations=[], seed=5)
    assert a == b
    first, second = a.location[:30], a.location[30:]
    assert not np.array_equal(first, second)  # independent orders
    np.testing.assert_array_equal(np.sort(first, axis=0), np.sort(pts, axis=0))


def test_points_dataset_bad_input():
    pts = np.zeros((4, 3))
    one = [IDENTITY_QUATERNION]
    with pytest.raises(ValueError, match="normals"):  # zero normals
        points_dataset([("o", pts, pts, np.zeros((4, 2)), None)], train_rotations=one, eval_rotations=[])
    with pytest.raises(ValueError, match="curvature"):  # 3 curvatures for 4 points
        normals = np.eye(3)[[0, 0, 0, 0]]
        points_dataset([("o", pts, normals, np.zeros((3, 2)), None)], train_rotations=one, eval_rotations=[])
    with pytest.raises(ValueError, match="train_rotations"):
        points_dataset([], train_rotations=[[0, 0, 0, 0]], eval_rotations=[])


# --------------------------------------------------------------------------- episodes


def _reference_bounds(offsets, split_values, split):
    starts, stops = [], []
    for e in range(len(split_values)):
        if split_values[e] == split:
            starts.append(int(offsets[e]))
            stops.append(int(offsets[e + 1]))
    return starts, stops


def test_episode_bounds_against_reference(example):
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 4, size=25)  # includes empty episodes
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    t, e = int(offsets[-1]), len(lengths)
    ds = _copy(
        example,
        location=np.zeros((t, 3), np.float32),
        pose_vectors=np.tile(np.eye(3, dtype=np.float32), (t, 1, 1)),
        pose_defined=np.zeros(t, bool),
        curvature=np.zeros((t, 2), np.float32),
        features=np.zeros((t, 1), np.float32),
        episode_offsets=offsets,
        episode_object=rng.integers(0, 3, size=e).astype(np.int32),
        episode_rotation=np.tile(IDENTITY_QUATERNION, (e, 1)),
        episode_split=rng.integers(0, 2, size=e).astype(np.int8),
    )
    validate_dataset(ds)
    for d in (ds, example):
        for split in (TRAIN, EVAL):
            starts, stops = d.episode_bounds(split)
            ref_starts, ref_stops = _reference_bounds(d.episode_offsets, d.episode_split, split)
            assert starts.dtype == stops.dtype == np.int64
            assert starts.tolist() == ref_starts and stops.tolist() == ref_stops
            idx = d.episode_indices(split)
            assert idx.dtype == np.int64
            assert idx.tolist() == [i for i in range(d.n_episodes) if d.episode_split[i] == split]
    with pytest.raises(ValueError):
        example.episode_bounds(2)


def test_properties(example):
    assert (example.n_steps, example.n_episodes, example.n_objects, example.n_features) == (720, 9, 3, 1)


# --------------------------------------------------------------------------- validation


def _set(key, index, value):
    """Mutation: copy of ``key`` with ``[index] = value``."""

    def mutate(ds):
        a = np.array(getattr(ds, key), copy=True)
        a[index] = value
        return {key: a}

    return mutate


def _scale_row(t, row, factor):
    def mutate(ds):
        p = ds.pose_vectors.copy()
        p[t, row] *= factor
        return {"pose_vectors": p}

    return mutate


def _shear(t):
    def mutate(ds):
        p = ds.pose_vectors.copy()
        p[t, 1] = (p[t, 1] + 0.01 * p[t, 0]) / np.linalg.norm(p[t, 1] + 0.01 * p[t, 0])
        return {"pose_vectors": p}

    return mutate


def _astype(key, dtype):
    return lambda ds: {key: getattr(ds, key).astype(dtype)}


def _apply(key, fn):
    return lambda ds: {key: fn(getattr(ds, key))}


def _reshape(key, fn):
    return lambda ds: {key: np.ascontiguousarray(fn(getattr(ds, key)))}


WRONG_DTYPE = {
    "location": np.float64,
    "pose_vectors": np.float16,
    "pose_defined": np.uint8,
    "curvature": np.float64,
    "features": np.int32,
    "feature_names": "S8",
    "episode_object": np.int64,
    "episode_offsets": np.int32,
    "episode_rotation": np.float64,
    "episode_split": np.int32,
    "object_names": object,
}

WRONG_SHAPE = {
    "location": lambda a: np.zeros((a.shape[0], 4), a.dtype),
    "pose_vectors": lambda a: a[:, :2],
    "pose_defined": lambda a: a[:-1],
    "curvature": lambda a: a[:, :1],
    "features": lambda a: a[:-1],
    "feature_names": lambda a: np.array(["hue", "extra"]),  # length != F
    "episode_object": lambda a: a[:-1],
    "episode_offsets": lambda a: a[:-1],
    "episode_rotation": lambda a: a[:, :3],
    "episode_split": lambda a: a[None],
    "object_names": lambda a: a.reshape(1, -1),
}

# (id, mutation returning changed fields, key named in the message, other message text)
VIOLATIONS = (
    [(f"dtype-{k}", _astype(k, d), k, "expected") for k, d in WRONG_DTYPE.items()]
    + [(f"shape-{k}", _reshape(k, f), k, "shape") for k, f in WRONG_SHAPE.items()]
    + [(f"nan-{k}", _set(k, 3, np.nan), k, f"{k}[3] contains NaN") for k in FLOAT_FIELDS]
    + [(f"inf-{k}", _set(k, 4, -np.inf), k, f"{k}[4] contains infinity") for k in FLOAT_FIELDS]
    + [
        ("big-endian", _astype("location", ">f4"), "location", "little-endian"),
        ("fortran-order", _apply("location", np.asfortranarray), "location", "C-contiguous"),
        ("not-an-array", _apply("curvature", np.ndarray.tolist), "curvature", "not a numpy array"),
        ("location-huge", _set("location", 6, 1e19), "location", "location[6]"),
        ("pose-row-norm", _scale_row(17, 1, 0.87), "pose_vectors",
         "pose_vectors[17] is not orthonormal (row 1 norm 0.87"),
        ("pose-not-orthogonal", _shear(9), "pose_vectors",
         "pose_vectors[9] is not orthonormal (rows 0 and 1"),
        ("pose-left-handed", _scale_row(5, 2, -1.0), "pose_vectors", "pose_vectors[5] is left-handed"),
        ("curvature-order", _set("curvature", 2, (1.0, -5.0)), "curvature", "abs(k1) >= abs(k2)"),
        ("quaternion-not-unit", _set("episode_rotation", 3, (1.01, 0, 0, 0)), "episode_rotation",
         "episode_rotation[3] has norm 1.01"),
        ("offsets-start", _set("episode_offsets", 0, 1), "episode_offsets", "start at 0"),
        ("offsets-end", _set("episode_offsets", -1, 719), "episode_offsets", "end at T = 720"),
        ("offsets-decreasing", _set("episode_offsets", 2, 500), "episode_offsets", "episode_offsets[3]"),
        ("object-too-big", _set("episode_object", 4, 3), "episode_object", "episode_object[4] = 3"),
        ("object-negative", _set("episode_object", 0, -1), "episode_object", "episode_object[0] = -1"),
        ("split-2", _set("episode_split", 7, 2), "episode_split", "episode_split[7] = 2"),
        ("meta-not-dict", lambda ds: {"meta": ["a"]}, "meta", "dict"),
        ("meta-not-json", lambda ds: {"meta": {"s": {1, 2}}}, "meta", "JSON"),
        ("meta-nan", lambda ds: {"meta": {"x": float("nan")}}, "meta", "JSON"),
    ]
)


@pytest.mark.parametrize("mutate,key,text", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_validation_rules(tmp_path, example, mutate, key, text):
    bad = _copy(example, **mutate(example))
    with pytest.raises(DatasetError) as err:
        validate_dataset(bad, source="src.npz")
    msg = str(err.value)
    assert msg.startswith(f"src.npz: key '{key}'"), msg
    assert text in msg, msg

    # Writing validates first: nothing at the target, no temporary file.
    target = tmp_path / "bad.npz"
    with pytest.raises(DatasetError, match=f"key '{key}'"):
        write_dataset(target, bad)
    assert os.listdir(tmp_path) == []

    # The same arrays in a file are rejected by the reader (meta is checked on write only:
    # a file's meta is a string, parsed separately).
    if key != "meta" and not isinstance(getattr(bad, key), list):
        arrays = _raw_arrays(bad)
        _save_raw(target, arrays)
        with pytest.raises(DatasetError) as err:
            read_dataset(target)
        assert str(err.value).startswith(f"{target}: key '{key}'"), str(err.value)


def test_message_format(tmp_path, example):
    path = tmp_path / "x.npz"
    arrays = _raw_arrays(example)
    arrays["location"] = example.location.astype(np.float64)
    _save_raw(path, arrays)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value) == (
        f"{path}: key 'location': expected float32 array of shape (T, 3), got float64 (720, 3)"
    )
    assert isinstance(err.value, ValueError)


def test_valid_data_passes(example):
    validate_dataset(example)
    # Swapping rows 1 and 2 and flipping every sign keeps the determinant +1.
    flipped = np.ascontiguousarray(-example.pose_vectors[:, [0, 2, 1]])
    validate_dataset(_copy(example, pose_vectors=flipped))


# --------------------------------------------------------------------------- reading files


@pytest.mark.parametrize("key", ["format", *ARRAY_FIELDS])
def test_missing_key(tmp_path, example, key):
    arrays = _raw_arrays(example)
    del arrays[key]
    path = tmp_path / "missing.npz"
    _save_raw(path, arrays)
    with pytest.raises(DatasetError, match=f"^{path}: missing required key '{key}'"):
        read_dataset(path)


@pytest.mark.parametrize(
    "key,value,text",
    [
        ("format", np.array("monty-episodes/3"), "unsupported format 'monty-episodes/3'"),
        ("format", np.array(["monty-episodes/1"]), "0-d str array"),
        ("format", np.array(1), "0-d str array"),
        ("meta", np.array("{not json"), "not valid JSON"),
        ("meta", np.array("[1, 2]"), "JSON list instead of an object"),
        ("meta", np.array(b"{}"), "0-d str array"),
    ],
)
def test_bad_format_or_meta_in_file(tmp_path, example, key, value, text):
    arrays = _raw_arrays(example)
    arrays[key] = value
    path = tmp_path / "bad.npz"
    _save_raw(path, arrays)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    assert str(err.value).startswith(f"{path}: key '{key}'")
    assert text in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        read_dataset(tmp_path / "nope.npz")


def test_directory(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        read_dataset(tmp_path)


@pytest.mark.parametrize(
    "content,text",
    [
        (b"location,x,y,z\n1,2,3,4\n", "not a zip/npz archive"),
        (b"", "empty file"),
        (b"\x80\x04\x95pickle", "not a zip/npz archive"),
    ],
)
def test_not_a_zip(tmp_path, content, text):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=text):
        read_dataset(path)


def test_npy_file(tmp_path, example):
    path = tmp_path / "single.npy"
    np.save(path, example.location)
    with pytest.raises(DatasetError, match=r"\.npy file, not an \.npz archive"):
        read_dataset(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file(tmp_path, example, compress):
    path = tmp_path / "full.npz"
    write_dataset(path, example, compress=compress)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"^{cut}: .*truncated or corrupt"):
        read_dataset(cut)


def test_corrupt_member_data(tmp_path, example):
    path = tmp_path / "full.npz"
    write_dataset(path, example, compress=True)
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid : mid + 64] = bytes(64)  # zero a stretch inside some member's data
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_dataset(path)


@pytest.mark.parametrize("key", ["object_names", "unknown_extra"])
def test_pickled_object_array(tmp_path, example, key):
    arrays = _raw_arrays(example)
    arrays[key] = np.array(["cube", "sphere", {"evil": 1}], dtype=object)
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=True, **arrays)
    with pytest.raises(DatasetError, match=f"^{path}: key '{key}' holds pickled Python objects"):
        read_dataset(path)


@pytest.mark.parametrize(
    "change,text",
    [
        (lambda a: a.astype(">f4"), "expected little-endian float32"),
        (np.asfortranarray, "C-contiguous"),
    ],
    ids=["big-endian", "fortran"],
)
def test_layout_in_file_rejected(tmp_path, example, change, text):
    arrays = _raw_arrays(example)
    arrays["pose_vectors"] = change(example.pose_vectors)
    path = tmp_path / "layout.npz"
    _save_raw(path, arrays)
    with pytest.raises(DatasetError, match=f"^{path}: key 'pose_vectors'.*{text}"):
        read_dataset(path)


# --------------------------------------------------------------------------- writing


def test_interrupted_write_leaves_nothing(tmp_path, example, monkeypatch):
    def exploding_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", exploding_savez)
    target = tmp_path / "out.npz"
    with pytest.raises(KeyboardInterrupt):
        write_dataset(target, example)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path, example):
    target = tmp_path / "out.npz"
    write_dataset(target, example)
    before = target.read_bytes()
    with pytest.raises(DatasetError):
        write_dataset(target, _copy(example, episode_split=np.full(9, 3, np.int8)))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.npz"]


def test_write_into_missing_folder(tmp_path, example):
    target = tmp_path / "no" / "such" / "out.npz"
    with pytest.raises(DatasetError, match="cannot write"):
        write_dataset(target, example)


def test_write_stores_meta_as_json_string(tmp_path, example):
    path = tmp_path / "meta.npz"
    write_dataset(path, _copy(example, meta={"generator": "test", "noise": [0.1, 0.2]}))
    with np.load(path, allow_pickle=False) as npz:
        assert npz["meta"].dtype.kind == "U" and npz["meta"].shape == ()
        assert str(npz["format"]) == FORMAT
    assert read_dataset(path).meta == {"generator": "test", "noise": [0.1, 0.2]}


# --------------------------------------------------------------------------- rotations


def test_quat_to_matrix():
    quarter_turn_z = [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]
    r = quat_to_matrix(quarter_turn_z)
    assert r.dtype == np.float32 and r.shape == (3, 3)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-7)
    np.testing.assert_array_equal(quat_to_matrix(IDENTITY_QUATERNION), np.eye(3))
    q = random_quaternions(50, 1)
    rs = quat_to_matrix(q)
    np.testing.assert_allclose(rs @ rs.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rs.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rs), 1, atol=1e-6)
    np.testing.assert_allclose(quat_to_matrix(-q), rs, atol=1e-7)
    with pytest.raises(ValueError):
        quat_to_matrix([0, 0, 0, 0])


def test_random_quaternions():
    q = random_quaternions(20000, np.random.default_rng(0))
    assert q.dtype == np.float32 and q.shape == (20000, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_array_equal(q[:5], random_quaternions(5, np.random.default_rng(0)))
    # Uniform over SO(3): the mean rotation matrix is zero.
    assert np.abs(quat_to_matrix(q).mean(axis=0)).max() < 0.03
    assert random_quaternions(0, 0).shape == (0, 4)
