"""The nearest model: KD-tree similarity against a brute-force NumPy reference, fused vs stepwise,
thinning, float16 storage, memory per observation."""

import numpy as np
import pytest

from engine.config import from_dict
from engine.errors import ConfigError
from engine.models.similarity import Experiment
from engine.models.nearest_index import NearestIndex
from kernels import kdtree, nearest
from naive.nearest import brute_nearest_similarity


@pytest.mark.parametrize("n, k, max_distance, n_features", [
    (1, 1, np.inf, 1), (500, 10, np.inf, 1), (500, 10, 0.08, 1), (2000, 5, 0.05, 3), (300, 50, np.inf, 0),
    (400, 10, 1e-6, 1)])
def test_batch_similarity_matches_brute_force(n, k, max_distance, n_features):
    rng = np.random.default_rng(n + k)
    loc = rng.random((n, 3), dtype=np.float32)
    loc[n // 2:n // 2 + 5] = loc[0]  # duplicates
    feat = rng.random((n, n_features), dtype=np.float32)
    tree = kdtree.compact_tree(kdtree.build_tree(loc, 32))
    feats = np.ascontiguousarray(feat.T)
    q = np.concatenate([rng.random((300, 3), dtype=np.float32), loc[:5]])
    g = rng.random((len(q), n_features), dtype=np.float32)
    got = nearest.nearest_batch_similarity(tree, feats, k, max_distance, q, g)
    ref = [brute_nearest_similarity(loc, feat, q[i], g[i], k, max_distance) for i in range(len(q))]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    for i in (0, 7, len(q) - 1):
        s, c = nearest.nearest_match_step(tree, feats, k, max_distance, q, g, i, np.float32(0))
        assert s == got[i] and c == np.float32(got[i] * np.float32(0.5))


def config(stepwise=False, storage="float32", **model):
    return from_dict({"experiment": {"n_train_epochs": 2, "n_eval_epochs": 2, "max_eval_steps": 40},
                      "model": {"type": "nearest", "storage": storage, **model},
                      "data": {"source": "random", "n_points": 300, "n_features": 2, "seed": 4},
                      "execution": {"stepwise": stepwise, "chunk_size": 7}})


@pytest.mark.parametrize("model", [dict(confidence_threshold=0.5), dict(k=3, max_distance=0.2),
                                   dict(confidence_threshold=None, dedup_distance=0.05, dedup_feature=0.5)])
@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_fused_equals_stepwise(model, storage):
    ex = Experiment(config(storage=storage, **model))
    fused = ex.records(ex.run())
    ex_s = Experiment(config(stepwise=True, storage=storage, **model))
    assert fused == ex_s.records(ex_s.run())


def test_experiment_against_brute_force_reference():
    cfg = config(confidence_threshold=None, k=7, max_distance=0.3)
    ex = Experiment(cfg)
    res = ex.run()
    o = ex.obs
    stored_loc = np.concatenate([o.location[o.train_starts[0]:o.train_stops[0]]] * 2)
    stored_feat = np.concatenate([o.features[o.train_starts[0]:o.train_stops[0]]] * 2)
    c = 0.0
    for t in range(o.eval_starts[0], o.eval_starts[0] + 40):
        c = (c + brute_nearest_similarity(stored_loc, stored_feat, o.location[t], o.features[t], 7, 0.3)) / 2
    assert res.n_stored == 600
    assert res.eval_confidence[0] == pytest.approx(c, rel=1e-5)


def test_dedup_against_plain_reference():
    rng = np.random.default_rng(0)
    loc = (rng.random((400, 3)) * 0.2).astype(np.float32)
    feat = rng.random((400, 1), dtype=np.float32)
    idx = NearestIndex(1)
    idx.add(loc, feat, 0, 200, 0.02, 0.3)
    idx.add(loc, feat, 200, 400, 0.02, 0.3)
    kept = []  # plain reference: keep unless an earlier kept point is close in space and features
    for t in range(400):
        dup = False
        for u in kept:
            d = loc[u] - loc[t]
            if d[0] * d[0] + d[1] * d[1] + d[2] * d[2] <= np.float32(0.02) * np.float32(0.02) \
                    and abs(float(feat[u, 0]) - float(feat[t, 0])) <= 0.3:
                dup = True
                break
        if not dup:
            kept.append(t)
    # the index checks the 8 nearest stored neighbours; with these densities that is all of them
    assert idx.n == len(kept)
    np.testing.assert_array_equal(idx.positions(), loc[kept])


def test_memory_per_observation():
    ex = Experiment(config(confidence_threshold=None))
    assert ex.run().bytes_per_observation <= 16 + 4 + 8  # 12 B position + 2 x 4 B features, index <= 8
    ex = Experiment(from_dict({"experiment": {"n_eval_epochs": 0}, "model": {"type": "nearest"},
                               "data": {"source": "seed_spiral", "size": 20000}}))
    assert ex.run().bytes_per_observation <= 16 + 8
    ex = Experiment(from_dict({"experiment": {"n_eval_epochs": 0}, "model": {"type": "nearest", "storage": "float16"},
                               "data": {"source": "seed_spiral", "size": 20000}}))
    assert ex.run().bytes_per_observation <= 8 + 8


def test_nearest_settings_rejected_for_similarity():
    with pytest.raises(ConfigError, match="model.k: only the nearest model reads it"):
        from_dict({"model": {"k": 5}, "data": {"source": "cube"}})
    with pytest.raises(ConfigError, match="model.k: expected an integer >= 1"):
        from_dict({"model": {"type": "nearest", "k": 0}, "data": {"source": "cube"}})
