"""``kernels.lanes``: the lock-step candidate step against a NumPy model of one step, and the bit helpers."""

import numpy as np
import pytest
from numba import njit

from kernels.lanes import (CODE_BITS, K_REGISTERS, LANES, Candidates, LaneQueries, candidate_bound,
                           drive_lanes, drive_lock_steps, lock_step, lock_steps, lowest_bit, popcount, prefetch,
                           search_lanes)

F32 = np.float32


def _coded(cand_node, cand_dist, strided=False):
    """The lanes' form of candidate lists whose distances are multiples of 1/32 (the tests'
    coarse values): distance step 1/32 (exact), codes ``node << CODE_BITS | 32 d``."""
    steps = np.rint(np.asarray(cand_dist, np.float64) * 32).astype(np.int64)
    assert (steps / 32 == cand_dist).all()
    codes = (np.asarray(cand_node, np.int64) << CODE_BITS | steps).astype(np.int32)
    if strided:
        out = np.zeros(2 * len(codes), np.int32)[::2]
        out[:] = codes
        codes = out
    return np.array([1 / 32], F32), codes


@njit
def _step(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
    return lock_step(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k)


@njit
def _steps(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at):
    return lock_steps(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at)


@njit
def _bits(x):
    return popcount(x), lowest_bit(x)


def _reference_step(cand_dist, cand_node, node_pos, lane_i, lane_f, best_d2, best_j):
    """One step, lane by lane, as ``lock_step``'s docstring says (float32 arithmetic)."""
    lane_i, best_d2, best_j = lane_i.copy(), best_d2.copy(), best_j.copy()
    k = best_d2.shape[0]
    for lane in range(LANES):
        nxt, end = lane_i[0, lane], lane_i[1, lane]
        if nxt >= end:
            continue
        gap = F32(cand_dist[nxt] - lane_f[0, lane])
        if gap > 0 and F32(gap * gap) >= best_d2[k - 1, lane]:
            lane_i[0, lane] = end
            continue
        lane_i[0, lane] = nxt + 1
        j = cand_node[nxt]
        e = (node_pos[j] - lane_f[1:, lane]).astype(F32)
        d2 = F32(F32(F32(e[0] * e[0]) + F32(e[1] * e[1])) + F32(e[2] * e[2]))
        for p in range(k):  # insert before the first entry it is strictly below
            if d2 < best_d2[p, lane]:
                best_d2[p + 1:, lane] = best_d2[p:-1, lane].copy()
                best_j[p + 1:, lane] = best_j[p:-1, lane].copy()
                best_d2[p, lane], best_j[p, lane] = d2, j
                break
    done = sum(1 << lane for lane in range(LANES) if lane_i[0, lane] >= lane_i[1, lane])
    return lane_i, best_d2, best_j, done


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("compiled", [True, False])
def test_lock_step_matches_the_reference_step_by_step(k, strided, compiled):
    """The compiled IR and the plain-Python body (NUMBA_DISABLE_JIT) against the reference."""
    step = _step if compiled else lock_step
    rng = np.random.default_rng(k + 10 * strided)
    n_nodes, n_cand = 60, 400
    pos = rng.integers(-8, 8, (n_nodes, 3)).astype(F32) / F32(16)  # coarse: many equal distances
    node_pos = np.zeros((n_nodes, 5), F32)[:, 1:4] if strided else np.empty((n_nodes, 3), F32)
    node_pos[:] = pos
    cand_node = rng.integers(0, n_nodes, n_cand).astype(np.int32)
    # coarse values everywhere, so that equal distances and gap**2 == k-th best both happen
    cand_dist = np.sort(rng.integers(0, 32, n_cand)).astype(F32) / F32(32)
    starts = rng.integers(0, n_cand - 40, LANES)
    lane_i = np.stack([starts, starts + rng.integers(0, 40, LANES)]).astype(np.int32)
    lane_i[:, 3] = 7  # an empty lane
    lane_f = np.stack([rng.integers(-6, 20, LANES) / 32, *rng.integers(-8, 8, (3, LANES)) / 16]).astype(F32)
    best_d2 = np.full((k, LANES), 0.25, F32)
    best_j = np.full((k, LANES), -1, np.int32)
    unit, code = _coded(cand_node, cand_dist, strided)
    ref = (lane_i, best_d2, best_j)
    for _ in range(45):
        want_i, want_d, want_j, want_done = _reference_step(cand_dist, cand_node, node_pos, ref[0], lane_f, *ref[1:])
        done = step(unit, code, node_pos, lane_i, lane_f, best_d2, best_j, np.int64(k))
        assert done == want_done
        np.testing.assert_array_equal(lane_i, want_i)
        np.testing.assert_array_equal(best_d2, want_d)
        np.testing.assert_array_equal(best_j, want_j)
        ref = (want_i, want_d, want_j)
    assert done == (1 << LANES) - 1  # every list ends within 40 candidates
    assert (best_j >= 0).any() and (best_d2 < F32(0.25)).any()


def _lane_case(rng, k, n_nodes=60, n_cand=400):
    """Coarse data (equal distances and gap**2 == k-th best both happen) and fresh lane state."""
    node_pos = (rng.integers(-8, 8, (n_nodes, 3)) / 16).astype(F32)
    cand_node = rng.integers(0, n_nodes, n_cand).astype(np.int32)
    cand_dist = np.sort(rng.integers(0, 32, n_cand)).astype(F32) / F32(32)
    starts = rng.integers(0, n_cand - 40, LANES)
    lane_i = np.stack([starts, starts + rng.integers(1, 40, LANES)]).astype(np.int32)
    lane_f = np.stack([rng.integers(-6, 20, LANES) / 32, *rng.integers(-8, 8, (3, LANES)) / 16]).astype(F32)
    return cand_dist, cand_node, node_pos, lane_i, lane_f, np.full((k, LANES), 0.25, F32), np.full((k, LANES), -1,
                                                                                                      np.int32)


@pytest.mark.parametrize("k", [1, 2, 5, K_REGISTERS, K_REGISTERS + 1, 13])
@pytest.mark.parametrize("compiled", [True, False])
def test_lock_steps_is_lock_step_repeated_until_enough_lanes_end(k, compiled):
    """Register loops (k <= K_REGISTERS) and the memory loop (larger k) against the reference
    step repeated: the same state after every call, stopping exactly when the mask says."""
    steps = _steps if compiled else lock_steps
    rng = np.random.default_rng(100 + k)
    cand_dist, cand_node, node_pos, lane_i, lane_f, best_d2, best_j = _lane_case(rng, k)
    idle = [3, 9]
    lane_i[:, idle] = 5  # lanes with nothing to do are not busy
    busy = sum(1 << lane for lane in range(LANES) if lane not in idle)
    ref = (lane_i.copy(), best_d2.copy(), best_j.copy())
    calls = 0
    for stop_at in (1, 3, 4, 4, 16, 16):
        while True:  # the reference: one step at a time, stopping as lock_steps must
            want_i, want_d, want_j, want_done = _reference_step(cand_dist, cand_node, node_pos, ref[0], lane_f,
                                                                *ref[1:])
            ref = (want_i, want_d, want_j)
            want_done &= busy
            if want_done == busy or bin(want_done).count("1") >= stop_at:
                break
        done = steps(*_coded(cand_node, cand_dist), node_pos, lane_i, lane_f, best_d2, best_j, np.int64(k), np.int64(busy),
                     np.int64(stop_at))
        calls += 1
        assert done == want_done
        np.testing.assert_array_equal(lane_i, want_i)
        np.testing.assert_array_equal(best_d2, want_d)
        np.testing.assert_array_equal(best_j, want_j)
        busy &= ~done  # (the driver would refill these lanes; here they just leave)
        if busy == 0:
            break
    assert calls >= 3 and busy == 0 and (best_j >= 0).any()


@njit
def _search(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m, stop_at):
    search_lanes(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m, stop_at)


def _walk_one(cand_dist, cand_node, node_pos, c0, c1, off, q, r2, k):
    """One query's walk, candidate by candidate, as lock_step's docstring says (float32)."""
    bd, bj = [F32(r2)] * k, [-1] * k
    for i in range(c0, c1):
        gap = F32(cand_dist[i] - off)
        if gap > 0 and F32(gap * gap) >= bd[k - 1]:
            break
        e = (node_pos[cand_node[i]] - q).astype(F32)
        d2 = F32(F32(F32(e[0] * e[0]) + F32(e[1] * e[1])) + F32(e[2] * e[2]))
        for p in range(k):
            if d2 < bd[p]:
                bd.insert(p, d2)
                bj.insert(p, int(cand_node[i]))
                bd, bj = bd[:k], bj[:k]
                break
    return bj, sum(d < F32(r2) for d in bd)


@pytest.mark.parametrize("k", [1, 5, K_REGISTERS, K_REGISTERS + 1])
@pytest.mark.parametrize("n_search", [0, 1, LANES - 1, LANES + 1, 70])
@pytest.mark.parametrize("compiled", [True, False])
def test_search_lanes_walks_every_listed_query(k, n_search, compiled):
    """Every query of the list gets the walk of its own list (the one-query reference), whatever
    the lane it lands in; other queries are not touched; k beyond K_REGISTERS writes nothing."""
    run = _search if compiled else search_lanes
    rng = np.random.default_rng(7 * k + n_search)
    n, n_nodes, n_cand = 90, 60, 3000
    node_pos = (rng.integers(-8, 8, (n_nodes, 3)) / 16).astype(F32)
    cand_node = rng.integers(0, n_nodes, n_cand).astype(np.int32)
    starts = rng.integers(0, n_cand - 50, n)
    span = np.stack([starts, starts + rng.integers(1, 50, n)]).astype(np.int32)
    cand_dist = np.zeros(n_cand, F32)
    for c0, c1 in span.T:  # each list sorted, coarse values (ties, gap**2 == k-th best)
        cand_dist[c0:c1] = np.sort(rng.integers(0, 32, c1 - c0)) / 32
    span_off = (rng.integers(-6, 20, n) / 32).astype(F32)
    qpos = (rng.integers(-8, 8, (3, n)) / 16).astype(F32)
    search = rng.permutation(n)[:max(n_search, 1)].astype(np.int64)
    r2 = F32(0.25)
    for stop_at in (1, 4, LANES):
        out_j = np.full((k, n), -7, np.int32)
        out_m = np.full(n, -7, np.int64)
        run(*_coded(cand_node, cand_dist), node_pos, span, span_off, qpos, search, np.int64(n_search), r2, np.int64(k),
            out_j, out_m, np.int64(stop_at))
        listed = set(search[:n_search].tolist())
        if k > K_REGISTERS:
            assert (out_j == -7).all() and (out_m == -7).all()
            continue
        for i in range(n):
            if i not in listed:
                assert (out_j[:, i] == -7).all() and out_m[i] == -7
                continue
            want_j, want_m = _walk_one(cand_dist, cand_node, node_pos, span[0, i], span[1, i], span_off[i], qpos[:, i],
                                       r2, k)
            assert list(out_j[:, i]) == want_j and out_m[i] == want_m, (i, stop_at)
        if n_search >= LANES:
            assert (out_m[search[:n_search]] > 0).any()


@njit
def _drive(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m, stop_at):
    drive_lock_steps(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                     stop_at)


def _drive_grouped(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                   stop_at):
    drive_lanes(Candidates(cand_unit, cand_code, node_pos), LaneQueries(span, span_off, qpos, search, n_search),
                r2, k, out_j, out_m, stop_at)


@pytest.mark.parametrize("k", [1, 5, K_REGISTERS + 1, 16])
@pytest.mark.parametrize("n_search", [0, 1, LANES + 1, 70])
@pytest.mark.parametrize("run", ["njit", "python", "grouped"])
def test_drive_lock_steps_walks_every_listed_query_for_any_k(k, n_search, run):
    """``drive_lock_steps`` (from njit code and from Python) and ``drive_lanes`` (its grouped
    arguments): every listed query gets the one-query reference walk of its list, for any k."""
    fn = {"njit": _drive, "python": drive_lock_steps, "grouped": _drive_grouped}[run]
    rng = np.random.default_rng(11 * k + n_search)
    n, n_nodes, n_cand = 80, 60, 3000
    node_pos = (rng.integers(-8, 8, (n_nodes, 3)) / 16).astype(F32)
    cand_node = rng.integers(0, n_nodes, n_cand).astype(np.int32)
    starts = rng.integers(0, n_cand - 50, n)
    span = np.stack([starts, starts + rng.integers(1, 50, n)]).astype(np.int32)
    cand_dist = np.zeros(n_cand, F32)
    for c0, c1 in span.T:
        cand_dist[c0:c1] = np.sort(rng.integers(0, 32, c1 - c0)) / 32
    span_off = (rng.integers(-6, 20, n) / 32).astype(F32)
    qpos = (rng.integers(-8, 8, (3, n)) / 16).astype(F32)
    search = rng.permutation(n)[:max(n_search, 1)].astype(np.int64)
    r2 = F32(0.25)
    out_j = np.full((k, n), -7, np.int32)
    out_m = np.full(n, -7, np.int64)
    fn(*_coded(cand_node, cand_dist), node_pos, span, span_off, qpos, search, np.int64(n_search), r2, np.int64(k), out_j,
       out_m, np.int64(4))
    listed = set(search[:n_search].tolist())
    for i in range(n):
        if i not in listed:
            assert (out_j[:, i] == -7).all() and out_m[i] == -7
            continue
        want_j, want_m = _walk_one(cand_dist, cand_node, node_pos, span[0, i], span[1, i], span_off[i], qpos[:, i],
                                   r2, k)
        assert list(out_j[:, i]) == want_j and out_m[i] == want_m, i


def test_lock_step_reads_nothing_for_idle_lanes():
    """Lanes with next >= end touch no candidate: empty candidate and node arrays are fine."""
    lane_i = np.zeros((2, LANES), np.int32)
    best_d2 = np.full((2, LANES), 1.0, F32)
    best_j = np.full((2, LANES), -1, np.int32)
    done = _step(np.ones(1, F32), np.zeros(0, np.int32), np.zeros((0, 3), F32), lane_i,
                 np.zeros((4, LANES), F32), best_d2, best_j, np.int64(2))
    assert done == (1 << LANES) - 1 and (best_j == -1).all() and (lane_i == 0).all()


def test_lock_step_rejects_other_dtypes_and_layouts():
    from numba.core.errors import TypingError
    args = [np.zeros(1, F32), np.zeros(1, np.int32), np.zeros((1, 3), F32), np.zeros((2, LANES), np.int32),
            np.zeros((4, LANES), F32), np.zeros((1, LANES), F32), np.zeros((1, LANES), np.int32), np.int64(1)]
    for i, bad in ((1, np.zeros(1, np.int64)), (2, np.zeros((1, 3), np.float64)),
                   (3, np.zeros((LANES, 2), np.int32).T)):
        a = list(args)
        a[i] = bad
        with pytest.raises(TypingError):
            _step(*a)


@pytest.mark.parametrize("x", [1, 2, 12, 0x7FFF_FFFF_FFFF_FFFF, -1, -(1 << 63), 1 << 40, 0b1011_0000])
def test_popcount_and_lowest_bit(x):
    u = x & (2 ** 64 - 1)
    want = (bin(u).count("1"), (u & -u).bit_length() - 1)
    assert _bits(np.int64(x)) == want
    assert (popcount(np.int64(x)), lowest_bit(np.int64(x))) == want  # the plain-Python bodies


def test_lowest_bit_of_zero_is_64():
    assert _bits(np.int64(0)) == (0, 64) == (popcount(np.int64(0)), lowest_bit(np.int64(0)))


@njit
def _prefetch_all(a):
    s = a[0] * 0
    for i in range(a.shape[0]):
        prefetch(a, i)
        s += a[i]
    return s


def test_prefetch_changes_nothing_and_takes_any_stride():
    a = np.arange(40, dtype=np.int32)
    b = np.arange(90, dtype=F32)[::3]
    assert _prefetch_all(a) == a.sum() and _prefetch_all(b) == b.sum()
    assert (a == np.arange(40)).all()
    from numba.core.errors import TypingError
    with pytest.raises(TypingError):
        _prefetch_all(np.zeros((2, 2), F32))


def test_candidate_codes_hold_the_row_and_a_tight_lower_bound():
    """``kernels.evidence.candidate_codes``: the node row back exactly; the decoded distance at
    most the listed one and less than two steps below it; the range and NaN rejected."""
    from kernels.evidence import candidate_codes, candidate_unit
    from kernels.evidence_layout import CELLS_PER_RADIUS
    from kernels.lanes import CODE_MASK, MAX_CODED_ROWS

    rng = np.random.default_rng(5)
    for mmd in (0.01, 0.0137, 2.5):
        reach = mmd * (1 + np.sqrt(3) / 2 / CELLS_PER_RADIUS)  # the farthest a candidate can be
        dist = np.concatenate([rng.uniform(0, reach, 5000), [0.0, -1e-8, reach]]).astype(F32)
        node = rng.integers(0, MAX_CODED_ROWS, len(dist)).astype(np.int32)
        node[:2] = [0, MAX_CODED_ROWS - 1]
        codes = candidate_codes(node, dist, mmd)
        assert codes.dtype == np.int32 and (codes >= 0).all()
        np.testing.assert_array_equal(codes >> CODE_BITS, node)
        unit = candidate_unit(F32(mmd))
        assert unit == F32(F32(mmd) / F32(CELLS_PER_RADIUS) / F32(256))
        bound = np.array([candidate_bound(c, unit) for c in codes[:200]], F32)
        np.testing.assert_array_equal(bound, (codes[:200] & CODE_MASK).astype(F32) * unit)
        bound = (codes & CODE_MASK).astype(F32) * unit
        assert (bound <= np.maximum(dist, 0)).all()
        assert (bound > dist - 2 * unit).all()
        assert (codes & CODE_MASK).max() < CODE_MASK  # the farthest candidate fits
    with pytest.raises(ValueError, match="node rows"):
        candidate_codes(np.array([MAX_CODED_ROWS]), np.zeros(1, F32), 0.01)
    with pytest.raises(ValueError, match="NaN"):
        candidate_codes(np.array([1]), np.array([np.nan], F32), 0.01)
    with pytest.raises(ValueError, match="length"):
        candidate_codes(np.array([1, 2]), np.zeros(1, F32), 0.01)
    assert candidate_codes(np.zeros(0, np.int32), np.zeros(0, F32), 0.01).shape == (0,)
