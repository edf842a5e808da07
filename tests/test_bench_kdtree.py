"""Tests of the KD-tree benchmark suite (engine.bench.kdtree): row shape, baselines present or
cleanly left out, the neighbour check, the JSON output. No wall-clock assertions."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import numpy as np
import pytest

from engine.bench import seed as bench
from engine.bench import kdtree as bench_kdtree

HAVE_PYKDTREE = importlib.util.find_spec("pykdtree") is not None
KS = (1, 10)


@pytest.fixture(scope="module")
def rows():
    # max_distance 0.05: some 10 points per query within reach, so the k = 10 check compares real neighbours
    return bench_kdtree.run_kdtree_suite(n_points=20_000, n_queries=5_000, ks=KS, max_distance=0.05,
                                         repeats=1, seed=3)


def test_rows_have_the_documented_keys(rows):
    for r in rows:
        assert tuple(r) == bench_kdtree.ROW_KEYS
        assert r["suite"] == "kdtree"
        assert r["case"] == f"2e4-k{r['k']}"
        assert r["n_stored"] == 20_000 and r["n_queries"] == 5_000
        assert r["build_s"] > 0 and r["query_s"] > 0
        assert r["per_step_s"] == pytest.approx(r["query_s"] / 5_000)


def test_implementations_present(rows):
    impls = {r["implementation"] for r in rows}
    expected = {"kdtree", "scipy"} | ({"pykdtree"} if HAVE_PYKDTREE else set())
    assert impls == expected   # pykdtree, when not installed, is simply omitted
    assert sorted((r["implementation"], r["k"]) for r in rows) == sorted((i, k) for i in expected for k in KS)
    assert rows.info["missing"] == ([] if HAVE_PYKDTREE else ["pykdtree"])


def test_neighbours_equal(rows):
    for r in rows:
        assert r["neighbours_equal"] is True, r
        assert r["mismatched_rows"] == 0


def test_our_rows(rows):
    for r in rows:
        if r["implementation"] == "kdtree":
            assert r["bytes_per_obs"] > 12          # at least the reordered float32 points
            assert r["compile_s"] >= 0
            assert r["speedup_vs_scipy"] > 0
            assert (r["speedup_vs_pykdtree"] is not None) == HAVE_PYKDTREE
        else:
            assert r["bytes_per_obs"] is None and r["compile_s"] is None
            assert r["speedup_vs_scipy"] is None and r["speedup_vs_pykdtree"] is None


def test_json_and_table(rows, tmp_path):
    path = tmp_path / "kdtree.json"
    bench.write_json(rows, path)
    data = json.loads(path.read_text())
    assert data == [dict(r) for r in rows]
    text = bench_kdtree.format_kdtree(rows)
    assert "2e4-k10" in text and "neighbours equal to every baseline" in text
    assert "NEIGHBOURS DIFFER" not in text
    assert bench_kdtree.format_kdtree(data).splitlines()[:8] == text.splitlines()[:8]   # from the JSON too


def test_compare_neighbours_maps_markers_and_finds_differences():
    n = 100
    ours_i = np.array([[3, 7, -1], [5, -1, -1], [1, 2, 4]], dtype=np.int64)
    ours_d = np.array([[0.1, 0.2, np.inf], [0.3, np.inf, np.inf], [0.1, 0.2, 0.25]], dtype=np.float32)
    # scipy-style: index n and distance inf where there is no neighbour
    base_i = np.array([[3, 7, n], [5, n, n], [1, 2, 9]])
    base_d = np.array([[0.1, 0.2, np.inf], [0.3, np.inf, np.inf], [0.1, 0.2, 0.25]])
    mismatch, excluded = bench_kdtree.compare_neighbours((ours_i, ours_d), (base_d, base_i), n, 0.5)
    assert mismatch.tolist() == [False, False, True] and not excluded.any()
    # a distance exactly at the limit (in float32): the row is left out, not compared
    mismatch, excluded = bench_kdtree.compare_neighbours((ours_i, ours_d), (base_d, base_i), n, 0.25)
    assert mismatch.tolist() == [False, False, False] and excluded.tolist() == [False, False, True]
    # k = 1 baselines return (m,) arrays
    mismatch, _ = bench_kdtree.compare_neighbours((ours_i[:, :1], ours_d[:, :1]), (base_d[:, 0], base_i[:, 0]), n, 0.5)
    assert not mismatch.any()


def test_missing_baselines_are_left_out(monkeypatch, caplog):
    for name in ("pykdtree", "pykdtree.kdtree", "scipy.spatial"):
        monkeypatch.setitem(sys.modules, name, None)   # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="engine.bench.kdtree"):
        rows = bench_kdtree.run_kdtree_suite(n_points=2_000, n_queries=500, ks=(3,), repeats=1)
    assert [r["implementation"] for r in rows] == ["kdtree"]
    r = rows[0]
    assert r["neighbours_equal"] is True and r["speedup_vs_scipy"] is None and r["speedup_vs_pykdtree"] is None
    assert "scipy is not installed" in caplog.text and "pykdtree is not installed" in caplog.text
    assert "No baseline installed" in bench_kdtree.format_kdtree(rows)
