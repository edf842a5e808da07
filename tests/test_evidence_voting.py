"""kernels.evidence_voting: several modules in one episode kernel.

One module without voting is the one-module episode kernel bit for bit; modules that do
not vote are each that kernel; a step with voting is the step without it followed by
``kernels.voting.exchange_votes`` (itself tested against tbp.monty's code in
tests/test_voting.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import evidence as ev
from kernels import evidence_voting as evv
from kernels import voting as kv
from kernels.evidence_layout import IS_MATCHING_STEPS, IS_NEED, IS_N_HYP, MATCH, NEED_CAPACITY
import tests.test_evidence_kernels as tek
from tests.test_evidence_kernels import F32, kernel_episode, make_params, model_tuple

episode_case = tek.episode_case  # the one-module kernel tests' episode (a fixture)


def _obs_tuple(obs):
    return ev.Observations(*[obs[k] for k in ev.Observations._fields])


def _multi(case, module_obs, vp, cap, fp=None, ip=None, first=0, state=None):
    """Run the voting kernel over modules sharing ``case``'s model; returns (code, t, st, hyp, trace)."""
    n_mod = len(module_obs)
    models = [model_tuple(case["m"])] * n_mod
    mm = evv.module_models(models)
    n_obj = len(case["sizes"])
    fp = case["fp"] if fp is None else fp
    ip = case["ip"] if ip is None else ip
    prm = ev.params(case["spec"], fp, ip)
    obs = evv.stacked([_obs_tuple(o) for o in module_obs], ev.Observations)
    if state is None:
        st = evv.stacked([ev.new_state(n_obj) for _ in range(n_mod)], ev.State)
        hyp = evv.stacked([ev.new_hypotheses(cap) for _ in range(n_mod)], ev.Hypotheses)
    else:
        st, hyp = state
    T = obs.location.shape[1]
    trace = np.full((T, n_mod, n_obj), np.nan, F32)
    t = first
    while True:
        code, t = evv.voting_episode(mm, prm, vp, st, hyp, obs, t, trace)
        if code != NEED_CAPACITY:
            return code, t, st, hyp, trace
        need = int(st.istate[:, IS_NEED].max())
        hyp = evv.stacked([ev.grow_hypotheses(ev.Hypotheses(*(a[m] for a in hyp)), need,
                                              int(st.istate[m, IS_N_HYP])) for m in range(n_mod)], ev.Hypotheses)


def _no_votes(n_mod, min_match=1, enabled=False):
    return evv.vote_params(kv.connectivity("all", n_mod), 0.8, 1.0, min_match, kv.VOTE_TRANSPOSE, enabled)


@pytest.mark.parametrize("cap", [20000, 64])  # 64: the arrays grow during the episode
@pytest.mark.parametrize("enabled", [False, True])  # one module has no one to vote with
def test_one_module_is_the_one_module_kernel(episode_case, cap, enabled):
    case = episode_case
    code, t, ist, fst, hy, trace, obj_max, obj_count, _ = kernel_episode(case, cap)
    mcode, mt, st, hyp, mtrace = _multi(case, [case["obs"]], _no_votes(1, enabled=enabled), cap)
    assert code == MATCH
    assert (mcode, mt) == (code, t)
    np.testing.assert_array_equal(st.istate[0], ist)
    np.testing.assert_array_equal(st.fstate[0], fst)
    np.testing.assert_array_equal(st.obj_max[0], obj_max)
    np.testing.assert_array_equal(st.obj_count[0], obj_count)
    np.testing.assert_array_equal(mtrace[:, 0], trace)
    n = int(ist[IS_N_HYP])
    for f, a in zip(ev.Hypotheses._fields, hyp):
        np.testing.assert_array_equal(a[0, :n], hy["hyp_" + f][:n], err_msg=f)


def test_modules_without_votes_are_each_the_one_module_kernel(episode_case):
    case = episode_case
    obs = case["obs"]
    other = {k: np.ascontiguousarray(np.roll(v, -3, axis=0)) for k, v in obs.items()}  # the belt from further on
    cases = [obs, other, obs]
    singles = []
    for o in cases:
        single = dict(case, obs=o)
        singles.append(kernel_episode(single, 20000))
    code, t, st, hyp, trace = _multi(case, cases, _no_votes(3, min_match=3), 20000)
    # the episode ends when all three matched: each module's evidence follows its own kernel until then
    assert code == MATCH
    assert t == max(s[1] for s in singles)
    for m, s in enumerate(singles):
        steps = s[1]
        np.testing.assert_array_equal(trace[:steps, m], s[5][:steps])


# bins: the vote searches' task bins (one per thread in a run); the result must not depend on them
@pytest.mark.parametrize("bins", [1, 2, 3])
def test_a_step_with_votes_is_the_step_then_the_exchange(episode_case, bins):
    case = episode_case
    obs = case["obs"]
    other = {k: np.ascontiguousarray(np.roll(v, -2, axis=0)) for k, v in obs.items()}
    fp, ip = make_params(min_steps=1000, max_steps=2000, k=5)  # no terminal check: evidence only
    n_t = 12
    first = [{k: np.ascontiguousarray(v[:n_t]) for k, v in o.items()} for o in (obs, other)]
    step = [{k: np.ascontiguousarray(v[n_t:n_t + 1]) for k, v in o.items()} for o in (obs, other)]
    off = _no_votes(2)
    _, _, st, hyp, _ = _multi(case, first, off, 20000, fp=fp, ip=ip)
    copy = lambda x: type(x)(*(a.copy() for a in x))  # noqa: E731
    st1, hyp1, st2, hyp2 = copy(st), copy(hyp), copy(st), copy(hyp)
    _, _, st1, hyp1, _ = _multi(case, step, off, 20000, fp=fp, ip=ip, state=(st1, hyp1))
    on = evv.vote_params(kv.connectivity("all", 2), 0.8, 1.0, 1, kv.VOTE_ROTATE, True)
    on.ivote[evv.IV_BINS] = bins
    _, _, st2, hyp2, trace2 = _multi(case, step, on, 20000, fp=fp, ip=ip, state=(st2, hyp2))
    n_rows = st1.istate[:, IS_N_HYP].copy()
    sensed = np.stack([step[0]["location"][0], step[1]["location"][0]]).astype(F32)
    want = hyp1.ev.copy()
    n_votes, changed = kv.exchange_votes(hyp1.obj, hyp1.loc, hyp1.rot, want, n_rows, sensed, np.ones(2, np.uint8),
                                         on.conn, np.float64(0.8), kv.receiving(1.0, False, 0.01, kv.VOTE_ROTATE))
    assert changed.sum() > 0  # the votes did something
    np.testing.assert_array_equal(hyp2.ev, want)
    for m in range(2):  # the maxima after the votes
        live = hyp2.obj[m, :n_rows[m]]
        for o in range(len(case["sizes"])):
            sel = live == o
            if sel.any():
                assert trace2[0, m, o] == hyp2.ev[m, :n_rows[m]][sel].max()
    assert (st2.istate[:, IS_MATCHING_STEPS] == n_t + 1).all()


def test_module_models_layout():
    m1 = ev.object_models(np.zeros((2, 3)), np.zeros((2, 9)), np.zeros(2), np.zeros((2, 1)), [0, 1, 2],
                          np.zeros((2, 3)), [[1, 1, 1, 0], [1, 1, 1, 1]], [0, 1, 2], [0, 1], [0, 0],
                          ev.candidate_codes([0, 1], [0, 0], 0.01))
    m2 = ev.object_models(np.ones((3, 3)), np.zeros((3, 9)), np.zeros(3), np.zeros((3, 1)), [0, 2, 3],
                          np.zeros((2, 3)), [[1, 1, 1, 0], [1, 1, 1, 1]], [0, 2, 3], [0, 1, 2], [0, 0, 0],
                          ev.candidate_codes([0, 1, 2], [0.0, 0.003, 0.007], 0.01))
    mm = evv.module_models([m1, m2])
    assert mm.offsets.tolist() == [[0, 0, 0], [2, 3, 2], [5, 6, 5]]
    back = evv.module_model(mm, 1, 2)
    for a, b in zip(back, m2):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="same objects"):
        evv.module_models([m1, ev.object_models(np.zeros((1, 3)), np.zeros((1, 9)), np.zeros(1), np.zeros((1, 1)),
                                                [0, 1], np.zeros((1, 3)), [[1, 1, 1, 0]], [0, 1], [0], [0], [0])])
