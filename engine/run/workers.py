"""Evaluation over worker processes (``execution.workers: N``, ``run --workers N``).

The evaluation episodes of a saved model (``model.path``) are spread over N worker
processes of a Dask ``distributed.LocalCluster`` (the optional extra ``dask``:
``pip install ".[dask]"``; imported only here, only when N > 1). Each worker builds the
config's experiment once (its data, and the saved model memory-mapped from the file: the
workers share its pages; its kernels loaded from the kernel cache), runs its kernels on one thread (``numba.set_num_threads(1)``:
N processes of one thread each instead of one process of several) and evaluates the
episodes it is sent with ``evaluate_episode``, the model type's per-episode entry, which
gives the record a run in one process gives. The records come back in epoch-major order
and the experiment builds its usual result from them (``result_from_records``), so the
results are the same whatever N (``tests/test_workers.py``).

What ``summary.json`` gains (:func:`execution_info`): ``workers``; ``cluster_start_s``
(starting the cluster and its workers; null in one process); ``eval_s`` (wall time of the
evaluation: with workers from sending the first episodes to receiving the last, each
worker's data and model loading included; in one process the run's wall time when it
evaluates a saved model; null when the run trains).
"""

from __future__ import annotations

import json
import logging
import time

from engine.errors import UserError

log = logging.getLogger(__name__)

#: per worker process: the experiment built for a config (key: the config as JSON)
_WORKER_EXPERIMENTS: dict = {}
#: episodes per task: enough tasks per worker that a slow chunk does not hold up the end
TASKS_PER_WORKER = 4


def check_workers(cfg) -> None:
    """``execution.workers > 1`` needs a saved model and the ``distributed`` package."""
    n = cfg.execution.workers
    if n <= 1:
        return
    if cfg.model.path is None:
        raise UserError(f"{cfg.source_file}: execution.workers = {n} evaluates a saved model over worker "
                        "processes: train it first (python -m engine train CONFIG --save MODEL) and run with "
                        "--model MODEL (or model.path)")
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UserError(f"{cfg.source_file}: execution.workers = {n} needs Dask's distributed package: "
                        "pip install '.[dask]' (or pip install distributed)")


def _experiment_in_worker(cfg):
    """The worker's experiment for ``cfg`` (built once per process): kernels on one thread."""
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    ex = _WORKER_EXPERIMENTS.get(key)
    if ex is None:
        import numba

        from engine.run import registry

        numba.set_num_threads(1)
        ex = registry.load_experiment(cfg)
        ex.warmup()  # load the kernels from the cache, so that no episode's time holds it
        ex.train()  # a saved model: learns nothing, readies evaluate_episode
        _WORKER_EXPERIMENTS.clear()
        _WORKER_EXPERIMENTS[key] = ex
    return ex


def evaluate_chunk(cfg, pairs) -> list:
    """Run in a worker: the records of evaluation episodes ``pairs`` ((epoch, episode), ...)."""
    import numba

    ex = _experiment_in_worker(cfg)
    numba.set_num_threads(1)
    return [ex.evaluate_episode(int(p), int(e)) for p, e in pairs]


def _chunks(pairs: list, n: int) -> list:
    size = max(1, -(-len(pairs) // n))
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def evaluate_distributed(cfg, pairs: list) -> tuple[list, dict]:
    """Evaluate ``pairs`` over ``cfg.execution.workers`` worker processes; the records in
    the order of ``pairs`` and :func:`execution_info`'s fields."""
    check_workers(cfg)
    n = cfg.execution.workers
    from distributed import Client, LocalCluster

    if not log.isEnabledFor(logging.DEBUG):  # the scheduler's INFO lines, unless -vv
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                     "distributed.http.proxy", "distributed.worker"):
            logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(n)
            cluster_start_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            chunks = _chunks(list(pairs), n * TASKS_PER_WORKER)
            futures = client.map(evaluate_chunk, [cfg] * len(chunks), chunks, pure=False)
            parts = client.gather(futures)
            eval_s = time.perf_counter() - t1
        finally:
            client.close()
    finally:
        cluster.close()
    records = [r for part in parts for r in part]
    log.info("evaluated %d episodes on %d workers in %.2f s (cluster start %.2f s)", len(records), n, eval_s,
             cluster_start_s)
    return records, {"workers": n, "eval_s": eval_s, "cluster_start_s": cluster_start_s}


def execution_info(cfg, run_s: float | None = None) -> dict:
    """``workers``, ``eval_s``, ``cluster_start_s`` of a run in one process."""
    return {"workers": cfg.execution.workers, "eval_s": run_s if cfg.model.path is not None else None,
            "cluster_start_s": None}


def run(experiment, cfg):
    """The experiment's result and :func:`execution_info`: in this process (``ex.run()``),
    or with ``execution.workers > 1`` its evaluation over worker processes."""
    if cfg.execution.workers <= 1:
        result = experiment.run()
        return result, execution_info(cfg, getattr(result, "run_s", None))
    t0 = time.perf_counter()
    compile_s = experiment.compile_s if experiment.compile_s is not None else experiment.warmup()
    experiment.train()
    records, info = evaluate_distributed(cfg, experiment.evaluation_pairs())
    result = experiment.result_from_records(records, compile_s=compile_s, run_s=time.perf_counter() - t0)
    return result, info
