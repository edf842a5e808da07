"""Several evidence learning modules that vote (``docs/evidence-matching.md`` section 6), one
compiled call per episode.

One module per sensor patch, each with its own object models (learned from its own
patch) and its own hypotheses. The state of all modules lives in the layout of
``kernels.evidence_layout`` with a leading module axis:

- :class:`ModuleModels`: every module's ``ObjectModels`` concatenated (nodes, each
  module's node grid), with ``offsets`` int64 (M + 1, 3): module ``m`` owns nodes
  ``offsets[m, 0] .. offsets[m + 1, 0]``, ``cand_start`` entries ``offsets[m, 1] ..
  offsets[m + 1, 1]`` (its C_m + 1 of them) and candidates ``offsets[m, 2] .. offsets[m +
  1, 2]``; ``obj_start`` is int64 (M, O + 1), ``grid_origin`` / ``grid_index`` (M * O, 3 / 4);
  inside a module every index is the module's own (as in a one-module model), so
  :func:`module_model` hands each module's slices to the one-module phases unchanged;
- ``State`` with ``istate`` (M, N_ISTATE), ``fstate`` (M, N_FSTATE), ``obj_max`` and
  ``obj_count`` (M, O); ``Hypotheses`` with every field (M, cap, ...): module ``m``'s rows
  are row ``m`` of each array (its module index), so a module's view is C-contiguous
  and of exactly the one-module type; ``Observations`` with every field (M, T, ...),
  module ``m`` seeing patch ``m``;
- :class:`VoteParams`: ``conn`` uint8 (M, M) (``conn[r, s]``: r receives s's votes),
  ``fvote`` float32 (``FV_*``), ``ivote`` int64 (``IV_*``).

A step (:func:`voting_episode`): phase 1 of every module first (so that a step needing
larger hypothesis arrays is repeated whole after growing them), then phases 2-6 of each
module in turn (``kernels.evidence_phases``, each parallel inside), then the vote
exchange (``kernels.voting.exchange_votes``' body, its loops in parallel; every module has an on-object feature step
at every step of these episodes, so every module sends and receives), the per-object
maxima and MLH of each module a vote changed, and the terminal check: each module's
possible objects (section 5.2; none: the module is in ``no_match``, from which a vote
can bring it back); when every module is in ``no_match`` the episode ends (``NO_MATCH``);
after ``min_eval_steps`` each module with one possible object checks its pose
(sections 5.3-5.5) and the episode ends (``MATCH``) when at least ``min_lms_match``
modules matched (tbp.monty's ``AnyLMsMatch(count)``); at ``max_eval_steps`` it ends
(``TIME_OUT``). With one module and no voting this is ``kernels.evidence``'s episode,
bit for bit (tests/test_evidence_voting.py).
"""

from collections import namedtuple

import numpy as np
from numba import njit

from ._flags import FASTMATH
from .evidence_layout import (
    FP_MMD, FP_PAST, FP_PRESENT, FP_X_PERCENT, IP_MAX_STEPS, IP_MIN_STEPS, IS_DETECTED, IS_MATCHING_STEPS,
    IS_MLH, IS_N_HYP, IS_N_POSSIBLE, IS_NEED, IS_OUTCOME, IS_STEP, FS_MLH_EV, MATCH, NEED_CAPACITY, NO_MATCH,
    RUNNING, TIME_OUT, Hypotheses, ObjectModels, Observations, State,
)
from .evidence_phases import (
    node_feature_evidence, mark_possible_objects, record_best, sample_new, terminal_check, update_existing,
    begin_step, end_step, step_parameters,
)
from .voting import Receiving, exchange_body

_NEG_INF = np.float32(-np.inf)

# fvote (float32)
FV_THRESHOLD = 0  # vote_evidence_threshold
FV_WEIGHT = 1  # vote_weight
N_FVOTE = 2

# ivote (int64)
IV_MIN_MATCH = 0  # min_lms_match
IV_MODE = 1  # kernels.voting.VOTE_TRANSPOSE or VOTE_ROTATE
IV_ENABLED = 2  # 1: exchange votes after every step
IV_BINS = 3  # the vote searches' task bins: the threads the episode runs on (set per call)
N_IVOTE = 4

ModuleModels = namedtuple("ModuleModels", ObjectModels._fields + ("offsets",))
VoteParams = namedtuple("VoteParams", "conn fvote ivote")


@njit(cache=True)
def module_model(model, m, n_obj):
    """Module ``m``'s ``ObjectModels``: C-contiguous slices of ``model`` (``ModuleModels``)."""
    off = model.offsets
    n0, n1 = off[m, 0], off[m + 1, 0]
    s0, s1 = off[m, 1], off[m + 1, 1]
    k0, k1 = off[m, 2], off[m + 1, 2]
    g0, g1 = m * n_obj, (m + 1) * n_obj
    return ObjectModels(model.node_pos[n0:n1], model.node_pose[n0:n1], model.node_pfd[n0:n1],
                        model.node_feat[n0:n1], model.obj_start[m], model.grid_origin[g0:g1],
                        model.grid_index[g0:g1], model.cand_start[s0:s1], model.cand_node[k0:k1],
                        model.cand_dist[k0:k1], model.cand_code[k0:k1])


@njit(cache=True)
def _best_after_votes(st, hyp):
    """Per-object maxima and the MLH of one module after votes changed its evidences
    (``end_step``'s rule: best object, ties the first; its first row with that evidence).
    Returns ``(o_best, mlh)``."""
    obj_max = st.obj_max
    n_obj = obj_max.shape[0]
    for o in range(n_obj):
        obj_max[o] = _NEG_INF
    n = st.istate[IS_N_HYP]
    for h in range(n):
        o = hyp.obj[h]
        if o >= 0 and hyp.ev[h] > obj_max[o]:
            obj_max[o] = hyp.ev[h]
    o_best = -1
    for o in range(n_obj):
        if st.obj_count[o] > 0 and (o_best < 0 or obj_max[o] > obj_max[o_best]):
            o_best = o
    mlh = -1
    if o_best >= 0:
        for h in range(n):
            if hyp.obj[h] == o_best and hyp.ev[h] == obj_max[o_best]:
                mlh = h
                break
    st.istate[IS_MLH] = mlh
    st.fstate[FS_MLH_EV] = obj_max[o_best] if o_best >= 0 else _NEG_INF
    return o_best, mlh


@njit(cache=True)
def _modules_terminal(prm, vp, st, hyp, o_best, mlh):
    """The terminal check of all modules after the vote (see the module notes). Returns the
    episode's outcome code; leaves each module's state in ``st.istate[m, IS_OUTCOME]``
    (``MATCH``, ``NO_MATCH``, ``RUNNING``; ``TIME_OUT`` for the undecided at the limit) and
    its detected object in ``IS_DETECTED`` (-1: none)."""
    istate = st.istate
    n_mod = istate.shape[0]
    n_obj = st.obj_max.shape[1]
    x = np.float64(prm.fparams[FP_X_PERCENT])
    possible = np.zeros(n_obj, np.uint8)
    n_poss = np.zeros(n_mod, np.int64)
    any_possible = False
    for m in range(n_mod):
        n_poss[m] = mark_possible_objects(st.obj_max[m], st.obj_count[m], x, possible)
        istate[m, IS_N_POSSIBLE] = n_poss[m]
        istate[m, IS_OUTCOME] = NO_MATCH if n_poss[m] == 0 else RUNNING
        if n_poss[m] > 0:
            any_possible = True
    if not any_possible:
        return NO_MATCH
    steps = istate[0, IS_MATCHING_STEPS]
    if steps > prm.iparams[IP_MIN_STEPS]:
        n_matched = 0
        for m in range(n_mod):
            stm = State(istate[m], st.fstate[m], st.obj_max[m], st.obj_count[m])
            hm = Hypotheses(hyp.obj[m], hyp.loc[m], hyp.rot[m], hyp.ev[m], hyp.slope[m], hyp.age[m],
                            hyp.possible[m], hyp.buf[m])
            n = istate[m, IS_N_HYP]
            if n_poss[m] == 1:
                ob = o_best[m]
                if terminal_check(n, ob, st.obj_max[m, ob], mlh[m], prm, stm, hm):
                    istate[m, IS_DETECTED] = ob
                    istate[m, IS_OUTCOME] = MATCH
                    n_matched += 1
                else:
                    istate[m, IS_DETECTED] = -1
            elif n_poss[m] > 1:
                for h in range(n):
                    hm.possible[h] = 0
                istate[m, IS_DETECTED] = -1
        if n_matched >= vp.ivote[IV_MIN_MATCH]:
            return MATCH
    if steps >= prm.iparams[IP_MAX_STEPS]:
        for m in range(n_mod):
            if istate[m, IS_OUTCOME] == RUNNING:
                istate[m, IS_OUTCOME] = TIME_OUT
        return TIME_OUT
    return RUNNING


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def voting_episode(model, prm, vp, st, hyp, obs, first_step, trace):
    """Steps ``first_step ..`` of an episode of all modules and their votes, until it ends.

    Parameters
    ----------
    model : ModuleModels
    prm : Params (shared by every module)
    vp : VoteParams
    st : State with a module axis (see the module notes), written
    hyp : Hypotheses with a module axis, written
    obs : Observations with a module axis: (M, T, ...)
    first_step : int
    trace : float32 (T, M, O)
        Receives each module's best evidence per object after each step, votes included
        (-inf for an object without hypotheses).

    Returns ``(code, next_step)`` as ``kernels.evidence.evidence_episode``: ``NEED_CAPACITY``
    when step ``next_step`` needs larger hypothesis arrays (``st.istate[m, IS_NEED]`` per
    module; grow every module's and call again from ``next_step``).
    """
    n_mod = st.istate.shape[0]
    n_obj = st.obj_max.shape[1]
    n_steps = obs.location.shape[1]
    fparams = prm.fparams
    voting = vp.ivote[IV_ENABLED] != 0
    bounded = fparams[FP_PAST] + fparams[FP_PRESENT] == np.float32(1.0)
    rcv = Receiving(vp.fvote[FV_WEIGHT], bounded, fparams[FP_MMD], np.int64(vp.ivote[IV_MODE]))
    n_old = np.zeros(n_mod, np.int64)
    n_new = np.zeros(n_mod, np.int64)
    deleting = np.zeros(n_mod, np.bool_)
    h_per = np.zeros(n_mod, np.int64)
    k_nodes = np.zeros((n_mod, n_obj), np.int64)
    o_best = np.zeros(n_mod, np.int64)
    mlh = np.zeros(n_mod, np.int64)
    sensed = np.zeros((n_mod, 3), np.float32)
    sends = np.ones(n_mod, np.uint8)
    n_rows = np.zeros(n_mod, np.int64)
    code = RUNNING
    t = first_step
    while t < n_steps:
        # 1. every module's burst trigger, compaction and capacity first
        ok_all = True
        for m in range(n_mod):
            stm = State(st.istate[m], st.fstate[m], st.obj_max[m], st.obj_count[m])
            hm = Hypotheses(hyp.obj[m], hyp.loc[m], hyp.rot[m], hyp.ev[m], hyp.slope[m], hyp.age[m],
                            hyp.possible[m], hyp.buf[m])
            ok, dele, no, nn, kn, hp = begin_step(model.obj_start[m], prm, stm, hm, obs.pose_defined[m, t])
            if not ok:
                ok_all = False
            deleting[m] = dele
            n_old[m] = no
            n_new[m] = nn
            h_per[m] = hp
            for o in range(n_obj):
                k_nodes[m, o] = kn[o]
        if not ok_all:
            for m in range(n_mod):
                st.istate[m, IS_NEED] = max(st.istate[m, IS_NEED], n_old[m] + n_new[m])
            return NEED_CAPACITY, t
        # 2-6. each module's step (each phase parallel inside)
        for m in range(n_mod):
            # module m's models, built here: a named tuple that crosses into a parallel loop
            # must come from a call of its class (numba's parfor lowering rebuilds it by name)
            off = model.offsets
            n0, n1, s0, s1, k0, k1 = off[m, 0], off[m + 1, 0], off[m, 1], off[m + 1, 1], off[m, 2], off[m + 1, 2]
            mdl = ObjectModels(model.node_pos[n0:n1], model.node_pose[n0:n1], model.node_pfd[n0:n1],
                               model.node_feat[n0:n1], model.obj_start[m], model.grid_origin[m * n_obj:(m + 1) * n_obj],
                               model.grid_index[m * n_obj:(m + 1) * n_obj], model.cand_start[s0:s1],
                               model.cand_node[k0:k1], model.cand_dist[k0:k1], model.cand_code[k0:k1])
            stm = State(st.istate[m], st.fstate[m], st.obj_max[m], st.obj_count[m])
            hm = Hypotheses(hyp.obj[m], hyp.loc[m], hyp.rot[m], hyp.ev[m], hyp.slope[m], hyp.age[m],
                            hyp.possible[m], hyp.buf[m])
            om = Observations(obs.location[m], obs.pose[m], obs.pose_defined[m], obs.features[m], obs.kappa[m])
            step = st.istate[m, IS_STEP]
            path_par, ev_par = step_parameters(prm, stm, om, t, deleting[m])
            phi = node_feature_evidence(mdl, prm, om, t)
            blocks = update_existing(mdl, prm, hm, phi, path_par, ev_par, n_old[m], step, n_obj)
            if n_new[m] > 0:
                sample_new(mdl, prm, hm, phi, om, t, n_old[m], k_nodes[m], h_per[m], step)
            ob, ml = end_step(stm, hm, blocks, n_old[m], n_new[m], k_nodes[m], h_per[m])
            o_best[m] = ob
            mlh[m] = ml
        # the vote exchange, then the maxima and MLH of each module a vote changed
        if voting:
            for m in range(n_mod):
                n_rows[m] = st.istate[m, IS_N_HYP]
                for a in range(3):
                    sensed[m, a] = obs.location[m, t, a]
            # kernels.voting.exchange_votes, its loops in parallel
            _, changed = exchange_body(hyp.obj, hyp.loc, hyp.rot, hyp.ev, n_rows, sensed, sends, vp.conn,
                                       np.float64(vp.fvote[FV_THRESHOLD]), rcv, n_obj, max(vp.ivote[IV_BINS], 1))
            for m in range(n_mod):
                if changed[m] > 0:
                    stm = State(st.istate[m], st.fstate[m], st.obj_max[m], st.obj_count[m])
                    hm = Hypotheses(hyp.obj[m], hyp.loc[m], hyp.rot[m], hyp.ev[m], hyp.slope[m], hyp.age[m],
                                    hyp.possible[m], hyp.buf[m])
                    ob, ml = _best_after_votes(stm, hm)
                    o_best[m] = ob
                    mlh[m] = ml
        # 7. possible objects and terminal conditions
        code = _modules_terminal(prm, vp, st, hyp, o_best, mlh)
        for m in range(n_mod):
            record_best(trace[t, m], st.obj_max[m], st.obj_count[m])
        t += 1
        if code != RUNNING:
            break
    return code, t


def module_models(models) -> ModuleModels:
    """One :class:`ModuleModels` of per-module ``ObjectModels`` (the same objects in each)."""
    n_obj = {m.obj_start.shape[0] - 1 for m in models}
    if len(n_obj) != 1:
        raise ValueError(f"every module must hold the same objects, got object counts {sorted(n_obj)}")
    offsets = np.zeros((len(models) + 1, 3), np.int64)
    for i, m in enumerate(models):
        offsets[i + 1] = offsets[i] + (m.node_pos.shape[0], m.cand_start.shape[0], m.cand_node.shape[0])
    cat = [np.ascontiguousarray(np.concatenate([getattr(m, f) for m in models])) for f in ObjectModels._fields]
    fields = dict(zip(ObjectModels._fields, cat))
    fields["obj_start"] = np.ascontiguousarray(np.stack([m.obj_start for m in models]), np.int64)
    return ModuleModels(**fields, offsets=offsets)


def vote_params(conn, threshold: float, weight: float, min_match: int, mode: int, enabled: bool) -> VoteParams:
    """A :class:`VoteParams` of C-contiguous arrays of the declared dtypes."""
    fvote = np.zeros(N_FVOTE, np.float32)
    fvote[FV_THRESHOLD] = threshold
    fvote[FV_WEIGHT] = weight
    ivote = np.zeros(N_IVOTE, np.int64)
    ivote[IV_MIN_MATCH] = min_match
    ivote[IV_MODE] = mode
    ivote[IV_ENABLED] = 1 if enabled else 0
    ivote[IV_BINS] = 1  # the caller sets the episode's thread count (numba.get_num_threads())
    return VoteParams(np.ascontiguousarray(conn, np.uint8), fvote, ivote)


def stacked(items, cls):
    """``cls`` (a layout named tuple) of the per-module ``items`` stacked along a new first axis."""
    return cls(*(np.ascontiguousarray(np.stack([getattr(x, f) for x in items])) for f in cls._fields))
