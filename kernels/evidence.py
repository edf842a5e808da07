"""Evidence matching (tbp.monty's evidence learning module) as flat-array kernels.

The recognition half of the ``evidence`` model: every hypothesis "the sensor is at
location l on object o, and the object is rotated by R" carries an evidence value
that each sensed observation raises or lowers. The algorithm follows
``docs/evidence-matching.md`` (sections 3 to 5; section numbers below refer to it).

Layout
------
Models (all objects concatenated, object ``o`` owns nodes
``obj_start[o] .. obj_start[o + 1]``; within an object the nodes are sorted by
their cell of the object's node grid, see :func:`build_node_grid`):

- ``node_pos``  float32 (N, 3)  node locations, model frame
- ``node_pose`` float32 (N, 9)  rows normal, curvature direction 1, direction 2
- ``node_pfd``  float32 (N,)    1 where the node's curvature directions are defined
- ``node_feat`` float32 (N, F)  matching features (hue, log curvatures, ...)

Hypotheses live in one set of flat arrays of capacity ``cap`` (the first
``n_hyp = istate[IS_N_HYP]`` rows are in use), all objects mixed; each row's object is
``hyp_obj``. A deleted hypothesis (burst sampling) becomes a *dead* row, ``hyp_obj ==
-1``, skipped by every loop; ``istate[IS_N_DEAD]`` counts them, and the rows are
compacted (live rows moved down, order kept) once the dead outnumber the live, so a
deletion costs no data movement in the step it happens. Within one object the rows keep tbp.monty's order (survivors in
their order, then the new ones), so index-order tie-breaks and the "possible"
sets of the symmetry test behave as in tbp.monty.

- ``hyp_obj`` int32 (cap,), ``hyp_loc`` float32 (cap, 3), ``hyp_rot`` float32
  (cap, 9) (row-major R with v_model = R v_body), ``hyp_ev`` float32 (cap,),
  ``hyp_slope`` float32 (cap,) (NaN until two evidences are known),
  ``hyp_age`` int32 (cap,), ``hyp_possible`` uint8 (cap,), ``hyp_buf`` float32
  (cap, W): the last ``W`` evidences, a ring indexed by the step number.

Scalar settings and state travel in small arrays (one kernel signature for every
setting): ``fparams`` / ``iparams`` (indices ``FP_*`` / ``IP_*``), ``istate`` /
``fstate`` (``IS_*`` / ``FS_*``).

Nearest nodes: a uniform grid per object with cells half the match radius wide,
and per cell a precomputed list of the only nodes a query in it can need
(:func:`build_node_grid`). A node can only be "in radius" when its Euclidean
distance is below ``max_match_distance`` (the custom distance is never smaller),
so the K nearest nodes *among those closer than the radius* give exactly the
evidence the K-nearest-over-all-nodes search of tbp.monty gives (section 4.5's
note), up to ties in distance. The step searches its hypotheses ``lanes.LANES`` at a time
in lock-step (:func:`_k_nearest_lanes`, vector gathers instead of a branch per candidate);
:func:`_k_nearest` is the same search for one query. The deletion test and path
integration before it (``lane_paths.integrate_rows``), the cell lookup
(``lane_cells.cell_spans``) and the scoring of the found nodes
(``lane_evidence.evidence_max``) run ``LANES`` hypotheses at a time as well.

Parallel kernels (numba/numba#8578): the loops with ``prange`` live in
``inline="always"`` bodies inlined into the two parallel entry points
(:func:`evidence_step`, :func:`evidence_episode`); every function they call is
serial. A cached kernel must not call either entry point.
"""

import numpy as np
from numba import njit, prange

from ._flags import FASTMATH
from .lane_cells import cell_span as _cell_span, cell_spans
from .lane_evidence import N_PAR, evidence_max
from .lane_paths import N_PATH_PAR, integrate_rows
from .lanes import K_REGISTERS, LANES, drive_lock_steps, search_lanes
from .select import kth_smallest_f32

# fparams (float32)
FP_MMD = 0  # max_match_distance (m)
FP_W_NORMAL = 1  # feature_weights.pose_vectors[0]
FP_W_CURV = 2  # feature_weights.pose_vectors[1]
FP_PAST = 3  # past_weight
FP_PRESENT = 4  # present_weight
FP_INCREMENT = 5  # feature_evidence_increment
FP_SAMPLING = 6  # sampling_multiplier
FP_DELETION_SLOPE = 7  # deletion_trigger_slope
FP_BURST_SLOPE = 8  # burst_trigger_slope
FP_X_PERCENT = 9  # x_percent_threshold
FP_OBJECT_THRESHOLD = 10  # object_evidence_threshold
FP_PATH_SIMILARITY = 11  # path_similarity_threshold (m)
FP_POSE_SIMILARITY = 12  # pose_similarity_threshold (rad)
N_FPARAMS = 13

# iparams (int64)
IP_K = 0  # max_nneighbors
IP_UPDATER = 1  # UPDATER_CLASSIC or UPDATER_BURST
IP_UMBILICAL = 2  # umbilical_num_poses
IP_BURST_DURATION = 3  # sampling_burst_duration
IP_MIN_AGE = 4  # slope tracker min_age
IP_MIN_STEPS = 5  # min_eval_steps
IP_MAX_STEPS = 6  # max_eval_steps (matching steps)
IP_SYMMETRY = 7  # required_symmetry_evidence
N_IPARAMS = 8

UPDATER_CLASSIC = 0
UPDATER_BURST = 1

#: Evidences kept per hypothesis for the slope (tbp.monty's tracker window); the
#: kernels take the window from ``hyp_buf.shape[1]``.
SLOPE_WINDOW = 10

# istate (int64)
IS_N_HYP = 0  # live hypothesis rows
IS_BURST_LEFT = 1  # burst steps left
IS_STEP = 2  # feature steps processed (ring index of hyp_buf)
IS_MATCHING_STEPS = 3
IS_SYMMETRY = 4  # symmetry evidence counter
IS_MLH = 5  # row of the most likely hypothesis (-1: none)
IS_OUTCOME = 6  # RUNNING, MATCH, NO_MATCH, TIME_OUT
IS_DETECTED = 7  # detected object (match), -1 otherwise
IS_SYMMETRIC = 8  # 1 when the match was declared by symmetry
IS_N_POSSIBLE = 9  # possible objects after the last step
IS_NEED = 10  # capacity the last call needed (when it returned NEED_CAPACITY)
IS_N_NEW = 11  # hypotheses sampled by the last step
IS_N_DEAD = 12  # deleted rows among the first IS_N_HYP (hyp_obj -1), compacted away later
N_ISTATE = 13

# fstate (float32)
FS_X_LAST = 0  # 0, 1, 2: the last sensed location
FS_SLOPE_MAX = 3  # largest finite slope after the last step (-inf: none)
FS_MLH_EV = 4
N_FSTATE = 5

RUNNING = 0
MATCH = 1
NO_MATCH = 2
TIME_OUT = 3
NEED_CAPACITY = -1

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)
_NEG1 = np.float32(-1.0)
_NEG_INF = np.float32(-np.inf)
_NAN = np.float32(np.nan)
_CHUNK = 512  # hypotheses per parallel work item (scratch is allocated per item)


# --------------------------------------------------------------------------- small helpers


@njit(cache=True)
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


def feature_evidence(node_feat, obs, tol, weight, circular, increment=1.0):
    """Feature evidence of every node for one observation (section 4.7).

    Parameters
    ----------
    node_feat : float32 (N, F)
    obs, tol, weight : float32 (F,)
    circular : bool or uint8 (F,)
        Columns with range 1 that wrap around (hue).
    increment : float
        ``feature_evidence_increment``.

    Returns
    -------
    float32 (N,) in [0, increment].

    Raises
    ------
    ValueError
        Wrong shapes, NaN or infinity, a tolerance that is not > 0, a negative weight.
    """
    node_feat = _finite("node_feat", node_feat, 2)
    n_feat = node_feat.shape[1]
    obs = _finite("obs", obs, 1, n_feat)
    tol = _finite("tol", tol, 1, n_feat)
    weight = _finite("weight", weight, 1, n_feat)
    circular = np.asarray(circular, np.float32).reshape(-1)
    if circular.shape != (n_feat,):
        raise ValueError(f"circular must have shape ({n_feat},), got {circular.shape}")
    if (tol <= 0).any():
        raise ValueError("tol must be > 0 in every column")
    if (weight < 0).any():
        raise ValueError("weight must be >= 0 in every column")
    phi = np.empty(node_feat.shape[0], np.float32)
    feature_evidence_into(node_feat, 0, node_feat.shape[0], obs, tol, weight, circular, np.float32(increment), phi)
    return phi


def _finite(name, a, ndim, cols=None):
    """``a`` as a C-contiguous float32 array of rank ``ndim`` (and ``cols`` columns, or
    length for rank 1) with finite values, or a ValueError naming it."""
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if cols is not None and a.shape[-1] != cols:
        raise ValueError(f"{name} must have {cols} {'columns' if ndim == 2 else 'entries'}, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinity")
    return a


# --------------------------------------------------------------------------- node grid


def build_node_grid(node_pos, obj_start, max_match_distance, k):
    """Sort each object's nodes by grid cell and list, per cell, the nodes a query can need.

    Each object gets a uniform grid of cells ``max_match_distance / CELLS_PER_RADIUS``
    wide (the kernels derive the same float32 cell side from ``fparams[FP_MMD]``),
    padded by ``CELLS_PER_RADIUS`` cells on every side, so a query outside the grid
    has no node within the match radius. For each cell with centre ``c`` the
    *candidates* are the nodes within ``R = min(mmd + h, kth(c) + 2 h)`` of ``c``
    (``h`` half the cell diagonal, ``kth(c)`` the distance from ``c`` to its k-th
    nearest node), sorted by their distance to ``c``. For a query ``q`` in the cell,
    ``kth(q) <= kth(c) + |q - c|``, so every one of q's k nearest nodes closer than
    the radius is a candidate; and a candidate at distance ``d_c`` from the centre is
    at least ``d_c - |q - c|`` from ``q``, so the scan can stop there.

    Parameters
    ----------
    node_pos : float32 (N, 3)
    obj_start : int64 (O + 1,)
    max_match_distance : float
    k : int
        Nearest nodes a query needs (``max_nneighbors``).

    Raises ValueError on NaN or infinite positions, offsets that do not rise from 0 to
    N, a radius or k that is not positive, or 2**31 candidates or more.

    Returns
    -------
    order : int64 (N,)
        New node order: row ``i`` of the sorted arrays is old row ``order[i]``
        (a permutation within each object's range, by cell).
    grid_origin : float32 (O, 3)
        Low corner of each object's grid.
    grid_index : int64 (O, 4)
        Cells along x, y, z, and the object's first cell in ``cand_start``.
    cand_start : int64 (total cells + 1,)
        Candidates of cell ``c = ix + nx (iy + ny iz)`` of object ``o``:
        ``cand_node[cand_start[base + c] : cand_start[base + c + 1]]``.
    cand_node : int32 (total candidates,)
        Node rows (of the sorted arrays), nearest to the cell centre first.
    cand_dist : float32 (total candidates,)
        Their distances to the cell centre, rounded down a little (a lower bound).
    """
    from .kdtree import build_tree, query_knn_batch, query_radius_batch  # sibling kernel module

    node_pos = _finite("node_pos", node_pos, 2, 3)
    obj_start = np.asarray(obj_start, np.int64).reshape(-1)
    if (len(obj_start) < 1 or obj_start[0] != 0 or obj_start[-1] != len(node_pos)
            or (np.diff(obj_start) < 0).any()):
        raise ValueError(f"obj_start must rise from 0 to {len(node_pos)} (the node count)")
    if not (np.isfinite(max_match_distance) and max_match_distance > 0):
        raise ValueError(f"max_match_distance must be > 0, got {max_match_distance}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_obj = len(obj_start) - 1
    cell = np.float32(max_match_distance) / np.float32(CELLS_PER_RADIUS)
    half_diag = float(cell) * np.sqrt(3.0) / 2.0
    pad = CELLS_PER_RADIUS
    order = np.empty(len(node_pos), np.int64)
    origin = np.zeros((n_obj, 3), np.float32)
    index = np.zeros((n_obj, 4), np.int64)
    counts_all, nodes_all, dists_all = [], [], []
    base = 0
    for o in range(n_obj):
        lo, hi = int(obj_start[o]), int(obj_start[o + 1])
        p = node_pos[lo:hi]
        if hi > lo:
            origin[o] = p.min(axis=0) - cell * np.float32(pad)
            ijk = np.floor((p - origin[o]) / cell).astype(np.int64)
            dims = ijk.max(axis=0) + 1 + pad
            cid = ijk[:, 0] + dims[0] * (ijk[:, 1] + dims[1] * ijk[:, 2])
        else:
            dims = np.ones(3, np.int64)
            cid = np.zeros(0, np.int64)
        n_cells = int(np.prod(dims))
        index[o, :3] = dims
        index[o, 3] = base
        srt = np.argsort(cid, kind="stable")
        order[lo:hi] = lo + srt
        counts, nodes, dists = _cell_candidates(node_pos[lo + srt], lo, origin[o], dims, cell, half_diag,
                                                float(max_match_distance), int(k), build_tree, query_knn_batch,
                                                query_radius_batch)
        counts_all.append(counts)
        nodes_all.append(nodes)
        dists_all.append(dists)
        base += n_cells
    n_cand = int(sum(int(c.sum()) for c in counts_all))
    if n_cand >= 2 ** 31:  # the step's search lanes hold candidate rows as int32
        raise ValueError(f"the node grid would hold {n_cand} candidates; at most 2**31 - 1 are supported "
                         "(fewer nodes per object or a smaller max_match_distance)")
    cand_start = np.zeros(base + 1, np.int64)
    np.cumsum(np.concatenate(counts_all) if counts_all else np.zeros(0, np.int64), out=cand_start[1:])
    cand_node = np.concatenate(nodes_all).astype(np.int32) if nodes_all else np.zeros(0, np.int32)
    cand_dist = np.concatenate(dists_all).astype(np.float32) if dists_all else np.zeros(0, np.float32)
    return order, origin, index, cand_start, cand_node, cand_dist


def _cell_candidates(p, lo, origin, dims, cell, half_diag, mmd, k, build_tree, query_knn_batch, query_radius_batch):
    """Candidate lists of one object's cells (see ``build_node_grid``): counts, nodes, distances."""
    n_cells = int(np.prod(dims))
    if len(p) == 0:
        return np.zeros(n_cells, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    ix, iy, iz = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), np.arange(dims[2]), indexing="ij")
    # cell id = ix + nx (iy + ny iz): x fastest, i.e. Fortran order of the (nx, ny, nz) grid
    ijk = np.stack([ix.ravel(order="F"), iy.ravel(order="F"), iz.ravel(order="F")], 1)
    centres = (origin + (ijk.astype(np.float32) + np.float32(0.5)) * cell).astype(np.float32)
    tree = build_tree(np.ascontiguousarray(p))
    kk = min(k, len(p))
    _, kth = query_knn_batch(tree, centres, kk)
    kth = kth[:, kk - 1].astype(np.float64)
    if kk < k:  # fewer nodes than k: every node within reach is a candidate
        kth[:] = np.inf
    # margins for float32 rounding of the distances compared in the kernel
    reach = np.minimum(mmd + half_diag, kth + 2 * half_diag) * (1 + 1e-5) + 1e-7
    idx, off = query_radius_batch(tree, centres, np.float32((mmd + half_diag) * (1 + 1e-5) + 1e-7))
    cell_of = np.repeat(np.arange(n_cells), np.diff(off))
    d = np.linalg.norm(p[idx].astype(np.float64) - centres[cell_of], axis=1)
    keep = d <= reach[cell_of]
    idx, cell_of, d = idx[keep], cell_of[keep], d[keep]
    srt = np.lexsort((d, cell_of))
    counts = np.bincount(cell_of, minlength=n_cells).astype(np.int64)
    dist = (d[srt] * (1 - 1e-6) - 1e-8).astype(np.float32)
    return counts, lo + idx[srt], dist


# Cells are half the match radius wide.
CELLS_PER_RADIUS = 2


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _k_nearest(node_pos, grid_origin, grid_index, cand_start, cand_node, cand_dist, o, inv_cell, cell, r2,
               qx, qy, qz, k, best_d2, best_j):
    """The ``k`` nearest nodes of object ``o`` closer than ``sqrt(r2)`` to ``q``.

    Scans the candidate list of the query's cell (``build_node_grid``) nearest to
    the cell centre first, and stops at the first candidate that cannot beat the
    current k-th distance. Writes ``best_d2[:m]`` (float32 squared distances) and
    ``best_j[:m]`` (node rows), in no particular order; returns ``m <= k``. A node at
    the same distance as the current k-th is not taken; when a nearer one arrives and
    several kept nodes tie for the k-th place, the first of them in the best list goes
    (not necessarily the one met last, as in ``_k_nearest_lanes``).
    """
    m, _, _ = _k_nearest_span(node_pos, grid_origin, grid_index, cand_start, cand_node, cand_dist, o, inv_cell,
                              cell, r2, qx, qy, qz, k, best_d2, best_j)
    return m


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _k_nearest_span(node_pos, grid_origin, grid_index, cand_start, cand_node, cand_dist, o, inv_cell, cell, r2,
                    qx, qy, qz, k, best_d2, best_j):
    """``_k_nearest``, also returning the candidate rows it examined: ``(m, first, stop)``.

    ``cand_node[first:stop]`` are the candidates whose distance was computed (for
    ``profiling/knn_costs.py``; inlined into ``_k_nearest``, the unused rows cost nothing).

    The best list is kept unsorted with its largest entry tracked: a better node
    replaces the largest, a few compares instead of an insertion sort's loop. (Numba
    compiles these compares to branches; the branch-free forms measured no faster,
    see ``profiling/README.md``.)
    """
    c0, c1, off = _cell_span(grid_origin, grid_index, cand_start, o, inv_cell, cell, qx, qy, qz)
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


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _k_nearest_lanes(node_pos, grid_origin, grid_index, cand_start, cand_node, cand_dist, inv_cell, cell, r2, k,
                     qobj, qpos, n, out_j, out_m):
    """``_k_nearest`` for the queries ``i < n``, ``LANES`` at a time in lock-step.

    Query ``i`` asks for the nodes of object ``qobj[i]`` (int32, C-contiguous)
    nearest to ``qpos[:3, i]`` (float32 (>= 3, >= n), C-contiguous: the step's
    ``hq``). Writes ``out_m[i]`` (int64, at most ``k``) and ``out_j[:out_m[i], i]``
    (int32 node rows, nearest first; of equal distances the one earlier in the
    cell's candidate list first): ``out_j`` is (>= k, >= n), one column per query,
    the layout ``lane_evidence.evidence_max`` reads.
    """
    # 1. every query's candidate list first, LANES queries at a time (kernels.lane_cells);
    # queries with an empty list get no lane.
    # (Prefetching each list's first line here made the search 4-8% slower, 2026-12-03.)
    span = np.empty((2, n), np.int32)
    span_off = np.empty(n, np.float32)
    search = np.empty(n, np.int64)
    n_search = cell_spans(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off, search)
    for i in range(n):
        out_m[i] = 0
    if k < 1 or n_search == 0:  # (lock_step reads row k - 1)
        return
    if k <= K_REGISTERS:
        # 2. the searches in one vector loop: lanes harvested and refilled with vector ops
        search_lanes(cand_dist, cand_node, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                     _REFILL_AT)
    else:
        # 2. (larger k) lock_steps, the ended lanes refilled one by one
        drive_lock_steps(cand_dist, cand_node, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                         _REFILL_AT)


# --------------------------------------------------------------------------- step pieces


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


@njit(cache=True)
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


@njit(cache=True)
def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


@njit(cache=True)
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


@njit(cache=True)
def _move_rows(a, live, first, n_live):
    """``a[i] = a[live[i]]`` for ``first <= i < n_live`` (``a`` 1-D), in order: ``live``
    rises and ``live[i] >= i``, so no row is overwritten before it is read."""
    for i in range(first, n_live):
        a[i] = a[live[i]]


@njit(cache=True)
def _move_rows_2d(a, live, first, n_live):
    """``_move_rows`` for a 2-D ``a``: whole rows."""
    for i in range(first, n_live):
        src = live[i]
        for c in range(a.shape[1]):
            a[i, c] = a[src, c]


@njit(cache=True)
def _compact(n, hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf):
    """Move the live rows (``hyp_obj >= 0``) of the first ``n`` down over the dead ones,
    keeping their order. Returns the number of live rows.

    Row by row, one loop per array: deletions are scattered, so the live rows come in
    runs of a few; a block copy per run cost 2.4 ms for 30,000 rows (55% dead), this
    0.58 ms (two threads, the arrays split between them, 0.49 ms: not worth a parallel
    region). 2026-12-03.
    """
    live = np.empty(n, np.int64)
    first, n_live = _live_rows(n, hyp_obj, live)
    _move_rows(hyp_obj, live, first, n_live)
    _move_rows_2d(hyp_loc, live, first, n_live)
    _move_rows_2d(hyp_rot, live, first, n_live)
    _move_rows(hyp_ev, live, first, n_live)
    _move_rows(hyp_slope, live, first, n_live)
    _move_rows(hyp_age, live, first, n_live)
    _move_rows(hyp_possible, live, first, n_live)
    _move_rows_2d(hyp_buf, live, first, n_live)
    return n_live


def live_rows(istate, hyp_obj):
    """Indices of the live hypotheses among the rows in use (Python helper)."""
    n = int(istate[IS_N_HYP])
    return np.flatnonzero(np.asarray(hyp_obj[:n]) >= 0)


@njit(cache=True)
def _possible_objects(obj_max, obj_count, x_percent, possible):
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


@njit(cache=True)
def _terminal_check(n, o_best, g_best, mlh, fparams, iparams, istate, hyp_obj, hyp_loc, hyp_rot, hyp_ev,
                    hyp_possible):
    """Sections 5.3-5.5 for the single possible object ``o_best``: match or not.

    Updates the symmetry counter and the ``possible`` flags; returns True on a match
    (pose unique, or symmetric for ``required_symmetry_evidence`` checks).
    """
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
        symmetric = istate[IS_SYMMETRY] >= iparams[IP_SYMMETRY]
    if unique or symmetric:
        istate[IS_SYMMETRIC] = 1 if (symmetric and not unique) else 0
        return True
    return False


# --------------------------------------------------------------------------- the step


@njit(inline="always")
def _step_body(node_pos, node_pose, node_pfd, node_feat, obj_start,
               grid_origin, grid_index, cand_start, cand_node, cand_dist,
               feat_spec, fparams, iparams, istate, fstate,
               hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf,
               obj_max, obj_count,
               location, pose, pose_defined, features, kappa):
    """One feature step of the evidence learning module (section 4.12).

    Returns the outcome code after the step (``RUNNING``, ``MATCH``, ``NO_MATCH``,
    ``TIME_OUT``) or ``NEED_CAPACITY`` (``istate[IS_NEED]`` rows are needed; the
    state is as before the call apart from dead rows compacted away and a burst
    started, and the same step can be repeated after growing the hypothesis arrays).
    """
    cap = hyp_ev.shape[0]
    n_obj = obj_start.shape[0] - 1
    n_nodes = node_pos.shape[0]
    updater = iparams[IP_UPDATER]
    step = istate[IS_STEP]
    window = hyp_buf.shape[1]
    slot = step % window
    first = step == 0
    mmd = fparams[FP_MMD]

    # 1. burst trigger (before anything moves); compaction of dead rows once they
    # outnumber the live ones (stale hypotheses are deleted in the update loop below)
    burst = False
    deleting = False
    if updater == UPDATER_BURST:
        if istate[IS_BURST_LEFT] == 0 and (first or not (fstate[FS_SLOPE_MAX] > fparams[FP_BURST_SLOPE])):
            istate[IS_BURST_LEFT] = iparams[IP_BURST_DURATION]
        burst = istate[IS_BURST_LEFT] > 0
        deleting = not first
    else:
        burst = first
    if 2 * istate[IS_N_DEAD] > istate[IS_N_HYP]:
        istate[IS_N_HYP] = _compact(istate[IS_N_HYP], hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age,
                                    hyp_possible, hyp_buf)
        istate[IS_N_DEAD] = 0
    n_old = istate[IS_N_HYP]

    k_nodes, h_per_node = _samples_per_object(obj_start, pose_defined, iparams[IP_UMBILICAL], updater,
                                              fparams[FP_SAMPLING])
    n_new = 0
    if burst:
        for o in range(n_obj):
            n_new += k_nodes[o] * h_per_node
    if n_old + n_new > cap:
        istate[IS_NEED] = n_old + n_new
        return NEED_CAPACITY

    # 2. displacement since the last feature step (none on the first)
    dx = _F0
    dy = _F0
    dz = _F0
    if not first:
        dx = location[0] - fstate[FS_X_LAST]
        dy = location[1] - fstate[FS_X_LAST + 1]
        dz = location[2] - fstate[FS_X_LAST + 2]
    fstate[FS_X_LAST] = location[0]
    fstate[FS_X_LAST + 1] = location[1]
    fstate[FS_X_LAST + 2] = location[2]

    # 3. feature evidence of every node (section 4.7), parallel over node chunks
    phi = np.empty(n_nodes, np.float32)
    # in 8 equal pieces (at least 512 nodes each), so that 2 or 4 threads get equal shares
    fchunk = max(512, (n_nodes + 7) // 8)
    n_fchunks = (n_nodes + fchunk - 1) // fchunk
    for c in prange(n_fchunks):
        lo = c * fchunk
        hi = min(lo + fchunk, n_nodes)
        feature_evidence_into(node_feat, lo, hi, features, feat_spec[0], feat_spec[1], feat_spec[2],
                              fparams[FP_INCREMENT], phi)

    # 4. evidence of the existing hypotheses: displace, K nearest, delta, accumulate
    inv_kappa = _F1 / (abs(kappa) + _FHALF)
    k = iparams[IP_K]
    past = fparams[FP_PAST]
    present = fparams[FP_PRESENT]
    w_n = fparams[FP_W_NORMAL]
    w_c = fparams[FP_W_CURV]
    r2 = mmd * mmd
    cell = mmd / np.float32(CELLS_PER_RADIUS)
    inv_cell = np.float32(1.0) / cell
    min_age = iparams[IP_MIN_AGE]
    # ring slot of the oldest of the last mm evidences (an integer modulo per hypothesis costs ~10 ns)
    oldest = np.empty(window + 1, np.int64)
    for mm in range(window + 1):
        oldest[mm] = (step - mm + 1) % window
    ev_par = np.empty(N_PAR, np.float32)
    ev_par[0] = inv_kappa
    ev_par[1] = mmd
    ev_par[2] = w_n
    ev_par[3] = w_c
    ev_par[4] = _F1 if pose_defined else _F0
    slope_min = fparams[FP_DELETION_SLOPE]
    path_par = np.empty(N_PATH_PAR, np.float32)
    path_par[0] = dx
    path_par[1] = dy
    path_par[2] = dz
    for a in range(6):
        path_par[3 + a] = pose[a]  # the sensed normal, then the sensed curvature direction
    path_par[9] = _F1 if deleting else _F0
    path_par[10] = np.float32(min_age)
    path_par[11] = slope_min
    # an even number of equal blocks of at most _CHUNK rows: the two halves of the work
    # items (see below) then hold the same number of rows
    n_chunks = 2 * ((n_old + 2 * _CHUNK - 1) // (2 * _CHUNK))
    csize = (n_old + n_chunks - 1) // n_chunks if n_chunks > 0 else 0
    # per block of rows and object: best evidence, its first row, live hypotheses
    chunk_max = np.full((n_chunks, n_obj), -np.inf, np.float32)
    chunk_arg = np.full((n_chunks, n_obj), -1, np.int64)
    chunk_cnt = np.zeros((n_chunks, n_obj), np.int64)
    chunk_slope = np.full(n_chunks, -np.inf, np.float32)
    chunk_dead = np.zeros(n_chunks, np.int64)
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
        # per query (surviving hypothesis) one column, padded to whole vectors of lanes
        n_pad = (hi - lo + LANES - 1) // LANES * LANES
        rows = np.empty(hi - lo, np.int64)
        qobj = np.empty(n_pad, np.int32)
        nbr = np.empty((k, n_pad), np.int32)
        n_nbr = np.zeros(n_pad, np.int64)
        hq = np.zeros((9, n_pad), np.float32)
        delta = np.empty(n_pad, np.float32)
        smax = _NEG_INF
        # 4a. deletion and path integration, LANES rows at a time; the surviving rows are
        # this chunk's queries (kernels.lane_paths)
        n_q, dead = integrate_rows(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, path_par,
                                   rows, qobj, hq)
        # 4b. their K nearest nodes, LANES queries at a time
        _k_nearest_lanes(node_pos, grid_origin, grid_index, cand_start, cand_node, cand_dist, inv_cell, cell, r2, k,
                         qobj, hq, n_q, nbr, n_nbr)
        # 4c. evidence change (LANES queries at a time), accumulation, slope
        for i0 in range(0, n_q, LANES):
            evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, ev_par, delta)
        for i in range(n_q):
            h = rows[i]
            o = hyp_obj[h]
            e = past * hyp_ev[h] + present * delta[i]
            hyp_ev[h] = e
            # slope tracker (section 4.10): ring of the last W evidences
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
            chunk_cnt[b, o] += 1
            if e > chunk_max[b, o]:
                chunk_max[b, o] = e
                chunk_arg[b, o] = h
        chunk_slope[c] = smax
        chunk_dead[c] = dead

    # 5. new hypotheses (informed, section 3.2 / 3.6), appended after the survivors
    if n_new > 0:
        frames = candidate_frames(pose, pose_defined, iparams[IP_UMBILICAL])
        n_frames = frames.shape[0]
        offsets = np.empty(n_obj + 1, np.int64)
        offsets[0] = n_old
        for o in range(n_obj):
            offsets[o + 1] = offsets[o] + k_nodes[o] * h_per_node
        for o in prange(n_obj):
            kn = k_nodes[o]
            if kn == 0:
                continue
            chosen = np.empty(kn, np.int64)
            _top_nodes(phi, obj_start[o], obj_start[o + 1], kn, step + o, chosen)
            for r in range(n_frames):
                for j in range(kn):
                    h = offsets[o] + r * kn + j
                    nd = chosen[j]
                    hyp_obj[h] = o
                    hyp_loc[h, 0] = node_pos[nd, 0]
                    hyp_loc[h, 1] = node_pos[nd, 1]
                    hyp_loc[h, 2] = node_pos[nd, 2]
                    _informed_rotation(node_pose, nd, frames[r], hyp_rot, h)
                    e = phi[nd]
                    hyp_ev[h] = e
                    hyp_buf[h, slot] = e
                    hyp_age[h] = 1
                    hyp_slope[h] = _NAN
                    hyp_possible[h] = 0
    n = n_old + n_new
    istate[IS_N_HYP] = n
    istate[IS_N_NEW] = n_new
    if istate[IS_BURST_LEFT] > 0:
        istate[IS_BURST_LEFT] -= 1
    istate[IS_STEP] = step + 1
    istate[IS_MATCHING_STEPS] += 1

    # 6. per-object maxima, MLH (ties: first object, then first row), slope maximum
    smax = _NEG_INF
    for o in range(n_obj):
        obj_max[o] = _NEG_INF
        obj_count[o] = 0
    for c in range(n_chunks):
        if chunk_slope[c] > smax:
            smax = chunk_slope[c]
        istate[IS_N_DEAD] += chunk_dead[c]
        for o in range(n_obj):
            obj_count[o] += chunk_cnt[c, o]
            if chunk_max[c, o] > obj_max[o]:
                obj_max[o] = chunk_max[c, o]
    fstate[FS_SLOPE_MAX] = smax
    if n_new > 0:
        for o in range(n_obj):
            obj_count[o] += k_nodes[o] * h_per_node
    for h in range(n_old, n):
        o = hyp_obj[h]
        if hyp_ev[h] > obj_max[o]:
            obj_max[o] = hyp_ev[h]
    mlh = -1
    o_best = -1
    for o in range(n_obj):
        if obj_count[o] > 0 and (o_best < 0 or obj_max[o] > obj_max[o_best]):
            o_best = o
    if o_best >= 0:
        # the first row holding the best evidence: in the first block (rows in order) that
        # holds it, else among the new rows
        target = obj_max[o_best]
        for b in range(n_chunks):
            if chunk_max[b, o_best] == target:
                mlh = chunk_arg[b, o_best]
                break
        if mlh < 0:
            for h in range(n_old, n):
                if hyp_obj[h] == o_best and hyp_ev[h] == target:
                    mlh = h
                    break
    istate[IS_MLH] = mlh
    fstate[FS_MLH_EV] = obj_max[o_best] if o_best >= 0 else _NEG_INF

    # 7. possible objects and terminal conditions (section 5)
    possible = np.zeros(n_obj, np.uint8)
    n_poss = _possible_objects(obj_max, obj_count, np.float64(fparams[FP_X_PERCENT]), possible)
    istate[IS_N_POSSIBLE] = n_poss
    if n_poss == 0:
        istate[IS_OUTCOME] = NO_MATCH
        return NO_MATCH
    if istate[IS_MATCHING_STEPS] > iparams[IP_MIN_STEPS]:
        if n_poss == 1:
            if _terminal_check(n, o_best, obj_max[o_best], mlh, fparams, iparams, istate, hyp_obj, hyp_loc,
                               hyp_rot, hyp_ev, hyp_possible):
                istate[IS_DETECTED] = o_best
                istate[IS_OUTCOME] = MATCH
                return MATCH
        else:
            for h in range(n):
                hyp_possible[h] = 0
    if istate[IS_MATCHING_STEPS] >= iparams[IP_MAX_STEPS]:
        istate[IS_OUTCOME] = TIME_OUT
        return TIME_OUT
    return RUNNING


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def evidence_step(node_pos, node_pose, node_pfd, node_feat, obj_start,
                  grid_origin, grid_index, cand_start, cand_node, cand_dist,
                  feat_spec, fparams, iparams, istate, fstate,
                  hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf,
                  obj_max, obj_count,
                  location, pose, pose_defined, features, kappa):
    """One feature step (see :func:`_step_body`); the stepwise path calls this per step.

    Parameters: the model arrays and node grid (module docstring), the feature
    settings ``feat_spec`` float32 (3, F): rows tolerance, weight, circular (1 for
    columns that wrap around with range 1, like hue),
    ``fparams`` float32 (N_FPARAMS,), ``iparams`` int64 (N_IPARAMS,), the state
    ``istate`` int64 (N_ISTATE,) and ``fstate`` float32 (N_FSTATE,), the hypothesis
    arrays, ``obj_max`` float32 (O,) and ``obj_count`` int64 (O,) (written: each
    object's best evidence and hypothesis count after the step), and the observation: ``location`` float32 (3,), ``pose`` float32
    (9,) rows normal, dir 1, dir 2, ``pose_defined`` bool, ``features`` float32 (F,),
    ``kappa`` float32 (the larger absolute log curvature).

    Returns the outcome code (``RUNNING``, ``MATCH``, ``NO_MATCH``, ``TIME_OUT``, or
    ``NEED_CAPACITY``).
    """
    return _step_body(node_pos, node_pose, node_pfd, node_feat, obj_start,
                      grid_origin, grid_index, cand_start, cand_node, cand_dist,
                      feat_spec, fparams, iparams, istate, fstate,
                      hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf,
                      obj_max, obj_count,
                      location, pose, pose_defined, features, kappa)


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def evidence_episode(node_pos, node_pose, node_pfd, node_feat, obj_start,
                     grid_origin, grid_index, cand_start, cand_node, cand_dist,
                     feat_spec, fparams, iparams, istate, fstate,
                     hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf,
                     obj_max, obj_count,
                     location, pose, pose_defined, features, kappa, first_step, trace):
    """Steps ``first_step ..`` of an episode in one call, until it ends.

    ``location`` (T, 3), ``pose`` (T, 9), ``pose_defined`` (T,) bool, ``features``
    (T, F), ``kappa`` (T,) are the episode's observations; ``trace`` float32
    (T, O) receives each object's best evidence after each step (-inf for an object
    without hypotheses). Other arguments as :func:`evidence_step`.

    Returns ``(code, next_step)``: the outcome code of the last step and the index
    of the next step to run. ``code`` is ``RUNNING`` when the observations ran out,
    and ``NEED_CAPACITY`` when step ``next_step`` needs larger hypothesis arrays
    (grow them and call again from ``next_step``).
    """
    n_steps = location.shape[0]
    n_obj = obj_start.shape[0] - 1
    code = RUNNING
    t = first_step
    while t < n_steps:
        code = _step_body(node_pos, node_pose, node_pfd, node_feat, obj_start,
                          grid_origin, grid_index, cand_start, cand_node, cand_dist,
                          feat_spec, fparams, iparams, istate, fstate,
                          hyp_obj, hyp_loc, hyp_rot, hyp_ev, hyp_slope, hyp_age, hyp_possible, hyp_buf,
                          obj_max, obj_count,
                          location[t], pose[t], pose_defined[t], features[t], kappa[t])
        if code == NEED_CAPACITY:
            return code, t
        for o in range(n_obj):
            trace[t, o] = obj_max[o] if obj_count[o] > 0 else _NEG_INF
        t += 1
        if code != RUNNING:
            break
    return code, t
