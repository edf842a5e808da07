"""The ``similarity`` and ``nearest`` models: a store of observations, matched by similarity.

The experiment lifecycle: run -> train / evaluate -> epoch -> episode -> step.
``Experiment.run`` trains for ``n_train_epochs`` epochs (the store keeps
growing across them), then evaluates for ``n_eval_epochs`` epochs against the
fixed store. It picks the coarsest way to cross into compiled code that the
registered hooks allow:

- no hooks below the experiment level: the whole run is one call of
  ``kernels.loop.run_experiment_packed``;
- epoch hooks (or a progress bar): one kernel call per epoch;
- episode hooks: one kernel call per episode;
- step hooks or ``execution.stepwise``: the stepwise path, a Python loop with
  one kernel call per step (for debugging and line profiling; same results).

Hooks are plain callables registered with ``add_hook(event, fn)``; each gets a
``HookEvent`` (:mod:`engine.run.hooks`, the same for every model type). The module's
top-level ``build``, ``describe_data``, ``warmup_config``, ``profile_run`` and
``KERNEL_MODULES`` are the model type's side of :mod:`engine.run.registry`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kernels import loop as kloop
from kernels.nearest import nearest_match_step
from kernels.store import STORAGE_DTYPES, bytes_per_observation

from engine import __version__
from engine.config import Config
from engine.data import sources
from engine.errors import UserError
from engine.run.hooks import EVENTS, HookEvent, Hooks, ignore
from engine.run.results import RunReport, shown_rows

log = logging.getLogger(__name__)

REASONS = kloop.REASON_NAMES
_NO_THRESHOLD = np.float32(np.inf)


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode, as printed in the summary table and written to episodes.csv."""

    mode: str
    epoch: int
    episode: int
    object: str
    steps: int
    stored: int
    confidence: float
    reason: str


class RunResult:
    """Per-episode outputs of a run, epoch-major (entry ``epoch * E + episode``).

    The outputs live in the three flat arrays the run's kernel writes
    (``kernels.loop.run_experiment_packed``): ``counts`` int64 (training steps,
    stored observations after each training episode, evaluation steps),
    ``confidence`` float32 and ``reasons`` int8 (training, then evaluation).
    The attributes below are views of them; writing to a view writes the result.

    ``train_steps`` int64 (n_train_epochs * E_train,), ``train_stored`` int64
    (stored observations after each training episode), ``train_reason`` int8
    (index into REASONS); ``eval_steps`` int64 (n_eval_epochs * E_eval,),
    ``eval_confidence`` float32 (confidence at the end of each evaluation
    episode), ``eval_reason`` int8. ``n_stored``: observations in the store
    after training; ``store`` float32 (3 + F, capacity), the model's stored
    observations (unused by ``nearest``, whose ``index`` is a NearestIndex);
    ``run_s`` the run's wall time, hooks included; ``path`` "fused" or
    "stepwise"; ``kernel_calls`` the calls into compiled code that ran episodes.

    A plain class with slots, not a dataclass: building one is part of every
    run, and a 12-field dataclass took 1.3 us of the 10 x 10 seed row's ~20.
    """

    __slots__ = ("counts", "confidence", "reasons", "n_train", "n_stored", "store", "run_s", "path",
                 "kernel_calls", "index")

    def __init__(self, counts: np.ndarray, confidence: np.ndarray, reasons: np.ndarray, n_train: int,
                 store: np.ndarray, n_stored: int = 0, run_s: float = 0.0, path: str = "fused",
                 kernel_calls: int = 0, index=None):
        self.counts, self.confidence, self.reasons, self.n_train = counts, confidence, reasons, n_train
        self.store, self.n_stored, self.run_s, self.path = store, n_stored, run_s, path
        self.kernel_calls, self.index = kernel_calls, index

    @property
    def train_steps(self) -> np.ndarray:
        return self.counts[:self.n_train]

    @property
    def train_stored(self) -> np.ndarray:
        return self.counts[self.n_train:2 * self.n_train]

    @property
    def train_reason(self) -> np.ndarray:
        return self.reasons[:self.n_train]

    @property
    def eval_steps(self) -> np.ndarray:
        return self.counts[2 * self.n_train:]

    @property
    def eval_confidence(self) -> np.ndarray:
        return self.confidence

    @property
    def eval_reason(self) -> np.ndarray:
        return self.reasons[self.n_train:]

    @property
    def final_confidence(self) -> float | None:
        """Confidence at the end of the last evaluation episode (None without evaluation)."""
        return float(self.confidence[-1]) if self.confidence.size else None

    @property
    def bytes_per_observation(self) -> float:
        """Bytes per stored observation: the store's, or for ``nearest`` the tree's and features'."""
        if self.index is not None:
            return self.index.bytes_per_observation()
        return bytes_per_observation(self.store)

    def __repr__(self) -> str:
        return (f"RunResult(path={self.path!r}, n_stored={self.n_stored}, train episodes {self.n_train}, "
                f"eval episodes {self.confidence.shape[0]}, final_confidence={self.final_confidence}, "
                f"run_s={self.run_s:.6f})")


class Experiment:
    """A configured experiment of the ``similarity`` model, ready to run.

    Parameters
    ----------
    config : a validated ``engine.config.Config``
    observations : ``engine.data.sources.Observations``; built from ``config.data`` when None
    progress : show a progress bar (tqdm, on stderr) when the run looks long

    It is the similarity and nearest models' :class:`engine.run.registry.LearningModule`.
    """

    HOOK_EVENTS = EVENTS

    def __init__(self, config: Config, observations: sources.Observations | None = None, *, progress: bool = False):
        self.config = config
        self.obs = observations if observations is not None else sources.build(config.data.source, config.data.params)
        self.progress = progress
        self.hooks = Hooks(self.HOOK_EVENTS)
        self._hooks = self.hooks.by_event  # the lists themselves: run() looks at two of them each time
        self.compile_s: float | None = None  # set by warmup()
        self._trained: RunResult | None = None  # set by train(), for evaluate_episode()
        #: the saved model this experiment evaluates (engine.run.model_file.SavedModel), set by
        #: use_saved_model; None: it trains
        self.saved = None
        self._saved_state = None  # (store, index, n_stored, training record) of the saved model
        exp = config.experiment
        self.n_train_epochs = exp.n_train_epochs if exp.do_train else 0
        self.n_eval_epochs = exp.n_eval_epochs if exp.do_eval else 0
        t = config.model.confidence_threshold
        self.threshold = _NO_THRESHOLD if t is None else np.float32(t)
        if config.model.storage == "float16":
            self._check_float16_range()
        # What every run needs and the experiment fixes (the config and the observations do
        # not change once it is built), worked out once here and not in each run: the 10 x 10
        # seed row's whole run takes ~10 us, and this was ~1 us of it.
        o = self.obs
        self._nearest = config.model.type == "nearest"
        self._capacity = int(kloop.training_steps_needed(o.train_starts, o.train_stops, exp.max_train_steps,
                                                         self.n_train_epochs))
        # The store's shape and dtype, as kernels.store.new_store makes them; run() allocates
        # with np.zeros directly, since new_store's checks (done by the config) cost 0.45 us.
        self._store_shape = (3 + o.n_features, 0 if self._nearest else self._capacity)
        self._store_dtype = STORAGE_DTYPES[config.model.storage]
        self._plan = kloop.pack_plan(o.train_starts, o.train_stops, self.n_train_epochs, exp.max_train_steps,
                                     o.eval_starts, o.eval_stops, self.n_eval_epochs, exp.max_eval_steps,
                                     config.execution.chunk_size)
        self._n_train, self._n_eval = kloop.packed_sizes(self._plan)

    def use_saved_model(self, saved, store: np.ndarray, index, n_stored: int, record: dict) -> None:
        """Evaluate a saved store (``store``, or for ``nearest`` the ``index`` with an empty
        ``store``) of ``n_stored`` observations instead of training. ``record``: the
        training that built it (``train_steps``, ``train_stored``, ``train_reason`` arrays,
        ``n_train_epochs``, ``n_train_episodes``, ``train_objects``), which the results
        report as this run's training rows (no training runs)."""
        o, exp = self.obs, self.config.experiment
        self.saved = saved
        self._saved_state = (store, index, int(n_stored), record)
        self.n_train_epochs = 0
        self._capacity = int(n_stored)
        self._store_shape, self._store_dtype = store.shape, store.dtype
        empty = np.zeros(0, np.int64)
        self._plan = kloop.pack_plan(empty, empty, 0, exp.max_train_steps, o.eval_starts, o.eval_stops,
                                     self.n_eval_epochs, exp.max_eval_steps, self.config.execution.chunk_size,
                                     n_stored=int(n_stored))
        self._n_train = int(record["train_steps"].shape[0])
        self._n_eval = kloop.packed_sizes(self._plan)[1]

    def _train_layout(self) -> tuple[int, int, tuple]:
        """(training epochs, training episodes per epoch, their objects) of the results' training
        rows: this run's, or the saved model's training."""
        if self._saved_state is not None:
            r = self._saved_state[3]
            return int(r["n_train_epochs"]), int(r["n_train_episodes"]), tuple(r["train_objects"])
        o = self.obs
        return self.n_train_epochs, o.train_starts.shape[0], o.train_objects

    def _check_float16_range(self) -> None:
        from kernels.compact import FLOAT16_MAX

        for name, a in (("location", self.obs.location), ("features", self.obs.features)):
            biggest = max(-float(a.min()), float(a.max())) if a.size else 0.0  # no |a| copy of the data
            if biggest > FLOAT16_MAX:
                raise UserError(f"model.storage: float16 cannot hold the data's {name} values "
                                f"(up to {biggest:g}; float16 ends at {FLOAT16_MAX:g}): use storage: float32")

    # -- hooks ---------------------------------------------------------------
    @property
    def data(self) -> sources.Observations:
        """The observations (``build(cfg, data=...)`` takes them back: Dask workers get the run's)."""
        return self.obs

    def add_hook(self, event: str, fn: Callable[[HookEvent], None]) -> None:
        """Register ``fn`` to be called with a ``HookEvent`` at ``event`` (one of ``HOOK_EVENTS``)."""
        self.hooks.add(event, fn)

    def _emit(self, name: str, **fields) -> None:
        self.hooks.emit(name, self, **fields)

    def _has(self, *names: str) -> bool:
        return self.hooks.has(*names)

    # -- sizes ---------------------------------------------------------------
    def capacity(self) -> int:
        """Observations the store must hold: every training step of every training epoch."""
        return self._capacity

    def estimated_comparisons(self) -> int:
        """Stored x evaluation steps: the matching work if no episode stops early."""
        o = self.obs
        ev = np.minimum(o.eval_stops - o.eval_starts, self.config.experiment.max_eval_steps).sum()
        return self.capacity() * int(ev) * self.n_eval_epochs

    def granularity(self) -> str:
        """How the run crosses into compiled code: "run", "epoch", "episode" or "step"."""
        if not self.hooks.granular and not self.progress and not self.config.execution.stepwise:
            return "run"  # the common case, decided without looking at each event's hooks
        if self.config.execution.stepwise or self._has("before_step", "after_step"):
            return "step"
        if self._has("before_episode", "after_episode"):
            return "episode"
        if self._has("before_epoch", "after_epoch") or (self.progress and self.estimated_comparisons() > 10**10):
            return "epoch"
        return "run"

    # -- running -------------------------------------------------------------
    def warmup(self, timers: bool = False) -> float:
        """Compile (or load from numba's cache) the kernels this run will call; returns seconds.

        Runs the same path on a two-step copy of the data (same array types,
        hence the same compiled signatures), so ``run`` then measures run time
        only.
        """
        o = self.obs
        k = min(2, o.location.shape[0])
        tiny = sources.Observations(o.location[:k], o.features[:k], o.feature_names,
                                    np.array([0], np.int64), np.array([k], np.int64),
                                    np.array([0], np.int64), np.array([k], np.int64), ("",), ("",))
        probe = Experiment(self.config, tiny)
        for name in EVENTS:  # same granularity, same kernels, but no user hook is called
            if self._hooks[name]:
                probe.add_hook(name, ignore)
        t0 = time.perf_counter()
        probe.run(np.zeros((len(kloop.TIMED_KERNELS), 2), np.int64) if timers else None)
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    def run(self, timers: np.ndarray | None = None) -> RunResult:
        """Run the whole experiment and return its per-episode results.

        ``timers`` (int64 (len(kernels.loop.TIMED_KERNELS), 2), see
        ``kernels.timing``) collects per-kernel calls and cycle counts on the
        fused single-call path (used by ``engine.models.profile``).
        """
        t0 = time.perf_counter()
        out = self._new_result()
        if self._hooks["before_experiment"]:
            self._emit("before_experiment")
        mode = self.granularity()
        if self._nearest and mode == "run":
            mode = "epoch"  # the index is rebuilt after each training episode, in Python
        if mode == "run":
            o = self.obs
            if self._saved_state is None:
                out.n_stored = kloop.run_experiment_packed(out.store, o.location, o.features, self._plan,
                                                           self.threshold, out.counts, out.confidence, out.reasons,
                                                           timers)
            else:  # the plan trains nothing: its outputs are the evaluation entries
                n_tr = out.n_train
                kloop.run_experiment_packed(out.store, o.location, o.features, self._plan, self.threshold,
                                            out.counts[2 * n_tr:], out.confidence, out.reasons[n_tr:], timers)
            out.kernel_calls = 1
        else:
            if timers is not None:
                raise ValueError("kernel timers need the single-call fused path of the similarity model "
                                 "(no epoch, episode or step hooks)")
            self._run_granular(out, mode)
        out.run_s = time.perf_counter() - t0
        if self._hooks["after_experiment"]:
            self._emit("after_experiment", result=out)
        return out

    def _new_result(self) -> RunResult:
        """Empty outputs of a run (np.empty: every entry is written by whichever path runs)."""
        n_tr, n_ev = self._n_train, self._n_eval
        if self._saved_state is not None:
            store, index, n_stored, r = self._saved_state
            out = RunResult(np.empty(2 * n_tr + n_ev, np.int64), np.empty(n_ev, np.float32),
                            np.empty(n_tr + n_ev, np.int8), n_tr, store, n_stored, index=index)
            out.counts[:n_tr], out.counts[n_tr:2 * n_tr] = r["train_steps"], r["train_stored"]
            out.reasons[:n_tr] = r["train_reason"]
            return out
        out = RunResult(np.empty(2 * n_tr + n_ev, np.int64), np.empty(n_ev, np.float32),
                        np.empty(n_tr + n_ev, np.int8), n_tr, np.zeros(self._store_shape, self._store_dtype))
        if self._nearest:
            from engine.models.nearest_index import NearestIndex

            out.index = NearestIndex(self.obs.n_features, self.config.model.storage)
        return out

    def _run_granular(self, out: RunResult, mode: str) -> None:
        bar = self._progress_bar()
        for mode_name in ("train", "eval"):
            self._run_epochs(out, mode_name, mode, bar)
        if bar is not None:
            bar.close()
        if mode == "step":
            out.path = "stepwise"

    def _run_epochs(self, out: RunResult, mode_name: str, mode: str, bar=None) -> None:
        """Every epoch of ``mode_name`` ("train" or "eval"), one kernel call per epoch,
        per episode or per step (``mode``)."""
        o = self.obs
        if mode_name == "train":
            n_epochs, starts, stops = self.n_train_epochs, o.train_starts, o.train_stops
        else:
            n_epochs, starts, stops = self.n_eval_epochs, o.eval_starts, o.eval_stops
        n_ep = starts.shape[0]
        for epoch in range(n_epochs):
            self._emit("before_epoch", mode=mode_name, epoch=epoch)
            base = epoch * n_ep
            if mode == "epoch":
                self._episodes(out, mode_name, starts, stops, base)
            else:
                for e in range(n_ep):
                    self._emit("before_episode", mode=mode_name, epoch=epoch, episode=e)
                    if mode == "step":
                        self._episode_stepwise(out, mode_name, epoch, e, starts[e], stops[e], base + e)
                    else:
                        self._episodes(out, mode_name, starts[e:e + 1], stops[e:e + 1], base + e)
                    if self._hooks["after_episode"]:
                        self._emit("after_episode", mode=mode_name, epoch=epoch, episode=e,
                                   record=self._record(out, mode_name, epoch, e))
            self._emit("after_epoch", mode=mode_name, epoch=epoch)
            if bar is not None:
                bar.update(1)

    def train(self) -> float:
        """Run the training epochs only and keep the trained store for
        :meth:`evaluate_episode`; returns the wall time (s).

        Same kernels and results as the training part of :meth:`run` (one call per
        epoch, or per episode / step when such hooks or the stepwise path ask for it).
        """
        t0 = time.perf_counter()
        out = self._new_result()
        mode = self.granularity()
        self._run_epochs(out, "train", "epoch" if mode == "run" else mode)
        if mode == "step":
            out.path = "stepwise"
        self._trained = out
        return time.perf_counter() - t0

    def evaluate_episode(self, epoch: int, episode: int) -> EpisodeRecord:
        """Evaluate one evaluation episode against the store :meth:`train` built; its record.

        The store is fixed while evaluating, so episodes are independent: the record
        equals the one :meth:`run` gives for the same epoch and episode.
        """
        out = self._trained
        if out is None:
            raise RuntimeError("evaluate_episode needs a trained store: call train() first")
        o = self.obs
        n_ep = o.eval_starts.shape[0]
        if not (0 <= epoch < self.n_eval_epochs and 0 <= episode < n_ep):
            raise IndexError(f"evaluation episode ({epoch}, {episode}) out of range "
                             f"({self.n_eval_epochs} evaluation epochs of {n_ep} episodes)")
        at = epoch * n_ep + episode
        start, stop = o.eval_starts[episode], o.eval_stops[episode]
        if self.granularity() == "step":
            self._episode_stepwise(out, "eval", epoch, episode, start, stop, at)
        else:
            self._episodes(out, "eval", o.eval_starts[episode:episode + 1], o.eval_stops[episode:episode + 1], at)
        return self._record(out, "eval", epoch, episode)

    def evaluation_pairs(self) -> list[tuple[int, int]]:
        """(epoch, episode) of every evaluation episode, epoch-major (the results' order)."""
        n = self.obs.eval_starts.shape[0]
        return [(p, e) for p in range(self.n_eval_epochs) for e in range(n)]

    def result_from_records(self, records, *, compile_s: float | None = None, run_s: float = 0.0) -> RunResult:
        """The result of a run whose evaluation episodes ``records`` (in ``evaluation_pairs``
        order) were evaluated elsewhere (``engine.run.workers``), after ``train``: the
        training entries are this experiment's (a saved model's record), the evaluation
        entries the records'. ``kernel_calls``: the calls the records took (one per episode,
        one per step on the stepwise path)."""
        out = self._new_result() if self._saved_state is not None else self._trained
        if out is None:
            raise RuntimeError("result_from_records needs a trained store: call train() first")
        records = list(records)
        if len(records) != out.eval_confidence.shape[0]:
            raise ValueError(f"{len(records)} records for {out.eval_confidence.shape[0]} evaluation episodes")
        for i, r in enumerate(records):
            out.eval_steps[i], out.eval_confidence[i] = r.steps, r.confidence
            out.eval_reason[i] = REASONS.index(r.reason)
        stepwise = self.granularity() == "step"
        out.path = "stepwise" if stepwise else "fused"
        out.kernel_calls = sum(r.steps for r in records) if stepwise else len(records)
        out.run_s = run_s
        return out

    def _episodes(self, out: RunResult, mode: str, starts, stops, at: int) -> None:
        """Run episodes ``starts/stops`` in one kernel call; outputs go to entries ``at...``."""
        o = self.obs
        exp = self.config.experiment
        k = starts.shape[0]
        if out.index is not None:
            self._episodes_nearest(out, mode, starts, stops, at)
        elif mode == "train":
            out.n_stored = int(kloop.train_episodes(
                out.store, out.n_stored, o.location, o.features, starts, stops, exp.max_train_steps,
                out.train_steps[at:at + k], out.train_stored[at:at + k], out.train_reason[at:at + k]))
        else:
            kloop.eval_episodes(out.store, out.n_stored, o.location, o.features, starts, stops,
                                exp.max_eval_steps, self.threshold, self.config.execution.chunk_size,
                                out.eval_steps[at:at + k], out.eval_confidence[at:at + k], out.eval_reason[at:at + k])
        out.kernel_calls += 1

    def _episodes_nearest(self, out: RunResult, mode: str, starts, stops, at: int) -> None:
        """``nearest``: training episodes go into the index one by one (rebuilt after each);
        evaluation episodes run in one ``nearest_eval_episodes`` call."""
        o = self.obs
        m = self.config.model
        exp = self.config.experiment
        k = starts.shape[0]
        if mode == "train":
            for e in range(k):
                length = int(stops[e] - starts[e])
                steps = min(length, exp.max_train_steps)
                out.index.add(o.location, o.features, int(starts[e]), int(starts[e]) + steps,
                              m.dedup_distance, m.dedup_feature)
                out.n_stored = out.index.n
                out.train_steps[at + e], out.train_stored[at + e] = steps, out.n_stored
                out.train_reason[at + e] = kloop.DATA_EXHAUSTED if steps == length else kloop.STEP_LIMIT
        else:
            t = out.index.tree
            kloop.nearest_eval_episodes(t, out.index.features, m.k, self._max_distance(), o.location, o.features,
                                        starts, stops, exp.max_eval_steps, self.threshold,
                                        self.config.execution.chunk_size, out.eval_steps[at:at + k],
                                        out.eval_confidence[at:at + k], out.eval_reason[at:at + k])

    def _max_distance(self) -> float:
        d = self.config.model.max_distance
        return np.inf if d is None else float(d)

    def _episode_stepwise(self, out: RunResult, mode: str, epoch: int, e: int, start: int, stop: int, at: int) -> None:
        """One episode as a Python loop, one kernel call per step (hooks per step)."""
        o = self.obs
        exp = self.config.experiment
        length = int(stop - start)
        limit = min(length, exp.max_train_steps if mode == "train" else exp.max_eval_steps)
        step_hooks = self._has("before_step", "after_step")
        confidence = np.float32(0.0)
        steps = 0
        done = False
        for i in range(limit):
            if step_hooks:
                self._emit("before_step", mode=mode, epoch=epoch, episode=e, step=i)
            t = start + i
            steps = i + 1
            if mode == "train":
                if out.index is None:
                    out.n_stored = kloop.train_step(out.store, out.n_stored, o.location, o.features, t)
                if step_hooks:
                    self._emit("after_step", mode=mode, epoch=epoch, episode=e, step=i)
            else:
                if out.index is None:
                    similarity, confidence = kloop.match_step(out.store, out.n_stored, o.location, o.features, t,
                                                              confidence)
                else:
                    similarity, confidence = nearest_match_step(out.index.tree, out.index.features,
                                                                self.config.model.k, self._max_distance(),
                                                                o.location, o.features, t, confidence)
                confidence = np.float32(confidence)  # numba hands back a Python float: keep one float32 signature
                if step_hooks:
                    self._emit("after_step", mode=mode, epoch=epoch, episode=e, step=i,
                               similarity=float(similarity), confidence=float(confidence))
                if confidence >= self.threshold:
                    done = True
                    break
            out.kernel_calls += 1
        if mode == "train" and out.index is not None:  # the index takes the episode when it ends
            m = self.config.model
            out.index.add(o.location, o.features, int(start), int(start) + steps, m.dedup_distance, m.dedup_feature)
            out.n_stored = out.index.n
        reason = kloop.DONE if done else (kloop.DATA_EXHAUSTED if limit == length else kloop.STEP_LIMIT)
        if mode == "train":
            out.train_steps[at], out.train_stored[at], out.train_reason[at] = steps, out.n_stored, reason
        else:
            out.eval_steps[at], out.eval_confidence[at], out.eval_reason[at] = steps, confidence, reason

    def _progress_bar(self):
        total = self.n_train_epochs + self.n_eval_epochs
        if not self.progress or total == 0:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency, but a missing bar must not stop a run
            return None
        return tqdm(total=total, unit="epoch", desc=self.config.experiment.name, leave=False)

    # -- results -------------------------------------------------------------
    def _record(self, out: RunResult, mode: str, epoch: int, e: int) -> EpisodeRecord:
        o = self.obs
        if mode == "train":
            _, n_ep, objects = self._train_layout()
            i = epoch * n_ep + e
            return EpisodeRecord("train", epoch, e, objects[e] if objects else "",
                                 int(out.train_steps[i]), int(out.train_stored[i]), 0.0,
                                 REASONS[out.train_reason[i]])
        i = epoch * o.eval_starts.shape[0] + e
        return EpisodeRecord("eval", epoch, e, o.eval_objects[e] if o.eval_objects else "",
                             int(out.eval_steps[i]), int(out.n_stored), float(out.eval_confidence[i]),
                             REASONS[out.eval_reason[i]])

    def records(self, out: RunResult) -> list[EpisodeRecord]:
        """Every episode of a finished run, in the order they ran."""
        o = self.obs
        rows = []
        n_epochs, n_ep, _ = self._train_layout()
        for epoch in range(n_epochs):
            rows += [self._record(out, "train", epoch, e) for e in range(n_ep)]
        for epoch in range(self.n_eval_epochs):
            rows += [self._record(out, "eval", epoch, e) for e in range(o.eval_starts.shape[0])]
        return rows


    def report(self, result: RunResult) -> RunReport:
        """The run's summary, episodes.csv rows and printed table (one shape for every model).

        ``summary.json`` keys: see the README's "Output files"; ``compile_s`` is what
        :meth:`warmup` measured (None when it was not called).
        """
        records = self.records(result)
        data = summary(self, result, records)
        data["compile_s"] = self.compile_s
        rows = [[r.mode, r.epoch, r.episode, r.object, r.steps, r.stored, f"{r.confidence:.9g}", r.reason]
                for r in records]
        return RunReport(data, EPISODE_COLUMNS, rows, format_table(records, data))

    def write_extras(self, out_dir, result: RunResult) -> list:
        """Result files beyond summary.json and episodes.csv: none for this model."""
        return []


# --------------------------------------------------------------------------- results

EPISODE_COLUMNS = ("mode", "epoch", "episode", "object", "steps", "stored", "confidence", "reason")


def summary(experiment: Experiment, result: RunResult, records: list[EpisodeRecord]) -> dict:
    """The run's summary as plain data (the content of summary.json, ``compile_s`` aside)."""
    cfg = experiment.config
    evals = [r for r in records if r.mode == "eval"]
    trains = [r for r in records if r.mode == "train"]
    return {
        "engine_version": __version__,
        "experiment": cfg.experiment.name,
        "model": cfg.model.type,
        "data_source": cfg.data.source,
        "path": result.path,
        "n_train_episodes": len(trains),
        "n_eval_episodes": len(evals),
        "train_steps": sum(r.steps for r in trains),
        "eval_steps": sum(r.steps for r in evals),
        "stored_observations": result.n_stored,
        "bytes_per_observation": result.bytes_per_observation,
        "final_confidence": result.final_confidence,
        "mean_eval_confidence": (sum(r.confidence for r in evals) / len(evals)) if evals else None,
        "eval_done": sum(r.reason == "done" for r in evals),
        "reasons": {"train": dict(Counter(r.reason for r in trains)), "eval": dict(Counter(r.reason for r in evals))},
        "run_s": result.run_s,
        "kernel_calls": result.kernel_calls,
        "model_path": experiment.saved.path if experiment.saved is not None else None,
        "model_digest": experiment.saved.digest if experiment.saved is not None else None,
        "trained_on": experiment.saved.trained_on if experiment.saved is not None else None,
        "config": cfg.to_dict(),
    }


def format_table(records: list[EpisodeRecord], summary_data: dict, max_rows: int = 40) -> str:
    """The summary table printed after a run (long runs show the first and last rows)."""
    head = f"{'mode':<5} {'epoch':>5} {'ep':>4} {'object':<12} {'steps':>7} {'stored':>9} {'confidence':>10}  ended"
    lines = [head, "-" * len(head)]
    for r in shown_rows(records, max_rows):
        if r is None:
            lines.append(f"... {len(records) - max_rows} more episodes ...")
            continue
        conf = f"{r.confidence:10.6f}" if r.mode == "eval" else f"{'-':>10}"
        lines.append(f"{r.mode:<5} {r.epoch:>5} {r.episode:>4} {r.object[:12]:<12} {r.steps:>7} {r.stored:>9} {conf}  "
                     f"{r.reason.replace('_', ' ')}")
    s = summary_data
    fc = "-" if s["final_confidence"] is None else f"{s['final_confidence']:.6f}"
    lines.append("")
    lines.append(f"{s['experiment']}: {s['n_train_episodes']} training / {s['n_eval_episodes']} evaluation episodes, "
                 f"{s['stored_observations']} stored observations ({s['bytes_per_observation']} B each), "
                 f"final confidence {fc}, {s['eval_done']} done early; "
                 f"run {s['run_s'] * 1e3:.2f} ms ({s['path']}, {s['kernel_calls']} kernel calls)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the model type's protocol
# (engine.run.registry: what the CLI, warm-up, validate and profile ask of a model type)

#: kernel modules this model calls (the cache inventory of ``python -m engine info``)
KERNEL_MODULES = ("kernels.loop", "kernels.matching", "kernels.distance", "kernels.nearest",
                  "kernels.compact", "kernels.kdtree", "kernels.timing")


def entry_kernel(cfg: Config) -> str:
    """The kernel a run of ``cfg`` spends its compile time on: not in the cache means a
    first run, which compiles (the CLI says so)."""
    return "kernels.loop.nearest_eval_episodes_grouped" if cfg.model.type == "nearest" else \
        "kernels.loop.run_experiment_packed"


def build(cfg: Config, *, progress: bool = False, data=None) -> Experiment:
    """The config's observations (``data``: already built, an experiment's ``data``) and its
    experiment, ready to run."""
    if data is None:
        log.info("building %s observations", cfg.data.source)
        data = sources.build(cfg.data.source, cfg.data.params)
    return Experiment(cfg, data, progress=progress)


def describe_data(cfg: Config) -> str:
    """What the config's data is (built, not run): for ``python -m engine validate``."""
    obs = sources.build(cfg.data.source, cfg.data.params)
    return (f"{cfg.data.source} data: {obs.location.shape[0]} observations, {obs.train_starts.shape[0]} training / "
            f"{obs.eval_starts.shape[0]} evaluation episodes per epoch")


def warmup_config(cfg: Config) -> None:
    """Compile (or load) every kernel signature the config can use: the fused single-call
    path, the per-epoch and per-episode paths, the stepwise path and (similarity) the
    timed profiling path."""
    import dataclasses

    obs = sources.build(cfg.data.source, cfg.data.params)
    for stepwise in (False, True):
        ex_cfg = dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, stepwise=stepwise))
        Experiment(ex_cfg, obs).warmup()
    if cfg.model.type == "similarity":  # the in-kernel timers exist on its single-call path only
        Experiment(cfg, obs).warmup(timers=True)
    for event in ("after_epoch", "after_episode"):
        ex = Experiment(cfg, obs)
        ex.add_hook(event, ignore)
        ex.warmup()


def profile_run(cfg: Config, out_dir, top: int = 10) -> dict:
    """``python -m engine profile``: see :mod:`engine.models.profile`."""
    from engine.models import profile

    return profile.profile_run(cfg, out_dir, top=top)


# --------------------------------------------------------------------------- saved models
# (engine.run.model_file; the registry's optional save_state / load_state)

#: the settings a store is learned with, per model type: a saved model is evaluated only with
#: the same (k, max_distance, confidence_threshold, chunk_size and the step limits may differ)
LEARNING_SETTINGS = {"similarity": ("storage",), "nearest": ("storage", "dedup_distance", "dedup_feature")}


def evaluation_settings(cfg) -> tuple[str, ...]:
    """Config keys (dotted) that a saved store may be evaluated with other values of than it
    was trained with, beside the ones every model type has (``registry.EVALUATION_KEYS``):
    ``model.confidence_threshold``, and for ``nearest`` ``model.k`` and ``model.max_distance``.
    ``python -m engine sweep`` trains once for points that differ only in these."""
    return ("model.confidence_threshold",) + (("model.k", "model.max_distance") if cfg.model.type == "nearest" else ())


#: the KD-tree's arrays in a nearest model file (``tree_`` + the ``kernels.kdtree.KDTree`` field)
_TREE_FIELDS = ("points", "indices", "boxes", "leaf_start", "split_dim", "split_val")
_TRAINING_ARRAYS = (("train_steps", np.int64, ("R",)), ("train_stored", np.int64, ("R",)),
                    ("train_reason", np.int8, ("R",)))


def model_arrays_spec(model_type: str, storage: str) -> tuple:
    """``(name, dtype, shape)`` of the arrays of a similarity or nearest model file (F feature
    columns, n stored observations, R training episodes over all epochs, L KD-tree leaves)."""
    bits = STORAGE_DTYPES[storage]
    if model_type == "similarity":
        store = (("store", bits, ("F+3", "n")),)
    else:
        store = (("tree_points", bits, ("n", 3)), ("tree_indices", np.int32, ("n",)),
                 ("tree_boxes", np.float32, ("B", 6)), ("tree_leaf_start", np.int64, ("L+1",)),
                 ("tree_split_dim", np.int64, ("S",)), ("tree_split_val", np.float32, ("S",)),
                 ("features", bits, ("F", "n")))
    return store + _TRAINING_ARRAYS


def training_digest(experiment: Experiment) -> str:
    """The digest of what training consumed: the feature names and each training episode's
    observations (up to max_train_steps), in order."""
    from engine.run.model_file import digest_arrays

    o, exp = experiment.obs, experiment.config.experiment

    def parts():
        yield np.array([str(n) for n in o.feature_names])
        if experiment.n_train_epochs == 0:
            return
        for s0, s1 in zip(o.train_starts, o.train_stops):
            s1 = min(int(s1), int(s0) + exp.max_train_steps)
            yield o.location[int(s0):s1]
            yield o.features[int(s0):s1]

    return digest_arrays(parts())


def save_state(experiment: Experiment) -> dict:
    """What a model file keeps of a trained similarity or nearest experiment
    (``engine.run.model_file``): the store (or KD-tree and features) and the training's
    per-episode record."""
    from engine.run.model_file import settings_of

    out = experiment._trained
    if out is None:
        raise RuntimeError("save_state needs a trained experiment: call train() first")
    cfg = experiment.config
    if out.index is not None:
        arrays = {f"tree_{name}": getattr(out.index.tree, name) for name in _TREE_FIELDS}
        arrays["features"] = out.index.features
    else:
        arrays = {"store": np.ascontiguousarray(out.store[:, :out.n_stored])}
    arrays.update(train_steps=out.train_steps.copy(), train_stored=out.train_stored.copy(),
                  train_reason=out.train_reason.copy())
    n_epochs, n_ep, objects = experiment._train_layout()
    return {
        "arrays": arrays,
        "feature_columns": [str(n) for n in experiment.obs.feature_names],
        "settings": settings_of(cfg.model, LEARNING_SETTINGS[cfg.model.type]),
        "training": {"n_train_epochs": n_epochs, "n_train_episodes": n_ep, "train_objects": list(objects),
                     "max_train_steps": cfg.experiment.max_train_steps, "n_stored": int(out.n_stored)},
        "trained_on": training_digest(experiment),
    }


def load_state(experiment: Experiment, saved) -> None:
    """Make ``experiment`` evaluate the saved store instead of training: the data's feature
    columns and :data:`LEARNING_SETTINGS` must be the ones it was learned with."""
    from engine.run import model_file

    cfg = experiment.config
    where = cfg.source_file
    model_file.check_feature_columns(saved, experiment.obs.feature_names, where)
    model_file.check_settings(saved, model_file.settings_of(cfg.model, LEARNING_SETTINGS[cfg.model.type]), where,
                              "model")
    training = saved.training
    try:
        n_epochs, n_ep = int(training["n_train_epochs"]), int(training["n_train_episodes"])
        objects = [str(x) for x in training["train_objects"]]
        n_stored = int(training["n_stored"])
    except (KeyError, TypeError, ValueError):
        raise saved.error("member 'meta': 'training' lacks n_train_epochs, n_train_episodes, train_objects "
                          "or n_stored") from None
    if n_epochs < 0 or n_ep < 0 or (objects and len(objects) != n_ep):
        raise saved.error("member 'meta': 'training' has inconsistent episode counts")
    spec = model_arrays_spec(cfg.model.type, cfg.model.storage)
    sizes = model_file.check_arrays(saved, spec, {"F": experiment.obs.n_features, "R": n_epochs * n_ep,
                                                  "n": n_stored})
    a = saved.arrays
    reasons = a["train_reason"]
    if reasons.size and (reasons.min() < 0 or reasons.max() >= len(REASONS)):
        raise saved.error(f"member 'train_reason': reasons must lie in 0..{len(REASONS) - 1}")
    if np.any(a["train_steps"] < 0) or np.any(a["train_stored"] < 0) or np.any(a["train_stored"] > n_stored):
        raise saved.error("member 'train_steps' or 'train_stored': counts must lie in 0..n_stored")
    values = [a["store"]] if "store" in a else [a["tree_points"], a["features"]]
    for name, v in zip(("store",) if "store" in a else ("tree_points", "features"), values):
        f = v.view(np.float16) if v.dtype == np.uint16 else v
        if not np.isfinite(f).all():
            raise saved.error(f"member '{name}' holds infinite values")
    if "store" in a:
        store, index = a["store"], None
    else:
        from kernels import kdtree

        from engine.models.nearest_index import NearestIndex

        tree = kdtree.KDTree(*(a[f"tree_{name}"] for name in _TREE_FIELDS))
        try:
            kdtree._check_tree(tree)
            kdtree._check_tree_contents(tree, saved.path)
        except ValueError as exc:
            raise saved.error(f"the KD-tree is corrupt ({str(exc).split(': ')[-1]})") from None
        if sizes["B"] != 2 * (sizes["L"]) - 1 or sizes["S"] != sizes["L"] - 1:
            raise saved.error("the KD-tree's arrays have inconsistent shapes")
        index = NearestIndex.from_arrays(tree, a["features"], cfg.model.storage)
        store = np.zeros((3 + experiment.obs.n_features, 0), STORAGE_DTYPES[cfg.model.storage])
    record = {"train_steps": a["train_steps"], "train_stored": a["train_stored"], "train_reason": a["train_reason"],
              "n_train_epochs": n_epochs, "n_train_episodes": n_ep, "train_objects": objects}
    experiment.use_saved_model(saved, store, index, n_stored, record)
