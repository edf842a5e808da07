"""A first run's kernels compiled on two cores: one kernel compiled by a second process.

Numba compiles on one thread, under a lock that lets one compilation run per process. A
first run of the evidence model compiles three independent groups of kernels one after
another (the sensor simulation's, the learning ones, the episode kernel), each on one
core, while the machine's other cores wait. A run that finds its main kernel missing
from the kernel cache can start a second Python process that compiles that kernel into
the same cache while the run itself compiles the rest and builds its data; when the run
needs the kernel it waits for the process and loads the kernel from the cache (a
fraction of a second).

Nothing depends on the second process: when it fails, is killed, or is not started
(one core only, ``ENGINE_PARALLEL_COMPILE=0``), the run compiles the kernel itself, as
before. The process is stopped when the run ends in any way.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: set to 0 to compile everything in the run's own process
ENV_SWITCH = "ENGINE_PARALLEL_COMPILE"


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """In the child, before it runs: Linux kills it when the run's process dies, even by
    SIGKILL (elsewhere ``stop`` at exit is all there is)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BackgroundCompile:
    """A second Python process running ``statement`` (which compiles kernels into the
    kernel cache); :meth:`wait` for it, :meth:`stop` it. The child inherits the
    environment (``NUMBA_CACHE_DIR`` included) and finds this checkout's packages."""

    def __init__(self, statement: str):
        root = str(Path(__file__).resolve().parents[2])  # the folder holding engine/ and kernels/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env[ENV_SWITCH] = "0"  # never a third process
        self.statement = statement
        self._stderr = tempfile.TemporaryFile()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-c", statement], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._stderr, env=env,
                                     preexec_fn=_die_with_parent)
        atexit.register(self.stop)

    def wait(self) -> bool:
        """Wait for the process to end; True when it succeeded (its kernels are in the cache)."""
        rc = self.proc.wait()
        if rc != 0:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip()
            log.warning("background compile exited with %s; compiling in this process instead%s", rc,
                        f" ({tail.splitlines()[-1]})" if tail else "")
        self._stderr.close()
        return rc == 0

    def stop(self) -> None:
        """Kill the process if it still runs (an interrupted or failed run)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def start(statement: str) -> BackgroundCompile | None:
    """A :class:`BackgroundCompile` of ``statement`` when it can help: at least two cores and
    ``ENGINE_PARALLEL_COMPILE`` not 0; else None (the caller compiles in its own process)."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or usable_cores() < 2:
        return None
    try:
        return BackgroundCompile(statement)
    except OSError as exc:  # no process could be started: compile here
        log.info("no background compile (%s)", exc)
        return None
