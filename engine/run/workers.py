"""Evaluation over worker processes (``execution.workers: N``, ``run --workers N``) or the
workers of a running Dask cluster (``execution.scheduler: ADDRESS``, ``run --scheduler``).

The evaluation episodes of a saved model (``model.path``) are spread over N worker
processes of a Dask ``distributed.LocalCluster``, or over the workers of the scheduler at
ADDRESS (on any number of machines), as tasks of a few episodes each (the optional extra
``dask``: ``pip install ".[dask]"``; imported only here, only when used). Each worker builds the
config's experiment once (its data, and the saved model memory-mapped from the file: the
workers share its pages; its kernels loaded from the kernel cache), runs its kernels on one thread (``numba.set_num_threads(1)``:
N processes of one thread each instead of one process of several) and evaluates the
episodes it is sent with ``evaluate_episode``, the model type's per-episode entry, which
gives the record a run in one process gives. Each task returns its episodes' records with
their (epoch, episode); they are collected by that index, each episode exactly once, and the
experiment builds its usual result from them in epoch-major order (``result_from_records``),
so the results are the same whatever N (``tests/test_workers.py``). The experiment's hooks and
progress bar stay in the run's process (:class:`EvaluationEvents`): episodes are counted as their
records arrive, and the evaluation's episode and epoch events are emitted in the order of a run
in one process; per-step hooks are refused (:func:`check_hooks`).

A worker that dies mid-run (its process killed, its machine gone) loses its tasks, running
or finished but not yet collected: the scheduler sends them to other workers (Dask's
``distributed.scheduler.allowed-failures``, 3 by default, bounds how often one task may see
its worker die). A task that raises is tried again ``TASK_RETRIES`` times; a user error in a
worker (a model or data file it cannot read) is not retried: it ends the run with its one
line, naming the worker.

What ``summary.json`` gains (:func:`execution_info`): ``workers`` (with a scheduler: its
workers when the evaluation started); ``scheduler`` (the address, or null); ``cluster_start_s``
(starting the cluster and its workers, or connecting to the scheduler; null in one process);
``worker_setup_s`` (every worker there is building its experiment, before the evaluation's
clock starts: its data, the mapped model, its kernels loaded; null in one process); ``eval_s``
(wall time of the evaluation: with workers from sending the first episodes to receiving the
last; in one process the run's wall time when it evaluates a saved model; null when the run
trains).
"""

from __future__ import annotations

import json
import logging
import os
import time

from engine.errors import UserError

log = logging.getLogger(__name__)

#: per worker process: the experiment built for a config (key: the config as JSON)
_WORKER_EXPERIMENTS: dict = {}
#: episodes per task: enough tasks per worker that a slow chunk does not hold up the end
TASKS_PER_WORKER = 4
#: a task that raises (not a worker that dies: that is Dask's allowed-failures) is tried this
#: many more times, for a transient failure on one machine
TASK_RETRIES = 2
#: seconds to connect to a scheduler, and to wait for its first worker
CONNECT_TIMEOUT_S = 20
WORKER_WAIT_S = 60


def distributed(cfg) -> bool:
    """Whether ``cfg`` evaluates over Dask workers (``execution.workers > 1`` or
    ``execution.scheduler``)."""
    return cfg.execution.workers > 1 or cfg.execution.scheduler is not None


def _what(cfg) -> str:
    ex = cfg.execution
    return f"execution.scheduler = {ex.scheduler}" if ex.scheduler is not None else f"execution.workers = {ex.workers}"


def check_workers(cfg) -> None:
    """Dask workers (``execution.workers > 1`` or ``execution.scheduler``) need a saved model
    and the ``distributed`` package."""
    if not distributed(cfg):
        return
    what = _what(cfg)
    if cfg.model.path is None:
        raise UserError(f"{cfg.source_file}: {what} evaluates a saved model over worker "
                        "processes: train it first (python -m engine train CONFIG --save MODEL) and run with "
                        "--model MODEL (or model.path)")
    check_dask(f"{cfg.source_file}: {what}")


def check_dask(what: str) -> None:
    """A one-line UserError when Dask's ``distributed`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise UserError(f"{what} needs Dask's distributed package: pip install '.[dask]' (or pip install distributed)")


def _experiment_in_worker(cfg, data=None):
    """The worker's experiment for ``cfg`` (built once per process): kernels on one thread.
    ``data``: the observations the run's process built (simulated data is not simulated again
    in every worker); None: the worker builds them (a dataset file: mapped, not shipped)."""
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    ex = _WORKER_EXPERIMENTS.get(key)
    if ex is None:
        import numba

        from engine.run import registry

        numba.set_num_threads(1)
        _WORKER_EXPERIMENTS.clear()  # one experiment per worker: a sweep's next point replaces it
        ex = registry.load_experiment(cfg, data=data)
        ex.warmup()  # load the kernels from the cache, so that no episode's time holds it
        ex.train()  # a saved model: learns nothing, readies evaluate_episode
        _WORKER_EXPERIMENTS[key] = ex
    return ex


def _test_pause_in_worker() -> None:
    """Test-only (``tests/test_workers.py``): with ``ENGINE_TEST_PAUSE_AT=worker_task`` and
    ``ENGINE_TEST_PAUSE_FILE=PATH``, the first task to finish its episodes in any worker (of
    any process: it claims ``PATH.once``) writes ``"<pid> worker_task"`` to PATH and waits
    until PATH is deleted before it returns their records, so that a test can kill that
    worker mid-task, its records computed but not delivered."""
    if os.environ.get("ENGINE_TEST_PAUSE_AT") != "worker_task" or not os.environ.get("ENGINE_TEST_PAUSE_FILE"):
        return
    try:
        os.close(os.open(os.environ["ENGINE_TEST_PAUSE_FILE"] + ".once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    from engine.run.results import pause_point

    pause_point("worker_task")


def prepare_worker(cfg, data=None) -> None:
    """Run once in each worker before the evaluation is timed: builds its experiment (see
    :func:`_experiment_in_worker`). Errors are left to the tasks, which report them."""
    try:
        _experiment_in_worker(cfg, data)
    except Exception:  # noqa: BLE001 - the worker's first task meets it again and reports it
        log.debug("worker preparation failed", exc_info=True)


def evaluate_chunk(cfg, pairs, data=None) -> list:
    """Run in a worker: ``[(epoch, episode, record), ...]`` of evaluation episodes ``pairs``
    ((epoch, episode), ...); a user error (a model or data file this worker cannot read) comes
    back as ``("error", message, worker)`` instead of raising (it would fail the same way on
    every try)."""
    import numba

    try:
        ex = _experiment_in_worker(cfg, data)
        numba.set_num_threads(1)
        records = [(int(p), int(e), ex.evaluate_episode(int(p), int(e))) for p, e in pairs]
        _test_pause_in_worker()
        return records
    except UserError as exc:
        import socket

        return ("error", str(exc), f"{socket.gethostname()} (pid {os.getpid()})")


def _chunks(pairs: list, n: int) -> list:
    size = max(1, -(-len(pairs) // n))
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def _quiet_dask() -> None:
    if not log.isEnabledFor(logging.DEBUG):  # the scheduler's INFO lines, unless -vv
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                     "distributed.http.proxy", "distributed.worker", "distributed.client", "distributed.comm"):
            logging.getLogger(name).setLevel(logging.ERROR)


class Cluster:
    """Where evaluation tasks go: a ``LocalCluster`` of ``workers`` processes started here,
    or the running cluster of the scheduler at ``scheduler``. A context manager (closes the
    client, and a local cluster); one serves every evaluation of a sweep.

    ``start_s``: seconds to start the local cluster and its workers, or to connect to the
    scheduler and see a worker; ``n_workers``: its workers now."""

    def __init__(self, workers: int = 1, scheduler: str | None = None, where: str = "<config>"):
        self.workers, self.scheduler, self.where = workers, scheduler, where
        self.client = None
        self._local = None
        self.start_s: float | None = None
        self.setup_s: float | None = None

    @classmethod
    def for_config(cls, cfg) -> "Cluster":
        return cls(cfg.execution.workers, cfg.execution.scheduler, cfg.source_file)

    def __enter__(self) -> "Cluster":
        _quiet_dask()
        from distributed import Client

        t0 = time.perf_counter()
        try:
            if self.scheduler is None:
                from distributed import LocalCluster

                self._local = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
                self.client = Client(self._local)
                self.client.wait_for_workers(self.workers)
            else:
                self._connect(Client)
        except BaseException:
            self.close()
            raise
        self.start_s = time.perf_counter() - t0
        return self

    def _connect(self, Client) -> None:
        where = f"{self.where}: execution.scheduler"
        try:
            self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise UserError(f"{where}: cannot reach the Dask scheduler at {self.scheduler} within "
                            f"{CONNECT_TIMEOUT_S} s ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "start one with: dask scheduler (and workers: dask worker ADDRESS --nthreads 1)") from None
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, OSError):
            raise UserError(f"{where}: no worker joined the Dask scheduler at {self.scheduler} within "
                            f"{WORKER_WAIT_S} s; start some: dask worker {self.scheduler} --nthreads 1") from None

    @property
    def n_workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None
        if self._local is not None:
            try:
                self._local.close()
            finally:
                self._local = None

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _prepare(self, cfg, data) -> None:
        """Every worker there is now builds ``cfg``'s experiment (data, saved model, kernels
        loaded from the cache), before the evaluation's clock starts: that is start-up, like
        the cluster's (``worker_setup_s``), not evaluation. A worker that joins later (or
        replaces a dead one) builds it in its first task instead; a worker that fails here
        reports its error in its tasks, where it is handled."""
        from distributed import wait

        addresses = list(self.client.scheduler_info().get("workers", {}))
        ready = [self.client.submit(prepare_worker, cfg, data, workers=[a], allow_other_workers=True, pure=False)
                 for a in addresses]
        wait(ready)
        del ready

    def evaluate(self, cfg, pairs: list, data=None, on_part=None) -> tuple[list, float, int]:
        """The records of ``pairs`` (in that order) evaluated by the cluster's workers, the
        seconds it took and the workers there were at its start. Tasks carry their episodes' index: the records are collected by
        it, each episode once, whichever worker (or retry) delivered it. ``data``: observations
        sent to every worker once (see :func:`shipped_data`), else each worker builds them.
        ``on_part``: called with each task's ``[(epoch, episode, record), ...]`` as it arrives
        (a retried task's repeats included: :class:`EvaluationEvents` keeps the first)."""
        from distributed import as_completed

        pairs = [(int(p), int(e)) for p, e in pairs]
        t_setup = time.perf_counter()
        n_workers = self.n_workers
        chunks = _chunks(pairs, max(1, n_workers) * TASKS_PER_WORKER)
        shipped = [None] * len(chunks)
        if data is not None:
            shipped = [self.client.scatter(data, broadcast=True, hash=False)] * len(chunks)
        self._prepare(cfg, shipped[0])
        t1 = time.perf_counter()
        self.setup_s = t1 - t_setup
        futures = self.client.map(evaluate_chunk, [cfg] * len(chunks), chunks, shipped, pure=False,
                                  retries=TASK_RETRIES)
        got: dict = {}
        try:
            for future in as_completed(futures):
                try:
                    part = future.result()
                except Exception as exc:  # noqa: BLE001 - Dask re-raises the task's error here
                    name = type(exc).__name__
                    if name == "KilledWorker":
                        raise UserError(f"{cfg.source_file}: the Dask workers evaluating episodes died too often "
                                        f"(distributed.scheduler.allowed-failures): {str(exc).splitlines()[0]}") from None
                    raise
                if isinstance(part, tuple) and part and part[0] == "error":
                    raise UserError(f"{part[1]} (in the Dask worker on {part[2]})")
                for p, e, record in part:
                    got.setdefault((p, e), record)  # once, even if a retried task delivered it again
                if on_part is not None:
                    on_part(part)
        except BaseException:
            self.client.cancel([f for f in futures if not f.done()])
            raise
        finally:
            del futures
        missing = [pe for pe in pairs if pe not in got]
        if missing:
            raise RuntimeError(f"{len(missing)} evaluation episodes came back from no worker (first {missing[0]})")
        return [got[pe] for pe in pairs], time.perf_counter() - t1, n_workers


def shipped_data(experiment, cfg):
    """What the workers get from the run's process: its observations when they were made here
    (simulated, generated: the workers would make them again, ~4 s each for shapes_10); None
    for a dataset file, which every worker maps itself (on several machines: the same path)."""
    if cfg.data.source == "dataset":
        return None
    return getattr(experiment, "data", None)


def evaluate_distributed(cfg, pairs: list, cluster: Cluster | None = None, data=None,
                         on_part=None) -> tuple[list, dict]:
    """Evaluate ``pairs`` over Dask workers: ``cluster`` when given (a sweep's), else a
    :class:`Cluster` for ``cfg`` (a local one of ``execution.workers`` processes, or the
    scheduler's). ``data``, ``on_part``: see :meth:`Cluster.evaluate`. The records in the order
    of ``pairs`` and :func:`execution_info`'s fields."""
    if cluster is None:
        check_workers(cfg)
        with Cluster.for_config(cfg) as own:
            return evaluate_distributed(cfg, pairs, own, data, on_part)
    records, eval_s, n = cluster.evaluate(cfg, pairs, data, on_part)
    log.info("evaluated %d episodes on %d workers in %.2f s (cluster start %.2f s)", len(records), n, eval_s,
             cluster.start_s or 0.0)
    return records, {"workers": n, "scheduler": cluster.scheduler, "eval_s": eval_s,
                     "cluster_start_s": cluster.start_s, "worker_setup_s": cluster.setup_s}


def execution_info(cfg, run_s: float | None = None) -> dict:
    """``workers``, ``scheduler``, ``eval_s``, ``cluster_start_s``, ``worker_setup_s`` of a run in
    one process."""
    return {"workers": cfg.execution.workers, "scheduler": None,
            "eval_s": run_s if cfg.model.path is not None else None, "cluster_start_s": None,
            "worker_setup_s": None}


#: hook events a run over workers cannot call: the steps happen in another process
STEP_EVENTS = ("before_step", "after_step")


class EvaluationEvents:
    """This process's side of an evaluation done by workers: the progress bar, which counts
    episodes as their records arrive, and the evaluation's hook events, emitted as a run in
    one process emits them (``before_epoch``, then per episode ``before_episode`` and
    ``after_episode`` with its record, then ``after_epoch``; mode "eval"), in evaluation order
    as soon as every earlier episode has arrived. ``before_episode`` therefore comes when the
    episode's record is in, just before its ``after_episode``, not when a worker starts it."""

    def __init__(self, experiment, pairs: list):
        self.experiment = experiment
        self.pairs = [(int(p), int(e)) for p, e in pairs]
        self.at = {pe: i for i, pe in enumerate(self.pairs)}
        self.records: list = [None] * len(self.pairs)
        self.next = 0  # the first episode whose events are not emitted yet
        self.bar = None
        if getattr(experiment, "progress", False) and self.pairs:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.pairs), unit="episode", leave=False)

    def _emit(self, name: str, **fields) -> None:
        self.experiment.hooks.emit(name, self.experiment, mode="eval", **fields)

    def arrived(self, part) -> None:
        """A task's ``[(epoch, episode, record), ...]`` is in."""
        new = 0
        for p, e, record in part:
            i = self.at[(int(p), int(e))]
            if self.records[i] is None:  # a retried task's repeat is not counted twice
                self.records[i] = record
                new += 1
        if self.bar is not None and new:
            self.bar.update(new)
        while self.next < len(self.pairs) and self.records[self.next] is not None:
            p, e = self.pairs[self.next]
            if self.next == 0 or self.pairs[self.next - 1][0] != p:
                self._emit("before_epoch", epoch=p)
            self._emit("before_episode", epoch=p, episode=e)
            self._emit("after_episode", epoch=p, episode=e, record=self.records[self.next])
            self.next += 1
            if self.next == len(self.pairs) or self.pairs[self.next][0] != p:
                self._emit("after_epoch", epoch=p)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_hooks(experiment) -> None:
    """A ValueError when ``experiment`` has a per-step hook: over workers no step of the
    evaluation runs in this process."""
    by_event = experiment.hooks.by_event
    named = [e for e in STEP_EVENTS if by_event.get(e)]
    if named:
        raise ValueError(f"{' and '.join(named)} hooks need the evaluation's steps in this process: run it without "
                         "execution.workers / execution.scheduler (episode, epoch and experiment hooks do work "
                         "over workers)")


def run(experiment, cfg, cluster: Cluster | None = None):
    """The experiment's result and :func:`execution_info`: in this process (``ex.run()``),
    or its evaluation over Dask workers (``cluster``, else ``execution.workers > 1`` or
    ``execution.scheduler``), with the experiment's hooks (except per-step ones, a
    ValueError: :func:`check_hooks`) and progress bar in this process
    (:class:`EvaluationEvents`)."""
    if cluster is None and not distributed(cfg):
        result = experiment.run()
        return result, execution_info(cfg, getattr(result, "run_s", None))
    check_hooks(experiment)
    t0 = time.perf_counter()
    experiment.hooks.emit("before_experiment", experiment)
    compile_s = experiment.compile_s if experiment.compile_s is not None else experiment.warmup()
    experiment.train()
    pairs = experiment.evaluation_pairs()
    events = EvaluationEvents(experiment, pairs)
    try:
        records, info = evaluate_distributed(cfg, pairs, cluster, shipped_data(experiment, cfg), events.arrived)
    finally:
        events.close()
    result = experiment.result_from_records(records, compile_s=compile_s, run_s=time.perf_counter() - t0)
    experiment.hooks.emit("after_experiment", experiment, result=result)
    return result, info
