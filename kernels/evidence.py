"""Evidence matching (tbp.monty's evidence learning module) as flat-array kernels.

The recognition half of the ``evidence`` model: every hypothesis "the sensor is at
location l on object o, and the object is rotated by R" carries an evidence value
that each sensed observation raises or lowers. The algorithm follows
``docs/evidence-matching.md`` (sections 3 to 5; section numbers below refer to it).

Layout (``kernels.evidence_layout``, re-exported here)
------------------------------------------------------
The kernels take five named tuples of arrays, each declared once with its fields'
dtypes and shapes: ``ObjectModels`` (the nodes of all objects concatenated, object
``o`` owns nodes ``obj_start[o] .. obj_start[o + 1]``, sorted by their cell of the
object's node grid, see :func:`build_node_grid`, and the grid itself), ``Params``
(feature spec, ``fparams`` / ``iparams`` with slots ``FP_*`` / ``IP_*``: one kernel
signature for every setting), ``State`` (``istate`` / ``fstate`` with slots ``IS_*`` /
``FS_*``, and the per-object outputs ``obj_max`` / ``obj_count``), ``Hypotheses``
and ``Observations`` (an episode's steps).

Hypotheses live in one set of flat arrays of capacity ``cap`` (the first
``n_hyp = istate[IS_N_HYP]`` rows are in use), all objects mixed; each row's object is
``Hypotheses.obj``. A deleted hypothesis (burst sampling) becomes a *dead* row, ``obj
== -1``, skipped by every loop; ``istate[IS_N_DEAD]`` counts them, and the rows are
compacted (live rows moved down, order kept) once the dead outnumber the live, so a
deletion costs no data movement in the step it happens. Within one object the rows
keep tbp.monty's order (survivors in their order, then the new ones), so index-order
tie-breaks and the "possible" sets of the symmetry test behave as in tbp.monty.

Nearest nodes: a uniform grid per object with cells half the match radius wide,
and per cell a precomputed list of the only nodes a query in it can need
(:func:`build_node_grid`). A node can only be "in radius" when its Euclidean
distance is below ``max_match_distance`` (the custom distance is never smaller),
so the K nearest nodes *among those closer than the radius* give exactly the
evidence the K-nearest-over-all-nodes search of tbp.monty gives (section 4.5's
note), up to ties in distance. The step searches its hypotheses ``lanes.LANES`` at a
time in lock-step (``evidence_phases.search``, vector gathers instead of a branch per
candidate); ``k_nearest`` is the same search for one query. The deletion test and
path integration before it (``lane_paths.integrate_rows``), the cell lookup
(``lane_cells.cell_spans``) and the scoring of the found nodes
(``lane_evidence.evidence_max``) run ``LANES`` hypotheses at a time as well.

The step is cut into phases (``kernels.evidence_phases``). One parallel entry point,
:func:`evidence_episode`, runs them step after step; :func:`evidence_step` runs it for
exactly one step, so the stepwise and the fused path are one compiled kernel
(numba/numba#8578: the loops with ``prange`` live in ``inline="always"`` bodies
inlined into this entry point; every function they call is serial. A cached kernel
must not call it).
"""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from ._flags import FASTMATH
from .evidence_layout import *  # noqa: F401,F403  (the layout's public names, re-exported)
from .evidence_layout import (
    CELLS_PER_RADIUS, IS_N_HYP, NEED_CAPACITY, RUNNING, Hypotheses, ObjectModels, Observations, Params, State,
)
from .evidence_phases import (  # noqa: F401  (candidate_frames, feature_evidence_into re-exported)
    candidate_frames, candidate_unit, feature_evidence_into, one_step, record_best,
)


# --------------------------------------------------------------------------- the step


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def evidence_episode(model, prm, st, hyp, obs, first_step, trace):
    """Steps ``first_step ..`` of an episode in one call, until it ends.

    Parameters
    ----------
    model : ObjectModels
    prm : Params
    st : State
        Written: the episode's state, and each object's best evidence and hypothesis
        count after the last step.
    hyp : Hypotheses
    obs : Observations
        The episode's T steps.
    first_step : int
    trace : float32 (T, O)
        Receives each object's best evidence after each step (-inf for an object
        without hypotheses).

    Returns ``(code, next_step)``: the outcome code of the last step and the index
    of the next step to run. ``code`` is ``RUNNING`` when the observations ran out,
    and ``NEED_CAPACITY`` when step ``next_step`` needs larger hypothesis arrays
    (grow them and call again from ``next_step``).
    """
    n_steps = obs.location.shape[0]
    obj_max = st.obj_max
    obj_count = st.obj_count
    code = RUNNING
    t = first_step
    while t < n_steps:
        code = one_step(model, prm, st, hyp, obs, t)
        if code == NEED_CAPACITY:
            return code, t
        record_best(trace[t], obj_max, obj_count)
        t += 1
        if code != RUNNING:
            break
    return code, t


def evidence_step(model: ObjectModels, prm: Params, st: State, hyp: Hypotheses, obs: Observations, t: int) -> int:
    """Step ``t`` of ``obs`` alone (the stepwise path): :func:`evidence_episode` on that row.

    The episode kernel runs on length-1 views of the observations (a view of one row
    of a C-contiguous array is C-contiguous, so the kernel's signature is the fused
    path's), which makes the stepwise path the fused one step by step, bit for bit.

    Returns the outcome code (``RUNNING``, ``MATCH``, ``NO_MATCH``, ``TIME_OUT``, or
    ``NEED_CAPACITY``).
    """
    one = Observations(*(a[t:t + 1] for a in obs))
    trace = np.empty((1, st.obj_max.shape[0]), np.float32)
    code, _ = evidence_episode(model, prm, st, hyp, one, 0, trace)
    return code


def live_rows(istate, hyp_obj):
    """Indices of the live hypotheses among the rows in use (Python helper)."""
    n = int(istate[IS_N_HYP])
    return np.flatnonzero(np.asarray(hyp_obj[:n]) >= 0)


# --------------------------------------------------------------------------- feature evidence (Python face)


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

    The step's search reads both as one int32 per candidate: ``candidate_codes(cand_node,
    cand_dist, max_match_distance)`` (``ObjectModels.cand_code``).
    """
    from .kdtree import build_tree  # sibling kernel module

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
    jobs = []
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
        jobs.append((node_pos[lo + srt], lo, origin[o], dims))
        base += n_cells

    def candidates(job):
        return _cell_candidates(*job, cell, half_diag, float(max_match_distance), int(k), build_tree)

    # objects on Python threads: the searches release the GIL (as kernels.geometry.fit_surface's)
    n_threads = min(numba.get_num_threads(), len(jobs))
    if n_threads > 1:
        with ThreadPoolExecutor(n_threads) as pool:
            found = list(pool.map(candidates, jobs))
    else:
        found = [candidates(job) for job in jobs]
    counts_all = [f[0] for f in found]
    nodes_all = [f[1] for f in found]
    dists_all = [f[2] for f in found]
    n_cand = int(sum(int(c.sum()) for c in counts_all))
    if n_cand >= 2 ** 31:  # the step's search lanes hold candidate rows as int32
        raise ValueError(f"the node grid would hold {n_cand} candidates; at most 2**31 - 1 are supported "
                         "(fewer nodes per object or a smaller max_match_distance)")
    cand_start = np.zeros(base + 1, np.int64)
    np.cumsum(np.concatenate(counts_all) if counts_all else np.zeros(0, np.int64), out=cand_start[1:])
    cand_node = np.concatenate(nodes_all).astype(np.int32) if nodes_all else np.zeros(0, np.int32)
    cand_dist = np.concatenate(dists_all).astype(np.float32) if dists_all else np.zeros(0, np.float32)
    return order, origin, index, cand_start, cand_node, cand_dist


def candidate_codes(cand_node, cand_dist, max_match_distance) -> np.ndarray:
    """The lists' one-int32 form the step's search reads (``ObjectModels.cand_code``).

    Candidate ``i``'s code is ``cand_node[i] << kernels.lanes.CODE_BITS | s``, ``s`` the
    largest whole number of distance steps (``candidate_unit(max_match_distance)``) whose
    float32 product with the step is at most ``cand_dist[i]`` less a margin (a lower
    bound still, whatever the rounding of the step in a kernel compiled with fastmath),
    and at most ``CODE_MASK``. A bound a step lower only lets a search look at a candidate
    more before it stops; what it finds is the same.

    ``cand_node`` int32 (M,) node rows, ``cand_dist`` float32 (M,) their lower-bound
    distances (``build_node_grid``). Raises ValueError for node rows of
    ``kernels.lanes.MAX_CODED_ROWS`` or more.
    """
    from .lanes import CODE_BITS, CODE_MASK, MAX_CODED_ROWS  # sibling kernel module

    node = np.asarray(cand_node, np.int64).reshape(-1)
    dist = np.asarray(cand_dist, np.float32).reshape(-1)
    if node.shape != dist.shape:
        raise ValueError(f"cand_node and cand_dist differ in length: {node.shape[0]} and {dist.shape[0]}")
    if node.size and (node.min() < 0 or node.max() >= MAX_CODED_ROWS):
        raise ValueError(f"candidate node rows must lie in 0..{MAX_CODED_ROWS - 1} "
                         f"(a model of at most {MAX_CODED_ROWS} nodes), got {node.min()}..{node.max()}")
    if not np.isfinite(dist).all():
        raise ValueError("cand_dist holds NaN or infinity")
    unit = candidate_unit(np.float32(max_match_distance))
    steps = np.clip(np.floor(dist.astype(np.float64) * (1 - 1e-6) / np.float64(unit)), 0, CODE_MASK).astype(np.int64)
    # (0 steps is a lower bound of any distance, even where cand_dist's margin made it negative)
    over = (steps > 0) & (steps.astype(np.float32) * unit > dist)
    while over.any():  # float32 rounding: a step at most
        steps[over] -= 1
        over = (steps > 0) & (steps.astype(np.float32) * unit > dist)
    return ((node << CODE_BITS) | steps).astype(np.int32)


def _cell_candidates(p, lo, origin, dims, cell, half_diag, mmd, k, build_tree):
    """Candidate lists of one object's cells (see ``build_node_grid``): counts, nodes, distances.

    The KD-tree searches are the serial ``knn_rows`` and ``radius_lists``, the ones the
    sensor simulation uses too: a model is built once per run, and the parallel batch
    queries cost ~5 s more to compile on a first run than they save here.
    """
    from .kdtree import knn_rows, radius_lists  # sibling kernel module

    n_cells = int(np.prod(dims))
    if len(p) == 0:
        return np.zeros(n_cells, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    ix, iy, iz = np.meshgrid(np.arange(dims[0]), np.arange(dims[1]), np.arange(dims[2]), indexing="ij")
    # cell id = ix + nx (iy + ny iz): x fastest, i.e. Fortran order of the (nx, ny, nz) grid
    ijk = np.stack([ix.ravel(order="F"), iy.ravel(order="F"), iz.ravel(order="F")], 1)
    centres = (origin + (ijk.astype(np.float32) + np.float32(0.5)) * cell).astype(np.float32)
    tree = build_tree(np.ascontiguousarray(p))
    kk = min(k, len(p))
    # the argument types are the sensor walk's call of knn_rows (one compiled signature)
    nb_idx = np.empty((n_cells, kk), np.int64)
    kth = np.empty((n_cells, kk), np.float32)
    knn_rows(tree, centres, 0, n_cells, kk, np.float32(np.inf), nb_idx, kth, np.empty(0, np.int64))
    kth = kth[:, kk - 1].astype(np.float64)
    if kk < k:  # fewer nodes than k: every node within reach is a candidate
        kth[:] = np.inf
    # margins for float32 rounding of the distances compared in the kernel
    reach = np.minimum(mmd + half_diag, kth + 2 * half_diag) * (1 + 1e-5) + 1e-7
    idx, off = radius_lists(tree, centres, float(np.float32((mmd + half_diag) * (1 + 1e-5) + 1e-7)))
    cell_of = np.repeat(np.arange(n_cells), np.diff(off))
    d = np.linalg.norm(p[idx].astype(np.float64) - centres[cell_of], axis=1)
    keep = d <= reach[cell_of]
    idx, cell_of, d = idx[keep], cell_of[keep], d[keep]
    srt = np.lexsort((d, cell_of))
    counts = np.bincount(cell_of, minlength=n_cells).astype(np.int64)
    dist = (d[srt] * (1 - 1e-6) - 1e-8).astype(np.float32)
    return counts, lo + idx[srt], dist
