"""The experiment lifecycle: fused vs stepwise, hooks, granularity, lifecycle semantics."""

import numpy as np
import pytest

from engine.data import sources
from engine.config import from_dict
from engine.models.similarity import EVENTS, Experiment

from naive.loop import run_experiment as reference_experiment


def make(source="cube", threshold=0.6, stepwise=False, n_train=2, n_eval=2, max_train=50, max_eval=30,
         chunk=4, **data):
    return from_dict({
        "experiment": {"n_train_epochs": n_train, "n_eval_epochs": n_eval,
                       "max_train_steps": max_train, "max_eval_steps": max_eval},
        "model": {"confidence_threshold": threshold},
        "data": {"source": source, **data},
        "execution": {"stepwise": stepwise, "chunk_size": chunk},
    })


def run(config, hooks=()):
    ex = Experiment(config)
    for event, fn in hooks:
        ex.add_hook(event, fn)
    res = ex.run()
    return ex, res, ex.records(res)


CASES = [
    dict(source="cube", threshold=0.6),
    dict(source="cube", threshold=None),
    dict(source="sphere", threshold=0.55, n_points=40),
    dict(source="random", threshold=0.45, n_points=60, n_features=3, seed=3),
    dict(source="random", threshold=0.5, n_points=30, n_features=0, seed=1),
    dict(source="seed_spiral", threshold=None, size=57, max_train=40, max_eval=57),
    dict(source="seed_spiral", threshold=0.3, size=80, chunk=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['source']}-{c['threshold']}")
def test_fused_equals_stepwise(case):
    _, fused, rec_f = run(make(**case))
    _, step, rec_s = run(make(stepwise=True, **case))
    assert fused.path == "fused" and step.path == "stepwise"
    assert rec_f == rec_s  # same steps, stored counts, reasons and bit-identical confidences
    np.testing.assert_array_equal(fused.store[:, :fused.n_stored], step.store[:, :step.n_stored])


def test_recorded_dataset_fused_equals_stepwise(root):
    path = str(root / "configs" / "data" / "example_episodes.npz")
    kw = dict(source="dataset", threshold=0.6, path=path, n_train=1, n_eval=1, max_train=1000, max_eval=100)
    _, fused, rec_f = run(make(**kw))
    _, _, rec_s = run(make(stepwise=True, **kw))
    assert rec_f == rec_s
    assert {r.mode for r in rec_f} == {"train", "eval"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['source']}-{c['threshold']}")
def test_matches_plain_python_reference(case):
    config = make(**case)
    ex, res, records = run(config)
    o = ex.obs
    exp = config.experiment
    thr = np.inf if config.model.confidence_threshold is None else config.model.confidence_threshold
    ref = reference_experiment(o.location, o.features, list(zip(o.train_starts, o.train_stops)),
                               exp.n_train_epochs, exp.max_train_steps, list(zip(o.eval_starts, o.eval_stops)),
                               exp.n_eval_epochs, exp.max_eval_steps, thr)
    evals = [r for r in records if r.mode == "eval"]
    assert [r.steps for r in evals] == list(ref["eval_steps"])
    assert [r.reason for r in evals] == list(ref["eval_reason"])
    # float32 kernel vs float64 reference (see tests/kernel_helpers.py for the tolerance's reason)
    np.testing.assert_allclose([r.confidence for r in evals], ref["eval_confidence"], rtol=1e-5)
    assert res.n_stored == ref["n_stored"]


def test_lifecycle_semantics():
    ex, res, records = run(make(threshold=None, n_train=3, n_eval=2, max_train=50, max_eval=30))
    n = ex.obs.train_stops[0] - ex.obs.train_starts[0]  # 56 points on a 4-per-edge cube
    trains = [r for r in records if r.mode == "train"]
    assert [r.stored for r in trains] == [50, 100, 150]  # the store grows across epochs
    assert all(r.reason == "step_limit" and r.steps == 50 for r in trains)
    evals = [r for r in records if r.mode == "eval"]
    assert [r.epoch for r in evals] == [0, 1] and all(r.stored == 150 for r in evals)
    assert all(r.steps == 30 and r.reason == "step_limit" for r in evals)
    assert evals[0].confidence == evals[1].confidence  # confidence resets at each episode
    _, _, records = run(make(threshold=None, max_train=100, max_eval=100))
    assert all(r.steps == n and r.reason == "data_exhausted" for r in records)


def test_do_train_do_eval_switches():
    cfg = from_dict({"experiment": {"do_train": False, "n_eval_epochs": 1}, "data": {"source": "cube"},
                     "model": {"confidence_threshold": 0.5}})
    ex, res, records = run(cfg)
    assert res.n_stored == 0 and [r.mode for r in records] == ["eval"]
    assert records[0].confidence == 0.0 and records[0].reason == "data_exhausted"  # empty store: similarity 0
    cfg = from_dict({"experiment": {"do_eval": False, "n_train_epochs": 2}, "data": {"source": "cube"}})
    _, res, records = run(cfg)
    assert [r.mode for r in records] == ["train", "train"] and res.final_confidence is None


def test_early_termination_done():
    _, res, records = run(make(threshold=0.6))
    evals = [r for r in records if r.mode == "eval"]
    assert all(r.reason == "done" and r.confidence >= 0.6 for r in evals)
    assert all(r.steps < 30 for r in evals)


def test_hook_order_and_granularity():
    seen = []
    hooks = [(e, (lambda ev: seen.append((ev.name, ev.mode, ev.epoch, ev.episode)))) for e in EVENTS
             if "step" not in e]
    ex, res, _ = run(make(n_train=2, n_eval=1), hooks)
    assert ex.granularity() == "episode" and res.kernel_calls == 3
    assert seen == [
        ("before_experiment", None, None, None),
        ("before_epoch", "train", 0, None), ("before_episode", "train", 0, 0), ("after_episode", "train", 0, 0),
        ("after_epoch", "train", 0, None),
        ("before_epoch", "train", 1, None), ("before_episode", "train", 1, 0), ("after_episode", "train", 1, 0),
        ("after_epoch", "train", 1, None),
        ("before_epoch", "eval", 0, None), ("before_episode", "eval", 0, 0), ("after_episode", "eval", 0, 0),
        ("after_epoch", "eval", 0, None),
        ("after_experiment", None, None, None),
    ]


@pytest.mark.parametrize("events, expected, calls", [
    ((), "run", 1), (("before_experiment", "after_experiment"), "run", 1),
    (("after_epoch",), "epoch", 4), (("before_episode",), "episode", 4), (("after_step",), "step", None),
])
def test_granularity_follows_hooks_and_results_agree(events, expected, calls):
    _, base, rec_base = run(make())
    ex, res, records = run(make(), [(e, lambda ev: None) for e in events])
    assert ex.granularity() == expected
    if calls is not None:
        assert res.kernel_calls == calls
    assert records == rec_base


def test_step_hooks_see_each_step():
    steps = []
    ex, res, records = run(make(n_train=1, n_eval=1, max_train=10),
                           [("after_step", lambda ev: steps.append((ev.mode, ev.step, ev.confidence)))])
    assert res.path == "stepwise"
    assert [s for s in steps if s[0] == "train"] == [("train", i, None) for i in range(10)]
    ev = [s for s in steps if s[0] == "eval"]
    assert len(ev) == records[-1].steps and ev[-1][2] == pytest.approx(records[-1].confidence)


def test_after_experiment_gets_result_and_after_episode_gets_record():
    got = {}
    ex = Experiment(make(n_train=1, n_eval=1))
    ex.add_hook("after_experiment", lambda ev: got.setdefault("result", ev.result))
    ex.add_hook("after_episode", lambda ev: got.setdefault(ev.mode, ev.record))
    res = ex.run()
    assert got["result"] is res
    assert got["eval"] == ex.records(res)[-1]


@pytest.mark.parametrize("do_train, n_train, max_train", [(True, 2, 50), (True, 3, 7), (False, 2, 50), (True, 1, 1)])
def test_capacity_is_every_training_step_and_the_result_views_the_packed_outputs(do_train, n_train, max_train):
    from kernels import loop as kloop

    d = make(n_train=n_train, max_train=max_train).to_dict()
    d["experiment"]["do_train"] = do_train
    ex = Experiment(from_dict(d))
    o = ex.obs
    want = kloop.training_steps_needed(o.train_starts, o.train_stops, max_train, n_train if do_train else 0)
    assert ex.capacity() == want
    res = ex.run()
    assert res.store.shape == (3 + o.n_features, want) and res.n_stored == want
    n_tr = ex.n_train_epochs * o.train_starts.shape[0]
    assert res.train_steps.base is res.counts and res.eval_reason.base is res.reasons
    assert res.train_steps.shape == res.train_stored.shape == res.train_reason.shape == (n_tr,)
    assert res.eval_steps.shape == res.eval_confidence.shape == res.eval_reason.shape == (2 * o.eval_starts.shape[0],)
    res.eval_steps[0] = -7  # the attributes are views: writing one writes the result
    assert res.counts[2 * n_tr] == -7


def test_bad_hooks_rejected():
    ex = Experiment(make())
    with pytest.raises(ValueError, match="unknown hook event 'after_run'"):
        ex.add_hook("after_run", lambda ev: None)
    with pytest.raises(TypeError):
        ex.add_hook("after_epoch", 5)


def test_warmup_does_not_call_user_hooks():
    calls = []
    ex = Experiment(make())
    ex.add_hook("after_episode", lambda ev: calls.append(ev))
    assert ex.warmup() >= 0.0 and calls == []
    ex.run()
    assert len(calls) == 4


def test_memory_per_stored_observation():
    _, res, _ = run(make(source="seed_spiral", size=100, threshold=None))
    assert res.bytes_per_observation == 16
    assert res.store.dtype == np.float32 and res.store.shape == (4, res.n_stored)


def test_observations_are_float32_contiguous():
    for obs in (sources.seed_spiral(10), sources.cube(), sources.sphere(), sources.random_points(5, 2)):
        assert obs.location.dtype == np.float32 and obs.location.flags.c_contiguous
        assert obs.features.dtype == np.float32 and obs.features.flags.c_contiguous
