"""Where the time of a run goes: compile time, per-kernel time, hot orchestrator lines.

``profile_run`` runs one experiment three ways and reports:

1. **compile** — every kernel compiled or loaded from numba's cache while
   warming up the fused and the stepwise paths: time spent in that kernel's
   own compilation (callees excluded), and whether numba's cache had it. Then
   the first call against the steady state of the fused run.
2. **kernels** — the fused single-call run with the in-kernel timers of
   ``kernels.timing``: calls, total and mean wall time and share of the run for
   ``run_experiment_packed`` and the kernels it spends its time in (what remains of
   it is its own loop bookkeeping).
3. **lines** — line_profiler over the orchestrator's episode and step
   functions (``Experiment._episode_stepwise``, ``Experiment._emit``) on the
   stepwise path (one kernel call per step); the ``.lprof``
   file reads with ``python -m line_profiler FILE``.
"""

from __future__ import annotations

import dataclasses
import linecache
import time
from pathlib import Path


from engine.config import Config
from engine.errors import UserError
from engine.files import atomic_write, atomic_write_text

LPROF_NAME = "lines.lprof"
JSON_NAME = "profile.json"


class CompileRecorder:
    """Records, per kernel dispatcher, time spent compiling or loading it from cache.

    Wraps numba's ``Dispatcher.compile`` while active. A kernel that calls other
    kernels compiles them inside its own compilation: ``compile_s`` is the
    kernel's own share (callees excluded), ``inclusive_s`` the whole.
    """

    def __init__(self, prefix: str = "kernels."):
        self.prefix = prefix
        self.records: dict[str, dict] = {}

    def __enter__(self):
        from numba.core.dispatcher import Dispatcher

        self._cls = Dispatcher
        self._orig = Dispatcher.compile
        stack: list[float] = []
        recorder = self

        def compile(disp, sig):
            hits0, misses0 = sum(disp._cache_hits.values()), sum(disp._cache_misses.values())
            t0 = time.perf_counter()
            stack.append(0.0)
            try:
                return recorder._orig(disp, sig)
            finally:
                dt = time.perf_counter() - t0
                child = stack.pop()
                if stack:
                    stack[-1] += dt
                hits = sum(disp._cache_hits.values()) - hits0
                misses = sum(disp._cache_misses.values()) - misses0
                name = f"{disp.py_func.__module__}.{disp.py_func.__qualname__}"
                if (hits or misses) and name.startswith(recorder.prefix):
                    r = recorder.records.setdefault(name, {"kernel": name, "compile_s": 0.0, "inclusive_s": 0.0,
                                                           "cache_hits": 0, "cache_misses": 0})
                    r["compile_s"] += dt - child
                    r["inclusive_s"] += dt
                    r["cache_hits"] += hits
                    r["cache_misses"] += misses

        Dispatcher.compile = compile
        return self

    def __exit__(self, *exc):
        self._cls.compile = self._orig
        return False

    def rows(self) -> list[dict]:
        rows = []
        for r in sorted(self.records.values(), key=lambda r: -r["compile_s"]):
            cache = "hit" if r["cache_misses"] == 0 else ("miss" if r["cache_hits"] == 0 else "mixed")
            rows.append({**r, "cache": cache})
        return rows


def _kernel_table(run_s: float, call_s: float, timers, rate: float, calls: int = 1) -> list[dict]:
    from kernels.loop import TIMED_KERNELS

    if timers is None:  # the nearest model: per-episode training calls, one evaluation call per epoch
        return [{"kernel": "fused run (kernels.loop.nearest_eval_episodes, kernels.kdtree builds)", "calls": calls,
                 "total_s": call_s, "mean_s": call_s / max(calls, 1), "share": call_s / run_s if run_s else 0.0}]
    rows = [{"kernel": "kernels.loop.run_experiment_packed", "calls": 1, "total_s": call_s, "mean_s": call_s}]
    inner = 0.0
    for name, (calls, ticks) in zip(TIMED_KERNELS, timers):
        if calls:
            total = ticks / rate if rate else float("nan")
            inner += total
            rows.append({"kernel": f"kernels.loop.{name}" if name == "train_episodes" else f"kernels.matching.{name}",
                         "calls": int(calls), "total_s": total, "mean_s": total / calls})
    rows.append({"kernel": "run_experiment_packed (own loop bookkeeping)", "calls": 1,
                 "total_s": max(call_s - inner, 0.0), "mean_s": max(call_s - inner, 0.0)})
    for r in rows:
        r["share"] = r["total_s"] / run_s if run_s > 0 else float("nan")
    return rows


def _line_table(lp, top: int, run_s: float) -> list[dict]:
    """The hottest lines; ``share`` is of the whole stepwise run's wall time."""
    stats = lp.get_stats()
    rows = []
    for (filename, _first, func), lines in stats.timings.items():
        for lineno, hits, t in lines:
            seconds = t * stats.unit
            rows.append({"function": func, "file": filename, "line": lineno, "hits": hits, "time_s": seconds,
                         "source": linecache.getline(filename, lineno).strip()})
    rows.sort(key=lambda r: -r["time_s"])
    for r in rows:
        r["share"] = r["time_s"] / run_s if run_s > 0 else float("nan")
    return rows[:top] if top else rows


def profile_run(config: Config, out_dir: str | Path, top: int = 15, observations=None) -> dict:
    """Profile ``config`` (fused and stepwise) and write the reports into ``out_dir``.

    Returns the report (also written as ``profile.json``); ``lines.lprof``
    beside it holds the full line profile.
    """
    try:
        from line_profiler import LineProfiler
    except ImportError:
        raise UserError("profiling needs line_profiler: pip install '.[test]' (or pip install line_profiler)") from None
    from kernels import timing
    from kernels.loop import TIMED_KERNELS

    from engine.data import sources
    from engine.models.similarity import Experiment

    out_dir = Path(out_dir)
    obs = observations if observations is not None else sources.build(config.data.source, config.data.params)
    fused_cfg = dataclasses.replace(config, execution=dataclasses.replace(config.execution, stepwise=False))
    step_cfg = dataclasses.replace(config, execution=dataclasses.replace(config.execution, stepwise=True))
    fused, stepwise = Experiment(fused_cfg, obs), Experiment(step_cfg, obs)

    # 1. compile: first calls of every path, recorded per kernel
    timed = config.model.type == "similarity"  # in-kernel timers: the similarity model's single-call path
    with CompileRecorder() as rec:
        first_fused_s = fused.warmup()
        first_timed_s = fused.warmup(timers=True) if timed else first_fused_s
        first_step_s = stepwise.warmup()
        rate = timing.ticks_per_second()

    # 2. the fused run, kernel by kernel
    timers = timing.new_timers(len(TIMED_KERNELS)) if timed else None
    t0 = time.perf_counter()
    result = fused.run(timers)
    fused_run_s = time.perf_counter() - t0
    steady_s = fused.warmup()  # the same tiny call as first_fused_s, now compiled

    # 3. the stepwise run under line_profiler
    lp = LineProfiler()
    # The episode and step functions: their lines are the per-step Python work.
    # (Profiling their callers too would count the same time twice.)
    for fn in (Experiment._episode_stepwise, Experiment._emit):
        lp.add_function(fn)
    lp.enable_by_count()
    try:
        step_result = stepwise.run()
    finally:
        lp.disable_by_count()
    out_dir.mkdir(parents=True, exist_ok=True)
    lprof = out_dir / LPROF_NAME
    # line_profiler writes by file name: it rewrites the (empty) temporary file that
    # atomic_write holds open, which then fsyncs and renames it like any other result
    atomic_write(lprof, lambda f: lp.dump_stats(f.name))

    report = {
        "experiment": config.experiment.name,
        "source_file": config.source_file,
        "fused_run_s": fused_run_s,
        "stepwise_run_s": step_result.run_s,
        "final_confidence": result.final_confidence,
        "stepwise_final_confidence": step_result.final_confidence,
        "compile": rec.rows(),
        "first_call": {"fused_first_s": first_fused_s, "fused_timed_first_s": first_timed_s,
                       "stepwise_first_s": first_step_s, "fused_steady_s": steady_s,
                       "compile_or_load_s": max(first_fused_s - steady_s, 0.0)},
        "kernels": _kernel_table(fused_run_s, result.run_s, timers, rate, result.kernel_calls),
        "lines": _line_table(lp, top, step_result.run_s),
        "lprof": str(lprof),
    }
    import json

    atomic_write_text(out_dir / JSON_NAME, json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict, top: int = 10) -> str:
    """The top of each table, for the terminal."""
    lines = [f"profile of {report['experiment']} ({report['source_file']}): fused run "
             f"{report['fused_run_s'] * 1e3:.3f} ms, stepwise run {report['stepwise_run_s'] * 1e3:.3f} ms", ""]
    fc = report["first_call"]
    lines.append(f"Compile / cache load (first call {fc['fused_first_s']:.3f} s vs steady "
                 f"{fc['fused_steady_s'] * 1e3:.3f} ms; stepwise first call {fc['stepwise_first_s']:.3f} s):")
    lines.append(f"  {'kernel':<52} {'own s':>8} {'incl. s':>8}  cache")
    for r in report["compile"][:top]:
        lines.append(f"  {r['kernel']:<52} {r['compile_s']:8.3f} {r['inclusive_s']:8.3f}  {r['cache']}")
    if not report["compile"]:
        lines.append("  (nothing compiled: every kernel was already in memory)")
    lines.append("")
    lines.append("Kernels of the fused run:")
    lines.append(f"  {'kernel':<52} {'calls':>7} {'total ms':>10} {'mean us':>10} {'share':>7}")
    for r in report["kernels"]:
        lines.append(f"  {r['kernel']:<52} {r['calls']:>7} {r['total_s'] * 1e3:10.3f} {r['mean_s'] * 1e6:10.2f} "
                     f"{r['share'] * 100:6.1f}%")
    lines.append("")
    lines.append(f"Hottest orchestrator lines (stepwise path; full profile: python -m line_profiler {report['lprof']}):")
    lines.append(f"  {'share':>6} {'hits':>8} {'ms':>9}  where")
    for r in report["lines"][:top]:
        lines.append(f"  {r['share'] * 100:5.1f}% {r['hits']:>8} {r['time_s'] * 1e3:9.3f}  "
                     f"{Path(r['file']).name}:{r['line']} {r['function']}: {r['source'][:70]}")
    return "\n".join(lines)
