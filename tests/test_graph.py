"""kernels.graph and engine.models.evidence.graph_memory against plain NumPy references.

The references (``tests/naive/graph.py``) are literal transcriptions of tbp.monty's rules (spec
§2.3–2.5), in float64: ``ref_thin`` is the O(N²) greedy ``remove_close_points``
loop, ``ref_grid_update`` the per-voxel loop of ``GridObjectModel._update_grids``
with ``pose_vector_mean`` / ``circular_mean`` / ``get_most_common_bool``. Data
are continuous random values (no float32-vs-float64 near-ties at thresholds)
plus exact duplicates.
"""

import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from engine.models.evidence.graph_memory import GraphArrays, GraphMemory, GridTooSmallWarning
from kernels import graph as kg
from kernels.topk_order import topk_order
from naive.graph import (RefGrid, ref_circular_mean, ref_orthonormal_pose_vectors, ref_pose_vector_merge,
                         ref_thin)

F32 = np.float32


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def unit(rng, n, around=None, spread=1.0):
    v = rng.normal(size=(n, 3))
    if around is not None:
        v = np.asarray(around) + spread * v
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(F32)


def cloud(rng, n, f=3, box=0.1):
    pos = (rng.random((n, 3)) * box).astype(F32)
    normals = unit(rng, n, around=[0, 0, 1], spread=0.5)
    feat = rng.random((n, f)).astype(F32)
    return pos, normals, feat


def frames(rng, n, spread=0.3):
    """Right-handed pose frames near one orientation: random ĉ1/ĉ2 signs, 20 % normals flipped."""
    base = Rotation.random(random_state=int(rng.integers(1 << 30)))
    rot = base * Rotation.from_rotvec(rng.normal(scale=spread, size=(n, 3)))
    m = rot.as_matrix().transpose(0, 2, 1)  # rows of Rᵀ: an orthonormal right-handed frame
    s = rng.choice([-1.0, 1.0], size=n)
    m[:, 1] *= s[:, None]
    m[:, 2] *= s[:, None]  # negating ĉ1 and ĉ2 together keeps it right-handed
    flip = rng.random(n) < 0.2
    m[flip] = m[flip] * np.array([-1.0, 1.0, -1.0])[:, None]  # other side: n̂, ĉ2 negated
    return m.astype(F32)


# --------------------------------------------------------------------------------------
# to_model_frame
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 50])
def test_to_model_frame_matches_numpy(n):
    rng = np.random.default_rng(n)
    loc = rng.normal(size=(n, 3)).astype(F32)
    pose = frames(rng, n) if n else np.zeros((0, 3, 3), F32)
    q = Rotation.random(random_state=n).as_matrix().astype(F32)
    lm, pm = kg.to_model_frame(loc, pose, q)
    assert lm.dtype == np.float32 and pm.dtype == np.float32 and pm.shape == (n, 3, 3)
    q64 = q.astype(np.float64)
    np.testing.assert_allclose(lm, loc @ q64, atol=1e-6)  # rows: (Qᵀ x)ᵀ = xᵀ Q
    np.testing.assert_allclose(pm, pose @ q64, atol=1e-6)
    # Inverse: rotating back gives the world data.
    np.testing.assert_allclose(lm @ q64.T, loc, atol=1e-5)


# --------------------------------------------------------------------------------------
# thin_nodes
# --------------------------------------------------------------------------------------

CIRC = np.array([True, False, False])
INF = np.inf

THRESHOLDS = [  # distance, normal_angle, feature thresholds
    (0.02, np.pi / 8, [0.1, 1.0, 1.0]),
    (0.02, np.pi / 4, [0.3, 0.5, INF]),
    (0.035, 2 * np.pi, [INF, INF, INF]),  # distance only
    (0.03, np.pi / 2, [0.45, 0.2, 0.3]),  # circular wrap matters for hue near 0/1
    (0.001, np.pi / 8, [0.1, 1.0, 1.0]),  # sparse: almost everything kept
    (1.0, np.pi / 3, [0.2, INF, INF]),    # everything in range: feature/normal tests decide
]


@pytest.mark.parametrize("distance,angle,thr", THRESHOLDS)
@pytest.mark.parametrize("n_old", [0, 40])
def test_thin_nodes_matches_reference(distance, angle, thr, n_old):
    rng = np.random.default_rng(int(distance * 1000) + n_old)
    pos, normals, feat = cloud(rng, 500)
    thr = np.array(thr, F32)
    keep = kg.thin_nodes(pos, normals, feat, n_old, F32(distance), F32(angle), thr, CIRC)
    ref = ref_thin(pos, normals, feat, n_old, distance, angle, thr, CIRC)
    assert keep.dtype == np.bool_
    np.testing.assert_array_equal(keep, ref)
    assert keep[:n_old].all()
    assert 0 < (~keep).sum() or distance == 0.001


def test_thin_nodes_duplicates_and_old_nodes():
    rng = np.random.default_rng(7)
    pos, normals, feat = cloud(rng, 200)
    thr = np.array([0.1, 1.0, 1.0], F32)
    # Every row twice (exact duplicates): the second copy is always redundant.
    idx = np.concatenate([np.arange(200), np.arange(200)])
    keep = kg.thin_nodes(pos[idx], normals[idx], feat[idx], 0, F32(0.02), F32(np.pi / 8), thr, CIRC)
    np.testing.assert_array_equal(keep, ref_thin(pos[idx], normals[idx], feat[idx], 0, 0.02, np.pi / 8, thr, CIRC))
    assert not keep[200:].any()
    # Old nodes that duplicate each other stay (accepted unconditionally) ...
    keep = kg.thin_nodes(pos[idx], normals[idx], feat[idx], 400, F32(0.02), F32(np.pi / 8), thr, CIRC)
    assert keep.all()
    # ... and new copies of old nodes are rejected.
    keep = kg.thin_nodes(pos[idx], normals[idx], feat[idx], 200, F32(0.02), F32(np.pi / 8), thr, CIRC)
    assert keep[:200].all() and not keep[200:].any()


def test_thin_nodes_same_place_different_feature_or_normal_is_kept():
    p = np.zeros((4, 3), F32)
    n = np.array([[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0]], F32)
    f = np.array([[0.05, 0], [0.97, 0], [0.5, 0], [0.05, 0]], F32)  # hue 0.05 ~ 0.97 (circular 0.08)
    thr = np.array([0.1, 1.0], F32)
    circ = np.array([True, False])
    keep = kg.thin_nodes(p, n, f, 0, F32(0.01), F32(np.pi / 8), thr, circ)
    np.testing.assert_array_equal(keep, [True, False, True, True])
    # Not circular: 0.97 is far from 0.05.
    keep = kg.thin_nodes(p, n, f, 0, F32(0.01), F32(np.pi / 8), thr, np.array([False, False]))
    np.testing.assert_array_equal(keep, [True, True, True, True])


@pytest.mark.parametrize("n", [0, 1])
def test_thin_nodes_empty_and_single(n):
    pos = np.zeros((n, 3), F32)
    keep = kg.thin_nodes(pos, pos.copy(), np.zeros((n, 2), F32), 0, F32(0.01), F32(0.4),
                         np.ones(2, F32), np.zeros(2, bool))
    assert keep.shape == (n,) and keep.all()


def test_thin_nodes_no_features_zero_and_infinite_distance_far_points():
    rng = np.random.default_rng(3)
    pos, normals, _ = cloud(rng, 300)
    feat = np.zeros((300, 0), F32)
    none = np.zeros(0, F32)
    nb = np.zeros(0, bool)
    for d in [0.0, 0.02, np.inf]:
        keep = kg.thin_nodes(pos, normals, feat, 0, F32(d), F32(np.pi / 8), none, nb)
        np.testing.assert_array_equal(keep, ref_thin(pos, normals, feat, 0, d, np.pi / 8, none, nb))
    assert kg.thin_nodes(pos, normals, feat, 0, F32(0.0), F32(np.pi / 8), none, nb).all()
    # Far from the origin with a tiny distance: cells are coarsened, answers unchanged.
    far = (pos + F32(1e6)).astype(F32)
    keep = kg.thin_nodes(far, normals, feat, 0, F32(1e-9), F32(np.pi), none, nb)
    np.testing.assert_array_equal(keep, ref_thin(far, normals, feat, 0, 1e-9, np.pi, none, nb))


def test_thin_nodes_zero_normals_count_as_close():
    p = np.zeros((2, 3), F32)
    n = np.zeros((2, 3), F32)
    keep = kg.thin_nodes(p, n, np.zeros((2, 0), F32), 0, F32(0.01), F32(0.1), np.zeros(0, F32), np.zeros(0, bool))
    np.testing.assert_array_equal(keep, ref_thin(p, n, np.zeros((2, 0)), 0, 0.01, 0.1, [], []))
    np.testing.assert_array_equal(keep, [True, False])


# --------------------------------------------------------------------------------------
# Grid model kernels
# --------------------------------------------------------------------------------------


class KernelGrid:
    """The grid-model kernels chained the way engine.models.evidence.graph_memory does."""

    def __init__(self, max_size, v, max_nodes, circ):
        self.scale = 1 / (max_size / v)
        self.v, self.max_nodes, self.circ = v, max_nodes, circ
        self.offset = None
        self.state = None

    def update(self, loc, pose, pfd, feat):
        if self.offset is None:
            self.offset = (self.v // 2 - np.rint(loc[0].astype(np.float64) * self.scale)).astype(np.int64)
            f = feat.shape[1]
            self.state = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), F32),
                          np.zeros((0, f), F32), np.zeros((0, 9), F32), np.zeros(0, F32))
        keys = kg.voxel_keys(loc, self.scale, self.offset, self.v)
        if (keys >= 0).sum() / len(keys) < 0.9:
            return False
        batch = kg.voxel_batch_means(keys, loc, pose.reshape(-1, 9), pfd, feat, self.circ)
        self.state = kg.merge_voxels(*self.state, *batch)
        return True

    def nodes(self):
        keys, count, loc, feat, pose, pfd = self.state
        top = kg.top_voxels(count, self.max_nodes)
        v = self.v
        k = keys[top]
        return [(int(a // (v * v)), int(a // v % v), int(a % v)) for a in k], count[top], loc[top], feat[top], \
            pose[top], pfd[top]


def grid_batch(rng, n, center, spread=0.12, f=2, zero_pose_frac=0.0):
    loc = (np.asarray(center) + rng.normal(scale=spread, size=(n, 3))).astype(F32)
    pose = frames(rng, n).reshape(n, 9)
    pose[rng.random(n) < zero_pose_frac] = 0
    pfd = (rng.random(n) < 0.6).astype(F32)
    feat = rng.random((n, f)).astype(F32)
    feat[:, 0] = (0.95 + 0.1 * rng.random(n)) % 1  # hue straddling 0: circular mean matters
    return loc, pose, pfd, feat


def torch_keys(ref):
    """The reference's node keys as tbp.monty picks them: ``counts.topk(max_nodes)`` over the
    voxels in key order, torch's order replayed by ``kernels.topk_order`` (itself checked
    against torch's recorded output in tests/test_topk_order.py)."""
    keys, counts = ref.counts_by_key()
    return [keys[i] for i in topk_order(counts, ref.max_nodes)]


def assert_same_nodes(got, ref, pose_atol=2e-4):
    gk, gc, gl, gf, gp, gpfd = got
    rk, rc, rl, rf, rp, rpfd = ref
    assert list(gk) == list(rk)
    np.testing.assert_array_equal(gc, rc)
    np.testing.assert_allclose(gl, rl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gf, rf, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(gp, rp, atol=pose_atol)
    np.testing.assert_array_equal(gpfd, rpfd)


@pytest.mark.parametrize("max_nodes", [1000, 25])
def test_grid_model_matches_reference(max_nodes):
    rng = np.random.default_rng(max_nodes)
    circ = np.array([True, False])
    got = KernelGrid(1.0, 10, max_nodes, circ)
    ref = RefGrid(1.0, 10, max_nodes, circ)
    batches = [grid_batch(rng, 400, [0.02, 0.0, 0.01], zero_pose_frac=0.05),
               grid_batch(rng, 300, [0.05, 0.03, 0.0], zero_pose_frac=0.05),  # overlaps: (new+old)/2
               grid_batch(rng, 200, [0.6, 0.6, 0.6], spread=0.02),             # mostly outside: skipped
               grid_batch(rng, 3, [0.0, 0.0, 0.0], spread=0.01)]               # pfd vote / pose edge cases
    for b in batches:
        assert got.update(*b) == ref.update(*b)
        nodes = got.nodes()
        assert sorted(nodes[1].tolist(), reverse=True) == ref.top_counts()
        assert_same_nodes(nodes, ref.nodes(nodes[0]))  # each node's voxel, as the reference has it
        assert nodes[0] == torch_keys(ref)               # and tbp.monty's choice and order of them
    assert got.update(*batches[2]) is False
    # Some voxels really were updated twice, and the top-k limit really bit.
    _, count, *_ = got.nodes()
    assert count.max() > 10
    if max_nodes == 25:
        assert len(count) == 25
    else:
        assert len(count) < max_nodes


def test_grid_counts_means_pfd_on_hand_made_voxel():
    # Two voxels of size 0.1 around the origin; the first observation sits in the centre voxel.
    circ = np.array([True])
    g = KernelGrid(1.0, 10, 10, circ)
    loc = np.array([[0.0, 0, 0], [0.02, 0, 0], [0.04, 0.01, 0], [0.3, 0, 0]], F32)
    pose = np.tile(np.eye(3, dtype=F32).reshape(1, 9), (4, 1))
    pfd = np.array([1, 0, 0, 1], F32)
    feat = np.array([[0.95], [0.1], [0.05], [0.5]], F32)
    hue = ref_circular_mean([0.95, 0.1, 0.05])
    assert 0.03 < hue < 0.04  # the arithmetic mean would be 0.37
    assert g.update(loc, pose, pfd, feat)
    keys, count, mloc, mfeat, mpose, mpfd = g.nodes()
    assert keys == [(5, 5, 5), (8, 5, 5)]
    np.testing.assert_array_equal(count, [3, 1])
    np.testing.assert_allclose(mloc[0], [0.02, 0.01 / 3, 0], atol=1e-7)
    np.testing.assert_allclose(mfeat[:, 0], [hue, 0.5], atol=1e-6)
    np.testing.assert_array_equal(mpfd, [0, 1])   # 1 of 3 defined -> False
    np.testing.assert_allclose(mpose[0], np.eye(3).ravel(), atol=1e-6)
    # Second batch: one obs in the centre voxel -> (new + old) / 2, count 4; a 1/1 tie of pfd -> True.
    assert g.update(np.array([[0.01, 0, 0], [0.0, 0.0, 0.01]], F32), pose[:2], np.array([1, 0], F32),
                    np.array([[0.25], [0.25]], F32))
    keys, count, mloc, mfeat, mpose, mpfd = g.nodes()
    np.testing.assert_array_equal(count, [5, 1])
    np.testing.assert_allclose(mloc[0], (np.array([0.005, 0, 0.005]) + [0.02, 0.01 / 3, 0]) / 2, atol=1e-7)
    np.testing.assert_allclose(mfeat[0], [(0.25 + hue) / 2], atol=1e-6)
    np.testing.assert_allclose(mpfd, [0.5, 1.0])


def _random_pose(rng):
    return Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix().astype(F32).ravel()


@pytest.mark.parametrize("case", ["random", "near", "same", "opposite_quaternions", "one_weight_zero",
                                  "equal_weights"])
def test_pose_rotation_mean_matches_scipy(case):
    rng = np.random.default_rng(len(case))
    for _ in range(200):
        a = _random_pose(rng)
        b = _random_pose(rng)
        wa, wb = (int(w) for w in rng.integers(1, 30, 2))
        if case == "near":
            b = (Rotation.from_matrix(a.reshape(3, 3)) * Rotation.from_rotvec(rng.normal(scale=0.05, size=3)))
            b = b.as_matrix().astype(F32).ravel()
        elif case == "same":
            b = a.copy()
        elif case == "opposite_quaternions":  # 180 degrees apart: q_a . q_b = 0
            axis = rng.normal(size=3)
            b = (Rotation.from_rotvec(np.pi * axis / np.linalg.norm(axis)) * Rotation.from_matrix(a.reshape(3, 3)))
            b = b.as_matrix().astype(F32).ravel()
            wb = wa + 1  # unequal weights: scipy's top eigenvector is unique
        elif case == "one_weight_zero":
            wb = 0
        elif case == "equal_weights":
            wb = wa
        got = np.empty(9, F32)
        kg.pose_rotation_mean(a, wa, b, wb, got)
        np.testing.assert_allclose(got, ref_pose_vector_merge(a, b, wa, wb), atol=2e-6)
        m = got.reshape(3, 3).astype(np.float64)
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=2e-6)
        assert np.linalg.det(m) > 0


@pytest.mark.parametrize("direction", [[0.3, 0.9, 0.1], [0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
@pytest.mark.parametrize("normal", [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
def test_orthonormal_pose_matches_reference_and_its_fallback(normal, direction):
    # A direction along the normal (or zero) has no tangent part: tbp.monty's TangentFrame fallback,
    # with its other axis when the normal lies along y.
    n = np.asarray(normal, F32)
    got = np.empty(9, F32)
    kg._orthonormal_pose(n, np.asarray(direction, F32), got)
    np.testing.assert_allclose(got, ref_orthonormal_pose_vectors(n.astype(np.float64), np.asarray(direction, float)),
                               atol=1e-6)
    m = got.reshape(3, 3).astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(m) > 0


def test_grid_pose_stays_a_rotation_when_curvature_signs_disagree():
    # One voxel seen twice with the same frame except ĉ1, ĉ2 negated (the curvature directions'
    # sign is arbitrary). The arithmetic (new + old) / 2 of the older rule gives ĉ1 = 0 here;
    # the rotation mean keeps a unit, right-handed frame, weighted towards the 3 observations.
    g = KernelGrid(1.0, 10, 10, np.array([False]))
    base = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix().T.astype(F32)
    flipped = base * np.array([1.0, -1.0, -1.0], F32)[:, None]
    loc = np.zeros((3, 3), F32)
    assert g.update(loc, np.tile(base.reshape(1, 9), (3, 1)), np.ones(3, F32), np.zeros((3, 1), F32))
    assert g.update(loc[:1], flipped.reshape(1, 9), np.ones(1, F32), np.zeros((1, 1), F32))
    _, count, _, _, pose, _ = g.nodes()
    assert list(count) == [4]
    m = pose[0].reshape(3, 3).astype(np.float64)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=2e-6)
    assert np.linalg.det(m) > 0
    np.testing.assert_allclose(m, ref_pose_vector_merge(flipped, base, 1, 3).reshape(3, 3), atol=2e-6)
    np.testing.assert_allclose(m[0], base[0], atol=2e-6)  # the normal agreed: it stays


def test_top_voxels_is_torch_topk_order():
    # tbp.monty's counts.topk(k): the counts in decreasing order, ties as torch leaves them
    # (checked against torch's own output in test_topk_order.py); here the known torch answers
    # of a small case: counts 3 5 3 5 1 -> positions [1, 3, 2, 0, 4], and [1, 3, 2] for k = 3
    counts = np.array([3, 5, 3, 5, 1], np.int64)
    np.testing.assert_array_equal(kg.top_voxels(counts, 10), [1, 3, 2, 0, 4])
    np.testing.assert_array_equal(kg.top_voxels(counts, 3), [1, 3, 2])
    assert kg.top_voxels(np.zeros(0, np.int64), 5).shape == (0,)


def test_voxel_keys_rounding_and_bounds():
    loc = np.array([[0.0, 0, 0], [0.049, 0, 0], [0.051, 0, 0], [-0.5, 0, 0], [0.46, 0, 0], [0.44, 0.0, 0]], F32)
    keys = kg.voxel_keys(loc, 10.0, np.array([5, 5, 5], np.int64), 10)
    np.testing.assert_array_equal(keys, [555, 555, 655, 55, -1, 955])


# --------------------------------------------------------------------------------------
# GraphMemory
# --------------------------------------------------------------------------------------


def cube_surface(step=0.01, side=0.1):
    """Points on a cube's faces with outward normals; frames right-handed."""
    g = np.arange(0, side + 1e-9, step) - side / 2
    u, v = np.meshgrid(g, g, indexing="ij")
    u, v = u.ravel(), v.ravel()
    pts, poses = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = np.zeros((u.size, 3))
            p[:, axis] = sign * side / 2
            p[:, (axis + 1) % 3] = u
            p[:, (axis + 2) % 3] = v
            n = np.zeros(3)
            n[axis] = sign
            c1 = np.zeros(3)
            c1[(axis + 1) % 3] = 1.0
            frame = np.stack([n, c1, np.cross(n, c1)])
            pts.append(p)
            poses.append(np.repeat(frame[None], u.size, axis=0))
    p = np.concatenate(pts)
    pose = np.concatenate(poses)
    _, first = np.unique(np.round(p, 6), axis=0, return_index=True)  # drop the duplicated edges
    first = np.sort(first)
    return p[first], pose[first]


def observe(points, frames_, q, rng):
    """World-frame observations of canonical points under rotation q (float32), shuffled."""
    order = rng.permutation(len(points))
    q64 = q.astype(np.float64)
    loc = (points[order] @ q64.T).astype(F32)
    pose = (frames_[order] @ q64.T).astype(F32)
    n = len(points)
    feat = np.stack([np.full(n, 0.3), np.linspace(0, 0.1, n)], axis=1).astype(F32)
    return loc, pose, np.ones(n, bool), feat, q


def test_graph_memory_two_rotations_share_model_frame():
    rng = np.random.default_rng(0)
    pts, fr = cube_surface()
    mem = GraphMemory(2, np.array([True, False]), distance=0.005)
    q1 = Rotation.from_euler("xyz", [0, 90, 0], degrees=True).as_matrix().astype(F32)
    q2 = Rotation.from_euler("xyz", [35, 45, 0], degrees=True).as_matrix().astype(F32)
    n1 = mem.add_episode("cube", *observe(pts, fr, q1, rng))
    assert n1 == len(pts)  # 1 cm spacing > 5 mm: all kept
    a = mem.arrays()
    # Model frame = canonical frame: the nodes are the canonical points (any order).
    got = a.node_pos[np.lexsort(a.node_pos.T)]
    want = pts[np.lexsort(pts.T)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Normals are the canonical outward normals.
    np.testing.assert_allclose(np.abs(a.node_pose[:, :3]).sum(1), 1, atol=1e-5)
    n2 = mem.add_episode("cube", *observe(pts, fr, q2, rng))
    assert n2 == n1  # every second-episode observation duplicates a first-episode node
    np.testing.assert_array_equal(mem.arrays().node_pos, a.node_pos)  # old nodes verbatim
    # A shifted copy (3 cm up along z, model frame) adds only the new points.
    shifted = pts + np.array([0, 0, 0.03])
    n3 = mem.add_episode("cube", *observe(shifted, fr, q2, rng))
    new_points = ~(np.abs(shifted[:, None, :] - pts[None]).max(-1) < 1e-6).any(1)
    # Points of the shifted cube within 5 mm of an old node with the same normal are dropped.
    ref = ref_thin(np.concatenate([pts, shifted]), np.concatenate([fr, fr])[:, 0],
                   np.zeros((2 * len(pts), 0)), len(pts), 0.005, np.pi / 8, [], [])
    assert n3 == ref.sum() and n3 > n1 and new_points.sum() >= n3 - n1


def test_graph_memory_order_csr_and_cache():
    rng = np.random.default_rng(1)
    mem = GraphMemory(1, np.array([False]), distance=0.02)
    q = np.eye(3, dtype=F32)

    def ep(n):
        loc = (rng.random((n, 3)) * 0.1).astype(F32)
        pose = frames(rng, n)
        return loc, pose, rng.random(n) < 0.5, rng.random((n, 1)).astype(F32), q

    mem.add_episode("b", *ep(200))
    ep_a = ep(50)
    mem.add_episode("a", *ep_a)
    a1 = mem.arrays()
    assert mem.arrays() is a1
    mem.add_episode("b", *ep(100))
    mem.add_episode("c", *ep(0))  # empty episode: object registered with 0 nodes
    a = mem.arrays()
    assert a is not a1 and isinstance(a, GraphArrays)
    assert mem.labels == ("b", "a", "c") == a.object_names
    counts = [mem.n_nodes(x) for x in mem.labels]
    np.testing.assert_array_equal(a.obj_start, np.concatenate([[0], np.cumsum(counts)]))
    assert a.obj_start.dtype == np.int64 and counts[2] == 0
    n = a.obj_start[-1]
    assert a.node_pos.shape == (n, 3) and a.node_pose.shape == (n, 9) and a.node_pfd.shape == (n,)
    assert a.node_feat.shape == (n, 1)
    for arr in (a.node_pos, a.node_pose, a.node_pfd, a.node_feat):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
    assert set(np.unique(a.node_pfd)) <= {0.0, 1.0}
    # "a"'s rows are exactly its episode, thinned with the reference.
    loc, pose, pdef, feat, _ = ep_a
    keep = ref_thin(loc, pose[:, 0], feat, 0, 0.02, np.pi / 8, [1.0], [False])
    rows = slice(a.obj_start[1], a.obj_start[2])
    np.testing.assert_array_equal(a.node_pos[rows], loc[keep])
    np.testing.assert_array_equal(a.node_pose[rows], pose[keep].reshape(-1, 9))
    np.testing.assert_array_equal(a.node_pfd[rows], pdef[keep])
    np.testing.assert_array_equal(a.node_feat[rows], feat[keep])
    with pytest.raises(KeyError, match="nope"):
        mem.n_nodes("nope")
    empty = GraphMemory(2, np.zeros(2, bool)).arrays()
    assert empty.node_feat.shape == (0, 2) and list(empty.obj_start) == [0] and empty.object_names == ()


def test_graph_memory_thins_like_reference():
    rng = np.random.default_rng(5)
    circ = np.array([True, False, False])
    mem = GraphMemory(3, circ)  # defaults: 1 cm, π/8, [0.1, 1, 1]
    q = Rotation.random(random_state=3).as_matrix().astype(F32)
    eps = []
    for _ in range(3):
        pos, normals, feat = cloud(rng, 400, box=0.08)
        pose = frames(rng, 400)
        pose[:, 0] = normals
        eps.append((pos, pose, feat))
        mem.add_episode("x", (pos @ q.T.astype(np.float64)).astype(F32), (pose @ q.T.astype(np.float64)).astype(F32),
                        np.ones(400, bool), feat, q)
    # Reference: thin episode by episode in the model frame (float32 round trip via the kernel).
    nodes_pos = np.zeros((0, 3), F32)
    nodes_n = np.zeros((0, 3), F32)
    nodes_f = np.zeros((0, 3), F32)
    for pos, pose, feat in eps:
        lm, pm = kg.to_model_frame((pos @ q.T.astype(np.float64)).astype(F32),
                                   (pose @ q.T.astype(np.float64)).astype(F32), q)
        allp = np.concatenate([nodes_pos, lm])
        alln = np.concatenate([nodes_n, pm[:, 0]])
        allf = np.concatenate([nodes_f, feat])
        keep = ref_thin(allp, alln, allf, len(nodes_pos), 0.01, np.pi / 8, [0.1, 1, 1], circ)
        nodes_pos, nodes_n, nodes_f = allp[keep], alln[keep], allf[keep]
    a = mem.arrays()
    np.testing.assert_array_equal(a.node_pos, nodes_pos)
    np.testing.assert_array_equal(a.node_feat, nodes_f)
    np.testing.assert_array_equal(a.node_pose[:, :3], nodes_n)


def test_graph_memory_grid_kind():
    rng = np.random.default_rng(2)
    pts, fr = cube_surface(step=0.005)
    circ = np.array([True, False])
    mem = GraphMemory(2, circ, kind="grid", max_size=0.3, voxels_per_dim=30, max_nodes=150)
    q1 = np.eye(3, dtype=F32)
    q2 = Rotation.from_euler("xyz", [90, 180, 0], degrees=True).as_matrix().astype(F32)
    ref = RefGrid(0.3, 30, 150, circ)
    for q in (q1, q2):
        loc, pose, pfd, feat, _ = observe(pts, fr, q, rng)
        n = mem.add_episode("cube", loc, pose, pfd, feat, q)
        lm, pm = kg.to_model_frame(loc, pose, q)
        ref.update(lm, pm.reshape(-1, 9), pfd.astype(F32), feat)
        assert n == 150 and not mem.last_update_skipped
    _, _, rl, rf, rp, rpfd = ref.nodes(torch_keys(ref))
    a = mem.arrays()
    np.testing.assert_allclose(a.node_pos, rl, atol=1e-6)
    np.testing.assert_allclose(a.node_feat, rf, atol=1e-5)
    np.testing.assert_allclose(a.node_pose, rp, atol=1e-4)
    np.testing.assert_array_equal(a.node_pfd, rpfd)
    # An episode far outside the grid is skipped and reported.
    loc, pose, pfd, feat, _ = observe(pts + 1.0, fr, q1, rng)
    with pytest.warns(GridTooSmallWarning):
        assert mem.add_episode("cube", loc, pose, pfd, feat, q1) == 150
    assert mem.last_update_skipped
    np.testing.assert_array_equal(mem.arrays().node_pos, a.node_pos)
    with pytest.warns(GridTooSmallWarning):  # a new object whose first build fails is not created
        big = np.array([[0, 0, 0]] + [[5.0, 5, 5]] * 9, F32)
        mem.add_episode("huge", big, np.tile(np.eye(3, dtype=F32), (10, 1, 1)), np.ones(10, bool),
                        np.zeros((10, 2), F32), q1)
    assert mem.labels == ("cube",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem.add_episode("cube", loc[:0], pose[:0], pfd[:0], feat[:0], q1)  # empty: no-op
    assert not mem.last_update_skipped


def _episode(n=5, f=2):
    return dict(label="o", location=np.zeros((n, 3), F32), pose=np.tile(np.eye(3, dtype=F32), (n, 1, 1)),
                pose_defined=np.ones(n, bool), features=np.zeros((n, f), F32), rotation_matrix=np.eye(3, dtype=F32))


@pytest.mark.parametrize("arg,value,match", [
    ("location", np.zeros((5, 3), np.float64), "location must have dtype float32"),
    ("location", np.zeros((5, 2), F32), "location must have shape"),
    ("location", np.array([[np.nan, 0, 0]] * 5, F32), "location contains NaN"),
    ("pose", np.zeros((4, 3, 3), F32), "pose must have shape"),
    ("pose", np.full((5, 3, 3), np.inf, F32), "pose contains NaN"),
    ("pose_defined", np.ones(5, np.float32), "pose_defined must have dtype bool"),
    ("features", np.zeros((5, 3), F32), "features must have shape"),
    ("features", np.array([[np.nan, 0]] * 5, F32), "features contains NaN"),
    ("rotation_matrix", np.eye(3, dtype=F32) * 2, "rotation_matrix must be a rotation"),
    ("rotation_matrix", np.diag([1, 1, -1]).astype(F32), "rotation_matrix must be a rotation"),
    ("rotation_matrix", [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "rotation_matrix must be a numpy array"),
    ("label", "", "label"),
])
def test_add_episode_validation(arg, value, match):
    mem = GraphMemory(2, np.zeros(2, bool))
    kw = _episode()
    kw[arg] = value
    with pytest.raises(ValueError, match=match):
        mem.add_episode(**kw)
    assert mem.labels == ()


@pytest.mark.parametrize("kw,match", [
    (dict(circular=np.zeros(3, bool)), "circular"),
    (dict(kind="tree"), "kind"),
    (dict(distance=np.nan), "distance"),
    (dict(feat_thresholds=[0.1, np.nan]), "feat_thresholds"),
    (dict(feat_thresholds=[0.1]), "feat_thresholds"),
    (dict(max_size=0.0), "max_size"),
    (dict(voxels_per_dim=0), "voxels_per_dim"),
])
def test_constructor_validation(kw, match):
    args = dict(circular=np.zeros(2, bool))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        GraphMemory(2, **args)
