"""kernels.voting against the NumPy reference of tbp.monty's vote exchange (tests/naive/voting.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import voting as kv
from tests.naive import voting as ref


def _rotations(rng, n):
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    r = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=1)
    return r.astype(np.float32)


def _modules(rng, n_mod, cap, n_obj, box=0.03, dead=0.1, ev_scale=3.0):
    """Stacked random hypothesis arrays: locations in a few-cm box (many within 1 cm of each other)."""
    obj = rng.integers(0, n_obj, (n_mod, cap)).astype(np.int32)
    obj[rng.random((n_mod, cap)) < dead] = -1
    loc = (rng.random((n_mod, cap, 3)) * box).astype(np.float32)
    rot = _rotations(rng, n_mod * cap).reshape(n_mod, cap, 9)
    ev = (rng.standard_normal((n_mod, cap)) * ev_scale).astype(np.float32)
    n_rows = rng.integers(0, cap + 1, n_mod).astype(np.int64)
    sensed = (rng.random((n_mod, 3)) * 0.02).astype(np.float32)
    return obj, loc, rot, ev, n_rows, sensed


def _senders(conn):
    return [list(np.flatnonzero(conn[r])) for r in range(conn.shape[0])]


def _exchange_both(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold=0.8, weight=1.0, bounded=False,
                   mmd=0.01, mode=kv.VOTE_TRANSPOSE):
    want, want_votes = ref.exchange(obj, loc, rot, ev, n_rows, sensed, sends, _senders(conn), threshold, weight,
                                    bounded, mmd, transpose=mode == kv.VOTE_TRANSPOSE)
    got = ev.copy()
    n_votes, changed = kv.exchange_votes(obj, loc, rot, got, n_rows, sensed, sends.astype(np.uint8), conn,
                                         np.float64(threshold), kv.receiving(weight, bounded, mmd, mode))
    return got, want, n_votes, want_votes, changed


# --------------------------------------------------------------------------- sending


@pytest.mark.parametrize("ev_scale", [3.0, 0.4])  # a module whose best evidence is >= 1 (scaled) and < 1 (clipped)
def test_select_votes_matches_tbp_monty_send_out_vote(ev_scale):
    rng = np.random.default_rng(1)
    for trial in range(20):
        obj, loc, rot, ev, n_rows, _ = _modules(rng, 1, int(rng.integers(0, 300)), 4, ev_scale=ev_scale)
        n = int(n_rows[0])
        threshold = float(rng.choice([0.8, 0.0, -0.5, 0.95]))
        want = ref.send_out_vote(obj[0, :n], loc[0, :n], rot[0, :n], ev[0, :n], threshold)
        nv = kv.count_votes(obj[0], ev[0], n, threshold)
        assert nv == sum(len(v) for v in want.values())
        out = kv.VoteOut(np.empty(nv, np.int32), np.empty(nv, np.int32), np.empty((nv, 3), np.float32),
                         np.empty((nv, 9), np.float32), np.empty(nv, np.float32))
        w = kv.select_votes(obj[0], loc[0], rot[0], ev[0], n, threshold, 3, out, 0)
        assert w == nv
        src, vobj, vloc, vrot, vconf = out
        assert (src == 3).all()
        for o, votes in want.items():
            sel = vobj == o
            assert sel.sum() == len(votes)
            np.testing.assert_array_equal(vloc[sel], np.array([v[0] for v in votes]))
            np.testing.assert_array_equal(vrot[sel], np.array([v[1].reshape(9) for v in votes]))
            np.testing.assert_allclose(vconf[sel], np.array([v[2] for v in votes]), rtol=1e-6)
            assert (vconf[sel] > threshold).all()


def test_equal_evidences_above_one_send_no_vote():
    """tbp.monty scales (E - min) / (max - min): 0 / 0 when all are equal, and NaN votes for nothing."""
    obj = np.zeros(5, np.int32)
    ev = np.full(5, 2.0, np.float32)
    assert kv.count_votes(obj, ev, 5, 0.8) == 0
    assert ref.send_out_vote(obj, np.zeros((5, 3), np.float32), np.zeros((5, 9), np.float32), ev, 0.8) == {}
    # below 1 they are clipped, not scaled: 0.9 > 0.8 votes
    ev[:] = 0.9
    assert kv.count_votes(obj, ev, 5, 0.8) == 5


def test_scale_evidence_edges():
    assert kv.scale_evidence(3.0, 1.0, 3.0) == 1.0
    assert kv.scale_evidence(1.0, 1.0, 3.0) == -1.0
    assert kv.scale_evidence(5.0, -2.0, 0.5) == 1.0  # (not scaled: the maximum is below 1)
    assert kv.scale_evidence(-5.0, -9.0, 0.5) == -1.0
    assert np.isnan(kv.scale_evidence(2.0, 2.0, 2.0))


# --------------------------------------------------------------------------- transforming


@pytest.mark.parametrize("mode", [kv.VOTE_TRANSPOSE, kv.VOTE_ROTATE])
def test_transform_vote(mode):
    rng = np.random.default_rng(2)
    loc = rng.standard_normal((50, 3)).astype(np.float32)
    rot = _rotations(rng, 50)
    dp = rng.standard_normal(3).astype(np.float32)
    out = np.empty((50, 3), np.float32)
    for i in range(50):
        kv.transform_vote(loc, rot, i, dp[0], dp[1], dp[2], mode, out, i)
    r = rot.reshape(-1, 3, 3).astype(np.float64)
    v = np.swapaxes(r, 1, 2) if mode == kv.VOTE_TRANSPOSE else r
    np.testing.assert_allclose(out, loc + v @ dp.astype(np.float64), atol=1e-6)
    if mode == kv.VOTE_ROTATE:  # a hypothesis moved by dp (path integration) lands where the vote goes
        np.testing.assert_allclose(out, loc + np.einsum("hij,j->hi", r, dp), atol=1e-6)


# --------------------------------------------------------------------------- receiving


@pytest.mark.parametrize("bounded", [False, True])
def test_receive_votes_matches_reference(bounded):
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(0, 400))
        nv = int(rng.integers(0, 60))
        n_obj = 3
        obj = rng.integers(-1, n_obj, n).astype(np.int32)
        loc = (rng.random((n, 3)) * 0.04).astype(np.float32)
        ev = rng.standard_normal(n).astype(np.float32)
        vobj = rng.integers(0, n_obj, nv).astype(np.int32)
        vloc = (rng.random((nv, 3)) * 0.04).astype(np.float32)
        if nv > 4:  # duplicates: equal distances, ties broken by pool order
            vloc[1] = vloc[0]
            vloc[3] = vloc[2]
            vobj[1] = vobj[0]
            vobj[3] = vobj[2]
        vconf = rng.uniform(0.8, 1.0, nv).astype(np.float32)
        pooled = {}
        for i in range(nv):
            pooled.setdefault(int(vobj[i]), []).append((vloc[i], vconf[i]))
        want_ev, want_taken = ref.receive_votes(obj, loc, ev, pooled, 0.01, 0.5, bounded)
        got = ev.copy()
        taken = np.empty(n, np.float32)
        changed = kv.receive_votes(obj, loc, got, n, vobj, vloc, vconf, nv, np.float32(0.01), np.float32(0.5),
                                   bounded, taken)
        np.testing.assert_array_equal(taken, want_taken)
        np.testing.assert_array_equal(got, want_ev)
        assert changed == int(np.isfinite(want_taken).sum())


def test_receive_takes_the_best_of_the_three_nearest_only():
    """A fourth, farther vote with a higher confidence inside the radius does not count."""
    obj = np.zeros(1, np.int32)
    loc = np.zeros((1, 3), np.float32)
    vloc = np.array([[0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0], [0.004, 0, 0]], np.float32)
    vconf = np.array([0.81, 0.82, 0.83, 0.99], np.float32)
    ev = np.zeros(1, np.float32)
    taken = np.empty(1, np.float32)
    kv.receive_votes(obj, loc, ev, 1, np.zeros(4, np.int32), vloc, vconf, 4, np.float32(0.01), np.float32(1.0),
                     False, taken)
    assert taken[0] == np.float32(0.83)
    _, want = ref.receive_votes(obj, loc, np.zeros(1, np.float32), {0: list(zip(vloc, vconf))}, 0.01, 1.0, False)
    assert want[0] == taken[0]
    # a vote for another object, or one at the radius, is no vote
    ev[:] = 0
    kv.receive_votes(obj, loc, ev, 1, np.array([1], np.int32), vloc[:1], vconf[:1], 1, np.float32(0.01),
                     np.float32(1.0), False, taken)
    assert np.isnan(taken[0]) and ev[0] == 0
    kv.receive_votes(obj, loc, ev, 1, np.zeros(1, np.int32), np.array([[0.01, 0, 0]], np.float32), vconf[:1], 1,
                     np.float32(0.01), np.float32(1.0), False, taken)
    assert np.isnan(taken[0]) and ev[0] == 0


# --------------------------------------------------------------------------- the exchange


@pytest.mark.parametrize("mode", [kv.VOTE_TRANSPOSE, kv.VOTE_ROTATE])
def test_exchange_matches_reference_random(mode):
    rng = np.random.default_rng(4)
    n_changed = 0
    for trial in range(15):
        n_mod = int(rng.integers(1, 6))
        obj, loc, rot, ev, n_rows, sensed = _modules(rng, n_mod, 200, 3)
        sends = (rng.random(n_mod) < 0.8).astype(np.uint8)
        conn = kv.connectivity("all", n_mod) if trial % 2 else (rng.random((n_mod, n_mod)) < 0.6).astype(np.uint8)
        bounded = bool(trial % 3 == 0)
        got, want, n_votes, want_votes, changed = _exchange_both(obj, loc, rot, ev, n_rows, sensed, sends, conn,
                                                                 bounded=bounded, mode=mode)
        assert list(n_votes) == want_votes
        np.testing.assert_array_equal(got, want)
        assert ((got != ev).sum(axis=1) <= changed).all()
        n_changed += int(changed.sum())
    assert n_changed > 100  # the cases exercise receiving, not only empty exchanges


def test_exchange_edge_cases():
    rng = np.random.default_rng(5)
    obj, loc, rot, ev, n_rows, sensed = _modules(rng, 3, 100, 2)
    n_rows[:] = 100
    sends = np.ones(3, np.uint8)
    conn = kv.connectivity("all", 3)
    # no votes: nothing is above the threshold (scaled evidence is at most 1)
    got, want, n_votes, _, changed = _exchange_both(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold=1.0)
    assert (n_votes == 0).all() and (changed == 0).all()
    np.testing.assert_array_equal(got, ev)
    np.testing.assert_array_equal(want, ev)
    # one module: it never receives its own votes (all-to-all leaves out the diagonal)
    got, want, n_votes, _, changed = _exchange_both(obj[:1], loc[:1], rot[:1], ev[:1], n_rows[:1], sensed[:1],
                                                    sends[:1], kv.connectivity("all", 1))
    assert n_votes[0] > 0 and changed[0] == 0
    np.testing.assert_array_equal(got, ev[:1])
    # a module with no hypothesis above the threshold sends nothing but still receives
    low = ev.copy()
    low[1, :] = -3.0  # all clipped to -1: no vote
    got, want, n_votes, _, changed = _exchange_both(obj, loc, rot, low, n_rows, sensed, sends, conn)
    assert n_votes[1] == 0 and changed[1] > 0
    np.testing.assert_array_equal(got, want)
    # a module that has not touched the object neither sends nor receives
    off = np.array([1, 0, 1], np.uint8)
    got, want, n_votes, _, changed = _exchange_both(obj, loc, rot, ev, n_rows, sensed, off, conn)
    assert n_votes[1] == 0 and changed[1] == 0
    np.testing.assert_array_equal(got[1], ev[1])
    np.testing.assert_array_equal(got, want)
    # no connections (voting off): nothing changes
    got, _, _, _, changed = _exchange_both(obj, loc, rot, ev, n_rows, sensed, sends, kv.connectivity(None, 3))
    np.testing.assert_array_equal(got, ev)
    # modules without hypotheses
    empty = np.zeros(3, np.int64)
    got, want, n_votes, _, changed = _exchange_both(obj, loc, rot, ev, empty, sensed, sends, conn)
    assert (n_votes == 0).all()
    np.testing.assert_array_equal(got, ev)


def test_votes_moved_by_the_sensor_offset_reach_the_receiver():
    """Two modules on one object, 1 cm apart: the sender's confident hypothesis, moved by
    ``R dp`` (VOTE_ROTATE), lands on the receiver's matching hypothesis and raises it."""
    rng = np.random.default_rng(6)
    r = _rotations(rng, 1)[0]
    dp = np.array([0.01, 0.0, 0.0], np.float32)
    obj = np.zeros((2, 2), np.int32)
    loc = np.zeros((2, 2, 3), np.float32)
    loc[1, 0] = r.reshape(3, 3) @ dp  # the receiver's hypothesis where the sender's pose says it is
    loc[1, 1] = loc[1, 0] + 0.05      # and one far from it
    rot = np.tile(r, (2, 2, 1))
    ev = np.array([[3.0, 0.0], [0.0, 0.0]], np.float32)
    sensed = np.array([[0, 0, 0], dp], np.float32)
    conn = kv.connectivity("all", 2)
    got, want, _, _, _ = _exchange_both(obj, loc, rot, ev, np.array([2, 2]), sensed, np.ones(2, np.uint8), conn,
                                        mode=kv.VOTE_ROTATE)
    np.testing.assert_array_equal(got, want)
    assert got[1, 0] == np.float32(1.0) and got[1, 1] == 0.0


def test_connectivity():
    assert (kv.connectivity("all", 3) == 1 - np.eye(3)).all()
    assert not kv.connectivity(None, 4).any()
    c = kv.connectivity([[1], [0, 2], []], 3)
    assert c.tolist() == [[0, 1, 0], [1, 0, 1], [0, 0, 0]]
    for bad in ("some", [[1]], [[3], [], []], [[True], [], []], [1, 2, 3]):
        with pytest.raises(ValueError):
            kv.connectivity(bad, 3)
