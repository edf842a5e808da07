"""float16 storage: conversions against NumPy, kernels on float16 stores against float32 references."""

import numpy as np
import pytest

from kernels import compact, loop, matching
from kernels.store import bytes_per_observation, new_store, store_from_arrays
from naive.matching import mean_similarity as ref_similarity

from engine.config import from_dict
from engine.errors import UserError
from engine.models.similarity import Experiment

EDGE = np.array([0.0, -0.0, 1.0, -1.0, 1e-8, 6.1e-5, 3.3e-7, 0.1, 65504.0, -65504.0, 2049.0, 1234.567],
                dtype=np.float32)


@pytest.mark.parametrize("values", [EDGE, np.random.default_rng(0).normal(0, 10, 1000).astype(np.float32),
                                    np.zeros(0, np.float32)])
def test_to_and_from_float16_bits_match_numpy(values):
    bits = compact.to_float16_bits(values)
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(bits, values.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(compact.from_float16_bits(bits), values.astype(np.float16).astype(np.float32))


def test_out_of_range_rejected():
    with pytest.raises(ValueError, match="exceed float16's range"):
        compact.to_float16_bits(np.array([70000.0], np.float32))


@pytest.mark.parametrize("n_features", [0, 1, 3])
@pytest.mark.parametrize("n_stored", [0, 1, 7, 500])
def test_similarity_on_float16_store_equals_reference_on_rounded_values(n_features, n_stored):
    rng = np.random.default_rng(n_stored + 10 * n_features)
    loc = rng.random((max(n_stored, 1), 3), dtype=np.float32)
    feat = rng.random((max(n_stored, 1), n_features), dtype=np.float32)
    store32, _ = store_from_arrays(loc, feat)
    store16 = compact.to_float16_bits(store32)
    queries = rng.random((20, 3), dtype=np.float32)
    qfeat = rng.random((20, n_features), dtype=np.float32)
    got = matching.batch_similarity(store16, n_stored, queries, qfeat)
    assert got.dtype == np.float32
    rounded = store32.astype(np.float16).astype(np.float64)
    ref = [ref_similarity(rounded[:3, :n_stored].T, rounded[3:, :n_stored].T, q, g) for q, g in zip(queries, qfeat)]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    for i in range(3):
        assert matching.mean_similarity(store16, n_stored, queries[i], qfeat[i]) == got[i]


def test_train_kernels_write_float16_bits():
    rng = np.random.default_rng(1)
    loc = rng.random((30, 3), dtype=np.float32)
    feat = rng.random((30, 2), dtype=np.float32)
    store = new_store(2, 30, "float16")
    assert store.dtype == np.uint16 and bytes_per_observation(store) == 10
    n = loop.train_episodes(store, 0, loc, feat, np.array([0]), np.array([30]), 30,
                            np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int8))
    assert n == 30
    expected = np.concatenate([loc.T, feat.T]).astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(store, expected)
    single = new_store(2, 1, "float16")
    loop.train_step(single, 0, loc, feat, 4)
    np.testing.assert_array_equal(single[:, 0], expected[:, 4])


def _config(storage, stepwise=False, threshold=0.6):
    return from_dict({"experiment": {"n_train_epochs": 2, "n_eval_epochs": 2},
                      "model": {"storage": storage, "confidence_threshold": threshold},
                      "data": {"source": "cube"}, "execution": {"stepwise": stepwise}})


def test_float16_experiment_fused_equals_stepwise_and_close_to_float32():
    ex = Experiment(_config("float16"))
    fused = ex.records(ex.run())
    ex_s = Experiment(_config("float16", stepwise=True))
    res_s = ex_s.run()
    assert fused == ex_s.records(res_s)
    assert res_s.bytes_per_observation == 8 and res_s.store.dtype == np.uint16
    ex32 = Experiment(_config("float32", threshold=None))
    ex16 = Experiment(_config("float16", threshold=None))
    c32, c16 = ex32.run().final_confidence, ex16.run().final_confidence
    assert c16 == pytest.approx(c32, rel=1e-3)


def test_float16_storage_rejects_data_out_of_range():
    cfg = from_dict({"model": {"storage": "float16"}, "data": {"source": "seed_spiral", "size": 1_400_000}})
    with pytest.raises(UserError, match="model.storage: float16 cannot hold the data's location"):
        Experiment(cfg)
