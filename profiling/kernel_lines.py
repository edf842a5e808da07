"""Hot lines inside a kernel: run it as plain Python (NUMBA_DISABLE_JIT=1) under line_profiler.

    python profiling/kernel_lines.py                      # the evaluation rounds and what they call
    python profiling/kernel_lines.py --stored 500 --steps 200 --out lines.lprof

With the JIT disabled every ``@njit`` kernel is its own Python source, so
line_profiler sees its lines: slow (keep the sizes small) but truthful about
which lines do the work and how often they run. Relative per-line costs differ
from the compiled code (there, the vectorised similarity loop dominates even
more), so use this to understand the control flow and the hit counts, and
``kernel_timing.py`` / ``python -m engine profile`` for compiled times.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ["NUMBA_DISABLE_JIT"] = "1"  # must be set before numba is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from line_profiler import LineProfiler  # noqa: E402

from kernels import loop, matching  # noqa: E402
from kernels.store import new_store  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stored", type=int, default=300, help="stored observations")
    p.add_argument("--steps", type=int, default=100, help="evaluation steps per episode")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--out", default=None, help="also save the profile (.lprof) here")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    t = a.stored + a.steps * a.episodes
    location = rng.random((t, 3), dtype=np.float32) * np.float32(0.1)
    features = rng.random((t, 1), dtype=np.float32)
    store = new_store(1, a.stored)
    n = loop.train_episodes(store, 0, location, features, np.array([0]), np.array([a.stored]), a.stored,
                            np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int8))
    starts = a.stored + a.steps * np.arange(a.episodes, dtype=np.int64)
    stops = starts + a.steps
    out = (np.zeros(a.episodes, np.int64), np.zeros(a.episodes, np.float32), np.zeros(a.episodes, np.int8))

    lp = LineProfiler()
    for fn in (loop._eval_rounds, matching.batch_into, matching._similarity_sum_1, matching.scan_into,
               matching.termination_scan):
        lp.add_function(fn)
    lp.runcall(loop.eval_episodes, store, n, location, features, starts, stops, a.steps,
               np.float32(a.threshold), a.chunk, *out)
    lp.print_stats(stripzeros=True)
    if a.out:
        lp.dump_stats(a.out)
        print(f"saved {a.out} (read it with: python -m line_profiler {a.out})")
    print(f"steps per episode: {out[0].tolist()}, confidences: {out[1].tolist()}")


if __name__ == "__main__":
    main()
