"""kernels.loop (training, evaluation, whole experiments) against the references in ``tests/naive/loop.py``.

The fused loops and the single-step kernels share their arithmetic, so they are
compared bit for bit (``assert_array_equal``), never with a tolerance. Tolerances
against the references: see ``tests/kernel_helpers.py``."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import naive.loop
import naive.matching
import naive.store
from kernels import loop, matching
from kernels import store as kstore
from kernel_helpers import (
    RTOL, SEEDS, N_FEATURES, random_observations, make_store, random_episodes, as_arrays, reason_names, kernel_eval,
    stepwise_eval, reference_eval, threshold_stopping_near, reference_trajectories, seed_workload, BLOCKED,
)


def test_reason_codes_name_the_reference_reasons():
    assert loop.REASON_NAMES[loop.DONE] == naive.loop.DONE
    assert loop.REASON_NAMES[loop.DATA_EXHAUSTED] == naive.loop.DATA_EXHAUSTED
    assert loop.REASON_NAMES[loop.STEP_LIMIT] == naive.loop.STEP_LIMIT


@pytest.mark.parametrize("max_steps", [0, 1, 5, 10_000])
@pytest.mark.parametrize("n_epochs", [0, 1, 3])
def test_training_steps_needed(max_steps, n_epochs):
    episodes = [(0, 0), (2, 9), (3, 4), (10, 40)]
    starts, stops = as_arrays(episodes)
    want = n_epochs * sum(min(b - a, max_steps) for a, b in episodes)
    assert loop.training_steps_needed(starts, stops, max_steps, n_epochs) == want


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_train_step_appends_one_observation(n_features):
    rng = np.random.default_rng(14)
    location, features = random_observations(rng, 10, n_features)
    store = kstore.new_store(n_features, 3)
    n = 0
    for t in (4, 4, 9):
        n = loop.train_step(store, n, location, features, t)
    assert n == 3
    got_location, got_features = naive.store.store_contents(store, n)
    assert_array_equal(got_location, location[[4, 4, 9]])
    assert_array_equal(got_features, features[[4, 4, 9]])
    with pytest.raises(ValueError):
        loop.train_step(store, n, location, features, 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("max_steps", [0, 1, 6, 10_000])
def test_train_episodes_matches_reference(seed, n_features, max_steps):
    rng = np.random.default_rng(seed)
    location, features = random_observations(rng, 60, n_features)
    episodes = random_episodes(rng, 60, 6, 12)
    initial_location, initial_features = random_observations(rng, 4, n_features)
    need = loop.training_steps_needed(*as_arrays(episodes), max_steps, 1)
    store = kstore.new_store(n_features, 4 + need)
    store[:3, :4] = initial_location.T
    store[3:, :4] = initial_features.T
    steps = np.full(len(episodes), -1, dtype=np.int64)
    stored = np.full(len(episodes), -1, dtype=np.int64)
    reason = np.full(len(episodes), -1, dtype=np.int8)
    n = loop.train_episodes(store, 4, location, features, *as_arrays(episodes), max_steps, steps, stored, reason)
    want = naive.loop.run_experiment(location, features, episodes, 1, max_steps, [], 0, 0, np.inf,
                              initial_location, initial_features)
    assert n == want["n_stored"] == 4 + need
    assert_array_equal(steps, want["train_steps"])
    assert_array_equal(stored, want["train_stored"])
    assert reason_names(reason) == want["train_reason"]
    got_location, got_features = naive.store.store_contents(store, n)
    assert_array_equal(got_location, want["stored_location"])
    assert_array_equal(got_features, want["stored_features"])


def test_train_episodes_into_a_too_small_store_raises_and_writes_nothing():
    rng = np.random.default_rng(15)
    location, features = random_observations(rng, 20, 1)
    starts, stops = as_arrays([(0, 5), (5, 12)])
    store = kstore.new_store(1, 11)
    before = store.copy()
    out = [np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int8)]
    with pytest.raises(ValueError):
        loop.train_episodes(store, 0, location, features, starts, stops, 100, *out)
    assert_array_equal(store, before)
    with pytest.raises(ValueError):  # fits from empty, not after 3 stored
        loop.train_episodes(kstore.new_store(1, 12), 3, location, features, starts, stops, 100, *out)
    assert loop.train_episodes(kstore.new_store(1, 12), 0, location, features, starts, stops, 100, *out) == 12


# ---------------------------------------------------------------- evaluation


def eval_problem(seed, n_features, n_stored=120, n_obs=150, n_episodes=7, max_length=30):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_obs, n_features)
    # Nudge the first half of the queries onto stored points, so confidences rise and vary.
    half = n_obs // 2
    pick = rng.integers(0, max(n_stored, 1), size=half)
    if n_stored:
        location[:half] = stored_location[pick] + rng.normal(0.0, 0.05, size=(half, 3)).astype(np.float32)
        features[:half] = stored_features[pick]
    store, n = make_store(stored_location, stored_features)
    episodes = random_episodes(rng, n_obs, n_episodes, max_length)
    episodes.append((0, max_length))  # one long episode that starts in the nudged half
    return store, n, location, features, episodes


def threshold_for(kind, store, n, location, features, episodes, max_steps):
    if kind == "inf":
        return np.inf
    if kind == "above_one":
        return 2.0
    if kind == "never_below_one":
        return 0.999
    if kind == "step_1":
        return 1e-3
    if kind == "mid":
        return threshold_stopping_near(reference_trajectories(store, n, location, features, episodes, max_steps), 5)
    raise ValueError(kind)


THRESHOLD_KINDS = ["inf", "above_one", "never_below_one", "step_1", "mid"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", THRESHOLD_KINDS)
def test_eval_episodes_matches_reference(seed, n_features, threshold_kind):
    max_steps = 25
    store, n, location, features, episodes = eval_problem(seed, n_features)
    threshold = threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    steps, confidence, reason = kernel_eval(store, n, location, features, episodes, max_steps, threshold, 4)
    want_steps, want_confidence, want_reason = reference_eval(store, n, location, features, episodes,
                                                              max_steps, threshold)
    assert_array_equal(steps, want_steps)
    assert reason_names(reason) == want_reason
    assert_allclose(confidence, want_confidence, rtol=RTOL)
    if threshold_kind == "step_1":
        assert all(s == 1 for s, (a, b) in zip(steps, episodes) if b > a)
    if threshold_kind == "mid":
        assert loop.DONE in reason
        assert any(r == loop.DONE and 1 < s < min(b - a, max_steps) for s, r, (a, b) in zip(steps, reason, episodes))
        assert any(r == loop.DONE and s % 4 != 0 for s, r in zip(steps, reason))  # mid-chunk (chunk 4)
    if threshold_kind in ("inf", "above_one", "never_below_one"):
        assert loop.DONE not in reason


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("max_steps", [0, 1, 2])
def test_eval_episodes_with_tiny_step_limits(n_features, max_steps):
    store, n, location, features, episodes = eval_problem(20, n_features)
    episodes += [(5, 6), (7, 9)]  # lengths 1 and 2: data runs out exactly at the limit for some max_steps
    for threshold in (np.inf, 1e-3):
        steps, confidence, reason = kernel_eval(store, n, location, features, episodes, max_steps, threshold, 3)
        want = reference_eval(store, n, location, features, episodes, max_steps, threshold)
        assert_array_equal(steps, want[0])
        assert reason_names(reason) == want[2]
        assert_allclose(confidence, want[1], rtol=RTOL)
    if max_steps == 0:
        assert_array_equal(steps, np.zeros(len(episodes)))
        assert_array_equal(confidence, np.zeros(len(episodes), np.float32))
        assert reason_names(reason) == [naive.loop.DATA_EXHAUSTED if a == b else naive.loop.STEP_LIMIT for a, b in episodes]


def test_eval_episodes_against_an_empty_store():
    store, _, location, features, episodes = eval_problem(21, 1)
    steps, confidence, reason = kernel_eval(store, 0, location, features, episodes, 10, 0.5, 4)
    assert_array_equal(confidence, np.zeros(len(episodes), np.float32))
    assert_array_equal(steps, [min(b - a, 10) for a, b in episodes])
    assert loop.DONE not in reason


def test_eval_episodes_with_no_episodes_and_only_empty_episodes():
    store, n, location, features, _ = eval_problem(22, 1)
    assert [len(x) for x in kernel_eval(store, n, location, features, [], 10, 0.5, 4)] == [0, 0, 0]
    steps, confidence, reason = kernel_eval(store, n, location, features, [(3, 3), (0, 0)], 10, 0.5, 4)
    assert_array_equal(steps, [0, 0])
    assert reason_names(reason) == [naive.loop.DATA_EXHAUSTED] * 2


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", ["inf", "never_below_one", "step_1", "mid"])
@pytest.mark.parametrize("n_stored", [0, 3, 120, BLOCKED])
def test_eval_episodes_does_not_depend_on_chunk(n_features, threshold_kind, n_stored):
    max_steps = 25
    store, n, location, features, episodes = eval_problem(23, n_features, n_stored=n_stored)
    threshold = 0.3 if (threshold_kind == "mid" and n_stored < 120) else \
        threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    results = [kernel_eval(store, n, location, features, episodes, max_steps, threshold, chunk)
               for chunk in (1, 3, 64, 10_000)]
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert_array_equal(got, want)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("threshold_kind", ["inf", "never_below_one", "step_1", "mid"])
@pytest.mark.parametrize("n_stored", [0, 5, 120, BLOCKED])
def test_eval_episodes_equals_the_stepwise_path_bitwise(n_features, threshold_kind, n_stored):
    # BLOCKED (over BLOCKED_ABOVE) puts every round, even 1-step chunks over ~8 episodes,
    # over PARALLEL_MIN_COMPARISONS: the fused path runs its tiled batch; 5 and 120 run serially.
    max_steps = 25
    store, n, location, features, episodes = eval_problem(24, n_features, n_stored=n_stored)
    threshold = 0.3 if (threshold_kind == "mid" and n_stored < 120) else \
        threshold_for(threshold_kind, store, n, location, features, episodes, max_steps)
    stepwise = stepwise_eval(store, n, location, features, episodes, max_steps, threshold)
    for chunk in (1, 4, 10_000):
        fused = kernel_eval(store, n, location, features, episodes, max_steps, threshold, chunk)
        for got, want in zip(fused, stepwise):
            assert_array_equal(got, want)


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_match_step_matches_reference_and_mean_similarity(n_features):
    store, n, location, features, _ = eval_problem(25, n_features)
    stored_location, stored_features = naive.store.store_contents(store, n)
    confidence = np.float32(0.0)
    want_confidence = 0.0
    for t in range(12):
        s, confidence = loop.match_step(store, n, location, features, t, confidence)
        want_s = naive.matching.mean_similarity(stored_location, stored_features, location[t], features[t])
        want_confidence = naive.matching.update_confidence(want_confidence, want_s)
        assert s == matching.mean_similarity(store, n, location[t], features[t])
        assert_allclose(s, want_s, rtol=RTOL)
        assert_allclose(confidence, want_confidence, rtol=RTOL)
        confidence = np.float32(confidence)


# ---------------------------------------------------------------- whole experiments


def kernel_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                      max_eval, threshold, chunk, capacity=None, n_features=None, packed=False):
    """Run ``loop.run_experiment`` (or, with ``packed``, ``loop.run_experiment_packed``); a dict of outputs."""
    n_features = features.shape[1] if n_features is None else n_features
    train_starts, train_stops = as_arrays(train_episodes)
    eval_starts, eval_stops = as_arrays(eval_episodes)
    if capacity is None:
        capacity = loop.training_steps_needed(train_starts, train_stops, max_train, n_train)
    store = kstore.new_store(n_features, capacity)
    n_tr = n_train * len(train_episodes)
    n_ev = n_eval * len(eval_episodes)
    if packed:
        plan = loop.pack_plan(train_starts, train_stops, n_train, max_train, eval_starts, eval_stops, n_eval,
                              max_eval, chunk)
        assert loop.packed_sizes(plan) == (n_tr, n_ev)
        counts = np.full(2 * n_tr + n_ev, -1, np.int64)
        confidence = np.full(n_ev, np.nan, np.float32)
        reasons = np.full(n_tr + n_ev, -1, np.int8)
        out = dict(train_steps=counts[:n_tr], train_stored=counts[n_tr:2 * n_tr], train_reason=reasons[:n_tr],
                   eval_steps=counts[2 * n_tr:], eval_confidence=confidence, eval_reason=reasons[n_tr:])
        # timers=None passed as the engine passes it (engine.models.similarity): the specialisation that runs,
        # rather than a second whole-loop compile for an omitted argument.
        out["n_stored"] = loop.run_experiment_packed(store, location, features, plan, np.float32(threshold),
                                                     counts, confidence, reasons, None)
        out["store"] = store
        return out
    out = dict(
        train_steps=np.full(n_tr, -1, np.int64), train_stored=np.full(n_tr, -1, np.int64),
        train_reason=np.full(n_tr, -1, np.int8), eval_steps=np.full(n_ev, -1, np.int64),
        eval_confidence=np.full(n_ev, np.nan, np.float32), eval_reason=np.full(n_ev, -1, np.int8))
    out["n_stored"] = loop.run_experiment(
        store, 0, location, features, train_starts, train_stops, n_train, max_train,
        eval_starts, eval_stops, n_eval, max_eval, np.float32(threshold), chunk,
        out["train_steps"], out["train_stored"], out["train_reason"],
        out["eval_steps"], out["eval_confidence"], out["eval_reason"])
    out["store"] = store
    return out


EXPERIMENTS = [
    # (n_train_epochs, max_train_steps, n_eval_epochs, max_eval_steps, threshold)
    (1, 10_000, 1, 10_000, np.inf),
    (3, 8, 2, 20, 0.45),
    (2, 1, 2, 1, np.inf),
    (2, 0, 1, 5, 0.4),  # nothing stored
    (0, 10, 2, 10, 0.4),  # no training
    (2, 10, 0, 10, 0.4),  # no evaluation
    (2, 15, 3, 0, 0.4),  # evaluation step limit 0
    (1, 10_000, 2, 30, 1e-3),  # stops at step 1
]


@pytest.mark.parametrize("packed", [False, True], ids=["run_experiment", "run_experiment_packed"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_train, max_train, n_eval, max_eval, threshold", EXPERIMENTS)
def test_run_experiment_matches_reference(seed, n_features, n_train, max_train, n_eval, max_eval, threshold, packed):
    rng = np.random.default_rng(seed)
    location, features = random_observations(rng, 80, n_features)
    train_episodes = random_episodes(rng, 80, 5, 20)
    eval_episodes = random_episodes(rng, 80, 4, 25)
    got = kernel_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                            max_eval, threshold, 4, n_features=n_features, packed=packed)
    want = naive.loop.run_experiment(location, features, train_episodes, n_train, max_train, eval_episodes, n_eval,
                              max_eval, float(np.float32(threshold)))
    assert got["n_stored"] == want["n_stored"]
    for key in ("train_steps", "train_stored", "eval_steps"):
        assert_array_equal(got[key], want[key], err_msg=key)
    assert reason_names(got["train_reason"]) == want["train_reason"]
    assert reason_names(got["eval_reason"]) == want["eval_reason"]
    assert_allclose(got["eval_confidence"], want["eval_confidence"], rtol=RTOL)
    stored_location, stored_features = naive.store.store_contents(got["store"], got["n_stored"])
    assert_array_equal(stored_location, want["stored_location"])
    assert_array_equal(stored_features, want["stored_features"])


def test_run_experiment_matches_its_parts_and_any_chunk():
    rng = np.random.default_rng(26)
    location, features = random_observations(rng, 90, 1)
    train_episodes = random_episodes(rng, 90, 6, 20)
    eval_episodes = random_episodes(rng, 90, 5, 30)
    runs = [kernel_experiment(location, features, train_episodes, 2, 15, eval_episodes, 3, 25, 0.42, chunk)
            for chunk in (1, 3, 64, 10_000)]
    for other in runs[1:]:
        for key, want in runs[0].items():
            assert_array_equal(other[key], want, err_msg=key)
    # The evaluation part equals eval_episodes on the trained store, one epoch at a time.
    first = runs[0]
    for p in range(3):
        part = kernel_eval(first["store"], first["n_stored"], location, features, eval_episodes, 25, 0.42, 5)
        e = len(eval_episodes)
        for got, key in zip(part, ("eval_steps", "eval_confidence", "eval_reason")):
            assert_array_equal(got, first[key][p * e:(p + 1) * e])


@pytest.mark.parametrize("packed", [False, True], ids=["run_experiment", "run_experiment_packed"])
def test_run_experiment_with_a_too_small_store_raises(packed):
    rng = np.random.default_rng(27)
    location, features = random_observations(rng, 30, 1)
    with pytest.raises(ValueError):
        kernel_experiment(location, features, [(0, 10)], 3, 100, [(0, 10)], 1, 10, 0.5, 4, capacity=29,
                          packed=packed)
    assert kernel_experiment(location, features, [(0, 10)], 3, 100, [(0, 10)], 1, 10, 0.5, 4,
                             capacity=30, packed=packed)["n_stored"] == 30


def test_run_experiment_packed_equals_run_experiment_bitwise():
    """Same outputs, bit for bit, including the store, on several feature counts and chunks."""
    rng = np.random.default_rng(28)
    for n_features in N_FEATURES:
        location, features = random_observations(rng, 120, n_features)
        train_episodes = random_episodes(rng, 120, 7, 30)
        eval_episodes = random_episodes(rng, 120, 6, 40)
        for chunk in (1, 5, 64):
            wide, packed = (kernel_experiment(location, features, train_episodes, 3, 25, eval_episodes, 2, 35,
                                              0.41, chunk, packed=p) for p in (False, True))
            for key, want in wide.items():
                assert_array_equal(packed[key], want, err_msg=f"{key}, {n_features} features, chunk {chunk}")


def test_pack_plan_layout_and_errors():
    plan = loop.pack_plan([0, 5], [5, 9], 3, 7, [2], [8], 4, 6, 16, n_stored=11)
    assert plan.dtype == np.int64
    assert_array_equal(plan, [11, 2, 3, 7, 1, 4, 6, 16, 0, 5, 5, 9, 2, 8])
    assert dict(zip(loop.PLAN_FIELDS, plan)) == dict(n_stored=11, n_train_episodes=2, n_train_epochs=3,
                                                     max_train_steps=7, n_eval_episodes=1, n_eval_epochs=4,
                                                     max_eval_steps=6, chunk=16)
    assert loop.packed_sizes(plan) == (6, 4)
    with pytest.raises(ValueError, match="same length"):
        loop.pack_plan([0, 5], [5], 1, 1, [], [], 1, 1, 1)
    with pytest.raises(ValueError, match="chunk"):
        loop.pack_plan([0], [5], 1, 1, [0], [5], 1, 1, 0)
    with pytest.raises(ValueError, match=">= 0"):
        loop.pack_plan([0], [5], -1, 1, [0], [5], 1, 1, 1)


def test_run_experiment_packed_rejects_outputs_that_do_not_match_the_plan():
    rng = np.random.default_rng(29)
    location, features = random_observations(rng, 20, 1)
    plan = loop.pack_plan([0], [10], 2, 100, [0, 10], [10, 20], 1, 100, 4)
    n_tr, n_ev = loop.packed_sizes(plan)
    store = kstore.new_store(1, 20)
    good = (np.zeros(2 * n_tr + n_ev, np.int64), np.zeros(n_ev, np.float32), np.zeros(n_tr + n_ev, np.int8))
    for k in range(3):
        bad = list(good)
        bad[k] = bad[k][:-1]
        with pytest.raises(ValueError, match="plan and outputs do not match"):
            loop.run_experiment_packed(store, location, features, plan, np.float32(0.5), *bad, None)
    with pytest.raises(ValueError, match="plan and outputs do not match"):
        loop.run_experiment_packed(store, location, features, plan[:-1], np.float32(0.5), *good, None)
    assert loop.run_experiment_packed(store, location, features, plan, np.float32(0.5), *good, None) == 20


SEED_PARITY = {  # (size, epochs): final confidence, from the external Rust reference implementation
    (10, 10): 0.688552856,
    (50, 10): 0.320348978,
    (100, 10): 0.232865244,
    (500, 5): 0.102160096,
    (1000, 2): 0.064621277,
}


@pytest.mark.parametrize("size, epochs", list(SEED_PARITY))
def test_seed_workload_parity(size, epochs):
    location, features = seed_workload(size)
    episode = [(0, size)]
    got = kernel_experiment(location, features, episode, epochs, 10_000, episode, epochs, 10_000, np.inf, 64)
    assert got["n_stored"] == size * epochs
    assert reason_names(got["eval_reason"]) == [naive.loop.DATA_EXHAUSTED] * epochs
    assert_array_equal(got["eval_steps"], [size] * epochs)
    assert_allclose(got["eval_confidence"][-1], SEED_PARITY[size, epochs], rtol=RTOL)
    # The plain reference reproduces the external figures as well.
    want = naive.loop.run_experiment(location, features, episode, epochs, 10_000, episode, epochs, 10_000, np.inf)
    assert_allclose(want["eval_confidence"][-1], SEED_PARITY[size, epochs], rtol=RTOL)
    # And the stepwise path gives the fused result bit for bit.
    stepwise = stepwise_eval(got["store"], got["n_stored"], location, features, episode, 10_000, np.inf)
    assert_array_equal(stepwise[1], got["eval_confidence"][-1:])
