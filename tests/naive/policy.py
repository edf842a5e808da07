"""References for ``kernels.policy``: tbp.monty's curvature-informed surface policy, its
goal-state generator's conditions and graph mismatch, the jump's line of sight and the noisy
observation, written plainly (float64, Python loops, state in a dict).

The RNG is the kernels' splitmix64 written over Python integers, so a reference and a kernel
given the same state draw the same numbers.
"""

import math

import numpy as np

MASK = (1 << 64) - 1
HISTORY = 50


class SplitMix:
    """splitmix64 over a Python int state; ``uniform`` 53 bits; ``normal`` Box-Muller (one of the pair)."""

    def __init__(self, state):
        self.state = int(state) & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next() >> 11) / 9007199254740992.0

    def normal(self):
        u1, u2 = self.uniform(), self.uniform()
        return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------- geometry


def tangent(h, n):
    """``h`` projected onto the plane normal to ``n``, unit; the least-aligned axis when it vanishes."""
    h = np.asarray(h, np.float64)
    n = np.asarray(n, np.float64)
    t = h - (h @ n) * n
    s = np.linalg.norm(t)
    if s > 1e-6:
        return t / s
    a = np.zeros(3)
    a[np.argmin(np.abs(n))] = 1.0  # first of equal magnitudes
    t = a - (a @ n) * n
    return t / np.linalg.norm(t)


def rotate(h, axis, angle):
    """Rodrigues rotation of ``h`` about unit ``axis``."""
    h = np.asarray(h, np.float64)
    axis = np.asarray(axis, np.float64)
    return h * np.cos(angle) + np.cross(axis, h) * np.sin(angle) + axis * (axis @ h) * (1 - np.cos(angle))


def signed_angle(a, b, n):
    """The angle turning ``a`` onto ``b`` about ``n``, in [-pi, pi]."""
    return math.atan2(float(np.cross(a, b) @ n), float(np.dot(a, b)))


def angle(a, b):
    """tbp.monty's get_angle_beefed_up: inf for a zero vector."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (na >= 1e-8 and nb >= 1e-8):
        return math.inf
    return math.acos(min(1.0, max(-1.0, float(np.dot(a, b) / (na * nb)))))


def heading_at(n, theta):
    """The tangent at angle ``theta`` from the least-aligned axis' projection, turning towards n x it."""
    n = np.asarray(n, np.float64)
    e1 = tangent(np.zeros(3), n)  # the fallback axis: the one least aligned with n
    e2 = np.cross(n, e1)
    return math.cos(theta) * e1 + math.sin(theta) * e2


# --------------------------------------------------------------------------- curvature policy


def new_state(min_general_steps):
    return {"heading": None, "prev_pc": None, "min_pref": True, "using_pc": False,
            "ignoring_pc": min_general_steps, "follow_heading": 0, "follow_pc": 0, "cont_pc": 0,
            "history": []}


def _conflicts(h, history, divisor):
    """tbp.monty's conflict_check over the last 50 visited locations but the newest."""
    locs = history[-HISTORY:]
    cur_loc, cur_n = locs[-1]
    hits = []
    for loc, nrm in locs[:-1]:
        off = np.asarray(loc, np.float64) - cur_loc
        hits.append(np.linalg.norm(off) <= 0.025 and angle(h, off) <= math.pi / divisor
                    and angle(cur_n, nrm) <= math.pi / 4)
    return hits


def avoid_revisits(h, n, history, pc_first, rng):
    """tbp.monty's avoid_revisiting_locations (conflict_divisor 3, max_steps 100)."""
    if not history:
        return h, False
    original = np.array(h, np.float64)
    divisor, first, new, searches = 3.0, True, False, 0
    while True:
        found = False
        locs = history[-HISTORY:]
        cur_loc, cur_n = locs[-1]
        for loc, nrm in locs[:-1]:
            off = np.asarray(loc, np.float64) - cur_loc
            if np.linalg.norm(off) <= 0.025 and angle(h, off) <= math.pi / divisor \
                    and angle(cur_n, nrm) <= math.pi / 4:
                found = True
                if first and pc_first:
                    h = -original
                    first = False
                else:
                    new = True
                    lim = min(1.0, max(0.0, 0.1 + searches / 100.0))
                    h = tangent(rotate(original, n, (2.0 * rng.uniform() - 1.0) * lim * math.pi), n)
        if not found:
            return h, new
        if searches >= 100:
            return original, new
        searches += 1
        if searches % 20 == 0:
            divisor += 1.0


def _standard_step(s, n, p, rng):
    u = (rng.uniform() - 0.5) * 2 * math.pi
    if s["heading"] is None:
        h = heading_at(n, u)
    else:
        h = tangent(rotate(s["heading"], n, p["alpha"] * u), n)
    if s["follow_heading"] >= p["min_heading_steps"]:
        h, new = avoid_revisits(h, n, s["history"], False, rng)
        if new:
            s["follow_heading"] = 0
    s["follow_heading"] += 1
    s["heading"] = h


def _reset_pc(s):
    s["ignoring_pc"] = 0
    s["using_pc"] = False
    s["cont_pc"] = 0
    s["prev_pc"] = None


def curvature_heading(s, p, n, dirs, curv, pose_defined, rng):
    """tbp.monty's SurfacePolicyCurvatureInformed.tangential_direction on state ``s`` (dict,
    :func:`new_state`; the newest history entry is the present location), settings ``p``
    (alpha, pc_alpha, max_pc_bias_steps, min_general_steps, min_heading_steps). Leaves the
    heading in ``s["heading"]``."""
    n = np.asarray(n, np.float64)
    if pose_defined and s["ignoring_pc"] >= p["min_general_steps"]:
        s["using_pc"] = True
        if s["follow_pc"] == p["max_pc_bias_steps"]:
            s["min_pref"] = not s["min_pref"]
            s["follow_pc"] = 0
            s["cont_pc"] = 0
            s["prev_pc"] = None
        a = np.abs(np.asarray(curv, np.float64))
        which = int(np.argmin(a)) if s["min_pref"] else int(np.argmax(a))
        d = np.asarray(dirs[which], np.float64)
        # the sensor's frame: x along the heading, y = n x heading, z the normal
        h0 = heading_at(n, 0.0) if s["heading"] is None else tangent(s["heading"], n)
        comps = np.abs([d @ h0, d @ np.cross(n, h0), d @ n])
        if int(np.argmax(comps)) == 2 and comps[2] > comps[0] and comps[2] > comps[1]:
            _standard_step(s, n, p, rng)
            return
        h = tangent(d, n)
        prev = None if s["prev_pc"] is None else tangent(s["prev_pc"], n)
        if prev is not None and abs(signed_angle(-h, prev, n)) <= math.pi / 4:
            h = -h
        h, new = avoid_revisits(h, n, s["history"], s["cont_pc"] == 0, rng)
        if new:
            _reset_pc(s)
            s["follow_heading"] = 0
            s["heading"] = h
            return
        if prev is not None:
            h = tangent(rotate(h, n, p["pc_alpha"] * signed_angle(h, prev, n)), n)
        s["prev_pc"] = h
        s["follow_pc"] += 1
        s["cont_pc"] += 1
        s["heading"] = h
        return
    if s["using_pc"]:
        _reset_pc(s)
    s["ignoring_pc"] += 1
    _standard_step(s, n, p, rng)


# --------------------------------------------------------------------------- goal-state generator


def n_possible(obj_max, obj_count, x_percent):
    """tbp.monty's _threshold_possible_matches (count) over objects with hypotheses."""
    live = [o for o in range(len(obj_max)) if obj_count[o] > 0]
    if not live:
        return 0
    ev = np.array([float(obj_max[o]) for o in live])
    top, std = ev.max(), ev.std()
    if std > 0.1 or top < 0:
        th = top - top * x_percent / 100.0 if top > 0 else 0.0
        return int(np.sum(ev > th))
    if len(obj_max) == 1:
        return int(ev[0] >= 0)
    return len(live)


def graph_mismatch(nodes1, nodes2, loc1, rot1, loc2, rot2):
    """tbp.monty's _compute_graph_mismatch: argmax over the first graph's nodes, brought into
    the second's frame (R2 R1^T (n - l1) + l2), of the distance to the nearest second node."""
    r1 = np.asarray(rot1, np.float64).reshape(3, 3)
    r2 = np.asarray(rot2, np.float64).reshape(3, 3)
    q = (np.asarray(nodes1, np.float64) - np.asarray(loc1, np.float64)) @ r1 @ r2.T + np.asarray(loc2, np.float64)
    d = np.linalg.norm(q[:, None, :] - np.asarray(nodes2, np.float64)[None, :, :], axis=2).min(axis=1)
    return int(np.argmax(d)), d


def ray_hit(points, normals, origin, direction, radius):
    """The nearest sample along the ray within ``radius`` of it (-1: none, or one facing away)."""
    v = np.asarray(points, np.float64) - origin
    t = v @ direction
    perp2 = np.sum(v * v, axis=1) - t * t
    ok = (t > 0) & (perp2 <= radius * radius)
    if not ok.any():
        return -1
    rows = np.flatnonzero(ok)
    best = int(rows[np.argmin(t[rows])])
    if np.asarray(normals[best], np.float64) @ direction >= 0:
        return -1
    return best


# --------------------------------------------------------------------------- observation


def euler_matrix(ax, ay, az):
    """Rz Ry Rx (extrinsic xyz)."""
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def observe(point, normal, dirs, curv, q, noise, rng, hue=None):
    """One observation (engine.data.sensor.apply_noise's noise, drawn from ``rng`` in the kernel's
    order: 3 location, 3 Euler angles, 2 log curvatures, hue, flip). ``noise`` None or a dict with
    location, pose_deg, curvature_log, hue, pose_defined_flip. Returns (location, pose rows (3, 3),
    pose_defined, features)."""
    q = np.asarray(q, np.float64).reshape(3, 3)
    loc = (q @ np.asarray(point, np.float64)).astype(np.float32).astype(np.float64)
    pose = np.stack([normal, dirs[0], dirs[1]]).astype(np.float64) @ q.T
    k1, k2 = np.float32(curv[0]), np.float32(curv[1])
    defined = abs(k1 - k2) >= np.float32(10.0)
    if noise is not None:
        loc = loc + np.array([rng.normal() * np.float32(noise["location"]) for _ in range(3)])
        pose = pose.astype(np.float32).astype(np.float64)
        angles = [math.radians(rng.normal() * np.float32(noise["pose_deg"])) for _ in range(3)]
        pose = pose @ euler_matrix(*angles).T
        logs = [np.sign(float(k)) * math.log1p(abs(float(k))) + rng.normal() * np.float32(noise["curvature_log"])
                for k in (k1, k2)]
        k1, k2 = (np.float32(np.sign(v) * math.expm1(abs(v))) for v in logs)
        if abs(k2) > abs(k1):
            k1, k2 = k2, k1
            pose[[1, 2]] = pose[[2, 1]] * np.array([[1.0], [-1.0]])
        if hue is not None:
            hue = min(1.0, max(0.0, float(np.float32(hue)) + rng.normal() * np.float32(noise["hue"])))
        if rng.uniform() < np.float32(noise["pose_defined_flip"]):
            defined = not defined
    logk = [np.float32(np.sign(k) * np.log1p(abs(k))) for k in (k1, k2)]
    feats = ([np.float32(hue)] if hue is not None else []) + logk
    return loc.astype(np.float32), pose.astype(np.float32), bool(defined), np.array(feats, np.float32)
