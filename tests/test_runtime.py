"""Kernel cache folder, warm-up, info, and the startup benchmark."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bench import startup as bench_startup
from engine.config import from_dict


def engine(*args, env, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cache_dir_from_config(tmp_path, root, engine_env):
    """Kernels compile into execution.cache_dir; the first run there says it compiles, and
    how long it took; the next one, which loads them, says nothing of it."""
    cache = tmp_path / "kcache"
    args = ("run", str(root / "configs/demo.yaml"), "--out", str(tmp_path / "o"),
            "--set", f"execution.cache_dir={cache}")
    p = engine(*args, env=engine_env)
    assert p.returncode == 0, p.stderr
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    first = [line for line in p.stderr.splitlines() if "kernels" in line]
    assert first[0].startswith("compiling kernels (first run only") and len(first) == 2
    assert re.fullmatch(r"compiled kernels in \d+\.\d s", first[1])
    again = engine(*args, env=engine_env)
    assert again.returncode == 0 and "compil" not in again.stderr, again.stderr


def test_cache_dir_relative_to_config_file(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("data:\n  source: cube\nexecution:\n  cache_dir: kc\n")
    from engine.config import load_config

    assert load_config(c).execution.cache_dir == str(tmp_path / "kc")
    assert from_dict({"data": {"source": "cube"}}).execution.cache_dir is None


def test_warmup_then_second_process_finds_kernels_cached(tmp_path, root, engine_env):
    # One representative config (the similarity model's demo: its warm-up takes the fused, stepwise, timed,
    # per-epoch and per-episode paths); that the default is every bundled config is checked in-process below.
    cache = tmp_path / "warm"
    p = engine("-q", "warmup", "configs/demo.yaml", "--cache-dir", str(cache), env=engine_env, cwd=root)
    assert p.returncode == 0, p.stderr
    assert "demo.yaml" in p.stdout and "kernels cached" in p.stdout
    info = engine("info", "--json", "--cache-dir", str(cache), env=engine_env)
    data = json.loads(info.stdout)
    cached = {k["kernel"]: k["cached_signatures"] for k in data["kernels"]}
    for name in ("kernels.loop.run_experiment_packed", "kernels.loop.eval_episodes_grouped", "kernels.loop.train_episodes",
                 "kernels.loop.match_step", "kernels.loop.train_step"):
        assert cached[name] >= 1, name
    # A second process runs every path of the warmed-up config: nothing compiles, all loads hit the cache.
    code = (
        "from engine.models.profile import CompileRecorder\n"
        "from engine.run.runtime import warmup_configs\n"
        "from engine.config import load_config\n"
        "import json\n"
        "cfgs=[load_config('configs/demo.yaml')]\n"
        "with CompileRecorder() as rec: warmup_configs(cfgs)\n"
        "print(json.dumps(rec.rows()))\n"
    )
    env = dict(engine_env, NUMBA_CACHE_DIR=str(cache))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    assert rows and all(r["cache_misses"] == 0 for r in rows), rows
    assert {"kernels.loop.run_experiment_packed", "kernels.loop.match_step"} <= {r["kernel"] for r in rows}, rows


def test_warmup_default_is_every_bundled_config(root, monkeypatch, capsys):
    from engine import cli
    from engine.run import runtime

    warmed = []

    def record(configs, progress=None):
        warmed.extend(configs)
        return [{"config": c.source_file, "seconds": 0.0} for c in configs]

    monkeypatch.setattr(runtime, "warmup_configs", record)
    assert cli.main(["-q", "warmup"]) == 0
    bundled = sorted((root / "configs").glob("*.yaml"))
    assert len(bundled) >= 8  # similarity, nearest and evidence configs, simulated and recorded
    assert [Path(c.source_file).resolve() for c in warmed] == [p.resolve() for p in bundled]
    assert {c.model.type for c in warmed} == {"similarity", "nearest", "evidence"}
    out = capsys.readouterr().out
    assert all(p.name in out for p in bundled) and "kernels cached" in out


def test_warmup_outside_a_checkout_warms_every_model_types_defaults(tmp_path, monkeypatch, capsys):
    """An installed package has no bundled configs: warmup then compiles each registered model
    type's default config (the evidence model's on simulated shapes: the sensor's kernels too)."""
    from engine import cli
    from engine.run import registry, runtime

    warmed = []

    def record(configs, progress=None):
        warmed.extend(configs)
        return [{"config": c.source_file, "seconds": 0.0} for c in configs]

    monkeypatch.setattr(runtime, "warmup_configs", record)
    monkeypatch.setattr(cli, "BUNDLED_CONFIGS", tmp_path / "configs")  # no such folder
    assert cli.main(["-q", "warmup"]) == 0
    assert [c.model.type for c in warmed] == list(registry.MODEL_TYPES)
    assert next(c for c in warmed if c.model.type == "evidence").data.source == "shapes"
    out = capsys.readouterr().out
    assert "<default evidence config>" in out and "kernels cached" in out


def test_info_text(engine_env, tmp_path):
    p = engine("info", "--cache-dir", str(tmp_path), env=engine_env)
    assert p.returncode == 0, p.stderr
    for word in ("numba", "llvmlite", "numpy", "threading", "kernel cache", str(tmp_path), "SIMD"):
        assert word in p.stdout
    for name in ("similarity", "nearest", "evidence"):  # each model type's kernels in the cache
        assert re.search(rf"^model {name}: \d+ of [1-9]\d* kernels cached \(kernels\.", p.stdout, re.M), p.stdout
    assert "model evidence: 0 of" in p.stdout  # an empty cache (info runs one tiny similarity kernel)


def test_warmup_bad_config_exit_2(tmp_path, engine_env):
    c = tmp_path / "c.yaml"
    c.write_text("data:\n  source: cube\n  side: -1\n")
    p = engine("warmup", str(c), env=engine_env)
    assert p.returncode == 2 and "data.side" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("repeats", [1])
def test_startup_suite_rows(repeats, tmp_path):
    rows = bench_startup.run_startup(repeats=repeats)
    assert [r["case"] for r in rows] == ["floor", "cold", "warm"]
    for r in rows:
        assert set(bench_startup.ROW_KEYS) <= set(r) and r["suite"] == "startup"
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    text = bench_startup.format_startup(rows)
    assert "import numpy, numba" in text and "cold" in text and "warm" in text


CACHE_ORDER_SCRIPTS = {
    "batch_at": ("import numpy as np\nfrom kernels import matching\nfrom kernels.store import store_from_arrays\n"
                 "r=np.random.default_rng(0);loc=r.random((500,3),dtype=np.float32);f=r.random((500,1),dtype=np.float32)\n"
                 "s,n=store_from_arrays(loc,f);o=np.empty(50,np.float32)\n"
                 "matching.batch_similarity_at(s,n,loc[:50],f[:50],np.arange(50),o);print(o.sum())\n"),
    "batch": ("import numpy as np\nfrom kernels import matching\nfrom kernels.store import store_from_arrays\n"
              "r=np.random.default_rng(0);loc=r.random((500,3),dtype=np.float32);f=r.random((500,1),dtype=np.float32)\n"
              "s,n=store_from_arrays(loc,f);print(matching.batch_similarity(s,n,loc[:50],f[:50]).sum())\n"),
    "episode": ("from engine.config import from_dict\nfrom engine.models.similarity import Experiment\n"
                "c=from_dict({'model':{'confidence_threshold':0.3},'data':{'source':'seed_spiral','size':300}})\n"
                "e=Experiment(c);e.add_hook('after_episode',lambda ev:None);print(e.run().final_confidence)\n"),
    "run": ("from engine.config import from_dict\nfrom engine.models.similarity import Experiment\n"
            "c=from_dict({'model':{'confidence_threshold':0.3},'data':{'source':'seed_spiral','size':300}})\n"
            "print(Experiment(c).run().final_confidence)\n"),
}


@pytest.mark.parametrize("order", [("batch_at", "batch", "batch"), ("episode", "run", "run", "episode")],
                         ids=["batch", "loops"])
def test_cache_reload_order_does_not_crash(order, tmp_path, root, engine_env):
    """Regression: a cached kernel that called a parallel kernel segfaulted when loaded from cache
    in a later process, if its callee had been loaded from cache while it compiled (numba#8578)."""
    env = dict(engine_env, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    outputs = []
    for name in order:
        p = subprocess.run([sys.executable, "-c", CACHE_ORDER_SCRIPTS[name]], capture_output=True, text=True,
                           env=env, cwd=root, timeout=300)
        assert p.returncode == 0, (name, p.returncode, p.stderr[-2000:])
        outputs.append((name, p.stdout.strip()))
    assert len({out for name, out in outputs if name == order[-1]}) == 1


def test_read_only_install_caches_per_user(tmp_path, root):
    """Installed into a read-only folder, the kernels still cache: numba falls back to a per-user folder."""
    import os
    import shutil

    src, site, home = tmp_path / "src", tmp_path / "site", tmp_path / "home"
    for pkg in ("kernels", "engine"):
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    site.mkdir()
    home.mkdir()
    # a read-only bind mount: read-only even for root (file modes are not, for root)
    mounted = subprocess.run(["mount", "--bind", str(src), str(site)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("needs permission to bind-mount a folder read-only (root)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(site)], capture_output=True).returncode != 0:
            pytest.skip("needs permission to remount a folder read-only (root)")
        assert not os.access(site / "kernels", os.W_OK) or subprocess.run(
            ["touch", str(site / "kernels" / "probe")], capture_output=True).returncode != 0
        code = ("import numpy as np\nfrom kernels import matching\nfrom kernels.store import store_from_arrays\n"
                "s,n=store_from_arrays(np.ones((50,3),np.float32),np.ones((50,1),np.float32))\n"
                "matching.batch_similarity(s,n,np.ones((4,3),np.float32),np.ones((4,1),np.float32))\n"
                "st=matching.batch_similarity.stats\n"
                "print(st.cache_path, sum(st.cache_hits.values()), sum(st.cache_misses.values()))\n")
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
        env.update(HOME=str(home), PYTHONPATH=str(site), XDG_CACHE_HOME=str(home / ".cache"))
        runs = []
        for _ in range(2):
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                               cwd=str(tmp_path), timeout=600)
            assert p.returncode == 0, p.stderr[-2000:]
            runs.append(p.stdout.split())
    finally:
        subprocess.run(["umount", str(site)], capture_output=True)
    (path1, hits1, misses1), (path2, hits2, misses2) = runs
    assert path1 == path2 and path1.startswith(str(home)), path1  # not beside the read-only sources
    assert misses1 == "1" and hits2 == "1" and misses2 == "0"  # compiled once, then found in the cache
    assert not list(src.rglob("*.nbi"))
