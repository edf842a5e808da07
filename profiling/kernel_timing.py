"""Time one kernel in isolation: first call (compile or cache load) apart from steady state.

    python profiling/kernel_timing.py --kernel batch_similarity --stored 20000 --queries 2000
    python profiling/kernel_timing.py --kernel pairwise_distances --stored 4000 --queries 1000

Prints the first call, then the median / min / max of ``--repeats`` steady calls,
and nanoseconds per comparison (queries x stored).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from kernels import distance, matching  # noqa: E402
from kernels.store import store_from_arrays  # noqa: E402

KERNELS = ("batch_similarity", "mean_similarity", "pairwise_distances")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", choices=KERNELS, default="batch_similarity")
    p.add_argument("--stored", type=int, default=20000, help="stored observations")
    p.add_argument("--queries", type=int, default=2000, help="query observations")
    p.add_argument("--features", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    loc = rng.random((a.stored, 3), dtype=np.float32)
    feat = rng.random((a.stored, a.features), dtype=np.float32)
    q_loc = rng.random((a.queries, 3), dtype=np.float32)
    q_feat = rng.random((a.queries, a.features), dtype=np.float32)
    store, n = store_from_arrays(loc, feat)
    if a.kernel == "batch_similarity":
        call, comparisons = (lambda: matching.batch_similarity(store, n, q_loc, q_feat)), a.queries * a.stored
    elif a.kernel == "mean_similarity":
        call, comparisons = (lambda: matching.mean_similarity(store, n, q_loc[0], q_feat[0])), a.stored
    else:
        call, comparisons = (lambda: distance.pairwise_distances(q_loc, loc)), a.queries * a.stored
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{a.kernel}: first call {first * 1e3:.1f} ms (compile or cache load + one run)")
    print(f"steady: median {med * 1e3:.3f} ms, min {min(times) * 1e3:.3f}, max {max(times) * 1e3:.3f} "
          f"over {a.repeats} calls; {med / comparisons * 1e9:.3f} ns per comparison")


if __name__ == "__main__":
    main()
