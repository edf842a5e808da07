"""The evidence episode with the sensor in the loop: the policy moves, the surface is sensed,
the evidence is updated, step by step inside one compiled call.

``kernels.evidence.evidence_episode`` replays observations computed in advance (a walk fixed
before the episode). :func:`evidence_policy_episode` simulates them instead: before step
``t`` it runs the policy (:func:`advance`: a hypothesis-testing jump when the goal-state
generator asks for one and it lands on the object, else the walk's or the curvature
policy's move), snaps the sensor to the surface sample it reaches, writes that sample's
observation (with the configured noise) into row ``t`` of the ``Observations``, and then
runs the evidence step's phases (``kernels.evidence_phases.one_step``) on it.

A step whose evidence update needs larger hypothesis arrays returns ``NEED_CAPACITY`` with
its observation already written (``PolicyState.istate[SI_WRITTEN]``): the call that repeats
the step after growing them does not move the sensor again. The stepwise path is this
kernel run for one step per call (``n_run = 1``), so it is the fused path step by step.

Parallel (``one_step``'s ``prange`` bodies are inlined here, numba/numba#8578); every
policy kernel it calls is serial. A cached kernel must not call this one.
"""

import numpy as np
from numba import njit

from ._flags import FASTMATH
from .evidence_layout import CELLS_PER_RADIUS, FP_MMD, IS_MATCHING_STEPS, IS_MLH, IS_N_HYP, NEED_CAPACITY, RUNNING
from .evidence_phases import one_step, record_best
from .policy import (
    PF_DOD, PF_RAY_RADIUS, PF_REVERSE, PF_STEP, PF_TURN_SD, PI_JUMPS, PI_TYPE, SF_HEADING, SF_PREV_ROT, SI_CUR,
    SI_GOAL_STEP, SI_N_GOALS, SI_N_ON, SI_PREV_TOP, SI_TICKS, SI_WRITTEN, TYPE_WALK, best_row, curvature_heading,
    goal_check, graph_mismatch_grid, mapped_nearest, move_along, observe, push_history, ray_hit, rng_normal,
    start_heading, walk_move,
)
from .geometry import to_tangent
from .timing import ticks


@njit(cache=True, fastmath=False)
def _to_object(q, v, out):
    """``out = Q^T v`` (float32 in, float64 sums, float32 out)."""
    for i in range(3):
        out[i] = np.float32(np.float64(q[i]) * v[0] + np.float64(q[3 + i]) * v[1] + np.float64(q[6 + i]) * v[2])


@njit(cache=True, fastmath=False)
def try_jump(model, prm, st, hyp, obs, t, points, normals, pol):
    """The goal-state generator after step ``t - 1``: when it asks for a hypothesis test, the
    target (:func:`kernels.policy.graph_mismatch`) seen from ``desired_object_distance`` x 1.5
    along its normal through the most likely hypothesis (:func:`kernels.policy.ray_hit`).

    Returns the sample the sensor lands on, or -1 (no jump, or one undone: it saw nothing or
    the inside of the object). Sets ``pol.jumped[t]`` to 1 (landed) or 2 (undone). ``prm``: the
    step's settings (their ``max_match_distance`` gives the node grid's cell, which the target
    search looks at first: :func:`kernels.policy.graph_mismatch_grid`)."""
    si, fp = pol.istate, pol.fparams
    n_rows = st.istate[IS_N_HYP]
    mlh = st.istate[IS_MLH]
    steps = st.istate[IS_MATCHING_STEPS]
    jump, focus, top, second = goal_check(pol, st.obj_max, st.obj_count, hyp.obj, n_rows, mlh, hyp.rot, steps,
                                          pol.rng)
    if not jump or mlh < 0:
        return -1
    r1 = mlh
    if focus:
        o2 = top
        r2 = best_row(hyp.obj, hyp.ev, n_rows, top, r1)
    else:
        o2 = second
        r2 = best_row(hyp.obj, hyp.ev, n_rows, second, -1)
    # the goal is set (tbp.monty counts the steps since then, and remembers the top two)
    si[SI_GOAL_STEP] = steps
    si[SI_N_GOALS] += 1
    si[SI_PREV_TOP] = top
    si[SI_PREV_TOP + 1] = second
    for c in range(9):
        pol.fstate[SF_PREV_ROT + c] = hyp.rot[r1, c]
    if r2 < 0:
        pol.jumped[t] = 2
        return -1
    lo2, hi2 = model.obj_start[o2], model.obj_start[o2 + 1]
    cell = prm.fparams[FP_MMD] / np.float32(CELLS_PER_RADIUS)  # as the step's search and build_node_grid
    node = graph_mismatch_grid(model, top, o2, hyp.loc[r1], hyp.rot[r1], hyp.loc[r2], hyp.rot[r2], cell)
    if node < 0:
        pol.jumped[t] = 2
        return -1
    via = r1
    if fp[PF_REVERSE] > 0 and mapped_nearest(model.node_pos, node, lo2, hi2, hyp.loc[r1], hyp.rot[r1], hyp.loc[r2],
                                             hyp.rot[r2]) < fp[PF_REVERSE]:
        # the first graph is (within the radius) part of the second: test where the second
        # differs, through the second hypothesis (tbp.monty's TODO in _compute_graph_mismatch)
        other = graph_mismatch_grid(model, o2, top, hyp.loc[r2], hyp.rot[r2], hyp.loc[r1], hyp.rot[r1], cell)
        if other >= 0:
            node = other
            via = r2
    # displacement and normal in the body frame: R^T (model-frame vectors) of the hypothesis used
    rot = hyp.rot[via]
    disp = np.empty(3)
    nrm = np.empty(3)
    for i in range(3):
        disp[i] = 0.0
        nrm[i] = 0.0
    for k in range(3):
        dk = np.float64(model.node_pos[node, k]) - np.float64(hyp.loc[via, k])
        nk = np.float64(model.node_pose[node, k])
        for i in range(3):
            disp[i] += np.float64(rot[3 * k + i]) * dk
            nrm[i] += np.float64(rot[3 * k + i]) * nk
    s = np.sqrt(nrm[0] ** 2 + nrm[1] ** 2 + nrm[2] ** 2)
    if not s > 0.0:
        pol.jumped[t] = 2
        return -1
    back = 1.5 * np.float64(fp[PF_DOD])
    origin_b = np.empty(3)
    dir_b = np.empty(3)
    for i in range(3):
        dir_b[i] = -nrm[i] / s
        origin_b[i] = np.float64(obs.location[t - 1, i]) + disp[i] - dir_b[i] * back
    # into the object's frame with the episode's true rotation: Q^T
    q = pol.rotation
    origin = np.empty(3)
    direction = np.empty(3)
    for i in range(3):
        origin[i] = np.float64(q[i]) * origin_b[0] + np.float64(q[3 + i]) * origin_b[1] + np.float64(q[6 + i]) * origin_b[2]
        direction[i] = np.float64(q[i]) * dir_b[0] + np.float64(q[3 + i]) * dir_b[1] + np.float64(q[6 + i]) * dir_b[2]
    hit = ray_hit(points, normals, origin, direction, fp[PF_RAY_RADIUS])
    if hit < 0:
        pol.jumped[t] = 2
        return -1
    si[SI_N_ON] += 1
    pol.jumped[t] = 1
    return hit


@njit(cache=True, fastmath=False)
def advance(model, prm, st, hyp, obs, t, surf, pol):
    """Move the sensor over ``surf`` (``kernels.policy.SurfaceSamples``) for step ``t`` and write
    its observation into row ``t`` of ``obs``.

    Step 0 senses the start sample (``pol.istate[SI_CUR]``). Later steps: a jump when hypothesis
    testing is on and one lands, else the policy's move (``policy.type``) from the present
    sample; what the policy senses is the observation of step ``t - 1`` (noise included),
    brought into the object's frame.
    """
    points, normals, curvature, directions, tree = surf
    si, fp = pol.istate, pol.fparams
    fs = pol.fstate
    rng = pol.rng
    cur = si[SI_CUR]
    if t == 0:
        if pol.iparams[PI_TYPE] == TYPE_WALK:
            # the walk's random first heading (engine.data.sensor.walk: three standard normals)
            h0 = np.empty(3, np.float32)
            for j in range(3):
                h0[j] = np.float32(rng_normal(rng))
            h = start_heading(normals, cur, h0)
            for j in range(3):
                fs[SF_HEADING + j] = h[j]
        observe(points, normals, curvature, directions, cur, pol, rng, obs, t)
        return
    landed = -1
    if pol.iparams[PI_JUMPS] == 1:
        landed = try_jump(model, prm, st, hyp, obs, t, points, normals, pol)
    if landed >= 0:
        cur = landed
        if not np.isnan(fs[SF_HEADING]):
            h = to_tangent(fs[SF_HEADING:SF_HEADING + 3].copy(), normals[cur])
            for j in range(3):
                fs[SF_HEADING + j] = h[j]
    elif pol.iparams[PI_TYPE] == TYPE_WALK:
        turn = np.float32(rng_normal(rng) * fp[PF_TURN_SD])
        cur, h = walk_move(points, normals, tree, cur, fs[SF_HEADING:SF_HEADING + 3].copy(), fp[PF_STEP], turn)
        for j in range(3):
            fs[SF_HEADING + j] = h[j]
    else:
        q = pol.rotation
        loc = np.empty(3, np.float32)
        nrm = np.empty(3, np.float32)
        dirs = np.empty((2, 3), np.float32)
        _to_object(q, obs.location[t - 1], loc)
        _to_object(q, obs.pose[t - 1, 0:3], nrm)
        _to_object(q, obs.pose[t - 1, 3:6], dirs[0])
        _to_object(q, obs.pose[t - 1, 6:9], dirs[1])
        n_feat = obs.features.shape[1]
        curv = obs.features[t - 1, n_feat - 2:]  # log curvatures: |log k| orders as |k| does
        push_history(pol, loc, nrm)
        curvature_heading(pol, normals[cur], dirs, curv, obs.pose_defined[t - 1], rng)
        cur, h = move_along(points, normals, tree, cur, fs[SF_HEADING:SF_HEADING + 3].copy(), fp[PF_STEP])
        for j in range(3):
            fs[SF_HEADING + j] = h[j]
    si[SI_CUR] = cur
    observe(points, normals, curvature, directions, cur, pol, rng, obs, t)


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def evidence_policy_episode(model, prm, st, hyp, obs, first_step, n_run, trace, surf, pol):
    """Steps ``first_step ..`` of a simulated episode in one call (at most ``n_run`` of them when
    ``n_run > 0``), until it ends.

    Parameters
    ----------
    model, prm, st, hyp : as ``kernels.evidence.evidence_episode``
    obs : Observations of ``T`` rows, written here step by step (row ``t`` before step ``t``)
    first_step : int
    n_run : int, steps to run at most (0 or less: all)
    trace : float32 (T, O), each object's best evidence after each step
    surf : kernels.policy.SurfaceSamples, the object's surface samples (object frame)
    pol : kernels.policy.PolicyState

    Returns ``(code, next_step)`` as ``evidence_episode`` does.
    """
    n_steps = obs.location.shape[0]
    obj_max = st.obj_max
    obj_count = st.obj_count
    stop = n_steps if n_run <= 0 else min(n_steps, first_step + n_run)
    code = RUNNING
    t = first_step
    while t < stop:
        if pol.istate[SI_WRITTEN] <= t:
            start = ticks()  # the policy's and the simulation's share of the step (two counter reads)
            advance(model, prm, st, hyp, obs, t, surf, pol)
            pol.istate[SI_TICKS] += ticks() - start
            pol.istate[SI_WRITTEN] = t + 1
        code = one_step(model, prm, st, hyp, obs, t)
        if code == NEED_CAPACITY:
            return code, t
        record_best(trace[t], obj_max, obj_count)
        t += 1
        if code != RUNNING:
            break
    return code, t
