"""Graph memory kernels: object models as tbp.monty builds them (spec §2.2–2.5).

Two model kinds, both over float32 observations already in one object's frame:

* **Unconstrained graph** (``GraphObjectModel``): ``thin_nodes`` is tbp.monty's
  greedy ``remove_close_points``. Observations are visited in order; one is
  rejected when an already accepted node lies closer than ``distance`` with a
  normal within ``normal_angle`` and every thresholded feature within its
  threshold. Accepted points live in a uniform hash grid (cell >= distance), so
  each candidate looks at the 27 cells around it instead of every accepted
  point: O(N) for surface data instead of tbp.monty's O(N²).
* **Constrained grid** (``GridObjectModel``): observations are binned into a
  ``V³`` voxel grid of side ``max_size``; per voxel the count, mean location,
  mean features and a pose-vector mean are kept, and the ``max_nodes`` voxels
  with the most observations are the nodes. The sparse grid is flat arrays
  sorted by the linear voxel key ``(gx·V + gy)·V + gz`` (no dict): a batch is
  binned by ``voxel_keys``, reduced per voxel by ``voxel_batch_means``, merged
  into the stored voxels by ``merge_voxels`` and the nodes picked by
  ``top_voxels``. Where tbp.monty 0.55's code differs from the spec's §2.5 (an
  older tbp.monty), this follows the code: orthonormal voxel poses, a
  count-weighted rotation mean for re-seen voxels (``pose_rotation_mean``), and
  ``torch.topk``'s order of tied voxels (``kernels.topk_order``).

Pose matrices are flattened rows ``[n̂, ĉ1, ĉ2]`` (9 float32). Circular feature
columns (hue) have range 1: distance ``min(|Δ|, 1 − |Δ|)``, mean via the angle
``2πh``.
"""

import math
from collections import namedtuple

import numpy as np
from numba import njit

from .topk_order import topk_order

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_TWO_PI = 2.0 * np.pi

# Hash multipliers for cell coordinates (Teschner et al. 2003); the table uses
# linear probing, so the hash only has to spread neighbouring cells.
_H1 = np.int64(73856093)
_H2 = np.int64(19349663)
_H3 = np.int64(83492791)

# Cell coordinates are kept below 2**40 in magnitude so that floor(x / cell)
# fits int64 with room for the ±1 neighbour offsets; a tiny ``distance`` on
# far-away points only makes cells coarser (still correct, just slower).
_MAX_CELL_COORD = float(2 ** 40)

_OFFSETS = np.array([0, -1, 1], np.int64)


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


@njit(cache=True)
def to_model_frame(location, pose, rotation_matrix):
    """Body-frame observations into the object's model frame (spec §2.2, no translation).

    Parameters
    ----------
    location : float32 (L, 3), world-frame points x
    pose : float32 (L, 3, 3), rows n̂, ĉ1, ĉ2 (world frame)
    rotation_matrix : float32 (3, 3), Q, the object's world orientation (x = Q·x_M)

    Returns ``(loc_m, pose_m)``: float32 (L, 3) with x_M = Qᵀ·x, and float32
    (L, 3, 3) with every row v_M = Qᵀ·v.
    """
    n = location.shape[0]
    loc_m = np.empty((n, 3), np.float32)
    pose_m = np.empty((n, 3, 3), np.float32)
    q = rotation_matrix
    for i in range(n):
        for j in range(3):
            # (Qᵀ x)_j = Σ_k Q[k, j] x_k
            loc_m[i, j] = q[0, j] * location[i, 0] + q[1, j] * location[i, 1] + q[2, j] * location[i, 2]
        for r in range(3):
            for j in range(3):
                pose_m[i, r, j] = q[0, j] * pose[i, r, 0] + q[1, j] * pose[i, r, 1] + q[2, j] * pose[i, r, 2]
    return loc_m, pose_m


# --------------------------------------------------------------------------------------
# Unconstrained graph: greedy thinning with a hash grid
# --------------------------------------------------------------------------------------


@njit(inline="always")
def _slot(cx, cy, cz, mask):
    h = (cx * _H1) ^ (cy * _H2) ^ (cz * _H3)
    return h & mask


@njit(inline="always")
def _find(keys, head, cx, cy, cz, mask):
    """Table slot of cell (cx, cy, cz): where it is, or the empty slot where it would go."""
    s = _slot(cx, cy, cz, mask)
    while head[s] >= 0:
        if keys[s, 0] == cx and keys[s, 1] == cy and keys[s, 2] == cz:
            return s
        s = (s + 1) & mask
    return s


@njit(inline="always")
def _cell(v, inv_cell):
    # float64 so the cell of a coordinate is exact enough that two points closer
    # than one cell can never land two cells apart.
    return np.int64(math.floor(np.float64(v) * inv_cell))


@njit(cache=True)
def thin_nodes(pos, normals, feat, n_old, distance, normal_angle, feat_thresholds, circular):
    """tbp.monty's greedy ``remove_close_points`` (spec §2.3–2.4): which rows become nodes.

    Parameters
    ----------
    pos : float32 (N, 3), candidate locations (old nodes first, then new observations)
    normals : float32 (N, 3), their surface normals
    feat : float32 (N, F), their features
    n_old : int, rows [0, n_old) are accepted without checking (existing nodes)
    distance : float32, location threshold (strict ``<``)
    normal_angle : float32, normal threshold in radians (``<=``); >= π ignores normals
    feat_thresholds : float32 (F,), per-column ``|Δ| <=`` thresholds; +inf ignores the column
    circular : bool (F,), columns with range 1 (hue): Δ = min(|Δ|, 1 − |Δ|)

    Returns bool (N,): ``keep[i]``. Row i >= n_old is rejected iff an already
    accepted row a has ‖x_i − x_a‖ < distance, angle(n_i, n_a) <= normal_angle
    and every thresholded feature within its threshold. A zero normal makes the
    angle undefined; like tbp.monty (NaN is never ``>`` the threshold) it then
    counts as close.
    """
    n = pos.shape[0]
    n_feat = feat.shape[1]
    keep = np.ones(n, np.bool_)
    n_old = min(max(n_old, 0), n)
    if n == 0 or not (distance > 0):  # nothing is closer than a distance <= 0 (or NaN)
        return keep

    # Cell size: slightly above ``distance`` (so rounding can never hide a
    # neighbour two cells away), and coarse enough that cell coordinates fit.
    maxabs = 0.0
    for i in range(n):
        for j in range(3):
            a = abs(np.float64(pos[i, j]))
            if a > maxabs:
                maxabs = a
    cell = max(np.float64(distance) * (1.0 + 1e-6), maxabs / _MAX_CELL_COORD)
    inv_cell = 1.0 / cell  # 0 when distance is +inf: one cell holds everything

    dist2 = np.float32(distance) * np.float32(distance)
    # angle(a, b) > thr  <=>  cos(angle) < cos(thr) for thr in [0, π); compared
    # as dot < cos(thr)·|a||b| to avoid an arccos and a division per pair.
    check_normals = normal_angle < np.pi
    cos_thr = np.float32(math.cos(normal_angle)) if normal_angle >= 0 else np.float32(2.0)
    norms = np.empty(n, np.float32)
    for i in range(n):
        norms[i] = np.float32(math.sqrt(normals[i, 0] * normals[i, 0] + normals[i, 1] * normals[i, 1]
                                        + normals[i, 2] * normals[i, 2]))
    # Columns with an infinite threshold are skipped outright.
    n_active = 0
    active = np.empty(n_feat, np.int64)
    for k in range(n_feat):
        if not (feat_thresholds[k] == np.inf):
            active[n_active] = k
            n_active += 1

    cap = 16
    while cap < 2 * n:
        cap *= 2
    mask = np.int64(cap - 1)
    keys = np.empty((cap, 3), np.int64)
    head = np.full(cap, -1, np.int32)   # first accepted point of the cell, -1 = empty slot
    nxt = np.full(n, -1, np.int32)      # next accepted point in the same cell

    for i in range(n):
        cx = _cell(pos[i, 0], inv_cell)
        cy = _cell(pos[i, 1], inv_cell)
        cz = _cell(pos[i, 2], inv_cell)
        if i >= n_old:
            rejected = False
            # Own cell first (offsets 0, -1, +1): a redundant point is usually
            # rejected there, before the other 26 cells are looked up.
            for tx in range(3):
                ox = _OFFSETS[tx]
                for ty in range(3):
                    oy = _OFFSETS[ty]
                    for tz in range(3):
                        oz = _OFFSETS[tz]
                        s = _find(keys, head, cx + ox, cy + oy, cz + oz, mask)
                        a = head[s]
                        while a >= 0:
                            dx = pos[i, 0] - pos[a, 0]
                            dy = pos[i, 1] - pos[a, 1]
                            dz = pos[i, 2] - pos[a, 2]
                            close = dx * dx + dy * dy + dz * dz < dist2
                            if close and check_normals:
                                nn = norms[i] * norms[a]
                                if nn > _ZERO:
                                    dot = (normals[i, 0] * normals[a, 0] + normals[i, 1] * normals[a, 1]
                                           + normals[i, 2] * normals[a, 2])
                                    close = dot >= cos_thr * nn
                            if close:
                                for kk in range(n_active):
                                    k = active[kk]
                                    d = abs(feat[i, k] - feat[a, k])
                                    if circular[k]:
                                        d = min(d, _ONE - d)
                                    if d > feat_thresholds[k]:
                                        close = False
                                        break
                            if close:
                                rejected = True
                                break
                            a = nxt[a]
                        if rejected:
                            break
                    if rejected:
                        break
                if rejected:
                    break
            if rejected:
                keep[i] = False
                continue
        # Accept: push onto its cell's list.
        s = _find(keys, head, cx, cy, cz, mask)
        if head[s] < 0:
            keys[s, 0] = cx
            keys[s, 1] = cy
            keys[s, 2] = cz
        nxt[i] = head[s]
        head[s] = i
    return keep


# --------------------------------------------------------------------------------------
# Constrained grid model
# --------------------------------------------------------------------------------------


@njit(cache=True)
def voxel_keys(location, scale, offset, voxels_per_dim):
    """Linear voxel key of every observation, -1 outside the grid (spec §2.5 step 1).

    Parameters
    ----------
    location : float32 (L, 3), model-frame points
    scale : float, 1 / voxel size (voxels per metre)
    offset : int64 (3,), fixed at the model's first build
    voxels_per_dim : int, V

    Returns int64 (L,): ``(gx·V + gy)·V + gz`` with ``g = rint(scale·x) + offset``
    (round half to even, float64 as tbp.monty's ``np.round`` on float64
    locations), or -1 where a component is outside [0, V).
    """
    n = location.shape[0]
    v = np.int64(voxels_per_dim)
    out = np.empty(n, np.int64)
    g = np.empty(3, np.int64)
    for i in range(n):
        inside = True
        for j in range(3):
            g[j] = np.int64(np.rint(np.float64(location[i, j]) * scale)) + offset[j]
            if g[j] < 0 or g[j] >= v:
                inside = False
        out[i] = (g[0] * v + g[1]) * v + g[2] if inside else -1
    return out


@njit(inline="always")
def _dot3(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@njit(inline="always")
def _cross3(a, b, out):
    out[0] = a[1] * b[2] - a[2] * b[1]
    out[1] = a[2] * b[0] - a[0] * b[2]
    out[2] = a[0] * b[1] - a[1] * b[0]


@njit(inline="always")
def _right_hand_angle(v1, v2, pn, tmp):
    """tbp.monty's ``get_right_hand_angle``: atan2((v1 × v2)·pn, v1·v2)."""
    _cross3(v1, v2, tmp)
    return math.atan2(_dot3(tmp, pn), _dot3(v1, v2))


@njit(inline="always")
def _normalise(v):
    norm = np.float32(math.sqrt(_dot3(v, v)))
    for j in range(3):
        v[j] = v[j] / norm


@njit(inline="always")
def _copy_row(dst, i, src, j):
    """``dst[i, :] = src[j, :]`` for 2-D arrays of equal width, element by element."""
    for c in range(dst.shape[1]):
        dst[i, c] = src[j, c]


@njit(cache=True)
def pose_vector_mean(pose, pfd, out):
    """tbp.monty's ``pose_vector_mean`` for the observations of one voxel (spec §2.5).

    Parameters
    ----------
    pose : float32 (m, 9), rows ``[n̂, ĉ1, ĉ2]`` in temporal order
    pfd : float32 (m,), pose_fully_defined as 0/1
    out : float32 (9,), receives the mean

    Returns ``(valid, use_cds)``: ``valid`` is False when every row is all zero
    (``out`` untouched); ``use_cds`` is False when the first curvature direction was
    taken from the first valid row instead of averaged (too few rows
    pose-fully-defined: ``sum(pfd) < m // 2``, integer division as in tbp.monty).
    Either way the result is tbp.monty 0.55's ``orthonormal_pose_vectors`` of the mean
    normal and that direction (``_orthonormal_pose``): a right-handed rotation.
    """
    m = pose.shape[0]
    valid = np.empty(m, np.int64)
    n_valid = 0
    for i in range(m):
        for j in range(9):
            if pose[i, j] != 0:
                valid[n_valid] = i
                n_valid += 1
                break
    if n_valid == 0:
        return False, False
    tmp = np.empty(3, np.float32)
    first = pose[valid[0]]
    c1_first = first[3:6]
    c2_first = first[6:9]
    # Keep the normals on the majority side of the first frame (the side is the
    # sign of the right-hand angle of (n̂_i, ĉ1_first) about ĉ2_first), so normals
    # from the two sides of a thin wall are not averaged.
    side = np.empty(n_valid, np.bool_)
    n_pos = 0
    for t in range(n_valid):
        side[t] = _right_hand_angle(pose[valid[t], 0:3], c1_first, c2_first, tmp) > 0
        if side[t]:
            n_pos += 1
    flip = n_pos < n_valid // 2 or n_pos == 0
    nbar = np.zeros(3, np.float32)
    for t in range(n_valid):
        if side[t] != flip:
            for j in range(3):
                nbar[j] += pose[valid[t], j]
    _normalise(nbar)  # the mean's length does not matter once normalised
    n_def = _ZERO
    for i in range(m):
        n_def += pfd[i]
    # element by element: a slice assignment compiles numba's shape-mismatch error
    # message (string formatting, ~2 s on a first run) into the kernel
    if n_def < np.float32(m // 2):
        _orthonormal_pose(nbar, c1_first, out)
        return True, False
    # Curvature directions are sign-ambiguous: flip each ĉ1 to agree with the
    # first ĉ2 about n̄ before averaging.
    c1bar = np.zeros(3, np.float32)
    for t in range(n_valid):
        c1 = pose[valid[t], 3:6]
        sgn = np.float32(-1.0) if _right_hand_angle(c1, c2_first, nbar, tmp) < 0 else _ONE
        for j in range(3):
            c1bar[j] += sgn * c1[j]
    _orthonormal_pose(nbar, c1bar, out)
    return True, True


@njit(cache=True, fastmath=False)
def _orthonormal_pose(normal, direction, out):
    """tbp.monty's ``orthonormal_pose_vectors``: ``out`` (9,) = ``[n̂, ĉ1, n̂ × ĉ1]``, a
    right-handed rotation, from a unit ``normal`` (3,) and a rough first curvature
    ``direction`` (3,): ĉ1 is ``direction`` projected onto the tangent plane and
    normalised. A projection shorter than 1e-6 (the direction holds nothing off the
    normal) falls back to tbp.monty's ``TangentFrame(n̂).basis_u``: ``normalise(a × n̂)``
    with ``a = (0, 1, 0)``, or ``(0, 0, 1)`` when n̂ is within acos(0.95) of it."""
    d = direction[0] * normal[0] + direction[1] * normal[1] + direction[2] * normal[2]
    t0 = direction[0] - d * normal[0]
    t1 = direction[1] - d * normal[1]
    t2 = direction[2] - d * normal[2]
    length = math.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    if length < 1e-6:
        if abs(normal[1]) > 0.95:  # a = (0, 0, 1): a × n̂ = (-n_y, n_x, 0)
            t0, t1, t2 = -normal[1], normal[0], _ZERO
        else:  # a = (0, 1, 0): a × n̂ = (n_z, 0, -n_x)
            t0, t1, t2 = normal[2], _ZERO, -normal[0]
        length = math.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
    c0, c1, c2 = t0 / length, t1 / length, t2 / length
    out[0], out[1], out[2] = normal[0], normal[1], normal[2]
    out[3], out[4], out[5] = c0, c1, c2
    out[6] = normal[1] * c2 - normal[2] * c1
    out[7] = normal[2] * c0 - normal[0] * c2
    out[8] = normal[0] * c1 - normal[1] * c0


@njit(cache=True, fastmath=False)
def _matrix_quaternion(m, q):
    """Unit quaternion ``q`` (4,) float64, (x, y, z, w), of the rotation matrix ``m`` (9,)
    (row-major), by scipy's ``Rotation.from_matrix`` rule: the largest of the diagonal
    and the trace picks the formula."""
    tr = m[0] + m[4] + m[8]
    if tr >= m[0] and tr >= m[4] and tr >= m[8]:
        q[0] = m[7] - m[5]
        q[1] = m[2] - m[6]
        q[2] = m[3] - m[1]
        q[3] = 1.0 + tr
    else:
        i = 0
        if m[4] > m[0]:
            i = 1
        if m[8] > m[4 * i]:
            i = 2
        j = (i + 1) % 3
        k = (j + 1) % 3
        q[i] = 1.0 - tr + 2.0 * m[4 * i]
        q[j] = m[3 * j + i] + m[3 * i + j]
        q[k] = m[3 * k + i] + m[3 * i + k]
        q[3] = m[3 * k + j] - m[3 * j + k]
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    for c in range(4):
        q[c] /= n


@njit(cache=True, fastmath=False)
def pose_rotation_mean(a, wa, b, wb, out):
    """tbp.monty's ``pose_vector_merge``: the weighted chordal (Markley) mean of two
    rotations, ``Rotation.from_matrix([a, b]).mean(weights=[wa, wb]).as_matrix()``.

    a, b : float32 (9,), right-handed pose rows ``[n̂, ĉ1, ĉ2]`` read as row-major 3x3
    matrices; wa, wb : their weights (observation counts, >= 0, not both 0);
    out : float32 (9,), receives the mean.

    The mean quaternion is the top eigenvector of ``wa qa qaᵀ + wb qb qbᵀ``, which lies in
    the plane of qa and qb: with ``c = qa·qb >= 0`` (qb's sign flipped if needed) its
    eigenvalue is ``λ = (wa + wb + sqrt((wa - wb)² + 4 wa wb c²)) / 2`` and it is
    ``(wa c) qa + (λ - wa) qb``, or ``(λ - wb) qa + (wb c) qb`` where that one is longer
    (the same vector; one of them vanishes when c = 0)."""
    qa = np.empty(4)
    qb = np.empty(4)
    _matrix_quaternion(a, qa)
    _matrix_quaternion(b, qb)
    c = qa[0] * qb[0] + qa[1] * qb[1] + qa[2] * qb[2] + qa[3] * qb[3]
    if c < 0.0:
        for i in range(4):
            qb[i] = -qb[i]
        c = -c
    wa = float(wa)
    wb = float(wb)
    lam = 0.5 * (wa + wb + math.sqrt((wa - wb) * (wa - wb) + 4.0 * wa * wb * c * c))
    s1, t1 = wa * c, lam - wa
    s2, t2 = lam - wb, wb * c
    if s2 * s2 + t2 * t2 > s1 * s1 + t1 * t1:
        s1, t1 = s2, t2
    q = np.empty(4)
    for i in range(4):
        q[i] = s1 * qa[i] + t1 * qb[i]
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    x, y, z, w = q[0] / n, q[1] / n, q[2] / n, q[3] / n
    out[0] = 1.0 - 2.0 * (y * y + z * z)
    out[1] = 2.0 * (x * y - z * w)
    out[2] = 2.0 * (x * z + y * w)
    out[3] = 2.0 * (x * y + z * w)
    out[4] = 1.0 - 2.0 * (x * x + z * z)
    out[5] = 2.0 * (y * z - x * w)
    out[6] = 2.0 * (x * z - y * w)
    out[7] = 2.0 * (y * z + x * w)
    out[8] = 1.0 - 2.0 * (x * x + y * y)


@njit(cache=True)
def voxel_batch_means(keys, location, pose, pfd, features, circular):
    """Per-voxel summary of one batch of observations (spec §2.5 step 3, new side).

    Parameters
    ----------
    keys : int64 (L,), from ``voxel_keys`` (rows with -1 are ignored)
    location : float32 (L, 3);  pose : float32 (L, 9);  pfd : float32 (L,) 0/1
    features : float32 (L, F);  circular : bool (F,)

    Returns, for the U distinct voxels in increasing key order:
    ``ukeys`` int64 (U,), ``counts`` int64 (U,), ``mloc`` float32 (U, 3) mean
    location, ``mfeat`` float32 (U, F) (circular columns: circular mean in
    [0, 1]; others: arithmetic mean), ``mpose`` float32 (U, 9) from
    ``pose_vector_mean`` (zeros where ``pose_valid`` is False), ``pose_valid``
    bool (U,), ``mpfd`` float32 (U,) majority of pfd (ties -> 1).
    """
    order_all = np.argsort(keys, kind="mergesort")  # stable: temporal order within a voxel
    start = 0
    while start < order_all.shape[0] and keys[order_all[start]] < 0:
        start += 1
    order = order_all[start:]
    n = order.shape[0]
    n_feat = features.shape[1]
    n_u = 0
    for t in range(n):
        if t == 0 or keys[order[t]] != keys[order[t - 1]]:
            n_u += 1
    ukeys = np.empty(n_u, np.int64)
    counts = np.zeros(n_u, np.int64)
    mloc = np.zeros((n_u, 3), np.float32)
    mfeat = np.zeros((n_u, n_feat), np.float32)
    mpose = np.zeros((n_u, 9), np.float32)
    pose_valid = np.zeros(n_u, np.bool_)
    mpfd = np.zeros(n_u, np.float32)
    sin_acc = np.zeros(n_feat, np.float32)
    cos_acc = np.zeros(n_feat, np.float32)
    u = 0
    t = 0
    while t < n:
        e = t
        while e < n and keys[order[e]] == keys[order[t]]:
            e += 1
        m = e - t
        idx = order[t:e]
        ukeys[u] = keys[order[t]]
        counts[u] = m
        inv_m = _ONE / np.float32(m)
        sin_acc[:] = _ZERO
        cos_acc[:] = _ZERO
        n_def = 0
        for r in range(m):
            i = idx[r]
            for j in range(3):
                mloc[u, j] += location[i, j]
            for k in range(n_feat):
                if circular[k]:
                    ang = np.float32(_TWO_PI) * features[i, k]
                    sin_acc[k] += np.float32(math.sin(ang))
                    cos_acc[k] += np.float32(math.cos(ang))
                else:
                    mfeat[u, k] += features[i, k]
            if pfd[i] != 0:
                n_def += 1
        for j in range(3):
            mloc[u, j] *= inv_m
        for k in range(n_feat):
            if circular[k]:
                a = math.atan2(sin_acc[k], cos_acc[k])  # scale by 1/m does not change atan2
                if a < 0:
                    a += _TWO_PI
                mfeat[u, k] = np.float32(a / _TWO_PI)
            else:
                mfeat[u, k] *= inv_m
        mpfd[u] = _ONE if 2 * n_def >= m else _ZERO
        sub_pose = np.empty((m, 9), np.float32)
        sub_pfd = np.empty(m, np.float32)
        for r in range(m):
            for j in range(9):  # not a row assignment: see pose_vector_mean
                sub_pose[r, j] = pose[idx[r], j]
            sub_pfd[r] = pfd[idx[r]]
        ok, _ = pose_vector_mean(sub_pose, sub_pfd, mpose[u])  # tbp.monty's merge ignores use_cds
        pose_valid[u] = ok
        u += 1
        t = e
    return ukeys, counts, mloc, mfeat, mpose, pose_valid, mpfd


#: The stored voxels of one object's grid, in increasing key order (K voxels):
#: ``keys`` int64 (K,), ``count`` int64 (K,), ``loc`` float32 (K, 3), ``feat``
#: float32 (K, F), ``pose`` float32 (K, 9), ``pfd`` float32 (K,).
VoxelGrid = namedtuple("VoxelGrid", ["keys", "count", "loc", "feat", "pose", "pfd"])

#: A batch summary, what ``voxel_batch_means`` returns, in its order (U voxels,
#: increasing keys): ``keys``, ``count``, ``loc``, ``feat``, ``pose`` as
#: ``VoxelGrid``, ``pose_valid`` bool (U,), ``pfd`` float32 (U,).
VoxelBatch = namedtuple("VoxelBatch", ["keys", "count", "loc", "feat", "pose", "pose_valid", "pfd"])


def merge_voxels(okeys, ocount, oloc, ofeat, opose, opfd,
                 nkeys, ncount, nloc, nfeat, npose, npose_valid, npfd):
    """Fold a batch summary into the stored voxels (spec §2.5 step 3, update side).

    A plain Python function: ``merge_voxel_grids(VoxelGrid(okeys, ...),
    VoxelBatch(nkeys, ...))``, the compiled kernel (call that from ``@njit`` code).

    Parameters: the stored grid ``okeys`` int64 (K,) increasing, ``ocount``
    int64 (K,), ``oloc`` float32 (K, 3), ``ofeat`` float32 (K, F), ``opose``
    float32 (K, 9), ``opfd`` float32 (K,); and a batch summary from
    ``voxel_batch_means`` (``nkeys`` increasing).

    Returns the merged ``VoxelGrid`` (a tuple ``(keys, count, loc, feat, pose, pfd)``),
    keys increasing; see ``merge_voxel_grids``.
    """
    return merge_voxel_grids(VoxelGrid(okeys, ocount, oloc, ofeat, opose, opfd),
                             VoxelBatch(nkeys, ncount, nloc, nfeat, npose, npose_valid, npfd))


@njit(cache=True)
def merge_voxel_grids(grid, batch):
    """Fold a batch summary (``VoxelBatch``) into the stored voxels (``VoxelGrid``).

    Returns the merged ``VoxelGrid``, keys increasing. A voxel only in one input
    is copied. A voxel in both gets count old + new and every value
    (new + old) / 2 — equal weighting, not count-weighted, and arithmetic for
    circular columns too, as tbp.monty does. The pose is tbp.monty 0.55's
    ``pose_vector_merge``: the count-weighted rotation mean of the new and the old
    pose (``pose_rotation_mean``, weights new count and old count), so it stays a
    rotation; no valid new rows -> the old pose; an all-zero old pose (a voxel
    first seen without pose) -> the new one. (The spec's §2.5, written from an older
    tbp.monty, averages the rows arithmetically and keeps the old curvature
    directions when the new ones were not averaged; that leaves non-unit, even
    near-zero, curvature directions where two sign-flipped ones meet, and every
    hypothesis compared with such a node loses its curvature evidence.)
    """
    okeys, ocount, oloc, ofeat, opose, opfd = grid
    nkeys, ncount, nloc, nfeat, npose, npose_valid, npfd = batch
    n_o = okeys.shape[0]
    n_n = nkeys.shape[0]
    n_feat = ofeat.shape[1]
    n_both = 0
    i = 0
    j = 0
    while i < n_o and j < n_n:
        if okeys[i] == nkeys[j]:
            n_both += 1
            i += 1
            j += 1
        elif okeys[i] < nkeys[j]:
            i += 1
        else:
            j += 1
    k_out = n_o + n_n - n_both
    keys = np.empty(k_out, np.int64)
    count = np.empty(k_out, np.int64)
    loc = np.empty((k_out, 3), np.float32)
    feat = np.empty((k_out, n_feat), np.float32)
    pose = np.empty((k_out, 9), np.float32)
    pfd = np.empty(k_out, np.float32)
    newpose = np.empty(9, np.float32)
    i = 0
    j = 0
    o = 0
    while i < n_o or j < n_n:
        take_old = j >= n_n or (i < n_o and okeys[i] < nkeys[j])
        take_new = i >= n_o or (j < n_n and nkeys[j] < okeys[i])
        # rows copied element by element (_copy_row): a row assignment compiles numba's
        # shape-mismatch error message (string formatting, ~2 s on a first run) into the kernel
        if take_old:
            keys[o] = okeys[i]
            count[o] = ocount[i]
            _copy_row(loc, o, oloc, i)
            _copy_row(feat, o, ofeat, i)
            _copy_row(pose, o, opose, i)
            pfd[o] = opfd[i]
            i += 1
        elif take_new:
            keys[o] = nkeys[j]
            count[o] = ncount[j]
            _copy_row(loc, o, nloc, j)
            _copy_row(feat, o, nfeat, j)
            _copy_row(pose, o, npose, j)
            pfd[o] = npfd[j]
            j += 1
        else:
            keys[o] = okeys[i]
            count[o] = ocount[i] + ncount[j]
            for c in range(3):
                loc[o, c] = (nloc[j, c] + oloc[i, c]) * _HALF
            for c in range(n_feat):
                feat[o, c] = (nfeat[j, c] + ofeat[i, c]) * _HALF
            old_zero = True
            for c in range(9):
                newpose[c] = opose[i, c]
                if opose[i, c] != 0:
                    old_zero = False
            if npose_valid[j] and old_zero:  # nothing stored to average with
                for c in range(9):
                    newpose[c] = npose[j, c]
            elif npose_valid[j]:
                pose_rotation_mean(npose[j], ncount[j], opose[i], ocount[i], newpose)
            for c in range(9):
                pose[o, c] = newpose[c]
            pfd[o] = (npfd[j] + opfd[i]) * _HALF
            i += 1
            j += 1
        o += 1
    return VoxelGrid(keys, count, loc, feat, pose, pfd)


@njit(cache=True)
def top_voxels(counts, max_nodes):
    """Rows of the ``max_nodes`` voxels with the most observations (spec §2.5 step 4).

    Parameters
    ----------
    counts : int64 (K,), per voxel in increasing key order
    max_nodes : int

    Returns int64 (min(K, max_nodes),): row indices by decreasing count, tied
    counts in the order tbp.monty's ``counts.topk(k)`` leaves them on the CPU
    (``kernels.topk_order``: which tied voxels at the cut become nodes, and the
    nodes' order, are torch's). A stable order by key instead kept the tied voxels
    of lowest key, whole regions of an object at the low-x side, and dropped the
    others: on a model full to ``max_nodes`` a quarter of the nodes were not
    tbp.monty's.
    """
    return topk_order(counts, min(counts.shape[0], max(max_nodes, 0)))
