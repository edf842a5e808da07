"""Where the sensor moves next: surface policies and hypothesis-testing jumps, as kernels.

Today's evaluation replays a walk fixed in advance (``kernels.geometry.surface_walk_kernel``).
The kernels here let the episode kernel (``kernels.evidence_policy``) move the sensor step by
step instead, from what it senses and what the evidence model believes:

- :func:`walk_move`       one step of today's walk (the same float32 arithmetic, so a walk
  driven step by step visits the rows ``surface_walk_kernel`` visits);
- :func:`curvature_heading` tbp.monty's ``SurfacePolicyCurvatureInformed`` (its
  ``tangential_direction``): follow the principal curvature directions where they are
  defined (first the minimal, after ``max_pc_bias_steps`` the maximal, alternating), with a
  moving average over the followed direction, a flip back when the direction flipped, the
  avoidance of recently visited locations, and its momentum step (``alpha``) where the
  directions are not defined;
- :func:`goal_check` and :func:`graph_mismatch`: tbp.monty's ``EvidenceGoalGenerator``:
  whether to test a hypothesis now (``min_post_goal_success_steps``, the possible objects at
  the x-percent threshold scaled by ``x_percent_scale_factor``, a change of the top two
  objects or of the most likely rotation, ``elapsed_steps_factor`` with a growing wait), and
  the node of the most likely object farthest from the second hypothesis once both are
  aligned through their poses (:func:`graph_mismatch_grid`: the same node, the second
  object's node-grid cell looked at first; what the episode kernel calls);
- :func:`ray_hit`         where the jumped sensor, looking down the target's normal, meets
  the surface (-1: nothing, or the inside of the object: the jump is undone);
- :func:`observe`         the observation at a surface sample, rotated into the world and
  with tbp.monty's noise (``engine.data.sensor.apply_noise``) drawn from an explicit RNG
  state (:func:`rng_uniform`, :func:`rng_normal`: splitmix64), so an episode is
  reproducible and the fused and stepwise paths draw the same numbers.

Frames: the surface samples are in the object's frame; the world (body) frame of an episode
with rotation ``Q`` holds ``Q p``. The policy works in the object frame (its headings are
tangent vectors there, carried from sample to sample by parallel transport as the walk's
are); what it senses (locations, pose vectors, ``pose_defined``) is the observation brought
back with ``Q^T``. A hypothesis row's rotation ``R`` (``kernels.evidence_layout``) maps body
vectors into its model's frame.

Arrays: the surface is four flat float32 arrays (``points`` (P, 3), ``normals`` (P, 3),
``curvature`` (P, 2), ``directions`` (P, 6): rows dir1, dir2) and a ``kernels.kdtree.KDTree``;
the policy's settings and state travel in :class:`PolicyState` (``fparams`` / ``iparams`` with
slots ``PF_*`` / ``PI_*``, ``fstate`` / ``istate`` with slots ``SF_*`` / ``SI_*``). Nothing here
is parallel, so any kernel may call these.
"""

from collections import namedtuple

import numpy as np
from numba import njit

# the walk's own constants and float32 helpers, so that a move here is the walk's move exactly
from .geometry import WALK_K
from .geometry import rotate_about, to_tangent, transport_heading, snap_move, tangent_basis  # noqa: F401 (snap_move re-exported)
from .evidence_phases import mark_possible_objects
from .lane_cells import cell_span

# --------------------------------------------------------------------------- slots

# fparams (float32)
PF_STEP = 0  # step length (m)
PF_TURN_SD = 1  # walk: sd of the heading's turn per step (rad)
PF_ALPHA = 2  # curvature: momentum of the standard step (0 same heading, 1 random)
PF_PC_ALPHA = 3  # curvature: weight of the previous direction in the moving average
PF_X_SCALE = 4  # jumps: x_percent_scale_factor
PF_DOD = 5  # jumps: desired_object_distance (m); the jumped sensor starts 1.5x this off the surface
PF_RAY_RADIUS = 6  # jumps: a sample this close to the sensor's axis is what it sees (m)
PF_X_PERCENT = 7  # the evidence model's x_percent_threshold
PF_NOISE_LOC = 8  # noise: location sd (m)
PF_NOISE_POSE = 9  # noise: pose sd (deg, each xyz Euler angle)
PF_NOISE_CURV = 10  # noise: log curvature sd
PF_NOISE_HUE = 11  # noise: hue sd
PF_NOISE_FLIP = 12  # noise: probability of flipping pose_defined
PF_HUE = 13  # the object's hue (when the observations have a hue column)
PF_REVERSE = 14  # jumps: a mismatch below this (m) tests the second graph's farthest node instead (0: off)
N_PF = 15

# iparams (int64)
PI_TYPE = 0  # TYPE_WALK or TYPE_CURVATURE
PI_JUMPS = 1  # 1: hypothesis-testing jumps
PI_MAX_PC_BIAS = 2  # max_pc_bias_steps
PI_MIN_GENERAL = 3  # min_general_steps
PI_MIN_HEADING = 4  # min_heading_steps
PI_MIN_POST_GOAL = 5  # min_post_goal_success_steps
PI_ELAPSED_FACTOR = 6  # elapsed_steps_factor
PI_WAIT_GROWTH = 7  # wait_growth_multiplier
PI_NOISE = 8  # 1: add noise to the observations
N_PI = 9

TYPE_WALK = 0
TYPE_CURVATURE = 1

# fstate (float32)
SF_HEADING = 0  # 3 slots: the heading, a unit tangent (object frame); NaN before the first move
SF_PREV_PC = 3  # 3 slots: the previous followed curvature direction (NaN: none)
SF_PREV_ROT = 6  # 9 slots: the most likely hypothesis' rotation when the last goal was set
N_SF = 15

# istate (int64)
SI_CUR = 0  # the surface sample the sensor is at
SI_WRITTEN = 1  # observation rows written so far (a step is simulated once, even when repeated)
SI_MIN_PREF = 2  # 1: follow the minimal curvature direction, 0: the maximal
SI_USING_PC = 3  # 1: the last step followed a curvature direction
SI_IGNORING_PC = 4  # steps taken without following a curvature direction
SI_FOLLOW_HEADING = 5  # standard steps on the present heading
SI_FOLLOW_PC = 6  # steps following the preferred curvature direction
SI_CONT_PC = 7  # curvature steps in a row
SI_N_HIST = 8  # locations in the visited history (all time; the ring holds the last HISTORY)
SI_GOAL_STEP = 9  # matching step when the last goal was set (0 before any)
SI_N_GOALS = 10  # goals set (jumps attempted)
SI_WAIT = 11  # wait factor of the elapsed-steps condition
SI_PREV_TOP = 12  # 2 slots: the top two objects when the last goal was set (-1: none)
SI_N_ON = 14  # jumps that landed on the object
SI_TICKS = 15  # cycle-counter ticks spent moving the sensor and making observations (kernels.timing)
N_SI = 16

#: Visited locations (and normals) the avoidance of revisits looks at (tbp.monty: the last 50).
HISTORY = 50

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_NAN = np.float32(np.nan)
_INF32 = np.float32(np.inf)
_Z64 = np.int64(0)
_ONE64 = np.int64(1)
_PI = np.pi
_TWO_PI = 2.0 * np.pi

#: A policy's settings and state (one episode).
#: fparams float32 (N_PF,), iparams int64 (N_PI,), fstate float32 (N_SF,), istate int64 (N_SI,),
#: history float32 (HISTORY, 6) visited locations and normals (object frame, a ring),
#: rng uint64 (1,) the RNG state, rotation float32 (9,) the episode's Q row-major,
#: jumped uint8 (T,) 1 at the steps a jump landed on (2 where one was undone first).
PolicyState = namedtuple("PolicyState", "fparams iparams fstate istate history rng rotation jumped")

#: The object's surface samples the sensor moves over, in the object's frame: ``points``,
#: ``normals`` float32 (P, 3), ``curvature`` float32 (P, 2) (``|k1| >= |k2|``), ``directions``
#: float32 (P, 6) (the two principal directions), ``tree`` a ``kernels.kdtree.KDTree`` over
#: ``points``.
SurfaceSamples = namedtuple("SurfaceSamples", "points normals curvature directions tree")

#: Where :func:`graph_mismatch_grid` looks first: the node grid of a model
#: (``kernels.evidence.build_node_grid``: ``grid_origin`` float32 (O, 3), ``grid_index`` int64
#: (O, 4), ``cand_start`` int64 (C + 1,), ``cand_node`` int32 (M,)), ``obj`` int64 the object
#: searched, ``cell`` float32 the grid's cell side (``max_match_distance / CELLS_PER_RADIUS``;
#: 0: no grid, every node is scanned in full).
GridProbe = namedtuple("GridProbe", "grid_origin grid_index cand_start cand_node obj cell")


def new_policy_state(fparams, iparams, seed, rotation, n_steps, start):
    """A :class:`PolicyState` before an episode (Python helper).

    ``seed`` int: the RNG's state; ``rotation`` (3, 3) or (9,) the episode's ``Q``;
    ``n_steps`` the observation rows; ``start`` the first surface sample.
    """
    fstate = np.full(N_SF, np.nan, np.float32)
    istate = np.zeros(N_SI, np.int64)
    istate[SI_CUR] = start
    istate[SI_MIN_PREF] = 1
    istate[SI_IGNORING_PC] = iparams[PI_MIN_GENERAL]  # the first defined direction is followed at once
    istate[SI_WAIT] = 1
    istate[SI_PREV_TOP:SI_PREV_TOP + 2] = -1
    return PolicyState(np.ascontiguousarray(fparams, np.float32), np.ascontiguousarray(iparams, np.int64),
                       fstate, istate, np.zeros((HISTORY, 6), np.float32),
                       np.array([np.uint64(seed % (1 << 64))], np.uint64),
                       np.ascontiguousarray(np.asarray(rotation, np.float32).reshape(9)),
                       np.zeros(n_steps, np.uint8))


# --------------------------------------------------------------------------- RNG


@njit(cache=True, fastmath=False)
def rng_next(rng):
    """splitmix64: the next uint64 of the state ``rng`` uint64 (1,) (advanced)."""
    s = rng[0] + np.uint64(0x9E3779B97F4A7C15)
    rng[0] = s
    z = s
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, fastmath=False)
def rng_uniform(rng):
    """A float64 uniform in [0, 1) (53 random bits)."""
    return np.float64(rng_next(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, fastmath=False)
def rng_normal(rng):
    """A standard normal float64 (Box-Muller, one of the pair)."""
    u1 = rng_uniform(rng)
    u2 = rng_uniform(rng)
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(_TWO_PI * u2)


# --------------------------------------------------------------------------- small helpers


@njit(cache=True, fastmath=False)
def _dot3(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@njit(cache=True, fastmath=False)
def _signed_angle(a, b, n):
    """Angle (float64, rad, in [-pi, pi]) turning tangent ``a`` onto ``b`` about ``n``."""
    cx = a[1] * b[2] - a[2] * b[1]
    cy = a[2] * b[0] - a[0] * b[2]
    cz = a[0] * b[1] - a[1] * b[0]
    s = np.float64(cx * n[0] + cy * n[1] + cz * n[2])
    c = np.float64(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])
    return np.arctan2(s, c)


@njit(cache=True, fastmath=False)
def _angle(a, b):
    """tbp.monty's ``get_angle_beefed_up``: the angle between ``a`` and ``b`` (float64), inf
    when either is (nearly) zero or NaN."""
    na = np.sqrt(np.float64(a[0]) ** 2 + np.float64(a[1]) ** 2 + np.float64(a[2]) ** 2)
    nb = np.sqrt(np.float64(b[0]) ** 2 + np.float64(b[1]) ** 2 + np.float64(b[2]) ** 2)
    if not (na >= 1e-8 and nb >= 1e-8):
        return np.inf
    c = (np.float64(a[0]) * b[0] + np.float64(a[1]) * b[1] + np.float64(a[2]) * b[2]) / (na * nb)
    return np.arccos(min(1.0, max(-1.0, c)))


# --------------------------------------------------------------------------- the walk's move


@njit(cache=True, fastmath=False)
def move_along(points, normals, tree, cur, h, step):
    """Move from sample ``cur`` along tangent ``h`` (float32 (3,)) by ``step`` (:func:`snap_move`)
    and carry the heading into the new tangent plane. Returns ``(row, h)``; the row is
    ``cur`` when stuck (the heading keeps the retries' turns, as the walk's does)."""
    k = min(WALK_K, points.shape[0])
    target = np.empty((1, 3), dtype=np.float32)
    nb_idx = np.empty((1, k), dtype=np.int64)
    nb_dist = np.empty((1, k), dtype=np.float32)
    nxt, h = snap_move(points, normals, tree, cur, h, step, target, nb_idx, nb_dist)
    if nxt >= 0:
        h = transport_heading(h, normals[cur], normals[nxt])
        return nxt, h
    return cur, h


@njit(cache=True, fastmath=False)
def walk_move(points, normals, tree, cur, h, step, turn):
    """One step of today's walk: turn tangent heading ``h`` about the normal by ``turn``
    (float32, rad), then :func:`move_along`. Returns ``(row, h)``.

    Driven with the turns ``engine.data.sensor.walk`` draws, from the start and heading
    ``to_tangent(heading, normals[start])``, it visits the rows ``surface_walk_kernel`` does.
    """
    h = rotate_about(h, normals[cur], turn)
    return move_along(points, normals, tree, cur, h, step)


@njit(cache=True, fastmath=False)
def start_heading(normals, cur, heading):
    """The walk's first heading: ``heading`` float32 (3,) projected into sample ``cur``'s tangent plane."""
    return to_tangent(heading, normals[cur])


# --------------------------------------------------------------------------- curvature policy


@njit(cache=True, fastmath=False)
def _set_heading(fstate, h):
    for j in range(3):
        fstate[SF_HEADING + j] = h[j]


@njit(cache=True, fastmath=False)
def _heading_from_angle(n, angle):
    """The tangent at ``angle`` (rad) in sample's basis ``tangent_basis(n)`` (float32 (3,))."""
    n64 = np.empty(3)
    for j in range(3):
        n64[j] = n[j]
    e1, e2 = tangent_basis(n64)
    out = np.empty(3, np.float32)
    c = np.cos(angle)
    s = np.sin(angle)
    for j in range(3):
        out[j] = np.float32(c * e1[j] + s * e2[j])
    return out


@njit(cache=True, fastmath=False)
def _turned(h, n, angle):
    """``h`` turned about ``n`` by ``angle`` (float64 rad), kept in the tangent plane."""
    return to_tangent(rotate_about(h, n, np.float32(angle)), n)


@njit(cache=True, fastmath=False)
def avoid_revisits(h, n, history, n_hist, pc_first, rng):
    """tbp.monty's ``avoid_revisiting_locations`` (conflict_divisor 3, max_steps 100).

    ``h`` the proposed heading, ``n`` the normal, ``pc_first``: the first step of a run
    following a curvature direction (then a conflict first flips the direction). Returns
    ``(h, new_heading)``: the heading, and whether a new random heading was chosen (which
    abandons a followed curvature direction).
    """
    if n_hist == 0:
        return h, False
    original = h.copy()
    divisor = 3.0
    first = True
    new_heading = False
    searches = 0
    first_i = n_hist - min(n_hist, HISTORY)
    while True:
        # every conflicting location triggers one resolution, as tbp.monty's loop does
        found = False
        for i in range(first_i, n_hist - 1):
            if _conflict_one(h, history, n_hist, i, divisor):
                found = True
                if first and pc_first:
                    h = -original
                    first = False
                else:
                    new_heading = True
                    lim = min(1.0, max(0.0, 0.1 + searches / 100.0))
                    h = _turned(original, n, (2.0 * rng_uniform(rng) - 1.0) * lim * _PI)
        if not found:
            return h, new_heading
        if searches >= 100:
            return original, new_heading
        searches += 1
        if searches % 20 == 0:
            divisor += 1.0


@njit(cache=True, fastmath=False)
def _conflict_one(h, history, n_hist, i, divisor):
    """tbp.monty's ``conflict_check`` for visited location ``i`` (all-time index) against the
    newest (the present one): is it ahead (within pi / divisor of ``h``), on a similar
    surface (normals within pi / 4) and within 2.5 cm?"""
    cur = (n_hist - 1) % HISTORY
    r = i % HISTORY
    off = np.empty(3, np.float32)
    for j in range(3):
        off[j] = history[r, j] - history[cur, j]
    if np.sqrt(np.float64(off[0]) ** 2 + np.float64(off[1]) ** 2 + np.float64(off[2]) ** 2) > 0.025:
        return False
    if not _angle(h, off) <= _PI / divisor:
        return False
    return _angle(history[cur, 3:6], history[r, 3:6]) <= _PI / 4


@njit(cache=True, fastmath=False)
def push_history(pol, loc, normal):
    """Append a visited location and its normal (object frame) to the ring."""
    r = pol.istate[SI_N_HIST] % HISTORY
    for j in range(3):
        pol.history[r, j] = loc[j]
        pol.history[r, 3 + j] = normal[j]
    pol.istate[SI_N_HIST] += 1


@njit(cache=True, fastmath=False)
def _standard_step(pol, n, rng):
    """tbp.monty's ``perform_standard_tang_step``: a momentum step (the heading turned by
    ``alpha`` times a uniform angle in [-pi, pi); a random heading when there is none),
    checked against revisits every ``min_heading_steps`` steps."""
    fs, si = pol.fstate, pol.istate
    u = (rng_uniform(rng) - 0.5) * _TWO_PI
    h = fs[SF_HEADING:SF_HEADING + 3].copy()
    if np.isnan(h[0]):
        h = _heading_from_angle(n, u)
    else:
        # tbp.monty: a + alpha * wrap(a - u) with u uniform, i.e. a turn of alpha times a
        # uniform angle in [-pi, pi)
        h = _turned(h, n, np.float64(pol.fparams[PF_ALPHA]) * u)
    if si[SI_FOLLOW_HEADING] >= pol.iparams[PI_MIN_HEADING]:
        h, new = avoid_revisits(h, n, pol.history, si[SI_N_HIST], False, rng)
        if new:
            si[SI_FOLLOW_HEADING] = 0
    si[SI_FOLLOW_HEADING] += 1
    _set_heading(fs, h)


@njit(cache=True, fastmath=False)
def _reset_pc(pol):
    """tbp.monty's ``reset_pc_buffers``."""
    si = pol.istate
    si[SI_IGNORING_PC] = 0
    si[SI_USING_PC] = 0
    si[SI_CONT_PC] = 0
    for j in range(3):
        pol.fstate[SF_PREV_PC + j] = _NAN


@njit(cache=True, fastmath=False)
def curvature_heading(pol, n, dirs, curv, pose_defined, rng):
    """tbp.monty's ``SurfacePolicyCurvatureInformed.tangential_direction``: the next heading.

    Parameters
    ----------
    pol : PolicyState (its heading, counters and history are updated; the history's newest
        entry is the present location)
    n : float32 (3,) the surface normal where the sensor is (object frame)
    dirs : float32 (2, 3) the sensed curvature directions (object frame), rows dir1, dir2
    curv : float32 (2,) the sensed curvatures, ``|k1| >= |k2|``
    pose_defined : bool, the sensed ``pose_defined``
    rng : uint64 (1,)

    The heading is left in ``pol.fstate[SF_HEADING:SF_HEADING + 3]`` (unit, tangent to ``n``).
    """
    fs, si, ip = pol.fstate, pol.istate, pol.iparams
    if pose_defined and si[SI_IGNORING_PC] >= ip[PI_MIN_GENERAL]:
        # perform_pc_guided_step
        si[SI_USING_PC] = 1
        if si[SI_FOLLOW_PC] == ip[PI_MAX_PC_BIAS]:  # check_for_preference_change
            si[SI_MIN_PREF] = 1 - si[SI_MIN_PREF]
            si[SI_FOLLOW_PC] = 0
            si[SI_CONT_PC] = 0
            for j in range(3):
                fs[SF_PREV_PC + j] = _NAN
        # determine_pc_for_use: argmin / argmax of |k| (first index on ties)
        a0 = abs(curv[0])
        a1 = abs(curv[1])
        if si[SI_MIN_PREF] == 1:
            which = 1 if a1 < a0 else 0
        else:
            which = 1 if a1 > a0 else 0
        d = dirs[which]
        # the direction in the sensor's frame (tangent basis along the heading, the normal
        # as z): mostly along z, it is ignored this step (tbp.monty's "z-defined" PC)
        dn = abs(_dot3(d, n))
        h0 = fs[SF_HEADING:SF_HEADING + 3].copy()
        if np.isnan(h0[0]):
            h0 = _heading_from_angle(n, 0.0)
        else:
            h0 = to_tangent(h0, n)
        b1 = abs(_dot3(d, h0))
        cx = n[1] * h0[2] - n[2] * h0[1]
        cy = n[2] * h0[0] - n[0] * h0[2]
        cz = n[0] * h0[1] - n[1] * h0[0]
        b2 = abs(d[0] * cx + d[1] * cy + d[2] * cz)
        if dn > b1 and dn > b2:
            _standard_step(pol, n, rng)
            return
        h = to_tangent(d.copy(), n)
        prev = fs[SF_PREV_PC:SF_PREV_PC + 3].copy()
        has_prev = not np.isnan(prev[0])
        if has_prev:
            prev = to_tangent(prev, n)
            # check_for_flipped_pc: the direction flipped against the previous one
            if abs(_signed_angle(-h, prev, n)) <= _PI / 4:
                h = -h
        h, new = avoid_revisits(h, n, pol.history, si[SI_N_HIST], si[SI_CONT_PC] == 0, rng)
        if new:
            _reset_pc(pol)
            si[SI_FOLLOW_HEADING] = 0
            _set_heading(fs, h)
            return
        if has_prev:
            # pc_moving_average: tangential_angle + pc_alpha * theta_change(prev, current)
            h = _turned(h, n, np.float64(pol.fparams[PF_PC_ALPHA]) * _signed_angle(h, prev, n))
        for j in range(3):
            fs[SF_PREV_PC + j] = h[j]
        si[SI_FOLLOW_PC] += 1
        si[SI_CONT_PC] += 1
        _set_heading(fs, h)
        return
    if si[SI_USING_PC] == 1:
        _reset_pc(pol)
    si[SI_IGNORING_PC] += 1
    _standard_step(pol, n, rng)


# --------------------------------------------------------------------------- goal-state generator


@njit(cache=True, fastmath=False)
def _n_possible(obj_max, obj_count, x_percent):
    """Possible objects (tbp.monty's ``_threshold_possible_matches``: the evidence step's
    ``mark_possible_objects`` rule) at ``x_percent``; how many."""
    return mark_possible_objects(obj_max, obj_count, x_percent, np.empty(obj_max.shape[0], np.uint8))


@njit(cache=True, fastmath=False)
def top_two(obj_max, obj_count, mlh_obj):
    """tbp.monty's ``get_top_two_mlh_ids``: the most likely object (the MLH's, ``mlh_obj``)
    and the next (highest best evidence among the others, first on ties); -1 for none."""
    n_obj = obj_max.shape[0]
    top = mlh_obj
    if top < 0:
        for o in range(n_obj):
            if obj_count[o] > 0 and (top < 0 or obj_max[o] > obj_max[top]):
                top = o
    second = -1
    for o in range(n_obj):
        if o != top and obj_count[o] > 0 and (second < 0 or obj_max[o] > obj_max[second]):
            second = o
    return top, second


@njit(cache=True, fastmath=False)
def best_row(hyp_obj, hyp_ev, n, o, skip):
    """The row of object ``o``'s highest evidence among the first ``n`` rows, other than
    ``skip`` (first on ties; -1: none)."""
    best = -1
    for h in range(n):
        if h != skip and hyp_obj[h] == o and (best < 0 or hyp_ev[h] > hyp_ev[best]):
            best = h
    return best


@njit(cache=True, fastmath=False)
def _euler_xyz(r):
    """Extrinsic xyz Euler angles (scipy's ``as_euler("xyz")``) of row-major rotation ``r`` (9,)."""
    y = -np.arcsin(min(1.0, max(-1.0, np.float64(r[6]))))
    x = np.arctan2(np.float64(r[7]), np.float64(r[8]))
    z = np.arctan2(np.float64(r[3]), np.float64(r[0]))
    return x, y, z


@njit(cache=True, fastmath=False)
def goal_check(pol, obj_max, obj_count, hyp_obj, n_rows, mlh, hyp_rot, matching_steps, rng):
    """tbp.monty's ``EvidenceGoalGenerator._check_conditions_for_hypothesis_test``.

    After a matching step: ``obj_max`` float32 (O,), ``obj_count`` int64 (O,), hypothesis rows
    ``hyp_obj`` int32 / ``hyp_rot`` float32 (n, 9) (``n_rows`` in use), ``mlh`` the MLH's row,
    ``matching_steps`` steps so far. Returns ``(jump, focus_on_pose, top, second)``; a jump
    also advances the wait factor when the elapsed-steps condition fired.
    """
    si, fp, ip = pol.istate, pol.fparams, pol.iparams
    elapsed = matching_steps - si[SI_GOAL_STEP]
    mlh_obj = hyp_obj[mlh] if mlh >= 0 else -1
    top, second = top_two(obj_max, obj_count, mlh_obj)
    if elapsed <= ip[PI_MIN_POST_GOAL]:
        return False, False, top, second
    if top < 0:
        return False, False, top, second
    if second < 0:
        if obj_count[top] == 1:
            return False, False, top, second
        return True, True, top, second
    x = np.float64(fp[PF_X_PERCENT])
    n_small = _n_possible(obj_max, obj_count, x * np.float64(fp[PF_X_SCALE]))
    n_base = _n_possible(obj_max, obj_count, x)
    if (n_small == 1 and rng_uniform(rng) <= 0.5) or n_base == 1:
        if obj_count[top] == 1:
            return False, False, top, second
        return True, True, top, second
    # a change of the top two objects (tbp.monty compares the two lists as a whole)
    if si[SI_PREV_TOP] >= 0 and (si[SI_PREV_TOP] != top or si[SI_PREV_TOP + 1] != second):
        return True, False, top, second
    # a change of the most likely rotation (every Euler angle different)
    if si[SI_PREV_TOP] >= 0 and mlh >= 0:
        ax, ay, az = _euler_xyz(hyp_rot[mlh])
        bx, by, bz = _euler_xyz(pol.fstate[SF_PREV_ROT:SF_PREV_ROT + 9])
        if ax != bx and ay != by and az != bz:
            return True, False, top, second
    wait = si[SI_WAIT] * ip[PI_ELAPSED_FACTOR]
    if wait > 0 and elapsed % wait == 0:
        si[SI_WAIT] *= ip[PI_WAIT_GROWTH]
        return True, False, top, second
    return False, False, top, second


@njit(cache=True, fastmath=False)
def frame_map(rot1, rot2):
    """``M = R2 R1^T`` (float64 (3, 3)) of two row-major float32 (9,) rotations: brings the
    first hypothesis' object frame into the second's (:func:`graph_mismatch`)."""
    m = np.empty((3, 3))
    for i in range(3):
        for j in range(3):
            s = 0.0
            for k in range(3):
                s += np.float64(rot2[3 * i + k]) * np.float64(rot1[3 * j + k])
            m[i, j] = s
    return m


@njit(cache=True, fastmath=False)
def map_node(node_pos, a, m, loc1, loc2, q):
    """``q = M (n_a - l1) + l2`` (float64 (3,), written) for node row ``a`` of ``node_pos``
    float32 (N, 3), ``m`` from :func:`frame_map`, ``loc*`` float32 (3,)."""
    for i in range(3):
        q[i] = np.float64(loc2[i])
        for j in range(3):
            q[i] += m[i, j] * (np.float64(node_pos[a, j]) - np.float64(loc1[j]))


@njit(cache=True, fastmath=False)
def graph_mismatch(node_pos, lo1, hi1, lo2, hi2, loc1, rot1, loc2, rot2):
    """tbp.monty's ``_compute_graph_mismatch``: the node of the first hypothesis' object
    (nodes ``lo1 .. hi1``) farthest from the second hypothesis' object (nodes ``lo2 .. hi2``)
    once the first graph is brought into the second's frame through both hypotheses:
    ``q = R2 R1^T (n - l1) + l2``. Returns the node row (the first of equal distances; -1
    when the first object has no nodes; ``lo1`` when the second has none).

    ``node_pos`` float32 (N, 3); ``loc*`` float32 (3,), ``rot*`` float32 (9,) row-major (body
    to model). Each node's nearest distance is scanned until it falls to the best so far (it
    then cannot be the farthest), so the search is far below its N1 x N2 bound.
    :func:`graph_mismatch_grid` gives the same node faster, given the second object's node grid.
    """
    no_grid = GridProbe(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.int64), np.zeros(1, np.int64),
                        np.zeros(0, np.int32), np.int64(0), np.float32(0.0))
    return _farthest_node(node_pos, lo1, hi1, lo2, hi2, loc1, rot1, loc2, rot2, no_grid)


@njit(cache=True, fastmath=False)
def graph_mismatch_grid(model, o1, o2, loc1, rot1, loc2, rot2, cell):
    """:func:`graph_mismatch` of objects ``o1`` and ``o2`` of ``model``
    (``kernels.evidence_layout.ObjectModels``; the same node row, bit for bit), with the
    mapped node's cell of ``o2``'s node grid looked at first (``cell`` float32 the grid's cell
    side, ``max_match_distance / CELLS_PER_RADIUS``): a candidate there within the farthest
    distance so far proves at once that the node is not the farthest. Only the nodes that may
    be (outside the grid, or with no candidate that near) are scanned over the whole second
    graph. On ``similar_10``'s pairs, where most of the two graphs overlap, that took a jump
    from ~1 ms to ~0.25 ms."""
    lo1, hi1 = model.obj_start[o1], model.obj_start[o1 + 1]
    lo2, hi2 = model.obj_start[o2], model.obj_start[o2 + 1]
    probe = GridProbe(model.grid_origin, model.grid_index, model.cand_start, model.cand_node, np.int64(o2), cell)
    return _farthest_node(model.node_pos, lo1, hi1, lo2, hi2, loc1, rot1, loc2, rot2, probe)


@njit(cache=True, fastmath=False)
def _farthest_node(node_pos, lo1, hi1, lo2, hi2, loc1, rot1, loc2, rot2, grid):
    """:func:`graph_mismatch`'s search; ``grid`` a :class:`GridProbe` (``cell > 0``: its
    object's grid is probed first, :func:`graph_mismatch_grid`). The probe only skips nodes
    the full scan would also reject (a node within the best distance so far, found with the
    same float64 arithmetic), so the rows found, and their ties, do not depend on it."""
    cell = grid.cell
    m = frame_map(rot1, rot2)
    best2 = -1.0  # squared distance of the farthest so far
    arg = -1
    last = -1
    near = -1
    q = np.empty(3)
    probe = cell > 0
    inv_cell = np.float32(1.0) / cell if probe else np.float32(0.0)
    for a in range(lo1, hi1):
        map_node(node_pos, a, m, loc1, loc2, q)
        if probe and arg >= 0:
            c0, c1, _ = cell_span(grid.grid_origin, grid.grid_index, grid.cand_start, grid.obj, inv_cell, cell,
                                  np.float32(q[0]), np.float32(q[1]), np.float32(q[2]))
            within = False
            for i in range(c0, c1):
                b = grid.cand_node[i]
                d0 = q[0] - node_pos[b, 0]
                d1 = q[1] - node_pos[b, 1]
                d2 = q[2] - node_pos[b, 2]
                if d0 * d0 + d1 * d1 + d2 * d2 <= best2:
                    within = True
                    break
            if within:
                continue  # not farther than the best: it cannot be the (first) farthest
        dmin = np.inf
        # the previous node's nearest first: nodes are sorted by grid cell, so neighbours
        # in order are near in space, and this one usually ends the scan at once
        b0 = last if last >= 0 else lo2
        for i in range(hi2 - lo2):
            b = b0 + i
            if b >= hi2:
                b -= hi2 - lo2
            d0 = q[0] - node_pos[b, 0]
            d1 = q[1] - node_pos[b, 1]
            d2 = q[2] - node_pos[b, 2]
            d = d0 * d0 + d1 * d1 + d2 * d2
            if d < dmin:
                dmin = d
                near = b
                if arg >= 0 and dmin <= best2:
                    break  # not farther than the best: it cannot be the (first) farthest
        last = near
        if arg < 0 or dmin > best2:
            best2 = dmin
            arg = a
    return arg


@njit(cache=True, fastmath=False)
def mapped_nearest(node_pos, a, lo2, hi2, loc1, rot1, loc2, rot2):
    """Distance (float64) from node ``a`` of the first graph, brought into the second's frame
    as :func:`graph_mismatch` does, to the nearest node ``lo2 .. hi2`` (inf: none)."""
    q = np.empty(3)
    map_node(node_pos, a, frame_map(rot1, rot2), loc1, loc2, q)
    best = np.inf
    for b in range(lo2, hi2):
        d0 = q[0] - node_pos[b, 0]
        d1 = q[1] - node_pos[b, 1]
        d2 = q[2] - node_pos[b, 2]
        d = d0 * d0 + d1 * d1 + d2 * d2
        if d < best:
            best = d
    return np.sqrt(best)


@njit(cache=True, fastmath=False)
def ray_hit(points, normals, origin, direction, radius):
    """The sample the sensor at ``origin`` looking along unit ``direction`` sees: the nearest
    along the ray of the samples within ``radius`` of it (float64 arithmetic). -1 when none
    is, or when the one seen faces away (normal . direction >= 0: the sensor is inside the
    object) — tbp.monty undoes such a jump."""
    best_t = np.inf
    best = -1
    r2 = np.float64(radius) ** 2
    for p in range(points.shape[0]):
        v0 = np.float64(points[p, 0]) - origin[0]
        v1 = np.float64(points[p, 1]) - origin[1]
        v2 = np.float64(points[p, 2]) - origin[2]
        t = v0 * direction[0] + v1 * direction[1] + v2 * direction[2]
        if t <= 0.0 or t >= best_t:
            continue
        perp2 = v0 * v0 + v1 * v1 + v2 * v2 - t * t
        if perp2 <= r2:
            best_t = t
            best = p
    if best >= 0:
        facing = (normals[best, 0] * direction[0] + normals[best, 1] * direction[1]
                  + normals[best, 2] * direction[2])
        if facing >= 0.0:
            return -1
    return best


# --------------------------------------------------------------------------- observation


@njit(cache=True, fastmath=False)
def observe(points, normals, curvature, directions, row, pol, rng, obs, t):
    """Write the observation at surface sample ``row`` into row ``t`` of ``obs``
    (``kernels.evidence_layout.Observations``): location and pose rows rotated into the
    world by the episode's ``Q`` (float64, rounded once), then, with noise on
    (``pol.iparams[PI_NOISE]``), ``engine.data.sensor.apply_noise``'s noise (2 mm location,
    2 deg pose as one rotation of xyz Euler angles, 0.1 log curvature with the curvatures
    re-sorted, 0.1 hue clipped to [0, 1], 1 % pose_defined flips) drawn from ``rng``. The
    features are ``[hue,] log k1, log k2`` and kappa the larger absolute log curvature.
    """
    q = pol.rotation
    fp = pol.fparams
    noisy = pol.iparams[PI_NOISE] == 1
    # pose rows normal, dir1, dir2 in the object frame, then in the world
    pose = np.empty((3, 3))
    for j in range(3):
        pose[0, j] = normals[row, j]
        pose[1, j] = directions[row, j]
        pose[2, j] = directions[row, 3 + j]
    loc = np.empty(3)
    for i in range(3):
        loc[i] = np.float64(q[3 * i]) * points[row, 0] + np.float64(q[3 * i + 1]) * points[row, 1] \
            + np.float64(q[3 * i + 2]) * points[row, 2]
    wpose = np.empty((3, 3))
    for r in range(3):
        for i in range(3):
            wpose[r, i] = (np.float64(q[3 * i]) * pose[r, 0] + np.float64(q[3 * i + 1]) * pose[r, 1]
                           + np.float64(q[3 * i + 2]) * pose[r, 2])
    k1 = curvature[row, 0]
    k2 = curvature[row, 1]
    defined = abs(k1 - k2) >= np.float32(10.0)
    n_feat = obs.features.shape[1]
    hue = np.float64(fp[PF_HUE])
    if noisy:
        # location: float32 world location plus N(0, sd) in float64
        for i in range(3):
            loc[i] = np.float64(np.float32(loc[i])) + rng_normal(rng) * fp[PF_NOISE_LOC]
        # pose: rows v -> Rn v with Rn of xyz Euler angles N(0, sd) degrees
        wpose32 = np.empty((3, 3))
        for r in range(3):
            for i in range(3):
                wpose32[r, i] = np.float64(np.float32(wpose[r, i]))
        ax = np.deg2rad(rng_normal(rng) * fp[PF_NOISE_POSE])
        ay = np.deg2rad(rng_normal(rng) * fp[PF_NOISE_POSE])
        az = np.deg2rad(rng_normal(rng) * fp[PF_NOISE_POSE])
        rn = _euler_matrix(ax, ay, az)
        for r in range(3):
            for i in range(3):
                wpose[r, i] = wpose32[r, 0] * rn[i, 0] + wpose32[r, 1] * rn[i, 1] + wpose32[r, 2] * rn[i, 2]
        lk1 = np.sign(np.float64(k1)) * np.log1p(abs(np.float64(k1))) + rng_normal(rng) * fp[PF_NOISE_CURV]
        lk2 = np.sign(np.float64(k2)) * np.log1p(abs(np.float64(k2))) + rng_normal(rng) * fp[PF_NOISE_CURV]
        k1 = np.float32(np.sign(lk1) * np.expm1(abs(lk1)))
        k2 = np.float32(np.sign(lk2) * np.expm1(abs(lk2)))
        if abs(k2) > abs(k1):  # re-sorted; the directions swap as dir1' = dir2, dir2' = -dir1
            tmp = k1
            k1 = k2
            k2 = tmp
            for i in range(3):
                d1 = wpose[1, i]
                wpose[1, i] = wpose[2, i]
                wpose[2, i] = -d1
        # (pose_defined follows the sensed curvatures before noise, as apply_noise's does)
        if n_feat == 3:
            hue = min(1.0, max(0.0, np.float64(np.float32(hue)) + rng_normal(rng) * fp[PF_NOISE_HUE]))
        if rng_uniform(rng) < fp[PF_NOISE_FLIP]:
            defined = not defined
    for i in range(3):
        obs.location[t, i] = np.float32(loc[i])
    for r in range(3):
        for i in range(3):
            obs.pose[t, 3 * r + i] = np.float32(wpose[r, i])
    obs.pose_defined[t] = defined
    c = 0
    if n_feat == 3:
        obs.features[t, 0] = np.float32(hue)
        c = 1
    lg1 = np.float32(np.sign(k1) * np.log1p(abs(k1)))
    lg2 = np.float32(np.sign(k2) * np.log1p(abs(k2)))
    obs.features[t, c] = lg1
    obs.features[t, c + 1] = lg2
    obs.kappa[t] = max(abs(lg1), abs(lg2))


@njit(cache=True, fastmath=False)
def _euler_matrix(ax, ay, az):
    """``Rz(az) Ry(ay) Rx(ax)`` (extrinsic xyz, float64 (3, 3))."""
    cx, sx = np.cos(ax), np.sin(ax)
    cy, sy = np.cos(ay), np.sin(ay)
    cz, sz = np.cos(az), np.sin(az)
    m = np.empty((3, 3))
    m[0, 0] = cz * cy
    m[0, 1] = cz * sy * sx - sz * cx
    m[0, 2] = cz * sy * cx + sz * sx
    m[1, 0] = sz * cy
    m[1, 1] = sz * sy * sx + cz * cx
    m[1, 2] = sz * sy * cx - cz * sx
    m[2, 0] = -sy
    m[2, 1] = cy * sx
    m[2, 2] = cy * cx
    return m
