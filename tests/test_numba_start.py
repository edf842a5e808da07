"""The CLI starts numba without its SciPy probe (engine.run.numba_start), and loses nothing by it."""

import subprocess
import sys

import pytest


def _python(code, env, cwd):
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def test_run_of_the_demo_does_not_import_scipy_linalg(tmp_path, root, engine_env):
    pytest.importorskip("scipy")  # without SciPy there is nothing to skip
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['engine', 'run', 'configs/demo.yaml', '--out', {str(tmp_path / 'o')!r}, '-q']\n"
        "try:\n"
        "    runpy.run_module('engine', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "import numba.np.arraymath as am\n"
        "print(rc, 'scipy.linalg' in sys.modules, am._HAVE_BLAS)\n"
    )
    assert _python(code, engine_env, root) == "0 False False"


def test_blas_still_works_after_the_skipped_probe(root, engine_env):
    """np.dot and np.linalg compile and run in a process that skipped the probe (they probe
    again when compiled), and a second skip is a no-op."""
    pytest.importorskip("scipy")
    code = (
        "from engine.run.numba_start import skip_blas_probe\n"
        "first = skip_blas_probe()\n"
        "import numpy as np\n"
        "from numba import njit\n"
        "@njit\n"
        "def f(a):\n"
        "    return np.dot(a, a), np.linalg.det(np.eye(3) * 2.0)\n"
        "d, det = f(np.arange(4.0))\n"
        "print(first, skip_blas_probe(), d, round(det, 6))\n"
    )
    assert _python(code, engine_env, root) == "True False 14.0 8.0"
