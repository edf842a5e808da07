"""Shared test fixtures."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def engine_env():
    """Environment for running ``python -m engine`` in a subprocess from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def sigint_default():
    """Ctrl-C raises KeyboardInterrupt in this process during the test, as in a terminal, even when
    pytest runs with SIGINT ignored (a job a non-interactive shell started in the background)."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
