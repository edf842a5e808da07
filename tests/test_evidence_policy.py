"""The evidence episode with the sensor in the loop (kernels.evidence_policy, the ``policy`` config
section): the fused path against the stepwise one, growth mid-episode, jumps that land off the
object, today's walk untouched, and the config's errors."""

import numpy as np
import pytest

from engine.config import from_dict
from engine.data import sensor
from engine.errors import ConfigError
from engine.models.evidence import policy_run
from engine.models.evidence.model import EvidenceExperiment, EvidenceModel
from engine.models.evidence import run as evidence_run
from kernels import evidence as kev
from kernels import policy as kp
from kernels.evidence_policy import try_jump

OBJECTS = ("cylinder", "capsule", "mug")
DATA = {"source": "shapes", "objects": list(OBJECTS), "n_points": 4000, "train_steps": 200,
        "eval_rotations": 2, "eval_steps": 50, "noise": True, "seed": 4}


def config(**policy):
    return from_dict({"model": {"type": "evidence"}, "data": DATA, "experiment": {"max_eval_steps": 500},
                      "evidence": {"max_nneighbors": 10}, "policy": policy})


@pytest.fixture(scope="module")
def surfaces():
    return sensor.builtin_surfaces(OBJECTS, n_points=DATA["n_points"], seed=DATA["seed"])


@pytest.fixture(scope="module")
def dataset(surfaces):
    return sensor.simulate(surfaces, train_steps=DATA["train_steps"], eval_rotations=DATA["eval_rotations"],
                           eval_steps=DATA["eval_steps"], noise=sensor.Noise(), seed=DATA["seed"])


def experiment(dataset, surfaces, **policy):
    ex = EvidenceExperiment(config(**policy), dataset)
    ex._surfaces = surfaces
    ex.train()
    return ex


@pytest.fixture(scope="module")
def trained(dataset, surfaces):
    return experiment(dataset, surfaces, type="curvature", hypothesis_testing=True)


@pytest.mark.parametrize("policy", [{"type": "curvature", "hypothesis_testing": True},
                                    {"type": "walk", "hypothesis_testing": True},
                                    {"type": "curvature"}])
def test_stepwise_equals_fused(dataset, surfaces, trained, policy):
    ex = experiment(dataset, surfaces, **policy)
    ex.model = trained.model  # the same learned model
    for e in np.flatnonzero(dataset.episode_split == 1)[:4]:
        ex.model._hyp = None  # both start from arrays of the same size (IS_NEED records a growth)
        fused = policy_run.eval_episode(ex, int(e))
        steps = []
        ex.model._hyp = None
        stepwise = policy_run.eval_episode(ex, int(e), stepwise=True,
                                           on_step=lambda t, istate, om: steps.append(t))
        code_f, ist_f, trace_f, _, sc_f, jumps_f = fused
        code_s, ist_s, trace_s, _, sc_s, jumps_s = stepwise
        assert code_f == code_s and jumps_f[:3] == jumps_s[:3]
        np.testing.assert_array_equal(ist_f, ist_s)
        np.testing.assert_array_equal(trace_f, trace_s)
        assert sc_f["outcome"] == sc_s["outcome"] and sc_f["rotation_error_deg"] == sc_s["rotation_error_deg"]
        assert steps == list(range(int(ist_s[kev.IS_MATCHING_STEPS])))


def test_growing_the_hypothesis_arrays_mid_episode_changes_nothing(trained, monkeypatch):
    """A step that needs more rows returns to Python with its observation written; repeated after
    the growth it does not move the sensor again."""
    e = int(np.flatnonzero(trained.dataset.episode_split == 1)[1])
    want = policy_run.eval_episode(trained, e)
    monkeypatch.setattr(EvidenceModel, "initial_capacity", lambda self: 64)
    trained.model._hyp = None
    got = policy_run.eval_episode(trained, e)
    assert want[0] == got[0] and want[5][:3] == got[5][:3]
    assert got[1][kev.IS_NEED] > 64  # it did grow
    keep = np.arange(kev.N_ISTATE) != kev.IS_NEED
    np.testing.assert_array_equal(want[1][keep], got[1][keep])
    np.testing.assert_array_equal(want[2], got[2])


def test_runs_are_reproducible_and_jumps_are_counted(trained):
    e = int(np.flatnonzero(trained.dataset.episode_split == 1)[0])
    a = policy_run.eval_episode(trained, e)
    b = policy_run.eval_episode(trained, e)
    np.testing.assert_array_equal(a[2], b[2])
    attempted, landed, steps, policy_s = a[5]
    assert attempted >= landed == len(steps)
    assert 0 < policy_s < a[3]  # the policy's share of the episode's kernel time


def test_a_jump_through_a_wrong_hypothesis_lands_off_the_object(trained):
    """Hypotheses placed so that the target seen through them lies 30 cm away from the object:
    the sensor sees nothing there, the jump is undone (jumped 2), nothing lands."""
    ex = trained
    model = ex.model.model_arrays()
    surf = dict(ex._surfaces)["mug"]
    pts, nrm, curv, dirs, _ = policy_run.surface_arrays(surf)
    n_obj = len(model.obj_start) - 1
    mug = ex.model.object_index("mug")
    cyl = ex.model.object_index("cylinder")
    st = kev.new_state(n_obj)
    hyp = kev.new_hypotheses(8)
    eye = np.eye(3, dtype=np.float32).reshape(9)
    for h, (o, ev) in enumerate([(mug, 5.0), (cyl, 4.9)]):
        hyp.obj[h] = o
        hyp.ev[h] = ev
        hyp.rot[h] = eye
        hyp.loc[h] = model.node_pos[model.obj_start[o]]
    st.istate[kev.IS_N_HYP] = 2
    st.istate[kev.IS_MLH] = 0
    st.istate[kev.IS_MATCHING_STEPS] = 10  # the elapsed-steps condition fires
    st.obj_max[:] = -np.inf
    st.obj_max[mug], st.obj_max[cyl] = 5.0, 4.9
    st.obj_count[mug] = st.obj_count[cyl] = 1
    fp, ip = policy_run.policy_params(ex.config.policy, ex.config.evidence, False)
    prm = kev.params(ex.model.feature_spec, ex.model.fparams, ex.model.iparams)
    obs = kev.observations(np.zeros((3, 3)), np.zeros((3, 9)), np.zeros(3, bool), np.zeros((3, 2)), np.zeros(3))
    for where, expect in ((np.array([0.3, 0.3, 0.3], np.float32), 2), (None, 1)):
        pol = kp.new_policy_state(fp, ip, 1, np.eye(3), 3, 0)
        # the sensed location: where the hypothesis says the sensor is (right), or far off
        obs.location[1] = model.node_pos[model.obj_start[mug]] if where is None else where
        if where is None:
            # the right hypothesis of the sensed point on the mug's own surface
            row = int(np.argmin(np.linalg.norm(pts - model.node_pos[model.obj_start[mug]], axis=1)))
            obs.location[1] = pts[row]
            hyp.loc[0] = pts[row]
        hit = try_jump(model, prm, st, hyp, obs, 2, pts, nrm, pol)
        assert pol.jumped[2] == expect
        assert pol.istate[kp.SI_N_GOALS] == 1
        if expect == 2:
            assert hit == -1 and pol.istate[kp.SI_N_ON] == 0
        else:
            assert hit >= 0 and pol.istate[kp.SI_N_ON] == 1


def test_the_default_walk_has_no_policy_columns(dataset, surfaces):
    ex = EvidenceExperiment(config(), dataset)
    assert not ex.config.policy.in_loop
    report = evidence_run.report(ex.config, ex._result([], 0.0, 0.0, 0.0))
    assert report.columns == evidence_run.EPISODE_COLUMNS
    loop = EvidenceExperiment(config(type="curvature"), dataset)
    report = evidence_run.report(loop.config, loop._result([], 0.0, 0.0, 0.0))
    assert report.columns[-2:] == ("jumps", "jumps_on_object")


def test_policy_config_errors(tmp_path, root):
    with pytest.raises(ConfigError, match=r"policy\.typ: unknown key.*did you mean 'type'"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "policy": {"typ": "walk"}})
    with pytest.raises(ConfigError, match=r"policy\.type: expected one of 'walk', 'curvature', got 'spiral'"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "policy": {"type": "spiral"}})
    with pytest.raises(ConfigError, match=r"policy\.alpha: expected a number >= 0.0 and <= 1.0"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "policy": {"alpha": 2}})
    with pytest.raises(ConfigError, match=r"policy\.hypothesis_testing: expected true or false"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"},
                   "policy": {"hypothesis_testing": "yes"}})
    data = {"source": "dataset", "path": str(root / "configs/data/evidence_example.npz")}
    with pytest.raises(ConfigError, match=r"policy\.type: a recorded dataset holds no surface"):
        from_dict({"model": {"type": "evidence"}, "data": data, "policy": {"type": "curvature"}})
    with pytest.raises(ConfigError, match=r"policy\.hypothesis_testing: a recorded dataset holds no surface"):
        from_dict({"model": {"type": "evidence"}, "data": data, "policy": {"hypothesis_testing": True}})
    from_dict({"model": {"type": "evidence"}, "data": data, "policy": {"type": "walk"}})  # today's replay
    five = {"n_modules": 5, "min_lms_match": 3}
    with pytest.raises(ConfigError, match=r"policy\.type: a policy in the loop moves one sensor.*n_modules is 5"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "evidence": five,
                   "policy": {"type": "curvature"}})
    with pytest.raises(ConfigError, match=r"policy\.hypothesis_testing: a policy in the loop moves one sensor"):
        from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "evidence": five,
                   "policy": {"hypothesis_testing": True}})
    from_dict({"model": {"type": "evidence"}, "data": {"source": "shapes"}, "evidence": five,
               "policy": {"type": "walk"}})  # several modules on today's replayed walk
    with pytest.raises(ConfigError, match=r"policy: only the evidence model reads it"):
        from_dict({"model": {"type": "similarity"}, "data": {"source": "cube"}, "policy": {}})


def test_a_policy_on_a_recorded_dataset_is_a_one_line_cli_error(tmp_path, root, engine_env):
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{type: evidence}}\ndata: {{source: dataset, path: "
                   f"{root / 'configs/data/evidence_example.npz'}}}\npolicy: {{type: curvature}}\n")
    p = subprocess.run([sys.executable, "-m", "engine", "validate", str(cfg)], capture_output=True, text=True,
                       env=engine_env, cwd=root)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "policy.type: a recorded dataset holds no surface" in p.stderr


def test_a_jump_through_the_right_hypothesis_lands_on_the_target(trained):
    """The object rotated by Q, the most likely hypothesis right (R = Q^T, its location the sensed
    sample's): the sensor lands on the surface sample at the target node, seen from its normal."""
    from kernels.policy import graph_mismatch

    ex = trained
    model = ex.model.model_arrays()
    surf = dict(ex._surfaces)["mug"]
    pts, nrm, _, _, _ = policy_run.surface_arrays(surf)
    mug, cyl = ex.model.object_index("mug"), ex.model.object_index("cylinder")
    rng = np.random.default_rng(3)
    fp, ip = policy_run.policy_params(ex.config.policy, ex.config.evidence, False)
    prm = kev.params(ex.model.feature_spec, ex.model.fparams, ex.model.iparams)
    for trial in range(5):
        qm, r = np.linalg.qr(rng.standard_normal((3, 3)))
        qm = qm * np.sign(np.diag(r))
        if np.linalg.det(qm) < 0:
            qm[:, 2] = -qm[:, 2]
        q = qm.astype(np.float32)
        row = int(rng.integers(len(pts)))
        st = kev.new_state(len(model.obj_start) - 1)
        hyp = kev.new_hypotheses(4)
        for h, (o, ev) in enumerate([(mug, 5.0), (cyl, 4.9)]):
            hyp.obj[h], hyp.ev[h] = o, ev
            hyp.rot[h] = q.T.reshape(9)
            hyp.loc[h] = pts[row]
        st.istate[kev.IS_N_HYP], st.istate[kev.IS_MLH], st.istate[kev.IS_MATCHING_STEPS] = 2, 0, 10
        st.obj_max[:] = -np.inf
        st.obj_max[mug], st.obj_max[cyl] = 5.0, 4.9
        st.obj_count[mug] = st.obj_count[cyl] = 1
        obs = kev.observations(np.zeros((3, 3)), np.zeros((3, 9)), np.zeros(3, bool), np.zeros((3, 2)),
                               np.zeros(3))
        obs.location[1] = (q.astype(np.float64) @ pts[row]).astype(np.float32)  # sensed, no noise
        pol = kp.new_policy_state(fp, ip, 1, q, 3, row)
        hit = try_jump(model, prm, st, hyp, obs, 2, pts, nrm, pol)
        lo, hi = model.obj_start[mug], model.obj_start[mug + 1]
        lo2, hi2 = model.obj_start[cyl], model.obj_start[cyl + 1]
        node = graph_mismatch(model.node_pos, lo, hi, lo2, hi2, hyp.loc[0], hyp.rot[0], hyp.loc[1], hyp.rot[1])
        assert hit >= 0 and pol.jumped[2] == 1
        # the grid model's node is a voxel average: the sample seen lies within a few mm of it
        assert np.linalg.norm(pts[hit] - model.node_pos[node]) < 0.006, trial


def test_bench_policy_rows():
    from engine.bench.policy import format_policy, run_policy_rows

    small = {"objects": ["cylinder", "pill"], "n_points": 1500, "train_steps": 80, "eval_rotations": 1,
             "eval_steps": 25}
    rows = run_policy_rows(configs=("similar_10.yaml",), data_overrides=small)
    assert [r["policy"] for r in rows] == ["walk", "curvature", "curvature+jumps"]
    for r in rows:
        assert r["n_eval_episodes"] == 2 and 0.0 <= r["accuracy"] <= r["accuracy_incl_mlh"] <= 1.0
        assert r["matching_step_s"] > 0
    assert rows[0]["policy_step_s"] == 0.0 and rows[0]["mean_jumps"] == 0.0  # the replayed walk
    assert 0 < rows[2]["policy_step_s"] < rows[2]["matching_step_s"]
    text = "\n".join(format_policy(rows))
    assert "curvature+jumps" in text and "similar_10.yaml" in text


def test_bad_surfaces_and_rotations_are_rejected_at_the_boundary(trained):
    import dataclasses

    surf = dict(trained._surfaces)["mug"]
    fp, ip = policy_run.policy_params(trained.config.policy, trained.config.evidence, False)
    q = np.array([1, 0, 0, 0], np.float32)

    def run(surface=surf, rotation=q, start=0, n_steps=5, n_features=2):
        return policy_run.run_policy_episode(trained.model, surface, rotation, fp, ip, 1, start, n_steps, n_features)

    bad = surf.points.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="surface points holds NaN"):
        run(dataclasses.replace(surf, points=bad))
    with pytest.raises(ValueError, match="non-zero quaternion"):
        run(rotation=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="non-zero quaternion"):
        run(rotation=np.array([np.nan, 0, 0, 1], np.float32))
    with pytest.raises(ValueError, match="start must lie in"):
        run(start=surf.n_points)
    with pytest.raises(ValueError, match="feature columns"):
        run(n_features=4)
    code, istate, trace, *_ = run(n_steps=0)  # no steps: nothing happens
    assert code == kev.RUNNING and len(trace) == 0
    code, istate, trace, *_ = run(n_steps=1)  # one step
    assert istate[kev.IS_MATCHING_STEPS] == 1 and len(trace) == 1
