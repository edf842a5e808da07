"""``bench --suite kdtree``: ``kernels.kdtree`` against scipy's cKDTree and pykdtree.

``run_kdtree_suite`` builds uniform float32 points in the unit cube and uniform
queries (seeded), then, for each implementation — ours (``kdtree``:
``build_tree`` and ``query_knn_batch``), ``scipy``
(``scipy.spatial.cKDTree(points).query(q, k, distance_upper_bound=max_distance,
workers=-1)``) and ``pykdtree`` (``pykdtree.kdtree.KDTree(points).query(q, k,
distance_upper_bound=max_distance)``) — times the build and one batched k-nearest
query per k, interleaved in the same run (each repeat builds every tree, then
runs every query), and reports the median over the repeats. Our compile (or
numba cache load) time is measured apart, before the timings: the first call
minus the second on a tiny input. scipy and pykdtree are optional: one that is
not installed is logged and left out.

Neighbour check: for each k, our indices are compared row by row with each
baseline's, after mapping the baselines' "no neighbour" marker (index n,
distance inf) to our -1. The libraries disagree on a point exactly at the
limit (ours keeps float32 distance ``<= max_distance``, scipy ``<``), so rows
where any distance (ours or the baseline's, in float32) equals
``float32(max_distance)`` are left out of the comparison and counted
(``excluded_rows``).

Rows: one per (implementation, k), keys ``ROW_KEYS``. Library code prints
nothing: progress goes to ``logging``; ``format_kdtree`` returns the text.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time

import numpy as np

from engine.bench.seed import SuiteRows, ratio, threads_note, write_json

log = logging.getLogger(__name__)

SUITE = "kdtree"
IMPLEMENTATIONS = ("kdtree", "scipy", "pykdtree")
BASELINES = ("scipy", "pykdtree")

ROW_KEYS = ("suite", "case", "implementation", "n_stored", "n_queries", "k", "build_s", "query_s", "per_step_s",
            "bytes_per_obs", "neighbours_equal", "mismatched_rows", "excluded_rows", "speedup_vs_scipy",
            "speedup_vs_pykdtree", "compile_s")

# Tiny input of the compile measurement: 5000 points (over the tree's parallel build
# threshold) and 1000 queries (over its parallel batch threshold).
COMPILE_POINTS = 5000
COMPILE_QUERIES = 1000


# ---------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------

def available_baselines() -> dict:
    """``{name: (build(points) -> tree, query(tree, q, k, max_distance) -> (d, i))}`` of the
    baselines that are installed; a missing one is logged (warning) and left out."""
    out = {}
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        log.warning("scipy is not installed: the kdtree suite runs without its scipy rows")
    else:
        out["scipy"] = (cKDTree,
                        lambda t, q, k, r: t.query(q, k, distance_upper_bound=r, workers=-1))
    try:
        from pykdtree.kdtree import KDTree as PyKDTree
    except ImportError:
        log.warning("pykdtree is not installed: the kdtree suite runs without its pykdtree rows")
    else:
        out["pykdtree"] = (PyKDTree,
                           lambda t, q, k, r: t.query(q, k, distance_upper_bound=r))
    return out


def _ours():
    from kernels import kdtree as kd

    return (kd.build_tree,
            lambda t, q, k, r: kd.query_knn_batch(t, q, k, r))


def tree_bytes(tree) -> int:
    """Bytes of our tree's arrays (points copy, indices, boxes, leaf offsets, splits)."""
    return int(sum(a.nbytes for a in tree))


def measure_compile(seed: int = 0) -> float:
    """Compile (or numba cache load) time of our build and batched query: first call minus
    second on a tiny input (``COMPILE_POINTS`` points, ``COMPILE_QUERIES`` queries)."""
    build, query = _ours()
    rng = np.random.default_rng(seed + 1)
    pts = rng.random((COMPILE_POINTS, 3), dtype=np.float32)
    q = rng.random((COMPILE_QUERIES, 3), dtype=np.float32)

    def once():
        t0 = time.perf_counter()
        query(build(pts), q, 3, 0.05)
        return time.perf_counter() - t0

    first = once()
    second = once()
    log.info("kdtree first call (build + query, tiny input): %.3f s (then %.3f ms)", first, second * 1e3)
    return max(first - second, 0.0)


# ---------------------------------------------------------------------------
# Neighbour check
# ---------------------------------------------------------------------------

def _as_ours(d, i, n, m, k):
    """A baseline's (distances, indices) as our (indices int64 (m, k) with -1, distances float32 (m, k))."""
    i = np.asarray(i).reshape(m, k).astype(np.int64)
    d = np.asarray(d).reshape(m, k)
    missing = (i >= n) | (i < 0) | ~np.isfinite(d)
    return np.where(missing, -1, i), np.where(missing, np.float32(np.inf), d.astype(np.float32))


def compare_neighbours(ours, base, n, max_distance):
    """Rows of ``base`` (a baseline's raw ``(d, i)``) that differ from ``ours`` (``(idx, dist)``).

    Returns ``(mismatch, excluded)``: boolean (m,) masks of the compared rows whose indices
    differ and of the rows left out because a distance equals ``float32(max_distance)``.
    """
    oi, od = ours
    m, k = oi.shape
    bi, bd = _as_ours(*base, n, m, k)
    limit = np.float32(max_distance)
    excluded = np.any(od == limit, axis=1) | np.any(bd == limit, axis=1)
    mismatch = np.any(oi != bi, axis=1) & ~excluded
    return mismatch, excluded


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

def size_label(n: int) -> str:
    """``1000000`` -> ``"1e6"``, ``20000`` -> ``"2e4"``, ``12345`` -> ``"12345"``."""
    n = int(n)
    e = 0
    a = n
    while a >= 10 and a % 10 == 0:
        a //= 10
        e += 1
    return f"{a}e{e}" if e >= 3 and a < 10 else str(n)


def case_name(n_points: int, k: int) -> str:
    return f"{size_label(n_points)}-k{k}"


def _timed(f, *args):
    gc.collect()
    t0 = time.perf_counter()
    out = f(*args)
    return time.perf_counter() - t0, out


def run_kdtree_suite(n_points: int = 1_000_000, n_queries: int = 500_000, ks=(1, 10), max_distance: float = 0.01,
                     repeats: int = 3, seed: int = 0, json_path=None) -> SuiteRows:
    """Time our KD-tree against the installed baselines; one row per (implementation, k).

    Parameters
    ----------
    n_points, n_queries : stored points and queries, uniform float32 in the unit cube
    ks : the k of the batched k-nearest queries
    max_distance : distance bound of every query
    repeats : interleaved timed runs (each builds every tree and runs every query); the
        times are their medians
    seed : of the points and queries (``numpy.random.default_rng``)
    json_path : if given, the rows are written there as a JSON list (``engine.bench.seed.write_json``)

    Returns
    -------
    A list (``engine.bench.seed.SuiteRows``) of dicts with exactly ``ROW_KEYS``; its ``info``
    attribute holds the run's settings, thread counts and the baselines left out.
    ``neighbours_equal`` / ``mismatched_rows``: on a baseline's row, whether / in how many
    compared rows its indices differ from ours; on our row, against all baselines together.
    ``excluded_rows``: rows left out of that comparison (a distance equal to max_distance).
    """
    n_points, n_queries, repeats = int(n_points), int(n_queries), int(repeats)
    ks = tuple(int(k) for k in ks)
    if n_points < 1 or n_queries < 1:
        raise ValueError("n_points and n_queries must be >= 1")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if not ks or min(ks) < 1:
        raise ValueError("ks must be one or more integers >= 1")
    if not max_distance > 0:
        raise ValueError("max_distance must be > 0")

    impls = {"kdtree": _ours(), **available_baselines()}
    names = list(impls)
    info = {"suite": SUITE, "repeats": repeats, "n_points": n_points, "n_queries": n_queries,
            "max_distance": max_distance, "seed": seed,
            "missing": [b for b in BASELINES if b not in impls], "threads": threads_note()}

    compile_s = measure_compile(seed)
    rng = np.random.default_rng(seed)
    points = rng.random((n_points, 3), dtype=np.float32)
    queries = rng.random((n_queries, 3), dtype=np.float32)
    log.info("kdtree suite: %d points, %d queries, k %s, max_distance %g, %d repeats, %s",
             n_points, n_queries, ks, max_distance, repeats, ", ".join(names))

    build_t = {i: [] for i in names}
    query_t = {(i, k): [] for i in names for k in ks}
    mismatch = {}   # (impl, k) -> mask over queries (baselines: vs ours)
    excluded = {}
    nbytes = None
    for r in range(repeats):
        trees = {}
        for impl in names:
            dt, trees[impl] = _timed(impls[impl][0], points)
            build_t[impl].append(dt)
            log.info("run %d: build %s %.3f s", r + 1, impl, dt)
        if nbytes is None:
            nbytes = tree_bytes(trees["kdtree"])
        for k in ks:
            outs = {}
            for impl in names:
                dt, out = _timed(impls[impl][1], trees[impl], queries, k, max_distance)
                query_t[(impl, k)].append(dt)
                log.info("run %d: k=%d query %s %.3f s", r + 1, k, impl, dt)
                if r == 0:
                    outs[impl] = out
                del out
            if r == 0:   # the neighbours do not change between repeats: check the first
                for b in names[1:]:
                    mismatch[(b, k)], excluded[(b, k)] = compare_neighbours(outs["kdtree"], outs[b], n_points,
                                                                            max_distance)
                    log.info("k=%d %s: %d rows differ from ours, %d at the limit left out", k, b,
                             int(mismatch[(b, k)].sum()), int(excluded[(b, k)].sum()))
            del outs
        del trees

    rows = SuiteRows(info=info)
    for k in ks:
        med_q = {i: statistics.median(query_t[(i, k)]) for i in names}
        for impl in names:
            if impl == "kdtree":
                bases = [b for b in names if b != "kdtree"]
                mm = np.zeros(n_queries, dtype=bool)
                ex = np.zeros(n_queries, dtype=bool)
                for b in bases:
                    mm |= mismatch[(b, k)]
                    ex |= excluded[(b, k)]
                mm &= ~ex
            else:
                mm, ex = mismatch[(impl, k)], excluded[(impl, k)]
            ours = impl == "kdtree"
            q = med_q[impl]
            rows.append({
                "suite": SUITE, "case": case_name(n_points, k), "implementation": impl,
                "n_stored": n_points, "n_queries": n_queries, "k": k,
                "build_s": statistics.median(build_t[impl]), "query_s": q, "per_step_s": q / n_queries,
                "bytes_per_obs": nbytes / n_points if ours else None,
                "neighbours_equal": bool(not mm.any()), "mismatched_rows": int(mm.sum()),
                "excluded_rows": int(ex.sum()),
                "speedup_vs_scipy": ratio(med_q.get("scipy"), q) if ours else None,
                "speedup_vs_pykdtree": ratio(med_q.get("pykdtree"), q) if ours else None,
                "compile_s": compile_s if ours else None,
            })
    if json_path is not None:
        write_json(rows, json_path)
    return rows


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_kdtree(rows) -> str:
    """The suite as readable text: one line per (k, implementation), then the speed-ups,
    the neighbour check and the compile time. Takes ``run_kdtree_suite``'s result or the
    rows read back from its JSON."""
    rows = list(rows) if not isinstance(rows, SuiteRows) else rows
    info = getattr(rows, "info", {})
    head = (f"{'case':<10} {'implementation':<14} {'build ms':>9} {'query ms':>9} {'us/query':>9} "
            f"{'bytes/pt':>9} {'x scipy':>8} {'x pykd':>8}  neighbours")
    lines = [head, "-" * len(head)]
    for r in rows:
        bpo = "-" if r.get("bytes_per_obs") is None else f"{r['bytes_per_obs']:.1f}"
        if r["implementation"] == "kdtree" and not any(x["implementation"] != "kdtree" for x in rows):
            nb = "no baseline"
        else:
            nb = "equal" if r["neighbours_equal"] else f"{r['mismatched_rows']} rows differ"
            if r.get("excluded_rows"):
                nb += f" ({r['excluded_rows']} at the limit left out)"
        lines.append(
            f"{r['case']:<10} {r['implementation']:<14} {r['build_s'] * 1e3:>9.1f} {r['query_s'] * 1e3:>9.1f} "
            f"{r['per_step_s'] * 1e6:>9.3f} {bpo:>9} {_x(r.get('speedup_vs_scipy')):>8} "
            f"{_x(r.get('speedup_vs_pykdtree')):>8}  {nb}")
    lines.append("")
    ours = [r for r in rows if r["implementation"] == "kdtree"]
    by = {(r["implementation"], r["k"]): r for r in rows}
    parts = []
    for r in ours:
        sp = []
        for b in BASELINES:
            v = r.get(f"speedup_vs_{b}")
            if v is not None:
                sp.append(f"{v:.2f}x {b}")
        build = []
        for b in BASELINES:
            br = by.get((b, r["k"]))
            if br is not None and r["build_s"]:
                build.append(f"{br['build_s'] / r['build_s']:.2f}x {b}")
        if sp:
            parts.append(f"k={r['k']}: query {', '.join(sp)}" + (f"; build {', '.join(build)}" if build else ""))
    compared = [r for r in rows if r["implementation"] != "kdtree"]
    if compared:
        match = ("neighbours equal to every baseline" if all(r["neighbours_equal"] for r in compared)
                 else "NEIGHBOURS DIFFER: " + ", ".join(f"{r['implementation']} k={r['k']} {r['mismatched_rows']} rows"
                                                        for r in compared if not r["neighbours_equal"]))
        lines.append("Speed-up of kdtree (baseline time / ours): " + "; ".join(parts) + f". Check: {match}.")
    else:
        lines.append("No baseline installed (scipy, pykdtree): kdtree rows only, neighbours not checked.")
    missing = info.get("missing")
    if missing:
        lines.append(f"Not installed, left out: {', '.join(missing)}.")
    if ours and ours[0].get("compile_s") is not None:
        lines.append(f"kdtree compile / cache load, apart from the timings (first call minus second, tiny input): "
                     f"{ours[0]['compile_s']:.3f} s.")
    if ours:
        r = ours[0]
        extra = f" ({info['threads']}; scipy workers=-1; pykdtree OpenMP)" if info.get("threads") else ""
        reps = f"median of {info['repeats']} interleaved runs" if info.get("repeats") else "median of interleaved runs"
        md = f", max_distance {info['max_distance']:g}" if info.get("max_distance") is not None else ""
        lines.append(f"{r['n_stored']:,} uniform float32 points, {r['n_queries']:,} queries{md}; times: {reps}"
                     f"{extra}. bytes/pt: our tree's arrays / points.")
    return "\n".join(lines)
