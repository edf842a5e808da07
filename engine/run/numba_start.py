"""Numba's start-up in the engine's command-line process, without its SciPy probe.

Loading the first kernel (even from the kernel cache) initialises numba's CPU target,
which imports ``numba.np.arraymath``; at import that module probes for BLAS with
``import scipy.linalg.cython_blas``. With SciPy installed (the test extras install it)
the probe imports ``scipy.linalg``, whose vendored array-API layer touches every
attribute of numpy and so imports ``numpy.f2py`` too: 0.15-0.2 s of a 1.0 s warm run of
the demo on this machine, for a flag (``_HAVE_BLAS``) that only chooses how
``np.convolve`` / ``np.correlate`` compute an inner product. No kernel of this project
calls them, or any BLAS / LAPACK function (``kernels.geometry`` has its own 3x3
eigen-solver for that reason).

:func:`skip_blas_probe` imports ``numba.np.arraymath`` with the probe answering "no
BLAS". Nothing else changes: ``np.dot``, ``np.linalg`` and the rest still find SciPy
when a function that uses them is compiled (they call the probe again then). The CLI
calls it before the first kernel loads; a program that imports ``kernels`` as a library
never does.
"""

from __future__ import annotations

import sys


def skip_blas_probe() -> bool:
    """Import ``numba.np.arraymath`` without its import-time SciPy probe. Returns whether it
    did (False: the module was imported already, or this numba has no such probe)."""
    if "numba.np.arraymath" in sys.modules:
        return False
    try:
        from numba.np import linalg
    except ImportError:  # another numba layout: leave it alone
        return False
    probe = getattr(linalg, "ensure_blas", None)
    if probe is None:
        return False

    def not_probed():
        raise ImportError("numba's start-up BLAS probe skipped (engine.run.numba_start)")

    linalg.ensure_blas = not_probed
    try:
        from numba.np import arraymath
    finally:
        linalg.ensure_blas = probe
    if getattr(arraymath, "ensure_blas", None) is not_probed:
        arraymath.ensure_blas = probe  # later callers (np.dot's typing) probe for real
    return True
