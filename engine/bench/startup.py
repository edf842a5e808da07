"""``bench --suite startup``: how long until a result, cold and warm, against the import floor.

Three commands, interleaved, each in a fresh process:

- ``floor``: ``python -c "import numpy, numba"``, the least any numba program pays;
- ``cold``: ``python -m engine run configs/demo.yaml`` with an empty kernel cache
  folder (every kernel compiles);
- ``warm``: the same with a cache folder filled by an earlier run (the first cold one).

Each is timed from process start to exit (start-to-result wall time).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
ROW_KEYS = ("suite", "case", "implementation", "median_s", "min_s", "max_s")
FLOOR_CMD = "python -c 'import numpy, numba'"
ENGINE_CMD = "python -m engine run configs/demo.yaml"


def _env(cache_dir: str) -> dict:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return dt


def run_startup(repeats: int = 5) -> list[dict]:
    """Measure floor, cold and warm start-to-result times; one row per case."""
    work = Path(tempfile.mkdtemp(prefix="engine-startup-"))
    try:
        out = str(work / "out")
        floor_cmd = [sys.executable, "-c", "import numpy, numba"]
        run_cmd = [sys.executable, "-m", "engine", "-q", "run", str(DEMO), "--out", out]
        warm_cache = str(work / "warm-cache")
        _timed(floor_cmd, _env(warm_cache))  # untimed: the first process start reads the libraries from disk
        times = {"floor": [], "cold": [], "warm": []}
        for r in range(repeats):
            # The first cold run compiles into the (still empty) warm cache folder and so fills it:
            # a cold run like any other, and no extra compile just to fill the warm cache.
            cold_cache = warm_cache if r == 0 else str(work / f"cold-cache-{r}")
            times["floor"].append(_timed(floor_cmd, _env(warm_cache)))
            times["cold"].append(_timed(run_cmd, _env(cold_cache)))
            times["warm"].append(_timed(run_cmd, _env(warm_cache)))
            if cold_cache != warm_cache:
                shutil.rmtree(cold_cache, ignore_errors=True)
            log.info("startup repeat %d/%d: floor %.2f s, cold %.2f s, warm %.2f s", r + 1, repeats,
                     times["floor"][-1], times["cold"][-1], times["warm"][-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(times["floor"])
    rows = []
    for case, impl in (("floor", FLOOR_CMD), ("cold", ENGINE_CMD), ("warm", ENGINE_CMD)):
        ts = times[case]
        med = statistics.median(ts)
        rows.append({"suite": "startup", "case": case, "implementation": impl, "median_s": med,
                     "min_s": min(ts), "max_s": max(ts), "vs_floor": med / floor if floor > 0 else None,
                     "repeats": len(ts)})
    return rows


def format_startup(rows: list[dict]) -> str:
    lines = [f"{'case':<6} {'command':<42} {'median s':>9} {'min s':>7} {'max s':>7} {'x floor':>8}",
             "-" * 84]
    for r in rows:
        lines.append(f"{r['case']:<6} {r['implementation']:<42} {r['median_s']:9.3f} {r['min_s']:7.3f} "
                     f"{r['max_s']:7.3f} {r['vs_floor']:8.2f}")
    lines.append("")
    lines.append("Start-to-result wall time of a fresh process; cold: empty kernel cache folder, warm: filled by "
                 "an earlier run; interleaved, median of the repeats.")
    return "\n".join(lines)
