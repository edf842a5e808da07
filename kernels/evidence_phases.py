"""The evidence step (tbp.monty's evidence learning module, section 4.12), phase by phase.

``docs/evidence-matching.md`` sections 3 to 5; section numbers below refer to it. Each
phase is a small compiled function over the named tuples of ``kernels.evidence_layout``
(``ObjectModels`` ``model``, ``Params`` ``prm``, ``State`` ``st``, ``Hypotheses``
``hyp``, ``Observations`` ``obs`` with the step's row ``t``):

1. :func:`begin_step`            burst bookkeeping, compaction of dead rows, capacity
2. :func:`step_parameters`       the displacement and the lane passes' parameters
3. :func:`node_feature_evidence` feature evidence of every node (parallel over nodes)
4. :func:`update_existing`      per block of rows (parallel over blocks):
   :func:`path_integration` (deletion test and path integration), :func:`search` (K
   nearest nodes), :func:`pose_feature_evidence` (evidence change) and
   :func:`accumulate` (evidence, slope tracker, per-block maxima)
5. :func:`sample_new`           new informed hypotheses (parallel over objects;
   :func:`new_rows` per object)
6. :func:`end_step`              counters, per-object maxima, counts and the MLH
7. :func:`terminal`              possible objects and terminal conditions

:func:`one_step` strings them together; ``kernels.evidence.evidence_episode`` runs it.

Parallel kernels (numba/numba#8578): the loops with ``prange`` live in the
``inline="always"`` bodies (``node_feature_evidence``, ``update_existing``,
``sample_new`` and ``one_step`` that calls them), inlined into the one parallel entry
point; every function they call is serial. A cached kernel must not call the entry
point. The serial phases compile with ``FASTMATH`` like the entry point they came out
of, so the step's arithmetic is the same instruction for instruction.
"""

from collections import namedtuple

import numpy as np
from numba import literal_unroll, njit, prange

from ._flags import FASTMATH
from .evidence_layout import (
    CELLS_PER_RADIUS, CODE_STEPS_PER_CELL, EP_INV_KAPPA, EP_MMD, EP_POSE_DEFINED, EP_W_CURV, EP_W_NORMAL, FP_BURST_SLOPE,
    FP_DELETION_SLOPE, FP_INCREMENT, FP_MMD, FP_OBJECT_THRESHOLD, FP_PAST, FP_PATH_SIMILARITY, FP_POSE_SIMILARITY,
    FP_PRESENT, FP_SAMPLING, FP_W_CURV, FP_W_NORMAL, FP_X_PERCENT, FS_MLH_EV, FS_SLOPE_MAX, FS_X_LAST,
    IP_BURST_DURATION, IP_K, IP_MAX_STEPS, IP_MIN_AGE, IP_MIN_STEPS, IP_SYMMETRY, IP_UMBILICAL, IP_UPDATER,
    IS_BURST_LEFT, IS_DETECTED, IS_MATCHING_STEPS, IS_MLH, IS_N_DEAD, IS_N_HYP, IS_N_NEW, IS_N_POSSIBLE, IS_NEED,
    IS_OUTCOME, IS_STEP, IS_SYMMETRIC, IS_SYMMETRY, MATCH, N_EV_PAR, N_PATH_PAR, NEED_CAPACITY, NO_MATCH,
    PP_DELETING, PP_DIR1, PP_DISP, PP_MIN_AGE, PP_NORMAL, PP_SLOPE_MIN, RUNNING, TIME_OUT, UPDATER_BURST,
    UPDATER_CLASSIC,
)
from .lane_cells import cell_span as _cell_span, cell_spans
from .lane_evidence import evidence_max
from .lane_paths import integrate_rows
from .lanes import K_REGISTERS, LANES, drive_lock_steps, search_lanes
from .select import kth_smallest_f32

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)
_NEG_INF = np.float32(-np.inf)
_NAN = np.float32(np.nan)
_CHUNK = 512  # hypotheses per parallel work item (scratch is allocated per item)

#: One block of rows' queries (scratch of the update loop, ``P`` columns padded to whole
#: vectors of lanes): ``rows`` int64 (P,) the surviving rows, ``qobj`` int32 (P,) their
#: objects, ``nbr`` int32 (K, P) and ``n_nbr`` int64 (P,) their nearest nodes, ``hq``
#: float32 (9, P) their location, sensed normal and curvature direction in the model frame,
#: ``delta`` float32 (P,) their evidence change.
Queries = namedtuple("Queries", "rows qobj nbr n_nbr hq delta")

#: Per block of rows (and object): ``max`` float32 (B, O) best evidence, ``arg`` int64
#: (B, O) its first row, ``cnt`` int64 (B, O) live hypotheses, ``slope`` float32 (B,) the
#: largest slope, ``dead`` int64 (B,) rows deleted.
Blocks = namedtuple("Blocks", "max arg cnt slope dead")


# --------------------------------------------------------------------------- small helpers


@njit(cache=True, fastmath=False)
def candidate_unit(mmd):
    """The distance step of the candidate codes (float32): ``mmd / CELLS_PER_RADIUS /
    CODE_STEPS_PER_CELL`` for match radius ``mmd`` (float32), the same value wherever it is
    computed (``candidate_codes`` when it builds the codes, ``search`` when it reads them)."""
    return mmd / np.float32(CELLS_PER_RADIUS) / np.float32(CODE_STEPS_PER_CELL)


@njit(cache=True, fastmath=FASTMATH)
def candidate_frames(sensed_pose, pose_defined, n_umbilical):
    """Candidate sensed frames of section 3.1.

    Parameters
    ----------
    sensed_pose : float32 (9,) or (3, 3)
        Rows normal, curvature direction 1, direction 2 (body frame).
    pose_defined : bool
    n_umbilical : int
        Frames when the curvature directions are undefined (``umbilical_num_poses``).

    Returns
    -------
    float32 (r, 9): ``r = 2`` when defined (the frame, and the frame turned 180
    degrees about the normal), else ``n_umbilical`` frames spun about the normal.
    """
    s = sensed_pose.reshape(9)
    if pose_defined:
        out = np.empty((2, 9), np.float32)
        for c in range(9):
            out[0, c] = s[c]
            out[1, c] = s[c] if c < 3 else -s[c]
        return out
    out = np.empty((n_umbilical, 9), np.float32)
    for j in range(n_umbilical):
        a = 2.0 * np.pi * j / n_umbilical
        ca = np.float32(np.cos(a))
        sa = np.float32(np.sin(a))
        ax = ca * s[3] + sa * s[6]
        ay = ca * s[4] + sa * s[7]
        az = ca * s[5] + sa * s[8]
        out[j, 0] = s[0]
        out[j, 1] = s[1]
        out[j, 2] = s[2]
        out[j, 3] = ax
        out[j, 4] = ay
        out[j, 5] = az
        out[j, 6] = s[1] * az - s[2] * ay
        out[j, 7] = s[2] * ax - s[0] * az
        out[j, 8] = s[0] * ay - s[1] * ax
    return out


@njit(cache=True)
def _informed_rotation(node_pose, n, frame, out, row):
    """``out[row] = P_n^T S``: the rotation taking each sensed row onto node n's row."""
    for i in range(3):
        for k in range(3):
            out[row, 3 * i + k] = (node_pose[n, i] * frame[k] + node_pose[n, 3 + i] * frame[3 + k]
                                   + node_pose[n, 6 + i] * frame[6 + k])


@njit(cache=True, fastmath=FASTMATH)
def feature_evidence_into(node_feat, lo, hi, obs, tol, weight, circular, increment, phi):
    """Feature evidence of nodes ``lo .. hi`` (section 4.7) into ``phi[lo:hi]``.

    ``phi_j = increment * sum_k w_k max(tol_k - delta_k, 0) / tol_k / sum_k w_k`` with
    ``delta_k = |f_jk - obs_k|`` (circular columns, range 1: the shorter way round).
    No feature columns, or all weights zero: 0.

    Parameters
    ----------
    node_feat : float32 (N, F); obs, tol, weight : float32 (F,)
    circular : float32 (F,), nonzero for columns that wrap around (range 1)
    phi : float32 (N,), written.
    """
    n_feat = node_feat.shape[1]
    wsum = _F0
    for k in range(n_feat):
        wsum += weight[k]
    if n_feat == 0 or wsum <= _F0:
        for j in range(lo, hi):
            phi[j] = _F0
        return
    # one multiplier per column: no division in the node loop
    scale = np.empty(n_feat, np.float32)
    for k in range(n_feat):
        scale[k] = increment * weight[k] / (tol[k] * wsum)
    # column by column over slices, so that each loop over the nodes is branch-free and
    # vectorises (a loop over range(lo, hi) of the full arrays did not); the sum still adds
    # the columns in order from column 0
    out = phi[lo:hi]
    for j in range(out.shape[0]):
        out[j] = _F0
    for k in range(n_feat):
        col = node_feat[lo:hi, k]
        o = obs[k]
        t = tol[k]
        sc = scale[k]
        if circular[k] != 0:
            for j in range(out.shape[0]):
                d = abs(col[j] - o)
                out[j] += max(t - min(d, _F1 - d), _F0) * sc
        else:
            for j in range(out.shape[0]):
                out[j] += max(t - abs(col[j] - o), _F0) * sc


# --------------------------------------------------------------------------- nearest nodes


@njit(cache=True, fastmath=FASTMATH)
def k_nearest(model, mmd, o, qx, qy, qz, k, best_d2, best_j):
    """The ``k`` nearest nodes of object ``o`` closer than ``mmd`` to ``q``.

    Scans the candidate list of the query's cell (``build_node_grid``) nearest to
    the cell centre first, and stops at the first candidate that cannot beat the
    current k-th distance. Writes ``best_d2[:m]`` (float32 squared distances) and
    ``best_j[:m]`` (node rows), in no particular order; returns ``m <= k``. A node at
    the same distance as the current k-th is not taken; when a nearer one arrives and
    several kept nodes tie for the k-th place, the first of them in the best list goes
    (not necessarily the one met last, as in ``k_nearest_lanes``).

    ``model`` an ``ObjectModels``; ``mmd`` float32 the match radius; ``qx, qy, qz``
    float32; ``best_d2`` float32 (>= k,), ``best_j`` int (>= k,).
    """
    m, _, _ = k_nearest_span(model, mmd, o, qx, qy, qz, k, best_d2, best_j)
    return m


@njit(cache=True, fastmath=FASTMATH)
def k_nearest_span(model, mmd, o, qx, qy, qz, k, best_d2, best_j):
    """``k_nearest``, also returning the candidate rows it examined: ``(m, first, stop)``.

    ``model.cand_node[first:stop]`` are the candidates whose distance was computed (for
    ``profiling/knn_costs.py``).

    The best list is kept unsorted with its largest entry tracked: a better node
    replaces the largest, a few compares instead of an insertion sort's loop. (Numba
    compiles these compares to branches; the branch-free forms measured no faster,
    see ``profiling/README.md``.)
    """
    cell = mmd / np.float32(CELLS_PER_RADIUS)
    inv_cell = np.float32(1.0) / cell
    r2 = mmd * mmd
    cand_dist = model.cand_dist
    cand_node = model.cand_node
    node_pos = model.node_pos
    c0, c1, off = _cell_span(model.grid_origin, model.grid_index, model.cand_start, o, inv_cell, cell, qx, qy, qz)
    if c0 == c1:
        return 0, c0, c0
    m = 0
    worst = r2
    top = 0  # slot of the largest of the best k (when full)
    stop = c1
    for i in range(c0, c1):
        # a candidate at centre distance c is at least c - off from q
        gap = cand_dist[i] - off
        if gap > 0 and gap * gap >= worst:
            stop = i
            break
        j = cand_node[i]
        dx = node_pos[j, 0] - qx
        dy = node_pos[j, 1] - qy
        dz = node_pos[j, 2] - qz
        d2 = dx * dx + dy * dy + dz * dz
        if d2 < worst:
            if m < k:
                best_d2[m] = d2
                best_j[m] = j
                m += 1
                if m < k:
                    continue
            else:
                best_d2[top] = d2
                best_j[top] = j
            top = 0
            worst = best_d2[0]
            for p in range(1, k):
                v = best_d2[p]
                if v > worst:
                    worst = v
                    top = p
    return m, c0, stop


# A lane's search is harvested and the lane refilled once this many lanes have finished
# (or all busy ones): fewer means more bookkeeping per step, more means idle lanes.
_REFILL_AT = LANES // 4


@njit(cache=True, fastmath=FASTMATH)
def search(model, mmd, k, q, n_q):
    """Phase 4b: the ``k`` nearest nodes closer than ``mmd`` (float32) of the queries ``i <
    n_q`` of ``q`` (``Queries``), ``LANES`` at a time in lock-step: ``k_nearest`` for many
    queries.

    Query ``i`` asks for the nodes of object ``q.qobj[i]`` nearest to ``q.hq[:3, i]``.
    Writes ``q.n_nbr[i]`` (at most ``k``) and ``q.nbr[:q.n_nbr[i], i]`` (node rows, nearest
    first; of equal distances the one earlier in the cell's candidate list first), the
    layout ``lane_evidence.evidence_max`` reads.
    """
    qobj, qpos, out_j, out_m = q.qobj, q.hq, q.nbr, q.n_nbr
    n = n_q
    cell = mmd / np.float32(CELLS_PER_RADIUS)
    inv_cell = np.float32(1.0) / cell
    r2 = mmd * mmd
    # 1. every query's candidate list first, LANES queries at a time (kernels.lane_cells);
    # queries with an empty list get no lane.
    # (Prefetching each list's first line here made the search 4-8% slower, 2026-12-03.)
    span = np.empty((2, n), np.int32)
    span_off = np.empty(n, np.float32)
    search_at = np.empty(n, np.int64)
    n_search = cell_spans(model.grid_origin, model.grid_index, model.cand_start, qobj, qpos, n, inv_cell, cell, span,
                          span_off, search_at)
    for i in range(n):
        out_m[i] = 0
    if k < 1 or n_search == 0:  # (lock_step reads row k - 1)
        return
    unit = np.full(1, candidate_unit(mmd), np.float32)
    if k <= K_REGISTERS:
        # 2. the searches in one vector loop: lanes harvested and refilled with vector ops
        search_lanes(unit, model.cand_code, model.node_pos, span, span_off, qpos, search_at, n_search, r2,
                     k, out_j, out_m, _REFILL_AT)
    else:
        # 2. (larger k) lock_steps, the ended lanes refilled one by one
        drive_lock_steps(unit, model.cand_code, model.node_pos, span, span_off, qpos, search_at, n_search,
                         r2, k, out_j, out_m, _REFILL_AT)


@njit(cache=True, fastmath=FASTMATH)
def k_nearest_lanes(model, mmd, k, qobj, qpos, n, out_j, out_m):
    """:func:`search` on plain arrays: the queries ``i < n`` of objects ``qobj[i]`` (int32,
    C-contiguous) at ``qpos[:3, i]`` (float32 (>= 3, >= n), C-contiguous); writes ``out_m``
    (int64 (>= n,)) and ``out_j`` (int32 (>= k, >= n)) as ``Queries.n_nbr`` and ``nbr``."""
    search(model, mmd, k, Queries(np.empty(0, np.int64), qobj, out_j, out_m, qpos, np.empty(0, np.float32)), n)


# --------------------------------------------------------------------------- sampling helpers


@njit(cache=True)
def _samples_per_object(obj_start, pose_defined, n_umbilical, updater, multiplier):
    """Nodes to sample per object (section 3.6), and hypotheses per node.

    Classic updater: every node. Burst: ``count = round(N * min(m, h))`` rounded
    down to a multiple of ``h``, ``count / h`` nodes.
    """
    n_obj = obj_start.shape[0] - 1
    h = 2 if pose_defined else n_umbilical
    k_nodes = np.empty(n_obj, np.int64)
    for o in range(n_obj):
        n = obj_start[o + 1] - obj_start[o]
        if updater == UPDATER_CLASSIC:
            k_nodes[o] = n
        else:
            count = np.int64(np.rint(np.float64(n) * min(np.float64(multiplier), np.float64(h))))
            count -= count % h
            k_nodes[o] = count // h
    return k_nodes, h


@njit(cache=True, fastmath=FASTMATH)
def _top_nodes(phi, lo, hi, k, salt, out):
    """Rows of the ``k`` largest ``phi[lo:hi]`` into ``out[:k]``.

    Rows above the k-th value come in row order. Rows tied at the k-th value are
    taken along a stride through the range that starts at an offset drawn from
    ``salt`` (the step number): nodes are sorted by grid cell, so "the lowest
    rows" would pick one corner of a flat face every time, and the right pose's
    nodes might never be sampled. tbp.monty's unstable argsort leaves ties
    implementation-defined too, but does not favour a region.
    """
    n = hi - lo
    if k >= n:
        for i in range(n):
            out[i] = lo + i
        return
    if k <= 0:
        return
    thr = kth_smallest_f32(phi[lo:hi], n - k)
    # fewer than k values lie above the k-th largest, so w < k at every write (branch-free:
    # with scattered feature evidence the test is a coin toss for the branch predictor)
    w = 0
    for j in range(lo, hi):
        out[w] = j
        w += phi[j] > thr
    # a stride coprime to n visits every row once
    stride = 7919 % n if n > 1 else 1
    while stride == 0 or _gcd(stride, n) != 1:
        stride += 1
    start = (salt * 104729 + 31) % n
    i = start
    for _ in range(n):
        if w >= k:
            break
        if phi[lo + i] == thr:
            out[w] = lo + i
            w += 1
        i += stride
        if i >= n:
            i -= n


@njit(cache=True, fastmath=FASTMATH)
def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


# --------------------------------------------------------------------------- compaction


@njit(cache=True, fastmath=FASTMATH)
def _live_rows(n, hyp_obj, live):
    """The live rows (``hyp_obj >= 0``) among the first ``n``, for compaction.

    Writes them, in order, to ``live`` (int64 (>= n,)) from the first dead row's
    place on, and returns ``(first, n_live)``: rows before ``first`` (the first
    dead row) stay where they are, and live row ``i >= first`` moves from
    ``live[i]``.
    """
    first = 0
    while first < n and hyp_obj[first] >= 0:
        first += 1
    w = first
    for h in range(first, n):
        if hyp_obj[h] >= 0:
            live[w] = h
            w += 1
    return first, w


@njit(cache=True, fastmath=FASTMATH)
def _move_rows(a, live, first, n_live):
    """``a[i] = a[live[i]]`` for ``first <= i < n_live``, whole rows (``a`` C-contiguous, any
    rank), in order: ``live`` rises and ``live[i] >= i``, so no row is overwritten before
    it is read."""
    b = a.reshape((a.shape[0], -1))
    if b.shape[1] == 1:
        for i in range(first, n_live):
            b[i, 0] = b[live[i], 0]
    else:
        for i in range(first, n_live):
            src = live[i]
            for c in range(b.shape[1]):
                b[i, c] = b[src, c]


@njit(cache=True, fastmath=FASTMATH)
def _compact(n, hyp):
    """Move the live rows (``hyp.obj >= 0``) of the first ``n`` down over the dead ones,
    keeping their order, in every field of ``hyp`` (``Hypotheses``). Returns the number
    of live rows.

    Row by row, one loop per array: deletions are scattered, so the live rows come in
    runs of a few; a block copy per run cost 2.4 ms for 30,000 rows (55% dead), this
    0.58 ms (two threads, the arrays split between them, 0.49 ms: not worth a parallel
    region). 2026-12-03.
    """
    live = np.empty(n, np.int64)
    first, n_live = _live_rows(n, hyp.obj, live)
    for a in literal_unroll(hyp):
        _move_rows(a, live, first, n_live)
    return n_live


# --------------------------------------------------------------------------- terminal helpers


@njit(cache=True, fastmath=FASTMATH)
def mark_possible_objects(obj_max, obj_count, x_percent, possible):
    """Section 5.2: which objects are still possible; returns how many.

    ``obj_max`` is each object's best evidence, ``obj_count`` its hypotheses
    (objects without any are never possible). std is the population std.
    """
    n_obj = obj_max.shape[0]
    n_live = 0
    top = -np.inf
    s1 = 0.0
    for o in range(n_obj):
        possible[o] = 0
        if obj_count[o] > 0:
            n_live += 1
            v = np.float64(obj_max[o])
            s1 += v
            if v > top:
                top = v
    if n_live == 0:
        return 0
    mean = s1 / n_live
    s2 = 0.0
    for o in range(n_obj):
        if obj_count[o] > 0:
            dv = np.float64(obj_max[o]) - mean
            s2 += dv * dv
    std = np.sqrt(s2 / n_live)
    n_poss = 0
    if std > 0.1 or top < 0:
        t = top - top * x_percent / 100.0 if top > 0 else 0.0
        for o in range(n_obj):
            if obj_count[o] > 0 and np.float64(obj_max[o]) > t:
                possible[o] = 1
                n_poss += 1
    elif n_obj == 1:
        for o in range(n_obj):
            if obj_count[o] > 0 and obj_max[o] >= 0:
                possible[o] = 1
                n_poss += 1
    else:
        for o in range(n_obj):
            if obj_count[o] > 0:
                possible[o] = 1
                n_poss += 1
    return n_poss


@njit(cache=True, fastmath=FASTMATH)
def terminal_check(n, o_best, g_best, mlh, prm, st, hyp):
    """Sections 5.3-5.5 for the single possible object ``o_best``: match or not.

    ``n`` rows in use, ``g_best`` float32 its best evidence, ``mlh`` the MLH's row.
    Updates the symmetry counter (``st.istate``) and ``hyp.possible``; returns True on a
    match (pose unique, or symmetric for ``required_symmetry_evidence`` checks).
    """
    fparams = prm.fparams
    istate = st.istate
    hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_possible = hyp.obj, hyp.loc, hyp.rot, hyp.ev, hyp.possible
    x = np.float64(fparams[FP_X_PERCENT])
    g = np.float64(g_best)
    cut = g - g * x / 100.0
    has_set = g > fparams[FP_OBJECT_THRESHOLD]
    n_now = 0
    n_both = 0
    n_prev = 0
    sx = 0.0
    sy = 0.0
    sz = 0.0
    for h in range(n):
        prev = hyp_possible[h]
        n_prev += prev
        now = 0
        if has_set and hyp_obj[h] == o_best and np.float64(hyp_ev[h]) > cut:
            now = 1
            n_now += 1
            n_both += prev
            sx += hyp_loc[h, 0]
            sy += hyp_loc[h, 1]
            sz += hyp_loc[h, 2]
        hyp_possible[h] = now
    unique = False
    if n_now > 0:
        mx = sx / n_now
        my = sy / n_now
        mz = sz / n_now
        path2 = np.float64(fparams[FP_PATH_SIMILARITY]) ** 2
        cos_lim = np.cos(np.float64(fparams[FP_POSE_SIMILARITY]))
        unique = True
        for h in range(n):
            if hyp_possible[h]:
                ex = hyp_loc[h, 0] - mx
                ey = hyp_loc[h, 1] - my
                ez = hyp_loc[h, 2] - mz
                if ex * ex + ey * ey + ez * ez >= path2:
                    unique = False
                    break
                tr = 0.0
                for c in range(9):
                    tr += np.float64(hyp_rot[mlh, c]) * np.float64(hyp_rot[h, c])
                cosang = (tr - 1.0) / 2.0
                # angle <= threshold  <=>  cos(angle) >= cos(threshold); NaN counts as 0 rad
                if cosang < cos_lim:
                    unique = False
                    break
    # symmetry (section 5.4): a previous empty set leaves the counter alone and says
    # "not symmetric"
    symmetric = False
    if n_prev > 0:
        if n_now > 0 and n_both / n_now > 0.9:
            istate[IS_SYMMETRY] += 1
        else:
            istate[IS_SYMMETRY] = 0
        symmetric = istate[IS_SYMMETRY] >= prm.iparams[IP_SYMMETRY]
    if unique or symmetric:
        # tbp.monty records the possible poses whenever symmetry is detected, also when the
        # pose is unique at the same check, and then scores the nearest of them
        # (``get_unique_pose_if_available``, ``logging_utils``)
        istate[IS_SYMMETRIC] = 1 if symmetric else 0
        return True
    return False


# --------------------------------------------------------------------------- the phases


@njit(inline="always")
def record_best(row, obj_max, obj_count):
    """A trace row (float32 (O,)): each object's best evidence after a step, -inf for an
    object without hypotheses (both episode kernels record it after ``one_step``)."""
    for o in range(obj_max.shape[0]):
        row[o] = obj_max[o] if obj_count[o] > 0 else np.float32(-np.inf)


@njit(cache=True, fastmath=FASTMATH)
def begin_step(obj_start, prm, st, hyp, pose_defined):
    """Phase 1: burst trigger (before anything moves), compaction, capacity.

    Starts a burst when none runs and the slope maximum no longer rises (burst updater;
    the classic one samples on the first step only), and compacts the dead rows once
    they outnumber the live ones (stale hypotheses are deleted in the update loop).

    Returns ``(ok, deleting, n_old, n_new, k_nodes, h_per_node)``: ``ok`` False when
    ``n_old + n_new`` rows do not fit ``hyp`` (``st.istate[IS_NEED]`` says how many are
    needed; the state is as before apart from the compaction and a burst started, so
    the step can be repeated after growing), ``deleting`` whether stale rows are deleted
    this step, ``n_old`` the rows in use, ``n_new`` the rows to sample, ``k_nodes``
    int64 (O,) nodes to sample per object and ``h_per_node`` hypotheses per node.
    """
    istate = st.istate
    iparams = prm.iparams
    updater = iparams[IP_UPDATER]
    first = istate[IS_STEP] == 0
    burst = False
    deleting = False
    if updater == UPDATER_BURST:
        if istate[IS_BURST_LEFT] == 0 and (first or not (st.fstate[FS_SLOPE_MAX] > prm.fparams[FP_BURST_SLOPE])):
            istate[IS_BURST_LEFT] = iparams[IP_BURST_DURATION]
        burst = istate[IS_BURST_LEFT] > 0
        deleting = not first
    else:
        burst = first
    if 2 * istate[IS_N_DEAD] > istate[IS_N_HYP]:
        istate[IS_N_HYP] = _compact(istate[IS_N_HYP], hyp)
        istate[IS_N_DEAD] = 0
    n_old = istate[IS_N_HYP]

    k_nodes, h_per_node = _samples_per_object(obj_start, pose_defined, iparams[IP_UMBILICAL], updater,
                                              prm.fparams[FP_SAMPLING])
    n_new = 0
    if burst:
        for o in range(k_nodes.shape[0]):
            n_new += k_nodes[o] * h_per_node
    ok = n_old + n_new <= hyp.ev.shape[0]
    if not ok:
        istate[IS_NEED] = n_old + n_new
    return ok, deleting, n_old, n_new, k_nodes, h_per_node


@njit(cache=True, fastmath=FASTMATH)
def step_parameters(prm, st, obs, t, deleting):
    """Phase 2: the displacement since the last feature step (none on the first), and
    the parameters of the lane passes.

    Records step ``t``'s location in ``st.fstate``. Returns ``(path_par, ev_par)``:
    float32 (N_PATH_PAR,) (``PP_*``, read by ``lane_paths.integrate_rows``) and float32
    (N_EV_PAR,) (``EP_*``, read by ``lane_evidence.evidence_max``).
    """
    fparams = prm.fparams
    fstate = st.fstate
    location = obs.location[t]
    pose = obs.pose[t]
    first = st.istate[IS_STEP] == 0
    path_par = np.empty(N_PATH_PAR, np.float32)
    for a in range(3):
        path_par[PP_DISP + a] = _F0 if first else location[a] - fstate[FS_X_LAST + a]
    for a in range(3):
        fstate[FS_X_LAST + a] = location[a]
    for a in range(3):
        path_par[PP_NORMAL + a] = pose[a]  # the sensed normal
        path_par[PP_DIR1 + a] = pose[3 + a]  # the sensed curvature direction
    path_par[PP_DELETING] = _F1 if deleting else _F0
    path_par[PP_MIN_AGE] = np.float32(prm.iparams[IP_MIN_AGE])
    path_par[PP_SLOPE_MIN] = fparams[FP_DELETION_SLOPE]

    ev_par = np.empty(N_EV_PAR, np.float32)
    ev_par[EP_INV_KAPPA] = _F1 / (abs(obs.kappa[t]) + _FHALF)
    ev_par[EP_MMD] = fparams[FP_MMD]
    ev_par[EP_W_NORMAL] = fparams[FP_W_NORMAL]
    ev_par[EP_W_CURV] = fparams[FP_W_CURV]
    ev_par[EP_POSE_DEFINED] = _F1 if obs.pose_defined[t] else _F0
    return path_par, ev_par


@njit(inline="always")
def node_feature_evidence(model, prm, obs, t):
    """Phase 3: feature evidence of every node (section 4.7) for step ``t``, parallel over
    node chunks. Returns float32 (N,)."""
    node_feat = model.node_feat
    feat_spec = prm.feat_spec
    features = obs.features[t]
    increment = prm.fparams[FP_INCREMENT]
    n_nodes = model.node_pos.shape[0]
    phi = np.empty(n_nodes, np.float32)
    # in 8 equal pieces (at least 512 nodes each), so that 2 or 4 threads get equal shares
    fchunk = max(512, (n_nodes + 7) // 8)
    n_fchunks = (n_nodes + fchunk - 1) // fchunk
    for c in prange(n_fchunks):
        lo = c * fchunk
        hi = min(lo + fchunk, n_nodes)
        feature_evidence_into(node_feat, lo, hi, features, feat_spec[0], feat_spec[1], feat_spec[2], increment, phi)
    return phi


@njit(cache=True, fastmath=FASTMATH)
def new_queries(n_rows, k):
    """Scratch ``Queries`` for a block of ``n_rows`` rows and ``k`` neighbours."""
    n_pad = (n_rows + LANES - 1) // LANES * LANES
    return Queries(np.empty(n_rows, np.int64), np.empty(n_pad, np.int32), np.empty((k, n_pad), np.int32),
                   np.zeros(n_pad, np.int64), np.zeros((9, n_pad), np.float32), np.empty(n_pad, np.float32))


@njit(cache=True, fastmath=FASTMATH)
def new_blocks(n_chunks, n_obj):
    """Per-block outputs of phase 4 for ``n_chunks`` blocks and ``n_obj`` objects, as a
    plain tuple: maxima float32 (n_chunks, n_obj) -inf, their rows int64 -1, counts int64 0,
    slope maxima float32 (n_chunks,) -inf, dead rows int64 (n_chunks,) 0."""
    b_max = np.full((n_chunks, n_obj), _NEG_INF, np.float32)
    b_arg = np.full((n_chunks, n_obj), -1, np.int64)
    b_cnt = np.zeros((n_chunks, n_obj), np.int64)
    b_slope = np.full(n_chunks, _NEG_INF, np.float32)
    b_dead = np.zeros(n_chunks, np.int64)
    return b_max, b_arg, b_cnt, b_slope, b_dead


@njit(cache=True, fastmath=FASTMATH)
def path_integration(hyp, lo, hi, path_par, q):
    """Phase 4a: deletion test and path integration of rows ``lo .. hi``, ``LANES`` rows
    at a time (``kernels.lane_paths``); the survivors become the queries ``q``. Returns
    ``(n_q, dead)``."""
    return integrate_rows(hyp.obj, hyp.loc, hyp.rot, hyp.slope, hyp.age, hyp.possible, lo, hi, path_par, q.rows,
                          q.qobj, q.hq)


@njit(cache=True, fastmath=FASTMATH)
def pose_feature_evidence(model, phi, q, n_q, ev_par):
    """Phase 4c: evidence change of the queries ``q[:n_q]`` (sections 4.5-4.8: the best of
    pose plus feature evidence ``phi`` over the neighbours in radius, -1 without one),
    ``LANES`` queries at a time (``kernels.lane_evidence``), into ``q.delta``."""
    for i0 in range(0, n_q, LANES):
        evidence_max(model.node_pos, model.node_pose, model.node_pfd, phi, q.nbr, q.n_nbr, q.hq, i0, ev_par, q.delta)


@njit(cache=True, fastmath=FASTMATH)
def accumulate(prm, hyp, q, n_q, step, blocks, b):
    """Phase 4d: accumulation (section 4.9) and the slope tracker (section 4.10) of the
    queries ``q[:n_q]`` at step ``step``; block ``b``'s per-object maxima, first rows and
    counts into ``blocks``. Returns the block's largest slope (-inf: none)."""
    past = prm.fparams[FP_PAST]
    present = prm.fparams[FP_PRESENT]
    hyp_obj, hyp_ev, hyp_buf, hyp_age, hyp_slope = hyp.obj, hyp.ev, hyp.buf, hyp.age, hyp.slope
    rows, delta = q.rows, q.delta
    window = hyp_buf.shape[1]
    slot = step % window
    # ring slot of the oldest of the last mm evidences (an integer modulo per hypothesis costs ~10 ns)
    oldest = np.empty(window + 1, np.int64)
    for mm in range(window + 1):
        oldest[mm] = (step - mm + 1) % window
    smax = _NEG_INF
    for i in range(n_q):
        h = rows[i]
        o = hyp_obj[h]
        e = past * hyp_ev[h] + present * delta[i]
        hyp_ev[h] = e
        # slope tracker: ring of the last W evidences
        hyp_buf[h, slot] = e
        age = hyp_age[h] + 1
        hyp_age[h] = age
        mm = min(age, window)
        if mm >= 2:
            s = (e - hyp_buf[h, oldest[mm]]) / np.float32(mm - 1)
            hyp_slope[h] = s
            if s > smax:
                smax = s
        else:
            hyp_slope[h] = _NAN
        blocks.cnt[b, o] += 1
        if e > blocks.max[b, o]:
            blocks.max[b, o] = e
            blocks.arg[b, o] = h
    return smax


@njit(inline="always")
def update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj):
    """Phase 4: evidence of the existing rows ``0 .. n_old`` at step ``step``: displace, K
    nearest, delta, accumulate, in blocks of at most ``_CHUNK`` rows, parallel over
    blocks. ``phi`` float32 (N,) the nodes' feature evidence; ``path_par`` and ``ev_par``
    from :func:`step_parameters`. Returns the ``Blocks``."""
    k = prm.iparams[IP_K]
    mmd = prm.fparams[FP_MMD]
    # an even number of equal blocks of at most _CHUNK rows: the two halves of the work
    # items (see below) then hold the same number of rows
    n_chunks = 2 * ((n_old + 2 * _CHUNK - 1) // (2 * _CHUNK))
    csize = (n_old + n_chunks - 1) // n_chunks if n_chunks > 0 else 0
    # Plain arrays across the parallel loop's boundary, the named tuple built on each side: with
    # a named tuple of these freshly allocated arrays used inside the prange body, numba 0.68's
    # parfor lost the loop's writes to them (the slope maximum stayed -inf). Allocated by a
    # serial function: np.full / np.zeros written here would each become a parallel loop
    # of its own, compiled on a first run for nothing.
    b_max, b_arg, b_cnt, b_slope, b_dead = new_blocks(n_chunks, n_obj)
    # Hypotheses differ a lot in cost (off the surface: no search at all; the newest,
    # at nodes: a full one) and sit in batches, and prange hands each thread one
    # contiguous range of work items: so work item c takes block 2c or 2c + 1 (the
    # first half of the items the even blocks, the second half the odd ones), which
    # spreads every batch over both halves while each block stays contiguous in
    # memory. (numba.set_parallel_chunksize would balance too, but a kernel that
    # calls it cannot be cached; striding single rows costs the cache lines.)
    half = (n_chunks + 1) // 2
    for c in prange(n_chunks):
        b = 2 * c if c < half else 2 * (c - half) + 1
        lo = b * csize
        hi = min(lo + csize, n_old)
        q = new_queries(hi - lo, k)
        # 4a. deletion and path integration
        n_q, dead = path_integration(hyp, lo, hi, path_par, q)
        # 4b. their K nearest nodes
        search(model, mmd, k, q, n_q)
        # 4c. evidence change
        pose_feature_evidence(model, phi, q, n_q, ev_par)
        # 4d. accumulation, slope
        smax = accumulate(prm, hyp, q, n_q, step, Blocks(b_max, b_arg, b_cnt, b_slope, b_dead), b)
        b_slope[c] = smax
        b_dead[c] = dead
    return Blocks(b_max, b_arg, b_cnt, b_slope, b_dead)


@njit(cache=True, fastmath=FASTMATH)
def new_rows(model, hyp, phi, frames, o, kn, row0, step):
    """Phase 5, one object: hypotheses at the ``kn`` nodes of object ``o`` with the largest
    feature evidence ``phi`` (float32 (N,)), one per candidate frame (``frames`` float32
    (r, 9)), rotation-major from row ``row0`` (section 3.2 / 3.6), at step ``step``."""
    node_pos = model.node_pos
    obj_start = model.obj_start
    slot = step % hyp.buf.shape[1]
    chosen = np.empty(kn, np.int64)
    _top_nodes(phi, obj_start[o], obj_start[o + 1], kn, step + o, chosen)
    for r in range(frames.shape[0]):
        for j in range(kn):
            h = row0 + r * kn + j
            nd = chosen[j]
            hyp.obj[h] = o
            hyp.loc[h, 0] = node_pos[nd, 0]
            hyp.loc[h, 1] = node_pos[nd, 1]
            hyp.loc[h, 2] = node_pos[nd, 2]
            _informed_rotation(model.node_pose, nd, frames[r], hyp.rot, h)
            e = phi[nd]
            hyp.ev[h] = e
            hyp.buf[h, slot] = e
            hyp.age[h] = 1
            hyp.slope[h] = _NAN
            hyp.possible[h] = 0


@njit(inline="always")
def sample_new(model, prm, hyp, phi, obs, t, n_old, k_nodes, h_per_node, step):
    """Phase 5: new informed hypotheses (section 3.2 / 3.6) for step ``t`` (the episode's
    step ``step``), appended after the ``n_old`` rows in use, object by object (parallel
    over objects): ``k_nodes[o]`` nodes, ``h_per_node`` frames each."""
    n_obj = k_nodes.shape[0]
    frames = candidate_frames(obs.pose[t], obs.pose_defined[t], prm.iparams[IP_UMBILICAL])
    offsets = np.empty(n_obj + 1, np.int64)
    offsets[0] = n_old
    for o in range(n_obj):
        offsets[o + 1] = offsets[o] + k_nodes[o] * h_per_node
    for o in prange(n_obj):
        kn = k_nodes[o]
        if kn > 0:
            # o stays the parallel loop's own (unsigned) index: passed as np.int64(o) (one
            # signature of new_rows less) the detected rotations of some shapes_10 episodes changed
            # in their last digits (not pinned down yet), breaking bit-identity with earlier versions
            new_rows(model, hyp, phi, frames, o, kn, offsets[o], step)


@njit(cache=True, fastmath=FASTMATH)
def end_step(st, hyp, blocks, n_old, n_new, k_nodes, h_per_node):
    """Phase 6: the step's counters, per-object maxima and counts (``st.obj_max``,
    ``st.obj_count``), the slope maximum and the MLH (ties: first object, then first
    row). Returns ``(o_best, mlh)``: the best object and the MLH's row (-1: none)."""
    istate, fstate, obj_max, obj_count = st.istate, st.fstate, st.obj_max, st.obj_count
    n_obj = obj_max.shape[0]
    n = n_old + n_new
    istate[IS_N_HYP] = n
    istate[IS_N_NEW] = n_new
    if istate[IS_BURST_LEFT] > 0:
        istate[IS_BURST_LEFT] -= 1
    istate[IS_STEP] += 1
    istate[IS_MATCHING_STEPS] += 1

    smax = _NEG_INF
    for o in range(n_obj):
        obj_max[o] = _NEG_INF
        obj_count[o] = 0
    for c in range(blocks.slope.shape[0]):
        if blocks.slope[c] > smax:
            smax = blocks.slope[c]
        istate[IS_N_DEAD] += blocks.dead[c]
        for o in range(n_obj):
            obj_count[o] += blocks.cnt[c, o]
            if blocks.max[c, o] > obj_max[o]:
                obj_max[o] = blocks.max[c, o]
    fstate[FS_SLOPE_MAX] = smax
    if n_new > 0:
        for o in range(n_obj):
            obj_count[o] += k_nodes[o] * h_per_node
    for h in range(n_old, n):
        o = hyp.obj[h]
        if hyp.ev[h] > obj_max[o]:
            obj_max[o] = hyp.ev[h]
    mlh = -1
    o_best = -1
    for o in range(n_obj):
        if obj_count[o] > 0 and (o_best < 0 or obj_max[o] > obj_max[o_best]):
            o_best = o
    if o_best >= 0:
        # the first row holding the best evidence: in the first block (rows in order) that
        # holds it, else among the new rows
        target = obj_max[o_best]
        for b in range(blocks.max.shape[0]):
            if blocks.max[b, o_best] == target:
                mlh = blocks.arg[b, o_best]
                break
        if mlh < 0:
            for h in range(n_old, n):
                if hyp.obj[h] == o_best and hyp.ev[h] == target:
                    mlh = h
                    break
    istate[IS_MLH] = mlh
    fstate[FS_MLH_EV] = obj_max[o_best] if o_best >= 0 else _NEG_INF
    return o_best, mlh


@njit(cache=True, fastmath=FASTMATH)
def terminal(prm, st, hyp, o_best, mlh):
    """Phase 7: possible objects and terminal conditions (section 5) after a step whose
    best object is ``o_best`` and MLH row ``mlh``. Returns the outcome code (``RUNNING``,
    ``MATCH``, ``NO_MATCH``, ``TIME_OUT``), also left in ``st.istate[IS_OUTCOME]`` unless
    running."""
    istate, obj_max = st.istate, st.obj_max
    iparams = prm.iparams
    n = istate[IS_N_HYP]
    possible = np.zeros(obj_max.shape[0], np.uint8)
    n_poss = mark_possible_objects(obj_max, st.obj_count, np.float64(prm.fparams[FP_X_PERCENT]), possible)
    istate[IS_N_POSSIBLE] = n_poss
    if n_poss == 0:
        istate[IS_OUTCOME] = NO_MATCH
        return NO_MATCH
    if istate[IS_MATCHING_STEPS] > iparams[IP_MIN_STEPS]:
        if n_poss == 1:
            if terminal_check(n, o_best, obj_max[o_best], mlh, prm, st, hyp):
                istate[IS_DETECTED] = o_best
                istate[IS_OUTCOME] = MATCH
                return MATCH
        else:
            for h in range(n):
                hyp.possible[h] = 0
    if istate[IS_MATCHING_STEPS] >= iparams[IP_MAX_STEPS]:
        istate[IS_OUTCOME] = TIME_OUT
        return TIME_OUT
    return RUNNING


# --------------------------------------------------------------------------- the step


@njit(inline="always")
def one_step(model, prm, st, hyp, obs, t):
    """One feature step, observation row ``t`` of ``obs`` (section 4.12).

    Returns the outcome code after the step (``RUNNING``, ``MATCH``, ``NO_MATCH``,
    ``TIME_OUT``) or ``NEED_CAPACITY`` (``st.istate[IS_NEED]`` rows are needed; the
    state is as before the call apart from dead rows compacted away and a burst
    started, and the same step can be repeated after growing the hypothesis arrays).
    """
    n_obj = model.obj_start.shape[0] - 1
    step = st.istate[IS_STEP]
    # 1. burst trigger, compaction, capacity
    ok, deleting, n_old, n_new, k_nodes, h_per_node = begin_step(model.obj_start, prm, st, hyp, obs.pose_defined[t])
    if not ok:
        return NEED_CAPACITY
    # 2. displacement and the lane passes' parameters
    path_par, ev_par = step_parameters(prm, st, obs, t, deleting)
    # 3. feature evidence of every node
    phi = node_feature_evidence(model, prm, obs, t)
    # 4. evidence of the existing hypotheses
    blocks = update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj)
    # 5. new hypotheses
    if n_new > 0:
        sample_new(model, prm, hyp, phi, obs, t, n_old, k_nodes, h_per_node, step)
    # 6. counters, per-object maxima, MLH
    o_best, mlh = end_step(st, hyp, blocks, n_old, n_new, k_nodes, h_per_node)
    # 7. possible objects and terminal conditions
    return terminal(prm, st, hyp, o_best, mlh)
