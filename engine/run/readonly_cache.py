"""A kernel cache folder that can be read but not written (a container image's, a shared one).

numba uses ``NUMBA_CACHE_DIR`` only when it can write there: for a read-only folder it
silently falls back to ``__pycache__`` beside the sources (or a per-user folder), so a
populated cache shipped read-only is ignored and every kernel compiles again (35 s for the
evidence model) into the installed package. :func:`use_read_only` points the project's
kernels at such a folder for *loading*: what it holds loads as usual; a kernel it lacks
compiles in memory for this process and is not saved anywhere (the folder cannot take it,
and writing elsewhere would split the cache in two). Only the project's kernels are
affected; other numba code in the process keeps numba's own rules.
"""

from __future__ import annotations

import os
import tempfile


def writable(path: str) -> bool:
    """Whether a file can be created in the folder ``path`` (as numba checks it)."""
    try:
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _classes():
    """The cache classes, built on first use (importing numba's caching costs nothing then)."""
    from numba.core import config
    from numba.core.caching import CompileResultCacheImpl, FunctionCache, UserProvidedCacheLocator

    class ReadOnlyDirLocator(UserProvidedCacheLocator):
        """``config.CACHE_DIR`` whether or not it can be written."""

        @classmethod
        def from_function(cls, py_func, py_file):
            if not config.CACHE_DIR or not os.path.exists(py_file):
                return None
            return cls(py_func, py_file)

        def ensure_cache_path(self):
            raise PermissionError(f"kernel cache {config.CACHE_DIR} is read-only")

    class ReadOnlyImpl(CompileResultCacheImpl):
        _locator_classes = [ReadOnlyDirLocator]

    class ReadOnlyFunctionCache(FunctionCache):
        """Loads from the read-only folder; saving is a no-op."""

        _impl_class = ReadOnlyImpl

        def save_overload(self, sig, data):
            return None

    return ReadOnlyFunctionCache


def use_read_only(dispatchers) -> int:
    """Give each numba dispatcher in ``dispatchers`` a cache that loads from
    ``numba.config.CACHE_DIR`` and never writes; returns how many."""
    cache_class = _classes()
    n = 0
    for disp in dispatchers:
        if getattr(disp, "_cache", None) is None:
            continue
        disp._cache = cache_class(disp.py_func)
        n += 1
    return n
