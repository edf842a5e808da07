"""``python -m engine``: the command line (see ``engine.cli``)."""

import sys

# Commands that load kernels start numba without its SciPy probe (engine.run.numba_start);
# the others (--help, validate, info, make-dataset) never pay for importing numba here.
if {"run", "profile", "warmup", "bench", "train"} & set(sys.argv[1:]):
    from engine.run.numba_start import skip_blas_probe

    skip_blas_probe()

from engine.cli import main  # noqa: E402

sys.exit(main())
