"""Several sensor patches per step: the ``monty-episodes/2`` format (engine.data.dataset), the
simulated patches (engine.data.sensor) and the check of the sensor count against the config."""

from __future__ import annotations

import types

import numpy as np
import pytest

from engine.data.dataset import (
    FORMAT, FORMAT_2, DatasetError, EpisodeDataset, SensorSteps, read_dataset, sensor_key, validate_dataset,
    write_dataset,
)
from engine.data.example_data import EXAMPLE_DATASET_PATH, make_example_dataset
from engine.errors import UserError

STEP = ("location", "pose_vectors", "pose_defined", "curvature", "features")


def _with_sensors(ds: EpisodeDataset, n: int) -> EpisodeDataset:
    """``ds`` with ``n - 1`` further sensors: the first sensor's arrays, locations moved by s cm."""
    extra = []
    for s in range(1, n):
        loc = np.ascontiguousarray(ds.location + np.float32(0.01 * s))
        extra.append(SensorSteps(loc, ds.pose_vectors.copy(), ~ds.pose_defined, ds.curvature.copy(),
                                 ds.features.copy()))
    fields = {k: getattr(ds, k) for k in ("location", "pose_vectors", "pose_defined", "curvature", "features",
                                            "feature_names", "episode_offsets", "episode_object",
                                            "episode_rotation", "episode_split", "object_names")}
    return EpisodeDataset(**fields, meta=dict(ds.meta), sensors=tuple(extra))


@pytest.fixture(scope="module")
def three():
    return _with_sensors(make_example_dataset(), 3)


def _raw(ds: EpisodeDataset) -> dict:
    arrays = {k: getattr(ds, k) for k in ("location", "pose_vectors", "pose_defined", "curvature", "features",
                                          "feature_names", "episode_offsets", "episode_object",
                                          "episode_rotation", "episode_split", "object_names")}
    arrays["format"] = np.array(FORMAT_2)
    arrays["meta"] = np.array("{}")
    arrays["n_sensors"] = np.array(ds.n_sensors, np.int64)
    for s, steps in enumerate(ds.sensors, start=1):
        for k, a in zip(STEP, steps):
            arrays[sensor_key(s, k)] = a
    return arrays


def _save(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("layout,compress", [("npz", False), ("npz", True), ("npy-dir", False)])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_with_several_sensors(tmp_path, three, layout, compress, mmap):
    path = tmp_path / ("d.npz" if layout == "npz" else "d")
    write_dataset(path, three, compress=compress, layout=layout)
    back = read_dataset(path, mmap=mmap)
    assert back.n_sensors == 3
    assert back == three
    for s in range(3):
        for k, a, b in zip(STEP, back.sensor(s), three.sensor(s)):
            np.testing.assert_array_equal(a, b, err_msg=f"sensor {s} {k}")
    if layout == "npz":
        with np.load(path) as z:
            assert str(z["format"]) == FORMAT_2 and int(z["n_sensors"]) == 3


def test_one_sensor_is_version_1(tmp_path):
    ds = read_dataset(EXAMPLE_DATASET_PATH)
    assert ds.n_sensors == 1 and ds.sensors == ()
    np.testing.assert_array_equal(ds.sensor(0).location, ds.location)
    write_dataset(tmp_path / "one.npz", ds)
    with np.load(tmp_path / "one.npz") as z:
        assert str(z["format"]) == FORMAT and "n_sensors" not in z.files
    # a version 1 file ignores sensor keys like any unknown key
    raw = _raw(_with_sensors(ds, 2))
    raw["format"] = np.array(FORMAT)
    _save(tmp_path / "v1.npz", raw)
    assert read_dataset(tmp_path / "v1.npz").n_sensors == 1


def _expect(tmp_path, arrays, *texts):
    path = tmp_path / "bad.npz"
    _save(path, arrays)
    with pytest.raises(DatasetError) as err:
        read_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    for t in texts:
        assert t in msg, msg


def test_patches_disagreeing_in_step_count(tmp_path, three):
    raw = _raw(three)
    for k in STEP:
        raw[sensor_key(2, k)] = raw[sensor_key(2, k)][:-1]
    _expect(tmp_path, raw, "sensor2_location", "steps", "one row per step")
    raw = _raw(three)
    raw[sensor_key(1, "curvature")] = raw[sensor_key(1, "curvature")][1:]
    _expect(tmp_path, raw, "sensor1_curvature", "one row per step")


def test_bad_sensor_keys(tmp_path, three):
    raw = _raw(three)
    del raw[sensor_key(2, "pose_defined")]
    _expect(tmp_path, raw, "missing required key 'sensor2_pose_defined'", "n_sensors is 3")
    raw = _raw(three)
    del raw["n_sensors"]
    _expect(tmp_path, raw, "missing required key 'n_sensors'")
    for value, text in ((np.array(1, np.int64), "2 to"), (np.array(3.0), "0-d int64"), (np.array([3]), "0-d int64"),
                        (np.array(2, np.int64), "beyond n_sensors")):
        raw = _raw(three)
        raw["n_sensors"] = value
        _expect(tmp_path, raw, "n_sensors", text)
    raw = _raw(three)
    raw[sensor_key(1, "location")] = raw[sensor_key(1, "location")].astype(np.float64)
    _expect(tmp_path, raw, "sensor1_location", "float32")
    raw = _raw(three)
    loc = raw[sensor_key(2, "location")].copy()
    loc[5, 1] = np.nan
    raw[sensor_key(2, "location")] = loc
    _expect(tmp_path, raw, "sensor 2", "location", "NaN")
    raw = _raw(three)
    pose = raw[sensor_key(1, "pose_vectors")].copy()
    pose[3] *= 2
    raw[sensor_key(1, "pose_vectors")] = pose
    _expect(tmp_path, raw, "sensor 1", "pose_vectors")


def test_in_memory_validation(three):
    validate_dataset(three)
    bad = EpisodeDataset(*(getattr(three, k) for k in ("location", "pose_vectors", "pose_defined", "curvature",
                                                        "features", "feature_names", "episode_offsets",
                                                        "episode_object", "episode_rotation", "episode_split",
                                                        "object_names")),
                         sensors=(three.sensors[0]._replace(features=three.features[:, :0].copy()),))
    if three.n_features:
        with pytest.raises(DatasetError, match="sensor1_features"):
            validate_dataset(bad)


def test_sensor_count_must_match_the_config(three):
    from engine.data.episodes import check_sensor_count

    def cfg(n):
        return types.SimpleNamespace(evidence=types.SimpleNamespace(n_modules=n), source_file="c.yaml",
                                     data=types.SimpleNamespace(params={"path": "d.npz"}))

    check_sensor_count(cfg(3), three)
    with pytest.raises(UserError, match=r"c.yaml: data.path: d.npz holds 3 sensor patches per step, but "
                                         r"evidence.n_modules is 5"):
        check_sensor_count(cfg(5), three)
    with pytest.raises(UserError, match="holds 1 sensor patch per"):
        check_sensor_count(cfg(2), make_example_dataset())


# --------------------------------------------------------------------------- simulated patches


def test_patch_layout():
    from engine.data.sensor import patch_layout

    five = patch_layout(5, 0.01)
    np.testing.assert_allclose(five, [[0, 0], [0, 0.01], [0, -0.01], [0.01, 0], [-0.01, 0]])
    ten = patch_layout(10, 0.01)
    np.testing.assert_allclose(ten[:5], five)
    assert len({tuple(r) for r in np.round(ten, 6)}) == 10  # distinct
    assert np.all(np.linalg.norm(ten[5:], axis=1) > 0.01)  # further out than the first ring
    with pytest.raises(ValueError):
        patch_layout(0)


def test_simulated_patches():
    from engine.data import sensor

    surfs = sensor.builtin_surfaces(["box", "mug"], n_points=3000)
    one = sensor.simulate(surfs, train_steps=30, eval_rotations=1, eval_steps=20, noise=sensor.Noise(), seed=3)
    five = sensor.simulate(surfs, train_steps=30, eval_rotations=1, eval_steps=20, noise=sensor.Noise(), seed=3,
                           patches=5)
    assert five.n_sensors == 5 and one.n_sensors == 1
    for k in STEP:  # the first patch is the one-sensor dataset
        np.testing.assert_array_equal(getattr(five, k), getattr(one, k))
    train = five.episode_split == 0
    rows = np.repeat(train, np.diff(five.episode_offsets))
    for s in range(1, 5):
        p = five.sensor(s)
        d = np.linalg.norm(p.location[rows] - five.location[rows], axis=1)
        # noise-free training: each patch is a surface sample about 1 cm from the centre
        assert 0.004 < np.median(d) < 0.016, (s, np.median(d))
        # each has its own pose vectors (the sample's, not the centre's)
        assert not np.array_equal(p.pose_vectors[rows], five.pose_vectors[rows])
