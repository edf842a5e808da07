"""Compiler settings shared by every kernel, kept in one place.

FASTMATH leaves out ``nnan`` on purpose (NaN stays NaN, so a NaN that slips
through is visible in the output instead of silently becoming garbage).
``ninf`` is kept: it lets LLVM replace the division 1 / (1 + d + e) with a
reciprocal estimate plus one Newton step, which measured 1.7x faster on the
similarity reduction (0.138 vs 0.234 ns per comparison, 2 threads, AVX-512
machine) and agrees with a float64 reference to 2e-7 relative. Inputs are finite
by contract (the engine rejects NaN and infinity at the boundary), and the
denominator is >= 1, so no infinity can arise inside the reduction.
``reassoc`` lets the reduction vectorise (partial sums per SIMD lane, which is
also more accurate than one sequential float32 sum).

Reductions that divide use ``error_model="numpy"``: Python's error model puts a
zero-division check (a branch that raises) inside the loop, and that branch
alone stops LLVM from vectorising it (measured: 1.07 vs 0.14 ns per comparison).
The denominator there is >= 1, so the check could never fire anyway.
"""

FASTMATH = {"ninf", "arcp", "contract", "afn", "reassoc", "nsz"}

# Below this many comparisons (queries x stored observations) a batch runs on
# one thread. A parallel region whose worker is already spinning starts in
# ~2-4 us (measured on this 2-core machine, batch similarity, 1 feature:
# 10 x 100 comparisons 2.8 us parallel / 1.7 us serial; 100 x 100: 4.9 / 12.1
# us, and serial ~4.5 us since the batch loops stopped slicing the store once
# per query, see ``kernels.matching._rows``), but a worker that has gone to sleep (libgomp sleeps after a few ms
# idle, e.g. between two runs) takes ~45 us to wake in this VM. Serial costs
# ~0.3 ns per comparison, so below ~32k comparisons (~10 us) one thread is
# never much slower and is immune to wake-up latency.
PARALLEL_MIN_COMPARISONS = 1 << 15

# Options of a kernel that only other kernels call (never Python): no CPython
# and no C-callable wrapper are generated for it, which a cold cache would
# otherwise compile once per helper, and each caller links in its own copy of
# the helper anyway. Still cached. Call such a helper from Python and numba
# raises; give it plain ``@njit(cache=True)`` if tests must call it directly.
HELPER = {"cache": True, "no_cpython_wrapper": True, "no_cfunc_wrapper": True}
