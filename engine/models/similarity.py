"""The experiment lifecycle: run -> train / evaluate -> epoch -> episode -> step.

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
``HookEvent``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kernels import loop as kloop
from kernels.nearest import nearest_match_step
from kernels.store import STORAGE_DTYPES, bytes_per_observation

from engine.data import sources
from engine.config import Config
from engine.errors import UserError

log = logging.getLogger(__name__)

EVENTS = ("before_experiment", "after_experiment", "before_epoch", "after_epoch",
          "before_episode", "after_episode", "before_step", "after_step")
REASONS = kloop.REASON_NAMES
_NO_THRESHOLD = np.float32(np.inf)


@dataclass
class HookEvent:
    """What a hook is told. Fields that do not apply to the event are None.

    ``mode`` is "train" or "eval"; ``epoch`` counts from 0 within its mode;
    ``episode`` is the episode's index within the epoch; ``step`` the step
    within the episode (stepwise path only); ``record`` the finished episode
    (after_episode); ``result`` the finished run (after_experiment);
    ``similarity`` and ``confidence`` the model's values after a matching step.
    """

    name: str
    experiment: "Experiment"
    mode: str | None = None
    epoch: int | None = None
    episode: int | None = None
    step: int | None = None
    record: "EpisodeRecord | None" = None
    result: "RunResult | None" = None
    similarity: float | None = None
    confidence: float | None = None


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
    """

    def __init__(self, config: Config, observations: sources.Observations | None = None, *, progress: bool = False):
        self.config = config
        self.obs = observations if observations is not None else sources.build(config.data.source, config.data.params)
        self.progress = progress
        self._hooks: dict[str, list[Callable[[HookEvent], None]]] = {e: [] for e in EVENTS}
        self._granular_hooks = 0  # hooks below the experiment level (epoch, episode, step)
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

    def _check_float16_range(self) -> None:
        from kernels.compact import FLOAT16_MAX

        for name, a in (("location", self.obs.location), ("features", self.obs.features)):
            biggest = max(-float(a.min()), float(a.max())) if a.size else 0.0  # no |a| copy of the data
            if biggest > FLOAT16_MAX:
                raise UserError(f"model.storage: float16 cannot hold the data's {name} values "
                                f"(up to {biggest:g}; float16 ends at {FLOAT16_MAX:g}): use storage: float32")

    # -- hooks ---------------------------------------------------------------
    def add_hook(self, event: str, fn: Callable[[HookEvent], None]) -> None:
        """Register ``fn`` to be called at ``event`` (one of ``EVENTS``)."""
        if event not in self._hooks:
            raise ValueError(f"unknown hook event {event!r}; events: {', '.join(EVENTS)}")
        if not callable(fn):
            raise TypeError("a hook must be callable")
        self._hooks[event].append(fn)
        if not event.endswith("_experiment"):
            self._granular_hooks += 1

    def _emit(self, name: str, **fields) -> None:
        hooks = self._hooks[name]
        if hooks:
            ev = HookEvent(name, self, **fields)
            for fn in hooks:
                fn(ev)

    def _has(self, *names: str) -> bool:
        for n in names:  # a loop, not any(generator): this runs on every run() (~1 us of a 15 us row)
            if self._hooks[n]:
                return True
        return False

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
        if not self._granular_hooks and not self.progress and not self.config.execution.stepwise:
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
                probe.add_hook(name, _ignore)
        t0 = time.perf_counter()
        probe.run(np.zeros((len(kloop.TIMED_KERNELS), 2), np.int64) if timers else None)
        return time.perf_counter() - t0

    def run(self, timers: np.ndarray | None = None) -> RunResult:
        """Run the whole experiment and return its per-episode results.

        ``timers`` (int64 (len(kernels.loop.TIMED_KERNELS), 2), see
        ``kernels.timing``) collects per-kernel calls and cycle counts on the
        fused single-call path (used by ``engine.run.profile``).
        """
        t0 = time.perf_counter()
        n_tr, n_ev = self._n_train, self._n_eval
        # Outputs are np.empty: every entry is written by whichever path runs.
        out = RunResult(np.empty(2 * n_tr + n_ev, np.int64), np.empty(n_ev, np.float32),
                        np.empty(n_tr + n_ev, np.int8), n_tr, np.zeros(self._store_shape, self._store_dtype))
        if self._nearest:
            from engine.models.nearest_index import NearestIndex

            out.index = NearestIndex(self.obs.n_features, self.config.model.storage)
        if self._hooks["before_experiment"]:
            self._emit("before_experiment")
        mode = self.granularity()
        if self._nearest and mode == "run":
            mode = "epoch"  # the index is rebuilt after each training episode, in Python
        if mode == "run":
            o = self.obs
            out.n_stored = kloop.run_experiment_packed(out.store, o.location, o.features, self._plan, self.threshold,
                                                       out.counts, out.confidence, out.reasons, timers)
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

    def _run_granular(self, out: RunResult, mode: str) -> None:
        o = self.obs
        bar = self._progress_bar()
        for mode_name, n_epochs, starts, stops in (("train", self.n_train_epochs, o.train_starts, o.train_stops),
                                                   ("eval", self.n_eval_epochs, o.eval_starts, o.eval_stops)):
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
        if bar is not None:
            bar.close()
        if mode == "step":
            out.path = "stepwise"

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
            i = epoch * o.train_starts.shape[0] + e
            return EpisodeRecord("train", epoch, e, o.train_objects[e] if o.train_objects else "",
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
        for epoch in range(self.n_train_epochs):
            rows += [self._record(out, "train", epoch, e) for e in range(o.train_starts.shape[0])]
        for epoch in range(self.n_eval_epochs):
            rows += [self._record(out, "eval", epoch, e) for e in range(o.eval_starts.shape[0])]
        return rows


def _ignore(event: HookEvent) -> None:
    """A hook that does nothing (stands in for user hooks during warm-up)."""
