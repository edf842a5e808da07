"""The compiled side of the engine at run time: cache folder, kernel inventory, warm-up, info.

Kernels compile lazily (on their first call with a given signature) and are
cached on disk by numba (``cache=True``). Where the cache lives:

1. ``execution.cache_dir`` in the config, or ``configure_cache(path)``;
2. else the ``NUMBA_CACHE_DIR`` environment variable (numba's own);
3. else numba's default: ``__pycache__`` beside the kernel sources, and, when
   that folder is not writable (a read-only site-packages), the user-wide
   folder numba falls back to (``~/.cache/numba`` style, per user).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path



def _kernel_modules() -> tuple[str, ...]:
    """Every module of the ``kernels`` package (found, not listed: a new module counts too)."""
    import pkgutil

    import kernels

    return tuple(f"kernels.{m.name}" for m in pkgutil.iter_modules(kernels.__path__) if not m.ispkg)


KERNEL_MODULES = _kernel_modules()


def configure_cache(cache_dir: str | os.PathLike | None) -> str | None:
    """Point numba's kernel cache at ``cache_dir`` (created if missing); None leaves it alone.

    Works before or after ``kernels`` is imported: the kernels' caches are
    re-bound to the new folder (numba picks a dispatcher's cache folder when
    caching is enabled, so it is enabled again). Returns the folder in use.
    """
    if cache_dir is None:
        path = os.environ.get("NUMBA_CACHE_DIR") or None
        if path:
            _read_only_if_needed(path)
        return path
    path = str(Path(cache_dir).expanduser().resolve())
    if not Path(path).is_dir():
        Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = path
    if "numba" in sys.modules:
        from numba.core import config

        config.CACHE_DIR = path
        for disp in kernel_dispatchers(import_missing=False):
            disp.enable_caching()
    _read_only_if_needed(path)
    return path


def use_config_cache(cfg) -> str | None:
    """:func:`configure_cache` for a config's ``execution.cache_dir``; a folder that cannot be
    used is a one-line :class:`engine.errors.UserError` naming the config."""
    from engine.errors import UserError

    try:
        return configure_cache(cfg.execution.cache_dir)
    except OSError as exc:
        raise UserError(f"{cfg.source_file}: execution.cache_dir: cannot use {cfg.execution.cache_dir}: {exc}") from None


#: the kernel cache folder in use when it is read-only (``engine.run.readonly_cache``), else None
READ_ONLY_CACHE: str | None = None


def _read_only_if_needed(path: str) -> None:
    """A cache folder that exists but cannot be written (a container image's) is used for
    loading (numba alone would ignore it and compile everything again elsewhere)."""
    global READ_ONLY_CACHE
    from engine.run import readonly_cache

    if not os.path.isdir(path) or readonly_cache.writable(path):
        READ_ONLY_CACHE = None
        return
    from numba.core import config

    config.CACHE_DIR = path
    n = readonly_cache.use_read_only(kernel_dispatchers())
    READ_ONLY_CACHE = path
    import logging

    logging.getLogger(__name__).info("kernel cache %s is read-only: %d kernels load from it; a kernel it lacks "
                                     "compiles on every run (nothing is saved)", path, n)


def kernel_dispatchers(import_missing: bool = True, modules=None) -> list:
    """Every numba dispatcher defined in the kernel modules (private ones included), or in
    ``modules`` (names like "kernels.loop") when given."""
    from numba.core.registry import CPUDispatcher

    out = []
    for name in KERNEL_MODULES if modules is None else modules:
        mod = sys.modules.get(name)
        if mod is None and import_missing:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
        if mod is None:
            continue
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == name:
                out.append(obj)
    return out


def cached_kernels(modules=None) -> list[dict]:
    """For each kernel (of ``modules`` when given): its cache index file and how many
    compiled signatures it holds."""
    rows = []
    for disp in kernel_dispatchers(modules=modules):
        cache = getattr(disp, "_cache", None)
        cache_file = getattr(cache, "_cache_file", None)
        index = getattr(cache_file, "_index_path", None)
        try:
            n = len(cache_file._load_index()) if cache_file is not None else 0
        except Exception:  # an unreadable index counts as not cached
            n = 0
        rows.append({"kernel": f"{disp.py_func.__module__}.{disp.py_func.__qualname__}",
                     "index": index, "cached_signatures": n})
    return rows


def is_cached(kernel: str) -> bool:
    """Whether ``kernel`` (a name like "kernels.loop.run_experiment_packed") has a compiled
    signature in the kernel cache; False also for a name that is no kernel."""
    return any(r["cached_signatures"] for r in cached_kernels((kernel.rsplit(".", 1)[0],)) if r["kernel"] == kernel)


def warmup_configs(configs, progress=None) -> list[dict]:
    """Compile (or load) every kernel signature the given configs use, on every execution path.

    ``configs`` are validated ``Config`` objects; each model type's ``warmup_config``
    (``engine.run.registry``) says what that takes. Returns one row per config with the
    seconds taken.
    """
    from engine.run import registry

    rows = []
    for cfg in configs:
        t0 = time.perf_counter()
        registry.for_config(cfg).warmup_config(cfg)
        rows.append({"config": cfg.source_file, "seconds": time.perf_counter() - t0})
        if progress is not None:
            progress(rows[-1])
    return rows


def threading_info() -> dict:
    """How the kernels run, for reading a run's times: ``threads`` (numba's thread count),
    ``openmp_wait_policy`` (``OMP_WAIT_POLICY``, or "default") and who chose it,
    ``openmp_wait_policy_source``: "user", "busy" (``kernels`` chose PASSIVE because other
    processes were running at import: each parallel region then starts slower) or "default"."""
    import numba

    import kernels

    return {"threads": numba.get_num_threads(),
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY") or "default",
            "openmp_wait_policy_source": kernels.OPENMP_WAIT_POLICY_SOURCE}


def info() -> dict:
    """Versions, threading, cache state and CPU features: what ``python -m engine info`` prints."""
    from importlib import metadata

    import llvmlite.binding as ll
    import numba
    import numpy as np

    from engine import __version__

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    from kernels import matching

    # Run one tiny parallel kernel so the threading layer is initialised and named.
    loc = np.zeros((2, 3), np.float32)
    feat = np.zeros((2, 1), np.float32)
    store = np.zeros((4, 2), np.float32)
    matching._batch_similarity_parallel(store, 2, loc, feat, np.arange(2), np.empty(2, np.float32))
    features = ll.get_host_cpu_features()
    simd = sorted(k for k, v in features.items() if v and any(s in k for s in ("sse", "avx", "fma", "neon", "sve")))
    kernels = cached_kernels()
    threading = threading_info()
    return {
        "engine": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: version(d) for d in ("numba", "llvmlite", "numpy", "PyYAML", "tqdm", "line_profiler",
                                             "scipy")},
        "threading_layer": numba.threading_layer(),
        "threads": threading["threads"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openmp_wait_policy_source": threading["openmp_wait_policy_source"],
        "cache_dir": numba.config.CACHE_DIR or None,
        "cache_read_only": READ_ONLY_CACHE is not None,
        "kernels_cached": sum(1 for k in kernels if k["cached_signatures"]),
        "kernels_total": len(kernels),
        "kernels": kernels,
        "model_types": _model_type_cache(kernels),
        "cpu": ll.get_host_cpu_name(),
        "simd": simd,
    }


def _model_type_cache(kernels: list[dict]) -> dict:
    """Per registered model type: the kernel modules it calls and how many of their
    kernels the cache holds."""
    from engine.run import registry

    out = {}
    for name, mt in registry.MODEL_TYPES.items():
        mods = mt.load().KERNEL_MODULES
        rows = [k for k in kernels if k["kernel"].rsplit(".", 1)[0] in mods]
        out[name] = {"kernel_modules": list(mods), "kernels_cached": sum(1 for k in rows if k["cached_signatures"]),
                     "kernels_total": len(rows)}
    return out


def format_info(data: dict) -> str:
    lines = [f"engine {data['engine']} on Python {data['python']} ({data['platform']})"]
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v))
    lines.append(f"threading: numba layer {data['threading_layer']}, {data['threads']} threads, "
                 f"OMP_WAIT_POLICY={data['omp_wait_policy'] or '(libgomp default)'}")
    where = data["cache_dir"] or "numba default (__pycache__ beside the kernels, or the user-wide folder)"
    if data.get("cache_read_only"):
        where += " (read-only: loaded from, never written)"
    lines.append(f"kernel cache: {where}; {data['kernels_cached']} of {data['kernels_total']} kernels cached")
    for name, m in data["model_types"].items():
        lines.append(f"model {name}: {m['kernels_cached']} of {m['kernels_total']} kernels cached "
                     f"({', '.join(m['kernel_modules'])})")
    for k in data["kernels"]:
        lines.append(f"  {'cached' if k['cached_signatures'] else '-':>6} {k['cached_signatures']:>3}  {k['kernel']}")
    lines.append(f"cpu: {data['cpu']}; SIMD: {' '.join(data['simd'])}")
    return "\n".join(lines)
