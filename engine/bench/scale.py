"""``bench --suite scale``: per-step matching cost against the number of stored observations.

For stored N in {1e3, 1e4, 1e5, 1e6, 1e7} (uniform points in the unit cube,
one feature, seeded) and up to 1e5 matching steps (uniform queries), in one run:

- ``similarity``: the linear scan (``kernels.matching.batch_similarity``),
  parallel over queries; at large N it runs fewer steps (at least 200, about
  2e9 comparisons), enough for a stable per-step time;
- ``nearest``: the KD-tree model (``kernels.nearest.nearest_batch_similarity``,
  k = 10, no distance bound), after building its index (``build_s``);

each with float32 and float16 storage (``f16`` in ``case``). ``per_step_s`` is
the batch time divided by the steps; ``bytes_per_obs`` the stored data (and
for nearest the index) per observation. The log-log slope of per-step cost
against N between 1e4 and 1e6 is reported per implementation and storage.
"""

from __future__ import annotations

import logging
import math
import statistics
import time

import numpy as np

log = logging.getLogger(__name__)

SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
ROW_KEYS = ("suite", "case", "implementation", "n_stored", "n_queries", "k", "build_s", "query_s", "per_step_s",
            "bytes_per_obs")
K = 10
MAX_QUERIES = 100_000
SCAN_COMPARISONS = 2e9


def _case(n: int, storage: str) -> str:
    e = int(round(math.log10(n)))
    name = f"1e{e}" if 10 ** e == n else str(n)
    return name + ("-f16" if storage == "float16" else "")


def _median_time(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_scale_suite(sizes=SIZES, n_queries=MAX_QUERIES, repeats=3, seed=0, json_path=None) -> list[dict]:
    """Measure every size x model x storage; returns rows with ``ROW_KEYS`` plus ``slope`` rows' data."""
    from kernels import compact, kdtree, matching, nearest
    from kernels.store import store_from_arrays

    from engine.models.nearest_index import LEAF_SIZE

    rng = np.random.default_rng(seed)
    queries = rng.random((n_queries, 3), dtype=np.float32)
    qfeat = rng.random((n_queries, 1), dtype=np.float32)
    # compile / load every kernel on a tiny problem first, so no row pays it
    tiny = rng.random((64, 3), dtype=np.float32)
    for storage in ("float32", "float16"):
        st, n = store_from_arrays(tiny, tiny[:, :1])
        st = compact.to_float16_bits(st) if storage == "float16" else st
        matching.batch_similarity(st, n, queries[:4], qfeat[:4])
        tree = kdtree.compact_tree(kdtree.build_tree(tiny, LEAF_SIZE), float16=storage == "float16")
        feats = np.ascontiguousarray(tiny[:, :1].T)
        feats = compact.to_float16_bits(feats) if storage == "float16" else feats
        nearest.nearest_batch_similarity(tree, feats, K, np.inf, queries[:300], qfeat[:300])
    rows = []
    ref = {}  # float32 similarities per (model, n), to report float16's accuracy cost
    for n in sizes:
        points = rng.random((n, 3), dtype=np.float32)
        feat = rng.random((n, 1), dtype=np.float32)
        for storage in ("float32", "float16"):
            f16 = storage == "float16"
            # similarity: the linear scan
            q = int(min(n_queries, max(200, SCAN_COMPARISONS // n)))
            build_s, (store, n_stored) = _median_time(lambda: store_from_arrays(points, feat), 1)
            if f16:
                store = compact.to_float16_bits(store)
            query_s, sims = _median_time(
                lambda: matching.batch_similarity(store, n_stored, queries[:q], qfeat[:q]), repeats)
            rows.append({"suite": "scale", "case": _case(n, storage), "implementation": "similarity",
                         "n_stored": n, "n_queries": q, "k": None, "build_s": build_s, "query_s": query_s,
                         "per_step_s": query_s / q, "bytes_per_obs": store.shape[0] * store.itemsize,
                         "f16_mean_rel_diff": _rel_diff(sims, ref, ("similarity", n), f16)})
            # nearest: the KD-tree
            def build():
                tree = kdtree.compact_tree(kdtree.build_tree(points, LEAF_SIZE), float16=f16)
                feats = np.ascontiguousarray(feat.T)
                return tree, (compact.to_float16_bits(feats) if f16 else feats)
            build_s, (tree, feats) = _median_time(build, repeats if n <= 1_000_000 else 1)
            query_s, sims = _median_time(
                lambda: nearest.nearest_batch_similarity(tree, feats, K, np.inf, queries, qfeat), repeats)
            nbytes = sum(a.nbytes for a in tree) + feats.nbytes
            rows.append({"suite": "scale", "case": _case(n, storage), "implementation": "nearest",
                         "n_stored": n, "n_queries": n_queries, "k": K, "build_s": build_s, "query_s": query_s,
                         "per_step_s": query_s / n_queries, "bytes_per_obs": nbytes / n,
                         "f16_mean_rel_diff": _rel_diff(sims, ref, ("nearest", n), f16)})
            log.info("scale %s done", _case(n, storage))
    if json_path:
        from engine.bench.seed import write_json

        write_json(rows, json_path)
    return rows


def _rel_diff(sims, ref, key, f16):
    """float16 rows: mean relative difference of the similarities from float32's (None on float32 rows).

    The mean, not the maximum: float16 positions can swap a neighbour at a
    near-tie, which moves one step's similarity by a few percent.
    """
    if not f16:
        ref[key] = sims
        return None
    base = ref.get(key)
    if base is None:
        return None
    return float(np.mean(np.abs(sims.astype(np.float64) - base) / np.maximum(np.abs(base), 1e-30)))


def seed_float16_accuracy() -> list[dict]:
    """Final confidence of the seed rows with float16 storage against float32 (the accuracy cost)."""
    from engine.data import sources
    from engine.bench.seed import SEED_ROWS
    from engine.config import from_dict
    from engine.models.similarity import Experiment

    out = []
    for size, epochs in SEED_ROWS:
        conf = {}
        for storage in ("float32", "float16"):
            cfg = from_dict({"experiment": {"n_train_epochs": epochs, "n_eval_epochs": epochs},
                             "model": {"storage": storage}, "data": {"source": "seed_spiral", "size": size}})
            conf[storage] = Experiment(cfg, sources.seed_spiral(size)).run().final_confidence
        out.append({"case": f"{size}x{epochs}", "float32": conf["float32"], "float16": conf["float16"],
                    "rel_diff": abs(conf["float16"] - conf["float32"]) / conf["float32"]})
    return out


def slopes(rows, lo=10_000, hi=1_000_000) -> dict:
    """Least-squares slope of log(per_step_s) against log(n_stored) for lo <= N <= hi, per (model, storage)."""
    out = {}
    for impl in ("similarity", "nearest"):
        for f16 in (False, True):
            pts = [(math.log(r["n_stored"]), math.log(r["per_step_s"])) for r in rows
                   if r["implementation"] == impl and r["case"].endswith("-f16") == f16
                   and lo <= r["n_stored"] <= hi and r["per_step_s"] > 0]
            if len(pts) >= 2:
                x, y = np.array(pts).T
                out[f"{impl}{'-f16' if f16 else ''}"] = float(np.polyfit(x, y, 1)[0])
    return out


def format_scale(rows, seed_accuracy=None) -> str:
    lines = [f"{'case':<10} {'model':<11} {'stored':>10} {'steps':>7} {'build s':>8} {'us/step':>10} {'B/obs':>6}"
             f" {'f16 vs f32':>11}", "-" * 80]
    for r in rows:
        d = r.get("f16_mean_rel_diff")
        lines.append(f"{r['case']:<10} {r['implementation']:<11} {r['n_stored']:>10} {r['n_queries']:>7} "
                     f"{r['build_s']:8.3f} {r['per_step_s'] * 1e6:10.3f} {r['bytes_per_obs']:6.1f} "
                     f"{'' if d is None else f'{d:11.1e}'}")
    s = slopes(rows)
    lines.append("")
    lines.append("log-log slope of per-step cost, 1e4 to 1e6 stored: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    if seed_accuracy:
        lines.append("float16 storage on the seed rows, final confidence vs float32: " + ", ".join(
            f"{a['case']} {a['rel_diff']:.1e}" for a in seed_accuracy))
    lines.append("f16 vs f32: mean relative difference of the steps' similarities from float32 storage's.")
    lines.append(f"nearest: k = {K}, no distance bound, KD-tree leaves of up to 32 points, int32 indices; "
                 "similarity: linear scan, fewer steps at large N (about 2e9 comparisons, at least 200 steps).")
    return "\n".join(lines)
