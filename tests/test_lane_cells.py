"""``kernels.lane_cells``: the grid cell of many queries at once, against a NumPy reference,
compiled and as plain Python."""

import numpy as np
import pytest
from numba import njit

from kernels import evidence as ev
from kernels.lane_cells import cell_span, cell_spans
from kernels.lanes import LANES

F32 = np.float32
MMD = 0.01


@njit
def _compiled(origin, index, cstart, qobj, qpos, n, inv_cell, cell, span, span_off, search):
    return cell_spans(origin, index, cstart, qobj, qpos, n, inv_cell, cell, span, span_off, search)


@njit
def _one_by_one(origin, index, cstart, qobj, qpos, n, inv_cell, cell):
    out = np.zeros((3, n), np.float64)
    for i in range(n):
        c0, c1, off = cell_span(origin, index, cstart, qobj[i], inv_cell, cell, qpos[0, i], qpos[1, i], qpos[2, i])
        out[0, i], out[1, i], out[2, i] = c0, c1, off
    return out


def _reference(origin, index, cstart, qobj, qpos, n, inv_cell, cell):
    """The docstring's rule in NumPy float32, same operations in the same order:
    (c0, c1, off) per query and the queries with a non-empty list."""
    o = qobj[:n].astype(np.int64)
    q = qpos[:3, :n].T
    org = origin[o]
    dims = index[o]
    with np.errstate(invalid="ignore"):
        f = (q - org) * F32(inv_cell)
        inside = np.all((f >= 0) & (f < dims[:, :3].astype(F32)), axis=1)
    ci = np.where(inside[:, None], f, 0).astype(np.int64)
    cid = dims[:, 3] + ci[:, 0] + dims[:, 0] * (ci[:, 1] + dims[:, 1] * ci[:, 2])
    cid = np.where(inside, cid, 0)
    c0 = np.where(inside, cstart[cid], 0)
    c1 = np.where(inside, cstart[np.minimum(cid + 1, len(cstart) - 1)], 0)
    e = q - (org + (ci.astype(F32) + F32(0.5)) * F32(cell))
    with np.errstate(invalid="ignore", over="ignore"):  # (outside lanes: far points, NaN)
        off = np.where(inside, np.sqrt((e[:, 0] * e[:, 0] + e[:, 1] * e[:, 1]) + e[:, 2] * e[:, 2]), F32(0))
    assert off.dtype == F32
    return c0, c1, off.astype(F32), np.flatnonzero(c1 > c0)


@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(5)
    pos = (rng.random((1500, 3)) * 0.08).astype(F32)
    pos[1000:] *= F32(0.3)  # a small, dense third object
    pos[0] = 0  # a node at the origin: a lane past n that read point 0 of object 0 would find it
    obj_start = np.array([0, 600, 1000, 1500])
    order, origin, index, cstart, cnode, cdist = ev.build_node_grid(pos, obj_start, MMD, 5)
    cell = F32(MMD) / F32(ev.CELLS_PER_RADIUS)
    return origin, index, cstart, cell, F32(1) / cell


def _queries(rng, grid, n):
    """Random points over and around every grid, on cell edges, on the padded grid's far faces,
    NaN and far away; laid out as the step lays them out (padded columns hold junk)."""
    origin, index, cstart, cell, inv_cell = grid
    n_pad = (n + LANES - 1) // LANES * LANES
    qobj = np.full(n_pad, 99, np.int32)  # junk past n: must not be read
    qpos = np.full((9, n_pad), np.nan, F32)
    o = rng.integers(0, len(origin), n)
    span = index[o, :3] * cell
    p = origin[o] + (rng.random((n, 3)) * 1.2 - 0.1).astype(F32) * span
    edge = rng.random(n) < 0.2  # exactly on cell boundaries
    p[edge] = origin[o[edge]] + rng.integers(0, 6, (edge.sum(), 3)).astype(F32) * cell
    if n > 4:
        p[0] = origin[o[0]] + index[o[0], :3] * cell  # the far corner: just outside
        p[1, 1] = np.nan
        p[2] = 1e30
        p[3] = -1e30
    qobj[:n] = o
    qpos[:3, :n] = p.T
    return qobj, np.ascontiguousarray(qpos)


@pytest.mark.parametrize("n", [0, 1, LANES - 1, LANES, LANES + 1, 5 * LANES + 3, 1000])
def test_cell_spans_match_the_reference(grid, n):
    origin, index, cstart, cell, inv_cell = grid
    rng = np.random.default_rng(n)
    qobj, qpos = _queries(rng, grid, n)
    c0, c1, off, found = _reference(origin, index, cstart, qobj, qpos, n, inv_cell, cell)
    if n >= 100:
        assert 0 < len(found) < n  # both kinds occur
    for run in (_compiled, cell_spans):  # the IR, and the plain-Python body
        width = n + 5
        span = np.full((2, width), -7, np.int32)
        span_off = np.full(width, -7, F32)
        search = np.full(width, -7, np.int64)
        ns = run(origin, index, cstart, qobj, qpos, n, inv_cell, cell, span, span_off, search)
        assert ns == len(found)
        assert np.array_equal(search[:ns], found) and np.all(search[ns:] == -7)
        assert np.array_equal(span[0, :n], c0) and np.array_equal(span[1, :n], c1)
        if run is _compiled:
            np.testing.assert_array_equal(span_off[:n], off)  # bit for bit
        else:
            # the Python body calls cell_span, compiled on its own with FASTMATH here: LLVM may
            # fuse a multiply and an add: the cell centre moves by an ulp of a coordinate (~4e-9
            # here), within the margin the candidate distances keep (1e-6 relative + 1e-8)
            np.testing.assert_allclose(span_off[:n], off, rtol=1e-6, atol=1e-8)
        assert np.all(span[:, n:] == -7) and np.all(span_off[n:] == -7)  # nothing past n
    # the one-query function, inlined into a kernel without FASTMATH, gives the same bit for bit
    one = _one_by_one(origin, index, cstart, qobj, qpos, n, inv_cell, cell)
    assert np.array_equal(one[0], c0) and np.array_equal(one[1], c1) and np.array_equal(one[2].astype(F32), off)


def test_outside_nan_and_empty_lists_are_not_searched(grid):
    origin, index, cstart, cell, inv_cell = grid
    qobj = np.zeros(LANES, np.int32)
    qpos = np.zeros((3, LANES), F32)
    qpos[:, 0] = np.nan
    qpos[:, 1] = origin[0] - F32(1e-6)  # just below the padded grid
    qobj[2] = 1
    qpos[:, 2] = origin[1] + F32(0.5) * cell  # a corner cell of object 1's padding: no node near
    qpos[:, 3] = origin[0] + (index[0, :3] * cell).astype(F32) / 2  # the middle of object 0
    span = np.full((2, LANES), -7, np.int32)
    span_off = np.full(LANES, -7, F32)
    search = np.full(LANES, -7, np.int64)
    ns = _compiled(origin, index, cstart, qobj, qpos, 4, inv_cell, cell, span, span_off, search)
    assert list(span[0, :3]) == [0, 0, span[0, 2]] and list(span[1, :2]) == [0, 0]
    assert span[0, 2] == span[1, 2]  # inside the grid, but the cell's list is empty
    assert list(span_off[:2]) == [0, 0] and span_off[2] == 0  # a cell centre
    assert ns == 1 and search[0] == 3 and span[1, 3] > span[0, 3]


def test_rejects_wrong_layouts(grid):
    from numba.core.errors import TypingError

    origin, index, cstart, cell, inv_cell = grid
    qobj = np.zeros(LANES, np.int32)
    qpos = np.zeros((3, LANES), F32)
    span = np.empty((2, LANES), np.int32)
    span_off = np.empty(LANES, F32)
    search = np.empty(LANES, np.int64)
    for bad in (dict(qobj=qobj.astype(np.int64)), dict(qpos=np.asfortranarray(qpos)),
                dict(span=span.astype(np.int64)), dict(qpos=qpos.astype(np.float64))):
        a = dict(qobj=qobj, qpos=qpos, span=span)
        a.update(bad)
        with pytest.raises(TypingError):
            _compiled(origin, index, cstart, a["qobj"], a["qpos"], LANES, inv_cell, cell, a["span"], span_off, search)
