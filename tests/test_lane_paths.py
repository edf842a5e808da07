"""``kernels.lane_paths.integrate_rows`` against a NumPy reference, compiled and as plain Python."""

import numpy as np
import pytest
from numba import njit

from kernels.evidence_layout import PP_DELETING, PP_DIR1, PP_DISP, PP_MIN_AGE, PP_NORMAL, PP_SLOPE_MIN
from kernels.lane_paths import N_PATH_PAR, integrate_rows
from kernels.lanes import LANES

F32 = np.float32


@njit
def _compiled(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq):
    return integrate_rows(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq)


def _state(rng, cap):
    obj = rng.integers(0, 4, cap).astype(np.int32)
    obj[rng.random(cap) < 0.25] = -1  # dead rows
    loc = rng.normal(size=(cap, 3)).astype(F32)
    rot = rng.normal(size=(cap, 9)).astype(F32)
    slope = rng.normal(size=cap).astype(F32)
    slope[rng.random(cap) < 0.1] = np.nan  # too young for a slope
    age = rng.integers(0, 8, cap).astype(np.int32)
    possible = rng.integers(0, 2, cap).astype(np.uint8)
    return [obj, loc, rot, slope, age, possible]


def _par(rng, deleting, min_age=3, slope_min=0.0):
    par = np.zeros(N_PATH_PAR, F32)
    par[PP_DISP:PP_DISP + 3] = rng.normal(size=3) * 0.01
    par[PP_NORMAL:PP_NORMAL + 3] = rng.normal(size=3)
    par[PP_DIR1:PP_DIR1 + 3] = rng.normal(size=3)
    par[PP_DELETING] = 1.0 if deleting else 0.0
    par[PP_MIN_AGE] = min_age
    par[PP_SLOPE_MIN] = slope_min
    return par


def _reference(state, lo, hi, par):
    """The docstring's rule in NumPy float32, unfused, summed left to right."""
    obj, loc, rot, slope, age, possible = (a.copy() for a in state)
    h = np.arange(lo, hi)
    live = obj[h] >= 0
    with np.errstate(invalid="ignore"):
        gone = live & bool(par[PP_DELETING]) & (age[h] >= int(par[PP_MIN_AGE])) & ~(slope[h] >= par[PP_SLOPE_MIN])
    obj[h[gone]] = -1
    possible[h[gone]] = 0
    surv = h[live & ~gone]
    R = rot[surv].reshape(-1, 3, 3)

    def turn(v, start=None):  # R v (+ start), one product at a time from the left
        out = R[:, :, 0] * v[0] if start is None else start + R[:, :, 0] * v[0]
        return (out + R[:, :, 1] * v[1]) + R[:, :, 2] * v[2]

    loc[surv] = turn(par[PP_DISP:PP_DISP + 3], loc[surv])
    hq = np.concatenate([loc[surv].T, turn(par[PP_NORMAL:PP_NORMAL + 3]).T, turn(par[PP_DIR1:PP_DIR1 + 3]).T]).astype(F32)
    assert hq.dtype == F32
    return [obj, loc, rot, slope, age, possible], surv, obj[surv], hq, int(gone.sum())


@pytest.mark.parametrize("deleting", [True, False])
@pytest.mark.parametrize("lo, hi", [(0, 0), (5, 6), (0, LANES - 1), (3, 3 + LANES), (7, 7 + LANES + 1), (0, 1000),
                                    (13, 990)])
def test_integrate_rows_matches_the_reference(deleting, lo, hi):
    rng = np.random.default_rng(lo * 1000 + hi + deleting)
    cap = 1003
    state = _state(rng, cap)
    par = _par(rng, deleting)
    want_state, want_rows, want_obj, want_hq, want_dead = _reference(state, lo, hi, par)
    if hi - lo >= 100:
        assert want_dead > 0 if deleting else want_dead == 0
        assert 0 < len(want_rows) < hi - lo
    for run in (_compiled, integrate_rows):  # the IR, and the plain-Python body
        got_state = [a.copy() for a in state]
        width = hi - lo + 3
        rows = np.full(width, -7, np.int64)
        qobj = np.full(width, -7, np.int32)
        hq = np.full((9, width), 7.0, F32)
        n_q, dead = run(*got_state, lo, hi, par, rows, qobj, hq)
        assert (n_q, dead) == (len(want_rows), want_dead)
        for got, want in zip(got_state, want_state):
            np.testing.assert_array_equal(got, want)  # rows outside lo..hi untouched too
        assert np.array_equal(rows[:n_q], want_rows) and np.all(rows[n_q:] == -7)
        assert np.array_equal(qobj[:n_q], want_obj) and np.all(qobj[n_q:] == -7)
        np.testing.assert_array_equal(hq[:, :n_q], want_hq)  # bit for bit
        assert np.all(hq[:, n_q:] == 7.0)


def test_nan_slopes_are_deleted_only_when_old_enough_and_deleting():
    """Section 4.10: a hypothesis whose slope is not >= the minimum (NaN included) goes once it
    is at least min_age steps old; with deletion off nothing goes."""
    cap = LANES
    obj = np.zeros(cap, np.int32)
    loc = np.zeros((cap, 3), F32)
    rot = np.tile(np.eye(3, dtype=F32).reshape(1, 9), (cap, 1))
    slope = np.array([np.nan, -1.0, 0.0, 1.0] * 4, F32)
    age = np.array([2] * 4 + [3] * 12, np.int32)
    possible = np.ones(cap, np.uint8)
    par = np.zeros(N_PATH_PAR, F32)
    par[PP_DISP:PP_DISP + 3] = 1, 2, 3
    par[PP_DELETING], par[PP_MIN_AGE], par[PP_SLOPE_MIN] = 1, 3, 0
    n_q, dead = _compiled(obj, loc, rot, slope, age, possible, 0, cap, par, np.empty(cap, np.int64),
                          np.empty(cap, np.int32), np.empty((9, cap), F32))
    gone = [False] * 4 + [True, True, False, False] * 3
    assert list(obj == -1) == gone and list(possible == 0) == gone
    assert (n_q, dead) == (cap - sum(gone), sum(gone))
    assert np.all(loc[~np.array(gone)] == [1, 2, 3]) and np.all(loc[np.array(gone)] == 0)


def test_rejects_wrong_layouts():
    from numba.core.errors import TypingError

    rng = np.random.default_rng(0)
    state = _state(rng, LANES)
    par = _par(rng, True)
    rows, qobj, hq = np.empty(LANES, np.int64), np.empty(LANES, np.int32), np.empty((9, LANES), F32)
    for i, bad in ((0, state[0].astype(np.int64)), (1, np.asfortranarray(state[1])), (2, state[2].astype(np.float64)),
                   (5, state[5].astype(np.bool_))):
        args = list(state)
        args[i] = bad
        with pytest.raises(TypingError):
            _compiled(*args, 0, LANES, par, rows, qobj, hq)
