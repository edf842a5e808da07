"""``kernels.lane_evidence.evidence_max`` against a NumPy reference, compiled and as plain Python."""

import numpy as np
import pytest
from numba import njit

from kernels.evidence_layout import EP_INV_KAPPA, EP_MMD, EP_POSE_DEFINED, EP_W_CURV, EP_W_NORMAL
from kernels.lane_evidence import N_PAR, evidence_max
from kernels.lanes import LANES

F32 = np.float32


@njit
def _all_lanes(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, par, out):
    for i0 in range(0, out.shape[0], LANES):
        evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out)


@njit
def _block(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out):
    evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out)


def _python_lanes(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, par, out):
    for i0 in range(0, out.shape[0], LANES):
        evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out)


def _reference(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, par):
    """The docstring's formula, vectorised over (neighbour, hypothesis), float32 in the same order."""
    inv_kappa, mmd, w_n, w_c, pdef = (F32(par[r]) for r in (EP_INV_KAPPA, EP_MMD, EP_W_NORMAL, EP_W_CURV,
                                                            EP_POSE_DEFINED))
    K, P = nbr.shape
    out = np.full(P, F32(-1.0), F32)
    if K == 0:
        return out
    j = np.where(np.arange(K)[:, None] < n_nbr[None, :], nbr, 0)  # (K, P), a valid row where unused
    l, q, c = hq[0:3, None, :], hq[3:6, None, :], hq[6:9, None, :]
    e = (np.moveaxis(node_pos[j], -1, 0) - l).astype(F32)  # (3, K, P)

    def dot(a, b):
        return (a[0] * b[0] + a[1] * b[1]) + a[2] * b[2]

    with np.errstate(invalid="ignore"):
        dist = np.sqrt(dot(e, e)) + np.abs(dot(e, q)) * inv_kappa
        pose = np.moveaxis(node_pose[j], -1, 0)
        g = np.clip(dot(pose[0:3], q), F32(-1), F32(1))
        ev = w_n * (F32(0.5) - np.sqrt((F32(1) - g) * F32(0.5)))
        if pdef:
            g2 = np.clip(dot(pose[3:6], c), F32(-1), F32(1))
            ev = ev + (w_c * (F32(0.5) - np.sqrt(F32(1) - g2 * g2))) * node_pfd[j]
        ev = ev + phi[j]
        use = (np.arange(K)[:, None] < n_nbr[None, :]) & (dist < mmd)
    assert ev.dtype == F32 and dist.dtype == F32
    best = np.where(use, ev, -np.inf).max(axis=0)
    return np.where(best > -1, best, F32(-1)).astype(F32)


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(F32)


def _case(rng, n_nodes, P, K, strided=False):
    """Nodes around the origin, hypotheses near them, their neighbour columns."""
    pos = rng.uniform(-0.02, 0.02, (n_nodes, 3)).astype(F32)
    node_pos = np.zeros((n_nodes, 7), F32)[:, 2:5] if strided else np.empty((n_nodes, 3), F32)
    node_pos[:] = pos
    node_pose = np.zeros((n_nodes, 9), F32)
    node_pose[:, 0:3] = _unit(rng, n_nodes)
    node_pose[:, 3:6] = _unit(rng, n_nodes)
    node_pfd = (rng.random(n_nodes) < 0.7).astype(F32)
    phi = rng.uniform(0, 1, 2 * n_nodes).astype(F32)[::2] if strided else rng.uniform(0, 1, n_nodes).astype(F32)
    nbr = rng.integers(0, n_nodes, (K, P)).astype(np.int32)
    n_nbr = rng.integers(0, K + 1, P).astype(np.int64)
    hq = np.empty((9, P), F32)
    hq[0:3] = (pos[nbr[0]] + rng.uniform(-0.006, 0.006, (P, 3))).T  # the first neighbour often in radius
    hq[3:6] = _unit(rng, P).T
    hq[6:9] = _unit(rng, P).T
    return node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq


def _par(inv_kappa=0.8, mmd=0.01, w_n=1.0, w_c=1.0, pose_defined=True):
    par = np.zeros(N_PAR, F32)
    par[EP_INV_KAPPA], par[EP_MMD], par[EP_W_NORMAL], par[EP_W_CURV] = inv_kappa, mmd, w_n, w_c
    par[EP_POSE_DEFINED] = 1.0 if pose_defined else 0.0
    return par


@pytest.mark.parametrize("K", [1, 5, 10])
@pytest.mark.parametrize("pose_defined", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_evidence_max_matches_the_reference(K, pose_defined, strided):
    rng = np.random.default_rng(K + 10 * pose_defined + 100 * strided)
    args = _case(rng, 300, 4 * LANES, K, strided)
    par = _par(w_c=0.7, pose_defined=pose_defined)
    want = _reference(*args, par)
    assert (want > -1).sum() > 20 and (want == -1).sum() > 5  # in-radius and out-of-radius both occur
    for run in (_all_lanes, _python_lanes):
        out = np.full(4 * LANES, np.nan, F32)
        run(*args, par, out)
        np.testing.assert_array_equal(out, want)  # same float32 operations in the same order


def test_one_block_of_lanes_writes_only_its_columns():
    rng = np.random.default_rng(3)
    args = _case(rng, 200, 3 * LANES, 5)
    par = _par()
    want = _reference(*args, par)
    for run in (_block, evidence_max):
        out = np.full(3 * LANES, 7.0, F32)
        run(*args, LANES, par, out)
        assert np.all(out[:LANES] == 7.0) and np.all(out[2 * LANES:] == 7.0)
        np.testing.assert_array_equal(out[LANES:2 * LANES], want[LANES:2 * LANES])


def test_the_radius_is_strict_and_nothing_in_radius_gives_minus_one():
    """A node at exactly the match radius is out; no neighbours, K = 0 or a NaN location give -1."""
    node_pos = np.array([[0.5, 0, 0], [0.25, 0, 0], [0, 0, 0]], F32)
    node_pose = np.zeros((3, 9), F32)
    node_pose[:, 2] = 1  # normals along z, as the sensed one: g = 1, pose evidence w_n / 2
    node_pfd = np.zeros(3, F32)
    phi = np.array([5.0, 1.0, -3.0], F32)  # node 2's evidence is below -1
    P = LANES
    hq = np.zeros((9, P), F32)
    hq[5] = 1  # sensed normal along z: e . q = 0, dist = |e|
    nbr = np.zeros((2, P), np.int32)
    n_nbr = np.zeros(P, np.int64)
    nbr[:, 0], n_nbr[0] = [0, 1], 2  # node 0 at dist 0.5 == mmd: only node 1 counts
    nbr[:, 1], n_nbr[1] = [0, 0], 2  # nothing strictly in radius
    nbr[:, 2], n_nbr[2] = [2, 1], 1  # node 2 in radius, evidence -2.5: clipped to -1
    nbr[:, 3], n_nbr[3] = [1, 0], 0  # no neighbours at all
    nbr[:, 4], n_nbr[4] = [1, 0], 1
    hq[0, 4] = np.nan  # a NaN location is in no radius
    par = _par(inv_kappa=1.0, mmd=0.5, w_n=1.0, w_c=1.0, pose_defined=False)
    for run in (_block, evidence_max):
        out = np.full(P, 9.0, F32)
        run(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, 0, par, out)
        assert out[0] == F32(1.5)
        assert list(out[1:5]) == [-1.0, -1.0, -1.0, -1.0]
        out = np.full(P, 9.0, F32)
        run(node_pos, node_pose, node_pfd, phi, np.zeros((0, P), np.int32), n_nbr, hq, 0, par, out)
        assert np.all(out == -1.0)  # K = 0


def test_undefined_curvature_directions_are_ignored():
    """With par[EP_POSE_DEFINED] == 0 the sensed curvature direction is never read: NaN there changes nothing."""
    rng = np.random.default_rng(11)
    node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq = _case(rng, 100, 2 * LANES, 5)
    par = _par(pose_defined=False)
    want = _reference(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, par)
    hq[6:9] = np.nan
    out = np.empty(2 * LANES, F32)
    _all_lanes(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, par, out)
    np.testing.assert_array_equal(out, want)


def test_rejects_wrong_layouts():
    from numba.core.errors import TypingError

    rng = np.random.default_rng(0)
    node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq = _case(rng, 50, LANES, 3)
    out = np.empty(LANES, F32)
    with pytest.raises(TypingError):
        _all_lanes(node_pos, node_pose, node_pfd, phi, np.asfortranarray(nbr), n_nbr, hq, _par(), out)
    with pytest.raises(TypingError):
        _all_lanes(node_pos, node_pose, node_pfd, phi, nbr.astype(np.int64), n_nbr, hq, _par(), out)
    with pytest.raises(TypingError):
        _all_lanes(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq.astype(np.float64), _par(), out)
    assert N_PAR == 5
