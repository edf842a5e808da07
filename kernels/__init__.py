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
    0.165 ms). So: passive when the 1-minute load average says half the
    cores are taken (a sustained load, not a momentary one: the choice holds
    for the whole process); spinning otherwise. A user's own OMP_WAIT_POLICY or
    GOMP_SPINCOUNT always wins. Must run before the first parallel kernel,
    hence at import. Returns who chose (see ``OPENMP_WAIT_POLICY_SOURCE``).
    """
    if "OMP_WAIT_POLICY" in _os.environ or "GOMP_SPINCOUNT" in _os.environ:
        return "user"
    cpus = _os.cpu_count() or 1
    try:
        load1 = _os.getloadavg()[0]
    except (OSError, AttributeError):  # no load information on this platform
        return "default"
    if load1 >= cpus / 2:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "busy"
    return "default"


# Who chose OpenMP's wait policy at import: "user" (OMP_WAIT_POLICY or
# GOMP_SPINCOUNT was set), "busy" (this package set PASSIVE: the machine was
# loaded) or "default" (libgomp's default, left alone on an idle machine).
OPENMP_WAIT_POLICY_SOURCE = _choose_openmp_wait_policy()

__all__ = ["distance", "matching", "loop", "store", "timing", "compact", "kdtree", "nearest", "evidence", "graph",
           "geometry", "select", "lanes"]
