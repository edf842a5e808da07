"""engine.data.sensor: surface sampling, walks, rotations, noise and simulated datasets."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.data.dataset import EVAL, TRAIN, EpisodeDataset, read_dataset, validate_dataset, write_dataset
from engine.data.rotations import quat_to_matrix
from engine.data.sensor import (
    TRAINING_ROTATIONS_EULER,
    Noise,
    Surface,
    apply_noise,
    builtin_surfaces,
    euler_xyz_to_quaternion,
    sample_surface,
    simulate,
    walk,
)
from engine.data.shapes import make_shape
from kernels.kdtree import query_knn


@pytest.fixture(scope="module")
def sphere():
    return sample_surface(make_shape("sphere"), n_points=8000, seed=0)


@pytest.fixture(scope="module")
def small_objects():
    return builtin_surfaces(("box", "mug", "banana"), n_points=4000, seed=1)


def test_sample_surface_sphere(sphere):
    s = sphere
    assert isinstance(s, Surface) and s.n_points == 8000
    assert s.points.dtype == s.normals.dtype == s.curvature.dtype == s.directions.dtype == np.float32
    assert s.pose_defined.dtype == np.bool_
    r = np.linalg.norm(s.points, axis=1)
    np.testing.assert_allclose(r, 0.05, atol=2e-4)  # on the (faceted) sphere
    assert np.all(np.sum(s.normals * s.points / r[:, None], axis=1) > 0.995)  # outward
    np.testing.assert_allclose(s.curvature, -20.0, rtol=0.05)
    assert not s.pose_defined.any()
    frames = s.pose_vectors().astype(np.float64)
    np.testing.assert_allclose(frames @ frames.transpose(0, 2, 1), np.broadcast_to(np.eye(3), frames.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(frames), 1.0, atol=1e-5)


def test_sample_surface_cylinder_side_pose_defined():
    s = sample_surface(make_shape("cylinder"), n_points=8000, seed=0)
    # Side samples away from the rims (radius 0.03, height 0.1, axis z).
    side = (np.hypot(s.points[:, 0], s.points[:, 1]) > 0.0299) & (np.abs(s.points[:, 2]) < 0.04)
    assert side.sum() > 1000
    assert s.pose_defined[side].all()
    np.testing.assert_allclose(s.curvature[side, 0], -1 / 0.03, rtol=0.05)
    assert np.all(np.abs(s.curvature[side, 1]) < 2.0)
    assert np.all(np.abs(s.directions[side, 0, 2]) < 0.05)
    # Flat caps: not defined.
    cap = np.abs(s.points[:, 2]) > 0.0499
    cap &= np.hypot(s.points[:, 0], s.points[:, 1]) < 0.02
    assert cap.sum() > 100 and not s.pose_defined[cap].any()


def test_sample_surface_deterministic_and_composite():
    a = sample_surface(make_shape("mug"), n_points=3000, seed=4)
    b = sample_surface(make_shape("mug"), n_points=3000, seed=4)
    c = sample_surface(make_shape("mug"), n_points=3000, seed=5)
    assert a.n_points == 3000  # composite: hidden samples dropped, count kept
    for key in ("points", "normals", "curvature", "directions", "pose_defined"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.points, c.points)
    with pytest.raises(ValueError):
        sample_surface("not a mesh")
    with pytest.raises(ValueError):
        sample_surface(make_shape("box"), n_points=0)


def test_walk_steps_on_surface(sphere, small_objects):
    for name, surf in [("sphere", sphere), *small_objects]:
        idx = walk(surf, 400, np.random.default_rng(3))
        assert idx.dtype == np.int64 and idx.shape == (400,)
        steps = np.linalg.norm(np.diff(surf.points[idx], axis=0), axis=1)
        assert abs(np.median(steps) - 0.01) < 0.003, name
        assert np.mean(steps < 0.003) < 0.05, name
        # consecutive normals agree (never jumps to the far side of a thin part)
        dots = np.sum(surf.normals[idx[1:]] * surf.normals[idx[:-1]], axis=1)
        assert np.all(dots > -0.5), name
    r = np.linalg.norm(sphere.points[walk(sphere, 400, 0)], axis=1)
    np.testing.assert_allclose(r, 0.05, atol=2e-4)  # on the surface
    assert np.array_equal(walk(sphere, 50, 7), walk(sphere, 50, 7))
    assert walk(sphere, 0, 0).shape == (0,)
    with pytest.raises(ValueError):
        walk(sphere, 5, 0, step_size=0.0)
    with pytest.raises(ValueError):
        walk(sphere, -1, 0)


def test_euler_matches_scipy():
    rng = np.random.default_rng(0)
    angles = np.concatenate([TRAINING_ROTATIONS_EULER, rng.uniform(-360, 360, (200, 3))])
    q = euler_xyz_to_quaternion(angles)
    assert q.dtype == np.float32 and q.shape == (214, 4) and np.all(q[:, 0] >= 0)
    ref = Rotation.from_euler("xyz", angles, degrees=True)
    ref_q = ref.as_quat()[:, [3, 0, 1, 2]]  # scipy: (x, y, z, w)
    np.testing.assert_allclose(np.abs(np.sum(q * ref_q, axis=1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(quat_to_matrix(q), ref.as_matrix(), atol=1e-6)
    assert euler_xyz_to_quaternion(np.zeros((2, 5, 3))).shape == (2, 5, 4)
    with pytest.raises(ValueError):
        euler_xyz_to_quaternion([1.0, 2.0])
    with pytest.raises(ValueError):
        euler_xyz_to_quaternion([np.nan, 0, 0])


def test_training_rotations():
    assert TRAINING_ROTATIONS_EULER.shape == (14, 3)
    assert TRAINING_ROTATIONS_EULER[0].tolist() == [0, 0, 0]
    assert TRAINING_ROTATIONS_EULER[-1].tolist() == [325, 225, 0]


def _random_frames(rng, n):
    m = Rotation.random(n, random_state=rng).as_matrix().astype(np.float32)
    return np.ascontiguousarray(m.transpose(0, 2, 1))  # rows of a rotation: a right-handed frame


def test_noise_statistics():
    rng = np.random.default_rng(0)
    n = 40000
    loc = rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32)
    pose = _random_frames(rng, n)
    k = rng.uniform(-100, 100, (n, 2)).astype(np.float32)
    k = np.where((np.abs(k[:, 0]) >= np.abs(k[:, 1]))[:, None], k, k[:, ::-1])
    defined = rng.random(n) < 0.5
    hue = rng.uniform(0, 1, n).astype(np.float32)
    nl, npose, nk, nd, nh = apply_noise(Noise(), np.random.default_rng(1), loc, pose, k, defined, hue)
    assert nl.dtype == npose.dtype == nk.dtype == nh.dtype == np.float32 and nd.dtype == np.bool_
    assert np.std(nl - loc) == pytest.approx(0.002, rel=0.03)
    f = npose.astype(np.float64)
    np.testing.assert_allclose(f @ f.transpose(0, 2, 1), np.broadcast_to(np.eye(3), f.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(f), 1.0, atol=1e-5)
    np.testing.assert_allclose(npose[:, 2], np.cross(npose[:, 0], npose[:, 1]), atol=1e-5)
    # normal tilt: three N(0, 2 deg) Euler angles tilt a vector by a few degrees
    tilt = np.degrees(np.arccos(np.clip(np.sum(npose[:, 0] * pose[:, 0], axis=1), -1, 1)))
    assert 1.5 < np.median(tilt) < 4.0
    assert np.all(np.abs(nk[:, 0]) >= np.abs(nk[:, 1]))
    # the log curvature noise has sd 0.1 (where the order did not flip)
    same = np.sign(nk) == np.sign(k)
    log_diff = (np.log1p(np.abs(nk)) - np.log1p(np.abs(k)))[same.all(axis=1) & (np.abs(np.abs(k[:, 0]) - np.abs(k[:, 1])) > 30)]
    assert np.std(log_diff) == pytest.approx(0.1, rel=0.05)
    assert np.mean(nd != defined) == pytest.approx(0.01, abs=0.003)
    assert nh.min() >= 0 and nh.max() <= 1
    assert np.std((nh - hue)[(hue > 0.4) & (hue < 0.6)]) == pytest.approx(0.1, rel=0.05)


def test_noise_order_flip_keeps_frame():
    # Equal |k|: about half the steps flip order; directions must swap consistently.
    rng = np.random.default_rng(2)
    n = 2000
    pose = _random_frames(rng, n)
    k = np.tile(np.float32([-30.0, 30.0]), (n, 1))
    _, npose, nk, _, _ = apply_noise(Noise(pose_deg=0, location=0), rng, np.zeros((n, 3), np.float32),
                                     pose, k, np.ones(n, bool))
    flipped = nk[:, 0] > 0
    assert 0.3 < flipped.mean() < 0.7
    np.testing.assert_allclose(npose[flipped, 1], pose[flipped, 2], atol=1e-6)
    np.testing.assert_allclose(npose[flipped, 2], -pose[flipped, 1], atol=1e-6)
    np.testing.assert_allclose(npose[:, 2], np.cross(npose[:, 0], npose[:, 1]), atol=1e-5)


def test_noise_none_is_identity():
    rng = np.random.default_rng(3)
    n = 100
    loc = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    pose = _random_frames(rng, n)
    k = np.tile(np.float32([-40.0, 5.0]), (n, 1))
    defined = np.ones(n, bool)
    nl, npose, nk, nd, nh = apply_noise(Noise.none(), rng, loc, pose, k, defined, None)
    assert np.array_equal(nl, loc) and np.array_equal(nd, defined) and nh is None
    np.testing.assert_allclose(npose, pose, atol=1e-7)
    np.testing.assert_allclose(nk, k, rtol=1e-6)
    with pytest.raises(ValueError):
        Noise(location=-1.0)
    with pytest.raises(ValueError):
        Noise(pose_defined_flip=2.0)


def test_simulate_structure_and_validity(small_objects):
    ds = simulate(small_objects, train_steps=60, eval_rotations=3, eval_steps=20, seed=5)
    assert isinstance(ds, EpisodeDataset)
    validate_dataset(ds)
    n_obj = len(small_objects)
    assert ds.n_episodes == n_obj * 14 + n_obj * 3
    assert ds.n_steps == n_obj * 14 * 60 + n_obj * 3 * 20
    assert ds.object_names.tolist() == ["box", "mug", "banana"]
    assert ds.episode_split.tolist() == [TRAIN] * 42 + [EVAL] * 9
    assert ds.episode_object.tolist() == [o for o in range(3) for _ in range(14)] + [o for o in range(3) for _ in range(3)]
    assert ds.n_features == 0 and ds.feature_names.shape == (0,)
    train_q = euler_xyz_to_quaternion(TRAINING_ROTATIONS_EULER)
    np.testing.assert_array_equal(ds.episode_rotation[:14], train_q)
    np.testing.assert_array_equal(ds.episode_rotation[14:28], train_q)
    assert ds.meta["train_steps"] == 60 and ds.meta["noise"] is None
    # Every episode's locations, rotated back, are samples of its object; pose rows too.
    for e in range(ds.n_episodes):
        lo, hi = ds.episode_offsets[e], ds.episode_offsets[e + 1]
        surf = small_objects[ds.episode_object[e]][1]
        r = quat_to_matrix(ds.episode_rotation[e], dtype=np.float64)
        canon = (ds.location[lo:hi].astype(np.float64) @ r).astype(np.float32)
        for t in range(0, hi - lo, 7):
            idx, dist = query_knn(surf.tree, canon[t], 1)
            assert dist[0] < 1e-6
            np.testing.assert_allclose(ds.pose_vectors[lo + t] @ r, surf.pose_vectors([idx[0]])[0], atol=1e-5)
            assert np.array_equal(ds.curvature[lo + t], surf.curvature[idx[0]])
        steps = np.linalg.norm(np.diff(ds.location[lo:hi], axis=0), axis=1)
        assert abs(np.median(steps) - 0.01) < 0.003
    # Eval rotations are not the training ones and differ between episodes.
    assert len(np.unique(ds.episode_rotation[42:].round(4), axis=0)) == 9


def test_simulate_noise_hue_determinism(small_objects, tmp_path):
    hue = {"box": 0.1, "mug": 0.5, "banana": 0.15}
    kw = dict(train_steps=30, eval_rotations=2, eval_steps=200, noise=Noise(), hue=hue)
    a = simulate(small_objects, seed=9, **kw)
    b = simulate(small_objects, seed=9, **kw)
    c = simulate(small_objects, seed=10, **kw)
    assert a == b
    assert not np.array_equal(a.location, c.location)
    assert a.feature_names.tolist() == ["hue"] and a.features.shape == (a.n_steps, 1)
    train_end = a.episode_offsets[42]
    # training: exact hue, no noise; evaluation: noisy hue around the object's value
    obj_of_step = np.repeat(a.episode_object, np.diff(a.episode_offsets))
    want = np.array([hue[n] for n in a.object_names])[obj_of_step]
    np.testing.assert_array_equal(a.features[:train_end, 0], want[:train_end].astype(np.float32))
    ev = a.features[train_end:, 0] - want[train_end:]
    mug = obj_of_step[train_end:] == 1
    assert 0.07 < np.std(ev[mug]) < 0.13
    assert a.meta["noise"]["location"] == 0.002 and a.meta["hue"] == hue
    # The eval locations are off the surface by the location noise.
    lo = a.episode_offsets[a.episode_split.tolist().index(EVAL)]
    e = a.episode_split.tolist().index(EVAL)
    r = quat_to_matrix(a.episode_rotation[e], dtype=np.float64)
    canon = (a.location[lo:a.episode_offsets[e + 1]].astype(np.float64) @ r).astype(np.float32)
    surf = small_objects[a.episode_object[e]][1]
    d = np.array([query_knn(surf.tree, p, 1)[1][0] for p in canon])
    assert np.median(d) > 0.001
    # round trip through the file format
    path = tmp_path / "sim.npz"
    write_dataset(path, a)
    assert read_dataset(path, mmap=False) == a


def test_simulate_errors(small_objects):
    with pytest.raises(ValueError):
        simulate([])
    with pytest.raises(ValueError, match="unique"):
        simulate([small_objects[0], small_objects[0]])
    with pytest.raises(ValueError, match="hue"):
        simulate(small_objects, hue={"box": 0.1})
    with pytest.raises(ValueError):
        simulate(small_objects, train_steps=-1)
