"""Where the evidence step's nearest-node search spends its time, per query.

    python profiling/knn_costs.py [CONFIG] [--step 4] [--set KEY.PATH=VALUE ...]

Trains the evidence model of CONFIG (default ``configs/shapes_10.yaml``), runs its first
evaluation episode up to ``--step`` (the burst's busiest steps are 3 to 6), takes the live
hypotheses' locations there as queries, and times the search over them on one thread.
``lock-step`` is the search the step runs (``kernels.evidence_phases.k_nearest_lanes``: many
queries at once in vector lanes, ``kernels/lanes.py``). The other rows time the one-query
search ``kernels.evidence_phases.k_nearest`` the way the step called it before (inlined into a
``prange`` body), under four conditions that separate its costs:

- ``one at a time``: the queries in hypothesis order (the grids of all objects, ~14 MB for
  ten objects, do not fit the caches).
- ``sample, shuffled``: 300 of those queries, replayed in a fresh order each pass: their
  grid data stays in the caches, their branch outcomes stay unpredictable.
  ``lock-step, sample`` is the step's search over the same replayed queries: its
  difference to ``lock-step`` is what reading the candidate lists from memory costs.
- ``sample, same order``: the same 300, in the same order each pass: the branch predictor
  learns the outcomes, so the difference to the row above is the cost of mispredicted
  branches (the keep-or-skip decision per candidate, the k-best update, the early stop).
- ``distances only``: the first row's candidates, the same number per query, without the
  k-best bookkeeping or the early stop: the floor for this data layout.

Why a ``prange`` body: an ``inline="always"`` helper taking arrays, called from a plain
serial ``@njit`` loop, gets NRT reference counting on every iteration (~7 atomic
increments and decrements, about 100 ns per call on the development machine), which the
step's parallel loop body does not have; a serial harness measures that, not the search.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from evidence_config import load_evidence_config  # noqa: E402
from engine.models.evidence.model import EvidenceExperiment  # noqa: E402
from engine.data.episodes import build_dataset  # noqa: E402
from kernels import evidence_phases as kph  # noqa: E402
from kernels._flags import FASTMATH  # noqa: E402

_CHUNK = 512
_KMAX = 64
_SAMPLE = 300  # queries replayed in the cache-resident rows


@njit(fastmath=FASTMATH, parallel=True)
def _search_all(qo, ql, model, mmd, k, lanes):
    """Every query's k nearest nodes, in chunks as the step runs them; returns a checksum (so
    nothing is elided). ``lanes``: the step's lock-step search, else ``k_nearest`` one by one."""
    n = qo.shape[0]
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    sums = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        s = 0
        if lanes:
            out_j = np.empty((k, hi - lo), np.int32)
            out_m = np.empty(hi - lo, np.int64)
            # the chunk's queries laid out as the step's path integration writes them (timed too)
            qobj = np.empty(hi - lo, np.int32)
            qpos = np.empty((3, hi - lo), np.float32)
            for i in range(hi - lo):
                qobj[i] = qo[lo + i]
                qpos[0, i] = ql[lo + i, 0]
                qpos[1, i] = ql[lo + i, 1]
                qpos[2, i] = ql[lo + i, 2]
            kph.k_nearest_lanes(model, mmd, k, qobj, qpos, hi - lo, out_j, out_m)
            for i in range(hi - lo):
                for p in range(out_m[i]):
                    s += out_j[p, i]
                s += out_m[i]
        else:
            best_d2 = np.empty(_KMAX, np.float32)
            best_j = np.empty(_KMAX, np.int64)
            for q in range(lo, hi):
                m = kph.k_nearest(model, mmd, qo[q], ql[q, 0], ql[q, 1], ql[q, 2], k, best_d2, best_j)
                for p in range(m):
                    s += best_j[p]
                s += m
        sums[c] = s
    return sums.sum()


@njit(fastmath=FASTMATH)
def _scan_lengths(qo, ql, model, mmd, k):
    """The candidate rows ``k_nearest`` examines per query: first row and count."""
    n = qo.shape[0]
    first = np.zeros(n, np.int64)
    count = np.zeros(n, np.int64)
    best_d2 = np.empty(_KMAX, np.float32)
    best_j = np.empty(_KMAX, np.int64)
    for q in range(n):
        _, first[q], stop = kph.k_nearest_span(model, mmd, qo[q], ql[q, 0], ql[q, 1], ql[q, 2], k, best_d2, best_j)
        count[q] = stop - first[q]
    return first, count


@njit(fastmath=FASTMATH, parallel=True)
def _distances_only(ql, node_pos, cand_node, first, count):
    """The same candidates' distances, no selection and no early stop: the layout's floor."""
    n = ql.shape[0]
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    sums = np.zeros(n_chunks, np.float32)
    for c in prange(n_chunks):
        s = np.float32(0)
        for q in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            qx, qy, qz = ql[q, 0], ql[q, 1], ql[q, 2]
            for i in range(first[q], first[q] + count[q]):
                j = cand_node[i]
                dx = node_pos[j, 0] - qx
                dy = node_pos[j, 1] - qy
                dz = node_pos[j, 2] - qz
                s += dx * dx + dy * dy + dz * dz
        sums[c] = s
    return sums.sum()


def _median_ns(fn, n_queries, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / max(n_queries, 1) * 1e9


def capture_queries(cfg, step):
    """Train on CONFIG's data, run its first evaluation episode to ``step``; (model, obj, loc) of live rows."""
    ds = build_dataset(cfg)
    ex = EvidenceExperiment(cfg, ds)
    ex.train()
    model = ex.model
    e = int(np.flatnonzero(ds.episode_split == 1)[0])
    s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
    s1 = min(s1, s0 + step + 1)
    got = {}

    def on_step(t, istate, obj_max):  # the last step reached (the episode may end before ``step``)
        obj, loc = model.hypothesis_view(istate)[:2]
        live = obj >= 0
        got.update(step=t, obj=obj[live].astype(np.int64), loc=np.ascontiguousarray(loc[live]))

    model.run_episode(ds.location[s0:s1], ds.pose_vectors[s0:s1], ds.pose_defined[s0:s1], ex.features[s0:s1],
                      stepwise=True, on_step=on_step)
    return model, got


def measure(cfg, step=4, repeats=7, seed=0):
    """The table's rows: list of (condition, queries, ns per query, mean candidates scanned)."""
    model, got = capture_queries(cfg, step)
    models = model.model_arrays()
    node_pos, cand_node = models.node_pos, models.cand_node
    mmd = np.float32(model.settings.max_match_distance)
    k = int(model.settings.max_nneighbors)
    if k > _KMAX:
        raise SystemExit(f"max_nneighbors {k} > {_KMAX}")
    grid = (models, mmd, k)
    qo, ql = got["obj"], got["loc"]
    rng = np.random.default_rng(seed)
    rows = []

    def row(name, o, loc):
        ns = _median_ns(lambda: _search_all(o, loc, *grid, False), len(o), repeats)
        first, count = _scan_lengths(o, loc, *grid)
        rows.append((name, len(o), ns, float(count.mean()) if len(o) else 0.0))
        return first, count

    ns = _median_ns(lambda: _search_all(qo, ql, *grid, True), len(qo), repeats)
    first, count = _scan_lengths(qo, ql, *grid)
    rows.append(("lock-step", len(qo), ns, float(count.mean()) if len(qo) else 0.0))
    agree = _search_all(qo, ql, *grid, True) == _search_all(qo, ql, *grid, False)  # (may differ at exact ties)
    first, count = row("one at a time", qo, ql)
    # a random sample of the queries, replayed to the same total count: its grid data stays
    # in the caches; in a fresh order each pass the branch outcomes stay unpredictable, in
    # the same order each pass the predictor learns them
    sample = rng.choice(len(qo), size=min(_SAMPLE, len(qo)), replace=False) if len(qo) else np.zeros(0, np.int64)
    passes = max(1, len(qo) // max(len(sample), 1))
    shuffled = np.concatenate([rng.permutation(sample) for _ in range(passes)]) if len(sample) else sample
    row("sample, shuffled", qo[shuffled], np.ascontiguousarray(ql[shuffled]))
    # the step's search on the same replayed sample: against "lock-step", what the search
    # pays for reading the candidate lists from memory rather than from the caches
    o_s, l_s = qo[shuffled], np.ascontiguousarray(ql[shuffled])
    ns = _median_ns(lambda: _search_all(o_s, l_s, *grid, True), len(o_s), repeats)
    rows.insert(1, ("lock-step, sample", len(o_s), ns, rows[-1][3]))
    same = np.tile(sample, passes)
    row("sample, same order", qo[same], np.ascontiguousarray(ql[same]))
    ns = _median_ns(lambda: _distances_only(ql, node_pos, cand_node, first, count), len(qo), repeats)
    rows.append(("distances only", len(qo), ns, float(count.mean()) if len(qo) else 0.0))
    return got["step"], k, rows, agree


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(Path(__file__).resolve().parent.parent / "configs/shapes_10.yaml"))
    p.add_argument("--step", type=int, default=4, help="evaluation step whose hypotheses are the queries")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override")
    a = p.parse_args(argv)
    cfg = load_evidence_config(a.config, a.set)
    if cfg is None:
        return 2
    numba.set_num_threads(1)
    step, k, rows, agree = measure(cfg, a.step, a.repeats)
    print(f"nearest-node search, one thread, k = {k}, hypotheses of evaluation step {step}")
    print(f"{'condition':<18} {'queries':>8} {'ns/query':>9} {'candidates scanned':>19}")
    for name, n, ns, scanned in rows:
        print(f"{name:<18} {n:>8} {ns:>9.1f} {scanned:>19.1f}")
    print("lock-step and one-at-a-time neighbours: " + ("the same" if agree else
                                                        "differ (at exactly equal distances, by candidate order)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
