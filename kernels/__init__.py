"""Numba kernels of the engine: plain functions over flat float32 arrays.

This package imports numpy and numba only (never ``engine``), so other projects
can use the kernels on their own. Every kernel is ``@njit(cache=True)`` and
compiles lazily on its first call with a given signature: importing this package
compiles nothing.

Modules
-------
distance   pairwise Euclidean distances (parallel over rows)
matching   the similarity reduction, batch matching of many queries, and the
           early-termination scan (the confidence recurrence)
loop       whole-episode train and evaluation loops, and the single steps the
           stepwise path calls
store      the structure-of-arrays layout of a model's stored observations
timing     cycle-counter timers usable inside kernels (per-kernel profiles)
compact    float16 storage (uint16 bit patterns) with float32 compute
kdtree     a KD-tree over float32 3-D points: build, k-nearest and radius queries
npzfile    aligned .npz archives: the writer, and the reader that memory-maps stored
           members (plain numpy and zipfile, no kernels; used by kdtree and the engine)
nearest    the nearest model's similarity over the k nearest stored observations
evidence   evidence matching (tbp.monty's learning module): hypotheses, nearest nodes,
           burst sampling, terminal conditions; one step or one episode per call
graph      object models: greedy graph thinning and the voxel grid model
geometry   surface fits (normals, principal curvatures) and the surface-following walk
select     in-place sorting and k-th smallest selection (no np.sort / np.partition compile)
lanes      vector-lane primitives (LLVM IR): one step of many queries' candidate-list
           searches at once, bit counts, prefetch
"""

import os as _os


def _others_running(samples=3, gap_s=0.002):
    """Tasks other than this one that are runnable right now (``/proc/loadavg``'s running
    count, less this process), the smallest of a few samples ``gap_s`` apart: a task that
    merely woke up does not count, a busy process does. None where it cannot be read."""
    import time

    best = None
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        best = running - 1 if best is None else min(best, running - 1)
        if i + 1 < samples:
            time.sleep(gap_s)
    return max(0, best)


def _choose_openmp_wait_policy():
    """Passive OpenMP waiting when the machine is already busy; libgomp's default otherwise.

    libgomp's worker threads spin while they wait for work. On an idle machine
    that is the fastest choice: a parallel region starts in ~2 us. When another
    process holds a core, a spinning worker is just another CPU-bound thread and
    can wait a whole scheduler slice before it runs its share: measured on this
    2-core machine with one busy process, 8.0 ms per parallel region (the
    10 x 10 seed row took 8.0 ms instead of 0.019 ms). Passive (sleeping)
    workers are woken with priority and avoid that cliff, but each wake-up
    costs 30-60 us on an idle machine (100 x 10 row: 0.21-0.29 ms instead of
    0.165 ms; an evidence step of shapes_10_noise 1.16-1.5 ms instead of 0.94).
    So: passive when other processes are running on half the cores right now
    (``/proc/loadavg``'s count of runnable tasks, a few samples: a sustained
    load, not a task that just woke); spinning otherwise. The 1-minute load
    average is only the fallback where that count cannot be read: it still holds
    the runs that just ended (a sweep's previous point, a test suite), which made
    idle machines run passive. The choice holds for the whole process (the
    evidence model also moves its episodes to the free cores, see
    ``engine.run.cpu_share``). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT
    always wins. Must run before the first parallel kernel, hence at import.
    Returns who chose (see ``OPENMP_WAIT_POLICY_SOURCE``).
    """
    if "OMP_WAIT_POLICY" in _os.environ or "GOMP_SPINCOUNT" in _os.environ:
        return "user"
    cpus = _os.cpu_count() or 1
    others = _others_running()
    if others is None:
        try:
            others = _os.getloadavg()[0]
        except (OSError, AttributeError):  # no load information on this platform
            return "default"
    if others >= cpus / 2:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "busy"
    return "default"


# Who chose OpenMP's wait policy at import: "user" (OMP_WAIT_POLICY or
# GOMP_SPINCOUNT was set), "busy" (this package set PASSIVE: the machine was
# loaded) or "default" (libgomp's default, left alone on an idle machine).
OPENMP_WAIT_POLICY_SOURCE = _choose_openmp_wait_policy()

__all__ = ["distance", "matching", "loop", "store", "timing", "compact", "kdtree", "nearest", "evidence", "graph",
           "geometry", "select", "lanes"]
