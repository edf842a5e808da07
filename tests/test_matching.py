"""kernels.matching (similarity, termination) against the references in ``tests/naive/matching.py``.

Tolerances: see ``tests/kernel_helpers.py``."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import naive.matching
from kernels import matching
from kernels import store as kstore
from kernels._flags import PARALLEL_MIN_COMPARISONS
from kernel_helpers import (
    RTOL, SEEDS, N_FEATURES, random_observations, make_store, run_python, LIST_DISPATCHERS, BLOCKED,
)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_stored", [0, 1, 7, 300])
def test_mean_similarity_matches_reference(seed, n_features, n_stored):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, 5, n_features)
    store, n = make_store(stored_location, stored_features)
    for t in range(5):
        got = matching.mean_similarity(store, n, location[t], features[t])
        want = naive.matching.mean_similarity(stored_location, stored_features, location[t], features[t])
        assert_allclose(got, want, rtol=RTOL)


def test_mean_similarity_of_an_empty_store_is_zero():
    store = kstore.new_store(1, 4)
    store[:] = np.nan
    got = matching.mean_similarity(store, 0, np.ones(3, np.float32), np.ones(1, np.float32))
    assert got == 0.0


@pytest.mark.parametrize("n_features", N_FEATURES)
def test_mean_similarity_with_duplicates_and_an_identical_query_is_one(n_features):
    # Every stored observation equals the query: each term is 1 / (1 + 0 + 0).
    # The fastmath reciprocal estimate returns 0.99999994 (1 ulp below 1) for
    # 1 / 1, so the result is 1 to float32 rounding, not exactly 1.
    rng = np.random.default_rng(8)
    location, features = random_observations(rng, 1, n_features)
    stored_location = np.repeat(location, 500, axis=0)
    stored_features = np.repeat(features, 500, axis=0)
    store, n = make_store(stored_location, stored_features)
    got = matching.mean_similarity(store, n, location[0], features[0])
    assert_allclose(got, 1.0, rtol=RTOL)
    assert got <= 1.0


def test_mean_similarity_with_a_query_equal_to_one_stored_point():
    stored_location = np.array([[0, 0, 0], [3, 4, 0]], dtype=np.float32)
    stored_features = np.array([[0.5], [1.5]], dtype=np.float32)
    store, n = make_store(stored_location, stored_features)
    got = matching.mean_similarity(store, n, stored_location[0], stored_features[0])
    assert_allclose(got, (1.0 + 1.0 / (1.0 + 5.0 + 1.0)) / 2.0, rtol=RTOL)


# (queries, stored): serial, parallel over queries, and tiled (stores over BLOCKED_ABOVE,
# with a tile per query, and with full tiles and a block remainder)
BATCH_SIZES = [(1, 0), (1, BLOCKED), (5, 1), (10, 100), (64, 40), (200, 300), (300, 200), (12, BLOCKED),
               (300, BLOCKED)]


def _batch_branch(q, n):
    if q > 1 and q * n >= PARALLEL_MIN_COMPARISONS:
        return "tiled" if n > matching.BLOCKED_ABOVE else "parallel"
    return "serial"


def test_batch_sizes_cover_every_branch():
    assert {_batch_branch(q, n) for q, n in BATCH_SIZES} == {"serial", "parallel", "tiled"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", BATCH_SIZES)
def test_batch_similarity_matches_reference_and_single_queries(seed, n_features, n_queries, n_stored):
    rng = np.random.default_rng(seed)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    out = matching.batch_similarity(store, n, location, features)
    assert out.dtype == np.float32 and out.shape == (n_queries,)
    want = [naive.matching.mean_similarity(stored_location, stored_features, location[t], features[t])
            for t in range(n_queries)]
    assert_allclose(out, want, rtol=RTOL)
    single = [matching.mean_similarity(store, n, location[t], features[t]) for t in range(n_queries)]
    assert_array_equal(out, np.array(single, dtype=np.float32))


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", [(12, 10), (150, 90)])
def test_batch_similarity_at_takes_steps_in_any_order(n_features, n_queries, n_stored):
    rng = np.random.default_rng(9)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    everything = matching.batch_similarity(store, n, location, features)
    # A permutation, then a shorter selection with repeats.
    for steps in (rng.permutation(n_queries), rng.integers(0, n_queries, size=n_queries // 2 + 3)):
        steps = steps.astype(np.int64)
        out = np.full(steps.shape[0], np.nan, dtype=np.float32)
        matching.batch_similarity_at(store, n, location, features, steps, out)
        assert_array_equal(out, everything[steps])
        want = [naive.matching.mean_similarity(stored_location, stored_features, location[t], features[t]) for t in steps]
        assert_allclose(out, want, rtol=RTOL)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n_queries, n_stored", [(3, 0), (7, 5), (300, 200)])
def test_batch_similarity_serial_and_parallel_agree_bitwise(n_features, n_queries, n_stored):
    rng = np.random.default_rng(10)
    stored_location, stored_features = random_observations(rng, n_stored, n_features)
    location, features = random_observations(rng, n_queries, n_features)
    store, n = make_store(stored_location, stored_features)
    steps = rng.permutation(n_queries).astype(np.int64)
    out_serial = np.full(n_queries, np.nan, dtype=np.float32)
    out_parallel = np.full(n_queries, np.nan, dtype=np.float32)
    matching._batch_similarity_serial(store, n, location, features, steps, out_serial)
    matching._batch_similarity_parallel(store, n, location, features, steps, out_parallel)
    assert_array_equal(out_serial, out_parallel)
    if n_stored == 0:
        assert_array_equal(out_serial, np.zeros(n_queries, dtype=np.float32))


# ---------------------------------------------------------------- termination


def test_update_confidence_is_the_mean_of_confidence_and_similarity():
    assert matching.update_confidence(np.float32(0.0), np.float32(0.5)) == 0.25
    got = matching.update_confidence(np.float32(0.3), np.float32(0.7))
    assert got == np.float32((np.float32(0.3) + np.float32(0.7)) * np.float32(0.5))
    assert_allclose(got, naive.matching.update_confidence(0.3, 0.7), rtol=RTOL)


def scan_cases():
    rng = np.random.default_rng(11)
    sims = rng.uniform(0.2, 0.6, size=40).astype(np.float32)
    sims[10] = 0.95  # a jump, so a threshold between can stop mid-way
    traj = naive.matching.confidence_trajectory(sims)
    mid = float(np.float32((max(traj[:10]) + traj[10]) / 2))
    return [
        ("empty", np.zeros(0, np.float32), 0.0, 0.5),
        ("stop_at_step_1", sims, 0.0, 0.01),
        ("already_above", sims, 0.9, 0.5),
        ("stop_mid_way", sims, 0.0, mid),
        ("never_inf", sims, 0.0, np.inf),
        ("never_below_1", sims, 0.0, 0.99),
        ("nonzero_start", sims, 0.4, mid),
    ]


@pytest.mark.parametrize("name, sims, confidence, threshold", scan_cases(), ids=[c[0] for c in scan_cases()])
def test_termination_scan_matches_reference(name, sims, confidence, threshold):
    consumed, c, done = matching.termination_scan(sims, np.float32(confidence), np.float32(threshold))
    want_consumed, want_c, want_done = naive.matching.termination_scan(sims, confidence, float(np.float32(threshold)))
    assert (consumed, done) == (want_consumed, want_done)
    assert_allclose(c, want_c, rtol=RTOL)
    if name == "stop_at_step_1":
        assert (consumed, done) == (1, True)
    if name == "stop_mid_way":
        assert (consumed, done) == (11, True)
    if name.startswith("never"):
        assert (consumed, done) == (len(sims), False)


def test_termination_scan_can_reach_exactly_one_in_float32():
    # Similarity 1 at every step: c = 1 - 2**-k, which float32 rounds to 1.0 at k = 25.
    consumed, c, done = matching.termination_scan(np.ones(40, np.float32), np.float32(0.0), np.float32(1.0))
    assert (consumed, c, done) == (25, 1.0, True)


def random_segments(rng, total, n_segments):
    cuts = np.sort(rng.integers(0, total + 1, size=n_segments - 1))
    offsets = np.concatenate([[0], cuts, [total]]).astype(np.int64)
    offsets[2] = offsets[1]  # one empty segment at least
    return offsets


@pytest.mark.parametrize("total, n_segments", [(0, 1), (50, 6), (matching._SCAN_PARALLEL_MIN_STEPS + 100, 40)])
@pytest.mark.parametrize("threshold", [0.7, np.inf])
def test_scan_segments_matches_reference(total, n_segments, threshold):
    rng = np.random.default_rng(12)
    sims = rng.uniform(0.0, 1.0, size=total).astype(np.float32)
    if n_segments == 1:
        offsets = np.array([0, total], dtype=np.int64)
    else:
        offsets = random_segments(rng, total, n_segments)
    start_conf = rng.uniform(0.0, 0.5, size=n_segments).astype(np.float32)
    confidence = start_conf.copy()
    consumed = np.full(n_segments, -1, dtype=np.int64)
    done = np.zeros(n_segments, dtype=np.bool_)
    matching.scan_segments(sims, offsets, confidence, np.float32(threshold), consumed, done)
    for e in range(n_segments):
        want = naive.matching.termination_scan(sims[offsets[e]:offsets[e + 1]], start_conf[e], threshold)
        assert (consumed[e], done[e]) == (want[0], want[2])
        assert_allclose(confidence[e], want[1], rtol=RTOL)


@pytest.mark.parametrize("total, n_segments", [(30, 4), (matching._SCAN_PARALLEL_MIN_STEPS + 100, 40)])
def test_scan_segments_serial_and_parallel_agree_bitwise(total, n_segments):
    rng = np.random.default_rng(13)
    sims = rng.uniform(0.0, 1.0, size=total).astype(np.float32)
    offsets = random_segments(rng, total, n_segments)
    start_conf = rng.uniform(0.0, 0.5, size=n_segments).astype(np.float32)
    results = []
    for kernel in (matching._scan_segments_serial, matching._scan_segments_parallel, matching.scan_segments):
        confidence = start_conf.copy()
        consumed = np.full(n_segments, -1, dtype=np.int64)
        done = np.zeros(n_segments, dtype=np.bool_)
        kernel(sims, offsets, confidence, np.float32(0.7), consumed, done)
        results.append((confidence, consumed, done))
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert_array_equal(got, want)


# ---------------------------------------------------------------- float32 only


def test_similarity_kernels_compute_in_float32_only(tmp_path):
    # A fresh cache, so every callee is compiled (a kernel loaded from the cache
    # does not compile, and so does not list, the helpers it calls).
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    got = run_python(LIST_DISPATCHERS + """
    import io
    import numpy as np
    from kernels import matching, store as kstore

    rng = np.random.default_rng(0)
    sigs = {}
    for n_features in (0, 1, 3):
        store = rng.random((3 + n_features, 2000), dtype=np.float32)
        location = rng.random((300, 3), dtype=np.float32)
        features = rng.random((300, n_features), dtype=np.float32)
        matching.mean_similarity(store, 2000, location[0], features[0])
        matching.batch_similarity(store, 2000, location, features)  # parallel branch
        matching.batch_similarity(store, 2000, location[:1], features[:1])  # serial branch
        out = np.empty(300, np.float32)
        matching._batch_similarity_serial(store, 2000, location, features, np.arange(300), out)
        matching._batch_similarity_parallel(store, 2000, location, features, np.arange(300), out)
    sims = rng.random(70000, dtype=np.float32)
    offsets = np.array([0, 10, 30000, 70000], dtype=np.int64)
    conf = np.zeros(3, dtype=np.float32)
    matching.scan_segments(sims, offsets, conf, np.float32(0.9), np.zeros(3, np.int64), np.zeros(3, np.bool_))
    matching.scan_segments(sims[:10], offsets[:2], conf[:1], np.float32(0.9), np.zeros(1, np.int64),
                           np.zeros(1, np.bool_))
    for name, d in dispatchers():
        if name.startswith("kernels.matching."):
            sigs[name] = [[str(a) for a in s.args] + ["-> " + str(s.return_type)] for s in d.nopython_signatures]
    text = io.StringIO()
    matching._similarity_sum.inspect_types(file=text)
    print(json.dumps({"sigs": sigs, "similarity_sum_types": text.getvalue()}))
    """, cache)
    sigs = got["sigs"]
    for name in ("_similarity_sum", "mean_similarity", "_batch_similarity_serial", "_batch_similarity_parallel",
                 "batch_similarity", "termination_scan", "update_confidence"):
        assert sigs["kernels.matching." + name], f"{name} was not compiled"
    for name, name_sigs in sigs.items():
        for sig in name_sigs:
            assert not any("array(float64" in part for part in sig), (name, sig)
    assert all(sig[-1] == "-> float32" for sig in sigs["kernels.matching.mean_similarity"])
    assert all(sig[-1] == "-> float32" for sig in sigs["kernels.matching.update_confidence"])
    assert all(sig[-1] == "-> array(float32, 1d, C)" for sig in sigs["kernels.matching.batch_similarity"])
    # The hot loop: every argument, every intermediate value float32 (or integer).
    assert all("float64" not in part for sig in sigs["kernels.matching._similarity_sum"] for part in sig)
    assert got["similarity_sum_types"] and "float64" not in got["similarity_sum_types"]
