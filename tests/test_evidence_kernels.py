"""Kernels of ``kernels/evidence.py`` against the spec-literal references of
``tests/evidence_reference.py`` (docs/evidence-matching.md sections 3 to 5).

Every call of the two parallel entry points uses one signature (float32 model and
hypothesis arrays, int64 index arrays, C order), so each compiles once per session.
"""


import numpy as np
import pytest
from numba import njit

import evidence_reference as er
from kernels import evidence as ev
from kernels.lanes import LANES
from kernels.evidence import (
    FP_BURST_SLOPE, FP_DELETION_SLOPE, FP_INCREMENT, FP_MMD, FP_OBJECT_THRESHOLD, FP_PAST,
    FP_PATH_SIMILARITY, FP_POSE_SIMILARITY, FP_PRESENT, FP_SAMPLING, FP_W_CURV, FP_W_NORMAL,
    FP_X_PERCENT, FS_MLH_EV, FS_SLOPE_MAX, FS_X_LAST, IP_BURST_DURATION, IP_K, IP_MAX_STEPS,
    IP_MIN_AGE, IP_MIN_STEPS, IP_SYMMETRY, IP_UMBILICAL, IP_UPDATER, IS_BURST_LEFT, IS_DETECTED,
    IS_MATCHING_STEPS, IS_MLH, IS_N_HYP, IS_N_NEW, IS_N_POSSIBLE, IS_NEED, IS_OUTCOME, IS_STEP,
    MATCH, NEED_CAPACITY, RUNNING, NO_MATCH, UPDATER_BURST, UPDATER_CLASSIC,
)
from kernels import evidence_phases as ph
from kernels.evidence_phases import k_nearest, k_nearest_lanes, k_nearest_span, mark_possible_objects
from kernels.lane_cells import cell_span

F32 = np.float32
MMD = 0.01
W = 10  # slope window (hyp_buf columns)

MODEL_KEYS = ev.ObjectModels._fields  # node_pos, ..., cand_code (kernels.evidence_layout)
GRID_K = 10  # the node grid's candidate lists serve any K <= GRID_K
HYP_KEYS = tuple("hyp_" + f for f in ev.Hypotheses._fields)  # hyp_obj, ..., hyp_buf

# features [hue (circular), f1, f2]: rows tolerance, weight, circular
FEAT_SPEC = np.ascontiguousarray([[0.1, 1.0, 1.0], [2.0, 0.5, 1.0], [1.0, 0.0, 0.0]], F32)


# ----------------------------------------------------------------------------- helpers


def rand_rot(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 2] = -q[:, 2]
    return q


def frames_from_normals(n, rng):
    """Pose rows (normal, c1, c2 = n x c1) with a random tangent c1, (N, 9)."""
    a = rng.normal(size=n.shape)
    c1 = a - np.sum(a * n, 1, keepdims=True) * n
    c1 /= np.linalg.norm(c1, axis=1, keepdims=True)
    c2 = np.cross(n, c1)
    return np.concatenate([n, c1, c2], 1)


def sphere_cloud(rng, n, radius, centre):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return centre + radius * d, frames_from_normals(d, rng)


def random_objects(rng, sizes):
    """Surface-like random objects (points on spheres); returns raw arrays."""
    pos, pose = [], []
    for i, n in enumerate(sizes):
        p, q = sphere_cloud(rng, n, rng.uniform(0.02, 0.045), rng.normal(size=3) * 0.03)
        pos.append(p)
        pose.append(q)
    pos = np.concatenate(pos) if pos else np.zeros((0, 3))
    pose = np.concatenate(pose) if pose else np.zeros((0, 9))
    n_all = len(pos)
    pfd = rng.integers(0, 2, n_all).astype(F32)
    feat = np.stack([rng.uniform(0, 1, n_all), rng.normal(0, 1.0, n_all), rng.normal(0, 1.0, n_all)], 1)
    obj_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return pos, pose, pfd, feat, obj_start


def make_model(pos, pose, pfd, feat, obj_start, mmd=MMD, k=GRID_K):
    """Build the node grid and re-order the node arrays by its ``order``."""
    obj_start = np.asarray(obj_start, np.int64)
    pos = np.ascontiguousarray(pos, F32)
    order, origin, index, cstart, cnode, cdist = ev.build_node_grid(pos, obj_start, mmd, k)
    m = dict(
        node_pos=np.ascontiguousarray(pos[order], F32),
        node_pose=np.ascontiguousarray(np.asarray(pose)[order], F32),
        node_pfd=np.ascontiguousarray(np.asarray(pfd)[order], F32),
        node_feat=np.ascontiguousarray(np.asarray(feat)[order], F32),
        obj_start=obj_start, grid_origin=origin, grid_index=index, cand_start=cstart, cand_node=cnode,
        cand_dist=cdist, cand_code=ev.candidate_codes(cnode, cdist, mmd),
    )
    return m, order


def make_params(**kw):
    d = dict(mmd=MMD, w_normal=1.0, w_curv=1.0, past=1.0, present=1.0, increment=1.0, sampling=0.4,
             deletion_slope=0.5, burst_slope=1.0, x_percent=20.0, object_threshold=1.0,
             path_similarity=0.1, pose_similarity=0.35, k=5, updater=UPDATER_BURST, umbilical=8,
             burst_duration=5, min_age=5, min_steps=20, max_steps=500, symmetry=5)
    d.update(kw)
    fp = np.zeros(ev.N_FPARAMS, F32)
    for idx, key in ((FP_MMD, "mmd"), (FP_W_NORMAL, "w_normal"), (FP_W_CURV, "w_curv"),
                     (FP_PAST, "past"), (FP_PRESENT, "present"), (FP_INCREMENT, "increment"),
                     (FP_SAMPLING, "sampling"), (FP_DELETION_SLOPE, "deletion_slope"),
                     (FP_BURST_SLOPE, "burst_slope"), (FP_X_PERCENT, "x_percent"),
                     (FP_OBJECT_THRESHOLD, "object_threshold"), (FP_PATH_SIMILARITY, "path_similarity"),
                     (FP_POSE_SIMILARITY, "pose_similarity")):
        fp[idx] = d[key]
    ip = np.zeros(ev.N_IPARAMS, np.int64)
    for idx, key in ((IP_K, "k"), (IP_UPDATER, "updater"), (IP_UMBILICAL, "umbilical"),
                     (IP_BURST_DURATION, "burst_duration"), (IP_MIN_AGE, "min_age"),
                     (IP_MIN_STEPS, "min_steps"), (IP_MAX_STEPS, "max_steps"), (IP_SYMMETRY, "symmetry")):
        ip[idx] = d[key]
    return fp, ip


def new_state():
    ist = np.zeros(ev.N_ISTATE, np.int64)
    ist[IS_MLH] = -1
    ist[IS_DETECTED] = -1
    return ist, np.zeros(ev.N_FSTATE, F32)


def alloc_hyps(cap, window=W):
    """The layout's hypothesis arrays as a dict (``hyp_`` + field name); slopes NaN (unknown)."""
    hy = dict(zip(HYP_KEYS, ev.new_hypotheses(cap, window)))
    hy["hyp_slope"][:] = np.nan
    return hy


def grow_hyps(hy, cap, n_live):
    new = alloc_hyps(cap, hy["hyp_buf"].shape[1])
    for key in HYP_KEYS:
        new[key][:n_live] = hy[key][:n_live]
    return new


def model_tuple(m):
    """The ``ObjectModels`` of a model dict (``make_model``): the same arrays."""
    return ev.object_models(*[m[k] for k in MODEL_KEYS])


def hyp_tuple(hy):
    """The ``Hypotheses`` of a dict of hypothesis arrays (``alloc_hyps``): the same arrays, so
    the kernels' writes show in the dict."""
    return ev.Hypotheses(*[hy[k] for k in HYP_KEYS])


def run_step(m, fp, ip, ist, fst, hy, location, pose, pose_defined, features, kappa, spec=FEAT_SPEC):
    n_obj = len(m["obj_start"]) - 1
    st = ev.State(ist, fst, np.zeros(n_obj, F32), np.zeros(n_obj, np.int64))
    obs = ev.observations(np.reshape(location, (1, 3)), np.reshape(pose, (1, 9)), [bool(pose_defined)],
                          np.reshape(features, (1, -1)), [kappa])
    code = ev.evidence_step(model_tuple(m), ev.params(spec, fp, ip), st, hyp_tuple(hy), obs, 0)
    return code, st.obj_max, st.obj_count


def run_episode(m, fp, ip, ist, fst, hy, obs, first_step, trace, spec=FEAT_SPEC):
    n_obj = len(m["obj_start"]) - 1
    st = ev.State(ist, fst, np.zeros(n_obj, F32), np.zeros(n_obj, np.int64))
    o = ev.Observations(*[obs[k] for k in ev.Observations._fields])
    code, t = ev.evidence_episode(model_tuple(m), ev.params(spec, fp, ip), st, hyp_tuple(hy), o, first_step, trace)
    return code, t, st.obj_max, st.obj_count


def kernel_phi(m, features, spec=FEAT_SPEC, increment=1.0):
    return ev.feature_evidence(m["node_feat"], features, spec[0], spec[1], spec[2], increment)


def ref_phi(m, features, spec=FEAT_SPEC, increment=1.0):
    return er.feature_evidence(m["node_feat"], features, spec[0], spec[1], spec[2].astype(bool), increment)


def expected_mlh(hyp_obj, hyp_ev, n_obj):
    """Per-object maxima and the MLH row (first object, then first row, wins ties)."""
    obj_max = np.full(n_obj, -np.inf, F32)
    count = np.bincount(hyp_obj, minlength=n_obj)
    for o in range(n_obj):
        if count[o]:
            obj_max[o] = hyp_ev[hyp_obj == o].max()
    live = np.flatnonzero(count > 0)
    if len(live) == 0:
        return obj_max, count, -1
    o_best = live[np.argmax(obj_max[live])]
    mlh = int(np.flatnonzero((hyp_obj == o_best) & (hyp_ev == obj_max[o_best]))[0])
    return obj_max, count, mlh


def ref_possible(obj_max, obj_count, x_percent=20.0):
    g = np.where(np.asarray(obj_count) > 0, np.asarray(obj_max, np.float64), np.nan)
    return er.possible_objects(g, x_percent)


# ----------------------------------------------------------------------------- 1. feature evidence


def test_feature_evidence_random():
    rng = np.random.default_rng(1)
    n, f = 700, 4
    feat = np.stack([rng.uniform(0, 1, n)] + [rng.normal(0, 1, n) for _ in range(f - 1)], 1).astype(F32)
    circ = np.array([1, 0, 0, 0], F32)
    for trial in range(6):
        obs = np.concatenate([[rng.uniform(0, 1)], rng.normal(0, 1, f - 1)]).astype(F32)
        tol = rng.uniform(0.05, 1.5, f).astype(F32)
        w = rng.uniform(0, 2, f).astype(F32)
        if trial % 2:
            w[rng.integers(f)] = 0.0  # one zero weight among nonzero ones
        inc = 1.0 if trial < 3 else 0.7
        got = ev.feature_evidence(feat, obs, tol, w, circ, inc)
        want = er.feature_evidence(feat, obs, tol, w, circ.astype(bool), inc)
        assert got.dtype == F32 and got.shape == (n,)
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
        assert np.all(got >= 0) and np.all(got <= inc * (1 + 1e-6))


def test_feature_evidence_hue_wraps_around():
    hue = np.array([0.0, 0.01, 0.04, 0.08, 0.5, 0.93, 0.97, 0.99, 1.0], F32)[:, None]
    tol, w = np.array([0.1], F32), np.array([2.0], F32)
    for obs in (0.0, 0.98, 1.0, 0.03, 0.5, 0.95):
        o = np.array([obs], F32)
        got = ev.feature_evidence(hue, o, tol, w, np.array([1], F32))
        want = er.feature_evidence(hue, o, tol, w, np.array([True]))
        np.testing.assert_allclose(got, want, atol=2e-6)
    # a linear column does not wrap: hue 0.99 vs 0.0 is far
    o = np.array([0.0], F32)
    assert ev.feature_evidence(hue, o, tol, w, np.array([0], F32))[7] == 0
    assert ev.feature_evidence(hue, o, tol, w, np.array([1], F32))[7] > 0.85


def test_feature_evidence_edge_cases():
    rng = np.random.default_rng(2)
    feat = rng.uniform(0, 1, (20, 3)).astype(F32)
    tol = np.full(3, 0.5, F32)
    circ = np.array([1, 0, 0], F32)
    obs = feat[3].copy()
    # no feature columns, and all weights zero: phi == 0
    np.testing.assert_array_equal(
        ev.feature_evidence(np.zeros((20, 0), F32), np.zeros(0, F32), np.zeros(0, F32),
                            np.zeros(0, F32), np.zeros(0, F32)), np.zeros(20, F32))
    np.testing.assert_array_equal(ev.feature_evidence(feat, obs, tol, np.zeros(3, F32), circ), np.zeros(20, F32))
    # one node, exact match -> increment
    w = np.array([2.0, 0.5, 0.5], F32)
    one = ev.feature_evidence(feat[3:4], obs, tol, w, circ, 0.8)
    np.testing.assert_allclose(one, [0.8], atol=1e-6)
    np.testing.assert_allclose(one, er.feature_evidence(feat[3:4], obs, tol, w, circ.astype(bool), 0.8),
                               atol=1e-6)
    # empty node set
    assert ev.feature_evidence(np.zeros((0, 3), F32), obs, tol, w, circ).shape == (0,)
    # the _into form writes only rows lo..hi
    phi = np.full(20, -7.0, F32)
    ev.feature_evidence_into(feat, 5, 12, obs, tol, w, circ, F32(1.0), phi)
    np.testing.assert_array_equal(phi[:5], -7.0)
    np.testing.assert_array_equal(phi[12:], -7.0)
    np.testing.assert_allclose(phi[5:12], er.feature_evidence(feat[5:12], obs, tol, w, circ.astype(bool)),
                               atol=2e-6)


# ----------------------------------------------------------------------------- 2. candidate frames


@pytest.mark.parametrize("pose_defined,n_umb", [(True, 8), (False, 8), (False, 4), (True, 4)])
def test_candidate_frames(pose_defined, n_umb):
    rng = np.random.default_rng(3)
    for _ in range(4):
        s = rand_rot(rng).astype(F32)
        got = ev.candidate_frames(np.ascontiguousarray(s.reshape(9)), pose_defined, n_umb)
        want = er.candidate_frames(s, pose_defined, n_umb)
        assert got.dtype == F32
        assert got.shape == ((2 if pose_defined else n_umb), 9)
        np.testing.assert_allclose(got, want.reshape(-1, 9), atol=2e-6)
        got33 = ev.candidate_frames(np.ascontiguousarray(s), pose_defined, n_umb)
        # the (3, 3) and (9,) specialisations may round the last bit differently
        np.testing.assert_allclose(got33, got, rtol=0, atol=2e-7)
        for fr in got.reshape(-1, 3, 3).astype(np.float64):
            np.testing.assert_array_equal(fr[0], s[0])  # normal unchanged
            np.testing.assert_allclose(fr @ fr.T, np.eye(3), atol=1e-5)
            assert np.linalg.det(fr) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- 3. node grid / k nearest


@njit
def _knn_batch(model, objs, q, k):
    nq = q.shape[0]
    out_m = np.zeros(nq, np.int64)
    out_d = np.full((nq, k), np.inf, np.float32)
    out_j = np.full((nq, k), -1, np.int64)
    bd = np.empty(k, np.float32)
    bj = np.empty(k, np.int64)
    for i in range(nq):
        m = k_nearest(model, np.float32(MMD), objs[i], q[i, 0], q[i, 1], q[i, 2], k, bd, bj)
        out_m[i] = m
        for t in range(m):
            out_d[i, t] = bd[t]
            out_j[i, t] = bj[t]
    return out_m, out_d, out_j


def _d2_f32(p, q):
    e = (p - q).astype(F32)
    return (e[:, 0] * e[:, 0] + e[:, 1] * e[:, 1] + e[:, 2] * e[:, 2]).astype(F32)


def _check_knn(pos, obj_start, objs, q, k, mmd, got_m, got_d, got_j):
    r2 = F32(mmd) * F32(mmd)
    band = 1e-6 * float(r2)
    for i in range(len(q)):
        o = objs[i]
        lo, hi = int(obj_start[o]), int(obj_start[o + 1])
        d2 = _d2_f32(pos[lo:hi], q[i])
        sure = np.sort(d2[d2 < r2 - band])
        maybe = int(np.sum((d2 >= r2 - band) & (d2 < r2 + band)))
        m = int(got_m[i])
        assert min(k, len(sure)) <= m <= min(k, len(sure) + maybe), (i, o, q[i], m, len(sure), maybe)
        # the kernel returns the best m in no particular order
        srt = np.argsort(got_d[i, :m], kind="stable")
        jj = got_j[i, :m][srt]
        assert np.all((jj >= lo) & (jj < hi)), (i, jj, lo, hi)
        assert len(np.unique(jj)) == m
        dd = got_d[i, :m][srt].astype(np.float64)
        assert np.all(dd < r2)  # strictly inside the radius
        np.testing.assert_allclose(dd, d2[jj - lo], rtol=2e-6, atol=1e-13)
        # the multiset of distances is the m smallest ones (ties may pick other rows)
        np.testing.assert_allclose(dd, np.sort(d2)[:m], rtol=2e-6, atol=1e-13, err_msg=str((i, o, q[i])))


def _grid_objects():
    rng = np.random.default_rng(4)
    parts = []
    p, _ = sphere_cloud(rng, 400, 0.04, np.array([0.01, -0.02, 0.03]))
    parts.append(p)                                        # 0: sphere
    parts.append(np.zeros((0, 3)))                         # 1: no nodes
    parts.append(np.array([[0.0, 0.0, 0.0]]))              # 2: one node (at the origin)
    base, _ = sphere_cloud(rng, 30, 0.01, np.array([0.2, 0.1, -0.05]))
    parts.append(np.concatenate([base, base, base[:7]]))   # 3: duplicated nodes
    p, _ = sphere_cloud(rng, 250, 0.025, np.array([-0.3, 0.0, 0.0]))
    parts.append(p)                                        # 4: another sphere
    # 5: a flat dense patch (many nodes per cell)
    g = np.stack(np.meshgrid(np.linspace(0, 0.03, 25), np.linspace(0, 0.03, 25), indexing="ij"), -1).reshape(-1, 2)
    parts.append(np.concatenate([g, np.full((len(g), 1), 0.5)], 1))
    # 6: a sparse cloud (fewer than K nodes in radius almost everywhere)
    parts.append(rng.uniform(-0.05, 0.05, (40, 3)) + [0, 0, -1.0])
    sizes = [len(x) for x in parts]
    pos = np.concatenate(parts).astype(F32)
    obj_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return pos, obj_start


def grid_model(g):
    """An ``ObjectModels`` for the search tests: a grid case's sorted positions and grid (no
    poses or features: the search reads none)."""
    n = len(g["pos"])
    return ev.object_models(g["pos"], np.zeros((n, 9)), np.zeros(n), np.zeros((n, 1)), g["obj_start"], g["origin"],
                            g["index"], g["cstart"], g["cnode"], g["cdist"],
                            ev.candidate_codes(g["cnode"], g["cdist"], MMD))


@pytest.fixture(scope="module")
def grid_cases():
    pos, obj_start = _grid_objects()
    out = {}
    for gk in (1, 5, 10, 64):
        order, origin, index, cstart, cnode, cdist = ev.build_node_grid(pos, obj_start, MMD, gk)
        out[gk] = dict(raw=pos, pos=np.ascontiguousarray(pos[order]), obj_start=obj_start, order=order,
                       origin=origin, index=index, cstart=cstart, cnode=cnode, cdist=cdist)
    return out


def test_build_node_grid_layout(grid_cases):
    g = grid_cases[5]
    pos, obj_start, order = g["pos"], g["obj_start"], g["order"]
    assert order.dtype == np.int64 and g["origin"].dtype == F32 and g["index"].dtype == np.int64
    assert g["cstart"].dtype == np.int64 and g["cnode"].dtype == np.int32 and g["cdist"].dtype == F32
    cell = F32(MMD) / F32(ev.CELLS_PER_RADIUS)
    n_obj = len(obj_start) - 1
    assert len(g["cstart"]) == int(np.prod(g["index"][:, :3], axis=1).sum()) + 1
    assert g["cstart"][0] == 0 and g["cstart"][-1] == len(g["cnode"]) == len(g["cdist"])
    for o in range(n_obj):
        lo, hi = obj_start[o], obj_start[o + 1]
        np.testing.assert_array_equal(np.sort(order[lo:hi]), np.arange(lo, hi))
        nx, ny, nz, base = g["index"][o]
        n_cells = nx * ny * nz
        cs = g["cstart"][base:base + n_cells + 1]
        assert np.all(np.diff(cs) >= 0)
        if hi == lo:
            assert cs[-1] == cs[0]
            continue
        # nodes sorted by cell, all inside the padded grid
        ijk = np.floor((pos[lo:hi] - g["origin"][o]) / cell).astype(np.int64)
        assert np.all(ijk >= 0) and np.all(ijk < [nx, ny, nz])
        cid = ijk[:, 0] + nx * (ijk[:, 1] + ny * ijk[:, 2])
        assert np.all(np.diff(cid) >= 0)
        # candidates: rows of this object, sorted by a lower bound of their distance to the cell centre
        nodes = g["cnode"][cs[0]:cs[-1]]
        assert np.all((nodes >= lo) & (nodes < hi))
        c_of = np.repeat(np.arange(n_cells), np.diff(cs))
        ix, iy, iz = c_of % nx, (c_of // nx) % ny, c_of // (nx * ny)
        centre = (g["origin"][o] + (np.stack([ix, iy, iz], 1).astype(F32) + F32(0.5)) * cell).astype(F32)
        true = np.linalg.norm(pos[nodes].astype(np.float64) - centre, axis=1)
        dist = g["cdist"][cs[0]:cs[-1]].astype(np.float64)
        assert np.all(dist <= true + 1e-9)
        same = np.diff(c_of) == 0
        assert np.all((np.diff(dist) >= 0) | ~same)
        key = np.sort(c_of.astype(np.int64) * (hi + 1) + nodes)
        assert np.all(np.diff(key) > 0)  # no node twice in one cell's list


def _grid_queries(g, rng, n_near=80):
    """Per object: queries near its nodes, exactly at nodes, around it, on cell boundaries
    (corners, faces, the grid's upper boundary), far outside the grid, and one NaN.
    Returns (float32 (Q, 3), int64 (Q,) objects)."""
    pos, obj_start = g["pos"], g["obj_start"]
    cell = F32(MMD) / F32(ev.CELLS_PER_RADIUS)
    qs, objs = [], []
    for o in range(len(obj_start) - 1):
        lo, hi = obj_start[o], obj_start[o + 1]
        nx, ny, nz, _ = g["index"][o]
        if hi > lo:
            sel = rng.integers(lo, hi, n_near)
            qs.append(pos[sel] + rng.normal(0, 0.5 * MMD, (n_near, 3)))
            qs.append(pos[sel[:10]])
            pmin, pmax = pos[lo:hi].min(0), pos[lo:hi].max(0)
            qs.append(rng.uniform(pmin - 2 * MMD, pmax + 2 * MMD, (n_near, 3)))
        ijk = np.stack([rng.integers(0, nx + 1, 60), rng.integers(0, ny + 1, 60), rng.integers(0, nz + 1, 60)], 1)
        frac = np.where(rng.uniform(size=(60, 3)) < 0.5, 0.0, rng.uniform(size=(60, 3)))
        qs.append(g["origin"][o] + (ijk + frac).astype(F32) * cell)
        qs.append(g["origin"][o] + np.array([[-1.0, 0, 0], [0, 0, 5.0], [1e3, 1e3, 1e3], [-1e6, 2.0, 0],
                                             [0, -20 * MMD, 0], [np.nan, 0, 0]]))
        objs += [o] * (sum(len(x) for x in qs) - len(objs))
    return np.ascontiguousarray(np.concatenate(qs), F32), np.asarray(objs, np.int64)


@pytest.mark.parametrize("k", [1, 5, 10, 64])
def test_k_nearest_vs_brute_force(grid_cases, k):
    g = grid_cases[k]
    pos, obj_start = g["pos"], g["obj_start"]
    rng = np.random.default_rng(6 + k)
    q, objs = _grid_queries(g, rng)
    qs, objs = [q], list(objs)
    # one node at the origin (object 2): exactly at the radius is out, just inside is in
    qs.append(np.array([[MMD, 0, 0], [0, -MMD, 0], [np.nextafter(F32(MMD), F32(0)), 0, 0], [0, 0, 0]]))
    objs += [2] * 4
    q = np.ascontiguousarray(np.concatenate(qs), F32)
    objs = np.asarray(objs, np.int64)
    got_m, got_d, got_j = _knn_batch(grid_model(g), objs, q, k)
    _check_knn(pos, obj_start, objs, q, k, MMD, got_m, got_d, got_j)
    assert list(got_m[-4:]) == [0, 0, 1, 1]
    assert got_m.max() == k or k == 64


@njit
def _lanes_batch(model, objs, q, k, rows):
    """``k_nearest_lanes`` over the queries ``rows`` (positions into ``q``), laid out as the step
    lays them out (objects int32, points one column per query in a (9, padded) table); the
    neighbours returned one row per query (the kernel writes one column per query)."""
    n = rows.shape[0]
    n_pad = (n + LANES - 1) // LANES * LANES
    qobj = np.full(n_pad, -7, np.int32)
    qpos = np.full((9, n_pad), np.nan, np.float32)
    for i in range(n):
        qobj[i] = objs[rows[i]]
        for a in range(3):
            qpos[a, i] = q[rows[i], a]
    out_j = np.full((max(k, 1), n), -7, np.int32)
    out_m = np.full(n, -7, np.int64)
    k_nearest_lanes(model, np.float32(MMD), k, qobj, qpos, n, out_j, out_m)
    return out_m, out_j.T.copy()


@pytest.mark.parametrize("k", [1, 5, 10, 64])
def test_k_nearest_lanes_vs_brute_force_and_single_queries(grid_cases, k):
    """The lock-step search finds the k nearest in radius (brute force), nearest first, the same
    distances as the one-query search, for any number of queries and any order of them."""
    g = grid_cases[k]
    pos, obj_start = g["pos"], g["obj_start"]
    rng = np.random.default_rng(60 + k)
    q, objs = _grid_queries(g, rng)
    finite = np.isfinite(q).all(1)
    ref_m, ref_d, ref_j = _knn_batch(grid_model(g), objs, q, k)
    perm = rng.permutation(len(q))
    for rows in (np.arange(len(q)), perm, perm[:1], perm[:LANES - 1], perm[:LANES + 1], perm[:0]):
        rows = np.ascontiguousarray(rows, np.int64)
        got_m, got_j = _lanes_batch(grid_model(g), objs.astype(np.int32), q, k, rows)  # int32: as hyp_obj
        assert np.array_equal(got_m, ref_m[rows])
        got_d = np.full((len(rows), k), np.inf, F32)
        for i, r in enumerate(rows):
            m = got_m[i]
            got_d[i, :m] = _d2_f32(pos[got_j[i, :m]], q[r])
            # nearest first (the kernel compiles with FASTMATH: its squared distances may differ from
            # these in the last bits, so near-ties may come in either order)
            assert np.all(np.diff(got_d[i, :m]) >= -2e-6 * got_d[i, 1:m])
            np.testing.assert_allclose(got_d[i, :m], np.sort(_d2_f32(pos[ref_j[r, :m]], q[r])), rtol=2e-6, atol=1e-13)
        fin = finite[rows]
        _check_knn(pos, obj_start, objs[rows][fin], q[rows][fin], k, MMD, got_m[fin], got_d[fin],
                   got_j[fin].astype(np.int64))
    assert not finite.all() and ref_m[~finite].max() == 0  # NaN queries find nothing


def test_k_nearest_lanes_keeps_the_first_of_equal_distances():
    """Nodes at exactly equal distances (a duplicated point): the earlier in the candidate list wins."""
    pos = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0.002, 0, 0]], F32)
    order, origin, index, cstart, cnode, cdist = ev.build_node_grid(pos, np.array([0, 4]), MMD, 2)
    pos = np.ascontiguousarray(pos[order])
    q = np.array([[0, 0, 0.001]], F32)
    cell = F32(MMD) / F32(ev.CELLS_PER_RADIUS)
    m, j = _lanes_batch(grid_model(dict(pos=pos, obj_start=np.array([0, 4]), origin=origin, index=index, cstart=cstart,
                                            cnode=cnode, cdist=cdist)), np.zeros(1, np.int32), q, 2,
                        np.zeros(1, np.int64))
    c = cell_span(origin, index, cstart, 0, F32(1) / cell, cell, *q[0])
    listed = [n for n in cnode[c[0]:c[1]] if np.all(pos[n] == 0)]
    assert m[0] == 2 and list(j[0]) == listed[:2]


def test_k_nearest_lanes_with_k_zero_finds_nothing(grid_cases):
    g = grid_cases[5]
    q = np.ascontiguousarray(g["pos"][:3], F32)
    m, _ = _lanes_batch(grid_model(g), np.zeros(3, np.int32), q, 0, np.arange(3, dtype=np.int64))
    assert list(m) == [0, 0, 0]


@njit
def _span_batch(model, objs, q, k):
    nq = q.shape[0]
    out = np.zeros((nq, 3), np.int64)
    bd = np.empty(k, np.float32)
    bj = np.empty(k, np.int64)
    got_j = np.full((nq, k), -1, np.int64)
    for i in range(nq):
        m, first, stop = k_nearest_span(model, np.float32(MMD), objs[i], q[i, 0], q[i, 1], q[i, 2], k, bd, bj)
        out[i] = m, first, stop
        got_j[i, :m] = bj[:m]
    return out, got_j


@pytest.mark.parametrize("k", [1, 5])
def test_k_nearest_span_is_the_rows_examined(grid_cases, k):
    """The span holds every node returned; the first row after it cannot beat the k-th distance."""
    g = grid_cases[k]
    pos, obj_start = g["pos"], g["obj_start"]
    rng = np.random.default_rng(11)
    lo, hi = obj_start[0], obj_start[1]
    q = np.concatenate([pos[rng.integers(lo, hi, 200)] + rng.normal(0, 0.5 * MMD, (200, 3)),
                        [g["origin"][0] - 1.0]])  # the last one outside the grid
    q = np.ascontiguousarray(q, F32)
    objs = np.zeros(len(q), np.int64)
    cell = F32(MMD) / F32(ev.CELLS_PER_RADIUS)
    r2 = F32(MMD) * F32(MMD)
    span, got_j = _span_batch(grid_model(g), objs, q, k)
    m_ref, _, j_ref = _knn_batch(grid_model(g), objs, q, k)
    assert np.array_equal(span[:, 0], m_ref) and np.array_equal(np.sort(got_j, 1), np.sort(j_ref, 1))
    assert tuple(span[-1]) == (0, 0, 0)
    ijk = np.floor((q.astype(np.float64) - g["origin"][0]) / cell).astype(np.int64)
    nx, ny, nz, base = g["index"][0]
    inside = np.all((ijk >= 0) & (ijk < [nx, ny, nz]), axis=1)
    assert inside[:-1].sum() > 150
    early = 0
    for i in range(len(q) - 1):
        m, first, stop = span[i]
        if not inside[i]:  # beyond the padded grid: nothing examined
            assert (m, first, stop) == (0, 0, 0)
            continue
        cid = base + ijk[i, 0] + nx * (ijk[i, 1] + ny * ijk[i, 2])
        c0, c1 = g["cstart"][cid], g["cstart"][cid + 1]
        assert first == c0 and c0 <= stop <= c1
        assert set(j_ref[i, :m]) <= set(g["cnode"][first:stop])
        if stop < c1:  # stopped early: every later candidate is at least the k-th distance away
            early += 1
            later = g["cnode"][stop:c1]
            d2 = _d2_f32(pos[later], q[i])
            kth = np.sort(_d2_f32(pos[j_ref[i, :m]], q[i]))[-1] if m == k else r2
            assert d2.min() >= kth
    assert early > 50


def test_k_nearest_with_a_grid_built_for_a_larger_k(grid_cases):
    """A grid built for k = 10 serves K = 5 (the step model is built once for both)."""
    g = grid_cases[10]
    pos, obj_start = g["pos"], g["obj_start"]
    rng = np.random.default_rng(9)
    lo, hi = obj_start[0], obj_start[1]
    q = np.ascontiguousarray(pos[rng.integers(lo, hi, 300)] + rng.normal(0, 0.5 * MMD, (300, 3)), F32)
    objs = np.zeros(300, np.int64)
    out = _knn_batch(grid_model(g), objs, q, 5)
    _check_knn(pos, obj_start, objs, q, 5, MMD, *out)


# ----------------------------------------------------------------------------- model for the step tests


@pytest.fixture(scope="module")
def step_model():
    rng = np.random.default_rng(10)
    sizes = [300, 0, 150, 220]
    pos, pose, pfd, feat, obj_start = random_objects(rng, sizes)
    m, _ = make_model(pos, pose, pfd, feat, obj_start)
    return m


def _obj_slice(m, o):
    return int(m["obj_start"][o]), int(m["obj_start"][o + 1])


# ----------------------------------------------------------------------------- 4. update of existing hypotheses


@pytest.mark.parametrize("pose_defined,k,past,present,w_c", [
    (True, 5, 0.9, 1.3, 1.0), (False, 10, 1.0, 0.5, 1.0), (True, 10, 0.7, 1.0, 0.6), (False, 5, 1.2, 0.8, 1.0)])
def test_step_updates_existing_hypotheses(step_model, pose_defined, k, past, present, w_c):
    m = step_model
    rng = np.random.default_rng(20 + k + int(pose_defined))
    n_obj = len(m["obj_start"]) - 1
    H = 900
    fp, ip = make_params(updater=UPDATER_CLASSIC, k=k, past=past, present=present, w_curv=w_c,
                         min_steps=10 ** 6, max_steps=10 ** 6)
    S = rand_rot(rng)
    x_last = (rng.normal(size=3) * 0.05).astype(F32)
    d = rng.normal(0, 0.003, 3)
    location = (x_last + d).astype(F32)
    d32 = (location - x_last).astype(np.float64)  # what the kernel integrates (float32 difference)
    hyp_obj = rng.choice(n_obj, H, p=[0.4, 0.03, 0.27, 0.3]).astype(np.int32)
    loc = np.zeros((H, 3))
    rot = np.zeros((H, 3, 3))
    for h in range(H):
        lo, hi = _obj_slice(m, hyp_obj[h])
        node = rng.integers(lo, hi) if hi > lo else None
        if node is not None and h % 2 == 0:
            # informed (maybe perturbed) rotation, placed so that the displaced location is near the node
            P = m["node_pose"][node].reshape(3, 3).astype(np.float64)
            fr = S if h % 4 == 0 else np.diag([1.0, -1.0, -1.0]) @ S
            R = P.T @ fr
            if h % 8 == 2:
                R = R @ er.candidate_frames(np.eye(3), False, 16)[1]  # spin 22.5 degrees
            rot[h] = R
            loc[h] = m["node_pos"][node] - R @ d32 + rng.normal(0, 0.003, 3)
        else:
            rot[h] = rand_rot(rng)
            base = m["node_pos"][node] if node is not None else rng.normal(size=3) * 0.03
            loc[h] = base + rng.normal(0, 0.006, 3)
    hy = alloc_hyps(H + 7)
    hy["hyp_obj"][:H] = hyp_obj
    hy["hyp_loc"][:H] = loc
    hy["hyp_rot"][:H] = rot.reshape(H, 9)
    old_ev = rng.uniform(0.5, 4.0, H).astype(F32)
    hy["hyp_ev"][:H] = old_ev
    hy["hyp_buf"][:H, 0] = old_ev
    hy["hyp_age"][:H] = 1
    ist, fst = new_state()
    ist[IS_STEP] = 1
    ist[IS_N_HYP] = H
    ist[IS_MATCHING_STEPS] = 1
    fst[FS_X_LAST:FS_X_LAST + 3] = x_last
    features = np.array([rng.uniform(0, 1), rng.normal(), rng.normal()], F32)
    kappa = -1.7
    old_loc32 = hy["hyp_loc"][:H].copy()
    old_rot32 = hy["hyp_rot"][:H].copy()

    code, obj_max, obj_count = run_step(m, fp, ip, ist, fst, hy, location, S, pose_defined, features, kappa)

    assert ist[IS_N_HYP] == H and ist[IS_N_NEW] == 0
    assert ist[IS_STEP] == 2 and ist[IS_MATCHING_STEPS] == 2
    np.testing.assert_array_equal(fst[FS_X_LAST:FS_X_LAST + 3], location)
    new_loc = hy["hyp_loc"][:H]
    np.testing.assert_allclose(new_loc, er.displace(old_loc32, old_rot32, d32), rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(hy["hyp_rot"][:H], old_rot32)
    np.testing.assert_array_equal(hy["hyp_obj"][:H], hyp_obj)
    phi = ref_phi(m, features)
    want_delta = np.zeros(H)
    for o in range(n_obj):
        lo, hi = _obj_slice(m, o)
        idx = np.flatnonzero(hyp_obj == o)
        want_delta[idx] = er.evidence_delta(
            m["node_pos"][lo:hi], m["node_pose"][lo:hi].reshape(-1, 3, 3), m["node_pfd"][lo:hi], phi[lo:hi],
            new_loc[idx], old_rot32[idx].reshape(-1, 3, 3), S, pose_defined, kappa,
            max_match_distance=float(F32(MMD)), k=k, w_n=1.0, w_c=w_c)
    # the case mix really exercises in-radius and out-of-radius hypotheses
    assert np.sum(want_delta == -1) > 20 and np.sum(want_delta > 0.5) > 20
    new_ev = hy["hyp_ev"][:H]
    want_ev = past * old_ev.astype(np.float64) + present * want_delta
    # Random rotations: tight. Informed rotations align node and sensed vectors almost exactly, where
    # 0.5 - sin(theta / 2) and sin(eps) are ill-conditioned for float32 unit vectors (|v| = 1 +- 6e-8
    # moves arccos(v.v) by ~3e-4): the float64 reference itself changes by up to 6e-4 when the same
    # float32 pose is renormalised, so those get 1e-3.
    rand = np.arange(H) % 2 == 1
    np.testing.assert_allclose(new_ev[rand], want_ev[rand], atol=1e-4, rtol=0)
    np.testing.assert_allclose(new_ev, want_ev, atol=1e-3 * max(1.0, present), rtol=0)
    # slope tracker: ring slot 1, age 2, slope over two values
    np.testing.assert_array_equal(hy["hyp_buf"][:H, 1], new_ev)
    np.testing.assert_array_equal(hy["hyp_age"][:H], 2)
    np.testing.assert_allclose(hy["hyp_slope"][:H], new_ev.astype(np.float64) - old_ev, atol=1e-5)
    assert fst[FS_SLOPE_MAX] == pytest.approx(float(np.max(hy["hyp_slope"][:H])), abs=1e-6)
    # per-object maxima, MLH, possible objects
    want_max, want_count, want_mlh = expected_mlh(hyp_obj, new_ev, n_obj)
    np.testing.assert_array_equal(obj_count, want_count)
    np.testing.assert_array_equal(obj_max[want_count > 0], want_max[want_count > 0])
    assert ist[IS_MLH] == want_mlh
    assert fst[FS_MLH_EV] == new_ev[want_mlh]
    poss = ref_possible(obj_max, obj_count)
    assert ist[IS_N_POSSIBLE] == poss.sum()
    assert code == (RUNNING if poss.sum() > 0 else NO_MATCH)


# ----------------------------------------------------------------------------- 5. first step


@pytest.mark.parametrize("pose_defined,n_umb", [(True, 8), (False, 8), (False, 4)])
def test_first_step_burst(step_model, pose_defined, n_umb):
    m = step_model
    rng = np.random.default_rng(30 + n_umb + int(pose_defined))
    n_obj = len(m["obj_start"]) - 1
    fp, ip = make_params(updater=UPDATER_BURST, umbilical=n_umb, burst_duration=5)
    S = rand_rot(rng)
    features = m["node_feat"][17] + np.array([0.01, 0.1, -0.1], F32)
    location = np.array([0.1, -0.2, 0.3], F32)
    ist, fst = new_state()
    hy = alloc_hyps(2000)
    code, obj_max, obj_count = run_step(m, fp, ip, ist, fst, hy, location, S, pose_defined, features, 2.0)
    phi_ref = ref_phi(m, features)
    phi_k = kernel_phi(m, features)
    frames = er.candidate_frames(S, pose_defined, n_umb)
    row = 0
    total = 0
    for o in range(n_obj):
        lo, hi = _obj_slice(m, o)
        kn, h, sel, thr = er.burst_nodes(phi_ref[lo:hi], hi - lo, pose_defined, float(F32(0.4)), n_umb)
        assert h == len(frames)
        total += kn * h
        block = slice(row, row + kn * h)
        np.testing.assert_array_equal(hy["hyp_obj"][block], o)
        # which node each row sits on
        if kn:
            lookup = {tuple(p): i for i, p in enumerate(m["node_pos"][lo:hi].tolist())}
            nodes = np.array([lookup[tuple(p)] for p in hy["hyp_loc"][block].tolist()]).reshape(h, kn)
            for r in range(h):
                np.testing.assert_array_equal(nodes[r], nodes[0])  # rotation-major over one node list
            chosen = nodes[0]
            assert er.is_valid_burst_selection(phi_k[lo:hi], chosen, kn)
            # rows above the k-th value first, in row order, then rows tied at it
            thr_k = phi_k[lo:hi][chosen].min()
            above = chosen[phi_k[lo:hi][chosen] > thr_k]
            np.testing.assert_array_equal(chosen[:len(above)], np.sort(above))
            assert len(np.unique(chosen)) == kn
            if len(np.unique(phi_ref[lo:hi])) == hi - lo:
                np.testing.assert_array_equal(np.sort(chosen), sel)
            want_loc, want_rot = er.informed_hypotheses(m["node_pos"][lo:hi], m["node_pose"][lo:hi], chosen, frames)
            np.testing.assert_array_equal(hy["hyp_loc"][block], want_loc.astype(F32))
            np.testing.assert_allclose(hy["hyp_rot"][block], want_rot.reshape(-1, 9), atol=3e-6)
            np.testing.assert_allclose(hy["hyp_ev"][block], np.tile(phi_ref[lo:hi][chosen], h), atol=2e-6)
        row += kn * h
    assert ist[IS_N_HYP] == total == row and ist[IS_N_NEW] == total
    n = total
    np.testing.assert_array_equal(hy["hyp_age"][:n], 1)
    assert np.all(np.isnan(hy["hyp_slope"][:n]))
    np.testing.assert_array_equal(hy["hyp_buf"][:n, 0], hy["hyp_ev"][:n])
    np.testing.assert_array_equal(hy["hyp_possible"][:n], 0)
    assert ist[IS_STEP] == 1 and ist[IS_MATCHING_STEPS] == 1 and ist[IS_BURST_LEFT] == 4
    np.testing.assert_array_equal(fst[FS_X_LAST:FS_X_LAST + 3], location)
    assert fst[FS_SLOPE_MAX] == -np.inf
    want_max, want_count, want_mlh = expected_mlh(hy["hyp_obj"][:n], hy["hyp_ev"][:n], n_obj)
    np.testing.assert_array_equal(obj_count, want_count)
    assert obj_count[1] == 0  # the object without nodes
    assert ist[IS_MLH] == want_mlh
    assert code == RUNNING


def test_first_step_classic(step_model):
    m = step_model
    rng = np.random.default_rng(40)
    n_obj = len(m["obj_start"]) - 1
    n_nodes = len(m["node_pos"])
    for pose_defined, n_umb in ((True, 8), (False, 4)):
        fp, ip = make_params(updater=UPDATER_CLASSIC, umbilical=n_umb)
        S = rand_rot(rng)
        features = np.array([0.3, 0.2, -0.5], F32)
        ist, fst = new_state()
        r = 2 if pose_defined else n_umb
        hy = alloc_hyps(r * n_nodes)
        code, _, obj_count = run_step(m, fp, ip, ist, fst, hy, np.zeros(3), S, pose_defined, features, 1.0)
        assert code == RUNNING
        assert ist[IS_N_HYP] == r * n_nodes
        phi = ref_phi(m, features)
        frames = er.candidate_frames(S, pose_defined, n_umb)
        row = 0
        for o in range(n_obj):
            lo, hi = _obj_slice(m, o)
            n = hi - lo
            assert obj_count[o] == r * n
            blk = slice(row, row + r * n)
            want_loc, want_rot = er.informed_hypotheses(m["node_pos"][lo:hi], m["node_pose"][lo:hi],
                                                        np.arange(n), frames)
            np.testing.assert_array_equal(hy["hyp_obj"][blk], o)
            np.testing.assert_array_equal(hy["hyp_loc"][blk], want_loc.astype(F32))
            np.testing.assert_allclose(hy["hyp_rot"][blk], want_rot.reshape(-1, 9), atol=3e-6)
            np.testing.assert_allclose(hy["hyp_ev"][blk], np.tile(phi[lo:hi], r), atol=2e-6)
            row += r * n
        # the classic updater never samples again
        code, _, _ = run_step(m, fp, ip, ist, fst, hy, np.array([0.001, 0, 0]), S, pose_defined, features, 1.0)
        assert ist[IS_N_HYP] == r * n_nodes and ist[IS_N_NEW] == 0


# ----------------------------------------------------------------------------- 6. deletion and slope tracker


def test_deletion_of_stale_hypotheses(step_model):
    m = step_model
    rng = np.random.default_rng(50)
    H, step = 400, 13
    fp, ip = make_params(updater=UPDATER_BURST, min_age=5, deletion_slope=0.5, burst_slope=1.0,
                         min_steps=10 ** 6, max_steps=10 ** 6)
    hy = alloc_hyps(H)
    hy["hyp_obj"][:H] = rng.choice([0, 2, 3], H)
    hy["hyp_loc"][:H] = rng.normal(0, 0.03, (H, 3))
    hy["hyp_rot"][:H] = np.array([rand_rot(rng).reshape(9) for _ in range(H)])
    hy["hyp_ev"][:H] = rng.uniform(0, 5, H)
    hy["hyp_buf"][:H] = rng.uniform(0, 5, (H, W))
    age = rng.integers(1, 15, H).astype(np.int32)
    slope = rng.choice([np.nan, 0.5, np.float32(0.5) - np.float32(1e-6), 0.49, 0.51, -1.0, 2.0], H)
    slope = np.where(rng.uniform(size=H) < 0.3, rng.uniform(-1, 2, H), slope).astype(F32)
    slope[age == 1] = np.nan
    hy["hyp_age"][:H] = age
    hy["hyp_slope"][:H] = slope
    hy["hyp_possible"][:H] = rng.integers(0, 2, H)
    before = {k: v[:H].copy() for k, v in hy.items()}
    ist, fst = new_state()
    ist[IS_STEP] = step
    ist[IS_N_HYP] = H
    ist[IS_MATCHING_STEPS] = step
    x = np.array([0.01, 0.02, 0.03], F32)
    fst[FS_X_LAST:FS_X_LAST + 3] = x
    fst[FS_SLOPE_MAX] = 1.5  # > burst_trigger_slope: no burst, nothing sampled
    S = rand_rot(rng)
    features = np.array([0.5, 0.0, 0.0], F32)
    run_step(m, fp, ip, ist, fst, hy, x, S, True, features, 1.0)
    keep = er.retain_mask(slope, age, 0.5, 5)
    assert 0 < keep.sum() < H
    n = int(keep.sum())
    # deleted rows stay in place, marked dead (hyp_obj -1), until the dead outnumber the live
    live = ev.live_rows(ist, hy["hyp_obj"])
    assert len(live) == n and ist[IS_N_HYP] - ist[ev.IS_N_DEAD] == n
    assert ist[IS_N_NEW] == 0 and ist[IS_BURST_LEFT] == 0
    np.testing.assert_array_equal(live, np.flatnonzero(keep))
    assert not hy["hyp_possible"][:H][~keep].any()
    for key in ("hyp_obj", "hyp_loc", "hyp_rot", "hyp_possible"):  # zero displacement: locations unchanged
        np.testing.assert_array_equal(hy[key][live], before[key][keep], err_msg=key)
    np.testing.assert_array_equal(hy["hyp_age"][live], before["hyp_age"][keep] + 1)
    slot = step % W
    other = [c for c in range(W) if c != slot]
    np.testing.assert_array_equal(hy["hyp_buf"][live][:, other], before["hyp_buf"][keep][:, other])
    e = hy["hyp_ev"][live].astype(np.float64)
    np.testing.assert_array_equal(hy["hyp_buf"][live, slot], hy["hyp_ev"][live])
    mm = np.minimum(before["hyp_age"][keep] + 1, W)
    oldest = before["hyp_buf"][keep][np.arange(n), (step - mm + 1) % W]
    np.testing.assert_allclose(hy["hyp_slope"][live], (e - oldest) / (mm - 1), rtol=1e-5, atol=1e-5)


def _walk(rng, pos, lo, hi, n_steps, start):
    """A path of nodes of one object, each step to one of the nearest unvisited nodes."""
    path = [start]
    for _ in range(n_steps - 1):
        d = np.linalg.norm(pos[lo:hi] - pos[path[-1]], axis=1)
        d[np.array(path) - lo] = np.inf
        path.append(lo + int(rng.choice(np.argsort(d)[:3])))
    return np.array(path)


def _history_buf(hist):
    buf = np.full((len(hist), W), np.nan)
    for i, h in enumerate(hist):
        t = h[-W:]
        buf[i, W - len(t):] = t
    return buf


@pytest.mark.parametrize("burst_slope", [1.0, 3.0])
def test_slope_tracker_and_deletion_over_an_episode(step_model, burst_slope):
    m = step_model
    rng = np.random.default_rng(60)
    n_obj = len(m["obj_start"]) - 1
    U = 8
    fp, ip = make_params(updater=UPDATER_BURST, min_age=5, deletion_slope=0.5, burst_slope=burst_slope,
                         burst_duration=3, min_steps=10 ** 6, max_steps=10 ** 6, k=5)
    Q = rand_rot(rng)
    lo, hi = _obj_slice(m, 0)
    path = _walk(rng, m["node_pos"].astype(np.float64), lo, hi, 16, lo + 5)
    ist, fst = new_state()
    hy = alloc_hyps(8000)
    hist = []
    burst_left = 0
    n_deleted = 0
    n_bursts = 0
    for t, node in enumerate(path):
        location = (Q @ m["node_pos"][node] + np.array([0.2, 0.1, 0.0])).astype(F32)
        pose = m["node_pose"][node].reshape(3, 3) @ Q.T
        pose_defined = bool(m["node_pfd"][node])
        features = m["node_feat"][node] + rng.normal(0, 0.02, 3).astype(F32)
        live = ev.live_rows(ist, hy["hyp_obj"])
        n = len(live)
        assert n == len(hist) and n == ist[IS_N_HYP] - ist[ev.IS_N_DEAD]
        slopes_ref = er.slope(_history_buf(hist)) if n else np.zeros(0)
        slopes_k = hy["hyp_slope"][live]
        np.testing.assert_array_equal(np.isnan(slopes_ref), np.isnan(slopes_k))
        np.testing.assert_allclose(slopes_k, slopes_ref, atol=1e-4, rtol=1e-5)
        finite = slopes_ref[np.isfinite(slopes_ref)]
        s_max = finite.max() if len(finite) else -np.inf
        if t > 0:
            assert fst[FS_SLOPE_MAX] == pytest.approx(s_max, abs=1e-4) or s_max == -np.inf
        if burst_left == 0 and (t == 0 or s_max <= burst_slope):
            burst_left = 3
        ambiguous = np.abs(slopes_ref - 0.5) < 1e-4
        s_use = np.where(ambiguous, slopes_k, slopes_ref)
        keep = er.retain_mask(s_use, [len(x) for x in hist], 0.5, 5) if t > 0 else np.ones(0, bool)
        rot_before = hy["hyp_rot"][live].copy()
        possible_before = hy["hyp_possible"][live].copy()
        phi = ref_phi(m, features)
        want_new = 0
        if burst_left > 0:
            n_bursts += 1
            for o in range(n_obj):
                a, b = _obj_slice(m, o)
                kn, h, _, _ = er.burst_nodes(phi[a:b], b - a, pose_defined, float(F32(0.4)), U)
                want_new += kn * h
        code, _, _ = run_step(m, fp, ip, ist, fst, hy, location, pose, pose_defined, features, 1.5)
        assert code == RUNNING
        n_keep = int(keep.sum())
        n_deleted += n - n_keep
        assert ist[IS_N_NEW] == want_new, t
        live = ev.live_rows(ist, hy["hyp_obj"])
        assert len(live) == n_keep + want_new, t
        # survivors keep their order, the new hypotheses come after every row in use
        np.testing.assert_array_equal(hy["hyp_rot"][live[:n_keep]], rot_before[keep])
        np.testing.assert_array_equal(hy["hyp_possible"][live[:n_keep]], possible_before[keep])
        assert np.all(live[n_keep:] == np.arange(ist[IS_N_HYP] - want_new, ist[IS_N_HYP]))
        burst_left = max(burst_left - 1, 0)
        assert ist[IS_BURST_LEFT] == burst_left
        evs = hy["hyp_ev"][live].astype(np.float64)
        hist = [h + [evs[i]] for i, h in enumerate([hist[j] for j in np.flatnonzero(keep)])]
        hist += [[evs[i]] for i in range(n_keep, n_keep + want_new)]
        np.testing.assert_array_equal(hy["hyp_age"][live], [len(x) for x in hist])
    assert n_deleted > 0 and len(path) > W  # deletions happened, the ring wrapped
    # 1.0: one burst, then the good hypotheses keep the slope above the trigger; 3.0: a burst every step
    assert n_bursts == (3 if burst_slope == 1.0 else len(path))


def test_perfect_hypothesis_gains_two_per_step(step_model):
    m = step_model
    fp, ip = make_params(updater=UPDATER_BURST, min_steps=10 ** 6, max_steps=10 ** 6)
    lo, hi = _obj_slice(m, 0)
    node = lo + int(np.flatnonzero(m["node_pfd"][lo:hi] == 1)[3])
    pose = m["node_pose"][node].copy()
    features = m["node_feat"][node].copy()
    location = np.array([0.3, -0.1, 0.2], F32)
    ist, fst = new_state()
    hy = alloc_hyps(6000)
    ident = np.eye(3).reshape(9)
    for t in range(8):
        code, _, _ = run_step(m, fp, ip, ist, fst, hy, location, pose, True, features, 2.0)
        assert code == RUNNING
        n = ist[IS_N_HYP]
        rows = np.flatnonzero(np.all(hy["hyp_loc"][:n] == m["node_pos"][node], axis=1)
                              & np.all(np.abs(hy["hyp_rot"][:n] - ident) < 1e-5, axis=1))
        oldest = rows[np.argmax(hy["hyp_age"][rows])]
        assert hy["hyp_age"][oldest] == t + 1
        # float32 R = P^T P is I only to ~1e-7, which the trig-free pose terms turn into ~3e-4 per step
        assert hy["hyp_ev"][oldest] == pytest.approx(1.0 + 2.0 * t, abs=1e-3 * (t + 1))
        if t >= 1:
            assert hy["hyp_slope"][oldest] == pytest.approx(2.0, abs=1e-3)
            assert 2.0 - 1e-3 <= fst[FS_SLOPE_MAX] <= 2.0 + 1e-5
            assert hy["hyp_ev"][ist[IS_MLH]] == pytest.approx(1.0 + 2.0 * t, abs=1e-3 * (t + 1))


# ----------------------------------------------------------------------------- 7. possible objects


def _possible_kernel(obj_max, obj_count, x=20.0):
    poss = np.full(len(obj_max), 7, np.uint8)
    n = mark_possible_objects(np.asarray(obj_max, F32), np.asarray(obj_count, np.int64), float(x), poss)
    return n, poss


def test_possible_objects():
    rng = np.random.default_rng(70)
    cases = []
    for _ in range(300):
        o = int(rng.integers(1, 7))
        mx = (rng.normal(0, 2, o) if rng.uniform() < 0.7 else rng.normal(0.5, 0.05, o)).astype(F32)
        cnt = rng.integers(0, 3, o) * rng.integers(1, 50)
        cases.append((mx, cnt, float(rng.choice([20.0, 10.0, 50.0]))))
    inf = -np.inf
    cases += [
        (np.array([0.05], F32), np.array([3]), 20.0),           # one object, std 0, >= 0
        (np.array([0.0], F32), np.array([3]), 20.0),            # one object at 0
        (np.array([-0.2], F32), np.array([3]), 20.0),           # one object, M < 0
        (np.array([1.0, 1.05, 0.98], F32), np.array([1, 2, 3]), 20.0),   # many objects, std <= 0.1
        (np.array([-1.0, -1.05, -0.98], F32), np.array([1, 2, 3]), 20.0),  # std <= 0.1 and M < 0
        (np.array([5.0, 4.5, 1.0], F32), np.array([1, 2, 3]), 20.0),
        (np.array([5.0, 9.0, 1.0], F32), np.array([1, 0, 3]), 20.0),      # best value has no hypotheses
        (np.array([0.0, -3.0], F32), np.array([1, 1]), 20.0),              # M == 0, std > 0.1
        (np.array([inf, inf], F32), np.array([0, 0]), 20.0),              # nothing has hypotheses
        (np.array([2.0, inf, 2.0], F32), np.array([4, 0, 4]), 20.0),
        (np.array([3.0, 2.4, 2.41], F32), np.array([4, 4, 4]), 20.0),      # exactly at the threshold
    ]
    for mx, cnt, x in cases:
        n, poss = _possible_kernel(mx, cnt, x)
        want = ref_possible(mx, cnt, x)
        np.testing.assert_array_equal(poss.astype(bool), want, err_msg=str((mx, cnt, x)))
        assert n == want.sum()


# ----------------------------------------------------------------------------- 8. end to end


def _box_object(size, spacing):
    """Box surface nodes with per-face frames and an asymmetric hue gradient."""
    half = np.asarray(size) / 2.0
    pos, pose = [], []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        nu = max(1, int(round(size[u] / spacing)))
        nv = max(1, int(round(size[v] / spacing)))
        gu = -half[u] + (np.arange(nu) + 0.5) * size[u] / nu
        gv = -half[v] + (np.arange(nv) + 0.5) * size[v] / nv
        uu, vv = np.meshgrid(gu, gv, indexing="ij")
        for sign in (1.0, -1.0):
            p = np.zeros((uu.size, 3))
            p[:, axis] = sign * half[axis]
            p[:, u] = uu.ravel()
            p[:, v] = vv.ravel()
            n = np.zeros(3)
            n[axis] = sign
            c1 = np.zeros(3)
            c1[u] = 1.0
            pose.append(np.tile(np.concatenate([n, c1, np.cross(n, c1)]), (len(p), 1)))
            pos.append(p)
    pos = np.concatenate(pos)
    hue = 0.5 + 3.0 * pos[:, 0] + 4.0 * pos[:, 1] + 5.0 * pos[:, 2]
    feat = np.stack([hue, np.zeros(len(pos)), np.zeros(len(pos))], 1)
    return pos, np.concatenate(pose), np.zeros(len(pos)), feat


def _sphere_object(n, radius):
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    th = np.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)
    c1 = np.cross(d, [0.3, 0.5, 0.8])
    c1 /= np.linalg.norm(c1, axis=1, keepdims=True)
    pose = np.concatenate([d, c1, np.cross(d, c1)], 1)
    k = float(er.log_sign(1 / radius))
    feat = np.stack([np.full(n, 0.95), np.full(n, k), np.full(n, k)], 1)
    return radius * d, pose, np.zeros(n), feat


def _cylinder_object(radius, height, n_around, n_along):
    a = 2 * np.pi * (np.arange(n_around) + 0.5) / n_around
    z = -height / 2 + (np.arange(n_along) + 0.5) * height / n_along
    aa, zz = np.meshgrid(a, z, indexing="ij")
    aa, zz = aa.ravel(), zz.ravel()
    nrm = np.stack([np.cos(aa), np.sin(aa), np.zeros_like(aa)], 1)
    circ = np.stack([-np.sin(aa), np.cos(aa), np.zeros_like(aa)], 1)
    side_pos = np.concatenate([radius * nrm[:, :2], zz[:, None]], 1)
    side_pose = np.concatenate([nrm, circ, np.cross(nrm, circ)], 1)
    k = float(er.log_sign(1 / radius))
    side_feat = np.stack([np.full(len(aa), 0.05), np.full(len(aa), k), np.zeros(len(aa))], 1)
    g = np.stack(np.meshgrid(np.linspace(-radius, radius, 9), np.linspace(-radius, radius, 9)), -1).reshape(-1, 2)
    g = g[np.linalg.norm(g, axis=1) < radius * 0.95]
    caps_pos, caps_pose = [], []
    for s in (1.0, -1.0):
        caps_pos.append(np.concatenate([g, np.full((len(g), 1), s * height / 2)], 1))
        caps_pose.append(np.tile([0, 0, s, 1, 0, 0, 0, s, 0], (len(g), 1)).astype(float))
    caps_pos, caps_pose = np.concatenate(caps_pos), np.concatenate(caps_pose)
    caps_feat = np.tile([0.05, 0.0, 0.0], (len(caps_pos), 1))
    pos = np.concatenate([side_pos, caps_pos])
    return (pos, np.concatenate([side_pose, caps_pose]),
            np.concatenate([np.ones(len(side_pos)), np.zeros(len(caps_pos))]),
            np.concatenate([side_feat, caps_feat]))


@pytest.fixture(scope="module")
def episode_case():
    objs = [_sphere_object(500, 0.04), _box_object((0.10, 0.06, 0.04), 0.006), _cylinder_object(0.03, 0.08, 30, 14)]
    sizes = [len(o[0]) for o in objs]
    pos, pose, pfd, feat = (np.concatenate([o[i] for o in objs]) for i in range(4))
    obj_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    m, _ = make_model(pos, pose, pfd, feat, obj_start)
    # a belt around the box at a fixed y row: +x face, +z face, -x face, -z face
    b_lo, b_hi = obj_start[1], obj_start[2]
    bp = pos[b_lo:b_hi]
    y0 = np.unique(np.round(bp[:, 1], 6))[3]
    belt = np.flatnonzero((np.abs(bp[:, 1] - y0) < 1e-6) & (np.abs(np.abs(bp[:, 1]) - 0.03) > 1e-6))
    ang = np.arctan2(bp[belt, 2], bp[belt, 0])
    belt = belt[np.argsort(ang)]
    start = int(np.argmin(np.abs(ang[np.argsort(ang)])))  # start on the +x face
    path = b_lo + np.roll(belt, -start)
    rng = np.random.default_rng(80)
    Q = rand_rot(rng)
    offset = np.array([0.5, -0.2, 0.1])
    spec = np.ascontiguousarray([[0.1, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 0.0, 0.0]], F32)
    obs = dict(
        location=np.ascontiguousarray((pos[path] @ Q.T + offset), F32),
        pose=np.ascontiguousarray(np.einsum("tij,kj->tik", pose[path].reshape(-1, 3, 3), Q).reshape(-1, 9), F32),
        pose_defined=np.ascontiguousarray(pfd[path] > 0),
        features=np.ascontiguousarray(feat[path], F32),
        kappa=np.ascontiguousarray(np.abs(feat[path, 1:]).max(1), F32),
    )
    fp, ip = make_params(updater=UPDATER_BURST, min_steps=20, max_steps=500, k=5)
    return dict(m=m, obs=obs, Q=Q, spec=spec, fp=fp, ip=ip, sizes=sizes)


def kernel_episode(case, cap):
    m, obs = case["m"], case["obs"]
    T = len(obs["location"])
    ist, fst = new_state()
    hy = alloc_hyps(cap)
    trace = np.full((T, len(case["sizes"])), np.nan, F32)
    t = 0
    grown = 0
    while True:
        code, t, obj_max, obj_count = run_episode(m, case["fp"], case["ip"], ist, fst, hy, obs, t, trace,
                                                  spec=case["spec"])
        if code != NEED_CAPACITY:
            return code, t, ist, fst, hy, trace, obj_max, obj_count, grown
        need = int(ist[IS_NEED])
        assert need > hy["hyp_ev"].shape[0]
        assert need >= ist[IS_N_HYP]
        hy = grow_hyps(hy, need, int(ist[IS_N_HYP]))
        grown += 1


def test_episode_recognises_object_and_pose(episode_case):
    case = episode_case
    assert len(case["obs"]["location"]) > 30
    code, t, ist, fst, hy, trace, obj_max, obj_count, grown = kernel_episode(case, 20000)
    assert grown == 0
    assert code == MATCH and ist[IS_OUTCOME] == MATCH
    assert ist[IS_DETECTED] == 1
    # no decision before min_eval_steps (20) matching steps; then as soon as the pose is unique
    assert 21 <= ist[IS_MATCHING_STEPS] == t < len(case["obs"]["location"])
    R = hy["hyp_rot"][ist[IS_MLH]].reshape(3, 3).astype(np.float64)
    assert hy["hyp_obj"][ist[IS_MLH]] == 1
    assert er.rotation_error_deg(R.T, case["Q"]) < 5.0
    # the trace holds each object's best evidence per step
    np.testing.assert_array_equal(trace[t - 1], np.where(obj_count > 0, obj_max, -np.inf))
    assert np.all(np.argmax(trace[5:t], axis=1) == 1)


def test_episode_capacity_growth_gives_the_same_result(episode_case):
    case = episode_case
    full = kernel_episode(case, 20000)
    small = kernel_episode(case, 50)
    assert small[8] >= 2  # it had to grow more than once (first step and a later burst)
    code, t, ist, fst, hy, trace = small[:6]
    assert code == full[0] and t == full[1]
    # IS_NEED keeps the capacity the last NEED_CAPACITY return asked for
    np.testing.assert_array_equal(np.delete(ist, IS_NEED), np.delete(full[2], IS_NEED))
    assert ist[IS_NEED] > 50 and full[2][IS_NEED] == 0
    np.testing.assert_array_equal(fst, full[3])
    n = int(ist[IS_N_HYP])
    for key in HYP_KEYS:
        np.testing.assert_array_equal(hy[key][:n], full[4][key][:n], err_msg=key)
    np.testing.assert_array_equal(trace[:t], full[5][:t])


def test_step_need_capacity_leaves_state_repeatable(step_model):
    m = step_model
    fp, ip = make_params(updater=UPDATER_BURST)
    S = np.eye(3)
    features = np.array([0.5, 0.0, 0.0], F32)
    ist, fst = new_state()
    hy = alloc_hyps(10)
    before_i, before_f = ist.copy(), fst.copy()
    code, _, _ = run_step(m, fp, ip, ist, fst, hy, np.ones(3), S, True, features, 1.0)
    assert code == NEED_CAPACITY
    need = int(ist[IS_NEED])
    n_obj = len(m["obj_start"]) - 1
    phi = ref_phi(m, features)
    want = sum(er.burst_nodes(phi[a:b], b - a, True, float(F32(0.4)))[0] * 2
               for a, b in (_obj_slice(m, o) for o in range(n_obj)))
    assert need == want
    mask = np.ones(ev.N_ISTATE, bool)
    mask[[IS_NEED, IS_BURST_LEFT]] = False
    np.testing.assert_array_equal(ist[mask], before_i[mask])
    np.testing.assert_array_equal(fst, before_f)
    hy = grow_hyps(hy, need, 0)
    code, _, _ = run_step(m, fp, ip, ist, fst, hy, np.ones(3), S, True, features, 1.0)
    assert code == RUNNING and ist[IS_N_HYP] == need and ist[IS_BURST_LEFT] == 4


def test_top_nodes_with_ties():
    rng = np.random.default_rng(90)
    for trial in range(40):
        n = int(rng.integers(1, 60))
        lo = int(rng.integers(0, 5))
        phi = np.full(lo + n + 3, -9.0, F32)
        phi[lo:lo + n] = rng.choice([0.0, 0.25, 0.5, 1.0], n) if trial % 2 else rng.uniform(0, 1, n)
        for k in range(0, n + 2):
            out = np.full(max(k, 1), -1, np.int64)
            ph._top_nodes(phi, lo, lo + n, k, trial, out)
            kk = min(k, n)
            chosen = out[:kk]
            assert er.is_valid_burst_selection(phi[lo:lo + n], chosen - lo, kk), (trial, k, chosen)
            if k >= n:
                np.testing.assert_array_equal(chosen, np.arange(lo, lo + n))
            elif kk:
                thr = phi[chosen].min()
                above = chosen[phi[chosen] > thr]
                np.testing.assert_array_equal(chosen[:len(above)], np.sort(above))


# ----------------------------------------------------------------------------- terminal check


def test_terminal_check_vs_reference():
    """Pose candidates, uniqueness and the symmetry counter of one check (sections 5.3, 5.4)."""
    from kernels.evidence import (
        FP_OBJECT_THRESHOLD, FP_PATH_SIMILARITY, FP_POSE_SIMILARITY, IP_SYMMETRY, IS_SYMMETRIC, IS_SYMMETRY,
        N_FPARAMS, N_IPARAMS, N_ISTATE,
    )
    from kernels.evidence_phases import terminal_check

    rng = np.random.default_rng(77)
    for trial in range(200):
        H = int(rng.integers(1, 60))
        obj = rng.integers(0, 3, H).astype(np.int32)
        o_best = int(obj[0])
        # rotations near one pose (so uniqueness sometimes holds) or anywhere
        spread = [0.05, 0.3, 3.0][trial % 3]
        base = rand_rot(rng)
        rot = np.stack([_perturbed(base, rng, spread) for _ in range(H)]).astype(np.float32)
        loc = (rng.normal(0, [0.001, 0.05, 0.2][trial % 3], (H, 3))).astype(np.float32)
        ev_ = rng.uniform(-2, 10, H).astype(np.float32)
        prev = (rng.uniform(size=H) < [0.0, 0.5, 1.0][trial % 3]).astype(np.uint8)
        counter = int(rng.integers(0, 7))
        sel = obj == o_best
        g = float(ev_[sel].max())
        mlh = int(np.flatnonzero(sel & (ev_ == g))[0])
        fp = np.zeros(N_FPARAMS, np.float32)
        fp[FP_X_PERCENT] = 20
        fp[FP_OBJECT_THRESHOLD] = 1.0
        fp[FP_PATH_SIMILARITY] = 0.1
        fp[FP_POSE_SIMILARITY] = 0.35
        ip = np.zeros(N_IPARAMS, np.int64)
        ip[IP_SYMMETRY] = 5
        ist = np.zeros(N_ISTATE, np.int64)
        ist[IS_SYMMETRY] = counter
        possible = prev.copy()
        hy = alloc_hyps(H)
        hy.update(hyp_obj=obj, hyp_loc=loc, hyp_rot=np.ascontiguousarray(rot.reshape(H, 9)), hyp_ev=ev_,
                  hyp_possible=possible)
        st = ev.State(ist, np.zeros(ev.N_FSTATE, F32), np.zeros(3, F32), np.zeros(3, np.int64))
        got = terminal_check(H, o_best, np.float32(g), mlh, ev.params(FEAT_SPEC, fp, ip), st, hyp_tuple(hy))
        # reference, on the candidate object's rows
        cand = np.zeros(H, bool)
        cand[sel] = er.pose_candidates(ev_[sel], 20.0, 1.0)
        np.testing.assert_array_equal(possible.astype(bool), cand)
        idx = np.flatnonzero(sel)
        unique = er.poses_unique(rot[idx], loc[idx], cand[idx], int(np.flatnonzero(idx == mlh)[0]), 0.1, 0.35)
        prev_set = np.flatnonzero(prev.astype(bool))
        new_counter, symmetric = er.symmetry_step(prev_set, np.flatnonzero(cand), counter, 5)
        assert ist[IS_SYMMETRY] == new_counter, trial
        assert got == (unique or symmetric), (trial, got, unique, symmetric)
        if got:
            assert ist[IS_SYMMETRIC] == (1 if symmetric else 0)  # tbp.monty: symmetry wins the label


def _perturbed(r, rng, spread):
    """``r`` turned by a random rotation of angle up to ``spread`` radians."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = rng.uniform(0, spread)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k) @ r


def test_compact_moves_live_rows_down_in_order():
    rng = np.random.default_rng(8)
    patterns = [rng.uniform(size=n) < 0.5 for n in (0, 1, 7, 300)]
    patterns += [np.zeros(40, bool), np.ones(40, bool), np.arange(40) == 0, np.arange(40) == 39,
                 np.arange(40) >= 20, np.arange(40) % 3 == 1, rng.uniform(size=500) < 0.9]
    for dead in patterns:
        n = len(dead)
        hy = alloc_hyps(max(n, 1) + 5)
        for key, a in hy.items():
            a[...] = rng.integers(0, 100, a.shape).astype(a.dtype)
        hy["hyp_obj"][:n][dead] = -1
        before = {k: v[:n].copy() for k, v in hy.items()}
        live = np.flatnonzero(~dead)
        got = ph._compact(n, hyp_tuple(hy))
        assert got == len(live)
        for key in hy:
            np.testing.assert_array_equal(hy[key][:got], before[key][live], err_msg=key)


def test_python_entry_points_reject_bad_input():
    feat = np.zeros((4, 2), F32)
    ok = dict(obs=np.zeros(2, F32), tol=np.ones(2, F32), weight=np.ones(2, F32), circular=np.zeros(2))
    assert ev.feature_evidence(feat, **ok).shape == (4,)
    for key, bad, msg in [("obs", np.array([np.nan, 0], F32), "obs holds NaN"),
                          ("tol", np.array([0, 1], F32), "tol must be > 0"),
                          ("weight", np.array([-1, 1], F32), "weight must be >= 0"),
                          ("obs", np.zeros(3, F32), "obs must have 2"),
                          ("circular", np.zeros(5), "circular must have shape")]:
        with pytest.raises(ValueError, match=msg):
            ev.feature_evidence(feat, **{**ok, key: bad})
    with pytest.raises(ValueError, match="node_feat holds NaN"):
        ev.feature_evidence(np.full((2, 2), np.inf, F32), **ok)
    pos = np.zeros((3, 3), F32)
    with pytest.raises(ValueError, match="node_pos holds NaN"):
        ev.build_node_grid(np.full((3, 3), np.nan, F32), np.array([0, 3]), MMD, 5)
    with pytest.raises(ValueError, match="obj_start must rise"):
        ev.build_node_grid(pos, np.array([0, 2]), MMD, 5)
    with pytest.raises(ValueError, match="max_match_distance"):
        ev.build_node_grid(pos, np.array([0, 3]), 0.0, 5)
    with pytest.raises(ValueError, match="k must be"):
        ev.build_node_grid(pos, np.array([0, 3]), MMD, 0)
    # an empty model is fine: no objects, no cells
    out = ev.build_node_grid(np.zeros((0, 3), F32), np.array([0]), MMD, 5)
    assert len(out[0]) == 0 and out[3].tolist() == [0]


def test_build_node_grid_refuses_more_candidates_than_int32_rows(monkeypatch):
    """The search lanes hold candidate rows as int32: a grid past that is refused, not wrapped."""
    def huge(p, lo, origin, dims, *args):
        counts = np.zeros(int(np.prod(dims)), np.int64)
        counts[0] = 2 ** 31
        return counts, np.zeros(0, np.int64), np.zeros(0, np.float32)

    monkeypatch.setattr(ev, "_cell_candidates", huge)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        ev.build_node_grid(np.zeros((3, 3), F32), np.array([0, 3]), MMD, 2)
