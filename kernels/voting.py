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
its evidence. The search is a KD-tree per object over the receiver's votes
(``kernels.kdtree``, built inside the step) searched within the radius: only votes
closer than the radius can count, and the ``k`` nearest of all votes that lie in the
radius are the ``k`` nearest of the votes in the radius, so this gives tbp.monty's answer
exactly (ties in distance: the vote earlier in the pool, pooled sender by sender in
module order, each sender's votes in row order).

Who takes part (:func:`exchange_votes`): a module sends only when ``sends[m]`` (it
processed a feature step this step, having been on the object); a module receives only
when it sends too (tbp.monty: an LM whose own vote is ``None`` gets no votes) and
``conn[r, s]`` (uint8 (M, M), receiver by sender; tbp.monty's ``lm_to_lm_vote_matrix``
lists the senders of each receiver) connects it to a sending ``s``. Every vote is taken
from the evidences before any vote is received.

Work split (:func:`exchange_body`): the votes are selected module by module, each
receiver's pool is moved into its position and grouped by object receiver by receiver,
and the searches run as (receiver, object) tasks spread over one bin per thread by
estimated cost (:func:`plan_tasks`), so that five receivers on two threads do not split
three to two. Each loop is a ``prange`` in the episode kernel; the float arithmetic stays
in the ``fastmath=False`` kernels it calls.
"""

from collections import namedtuple

import numpy as np
from numba import njit, prange

from .kdtree import build_tree, knn_rows

# Every kernel here says fastmath=False explicitly: numba lets a callee that does not set it
# inherit the caller's fastmath, so the first compile from the fastmath episode kernel
# (kernels.evidence_voting) would otherwise leave a fused-multiply-add, reciprocal-division
# build in the dispatcher for later calls from Python: 1-ulp different evidences, and a scaled
# evidence of 1 + 1 ulp that passes a threshold of 1 (seen when tests ran in that order).
_PLAIN = {"cache": True, "fastmath": False}

#: where :func:`select_votes` writes votes: ``src``, ``obj`` int32 (V,), ``loc`` float32 (V, 3),
#: ``rot`` float32 (V, 9), ``conf`` float32 (V,): sender, object, location, rotation, confidence
VoteOut = namedtuple("VoteOut", "src obj loc rot conf")
#: how votes are received (:func:`receive_module`): ``weight`` float32, ``bounded`` bool,
#: ``mmd`` float32 (max_match_distance), ``mode`` int (``VOTE_TRANSPOSE`` or ``VOTE_ROTATE``)
Receiving = namedtuple("Receiving", "weight bounded mmd mode")

VOTE_TRANSPOSE = 0  # l' = l + R^T dp, tbp.monty's code
VOTE_ROTATE = 1     # l' = l + R dp
VOTE_K = 3          # nearest votes per hypothesis (tbp.monty's vote_nn)

_F0 = np.float32(0.0)


@njit(**_PLAIN)
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


@njit(**_PLAIN)
def scale_evidence(e, lo, hi):
    """tbp.monty's ``get_scaled_evidences`` of one evidence ``e`` (float64) given the module's
    range ``lo .. hi``: ``((e - lo) / (hi - lo) - 0.5) * 2`` when ``hi >= 1`` (NaN when
    ``hi == lo``, tbp.monty's 0 / 0), else ``e`` clipped to [-1, 1]."""
    if hi >= 1.0:
        if hi == lo:
            return np.nan
        return ((e - lo) / (hi - lo) - 0.5) * 2.0
    return min(max(e, -1.0), 1.0)


@njit(**_PLAIN)
def count_votes(obj, ev, n, threshold):
    """How many of the first ``n`` rows :func:`select_votes` would send (``threshold`` float64)."""
    lo, hi = evidence_range(obj, ev, n)
    return count_in_range(obj, ev, n, threshold, (lo, hi))


@njit(**_PLAIN)
def count_in_range(obj, ev, n, threshold, ev_range):
    """:func:`count_votes` given the module's evidence range ``ev_range = (lo, hi)`` (float64,
    from :func:`evidence_range`), so that the exchange computes it once per module."""
    lo, hi = ev_range
    c = 0
    for h in range(n):
        if obj[h] >= 0 and scale_evidence(np.float64(ev[h]), lo, hi) > threshold:
            c += 1
    return c


@njit(**_PLAIN)
def select_votes(obj, loc, rot, ev, n, threshold, sender, out, w):
    """One module's votes (the rows whose scaled evidence is above ``threshold``), in row
    order, written from slot ``w`` on; returns the slot after the last.

    Parameters
    ----------
    obj : int32 (>= n,); loc : float32 (>= n, 3); rot : float32 (>= n, 9); ev : float32 (>= n,)
        The module's hypothesis rows (dead rows, ``obj == -1``, never vote).
    n : int, rows in use; threshold : float64, ``vote_evidence_threshold``
    sender : int, the module's index
    out : VoteOut, written: sender, object, location, rotation and confidence of each vote
    """
    lo, hi = evidence_range(obj, ev, n)
    return select_in_range(obj, loc, rot, ev, n, threshold, sender, out, w, (lo, hi))


@njit(**_PLAIN)
def select_in_range(obj, loc, rot, ev, n, threshold, sender, out, w, ev_range):
    """:func:`select_votes` given the module's evidence range ``ev_range = (lo, hi)`` (float64,
    from :func:`evidence_range`), so that the exchange computes it once per module."""
    lo, hi = ev_range
    out_src, out_obj, out_loc, out_rot, out_conf = out
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


@njit(**_PLAIN)
def transform_vote(loc, rot, i, dx, dy, dz, mode, out, j):
    """``out[j] = loc[i] + V dp`` with ``V = rot[i]^T`` (``VOTE_TRANSPOSE``) or ``rot[i]``
    (``VOTE_ROTATE``); ``rot`` row-major float32 (V, 9), ``dp = (dx, dy, dz)`` float32."""
    for a in range(3):
        if mode == VOTE_TRANSPOSE:
            v = rot[i, a] * dx + rot[i, 3 + a] * dy + rot[i, 6 + a] * dz
        else:
            v = rot[i, 3 * a] * dx + rot[i, 3 * a + 1] * dy + rot[i, 3 * a + 2] * dz
        out[j, a] = loc[i, a] + v


@njit(**_PLAIN)
def receive_object(pts, conf, loc, rows, ev, mmd, weight, bounded, taken):
    """Receive one object's votes: add to the evidence of each of the receiver's ``rows`` (of
    that object) the best of its ``VOTE_K`` nearest votes within ``mmd``.

    Parameters
    ----------
    pts : float32 (V, 3); conf : float32 (V,)
        The object's votes, already moved into the receiver's position, in pool order.
    loc : float32 (>= n, 3); ev : float32 (>= n,), updated in place
        The receiver's rows.
    rows : int64 (Q,), the receiver's rows of this object (indices into ``loc`` / ``ev``)
    mmd : float32, ``max_match_distance``; weight : float32, ``vote_weight``
    bounded : bool, ``past_weight + present_weight == 1`` (average instead of add)
    taken : float32 (>= n,) or (0,)
        Written when not empty: the vote each row took (untouched where none).

    Returns the number of rows whose evidence a vote changed.

    A KD-tree over the votes (``kernels.kdtree``, pool order kept as the tree's input order,
    so equal distances go to the earlier vote) and one search of the rows for their
    ``VOTE_K`` nearest votes within the radius (votes at the radius itself are then dropped,
    as tbp.monty drops distances ``>= max_match_distance``).
    """
    nv = pts.shape[0]
    nq = rows.shape[0]
    if nv == 0 or nq == 0:
        return 0
    r2 = mmd * mmd
    tree = build_tree(pts)
    queries = np.empty((nq, 3), np.float32)
    for j in range(nq):
        for c in range(3):
            queries[j, c] = loc[rows[j], c]
    k = min(VOTE_K, nv)
    idx = np.empty((nq, k), np.int64)
    dist = np.empty((nq, k), np.float32)
    knn_rows(tree, queries, 0, nq, k, r2, idx, dist, np.empty(0, np.int64))
    changed = 0
    for j in range(nq):
        best = np.float32(-np.inf)
        found = False
        h = rows[j]
        for s in range(k):
            i = idx[j, s]
            if i < 0:
                continue
            # the radius test on the squared float32 distance (the tree reports distances)
            dx = pts[i, 0] - loc[h, 0]
            dy = pts[i, 1] - loc[h, 1]
            dz = pts[i, 2] - loc[h, 2]
            if not dx * dx + dy * dy + dz * dz < r2:
                continue
            c = conf[i]
            if not found or c > best:
                best = c
                found = True
        if not found:
            continue
        if taken.shape[0] > 0:
            taken[h] = best
        if bounded:
            ev[h] = (ev[h] + weight * best) / (np.float32(1.0) + weight)
        else:
            ev[h] = ev[h] + weight * best
        changed += 1
    return changed


@njit(**_PLAIN)
def group_by_object(obj, n, n_obj, order, at):
    """Counting sort of the live rows (``obj >= 0``) among the first ``n`` by object, each
    object's rows in row order: object ``o``'s rows are ``order[at[o] : at[o + 1]]``.
    ``obj`` int32 (>= n,); ``order`` int64 (>= live rows,) and ``at`` int64 (n_obj + 1,)
    written."""
    for o in range(n_obj + 1):
        at[o] = 0
    for h in range(n):
        if obj[h] >= 0:
            at[obj[h] + 1] += 1
    for o in range(n_obj):
        at[o + 1] += at[o]
    fill = at[:n_obj].copy()
    for h in range(n):
        o = obj[h]
        if o >= 0:
            order[fill[o]] = h
            fill[o] += 1


@njit(**_PLAIN)
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

    Returns the number of rows whose evidence a vote changed. Per object
    :func:`receive_object` over that object's votes, in pool order.
    """
    for h in range(n):
        taken[h] = np.nan
    if nv == 0 or n == 0:
        return 0
    n_obj = 0
    for i in range(nv):
        n_obj = max(n_obj, vobj[i] + 1)
    for h in range(n):
        n_obj = max(n_obj, obj[h] + 1)
    v_at = np.zeros(n_obj + 1, np.int64)
    v_order = np.empty(nv, np.int64)
    group_by_object(vobj, nv, n_obj, v_order, v_at)
    h_at = np.zeros(n_obj + 1, np.int64)
    h_order = np.empty(n, np.int64)
    group_by_object(obj, n, n_obj, h_order, h_at)
    changed = 0
    for o in range(n_obj):
        a, b = v_at[o], v_at[o + 1]
        if a == b or h_at[o] == h_at[o + 1]:
            continue
        pts = np.empty((b - a, 3), np.float32)
        conf = np.empty(b - a, np.float32)
        for j in range(a, b):
            for c in range(3):
                pts[j - a, c] = vloc[v_order[j], c]
            conf[j - a] = vconf[v_order[j]]
        changed += receive_object(pts, conf, loc, h_order[h_at[o]:h_at[o + 1]], ev, mmd, weight, bounded, taken)
    return changed


@njit(**_PLAIN)
def pool_receiver(r, sensed, sends, conn, votes, mode, n_obj, p_loc, p_conf, p0, at):
    """Receiver ``r``'s pool: the votes of its sending senders (``votes``: ``(start, v_obj,
    v_loc, v_rot, v_conf)``, sender ``s``'s votes ``start[s] .. start[s + 1]``), sender by sender in module order, each moved into
    ``r``'s position (:func:`transform_vote`) and grouped by object (a counting sort, pool
    order kept inside each object): object ``o``'s votes are rows ``p0 + at[o] .. p0 + at[o +
    1]`` of ``p_loc`` float32 (P, 3) and ``p_conf`` float32 (P,). ``at`` int64 (n_obj + 1,)
    written."""
    start, v_obj, v_loc, v_rot, v_conf = votes
    n_mod = conn.shape[0]
    for o in range(n_obj + 1):
        at[o] = 0
    if not sends[r]:
        return
    for s in range(n_mod):
        if conn[r, s] != 0 and sends[s]:
            for i in range(start[s], start[s + 1]):
                at[v_obj[i] + 1] += 1
    for o in range(n_obj):
        at[o + 1] += at[o]
    fill = at[:n_obj].copy()
    for s in range(n_mod):
        if conn[r, s] == 0 or not sends[s]:
            continue
        dx = sensed[r, 0] - sensed[s, 0]
        dy = sensed[r, 1] - sensed[s, 1]
        dz = sensed[r, 2] - sensed[s, 2]
        for i in range(start[s], start[s + 1]):
            o = v_obj[i]
            j = p0 + fill[o]
            fill[o] += 1
            p_conf[j] = v_conf[i]
            transform_vote(v_loc, v_rot, i, dx, dy, dz, mode, p_loc, j)


@njit(**_PLAIN)
def plan_tasks(v_at, h_at, n_bins):
    """Spread the receive tasks over ``n_bins`` bins of about equal cost.

    A task is one (receiver, object) with votes and rows (``v_at`` / ``h_at`` int64 (M,
    O + 1): each receiver's per-object offsets of votes and rows). Its cost is estimated as
    ``votes + rows`` (the tree's build and the rows' searches); tasks go, largest first, to
    the bin with the least cost so far (longest processing time first). Returns
    ``(task_r, task_o, bin_at, bin_task)``: int64 (K,) each task's receiver and object, and
    bin ``b``'s tasks ``bin_task[bin_at[b] : bin_at[b + 1]]``.
    """
    n_mod, n_obj1 = v_at.shape
    n_tasks = 0
    for r in range(n_mod):
        for o in range(n_obj1 - 1):
            if v_at[r, o + 1] > v_at[r, o] and h_at[r, o + 1] > h_at[r, o]:
                n_tasks += 1
    task_r = np.empty(n_tasks, np.int64)
    task_o = np.empty(n_tasks, np.int64)
    cost = np.empty(n_tasks, np.int64)
    k = 0
    for r in range(n_mod):
        for o in range(n_obj1 - 1):
            nv = v_at[r, o + 1] - v_at[r, o]
            nq = h_at[r, o + 1] - h_at[r, o]
            if nv > 0 and nq > 0:
                task_r[k] = r
                task_o[k] = o
                cost[k] = nv + nq
                k += 1
    order = np.argsort(-cost, kind="mergesort")
    load = np.zeros(n_bins, np.int64)
    bin_of = np.empty(n_tasks, np.int64)
    bin_at = np.zeros(n_bins + 1, np.int64)
    for t in order:
        b = np.argmin(load)
        load[b] += cost[t]
        bin_of[t] = b
        bin_at[b + 1] += 1
    for b in range(n_bins):
        bin_at[b + 1] += bin_at[b]
    fill = bin_at[:n_bins].copy()
    bin_task = np.empty(n_tasks, np.int64)
    for t in order:
        bin_task[fill[bin_of[t]]] = t
        fill[bin_of[t]] += 1
    return task_r, task_o, bin_at, bin_task


@njit(inline="always")
def exchange_body(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold, rcv, n_obj, n_bins):
    """:func:`exchange_votes`'s work, its loops over modules, receivers and task bins written
    with ``prange``: inlined into a ``parallel=True`` kernel they run in parallel, in
    :func:`exchange_votes` one after another. Only bookkeeping is inlined: every float
    operation is in the ``fastmath=False`` kernels it calls, so the result does not depend on
    the caller's fastmath. ``n_obj``: objects (every ``obj`` below it); ``n_bins``: task bins
    (the threads). Returns :func:`exchange_votes`'s ``(n_votes, changed)``."""
    weight, bounded, mmd, mode = rcv
    n_mod = obj.shape[0]
    # 1. every module's votes (each module's own rows; writes its own slots)
    counts = np.zeros(n_mod, np.int64)
    ev_lo = np.empty(n_mod, np.float64)
    ev_hi = np.empty(n_mod, np.float64)
    for m in prange(n_mod):
        if sends[m]:
            lo, hi = evidence_range(obj[m], ev[m], n_rows[m])
            ev_lo[m] = lo
            ev_hi[m] = hi
            counts[m] = count_in_range(obj[m], ev[m], n_rows[m], threshold, (lo, hi))
    start = np.zeros(n_mod + 1, np.int64)
    for m in range(n_mod):
        start[m + 1] = start[m] + counts[m]
    total = start[n_mod]
    v_src = np.empty(total, np.int32)
    v_obj = np.empty(total, np.int32)
    v_loc = np.empty((total, 3), np.float32)
    v_rot = np.empty((total, 9), np.float32)
    v_conf = np.empty(total, np.float32)
    out = VoteOut(v_src, v_obj, v_loc, v_rot, v_conf)
    for m in prange(n_mod):
        if counts[m] > 0:
            select_in_range(obj[m], loc[m], rot[m], ev[m], n_rows[m], threshold, m, out, start[m],
                            (ev_lo[m], ev_hi[m]))
    votes = (start, v_obj, v_loc, v_rot, v_conf)
    # 2. each receiver's pool, moved into its position, and its rows, grouped by object
    p_start = np.zeros(n_mod + 1, np.int64)
    h_start = np.zeros(n_mod + 1, np.int64)
    for r in range(n_mod):
        c = 0
        if sends[r]:
            for s in range(n_mod):
                if conn[r, s] != 0 and sends[s]:
                    c += counts[s]
        p_start[r + 1] = p_start[r] + c
        h_start[r + 1] = h_start[r] + (n_rows[r] if c > 0 else 0)
    p_loc = np.empty((p_start[n_mod], 3), np.float32)
    p_conf = np.empty(p_start[n_mod], np.float32)
    h_order = np.empty(h_start[n_mod], np.int64)
    v_at = np.zeros((n_mod, n_obj + 1), np.int64)
    h_at = np.zeros((n_mod, n_obj + 1), np.int64)
    for r in prange(n_mod):
        if p_start[r + 1] > p_start[r]:
            pool_receiver(r, sensed, sends, conn, votes, mode, n_obj, p_loc, p_conf, p_start[r], v_at[r])
            group_by_object(obj[r], n_rows[r], n_obj, h_order[h_start[r]:h_start[r + 1]], h_at[r])
    # 3. (receiver, object) tasks in bins of about equal cost, a bin per thread; each task
    # writes only its own rows' evidences
    task_r, task_o, bin_at, bin_task = plan_tasks(v_at, h_at, n_bins)
    task_changed = np.zeros(task_r.shape[0], np.int64)
    for b in prange(n_bins):
        for j in range(bin_at[b], bin_at[b + 1]):
            t = bin_task[j]
            r = task_r[t]
            o = task_o[t]
            a = p_start[r] + v_at[r, o]
            e = p_start[r] + v_at[r, o + 1]
            ha = h_start[r] + h_at[r, o]
            he = h_start[r] + h_at[r, o + 1]
            task_changed[t] = receive_object(p_loc[a:e], p_conf[a:e], loc[r], h_order[ha:he], ev[r], mmd, weight,
                                             bounded, np.empty(0, np.float32))
    changed = np.zeros(n_mod, np.int64)
    for t in range(task_r.shape[0]):
        changed[task_r[t]] += task_changed[t]
    return counts, changed


@njit(**_PLAIN)
def exchange_votes(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold, rcv):
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
    threshold : float64, ``vote_evidence_threshold``
    rcv : Receiving (:func:`receiving`): vote_weight, bounded, max_match_distance, transform mode

    Returns
    -------
    n_votes : int64 (M,), votes each module sent
    changed : int64 (M,), rows of each receiver whose evidence a vote changed

    The episode kernel (``kernels.evidence_voting``) runs the same body with its loops in
    parallel (:func:`exchange_body`).
    """
    n_obj = 0
    for m in range(obj.shape[0]):
        for h in range(n_rows[m]):
            n_obj = max(n_obj, obj[m, h] + 1)
    return exchange_body(obj, loc, rot, ev, n_rows, sensed, sends, conn, threshold, rcv, n_obj, 1)


def receiving(weight, bounded, mmd, mode) -> Receiving:
    """A :class:`Receiving` of the kernels' dtypes (one compiled signature whatever the caller
    passes)."""
    return Receiving(np.float32(weight), bool(bounded), np.float32(mmd), np.int64(mode))


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
