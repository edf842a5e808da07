"""bench --suite scale on tiny sizes: row keys, models, storages, slopes and float16 accuracy figures."""

import json

from engine.bench import scale as bench_scale
from engine.bench.seed import write_json


def test_scale_suite_rows(tmp_path):
    rows = bench_scale.run_scale_suite(sizes=(1000, 10000), n_queries=500, repeats=1)
    assert len(rows) == 2 * 2 * 2
    for r in rows:
        assert set(bench_scale.ROW_KEYS) <= set(r) and r["suite"] == "scale"
        assert r["per_step_s"] > 0 and r["bytes_per_obs"] > 0
    by = {(r["case"], r["implementation"]): r for r in rows}
    assert by[("1e3", "similarity")]["bytes_per_obs"] == 16 and by[("1e3-f16", "similarity")]["bytes_per_obs"] == 8
    assert by[("1e4", "nearest")]["bytes_per_obs"] <= 16 + 8
    assert by[("1e4-f16", "nearest")]["bytes_per_obs"] <= 8 + 8
    assert by[("1e4-f16", "nearest")]["f16_mean_rel_diff"] < 1e-2
    assert by[("1e4", "nearest")]["f16_mean_rel_diff"] is None
    s = bench_scale.slopes(rows, lo=1000, hi=10000)
    assert set(s) == {"similarity", "similarity-f16", "nearest", "nearest-f16"}
    write_json(rows, tmp_path / "s.json")
    assert len(json.loads((tmp_path / "s.json").read_text())) == len(rows)
    text = bench_scale.format_scale(rows, [{"case": "10x10", "float32": 0.5, "float16": 0.5, "rel_diff": 0.0}])
    assert "slope" in text and "10x10" in text


def test_seed_float16_accuracy():
    acc = bench_scale.seed_float16_accuracy()
    assert [a["case"] for a in acc] == ["10x10", "50x10", "100x10", "500x5", "1000x2"]
    assert all(a["rel_diff"] < 1e-2 for a in acc)
