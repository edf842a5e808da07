"""Voting between evidence learning modules (``docs/evidence-matching.md`` section 6).

Several learning modules (one per sensor patch) keep their hypotheses in stacked flat
arrays, module ``m``'s rows in row ``m`` of each (``obj`` int32 (M, cap), ``loc`` float32
(M, cap, 3), ``rot`` float32 (M, cap, 9), ``ev`` float32 (M, cap); the first ``n_rows[m]``
rows in use, ``obj == -1`` a dead row). After every step each module sends votes and each
receives those of the modules connected to it:

Sending (:func:`select_votes`): the module's evidences are scaled jointly over all its
objects, ``E~ = 2 (E - E_min) / (E_max - E_min) - 1`` when ``E_max >= 1``, else
``clip(E, -1, 1)``; every hypothesis with ``E~ > vote_evidence_threshold`` is a vote
(object, location, rotation, confidence ``E~``). When ``E_max >= 1`` and every evidence is
equal, tbp.monty's scaling divides 0 by 0 and no hypothesis passes the threshold: here
too, no vote.

Transforming (:func:`transform_vote`): for receiver ``r``, a vote of sender ``s`` moves to
``l' = l + V dp`` with ``dp = p_r - p_s`` the offset between the two sensed locations.
tbp.monty's code (``MontyForEvidenceGraphMatching._combine_votes``) takes ``V = R^T``,
the transpose of the hypothesis rotation (``v_model = R v_body``), although path
integration uses ``R d`` (section 9.1): ``VOTE_TRANSPOSE`` follows the code,
``VOTE_ROTATE`` uses ``R`` (where the receiving sensor is on the object if the vote's
pose is right).

Receiving (:func:`receive_votes`): per hypothesis of the receiver, the ``VOTE_K`` (3)
nearest votes for its object (Euclidean; tbp.monty's KD-tree with ``k = min(3, V)``),
of which those at distance ``>= max_match_distance`` are dropped; the largest confidence
``v`` among the rest is added: ``E <- E + w v``, or ``(E + w v) / (1 + w)`` when
``past_weight + present_weight == 1`` (tbp.monty's code takes the unweighted maximum;
its docs say a distance-weighted average). A hypothesis without a vote in range keeps
its evidence. The search is a hash grid over the receiver's votes (cells
``max_match_distance`` wide, sorted keys of (object, cell), the 27 cells around a
query): only votes closer than the radius can count, and the ``k`` nearest of all votes
that lie in the radius are the ``k`` nearest of the votes in the radius, so the grid
gives tbp.monty's answer exactly (ties in distance: the vote earlier in the pool, pooled
sender by sender in module order, each sender's votes in row order).

Who takes part (:func:`exchange_votes`): a module sends only when ``sends[m]`` (it
processed a feature step this step, having been on the object); a module receives only
when it sends too (tbp.monty: an LM whose own vote is ``None`` gets no votes) and
``conn[r, s]`` (uint8 (M, M), receiver by sender; tbp.monty's ``lm_to_lm_vote_matrix``
lists the senders of each receiver) connects it to a sending ``s``. Every vote is taken
from the evidences before any vote is received.
"""

import numpy as np
from numba import njit

VOTE_TRANSPOSE = 0  # l' = l + R^T dp, tbp.monty's code
VOTE_ROTATE = 1     # l' = l + R dp
VOTE_K = 3          # nearest votes per hypothesis (tbp.monty's vote_nn)

_F0 = np.float32(0.0)


@njit(cache=True)
def evidence_range(obj, ev, n):
    """Smallest and largest evidence (float64) of the live rows (``obj >= 0``) among the first
    ``n``; ``(inf, -inf)`` when there are none. ``obj`` int32 (>= n,), ``ev`` float32 (>= n,)."""
    lo = np.inf
    hi = -np.inf
    for h in range(n):
        if obj[h] >= 0:
            e = np.float64(ev[h])
            if e < lo:
                lo = e
            if e > hi:
                hi = e
    return lo, hi


@njit(cache=True)
def scale_evidence(e, lo, hi):
    """tbp.monty's ``get_scaled_evidences`` of one evidence ``e`` (float64) given the module's
    range ``lo .. hi``: ``((e - lo) / (hi - lo) - 0.5) * 2`` when ``hi >= 1`` (NaN when
    ``hi == lo``, tbp.monty's 0 / 0), else ``e`` clipped to [-1, 1]."""
    if hi >= 1.0:
        if hi == lo:
            return np.nan
        return ((e - lo) / (hi - lo) - 0.5) * 2.0
    return min(max(e, -1.0), 1.0)


@njit(cache=True)
def count_votes(obj, ev, n, threshold):
    """How many of the first ``n`` rows :func:`select_votes` would send (``threshold`` float64)."""
    lo, hi = evidence_range(obj, ev, n)
    c = 0
    for h in range(n):
        if obj[h] >= 0 and scale_evidence(np.float64(ev[h]), lo, hi) > threshold:
            c += 1
    return c


@njit(cache=True)
def select_votes(obj, loc, rot, ev, n, threshold, sender, out_src, out_obj, out_loc, out_rot, out_conf, w):
    """One module's votes (the rows whose scaled evidence is above ``threshold``), in row
    order, written from slot ``w`` on; returns the slot after the last.

    Parameters
    ----------
    obj : int32 (>= n,); loc : float32 (>= n, 3); rot : float32 (>= n, 9); ev : float32 (>= n,)
        The module's hypothesis rows (dead rows, ``obj == -1``, never vote).
    n : int, rows in use; threshold : float64, ``vote_evidence_threshold``
    sender : int, the module's index
    out_src, out_obj : int32 (V,); out_loc : float32 (V, 3); out_rot : float32 (V, 9);
    out_conf : float32 (V,)
        Written: sender, object, location, rotation and confidence of each vote.
    """
    lo, hi = evidence_range(obj, ev, n)
    for h in range(n):
        o = obj[h]
        if o < 0:
            continue
        c = scale_evidence(np.float64(ev[h]), lo, hi)
        if c > threshold:
            out_src[w] = sender
            out_obj[w] = o
            for a in range(3):
                out_loc[w, a] = loc[h, a]
            for a in range(9):
                out_rot[w, a] = rot[h, a]
            out_conf[w] = np.float32(c)
            w += 1
    return w


@njit(cache=True)
def transform_vote(loc, rot, i, dx, dy, dz, mode, out, j):
    """``out[j] = loc[i] + V dp`` with ``V = rot[i]^T`` (``VOTE_TRANSPOSE``) or ``rot[i]``
    (``VOTE_ROTATE``); ``rot`` row-major float32 (V, 9), ``dp = (dx, dy, dz)`` float32."""
    for a in range(3):
        if mode == VOTE_TRANSPOSE:
            v = rot[i, a] * dx + rot[i, 3 + a] * dy + rot[i, 6 + a] * dz
        else:
            v = rot[i, 3 * a] * dx + rot[i, 3 * a + 1] * dy + rot[i, 3 * a + 2] * dz
        out[j, a] = loc[i, a] + v


@njit(cache=True)
def receive_votes(obj, loc, ev, n, vobj, vloc, vconf, nv, mmd, weight, bounded, taken):
    """Add to each live row's evidence the best of its nearest votes (see the module notes).

    Parameters
    ----------
    obj : int32 (>= n,); loc : float32 (>= n, 3); ev : float32 (>= n,), updated in place
        The receiver's rows (``n`` in use).
    vobj : int32 (>= nv,); vloc : float32 (>= nv, 3); vconf : float32 (>= nv,)
        The pooled votes, already moved into the receiver's position.
    mmd : float32, ``max_match_distance``; weight : float32, ``vote_weight``
    bounded : bool, ``past_weight + present_weight == 1`` (average instead of add)
    taken : float32 (>= n,)
        Written: the vote each row took (NaN: none).

    Returns the number of rows whose evidence a vote changed.
    """
    for h in range(n):
        taken[h] = np.nan
    if nv == 0 or n == 0:
        return 0
    # cells a little wider than the radius: float32 rounding of the cell index can then
    # never put two points closer than the radius two cells apart
    cell = np.float64(mmd) * 1.00001
    ox = np.inf
    oy = np.inf
    oz = np.inf
    mx = -np.inf
    my = -np.inf
    mz = -np.inf
    for i in range(nv):
        ox = min(ox, np.float64(vloc[i, 0]))
        oy = min(oy, np.float64(vloc[i, 1]))
        oz = min(oz, np.float64(vloc[i, 2]))
        mx = max(mx, np.float64(vloc[i, 0]))
        my = max(my, np.float64(vloc[i, 1]))
        mz = max(mz, np.float64(vloc[i, 2]))
    nx = np.int64(np.floor((mx - ox) / cell)) + 1
    ny = np.int64(np.floor((my - oy) / cell)) + 1
    nz = np.int64(np.floor((mz - oz) / cell)) + 1
    keys = np.empty(nv, np.int64)
    for i in range(nv):
        ix = np.int64(np.floor((np.float64(vloc[i, 0]) - ox) / cell))
        iy = np.int64(np.floor((np.float64(vloc[i, 1]) - oy) / cell))
        iz = np.int64(np.floor((np.float64(vloc[i, 2]) - oz) / cell))
        keys[i] = ((np.int64(vobj[i]) * nz + iz) * ny + iy) * nx + ix
    order = np.argsort(keys, kind="mergesort")  # stable: pool order within a cell
    skeys = keys[order]
    r2 = mmd * mmd
    best_d = np.empty(VOTE_K, np.float32)
    best_i = np.empty(VOTE_K, np.int64)
    changed = 0
    for h in range(n):
        o = obj[h]
        if o < 0:
            continue
        qx = loc[h, 0]
        qy = loc[h, 1]
        qz = loc[h, 2]
        fx = np.floor((np.float64(qx) - ox) / cell)
        fy = np.floor((np.float64(qy) - oy) / cell)
        fz = np.floor((np.float64(qz) - oz) / cell)
        # (compared as floats: a query far outside would overflow the integer cell index)
        if not (fx >= -1 and fy >= -1 and fz >= -1 and fx <= nx and fy <= ny and fz <= nz):
            continue
        cx = np.int64(fx)
        cy = np.int64(fy)
        cz = np.int64(fz)
        x0 = max(cx - 1, 0)
        x1 = min(cx + 1, nx - 1)
        m = 0
        if x0 <= x1:
            for iz in range(max(cz - 1, 0), min(cz + 1, nz - 1) + 1):
                for iy in range(max(cy - 1, 0), min(cy + 1, ny - 1) + 1):
                    base = ((np.int64(o) * nz + iz) * ny + iy) * nx
                    a = np.searchsorted(skeys, base + x0)
                    b = np.searchsorted(skeys, base + x1 + 1)
                    for p in range(a, b):
                        i = order[p]
                        dx = vloc[i, 0] - qx
                        dy = vloc[i, 1] - qy
                        dz = vloc[i, 2] - qz
                        d2 = dx * dx + dy * dy + dz * dz
                        if d2 >= r2:
                            continue
                        # keep the VOTE_K nearest; equal distances: the earlier vote
                        if m < VOTE_K:
                            best_d[m] = d2
                            best_i[m] = i
                            m += 1
                        else:
                            w = 0
                            for s in range(1, VOTE_K):
                                if best_d[s] > best_d[w] or (best_d[s] == best_d[w] and best_i[s] > best_i[w]):
                                    w = s
                            if d2 < best_d[w] or (d2 == best_d[w] and i < best_i[w]):
                                best_d[w] = d2
                                best_i[w] = i
        if m == 0:
            continue
        v = vconf[best_i[0]]
        for s in range(1, m):
            if vconf[best_i[s]] > v:
                v = vconf[best_i[s]]
        taken[h] = v
        if bounded:
            ev[h] = (ev[h] + weight * v) / (np.float32(1.0) + weight)
        else:
            ev[h] = ev[h] + weight * v
        changed += 1
    return changed


@njit(cache=True)
def exchange_votes(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold, weight, bounded, mmd, mode):
    """One vote exchange between all modules (section 6): every module's votes from its
    evidences as they are, then each receiver's evidences updated.

    Parameters
    ----------
    obj : int32 (M, cap); loc : float32 (M, cap, 3); rot : float32 (M, cap, 9)
    ev : float32 (M, cap), updated in place
    n_rows : int64 (M,), rows in use per module
    sensed : float32 (M, 3), each module's sensed location this step
    sends : uint8 (M,), 1 for a module that votes this step (see the module notes)
    conn : uint8 (M, M), ``conn[r, s] = 1``: ``r`` receives the votes of ``s``
    threshold : float64; weight : float32; bounded : bool; mmd : float32
    mode : int, ``VOTE_TRANSPOSE`` or ``VOTE_ROTATE``

    Returns
    -------
    n_votes : int64 (M,), votes each module sent
    changed : int64 (M,), rows of each receiver whose evidence a vote changed
    """
    n_mod = obj.shape[0]
    n_votes = np.zeros(n_mod, np.int64)
    changed = np.zeros(n_mod, np.int64)
    for m in range(n_mod):
        if sends[m]:
            n_votes[m] = count_votes(obj[m], ev[m], n_rows[m], threshold)
    start = np.zeros(n_mod + 1, np.int64)
    for m in range(n_mod):
        start[m + 1] = start[m] + n_votes[m]
    total = start[n_mod]
    v_src = np.empty(total, np.int32)
    v_obj = np.empty(total, np.int32)
    v_loc = np.empty((total, 3), np.float32)
    v_rot = np.empty((total, 9), np.float32)
    v_conf = np.empty(total, np.float32)
    for m in range(n_mod):
        if n_votes[m] > 0:
            select_votes(obj[m], loc[m], rot[m], ev[m], n_rows[m], threshold, m, v_src, v_obj, v_loc, v_rot,
                         v_conf, start[m])
    if total == 0:
        return n_votes, changed
    p_obj = np.empty(total, np.int32)
    p_loc = np.empty((total, 3), np.float32)
    p_conf = np.empty(total, np.float32)
    taken = np.empty(obj.shape[1], np.float32)
    for r in range(n_mod):
        if not sends[r]:
            continue
        nv = 0
        for s in range(n_mod):
            if conn[r, s] == 0 or not sends[s]:
                continue
            dx = sensed[r, 0] - sensed[s, 0]
            dy = sensed[r, 1] - sensed[s, 1]
            dz = sensed[r, 2] - sensed[s, 2]
            for i in range(start[s], start[s + 1]):
                p_obj[nv] = v_obj[i]
                p_conf[nv] = v_conf[i]
                transform_vote(v_loc, v_rot, i, dx, dy, dz, mode, p_loc, nv)
                nv += 1
        if nv > 0:
            changed[r] = receive_votes(obj[r], loc[r], ev[r], n_rows[r], p_obj, p_loc, p_conf, nv, mmd, weight,
                                       bounded, taken)
    return n_votes, changed


def connectivity(spec, n_modules: int) -> np.ndarray:
    """The receive matrix ``conn`` (uint8 (M, M), receiver by sender) of a config value:
    ``"all"`` (every module receives every other's votes, tbp.monty's ``5lm_5sm``), ``None``
    (no voting: all zeros) or a list of M lists, list ``r`` the senders of module ``r``
    (tbp.monty's ``lm_to_lm_vote_matrix``). Raises ValueError on a malformed list."""
    conn = np.zeros((n_modules, n_modules), np.uint8)
    if spec is None:
        return conn
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"must be 'all', null or a list of {n_modules} lists of module indices, got {spec!r}")
        conn[:] = 1
        np.fill_diagonal(conn, 0)
        return conn
    if not isinstance(spec, (list, tuple)) or len(spec) != n_modules:
        raise ValueError(f"must be 'all', null or a list of {n_modules} lists (one per module), got {spec!r}")
    for r, senders in enumerate(spec):
        if not isinstance(senders, (list, tuple)):
            raise ValueError(f"entry {r} must be a list of module indices, got {senders!r}")
        for s in senders:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < n_modules:
                raise ValueError(f"entry {r}: module index {s!r} is not in 0..{n_modules - 1}")
            conn[r, s] = 1
    return conn
