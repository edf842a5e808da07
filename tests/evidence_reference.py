"""Slow, spec-literal references for tbp.monty's evidence matching.

Written for clarity, not speed: plain Python loops and NumPy in float64, following
``/work/shared/docs/evidence-matching.md`` (§1, §3, §4, §5) formula by formula.
In particular the pose evidence uses ``arccos``/``sin`` exactly as §4.6 writes them
(NOT the trig-free identities), so a kernel built on the identities is cross-checked
by an independent route. Nothing here imports the engine or its kernels.

Conventions (spec §1.1):

* a pose matrix has **rows** ``n̂`` (normal), ``ĉ1``, ``ĉ2``;
* a hypothesis rotation ``R`` maps body vectors into the model frame, ``v_M = R v_B``;
* evidence is float64, unbounded.

Index conventions: hypotheses of one object are a flat axis ``h``; informed
hypotheses are rotation-major (``h = r * k + j``, §3.2 / §3.6 step 4).
"""

import math

import numpy as np

__all__ = [
    "log_sign",
    "candidate_frames",
    "informed_hypotheses",
    "feature_evidence",
    "burst_nodes",
    "is_valid_burst_selection",
    "evidence_delta",
    "displace",
    "slope",
    "retain_mask",
    "possible_objects",
    "pose_candidates",
    "poses_unique",
    "symmetry_step",
    "rotation_error_deg",
    "rotation_angle",
]


def _angle(a, b):
    """Angle between vectors a and b as the spec writes it: arccos(clip(a·b, -1, 1))."""
    return math.acos(min(1.0, max(-1.0, float(np.dot(a, b)))))


# --------------------------------------------------------------------------------------
# §1.2 sensor contract
# --------------------------------------------------------------------------------------


def log_sign(k):
    """``sign(k) * ln(1 + |k|)`` elementwise (§1.2, ``principal_curvatures_log``).

    k: scalar or array of any shape. Returns float64 of the same shape.
    Odd function: ``log_sign(-k) == -log_sign(k)``; ``log_sign(0) == 0``.
    """
    k = np.asarray(k, dtype=np.float64)
    return np.sign(k) * np.log1p(np.abs(k))


# --------------------------------------------------------------------------------------
# §3 hypothesis initialization
# --------------------------------------------------------------------------------------


def candidate_frames(sensed_pose, pose_defined, umbilical_num_poses=8):
    """Candidate sensed frames ``S^(r)`` (§3.1).

    sensed_pose: (3,3), rows ``ŝn, ŝc1, ŝc2``.
    pose_defined: bool, the sensed ``pose_fully_defined``.

    Returns (r,3,3) float64:

    * pose_defined → r = 2: ``S`` and ``diag(1,-1,-1) · S`` (curvature directions negated);
    * otherwise → r = U: for ``α_j = 2πj/U`` the rows ``ŝn``,
      ``a_j = cos α_j ŝc1 + sin α_j ŝc2`` and ``ŝn × a_j``.
    """
    S = np.asarray(sensed_pose, dtype=np.float64).reshape(3, 3)
    if pose_defined:
        return np.stack([S.copy(), np.diag([1.0, -1.0, -1.0]) @ S])
    U = int(umbilical_num_poses)
    n, c1, c2 = S[0], S[1], S[2]
    frames = np.empty((U, 3, 3))
    for j in range(U):
        alpha = 2.0 * math.pi * j / U
        a = math.cos(alpha) * c1 + math.sin(alpha) * c2
        frames[j, 0] = n
        frames[j, 1] = a
        frames[j, 2] = np.cross(n, a)
    return frames


def informed_hypotheses(node_pos, node_pose, nodes, frames):
    """Informed hypotheses for the selected nodes (§3.2, §3.6 step 4).

    node_pos: (N,3) node locations (model frame).
    node_pose: (N,3,3) stored pose matrices ``P_n`` (rows ``n̂, ĉ1, ĉ2``).
    nodes: (k,) int node indices (order kept).
    frames: (r,3,3) candidate sensed frames from :func:`candidate_frames`.

    Returns ``loc`` (r*k, 3) and ``rot`` (r*k, 3, 3), rotation-major:
    ``h = ri * k + j``, ``rot[h] = P_{nodes[j]}ᵀ · S^(ri)``,
    ``loc[h] = node_pos[nodes[j]]``. With orthonormal frames ``rot[h]`` maps each sensed
    row onto the stored row (``R ŝn = n̂``, ``R ŝc1 = ĉ1``, ``R ŝc2 = ĉ2``).
    """
    node_pos = np.asarray(node_pos, dtype=np.float64)
    node_pose = np.asarray(node_pose, dtype=np.float64).reshape(-1, 3, 3)
    nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
    frames = np.asarray(frames, dtype=np.float64).reshape(-1, 3, 3)
    k, r = len(nodes), len(frames)
    loc = np.empty((r * k, 3))
    rot = np.empty((r * k, 3, 3))
    for ri in range(r):
        for j in range(k):
            h = ri * k + j
            n = nodes[j]
            loc[h] = node_pos[n]
            rot[h] = node_pose[n].T @ frames[ri]
    return loc, rot


# --------------------------------------------------------------------------------------
# §4.7 feature evidence
# --------------------------------------------------------------------------------------


def feature_evidence(node_feat, obs_feat, tolerances, weights, circular, increment=1.0):
    """Node feature evidence ``φ`` (§4.7).

    node_feat: (N,F) stored features; obs_feat: (F,) observed features;
    tolerances ``τ`` (F,), weights ``ω`` (F,), circular (F,) bool — True for hue-like
    columns of range 1.

    Per column: numeric ``Δ = |f_j - f_obs|``; circular
    ``Δ = min(|1 + f_j - f_obs|, |f_j - f_obs|, |f_j - (f_obs + 1)|)``;
    ``a = max(τ - Δ, 0) / τ``. Returns (N,) ``φ_j = ι Σ_k ω_k a_k / Σ_k ω_k``
    (NaN where a stored feature is NaN).
    """
    node_feat = np.asarray(node_feat, dtype=np.float64)
    if node_feat.ndim == 1:
        node_feat = node_feat[:, None]
    obs = np.asarray(obs_feat, dtype=np.float64).reshape(-1)
    tol = np.asarray(tolerances, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    circ = np.asarray(circular, dtype=bool).reshape(-1)
    N, F = node_feat.shape
    wsum = float(np.sum(w))
    phi = np.empty(N)
    for j in range(N):
        total = 0.0
        for c in range(F):
            fj, fo = node_feat[j, c], obs[c]
            if circ[c]:
                delta = min(abs(1.0 + fj - fo), abs(fj - fo), abs(fj - (fo + 1.0)))
            else:
                delta = abs(fj - fo)
            a = max(tol[c] - delta, 0.0) / tol[c] if not math.isnan(delta) else math.nan
            total += w[c] * a
        phi[j] = increment * total / wsum
    return phi


# --------------------------------------------------------------------------------------
# §3.6 burst sampling: which nodes
# --------------------------------------------------------------------------------------


def burst_nodes(phi, n_nodes, pose_defined, sampling_multiplier=0.4, umbilical_num_poses=8):
    """Nodes sampled on a burst step (§3.6 steps 1-3).

    phi: (N,) node feature evidence; n_nodes: N (the model's node count).

    1. ``h_per_node = 2`` if pose_defined else ``U``;
    2. ``count = round(N * min(m, h_per_node))`` (Python ``round``, i.e. half-to-even as
       in tbp.monty), ``count -= count % h_per_node``;
    3. ``k_nodes = count // h_per_node``; the ``k_nodes`` nodes with the highest ``φ``.

    Returns ``(k_nodes, h_per_node, selected, threshold)``:
    ``selected`` = (k_nodes,) int64 node ids, **sorted ascending** (a set; the order in
    which a kernel lists them is free, ties are implementation-defined — here the stable
    ascending argsort's last k_nodes); ``threshold`` = the smallest ``φ`` among the
    selected (``+inf`` when k_nodes == 0). Any valid selection consists of nodes with
    ``φ >= threshold`` and leaves out only nodes with ``φ <= threshold``; see
    :func:`is_valid_burst_selection`.
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    N = int(n_nodes)
    h_per_node = 2 if pose_defined else int(umbilical_num_poses)
    count = round(N * min(sampling_multiplier, h_per_node))
    count -= count % h_per_node
    k_nodes = count // h_per_node
    if k_nodes <= 0:
        return 0, h_per_node, np.empty(0, dtype=np.int64), math.inf
    order = np.argsort(phi, kind="stable")
    chosen = order[len(order) - k_nodes:]
    selected = np.sort(chosen).astype(np.int64)
    threshold = float(np.min(phi[selected]))
    return k_nodes, h_per_node, selected, threshold


def is_valid_burst_selection(phi, selected, k_nodes):
    """True iff ``selected`` is *a* valid top-``k_nodes`` set of ``phi`` (any tie-break).

    Distinct ids, exactly k_nodes of them, and ``min φ[selected] >= max φ[rest]``.
    """
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    sel = np.asarray(selected, dtype=np.int64).reshape(-1)
    if len(sel) != k_nodes or len(np.unique(sel)) != len(sel):
        return False
    if k_nodes == 0:
        return True
    rest = np.setdiff1d(np.arange(len(phi)), sel)
    if len(rest) == 0:
        return True
    return bool(np.min(phi[sel]) >= np.max(phi[rest]))


# --------------------------------------------------------------------------------------
# §4.2 and §4.4-4.8 evidence update
# --------------------------------------------------------------------------------------


def displace(hyp_loc, hyp_rot, d):
    """Path integration (§4.2): ``ℓ_h + R_h d`` for every hypothesis.

    hyp_loc (H,3), hyp_rot (H,3,3), d (3,) body-frame displacement → (H,3).
    """
    loc = np.asarray(hyp_loc, dtype=np.float64).reshape(-1, 3)
    rot = np.asarray(hyp_rot, dtype=np.float64).reshape(-1, 3, 3)
    d = np.asarray(d, dtype=np.float64).reshape(3)
    out = np.empty_like(loc)
    for h in range(len(loc)):
        out[h] = loc[h] + rot[h] @ d
    return out


def evidence_delta(
    node_pos,
    node_pose,
    node_pfd,
    phi,
    hyp_loc,
    hyp_rot,
    sensed_pose,
    pose_defined,
    kappa,
    max_match_distance=0.01,
    k=5,
    w_n=1.0,
    w_c=1.0,
):
    """Evidence change ``ΔE`` of every hypothesis of ONE object (§4.4-4.8).

    node_pos (N,3), node_pose (N,3,3) rows ``n̂, ĉ1, ĉ2``, node_pfd (N,) 0/1,
    phi (N,) feature evidence (§4.7).
    hyp_loc (H,3): the already displaced search locations; hyp_rot (H,3,3), ``v_M = R v_B``.
    sensed_pose (3,3) rows ``ŝn, ŝc1, ŝc2``; pose_defined: sensed ``b``;
    kappa: ``κ = max(|pcl1|, |pcl2|)``.

    Per hypothesis h: ``q = R ŝn``, ``c = R ŝc1``; the ``K = min(k, N)`` Euclidean-nearest
    nodes (brute force, stable argsort by distance → lower node index first on ties);
    for each: ``δ = p_j - ℓ``, ``D = |δ| + |δ·q| / (|κ| + 0.5)``, in radius iff
    ``D < mmd``; ``θ_n = arccos(clip(n̂_j·q))``, ``e_n = 0.5 - sin(θ_n/2)``; if b:
    ``θ_c = arccos(clip(ĉ1_j·c))``, ``ε = π/2 - |θ_c - π/2|``,
    ``e_c = (0.5 - sin ε) u_j``, else ``e_c = 0``; ``pose = w_n e_n + w_c e_c``;
    ``ev = pose + φ_j`` if in radius else ``-1``.

    Returns (H,) ``ΔE_h = max over the K neighbours`` (``-1`` if N == 0).
    """
    node_pos = np.asarray(node_pos, dtype=np.float64).reshape(-1, 3)
    node_pose = np.asarray(node_pose, dtype=np.float64).reshape(-1, 3, 3)
    node_pfd = np.asarray(node_pfd, dtype=np.float64).reshape(-1)
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    hyp_loc = np.asarray(hyp_loc, dtype=np.float64).reshape(-1, 3)
    hyp_rot = np.asarray(hyp_rot, dtype=np.float64).reshape(-1, 3, 3)
    S = np.asarray(sensed_pose, dtype=np.float64).reshape(3, 3)
    sn, sc1 = S[0], S[1]
    N, H = len(node_pos), len(hyp_loc)
    K = min(int(k), N)
    flat = 1.0 / (abs(float(kappa)) + 0.5)
    out = np.full(H, -1.0)
    for h in range(H):
        loc, R = hyp_loc[h], hyp_rot[h]
        q = R @ sn
        c = R @ sc1
        dist = np.array(
            [math.sqrt(float(np.sum((node_pos[j] - loc) ** 2))) for j in range(N)]
        )
        neighbours = np.argsort(dist, kind="stable")[:K]
        best = -math.inf
        for j in neighbours:
            delta = node_pos[j] - loc
            D = math.sqrt(float(np.dot(delta, delta))) + abs(float(np.dot(delta, q))) * flat
            if D < max_match_distance:
                theta_n = _angle(node_pose[j, 0], q)
                e_n = 0.5 - math.sin(theta_n / 2.0)
                if pose_defined:
                    theta_c = _angle(node_pose[j, 1], c)
                    eps = math.pi / 2.0 - abs(theta_c - math.pi / 2.0)
                    e_c = (0.5 - math.sin(eps)) * node_pfd[j]
                else:
                    e_c = 0.0
                ev = w_n * e_n + w_c * e_c + phi[j]
            else:
                ev = -1.0
            best = max(best, ev)
        if K > 0:
            out[h] = best
    return out


# --------------------------------------------------------------------------------------
# §4.10 slope tracker
# --------------------------------------------------------------------------------------


def slope(buf, age=None, window=10, chan=None):
    """Evidence slope per hypothesis (§4.10, the literal definition).

    buf: (H,W) recent evidences in chronological order (last column = newest), NaN for
    slots not yet written; only the last ``window`` columns are used.
    age: (H,) accepted for signature compatibility and NOT used — the literal
    definition reads validity from the NaN pattern only (so this reference stays
    independent of the O(1) ``age``-based telescoping formula).
    chan: optional (W,) channel counts per slot (default all 1).

    ``σ_h`` = NaN-ignoring mean over ``w = 1..W-1`` of ``(buf[h,w] - buf[h,w-1]) / chan[w]``;
    NaN when no difference is valid (fewer than 2 consecutive valid entries).
    Returns (H,) float64.
    """
    del age
    buf = np.asarray(buf, dtype=np.float64)
    if buf.ndim == 1:
        buf = buf[None, :]
    if buf.shape[1] > window:
        buf = buf[:, -window:]
    H, W = buf.shape
    chan = np.ones(W) if chan is None else np.asarray(chan, dtype=np.float64)[-W:]
    out = np.full(H, np.nan)
    for h in range(H):
        diffs = []
        for w in range(1, W):
            dlt = (buf[h, w] - buf[h, w - 1]) / chan[w]
            if not math.isnan(dlt):
                diffs.append(dlt)
        if diffs:
            out[h] = sum(diffs) / len(diffs)
    return out


def retain_mask(slopes, age, deletion_trigger_slope=0.5, min_age=5):
    """Deletion rule (§4.10): keep h iff ``σ_h >= deletion_slope`` or ``age_h < min_age``.

    NaN slopes compare False, so a NaN-slope hypothesis is kept only while young.
    Returns (H,) bool.
    """
    s = np.asarray(slopes, dtype=np.float64).reshape(-1)
    a = np.asarray(age).reshape(-1)
    keep = [(s[i] >= deletion_trigger_slope) or (a[i] < min_age) for i in range(len(s))]
    return np.array(keep, dtype=bool)


# --------------------------------------------------------------------------------------
# §5 terminal conditions and scoring
# --------------------------------------------------------------------------------------


def possible_objects(object_max, x_percent=20.0):
    """Object-level possible matches (§5.2, ``_threshold_possible_matches``).

    object_max: (O,) per-object maxima ``G_o``, NaN for an object with no hypotheses
    (skipped: never possible, and not part of the std / max).
    With ``G`` the non-NaN values, ``M = max G``, ``s = std(G)`` (population):

    * ``s > 0.1`` or ``M < 0``: ``t = M - M x/100`` if ``M > 0`` else 0; possible iff ``G > t``;
    * else if exactly one object is in memory (O == 1): possible iff ``G >= 0``;
    * else every object with hypotheses is possible.

    Returns (O,) bool (all False if no object has hypotheses).
    """
    g_all = np.asarray(object_max, dtype=np.float64).reshape(-1)
    O = len(g_all)
    valid = [o for o in range(O) if not math.isnan(g_all[o])]
    out = np.zeros(O, dtype=bool)
    if not valid:
        return out
    G = np.array([g_all[o] for o in valid])
    M = float(np.max(G))
    s = float(np.std(G))
    if s > 0.1 or M < 0:
        t = M - M * x_percent / 100.0 if M > 0 else 0.0
        for o in valid:
            out[o] = g_all[o] > t
    elif O == 1:
        for o in valid:
            out[o] = g_all[o] >= 0
    else:
        for o in valid:
            out[o] = True
    return out


def pose_candidates(ev, x_percent, object_evidence_threshold=1.0):
    """Pose-level possible set ``P_o`` of the single candidate object (§5.3).

    ev: (H,) evidences of that object. With ``G = max ev``: if
    ``G > object_evidence_threshold`` → ``E_h > G - G x/100``, else empty.
    Returns (H,) bool.
    """
    ev = np.asarray(ev, dtype=np.float64).reshape(-1)
    out = np.zeros(len(ev), dtype=bool)
    if len(ev) == 0:
        return out
    G = float(np.max(ev))
    if G > object_evidence_threshold:
        t = G - G * x_percent / 100.0
        for h in range(len(ev)):
            out[h] = ev[h] > t
    return out


def _as_index_set(c):
    c = np.asarray(c)
    if c.dtype == bool:
        return set(np.flatnonzero(c).tolist())
    return set(c.reshape(-1).astype(np.int64).tolist())


def rotation_angle(a, b):
    """Geodesic angle (radians) between 3×3 matrices: ``arccos(clip((tr(aᵀ b) - 1)/2))``."""
    a = np.asarray(a, dtype=np.float64).reshape(3, 3)
    b = np.asarray(b, dtype=np.float64).reshape(3, 3)
    return math.acos(min(1.0, max(-1.0, (float(np.trace(a.T @ b)) - 1.0) / 2.0)))


def poses_unique(rot, loc, candidates, mlh_index,
                 path_similarity_threshold=0.1, pose_similarity_threshold=0.35):
    """Pose uniqueness test (§5.3, ``_check_for_unique_poses``).

    rot (H,3,3), loc (H,3) of the candidate object; candidates: (H,) bool mask or int
    indices of ``P``; mlh_index: index of the MLH hypothesis (its rotation ``R_m``).

    Unique iff ``max_{h∈P} |ℓ_h - mean(ℓ_P)| < path_similarity_threshold`` and
    ``max_{h∈P} arccos(clip((tr(R_mᵀ R_h) - 1)/2)) <= pose_similarity_threshold``
    (NaN angles count as 0). ``R_m`` is used as stored (the tbp.monty code passes it
    through ``Rotation.from_matrix``, which projects onto SO(3); identical for exact
    rotations). Returns False for an empty ``P``.
    """
    rot = np.asarray(rot, dtype=np.float64).reshape(-1, 3, 3)
    loc = np.asarray(loc, dtype=np.float64).reshape(-1, 3)
    P = sorted(_as_index_set(candidates))
    if not P:
        return False
    pts = loc[P]
    center = pts.mean(axis=0)
    max_dist = max(math.sqrt(float(np.sum((p - center) ** 2))) for p in pts)
    location_unique = max_dist < path_similarity_threshold
    Rm = rot[int(mlh_index)]
    angles = [rotation_angle(Rm, rot[h]) for h in P]
    angles = [0.0 if math.isnan(x) else x for x in angles]
    rotation_unique = max(angles) <= pose_similarity_threshold
    return bool(location_unique and rotation_unique)


def symmetry_step(prev_candidates, now_candidates, counter, required_symmetry_evidence=5,
                  new_observation=True, denominator="now"):
    """One symmetry check (§5.4). Returns ``(new_counter, symmetric)``.

    prev_candidates / now_candidates: bool masks or int index arrays of ``P_prev`` /
    ``P_now`` (hypothesis indices of the candidate object).

    * ``P_prev`` empty → ``(counter, False)`` (counter untouched, "not symmetric");
    * else, if new_observation: ``|P_prev ∩ P_now| / |P_now| > 0.9`` → counter + 1, else 0
      (an empty ``P_now`` counts as ratio 0 → reset);
      without a new observation the counter is left as is;
    * ``symmetric = new_counter >= required_symmetry_evidence``.

    denominator="prev" divides by ``|P_prev|`` instead (what the stored tbp.monty source
    versions actually do: their variable names are swapped); "now" is the spec's rule.
    """
    prev = _as_index_set(prev_candidates)
    now = _as_index_set(now_candidates)
    if not prev:
        return counter, False
    if new_observation:
        base = now if denominator == "now" else prev
        ratio = len(prev & now) / len(base) if base else 0.0
        counter = counter + 1 if ratio > 0.9 else 0
    return counter, counter >= required_symmetry_evidence


def rotation_error_deg(r_pred, q_true):
    """Rotation error in degrees (§5.6): ``arccos((tr(R_pred Q_tᵀ) - 1)/2)``, clipped.

    r_pred, q_true: (3,3) object orientations (``R_pred = R_mlh⁻¹``). Not rounded.
    """
    r_pred = np.asarray(r_pred, dtype=np.float64).reshape(3, 3)
    q_true = np.asarray(q_true, dtype=np.float64).reshape(3, 3)
    c = (float(np.trace(r_pred @ q_true.T)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))
