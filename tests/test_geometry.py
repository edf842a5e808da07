"""kernels.geometry: the local quadric curvature fit and the surface walk, against a plain
NumPy reference (np.linalg) and analytic surfaces."""

import numpy as np
import pytest

import naive.geometry
from kernels.geometry import (
    MIN_NEIGHBOUR_DOT,
    MIN_NEIGHBOURS,
    SIGMA_FRACTION,
    fit_surface,
    surface_walk,
)
from kernels.kdtree import build_tree

F32 = np.float32


# --------------------------------------------------------------------------- reference


def reference_fit(points, normals, center, radius):
    return naive.geometry.quadric_fit(points, normals, center, radius, MIN_NEIGHBOUR_DOT, MIN_NEIGHBOURS,
                                      SIGMA_FRACTION)


def check_frames(normal, curv, dirs):
    """The output convention: unit rows, orthonormal, dir2 = n x dir1, |k1| >= |k2|."""
    frames = np.concatenate([normal[:, None, :], dirs], axis=1).astype(np.float64)
    gram = frames @ frames.transpose(0, 2, 1)
    assert np.allclose(gram, np.eye(3), atol=2e-6)
    assert np.allclose(dirs[:, 1], np.cross(normal, dirs[:, 0]), atol=2e-6)
    assert np.allclose(np.linalg.det(frames), 1.0, atol=2e-6)
    assert np.all(np.abs(curv[:, 0]) >= np.abs(curv[:, 1]))


def random_rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 2] = -q[:, 2]
    return q


def quadric_patch(rng, n, k1, k2, size=0.012, normal_noise=0.05):
    """Samples of h = (k1 u^2 + k2 v^2)/2 (h along +normal; so positive k is concave),
    randomly rotated and moved; rough normals = true normals plus noise."""
    u, v = rng.uniform(-size, size, (2, n))
    h = 0.5 * (k1 * u * u + k2 * v * v)
    local = np.stack([u, v, h], axis=1)
    true_n = np.stack([-k1 * u, -k2 * v, np.ones(n)], axis=1)
    true_n /= np.linalg.norm(true_n, axis=1, keepdims=True)
    rough = true_n + normal_noise * rng.standard_normal((n, 3))
    rot = random_rotation(rng)
    shift = rng.uniform(-1, 1, 3)
    return (local @ rot.T + shift).astype(F32), (rough @ rot.T).astype(F32), rot


# --------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("seed", range(4))
def test_matches_numpy_reference_on_random_patches(seed):
    rng = np.random.default_rng(seed)
    k1, k2 = rng.uniform(-60, 60, 2)
    points, normals, _ = quadric_patch(rng, 1500, k1, k2)
    centers = rng.choice(len(points), 60, replace=False).astype(np.int64)
    normal, curv, dirs = fit_surface(points, normals, centers, 0.0075)
    assert normal.dtype == curv.dtype == dirs.dtype == np.float32
    assert normal.shape == (60, 3) and curv.shape == (60, 2) and dirs.shape == (60, 2, 3)
    check_frames(normal, curv, dirs)
    for i, c in enumerate(centers):
        n_ref, k_ref, d1_ref = reference_fit(points, normals, c, 0.0075)
        assert normal[i] @ n_ref > 1 - 1e-5
        scale = max(1.0, np.abs(k_ref).max())
        np.testing.assert_allclose(curv[i], k_ref, atol=2e-4 * scale)
        if d1_ref is not None and abs(k_ref[0] - k_ref[1]) > 0.05 * scale:
            assert abs(dirs[i, 0] @ d1_ref) > 1 - 1e-4


def test_matches_reference_on_random_cloud_and_sparse_points():
    # A random volume cloud (no surface at all) still gives the same numbers as the
    # reference, and isolated points fall back.
    rng = np.random.default_rng(7)
    cloud = rng.uniform(-0.01, 0.01, (400, 3)).astype(F32)
    isolated = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.004]], dtype=F32)
    points = np.concatenate([cloud, isolated])
    normals = rng.standard_normal(points.shape).astype(F32)
    centers = np.arange(len(points), dtype=np.int64)
    normal, curv, dirs = fit_surface(points, normals, centers, 0.006)
    check_frames(normal, curv, dirs)
    for i in range(0, len(points), 7):
        n_ref, k_ref, _ = reference_fit(points, normals, i, 0.006)
        assert normal[i] @ n_ref > 1 - 1e-4
        np.testing.assert_allclose(curv[i], k_ref, atol=1e-3 * max(1.0, np.abs(k_ref).max()))
    for i in (400, 401):  # fallback: rough normal, zero curvature
        np.testing.assert_allclose(normal[i], normals[i] / np.linalg.norm(normals[i]), atol=1e-6)
        assert np.all(curv[i] == 0)


# --------------------------------------------------------------------------- analytic


def sphere_points(rng, n, r):
    p = rng.standard_normal((n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return (p * r).astype(F32), p.astype(F32)


def test_fit_in_parts_on_threads_equals_the_reference_and_one_part(monkeypatch):
    """``fit_surface`` splits many centres into parts on threads and puts them back in the
    caller's order: each centre's fit is the reference's, and the result does not depend
    on the split (one part, several, centres in any order)."""
    import kernels.geometry as geo
    rng = np.random.default_rng(5)
    pts, rough = sphere_points(rng, 6000, 0.05)
    centers = rng.permutation(6000)[:5000].astype(np.int64)
    monkeypatch.setattr(geo, "_FIT_PART_MIN", 1000)
    many = fit_surface(pts, rough, centers, 0.01)
    monkeypatch.setattr(geo, "_FIT_PART_MIN", 10 ** 9)
    one = fit_surface(pts, rough, centers, 0.01)
    for a, b in zip(many, one):
        assert a.tobytes() == b.tobytes()
    for i in rng.integers(0, 5000, 8):
        n_ref, k_ref, _ = reference_fit(pts, rough, centers[i], 0.01)
        assert many[0][i] @ n_ref > 1 - 1e-5
        np.testing.assert_allclose(many[1][i], k_ref, atol=2e-4 * max(1.0, np.abs(k_ref).max()))


def test_sphere_convex_negative():
    rng = np.random.default_rng(1)
    points, normals = sphere_points(rng, 8000, 0.05)
    centers = np.arange(0, 8000, 10, dtype=np.int64)
    normal, curv, dirs = fit_surface(points, normals, centers, 0.0075)
    check_frames(normal, curv, dirs)
    np.testing.assert_allclose(curv, -20.0, rtol=0.03)
    assert np.all(np.sum(normal * normals[centers], axis=1) > 0.999)


def test_sphere_inside_is_concave_positive():
    rng = np.random.default_rng(2)
    points, normals = sphere_points(rng, 8000, 0.05)
    centers = np.arange(0, 8000, 20, dtype=np.int64)
    _, curv, _ = fit_surface(points, -normals, centers, 0.0075)  # inward normals
    np.testing.assert_allclose(curv, 20.0, rtol=0.03)


def test_cylinder_direction_around_axis():
    rng = np.random.default_rng(3)
    n, r = 12000, 0.03
    th = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(-0.05, 0.05, n)
    points = np.stack([r * np.cos(th), r * np.sin(th), z], axis=1).astype(F32)
    normals = np.stack([np.cos(th), np.sin(th), 0 * z], axis=1).astype(F32)
    centers = np.flatnonzero(np.abs(z) < 0.04)[::10].astype(np.int64)
    normal, curv, dirs = fit_surface(points, normals, centers, 0.0075)
    check_frames(normal, curv, dirs)
    np.testing.assert_allclose(curv[:, 0], -1 / r, rtol=0.03)
    assert np.all(np.abs(curv[:, 1]) < 0.5)
    assert np.all(np.abs(dirs[:, 0, 2]) < 0.02)  # dir1 goes around the axis
    assert np.all(np.abs(dirs[:, 1, 2]) > 0.999)  # dir2 along it


def test_plane_zero_curvature():
    rng = np.random.default_rng(4)
    xy = rng.uniform(-0.05, 0.05, (5000, 2))
    points = np.column_stack([xy, np.zeros(5000)]).astype(F32)
    normals = np.tile(F32([0, 0, 1]), (5000, 1))
    centers = np.arange(0, 5000, 25, dtype=np.int64)
    normal, curv, dirs = fit_surface(points, normals, centers, 0.0075)
    check_frames(normal, curv, dirs)
    assert np.all(np.abs(curv) < 1e-3)
    np.testing.assert_allclose(normal, np.tile([0, 0, 1], (len(centers), 1)), atol=1e-6)


def test_saddle_at_origin():
    # z = 25 x^2 - 15 y^2 with the normal up: curves towards the normal along x (concave,
    # +50) and away along y (convex, -30).
    rng = np.random.default_rng(5)
    xy = rng.uniform(-0.01, 0.01, (4000, 2))
    xy[0] = 0.0
    z = 25 * xy[:, 0] ** 2 - 15 * xy[:, 1] ** 2
    points = np.column_stack([xy, z]).astype(F32)
    normals = np.column_stack([-50 * xy[:, 0], 30 * xy[:, 1], np.ones(4000)]).astype(F32)
    normal, curv, dirs = fit_surface(points, normals, np.array([0], dtype=np.int64), 0.0075)
    check_frames(normal, curv, dirs)
    np.testing.assert_allclose(curv[0], [50.0, -30.0], rtol=0.02)
    assert abs(dirs[0, 0, 0]) > 0.999
    assert normal[0, 2] > 0.9999


# --------------------------------------------------------------------------- edge cases


def test_empty_and_single():
    empty = np.zeros((0, 3), dtype=F32)
    normal, curv, dirs = fit_surface(empty, empty, np.zeros(0, dtype=np.int64), 0.01)
    assert normal.shape == (0, 3) and curv.shape == (0, 2) and dirs.shape == (0, 2, 3)
    one = np.array([[0.1, 0.2, 0.3]], dtype=F32)
    rough = np.array([[0.0, 0.0, 2.0]], dtype=F32)
    normal, curv, dirs = fit_surface(one, rough, np.array([0], dtype=np.int64), 0.01)
    np.testing.assert_allclose(normal, [[0, 0, 1]])
    assert np.all(curv == 0)
    check_frames(normal, curv, dirs)


def test_validation_errors():
    p = np.zeros((4, 3), dtype=F32)
    c = np.arange(4, dtype=np.int64)
    with pytest.raises(ValueError, match="float32"):
        fit_surface(p.astype(np.float64), p, c, 0.01)
    with pytest.raises(ValueError, match="shape"):
        fit_surface(np.zeros((4, 2), dtype=F32), p, c, 0.01)
    bad = p.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_surface(bad, p, c, 0.01)
    with pytest.raises(ValueError, match="finite"):
        fit_surface(p, bad, c, 0.01)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_surface(p, p[:3], c, 0.01)
    with pytest.raises(ValueError, match="int64"):
        fit_surface(p, p, c.astype(np.int32), 0.01)
    with pytest.raises(ValueError, match="range"):
        fit_surface(p, p, np.array([4], dtype=np.int64), 0.01)
    for r in (0.0, -1.0, np.nan, np.inf, "x"):
        with pytest.raises(ValueError, match="radius"):
            fit_surface(p, p, c, r)


# --------------------------------------------------------------------------- walk


def test_walk_on_sphere_steps_and_stays_on_surface():
    rng = np.random.default_rng(6)
    points, normals = sphere_points(rng, 20000, 0.05)
    tree = build_tree(points)
    turns = rng.normal(0, np.radians(15), 1000).astype(F32)
    idx = surface_walk(points, normals, tree, 5, F32([1, 0, 0]), 0.01, turns)
    assert idx.dtype == np.int64 and idx.shape == (1000,) and idx[0] == 5
    steps = np.linalg.norm(np.diff(points[idx], axis=0), axis=1)
    assert abs(np.median(steps) - 0.01) < 0.002
    assert np.mean(steps == 0) < 0.01
    # it explores instead of pacing: the walk covers much of the sphere
    assert len(np.unique(idx)) > 900


def test_walk_straight_on_plane():
    rng = np.random.default_rng(8)
    xy = rng.uniform(-0.2, 0.2, (40000, 2))
    points = np.column_stack([xy, np.zeros(len(xy))]).astype(F32)
    normals = np.tile(F32([0, 0, 1]), (len(xy), 1))
    start = int(np.argmin(np.sum(xy**2, axis=1)))
    idx = surface_walk(points, normals, build_tree(points), start, F32([1, 0, 0.5]), 0.01,
                       np.zeros(15, dtype=F32))
    path = points[idx]
    # no turning: a straight line along +x (heading projected onto the plane)
    assert np.all(np.diff(path[:, 0]) > 0.007)
    assert np.all(np.abs(path[:, 1] - path[0, 1]) < 0.004)


def test_walk_crosses_box_edges():
    # Six faces of a cube: a straight walk must go over the edges onto the next faces.
    rng = np.random.default_rng(9)
    pts, nrm = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = rng.uniform(-0.05, 0.05, (6000, 3))
            p[:, axis] = sign * 0.05
            n = np.zeros((6000, 3))
            n[:, axis] = sign
            pts.append(p)
            nrm.append(n)
    points = np.concatenate(pts).astype(F32)
    normals = np.concatenate(nrm).astype(F32)
    idx = surface_walk(points, normals, build_tree(points), 0, F32([0, 1, 0]), 0.01,
                       np.zeros(60, dtype=F32))
    faces_visited = {tuple(normals[i]) for i in idx}
    assert len(faces_visited) >= 4  # went around the cube
    steps = np.linalg.norm(np.diff(points[idx], axis=0), axis=1)
    assert np.mean(steps == 0) < 0.05


def test_walk_edge_cases_and_validation():
    p = np.array([[0, 0, 0]], dtype=F32)
    n = np.array([[0, 0, 1]], dtype=F32)
    tree = build_tree(p)
    # one point: nowhere to go, stays put
    idx = surface_walk(p, n, tree, 0, F32([1, 0, 0]), 0.01, np.zeros(5, dtype=F32))
    assert np.all(idx == 0)
    assert surface_walk(p, n, tree, 0, F32([1, 0, 0]), 0.01, np.zeros(0, dtype=F32)).shape == (0,)
    with pytest.raises(ValueError):
        surface_walk(p, n, tree, 1, F32([1, 0, 0]), 0.01, np.zeros(3, dtype=F32))
    with pytest.raises(ValueError):
        surface_walk(p, n, tree, 0, F32([0, 0, 0]), 0.01, np.zeros(3, dtype=F32))
    with pytest.raises(ValueError):
        surface_walk(p, n, tree, 0, F32([1, 0, 0]), 0.0, np.zeros(3, dtype=F32))
    with pytest.raises(ValueError):
        surface_walk(p, n, tree, 0, F32([1, 0, 0]), 0.01, np.full(3, np.nan, dtype=F32))
    with pytest.raises(ValueError):
        surface_walk(p.astype(np.float64), n, tree, 0, F32([1, 0, 0]), 0.01, np.zeros(3, dtype=F32))


# ----------------------------------------------------------------------------- walk vs a reference


def test_surface_walk_matches_a_plain_reference():
    rng = np.random.default_rng(21)
    # a sphere and a box-like cloud: smooth turns and sharp edges
    v = rng.normal(size=(3000, 3))
    sphere = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(F32)
    cube = rng.uniform(-1, 1, (3000, 3))
    face = np.argmax(np.abs(cube), axis=1)
    cube[np.arange(3000), face] = np.sign(cube[np.arange(3000), face])
    cube_n = np.zeros_like(cube)
    cube_n[np.arange(3000), face] = cube[np.arange(3000), face]
    for pts, nrm in ((sphere * F32(0.05), sphere), (cube.astype(F32) * F32(0.05), cube_n.astype(F32))):
        turns = rng.normal(0, 0.25, 150).astype(F32)
        got = surface_walk(pts, nrm, build_tree(pts), 7, F32([1, 0.3, 0]), 0.01, turns)
        want = naive.geometry.surface_walk(pts, nrm, 7, F32([1, 0.3, 0]), 0.01, turns)
        # float32 against float64 arithmetic: equal on these clouds (no near-ties met)
        np.testing.assert_array_equal(got, want)
