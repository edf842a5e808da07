"""kernels.kdtree against a NumPy brute force and scipy.spatial.cKDTree.

The brute force (``tests/naive/kdtree.py``) is the definition: the squared distance of a stored point
to a query is computed in float32 as ``dx*dx + dy*dy + dz*dz`` (dx = s_x - q_x,
...), exactly as the kernels do, a point is within radius r when that is
``<= float32(r) * float32(r)``, and the k nearest are the first k of a stable
sort on (squared distance, index). With the same float32 arithmetic the tree's
answers must agree with it exactly, ties included. scipy (float64 distances,
strict upper bound) is compared on data without ties or edge cases.
"""

import os
import pickle
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from numba import njit, prange
from scipy.spatial import cKDTree

from kernels import kdtree as kd
from kernels.kdtree import (
    KDTree,
    build_tree,
    load_tree,
    query_knn,
    query_knn_batch,
    query_radius,
    query_radius_batch,
    radius_lists,
    save_tree,
)
from naive.kdtree import brute_knn, brute_radius


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def make_points(kind, rng):
    if kind == "uniform":
        return rng.random((1500, 3), dtype=np.float32)
    if kind == "clustered":
        centres = rng.random((6, 3))
        labels = rng.integers(0, 6, 1500)
        return (centres[labels] + rng.normal(0.0, 0.01, (1500, 3))).astype(np.float32)
    if kind == "duplicates":
        # 20 distinct points, each repeated many times, in scrambled order
        base = rng.random((20, 3), dtype=np.float32)
        return base[rng.integers(0, 20, 800)]
    if kind == "identical":
        return np.full((300, 3), 0.25, dtype=np.float32)
    if kind == "grid":
        # integer coordinates: float32 squared distances are exact, so many ties
        g = np.arange(6, dtype=np.float32)
        return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)[rng.permutation(216)]
    if kind == "collinear":
        t = rng.integers(0, 200, 600).astype(np.float32)
        return np.stack([t, 2 * t, -t], axis=1) * np.float32(0.01)
    if kind == "single":
        return np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    if kind == "empty":
        return np.zeros((0, 3), dtype=np.float32)
    raise ValueError(kind)


KINDS = ["uniform", "clustered", "duplicates", "identical", "grid", "collinear", "single", "empty"]


def make_queries(points, rng, m=60):
    """Random queries around the data, plus some stored points themselves (distance 0)."""
    if len(points) == 0:
        return rng.random((m, 3), dtype=np.float32)
    lo = points.min(axis=0) - 0.1
    hi = points.max(axis=0) + 0.1
    q = (lo + (hi - lo) * rng.random((m, 3))).astype(np.float32)
    q[: m // 4] = points[rng.integers(0, len(points), m // 4)]
    if np.all(points == np.round(points)):  # grid: also half-integer points, equidistant from many
        q[m // 4: m // 2] = np.round(q[m // 4: m // 2] * 2) / 2
    return q


def typical_radius(points):
    if len(points) < 2:
        return 0.5
    extent = float(np.max(points.max(axis=0) - points.min(axis=0)))
    return max(extent, 1e-3) * 0.12


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(7)
    out = {}
    for kind in KINDS:
        points = make_points(kind, rng)
        out[kind] = (points, build_tree(points, leaf_size=8), make_queries(points, rng))
    return out


# --------------------------------------------------------------------------
# Against the brute force
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_knn_equals_brute_force(cases, kind):
    points, tree, queries = cases[kind]
    r = typical_radius(points)
    for k in (1, 4, 17):
        for max_distance in (np.inf, r):
            for q in queries:
                idx, dist = query_knn(tree, q, k, max_distance)
                ref_idx, ref_dist = brute_knn(points, q, k, max_distance)
                assert idx.dtype == np.int64 and dist.dtype == np.float32
                assert idx.shape == (k,) and dist.shape == (k,)
                # same float32 arithmetic and the same (distance, index) rule: ties included
                np.testing.assert_array_equal(idx, ref_idx)
                np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_radius_equals_brute_force(cases, kind):
    points, tree, queries = cases[kind]
    r0 = typical_radius(points)
    for r in (0.0, r0, 3 * r0, np.inf):
        for q in queries:
            got = query_radius(tree, q, r)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, brute_radius(points, q, r))


@pytest.mark.parametrize("kind", KINDS)
def test_radius_lists_equals_brute_force(cases, kind):
    """The serial batch (``radius_lists``): every query's list is the brute force's."""
    points, tree, queries = cases[kind]
    r0 = typical_radius(points)
    for r in (0.0, r0, 3 * r0, np.inf):
        idx, off = radius_lists(tree, queries, r)
        assert idx.dtype == np.int64 and off.shape == (len(queries) + 1,) and off[0] == 0
        for i, q in enumerate(queries):
            np.testing.assert_array_equal(idx[off[i]:off[i + 1]], brute_radius(points, q, r))


def test_radius_edge_is_inclusive_in_float32():
    # the point at exactly distance r (in float32 squared terms) is in, the next one is out
    points = np.array([[0, 0, 0], [3, 4, 0], [3, 4, 1e-3], [0, 0, 5]], dtype=np.float32)
    tree = build_tree(points, leaf_size=1)
    q = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(query_radius(tree, q, 5.0), [0, 1, 3])
    idx, dist = query_knn(tree, q, 4, max_distance=5.0)
    np.testing.assert_array_equal(idx, [0, 1, 3, -1])  # 1 and 3 tie at 5: lower index first
    np.testing.assert_array_equal(dist, np.array([0, 5, 5, np.inf], dtype=np.float32))


def test_ties_keep_lower_index():
    points = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1], [0, -1, 0], [2, 0, 0]], dtype=np.float32)
    order = np.array([4, 0, 5, 2, 3, 1])
    points = points[order]  # scramble, so that tree order and index order differ
    tree = build_tree(points, leaf_size=1)
    idx, dist = query_knn(tree, np.zeros(3, dtype=np.float32), 3)
    np.testing.assert_array_equal(idx, [0, 1, 3])  # five points at distance 1: the three lowest indices
    np.testing.assert_array_equal(dist, np.ones(3, dtype=np.float32))


@pytest.mark.parametrize("kind", ["uniform", "single", "empty", "identical"])
def test_k_larger_than_n(cases, kind):
    points, tree, queries = cases[kind]
    n = len(points)
    k = n + 5
    idx, dist = query_knn(tree, queries[0], k)
    ref_idx, ref_dist = brute_knn(points, queries[0], k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)
    assert np.all(idx[n:] == -1) and np.all(np.isinf(dist[n:]))
    assert sorted(idx[:n].tolist()) == list(range(n))


def test_k_zero_and_max_distance_zero(cases):
    points, tree, queries = cases["duplicates"]
    idx, dist = query_knn(tree, queries[0], 0)
    assert idx.shape == (0,) and dist.shape == (0,)
    bi, bd = query_knn_batch(tree, queries, 0)
    assert bi.shape == (len(queries), 0) and bd.shape == (len(queries), 0)
    # max_distance 0: exactly the stored copies of the query point
    q = points[3]
    idx, dist = query_knn(tree, q, 100, max_distance=0.0)
    copies = np.nonzero(np.all(points == q, axis=1))[0]
    np.testing.assert_array_equal(idx[: len(copies)], copies)
    assert np.all(idx[len(copies):] == -1)
    assert np.all(dist[: len(copies)] == 0)


def test_max_distance_cuts_results(cases):
    points, tree, queries = cases["uniform"]
    k = 30
    for r in (0.02, 0.05, 0.1):
        idx, dist = query_knn_batch(tree, queries, k, max_distance=r)
        for i, q in enumerate(queries):
            within = brute_radius(points, q, r)
            found = idx[i][idx[i] >= 0]
            assert len(found) == min(k, len(within))
            assert set(found.tolist()) <= set(within.tolist())
            assert np.all(dist[i][: len(found)] <= np.float32(r))
            assert np.all(np.isinf(dist[i][len(found):]))


# --------------------------------------------------------------------------
# Against scipy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "clustered"])
def test_knn_and_radius_match_scipy(cases, kind):
    points, tree, queries = cases[kind]
    ref = cKDTree(points.astype(np.float64))
    n = len(points)
    r = typical_radius(points)
    for k, max_distance in ((1, np.inf), (8, np.inf), (8, r), (40, r)):
        sd, si = ref.query(queries.astype(np.float64), k, distance_upper_bound=max_distance)
        sd = sd.reshape(len(queries), k)
        si = np.where(si.reshape(len(queries), k) >= n, -1, si.reshape(len(queries), k))
        idx, dist = query_knn_batch(tree, queries, k, max_distance)
        np.testing.assert_array_equal(idx, si)
        np.testing.assert_allclose(dist, sd, rtol=1e-6)
    balls = ref.query_ball_point(queries.astype(np.float64), r)
    flat, offsets = query_radius_batch(tree, queries, r)
    for i in range(len(queries)):
        assert flat[offsets[i]: offsets[i + 1]].tolist() == sorted(balls[i])


# --------------------------------------------------------------------------
# Batches, leaf sizes, structure
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "clustered", "grid", "duplicates", "empty"])
@pytest.mark.parametrize("m", [5, 700])  # below and above the parallel threshold
def test_batch_equals_single_queries(cases, kind, m):
    points, tree, _ = cases[kind]
    rng = np.random.default_rng(m)
    queries = make_queries(points, rng, m)
    r = typical_radius(points)
    for k, max_distance in ((1, np.inf), (6, np.inf), (6, r)):
        idx, dist = query_knn_batch(tree, queries, k, max_distance)
        assert idx.shape == (m, k) and idx.dtype == np.int64
        assert dist.shape == (m, k) and dist.dtype == np.float32
        for i in range(0, m, 7 if m > 100 else 1):
            si, sd = query_knn(tree, queries[i], k, max_distance)
            np.testing.assert_array_equal(idx[i], si)
            np.testing.assert_array_equal(dist[i], sd)
    flat, offsets = query_radius_batch(tree, queries, r)
    assert offsets.shape == (m + 1,) and offsets[0] == 0 and offsets[-1] == len(flat)
    for i in range(0, m, 7 if m > 100 else 1):
        np.testing.assert_array_equal(flat[offsets[i]: offsets[i + 1]], query_radius(tree, queries[i], r))


def test_leaf_sizes_give_the_same_answers(cases):
    points, _, queries = cases["grid"]
    ref = query_knn_batch(build_tree(points, leaf_size=16), queries, 9)
    for leaf_size in (1, 2, 3, 7, 1000):
        got = query_knn_batch(build_tree(points, leaf_size=leaf_size), queries, 9)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("kind", KINDS)
def test_tree_structure(cases, kind):
    points, tree, _ = cases[kind]
    leaf_size = 8
    n = len(points)
    assert isinstance(tree, KDTree)
    assert tree.points.dtype == np.float32 and tree.points.shape == (n, 3) and tree.points.flags.c_contiguous
    assert tree.indices.dtype == np.int64 and sorted(tree.indices.tolist()) == list(range(n))
    np.testing.assert_array_equal(tree.points, points[tree.indices])
    n_leaves = len(tree.leaf_start) - 1
    assert n_leaves & (n_leaves - 1) == 0  # a power of two
    assert tree.boxes.shape == (2 * n_leaves - 1, 6) and tree.boxes.dtype == np.float32
    assert tree.split_dim.shape == tree.split_val.shape == (n_leaves - 1,)
    sizes = np.diff(tree.leaf_start)
    assert tree.leaf_start[0] == 0 and tree.leaf_start[-1] == n
    assert np.all(sizes >= 0) and np.all(sizes <= leaf_size)
    n_internal = n_leaves - 1

    def node_range(node):
        first, last = node, node
        while first < n_internal:
            first, last = 2 * first + 1, 2 * last + 2
        return tree.leaf_start[first - n_internal], tree.leaf_start[last - n_internal + 1]

    for node in range(2 * n_leaves - 1):
        s, e = node_range(node)
        if e > s:  # tight box
            np.testing.assert_array_equal(tree.boxes[node, :3], tree.points[s:e].min(axis=0))
            np.testing.assert_array_equal(tree.boxes[node, 3:], tree.points[s:e].max(axis=0))
        if node < n_internal and e > s:
            d, v = tree.split_dim[node], tree.split_val[node]
            ls, le = node_range(2 * node + 1)
            rs, re_ = node_range(2 * node + 2)
            assert np.all(tree.points[ls:le, d] <= v) and np.all(tree.points[rs:re_, d] >= v)
    # deterministic
    again = build_tree(points, leaf_size=leaf_size)
    for a, b in zip(tree, again):
        np.testing.assert_array_equal(a, b)


def test_build_does_not_modify_input_and_accepts_views():
    rng = np.random.default_rng(3)
    base = rng.random((400, 6), dtype=np.float32)
    view = base[:, ::2]  # not contiguous
    keep = view.copy()
    tree = build_tree(view)
    np.testing.assert_array_equal(view, keep)
    np.testing.assert_array_equal(tree.points, keep[tree.indices])


# --------------------------------------------------------------------------
# Pickle, save / load, read-only arrays, use from @njit
# --------------------------------------------------------------------------


def _same_answers(tree_a, tree_b, queries):
    for k, r in ((5, np.inf), (3, 0.1)):
        a = query_knn_batch(tree_a, queries, k, r)
        b = query_knn_batch(tree_b, queries, k, r)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(query_radius(tree_a, queries[0], 0.2), query_radius(tree_b, queries[0], 0.2))


def test_pickle_round_trip(cases):
    points, tree, queries = cases["clustered"]
    back = pickle.loads(pickle.dumps(tree))
    assert isinstance(back, KDTree)
    for a, b in zip(tree, back):
        np.testing.assert_array_equal(a, b)
    _same_answers(tree, back, queries)


@pytest.mark.parametrize("kind", ["clustered", "single", "empty"])
def test_save_load(tmp_path, cases, kind):
    points, tree, queries = cases[kind]
    path = tmp_path / "tree.npz"
    save_tree(path, tree)
    mapped = load_tree(path)
    loaded = load_tree(path, mmap=False)
    for t in (mapped, loaded):
        assert isinstance(t, KDTree)
        for a, b in zip(tree, t):
            assert type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        # the same numba type as a freshly built tree: no new compilation
        assert numba.typeof(t) == numba.typeof(tree)
        _same_answers(tree, t, queries)
    if len(points) > 0:
        assert isinstance(mapped.points.base, np.memmap) or isinstance(mapped.points.base.base, np.memmap)
        # copy-on-write: writing to the mapped arrays never reaches the file
        mapped.points[0] = 99.0
        np.testing.assert_array_equal(load_tree(path).points, tree.points)
    # an ordinary .npz: np.load reads it
    with np.load(path) as z:
        for name in KDTree._fields:
            np.testing.assert_array_equal(z[name], getattr(tree, name))


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_load_plain_savez(tmp_path, cases, writer):
    # a tree saved with numpy's own writers loads too (read where it cannot be mapped)
    points, tree, queries = cases["clustered"]
    path = tmp_path / "plain.npz"
    writer(path, **tree._asdict())
    for mmap in (True, False):
        t = load_tree(path, mmap=mmap)
        assert numba.typeof(t) == numba.typeof(tree)
        _same_answers(tree, t, queries)


def test_load_rejects_other_files(tmp_path, cases):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a KD-tree file"):
        load_tree(path)
    tree = cases["uniform"][1]
    bad = tree._replace(leaf_start=tree.leaf_start[::-1].copy())
    np.savez(path, **bad._asdict())
    with pytest.raises(ValueError, match="corrupt"):
        load_tree(path)
    np.savez(path, **tree._replace(boxes=tree.boxes[:-1])._asdict())
    with pytest.raises(ValueError, match="inconsistent shapes"):
        load_tree(path)


def test_read_only_arrays(cases):
    points, tree, queries = cases["uniform"]
    frozen = KDTree(*[a.copy() for a in tree])
    for a in frozen:
        a.setflags(write=False)
    _same_answers(tree, frozen, queries)


@njit(cache=True)
def _user_kernel(points, queries, k, r):
    """A user's own kernel: builds a tree and queries it inside nopython code."""
    tree = build_tree(points, 8)
    total = 0
    first = np.empty((queries.shape[0], k), dtype=np.int64)
    for i in range(queries.shape[0]):
        idx, dist = query_knn(tree, queries[i], k, r)
        first[i] = idx
        total += query_radius(tree, queries[i], r).shape[0]
    bi, bd = query_knn_batch(tree, queries, k, r)
    flat, offsets = query_radius_batch(tree, queries, r)
    return tree, first, total, bi, bd, flat, offsets


@njit(cache=True, parallel=True)
def _user_parallel_kernel(tree, queries, k, r):
    """A user's parallel kernel: the batch query runs on its threads."""
    idx, dist = query_knn_batch(tree, queries, k, r)
    found = np.zeros(queries.shape[0], dtype=np.int64)
    for i in prange(queries.shape[0]):
        found[i] = query_knn(tree, queries[i], 1)[0][0]
    return idx, dist, found


def test_callable_from_parallel_njit(cases):
    points, tree, _ = cases["uniform"]
    queries = make_queries(points, np.random.default_rng(5), 700)  # above the parallel threshold
    idx, dist, found = _user_parallel_kernel(tree, queries, 6, 0.1)
    ref = query_knn_batch(tree, queries, 6, 0.1)
    np.testing.assert_array_equal(idx, ref[0])
    np.testing.assert_array_equal(dist, ref[1])
    np.testing.assert_array_equal(found, query_knn_batch(tree, queries, 1)[0][:, 0])


USER_MODULE = """
from numba import njit
from kernels.kdtree import build_tree, query_knn_batch

@njit(cache=True)
def user(points, queries):
    idx, dist = query_knn_batch(build_tree(points), queries, 3, 0.2)
    return idx.sum()
"""

DATA = ("import numpy as np; r = np.random.default_rng(0); "
        "p = r.random((5000, 3), dtype=np.float32); q = r.random((300, 3), dtype=np.float32); ")


def test_cached_njit_caller_survives_cache_reload(tmp_path, root):
    """Regression (numba#8578): a cached kernel that *calls* a parallel kernel crashed
    (segfault) when loaded from the cache in a third process, if the parallel callee had
    been loaded from the cache while the caller compiled. The batch functions therefore
    inline their parallel loops into njit callers instead of calling a parallel kernel."""
    # the kernels' cache is the session's (already filled: step 1 loads them), the
    # user's function is new (its file is), so step 2 compiles it against cached callees
    (tmp_path / "user_mod.py").write_text(textwrap.dedent(USER_MODULE))
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{tmp_path}")
    steps = [
        DATA + "from kernels import kdtree as kd; "
               "print(kd.query_knn_batch(kd.build_tree(p), q, 3, 0.2)[0].sum())",
        DATA + "from user_mod import user; print(user(p, q))",
        DATA + "from user_mod import user; print(user(p, q))",
    ]
    outputs = []
    for code in steps:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              cwd=root, timeout=300)
        assert proc.returncode == 0, (code, proc.returncode, proc.stderr[-2000:])
        outputs.append(proc.stdout.strip())
    assert len(set(outputs)) == 1, outputs


def test_callable_from_njit(cases):
    points, tree, queries = cases["clustered"]
    r = typical_radius(points)
    t, first, total, bi, bd, flat, offsets = _user_kernel(points, queries, 5, r)
    for a, b in zip(tree, t):
        np.testing.assert_array_equal(a, b)
    ref = query_knn_batch(tree, queries, 5, r)
    np.testing.assert_array_equal(first, ref[0])
    np.testing.assert_array_equal(bi, ref[0])
    np.testing.assert_array_equal(bd, ref[1])
    ref_flat, ref_offsets = query_radius_batch(tree, queries, r)
    np.testing.assert_array_equal(flat, ref_flat)
    np.testing.assert_array_equal(offsets, ref_offsets)
    assert total == len(ref_flat)


# --------------------------------------------------------------------------
# Validation at the Python boundary
# --------------------------------------------------------------------------


def test_validation_messages(cases):
    points, tree, queries = cases["uniform"]
    q = queries[0]
    with pytest.raises(ValueError, match="dtype float32"):
        build_tree(points.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        build_tree(points[:, :2])
    with pytest.raises(ValueError, match="finite"):
        bad = points.copy()
        bad[3, 1] = np.nan
        build_tree(bad)
    with pytest.raises(ValueError, match="leaf_size"):
        build_tree(points, leaf_size=0)
    with pytest.raises(ValueError, match="numpy array"):
        build_tree(points.tolist())
    with pytest.raises(ValueError, match="dtype float32"):
        query_knn(tree, q.astype(np.float64), 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        query_knn(tree, queries[:2], 3)
    with pytest.raises(ValueError, match="finite"):
        query_knn(tree, np.array([0, np.inf, 0], dtype=np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        query_knn(tree, q, -1)
    with pytest.raises(ValueError, match="k must be"):
        query_knn(tree, q, 2.5)
    with pytest.raises(ValueError, match="max_distance"):
        query_knn(tree, q, 3, max_distance=-1.0)
    with pytest.raises(ValueError, match="max_distance"):
        query_knn_batch(tree, queries, 3, max_distance=np.nan)
    with pytest.raises(ValueError, match="r must be"):
        query_radius(tree, q, -0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        query_knn_batch(tree, q, 3)
    with pytest.raises(ValueError, match="finite"):
        query_radius_batch(tree, np.full((4, 3), np.nan, dtype=np.float32), 0.1)
    with pytest.raises(ValueError, match="KDTree"):
        query_knn(tuple(tree), q, 3)
    with pytest.raises(ValueError, match="tree.points"):
        query_knn(tree._replace(points=tree.points.astype(np.float64)), q, 3)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        query_knn_batch(tree._replace(indices=tree.indices[:-1]), queries, 3)


def test_module_imports_no_engine():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(kd))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules <= {"numpy", "numba", "struct", "typing", "zipfile"}, modules


@pytest.mark.parametrize("budget", [0, 1, 100])
def test_select_partitions_around_kth(budget):
    # the median selection of the build, including its heapsort fallback (budget 0)
    rng = np.random.default_rng(budget)
    for keys in (rng.random(301), rng.integers(0, 4, 301), np.arange(301), np.arange(301)[::-1],
                 np.r_[np.arange(150), np.arange(151)[::-1]], np.zeros(301)):
        work = np.zeros((301, 3), dtype=np.float32)
        work[:, 1] = keys
        idx = np.arange(301)
        for kth in (0, 7, 150, 300):
            w, i = work.copy(), idx.copy()
            kd._select(w, i, 0, 301, kth, 1, budget)
            assert w[kth, 1] == np.sort(work[:, 1])[kth]
            assert np.all(w[:kth, 1] <= w[kth, 1]) and np.all(w[kth + 1:, 1] >= w[kth, 1])
            np.testing.assert_array_equal(w, work[i])  # rows and indices moved together
