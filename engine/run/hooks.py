"""One hook API for every model type.

A hook is a plain callable registered with ``experiment.add_hook(event, fn)``; it is
called with one :class:`HookEvent`. Each model type says which of :data:`EVENTS` it
emits (``HOOK_EVENTS`` on its experiment class); registering any other event is an
error that names the ones it has.

:class:`Hooks` is the registry an experiment keeps: validation, emission, and the
cheap questions the run path asks on every run ("is any hook below the experiment
level registered?") answered without walking every list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

#: Every event any model emits, in the order a run meets them.
EVENTS = ("before_experiment", "after_experiment", "before_epoch", "after_epoch",
          "before_episode", "after_episode", "before_step", "after_step")


@dataclass
class HookEvent:
    """What a hook is told. Fields that do not apply to the event are None.

    Common to every model: ``name`` (the event), ``experiment`` (the experiment that
    emits it), ``mode`` ("train" or "eval"), ``epoch`` (from 0 within its mode),
    ``episode`` (index within the epoch), ``step`` (within the episode, stepwise path
    only), ``record`` (the finished episode's record, after_episode), ``result`` (the
    finished run, after_experiment).

    Model-specific values after a step or episode: ``similarity`` and ``confidence``
    (similarity / nearest, after a matching step); ``n_hypotheses`` (live hypotheses)
    and ``object_evidence`` (float32 (n_objects,), each object's best evidence) after
    an evidence matching step; ``object`` and ``nodes`` (the object's model size) after
    an evidence training episode.
    """

    name: str
    experiment: Any
    mode: str | None = None
    epoch: int | None = None
    episode: int | None = None
    step: int | None = None
    record: Any = None
    result: Any = None
    similarity: float | None = None
    confidence: float | None = None
    n_hypotheses: int | None = None
    object_evidence: Any = None
    object: str | None = None
    nodes: int | None = None


@dataclass
class Hooks:
    """The hooks registered on one experiment, for the events it supports."""

    events: tuple[str, ...]
    by_event: dict[str, list[Callable[[HookEvent], None]]] = field(init=False)
    #: hooks below the experiment level (epoch, episode, step): the fused run path asks
    #: this one number instead of looking at every event's list
    granular: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.by_event = {e: [] for e in self.events}

    def add(self, event: str, fn: Callable[[HookEvent], None]) -> None:
        if event not in self.by_event:
            raise ValueError(f"unknown hook event {event!r}; events: {', '.join(self.events)}")
        if not callable(fn):
            raise TypeError("a hook must be callable")
        self.by_event[event].append(fn)
        if not event.endswith("_experiment"):
            self.granular += 1

    def has(self, *names: str) -> bool:
        """Whether any of ``names`` has a hook (a loop, not any(): asked on every run)."""
        for n in names:
            if self.by_event[n]:
                return True
        return False

    def emit(self, name: str, experiment: Any, **fields) -> None:
        """Call every hook of ``name`` with one HookEvent (built only when there is one)."""
        fns = self.by_event[name]
        if fns:
            ev = HookEvent(name, experiment, **fields)
            for fn in fns:
                fn(ev)


def ignore(event: HookEvent) -> None:
    """A hook that does nothing (stands in for user hooks while warming up a path)."""
