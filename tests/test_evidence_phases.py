"""The evidence step's phases (``kernels/evidence_phases.py``), one at a time, against the
spec-literal references of ``tests/evidence_reference.py`` (or plain NumPy where the phase
is bookkeeping), and the layout's derived allocation, growth and compaction.

Each phase is called directly with the named tuples of ``kernels.evidence_layout``; the
whole step is held to the references by ``tests/test_evidence_kernels.py``.
"""

import numpy as np
import pytest

import evidence_reference as er
from kernels import evidence as ev
from kernels import evidence_layout as lay
from kernels import evidence_phases as ph
from test_evidence_kernels import (
    FEAT_SPEC, MMD, alloc_hyps, frames_from_normals, hyp_tuple, make_model, make_params, model_tuple, rand_rot,
    random_objects,
)

F32 = np.float32


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(2024)
    m, _ = make_model(*random_objects(rng, [300, 0, 170, 420]))
    return m


def _state(n_obj, **slots):
    st = lay.new_state(n_obj)
    for name, value in slots.items():
        (st.istate if name.startswith("IS_") else st.fstate)[getattr(lay, name)] = value
    return st


def _obs(rng, T=3, F=3):
    pose = frames_from_normals(rng.normal(size=(T, 3)) / 1.0, rng)
    pose[:, :3] /= np.linalg.norm(pose[:, :3], axis=1, keepdims=True)
    return lay.observations(rng.normal(0, 0.02, (T, 3)), pose, rng.integers(0, 2, T).astype(bool),
                            rng.uniform(0, 1, (T, F)), rng.normal(0, 3, T))


def _random_rows(rng, m, n, cap):
    """``n`` live rows near the model's nodes (a tenth dead), random rotations, evidence and ages."""
    hy = alloc_hyps(cap)
    n_obj = len(m["obj_start"]) - 1
    sizes = np.diff(m["obj_start"])
    objs = rng.choice(np.flatnonzero(sizes > 0), n).astype(np.int32)
    for h in range(n):
        o = objs[h]
        nd = rng.integers(m["obj_start"][o], m["obj_start"][o + 1])
        hy["hyp_loc"][h] = m["node_pos"][nd] + rng.normal(0, 0.4 * MMD, 3)
        hy["hyp_rot"][h] = rand_rot(rng).reshape(9)
    hy["hyp_obj"][:n] = objs
    hy["hyp_obj"][:n][rng.uniform(size=n) < 0.1] = -1
    hy["hyp_ev"][:n] = rng.normal(1, 2, n)
    hy["hyp_age"][:n] = rng.integers(1, 12, n)
    hy["hyp_slope"][:n] = np.where(rng.uniform(size=n) < 0.2, np.nan, rng.normal(0.5, 0.5, n))
    hy["hyp_buf"][:n] = rng.normal(1, 2, (n, hy["hyp_buf"].shape[1]))
    assert n_obj == len(sizes)
    return hy


# ----------------------------------------------------------------------------- the layout


def test_layout_declares_every_group_once():
    """The named tuples follow their field tables; slot constants are distinct and in range."""
    for cls, fields in ((lay.ObjectModels, lay.MODEL_FIELDS), (lay.Hypotheses, lay.HYPOTHESIS_FIELDS),
                        (lay.Params, lay.PARAM_FIELDS), (lay.State, lay.STATE_FIELDS),
                        (lay.Observations, lay.OBSERVATION_FIELDS)):
        assert cls._fields == tuple(f[0] for f in fields)
    for prefix, n in (("FP_", lay.N_FPARAMS), ("IP_", lay.N_IPARAMS), ("EP_", lay.N_EV_PAR)):
        slots = sorted(v for k, v in vars(lay).items() if k.startswith(prefix))
        assert slots == list(range(n)), prefix
    # 3-wide groups: FS_X_LAST and PP_DISP, PP_NORMAL, PP_DIR1
    fs = sorted(v for k, v in vars(lay).items() if k.startswith("FS_"))
    assert sorted(set(fs) | {lay.FS_X_LAST + 1, lay.FS_X_LAST + 2}) == list(range(lay.N_FSTATE))
    pp = {lay.PP_DELETING, lay.PP_MIN_AGE, lay.PP_SLOPE_MIN}
    for g in (lay.PP_DISP, lay.PP_NORMAL, lay.PP_DIR1):
        pp |= {g, g + 1, g + 2}
    assert sorted(pp) == list(range(lay.N_PATH_PAR))
    assert sorted(v for k, v in vars(lay).items() if k.startswith("IS_")) == list(range(lay.N_ISTATE))


def test_new_and_grown_hypotheses_follow_the_declaration():
    hyp = lay.new_hypotheses(7, window=4)
    for (name, dtype, shape), a in zip(lay.HYPOTHESIS_FIELDS, hyp):
        assert a.dtype == dtype and a.flags.c_contiguous and a.shape[0] == 7, name
        assert a.shape == tuple({"cap": 7, "W": 4}.get(d, d) for d in shape)
    rng = np.random.default_rng(1)
    for a in hyp:
        a[...] = rng.integers(0, 50, a.shape).astype(a.dtype)
    big = lay.grow_hypotheses(hyp, 20)
    for a, b in zip(hyp, big):
        assert b.shape[0] == 20 and b.dtype == a.dtype
        np.testing.assert_array_equal(b[:7], a)
        assert not b[7:].any()
    part = lay.grow_hypotheses(hyp, 9, n_rows=3)
    for a, b in zip(hyp, part):
        np.testing.assert_array_equal(b[:3], a[:3])
        assert not b[3:].any()


def test_rows_in_use_and_state():
    hyp = lay.new_hypotheses(10)
    st = lay.new_state(3)
    assert st.istate[lay.IS_MLH] == -1 and st.istate[lay.IS_DETECTED] == -1
    assert st.fstate[lay.FS_SLOPE_MAX] == -np.inf and st.obj_max.shape == (3,)
    st.istate[lay.IS_N_HYP] = 4
    view = lay.rows_in_use(hyp, st.istate)
    assert all(a.shape[0] == 4 for a in view)
    view.ev[:] = 5
    assert hyp.ev[:4].tolist() == [5] * 4  # views, not copies


def test_constructors_check_shapes():
    with pytest.raises(ValueError, match="Params.fparams"):
        lay.params(FEAT_SPEC, np.zeros(3), np.zeros(lay.N_IPARAMS))
    with pytest.raises(ValueError, match="ObjectModels.node_pos"):
        lay.object_models(*([np.zeros(4)] * len(lay.MODEL_FIELDS)))
    # the ten arrays of a model built before the candidate codes: the missing one named
    with pytest.raises(ValueError, match="ObjectModels takes 11 arrays .*cand_code.*got 10"):
        lay.object_models(*([np.zeros(4)] * 10))


# ----------------------------------------------------------------------------- 1. begin_step


@pytest.mark.parametrize("pose_defined", [True, False])
@pytest.mark.parametrize("updater", [ev.UPDATER_BURST, ev.UPDATER_CLASSIC])
def test_begin_step_samples_and_capacity(model, pose_defined, updater):
    """Hypotheses to sample per object as section 3.6 (``er.burst_nodes``), classic: every node;
    too small a capacity asks for exactly the rows needed."""
    m = model
    fp, ip = make_params(updater=updater, umbilical=6, sampling=0.4)
    prm = ev.params(FEAT_SPEC, fp, ip)
    sizes = np.diff(m["obj_start"])
    h = 2 if pose_defined else 6
    if updater == ev.UPDATER_BURST:
        want = [er.burst_nodes(np.zeros(n), n, pose_defined, 0.4, 6)[0] for n in sizes]
    else:
        want = list(sizes)
    n_old = 50
    for cap, ok_want in ((n_old + h * sum(want), True), (n_old + h * sum(want) - 1, False)):
        st = _state(len(sizes), IS_N_HYP=n_old)
        hy = alloc_hyps(cap)
        ok, deleting, got_old, n_new, k_nodes, hpn = ph.begin_step(m["obj_start"], prm, st, hyp_tuple(hy),
                                                                    pose_defined)
        assert ok == ok_want and got_old == n_old and hpn == h and list(k_nodes) == want
        assert n_new == h * sum(want)  # the first step always samples
        assert not deleting
        if not ok:
            assert st.istate[lay.IS_NEED] == n_old + n_new


def test_begin_step_burst_trigger_and_compaction(model):
    """A burst starts when none runs and the slope maximum is not above the trigger; dead rows
    are compacted away (order kept) once they outnumber the live ones."""
    m = model
    n_obj = len(m["obj_start"]) - 1
    fp, ip = make_params(burst_slope=1.0, burst_duration=4)
    prm = ev.params(FEAT_SPEC, fp, ip)
    rng = np.random.default_rng(5)
    for slope_max, left, want_left in ((0.5, 0, 4), (2.0, 0, 0), (0.5, 2, 2), (-np.inf, 0, 4)):
        st = _state(n_obj, IS_STEP=3, IS_BURST_LEFT=left, FS_SLOPE_MAX=slope_max)
        ok, deleting, _, n_new, _, _ = ph.begin_step(m["obj_start"], prm, st, hyp_tuple(alloc_hyps(20000)), True)
        assert ok and deleting and st.istate[lay.IS_BURST_LEFT] == want_left
        assert (n_new > 0) == (want_left > 0)
    for dead_frac in (0.3, 0.7):
        n = 200
        hy = _random_rows(rng, m, n, 20000)
        hy["hyp_obj"][:n] = np.where(rng.uniform(size=n) < dead_frac, -1, np.abs(hy["hyp_obj"][:n]))
        n_dead = int((hy["hyp_obj"][:n] < 0).sum())
        before = {k: v[:n].copy() for k, v in hy.items()}
        st = _state(n_obj, IS_STEP=3, IS_N_HYP=n, IS_N_DEAD=n_dead, FS_SLOPE_MAX=5.0)
        ok, _, n_old, _, _, _ = ph.begin_step(m["obj_start"], prm, st, hyp_tuple(hy), True)
        live = before["hyp_obj"] >= 0
        if 2 * n_dead > n:
            assert n_old == live.sum() and st.istate[lay.IS_N_DEAD] == 0
            for key in hy:
                np.testing.assert_array_equal(hy[key][:n_old], before[key][live], err_msg=key)
        else:
            assert n_old == n and st.istate[lay.IS_N_DEAD] == n_dead


# ----------------------------------------------------------------------------- 2. step_parameters


def test_step_parameters(model):
    rng = np.random.default_rng(3)
    fp, ip = make_params(mmd=0.012, w_normal=0.7, w_curv=1.3, deletion_slope=0.25, min_age=6)
    prm = ev.params(FEAT_SPEC, fp, ip)
    obs = _obs(rng, T=2)
    st = _state(4)
    for t, deleting in ((0, False), (1, True)):
        last = st.fstate[lay.FS_X_LAST:lay.FS_X_LAST + 3].copy()
        path_par, ev_par = ph.step_parameters(prm, st, obs, t, deleting)
        want_d = np.zeros(3, F32) if t == 0 else obs.location[t] - last
        np.testing.assert_array_equal(path_par[lay.PP_DISP:lay.PP_DISP + 3], want_d)
        np.testing.assert_array_equal(st.fstate[lay.FS_X_LAST:lay.FS_X_LAST + 3], obs.location[t])
        np.testing.assert_array_equal(path_par[lay.PP_NORMAL:lay.PP_NORMAL + 3], obs.pose[t, 0:3])
        np.testing.assert_array_equal(path_par[lay.PP_DIR1:lay.PP_DIR1 + 3], obs.pose[t, 3:6])
        assert path_par[lay.PP_DELETING] == deleting and path_par[lay.PP_MIN_AGE] == 6
        assert path_par[lay.PP_SLOPE_MIN] == F32(0.25)
        assert ev_par[lay.EP_INV_KAPPA] == pytest.approx(1 / (abs(float(obs.kappa[t])) + 0.5), rel=1e-6)
        assert ev_par[lay.EP_MMD] == F32(0.012) and ev_par[lay.EP_W_NORMAL] == F32(0.7)
        assert ev_par[lay.EP_W_CURV] == F32(1.3) and ev_par[lay.EP_POSE_DEFINED] == obs.pose_defined[t]
        st.istate[lay.IS_STEP] += 1


# ----------------------------------------------------------------------------- 3. node feature evidence


def test_node_feature_evidence(model):
    rng = np.random.default_rng(4)
    fp, ip = make_params(increment=1.5)
    obs = _obs(rng, T=2)
    got = ph.node_feature_evidence(model_tuple(model), ev.params(FEAT_SPEC, fp, ip), obs, 1)
    want = er.feature_evidence(model["node_feat"], obs.features[1], FEAT_SPEC[0], FEAT_SPEC[1],
                               FEAT_SPEC[2].astype(bool), 1.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 4. the update passes


def _path(rng, m, n=300, deleting=True):
    hy = _random_rows(rng, m, n, n + 5)
    d = rng.normal(0, 0.004, 3)
    pose = frames_from_normals(rng.normal(size=(1, 3)) / 1.0, rng)[0]
    pose[:3] /= np.linalg.norm(pose[:3])
    path_par = np.zeros(lay.N_PATH_PAR, F32)
    path_par[lay.PP_DISP:lay.PP_DISP + 3] = d
    path_par[lay.PP_NORMAL:lay.PP_NORMAL + 3] = pose[0:3]
    path_par[lay.PP_DIR1:lay.PP_DIR1 + 3] = pose[3:6]
    path_par[lay.PP_DELETING] = 1 if deleting else 0
    path_par[lay.PP_MIN_AGE] = 5
    path_par[lay.PP_SLOPE_MIN] = 0.5
    return hy, path_par, pose


@pytest.mark.parametrize("deleting", [True, False])
def test_path_integration(model, deleting):
    """Deletion by ``er.retain_mask`` and displacement by ``er.displace``; the survivors are the
    queries, in row order, with the sensed vectors turned into their frames."""
    rng = np.random.default_rng(6)
    hy, path_par, pose = _path(rng, model, deleting=deleting)
    n = 300
    before = {k: v[:n].copy() for k, v in hy.items()}
    live = before["hyp_obj"] >= 0
    keep = er.retain_mask(before["hyp_slope"], before["hyp_age"], 0.5, 5) if deleting else np.ones(n, bool)
    surv = np.flatnonzero(live & keep)
    q = ph.new_queries(n, 5)
    n_q, dead = ph.path_integration(hyp_tuple(hy), 0, n, path_par, q)
    assert n_q == len(surv) and dead == int((live & ~keep).sum())
    np.testing.assert_array_equal(q.rows[:n_q], surv)
    np.testing.assert_array_equal(q.qobj[:n_q], before["hyp_obj"][surv])
    assert np.all(hy["hyp_obj"][:n][live & ~keep] == -1) and not hy["hyp_possible"][:n][live & ~keep].any()
    want = er.displace(before["hyp_loc"][surv], before["hyp_rot"][surv], path_par[lay.PP_DISP:lay.PP_DISP + 3])
    np.testing.assert_allclose(hy["hyp_loc"][surv], want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(q.hq[0:3, :n_q].T, want, rtol=0, atol=1e-7)
    rot = before["hyp_rot"][surv].reshape(-1, 3, 3).astype(np.float64)
    np.testing.assert_allclose(q.hq[3:6, :n_q].T, rot @ pose[0:3], atol=1e-6)
    np.testing.assert_allclose(q.hq[6:9, :n_q].T, rot @ pose[3:6], atol=1e-6)


def _queries_at(rng, m, n):
    """Queries near the model's nodes, laid out as ``path_integration`` writes them."""
    sizes = np.diff(m["obj_start"])
    q = ph.new_queries(n, 5)
    objs = rng.choice(np.flatnonzero(sizes > 0), n)
    for i in range(n):
        o = objs[i]
        nd = rng.integers(m["obj_start"][o], m["obj_start"][o + 1])
        q.hq[0:3, i] = m["node_pos"][nd] + rng.normal(0, 0.5 * MMD, 3)
        rot = rand_rot(rng)
        q.hq[3:9, i] = (rot @ np.array([[0, 0, 1.0], [1.0, 0, 0]]).T).T.reshape(6)
        q.rows[i] = i
        q.qobj[i] = o
    return q, objs


def test_search_phase(model):
    """The K nearest nodes of each query's object within the radius (brute force, float32
    distances; ties at the k-th distance may go either way)."""
    rng = np.random.default_rng(7)
    m = model
    n, k = 100, 5
    q, objs = _queries_at(rng, m, n)
    ph.search(model_tuple(m), F32(MMD), k, q, n)
    r2 = F32(MMD) * F32(MMD)
    for i in range(n):
        lo, hi = m["obj_start"][objs[i]], m["obj_start"][objs[i] + 1]
        e = (m["node_pos"][lo:hi] - q.hq[0:3, i]).astype(F32)
        d2 = (e[:, 0] * e[:, 0] + e[:, 1] * e[:, 1] + e[:, 2] * e[:, 2]).astype(F32)
        inside = np.sort(d2[d2 < r2])[:k]
        mi = q.n_nbr[i]
        assert mi == len(inside), i
        got = np.sort(d2[q.nbr[:mi, i] - lo])
        np.testing.assert_allclose(got, inside, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("pose_defined", [True, False])
def test_pose_feature_evidence(model, pose_defined):
    """The evidence change of each query against its nearest nodes: ``er.evidence_delta`` for
    the query's object (the hypothesis located at the query, rotated so its frame turns the
    sensed vectors into the query's)."""
    rng = np.random.default_rng(8)
    m = model
    n, k = 60, 5
    q, objs = _queries_at(rng, m, n)
    mt = model_tuple(m)
    ph.search(mt, F32(MMD), k, q, n)
    phi = rng.uniform(0, 1, len(m["node_pos"])).astype(F32)
    kappa = 3.0
    ev_par = np.zeros(lay.N_EV_PAR, F32)
    ev_par[lay.EP_INV_KAPPA] = F32(1) / (F32(kappa) + F32(0.5))
    ev_par[lay.EP_MMD] = MMD
    ev_par[lay.EP_W_NORMAL] = 1.0
    ev_par[lay.EP_W_CURV] = 0.8
    ev_par[lay.EP_POSE_DEFINED] = 1 if pose_defined else 0
    ph.pose_feature_evidence(mt, phi, q, n, ev_par)
    # a hypothesis whose rotation takes the sensed (z, x) onto the query's (q, c)
    sensed = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    for i in range(n):
        o = objs[i]
        lo, hi = m["obj_start"][o], m["obj_start"][o + 1]
        qv, cv = q.hq[3:6, i].astype(np.float64), q.hq[6:9, i].astype(np.float64)
        rot = np.stack([cv, np.cross(qv, cv), qv], 1)  # columns: images of x, y, z
        want = er.evidence_delta(m["node_pos"][lo:hi], m["node_pose"][lo:hi], m["node_pfd"][lo:hi], phi[lo:hi],
                                 q.hq[0:3, i][None], rot[None], sensed, pose_defined, kappa, MMD, k, 1.0, 0.8)[0]
        assert q.delta[i] == pytest.approx(want, abs=2e-4), i


def test_accumulate(model):
    """``E = past E + present delta``; the ring of the last W evidences; the slope as
    ``er.slope`` over that ring in time order; per-block maxima and first rows."""
    rng = np.random.default_rng(9)
    m = model
    n_obj = len(m["obj_start"]) - 1
    n, W = 200, 10
    hy = _random_rows(rng, m, n, n)
    hy["hyp_obj"][:n] = np.abs(hy["hyp_obj"][:n])
    fp, ip = make_params(past=0.9, present=1.1)
    prm = ev.params(FEAT_SPEC, fp, ip)
    q = ph.new_queries(n, 5)
    rows = np.sort(rng.choice(n, 150, replace=False))
    q.rows[:150] = rows
    q.delta[:150] = rng.normal(0, 1, 150)
    step = 23
    before = {k: v.copy() for k, v in hy.items()}
    blocks = ph.Blocks(np.full((2, n_obj), -np.inf, F32), np.full((2, n_obj), -1, np.int64),
                       np.zeros((2, n_obj), np.int64), np.full(2, -np.inf, F32), np.zeros(2, np.int64))
    smax = ph.accumulate(prm, hyp_tuple(hy), q, 150, step, blocks, 1)
    e = (F32(0.9) * before["hyp_ev"][rows] + F32(1.1) * q.delta[:150]).astype(F32)
    np.testing.assert_allclose(hy["hyp_ev"][rows], e, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hy["hyp_age"][rows], before["hyp_age"][rows] + 1)
    np.testing.assert_array_equal(hy["hyp_buf"][rows, step % W], hy["hyp_ev"][rows])
    slopes = []
    for i, h in enumerate(rows):
        age = int(hy["hyp_age"][h])
        mm = min(age, W)
        # the last mm evidences, oldest first, from the ring
        chron = np.array([hy["hyp_buf"][h, (step - j) % W] for j in range(mm - 1, -1, -1)], np.float64)
        want = er.slope(np.concatenate([np.full(W - mm, np.nan), chron])[None], window=W)[0]
        got = hy["hyp_slope"][h]
        if np.isnan(want):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
            slopes.append(got)
    assert smax == (max(slopes) if slopes else -np.inf)
    for o in range(n_obj):
        mine = rows[hy["hyp_obj"][rows] == o]
        assert blocks.cnt[1, o] == len(mine) and blocks.cnt[0, o] == 0
        if len(mine):
            assert blocks.max[1, o] == hy["hyp_ev"][mine].max()
            assert blocks.arg[1, o] == mine[np.argmax(hy["hyp_ev"][mine])]


# ----------------------------------------------------------------------------- 5. new hypotheses


@pytest.mark.parametrize("pose_defined", [True, False])
def test_new_rows(model, pose_defined):
    """One object's new hypotheses: a valid top-k node set (``er.is_valid_burst_selection``),
    rotation-major, located and rotated as ``er.informed_hypotheses``, evidence phi."""
    rng = np.random.default_rng(10)
    m = model
    o = 2
    lo, hi = m["obj_start"][o], m["obj_start"][o + 1]
    phi = np.round(rng.uniform(0, 1, len(m["node_pos"])), 1).astype(F32)  # many ties
    sensed = frames_from_normals(rng.normal(size=(1, 3)) / 1.0, rng)[0].astype(F32)
    sensed[:3] /= np.linalg.norm(sensed[:3])
    frames = ev.candidate_frames(sensed, pose_defined, 5)
    kn, row0, step = 40, 17, 7
    hy = alloc_hyps(row0 + kn * len(frames) + 3)
    ph.new_rows(model_tuple(m), hyp_tuple(hy), phi, frames, o, kn, row0, step)
    rows = slice(row0, row0 + kn * len(frames))
    assert np.all(hy["hyp_obj"][rows] == o) and np.all(hy["hyp_age"][rows] == 1)
    assert np.all(np.isnan(hy["hyp_slope"][rows])) and not hy["hyp_possible"][rows].any()
    assert hy["hyp_obj"][row0 - 1] == 0 and hy["hyp_obj"][rows.stop] == 0  # nothing else written
    loc = hy["hyp_loc"][row0:row0 + kn]
    nodes = np.array([lo + np.flatnonzero(np.all(m["node_pos"][lo:hi] == p, axis=1))[0] for p in loc])
    assert er.is_valid_burst_selection(phi[lo:hi], nodes - lo, kn)
    want_loc, want_rot = er.informed_hypotheses(m["node_pos"], m["node_pose"], nodes, frames)
    np.testing.assert_array_equal(hy["hyp_loc"][rows], want_loc.astype(F32))
    np.testing.assert_allclose(hy["hyp_rot"][rows].reshape(-1, 3, 3), want_rot, atol=2e-6)
    np.testing.assert_array_equal(hy["hyp_ev"][rows], np.tile(phi[nodes], len(frames)))
    np.testing.assert_array_equal(hy["hyp_buf"][rows, step % hy["hyp_buf"].shape[1]], hy["hyp_ev"][rows])


# ----------------------------------------------------------------------------- 6. end_step, 7. terminal


def test_end_step_maxima_and_mlh(model):
    """Per-object maxima and counts over the updated blocks and the new rows; the MLH is the
    first row of the best object (first object on ties) holding its maximum."""
    rng = np.random.default_rng(11)
    n_obj = 4
    n_old, n_new = 90, 24
    hy = alloc_hyps(n_old + n_new)
    obj = rng.integers(0, 3, n_old + n_new).astype(np.int32)
    obj[:n_old][rng.uniform(size=n_old) < 0.2] = -1  # dead rows among the old
    hy["hyp_obj"][:] = obj
    hy["hyp_ev"][:] = np.round(rng.normal(0, 2, n_old + n_new), 0)  # ties
    # the blocks as the update loop leaves them: rows 0..44 block 0, 45..89 block 1
    b_max = np.full((2, n_obj), -np.inf, F32)
    b_arg = np.full((2, n_obj), -1, np.int64)
    b_cnt = np.zeros((2, n_obj), np.int64)
    for b, rr in enumerate((range(0, 45), range(45, 90))):
        for h in rr:
            o = obj[h]
            if o < 0:
                continue
            b_cnt[b, o] += 1
            if hy["hyp_ev"][h] > b_max[b, o]:
                b_max[b, o], b_arg[b, o] = hy["hyp_ev"][h], h
    blocks = ph.Blocks(b_max, b_arg, b_cnt, np.array([0.3, -np.inf], F32), np.array([2, 5], np.int64))
    k_nodes = np.array([6, 3, 3, 0], np.int64)  # 24 new rows, h_per_node 2
    hy["hyp_obj"][n_old:] = np.repeat([0, 1, 2], [12, 6, 6])
    st = _state(n_obj, IS_N_HYP=n_old, IS_STEP=4, IS_MATCHING_STEPS=4, IS_BURST_LEFT=2, IS_N_DEAD=1)
    o_best, mlh = ph.end_step(st, hyp_tuple(hy), blocks, n_old, n_new, k_nodes, 2)
    assert st.istate[lay.IS_N_HYP] == n_old + n_new and st.istate[lay.IS_N_NEW] == n_new
    assert st.istate[lay.IS_STEP] == 5 and st.istate[lay.IS_MATCHING_STEPS] == 5
    assert st.istate[lay.IS_BURST_LEFT] == 1 and st.istate[lay.IS_N_DEAD] == 8
    assert st.fstate[lay.FS_SLOPE_MAX] == F32(0.3)
    o_all, e_all = hy["hyp_obj"], hy["hyp_ev"]
    for o in range(n_obj):
        sel = o_all == o
        assert st.obj_count[o] == sel.sum()
        assert st.obj_max[o] == (e_all[sel].max() if sel.any() else -np.inf)
    live = np.flatnonzero(st.obj_count > 0)
    want_o = live[np.argmax(st.obj_max[live])]
    assert o_best == want_o
    assert mlh == np.flatnonzero((o_all == want_o) & (e_all == st.obj_max[want_o]))[0]
    assert st.istate[lay.IS_MLH] == mlh and st.fstate[lay.FS_MLH_EV] == st.obj_max[want_o]


def test_terminal_possible_objects_and_limits():
    """No possible object: NO_MATCH (``er.possible_objects``); before min_eval_steps nothing
    ends; at max_eval_steps TIME_OUT; several possible objects clear the possible flags."""
    rng = np.random.default_rng(12)
    fp, ip = make_params(min_steps=3, max_steps=6)
    prm = ev.params(FEAT_SPEC, fp, ip)
    for trial in range(60):
        n_obj = int(rng.integers(1, 5))
        st = _state(n_obj, IS_N_HYP=10, IS_MATCHING_STEPS=int(rng.integers(1, 7)))
        st.obj_count[:] = rng.integers(0, 3, n_obj)
        st.obj_max[:] = rng.normal(0, 1, n_obj)
        hy = alloc_hyps(10)
        hy["hyp_possible"][:] = 1
        g = np.where(st.obj_count > 0, st.obj_max.astype(np.float64), np.nan)
        possible = er.possible_objects(g, 20.0)
        o_best = int(np.nanargmax(g)) if np.isfinite(g).any() else -1
        code = ph.terminal(prm, st, hyp_tuple(hy), o_best, 0)
        assert st.istate[lay.IS_N_POSSIBLE] == possible.sum()
        steps = st.istate[lay.IS_MATCHING_STEPS]
        if not possible.any():
            assert code == ev.NO_MATCH
            continue
        if steps > 3 and possible.sum() > 1:
            assert not hy["hyp_possible"].any()
        if code == ev.MATCH:
            assert steps > 3 and possible.sum() == 1
        elif steps >= 6:
            assert code == ev.TIME_OUT
        else:
            assert code == ev.RUNNING


def test_a_new_hypothesis_field_is_carried_by_growth_and_compaction(monkeypatch):
    """Adding a field to ``HYPOTHESIS_FIELDS`` is enough for allocation, growth and the
    compaction kernel (which loops over the tuple's fields): shown with a scratch copy of
    the declaration and a namedtuple that has one more field."""
    from collections import namedtuple

    fields = lay.HYPOTHESIS_FIELDS + (("visits", np.int32, ("cap",)),)
    Hyp2 = namedtuple("Hyp2", [f[0] for f in fields])
    monkeypatch.setattr(lay, "HYPOTHESIS_FIELDS", fields)
    monkeypatch.setattr(lay, "Hypotheses", Hyp2)
    hyp = lay.new_hypotheses(12)
    assert hyp.visits.shape == (12,) and hyp.visits.dtype == np.int32
    hyp.visits[:] = np.arange(12)
    hyp.obj[:] = np.arange(12) % 3 - 1  # rows 0, 3, 6, 9 dead
    big = lay.grow_hypotheses(hyp, 20)
    np.testing.assert_array_equal(big.visits[:12], np.arange(12))
    n_live = ph._compact(12, big)
    assert n_live == 8
    np.testing.assert_array_equal(big.visits[:8], [1, 2, 4, 5, 7, 8, 10, 11])
    np.testing.assert_array_equal(big.obj[:8], [0, 1] * 4)


@pytest.mark.parametrize("n_chunks, n_obj", [(0, 3), (1, 1), (4, 2)])
def test_new_blocks_match_numpy(n_chunks, n_obj):
    """Phase 4's block outputs (allocated by a serial kernel) against their NumPy definitions."""
    got = ph.new_blocks(n_chunks, n_obj)
    want = (np.full((n_chunks, n_obj), -np.inf, np.float32), np.full((n_chunks, n_obj), -1, np.int64),
            np.zeros((n_chunks, n_obj), np.int64), np.full(n_chunks, -np.inf, np.float32),
            np.zeros(n_chunks, np.int64))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and np.array_equal(g, w)
