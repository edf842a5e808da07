"""The seed benchmark: the engine against its NumPy and pure Python baselines and the Rust figures.

``run_suite("seed")`` times the seed document's workload (``engine.data.sources.seed_spiral``:
``epochs`` training epochs, then ``epochs`` evaluation epochs, one episode
each, no threshold) on the rows (size, epochs) = (10, 10), (50, 10), (100, 10),
(500, 5), (1000, 2) and two scaling rows (10000, 2), (100000, 1), with four
implementations, interleaved in the same run (for each repeat, each
implementation runs once):

- ``engine``: ``Experiment.run`` on the fused path (one compiled call per run);
- ``engine-stepwise``: ``execution.stepwise`` (a Python loop, one kernel call per step);
- ``numpy`` and ``python``: the reference implementations of ``engine.bench.baselines``.

As in the seed, the data is built beforehand and only the run is timed;
steps/s = size x epochs x 2 / median time. The step limit per episode is the
seed's 10,000 on the seed rows; on the scaling rows it is max(10,000, size),
so that every observation is consumed (under the seed's limit 100000x1 would
be the same work as 10000x1). Compile time is measured apart, before timing:
a tiny run of each engine path, twice; the first minus the second is the
compile (or numba cache load) time.

The baselines (and the stepwise engine) only run on rows they finish within
a per-run budget (``BUDGET_S``), predicted from their measured time per
comparison on the largest row measured so far; rows predicted over budget are
reported as skipped in the table and left out of the JSON. Rows whose single
run takes over ``SLOW_RUN_S`` seconds get at most ``SLOW_REPEATS`` repeats.

Library code prints nothing: ``run_suite`` returns the rows, ``format_table``
the text; progress goes to ``logging``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import time

from engine.bench import baselines
from engine.data import sources
from engine.config import from_dict
from engine.models.similarity import Experiment

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("engine", "engine-stepwise", "numpy", "python")
# Run only when asked for (``--rust``): the seed's Rust reference rebuilt from its
# specification (``engine.bench.rust_reference``); needs cargo and a checkout of the repository.
OPTIONAL_IMPLEMENTATIONS = ("rust",)
ALL_IMPLEMENTATIONS = IMPLEMENTATIONS + OPTIONAL_IMPLEMENTATIONS

SEED_MAX_STEPS = 10_000

# Figures of /work/shared/reference/seed-benchmark.md (the seed document's section 2.1, measured
# on this project's machine kind): Rust release build, median of 7 runs; the final confidence all
# reference implementations agree on (to 7e-7 relative); the seed's own NumPy and pure Python
# steps/s (median of 5, for context only: the ratios use the baselines measured in the same run).
SEED_REFERENCE = {
    (10, 10): {"rust_median_ms": 0.040, "rust_steps_per_s": 5.0e6, "final_confidence": 0.688552856,
               "numpy_steps_per_s": 196e3, "python_steps_per_s": 138e3},
    (50, 10): {"rust_median_ms": 0.480, "rust_steps_per_s": 2.08e6, "final_confidence": 0.320348978,
               "numpy_steps_per_s": 178e3, "python_steps_per_s": 30.7e3},
    (100, 10): {"rust_median_ms": 1.650, "rust_steps_per_s": 1.21e6, "final_confidence": 0.232865244,
                "numpy_steps_per_s": 160e3, "python_steps_per_s": 15.4e3},
    (500, 5): {"rust_median_ms": 10.05, "rust_steps_per_s": 498e3, "final_confidence": 0.102160096,
               "numpy_steps_per_s": 114e3, "python_steps_per_s": 6.0e3},
    (1000, 2): {"rust_median_ms": 6.49, "rust_steps_per_s": 616e3, "final_confidence": 0.064621277,
                "numpy_steps_per_s": 126e3, "python_steps_per_s": 7.7e3},
}
SEED_BYTES_PER_OBSERVATION = {"rust": 16, "numpy": 16, "python": 272}

SEED_ROWS = tuple(SEED_REFERENCE)
SCALING_ROWS = ((10_000, 2), (100_000, 1))
SUITES = {"seed": SEED_ROWS + SCALING_ROWS}

# Parity: relative error of the final confidence against the seed's value. The seed's three
# implementations agree to 7e-7; the engine's fastmath reduction is within 2e-7 of float64.
PARITY_RTOL = 1e-5

# Per-run time budget (seconds) of the implementations that may skip rows (None: always runs).
BUDGET_S = {"engine": None, "engine-stepwise": 60.0, "numpy": 30.0, "python": 10.0, "rust": 30.0}
SLOW_RUN_S = 2.0
SLOW_REPEATS = 3
# Runs predicted to take under this get one untimed run of the same implementation right
# before each timed one (see ``run_suite``): short runs are the ones the previous
# implementation's run leaves with cold caches, and their warm-up costs little.
WARM_UP_MAX_S = 0.05
CALIBRATION_ROW = (10, 10)
COMPILE_ROW = (40, 1)   # 40 x 40 comparisons: large enough to start the engine's parallel path

ROW_KEYS = ("suite", "case", "size", "epochs", "implementation", "median_s", "min_s", "max_s", "steps_per_s",
            "comparisons", "final_confidence", "ns_per_comparison", "compile_s", "bytes_per_observation",
            "vs_rust", "vs_numpy", "vs_python", "parity_expected", "parity_rel_error", "warm_up_runs",
            "vs_rust_measured")


class SuiteRows(list):
    """What ``run_suite`` returns: the list of row dicts (exactly ``ROW_KEYS`` each, the JSON
    objects), with what the table prints beside them as attributes:

    ``skipped``: dicts ``case, size, epochs, implementation, predicted_s, budget_s`` of the
    rows predicted over budget; ``info``: compile times, numba cache state, threading layer,
    memory per stored observation, runs per row.
    """

    def __init__(self, rows=(), skipped=(), info=None):
        super().__init__(rows)
        self.skipped = list(skipped)
        self.info = dict(info or {})


def case_name(size: int, epochs: int) -> str:
    return f"{size}x{epochs}"


def max_steps_for(size: int) -> int:
    """Step limit per episode: the seed's 10,000, raised to ``size`` so every observation is consumed."""
    return max(SEED_MAX_STEPS, int(size))


def comparisons_of(size: int, epochs: int, max_steps: int | None = None) -> int:
    """Stored observations at evaluation x evaluation steps (no early stop)."""
    steps = min(size, max_steps_for(size) if max_steps is None else max_steps) * epochs
    return steps * steps


# ---------------------------------------------------------------------------
# Running one implementation on one row
# ---------------------------------------------------------------------------

class _Case:
    """The data of one row, built once, outside the timing."""

    def __init__(self, size: int, epochs: int, max_steps: int):
        self.size, self.epochs, self.max_steps = size, epochs, max_steps
        self.obs = sources.seed_spiral(size)
        self._points = None
        self._configs = {}

    def points(self):
        if self._points is None:
            self._points = baselines.python_points(self.obs.location, self.obs.features)
        return self._points

    def config(self, stepwise: bool):
        if stepwise not in self._configs:
            self._configs[stepwise] = from_dict({
                "experiment": {"n_train_epochs": self.epochs, "n_eval_epochs": self.epochs,
                               "max_train_steps": self.max_steps, "max_eval_steps": self.max_steps},
                "model": {"confidence_threshold": None},
                "data": {"source": "seed_spiral", "size": self.size},
                "execution": {"stepwise": stepwise}})
        return self._configs[stepwise]

    def baseline_kw(self):
        return dict(n_train_epochs=self.epochs, n_eval_epochs=self.epochs,
                    max_train_steps=self.max_steps, max_eval_steps=self.max_steps, threshold=None)


def _timed_run(implementation: str, case: _Case, warm_up: bool = False,
               rust_binary=None) -> tuple[float, float | None, float | None]:
    """One timed run: (seconds, final confidence, bytes per stored observation or None).

    ``warm_up``: one untimed run of the same implementation first (see
    ``run_suite``). The garbage collector is off during both (it must not fire
    inside one implementation's run and not another's). No explicit collection
    right before a run: a collection walks every object and leaves the CPU
    caches cold, which alone made the 10 x 10 row's engine run 3.5x slower (91
    vs 25 us) and measured the collector, not the run. ``rust``: the reference
    binary (``rust_binary``, see ``engine.bench.rust_reference``) times itself, its
    warm-up run in the same process.
    """
    o = case.obs
    if implementation == "rust":
        if rust_binary is None:
            raise ValueError("implementation 'rust' needs rust_binary (engine.bench.rust_reference.build())")
        from engine.bench import rust_reference

        dt, fc = rust_reference.run(rust_binary, case.size, case.epochs, case.max_steps, int(warm_up))
        return dt, fc, None
    # make_run() returns the run to call; whatever it builds first (the engine's
    # Experiment) is built outside the timing, as the seed builds its experiment
    if implementation in ("engine", "engine-stepwise"):
        config = case.config(implementation == "engine-stepwise")

        def make_run():
            return Experiment(config, o).run
    elif implementation == "numpy":
        def make_run():
            return lambda: baselines.numpy_experiment(o.location, o.features, o.train_starts, o.train_stops,
                                                      o.eval_starts, o.eval_stops, **case.baseline_kw())
    elif implementation == "python":
        points = case.points()

        def make_run():
            return lambda: baselines.python_experiment(points, o.train_starts, o.train_stops,
                                                       o.eval_starts, o.eval_stops, **case.baseline_kw())
    else:
        raise ValueError(f"unknown implementation {implementation!r}; one of {', '.join(ALL_IMPLEMENTATIONS)}")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if warm_up:
            make_run()()
        run = make_run()
        t0 = time.perf_counter()
        r = run()
        dt = time.perf_counter() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    b = float(r.bytes_per_observation) if implementation.startswith("engine") else None
    return dt, r.final_confidence, b


# ---------------------------------------------------------------------------
# Compile time, numba cache state, threading layer
# ---------------------------------------------------------------------------

def _engine_dispatchers():
    from kernels import loop as kloop

    return (kloop.run_experiment_packed, kloop.training_steps_needed, kloop.train_step, kloop.match_step)


def measure_compile() -> dict:
    """Compile (or cache load) time of each engine path's first call in this process.

    Runs a tiny seed row (``COMPILE_ROW``) twice on each path: first minus
    second. Returns ``{"engine": s, "engine-stepwise": s, "numba_cache": text,
    "threading": text}``; ``numba_cache`` says whether the kernels were
    already compiled in this process, loaded from numba's on-disk cache
    (warm) or compiled (cold).
    """
    dispatchers = _engine_dispatchers()
    in_process = any(d.signatures for d in dispatchers)
    out = {}
    case = _Case(COMPILE_ROW[0], COMPILE_ROW[1], SEED_MAX_STEPS)
    for impl in ("engine", "engine-stepwise"):
        first = _timed_run(impl, case)[0]
        second = _timed_run(impl, case)[0]
        out[impl] = max(first - second, 0.0)
        log.info("first call of %s: %.3f s (then %.3f ms)", impl, first, second * 1e3)
    hits = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    misses = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    cache_dir = os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ beside the kernels"
    if in_process:
        state = "kernels already compiled in this process before the measurement"
    elif misses == 0 and hits > 0:
        state = f"warm (kernels loaded from numba's cache, {cache_dir})"
    elif hits == 0:
        state = f"cold (kernels compiled, cache {cache_dir})"
    else:
        state = f"partly warm ({hits} kernel signatures loaded from cache, {misses} compiled; {cache_dir})"
    out["numba_cache"] = state
    try:
        import numba

        out["threading"] = f"numba threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads"
    except Exception:  # no parallel region ran yet, or no threading layer
        out["threading"] = "numba threading layer not initialised"
    return out


# ---------------------------------------------------------------------------
# OpenMP's worker threads between the interleaved runs
# ---------------------------------------------------------------------------

def keep_workers_spinning() -> str:
    """Make OpenMP's worker threads spin between parallel regions for the rest of this process.

    For ``python -m engine bench --suite seed`` only (the CLI calls it before
    anything runs). Interleaving puts a baseline's run (up to ~1 s of NumPy or
    Python on one core) before each engine run; by then libgomp's idle worker
    has gone to sleep, and waking a sleeping thread costs 45-90 us in this VM
    (median; a parallel region with the worker awake starts in ~3 us). That is
    the cost of the interleaving, not of the engine: measured with
    ``--repeats 7``, the 50x10 row took 0.34 ms with a sleeping worker and
    0.11-0.13 ms with a spinning one, 500x5 1.5 ms and 0.93 ms. The baselines
    run on one core and are not slowed by a worker spinning on the other
    (same medians within the noise, measured side by side).

    Sets ``OMP_WAIT_POLICY=ACTIVE`` only where nobody chose otherwise: not
    when the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, nor when
    ``kernels`` chose passive waiting because the machine was busy (spinning
    beside another process is far worse than a wake-up), nor once the thread
    pool has started (libgomp reads the variable when it starts). Not done in
    ``run_suite`` itself: it changes the whole process, which a library call
    must not do behind its caller's back.

    Returns the line the table prints about it.
    """
    import kernels
    from numba.np.ufunc import parallel as numba_parallel

    source = kernels.OPENMP_WAIT_POLICY_SOURCE
    if source == "user":
        return describe_wait_policy("set by the user")
    if source == "busy":
        return describe_wait_policy("passive: the load average was high at import; OMP_WAIT_POLICY=ACTIVE "
                                    "makes the workers spin anyway")
    if numba_parallel._is_initialized:
        return describe_wait_policy("thread pool already started, left as it was")
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    return describe_wait_policy("workers spin between runs, set by the seed suite on an idle machine")


def describe_wait_policy(why: str = "") -> str:
    """``OMP_WAIT_POLICY=... (why)``: the wait policy this process's OpenMP workers use."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    spin = os.environ.get("GOMP_SPINCOUNT")
    text = f"OMP_WAIT_POLICY={policy}" if policy else "OMP_WAIT_POLICY unset (libgomp's default)"
    if spin:
        text += f", GOMP_SPINCOUNT={spin}"
    return f"{text} ({why})" if why else text


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

def ratio(a, b):
    """``a / b``, or None when either is None or ``b`` is 0 (a speed-up column)."""
    return None if a is None or b is None or b == 0 else a / b


def threads_note() -> str:
    """The thread count the other suites print beside their tables: "numba N threads"."""
    try:
        import numba

        return f"numba {numba.get_num_threads()} threads"
    except Exception:  # pragma: no cover
        return "numba threads unknown"


def run_suite(suite: str = "seed", repeats: int = 5, json_path=None, rows=None,
              implementations=IMPLEMENTATIONS, budgets: dict | None = None,
              wait_policy: str | None = None, warm_up: bool = True, rust_binary=None) -> SuiteRows:
    """Run a benchmark suite and return its rows (see ``ROW_KEYS``), one per row x implementation.

    Parameters
    ----------
    suite : name in ``SUITES`` ("seed")
    repeats : timed runs per row and implementation (interleaved); at most
        ``SLOW_REPEATS`` where one run takes over ``SLOW_RUN_S`` seconds
    json_path : if given, the rows are written there as a JSON list (atomically)
    rows : (size, epochs) pairs to run instead of the suite's rows
    implementations : a subset of ``IMPLEMENTATIONS``
    budgets : overrides of ``BUDGET_S`` (seconds per run; None: no budget)
    wait_policy : the line about OpenMP's wait policy for the table (what
        ``keep_workers_spinning`` returned); by default, the policy in effect
    warm_up : before each timed run predicted under ``WARM_UP_MAX_S``, one
        untimed run of the same implementation. Interleaving runs another
        implementation (a baseline's ~1-240 ms of NumPy or Python) right before
        each run, and that leaves the next run's code and data out of cache: in
        one process, the 10x10 engine run took 47 us after a NumPy baseline's
        run and 26 us after its own (20 us back to back); 100x10 300 us and 198
        us. A loop of runs of one implementation (how a user repeats an
        experiment, and how a standalone benchmark such as the seed's Rust one
        measures) sees the warm state. Every implementation gets the same
        treatment; the interleaving still spreads the machine's drift over all
        of them. ``warm_up_runs`` in each row says which applied (0 or 1).
    rust_binary : the seed's Rust reference rebuilt here (``engine.bench.rust_reference.build``):
        adds the ``rust`` implementation, and every row gets ``vs_rust_measured``,
        its steps/s against the ``rust`` run of the same row (None without it)

    Rows predicted over an implementation's budget are skipped: they are not in
    the returned list (nor the JSON) but in its ``skipped`` attribute, which
    ``format_table`` prints.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    impls = tuple(implementations)
    if rust_binary is not None and "rust" not in impls:
        impls += ("rust",)
    for impl in impls:
        if impl not in ALL_IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {impl!r}; one of {', '.join(ALL_IMPLEMENTATIONS)}")
    cases = [(int(s), int(e)) for s, e in (SUITES[suite] if rows is None else rows)]
    budget = {**BUDGET_S, **(budgets or {})}

    info = {"suite": suite, "repeats": repeats, "runs": {}, "wait_policy": wait_policy or describe_wait_policy(),
            "warm_up": warm_up}
    if any(i.startswith("engine") for i in impls):
        info["compile"] = measure_compile()
    memory = {}
    if "numpy" in impls:
        memory["numpy"] = round(baselines.numpy_bytes_per_observation(), 2)
    if "python" in impls:
        memory["python"] = round(baselines.python_bytes_per_observation(), 2)
    if "rust" in impls:
        memory["rust"] = SEED_BYTES_PER_OBSERVATION["rust"]  # its observation struct: 4 float32
    info["memory"] = memory

    largest: dict[str, tuple[int, float]] = {}   # impl -> (comparisons, median s) of its largest row so far

    def predict(impl: str, comparisons: int) -> float:
        if impl not in largest:  # calibrate on a tiny row
            c = _Case(*CALIBRATION_ROW, SEED_MAX_STEPS)
            largest[impl] = (comparisons_of(*CALIBRATION_ROW), _timed_run(impl, c, rust_binary=rust_binary)[0])
        n, s = largest[impl]
        return comparisons * s / n

    out = SuiteRows(info=info)
    for size, epochs in cases:
        ms = max_steps_for(size)
        name = case_name(size, epochs)
        comparisons = comparisons_of(size, epochs, ms)
        active = []
        for impl in impls:
            b = budget.get(impl)
            if b is not None:
                p = predict(impl, comparisons)
                if p > b:
                    log.info("%s %s: skipped (predicted %.1f s per run > %.0f s budget)", name, impl, p, b)
                    out.skipped.append({"case": name, "size": size, "epochs": epochs, "implementation": impl,
                                        "predicted_s": p, "budget_s": b})
                    continue
            active.append(impl)
        case = _Case(size, epochs, ms)
        warm = {i: warm_up and predict(i, comparisons) <= WARM_UP_MAX_S for i in active}
        times = {i: [] for i in active}
        final = {}
        bpo = {}
        n_runs = {i: repeats for i in active}
        for r in range(repeats):
            for impl in active:
                if r >= n_runs[impl]:
                    continue
                dt, fc, b = _timed_run(impl, case, warm[impl], rust_binary)
                times[impl].append(dt)
                if fc is not None and impl in final and fc != final[impl]:
                    log.warning("%s %s: final confidence changed between runs (%r, %r)", name, impl, final[impl], fc)
                final[impl], bpo[impl] = fc, b
                if r == 0 and dt > SLOW_RUN_S:
                    n_runs[impl] = min(repeats, SLOW_REPEATS)
                log.info("%s %s run %d: %.3f ms", name, impl, r + 1, dt * 1e3)

        steps = size * epochs * 2
        ref = SEED_REFERENCE.get((size, epochs)) if ms == SEED_MAX_STEPS else None
        sps = {i: steps / statistics.median(times[i]) for i in active}
        for impl in active:
            med = statistics.median(times[impl])
            if comparisons > largest.get(impl, (0, 0.0))[0]:
                largest[impl] = (comparisons, med)
            fc = final[impl]
            if impl.startswith("engine"):
                bytes_per_obs = bpo[impl]
                compile_s = info["compile"][impl]
            else:
                bytes_per_obs = memory[impl]
                compile_s = None
            expected = ref["final_confidence"] if ref else None
            row = {
                "suite": suite, "case": name, "size": size, "epochs": epochs, "implementation": impl,
                "median_s": med, "min_s": min(times[impl]), "max_s": max(times[impl]),
                "steps_per_s": sps[impl], "comparisons": comparisons, "final_confidence": fc,
                "ns_per_comparison": med / comparisons * 1e9 if comparisons else None,
                "compile_s": compile_s, "bytes_per_observation": bytes_per_obs,
                "vs_rust": ratio(sps[impl], ref["rust_steps_per_s"]) if ref else None,
                "vs_numpy": ratio(sps[impl], sps.get("numpy")),
                "vs_python": ratio(sps[impl], sps.get("python")),
                "vs_rust_measured": ratio(sps[impl], sps.get("rust")),
                "parity_expected": expected,
                "parity_rel_error": (abs(fc - expected) / abs(expected)
                                     if expected is not None and fc is not None else None),
                "warm_up_runs": int(warm[impl]),
            }
            out.append(row)
            info["runs"][f"{name}/{impl}"] = len(times[impl])
            log.info("%s %s: median %.3f ms over %d runs", name, impl, med * 1e3, len(times[impl]))

    if json_path is not None:
        write_json(out, json_path)
    return out


def _plain(v):
    """A JSON-native value (NumPy scalars become Python numbers)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    try:
        import numpy as np

        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    except ImportError:  # pragma: no cover
        pass
    return v


def write_json(rows, path) -> None:
    """Write ``rows`` as a JSON list of objects to ``path`` atomically (temp file, then
    rename), creating its folder if needed."""
    from engine.files import atomic_write_text

    data = [{k: _plain(v) for k, v in row.items()} for row in rows]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def _si(x) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            v = x / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{x:.3g}"


def _x(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"


def _ms(s) -> str:
    ms = s * 1e3
    return f"{ms:.4g}" if ms < 1e5 else f"{ms:,.0f}"


def _parity(row) -> str:
    err = row.get("parity_rel_error")
    if err is None:
        return "-"
    return f"{'OK' if err <= PARITY_RTOL else 'FAIL'} {err:.1e}"


def format_table(rows) -> str:
    """The benchmark as readable text: one line per row x implementation, then notes.

    Takes ``run_suite``'s result (skipped rows, compile and memory notes come
    from its attributes) or a plain list of row dicts (e.g. read back from the JSON).
    """
    rows = list(rows) if not isinstance(rows, SuiteRows) else rows
    skipped = getattr(rows, "skipped", [])
    info = getattr(rows, "info", {})
    runs = info.get("runs", {})

    order = []
    for r in list(rows) + list(skipped):
        key = (r["size"], r["epochs"])
        if key not in order:
            order.append(key)
    by = {(r["size"], r["epochs"], r["implementation"]): r for r in rows}
    sk = {(r["size"], r["epochs"], r["implementation"]): r for r in skipped}
    impls = [i for i in ALL_IMPLEMENTATIONS if any(k[2] == i for k in list(by) + list(sk))]
    impls += sorted({k[2] for k in list(by) + list(sk)} - set(impls))
    # the Rust reference timed in this run (``--rust``): one more ratio column
    measured_rust = any(r.get("vs_rust_measured") is not None for r in rows)
    rust_col = f" {'x Rust now':>10}" if measured_rust else ""

    head = (f"{'case':<10} {'implementation':<16} {'runs':>5} {'median ms':>10} {'steps/s':>9} {'ns/cmp':>8} "
            f"{'x Rust':>7}{rust_col} {'x NumPy':>8} {'x Python':>9} {'final conf':>12}  parity")
    lines = [head, "-" * len(head)]
    scaling = False
    for size, epochs in order:
        label = case_name(size, epochs)
        if (size, epochs) not in SEED_REFERENCE:
            label += "*"
            scaling = True
        for impl in impls:
            r = by.get((size, epochs, impl))
            if r is not None:
                n = f"{runs.get(r['case'] + '/' + impl, '')}{'+' if r.get('warm_up_runs') else ''}"
                fc = r["final_confidence"]
                ns = r["ns_per_comparison"]
                now = f" {_x(r.get('vs_rust_measured')):>10}" if measured_rust else ""
                lines.append(
                    f"{label:<10} {impl:<16} {n:>5} {_ms(r['median_s']):>10} {_si(r['steps_per_s']):>9} "
                    f"{'-' if ns is None else f'{ns:.3g}':>8} {_x(r['vs_rust']):>7}{now} {_x(r['vs_numpy']):>8} "
                    f"{_x(r['vs_python']):>9} {'-' if fc is None else f'{fc:.9f}':>12}  {_parity(r)}")
            elif (size, epochs, impl) in sk:
                s = sk[(size, epochs, impl)]
                lines.append(f"{label:<10} {impl:<16} skipped: predicted {s['predicted_s']:.3g} s per run "
                             f"> {s['budget_s']:g} s budget")

    lines.append("")
    compile_info = info.get("compile")
    comp = {r["implementation"]: r["compile_s"] for r in rows if r.get("compile_s") is not None}
    if compile_info:
        comp = {i: compile_info[i] for i in ("engine", "engine-stepwise") if i in compile_info}
    if comp:
        text = ", ".join(f"{i} {s:.3f} s" for i, s in comp.items())
        line = f"Compile / cache load, apart from the timings (first call minus second, tiny run): {text}"
        if compile_info:
            line += f"; numba cache: {compile_info['numba_cache']}; {compile_info['threading']}"
        lines.append(line + ".")
    if info.get("wait_policy"):
        lines.append(f"OpenMP workers: {info['wait_policy']}.")

    mem = {}
    for r in rows:
        impl = r["implementation"]
        key = "engine" if impl.startswith("engine") else impl
        if r.get("bytes_per_observation") is not None:
            mem.setdefault(key, r["bytes_per_observation"])
    mem.update(info.get("memory", {}))
    if mem:
        names = {"engine": "engine store", "numpy": "NumPy float32 arrays", "python": "Python objects",
                 "rust": "Rust reference structs"}
        parts = [f"{names[k]} {mem[k]:g}" for k in ("engine", "numpy", "python", "rust") if k in mem]
        seed = SEED_BYTES_PER_OBSERVATION
        lines.append(f"Bytes per stored observation: {', '.join(parts)} (baselines: tracemalloc, 100,000 "
                     f"observations); seed: Rust {seed['rust']}, NumPy {seed['numpy']}, Python {seed['python']}.")
    repeats = info.get("repeats")
    if repeats:
        lines.append(f"Times: median of {repeats} interleaved runs ({min(repeats, SLOW_REPEATS)} where one run "
                     f"takes over {SLOW_RUN_S:g} s), data built beforehand; steps/s = size x epochs x 2 / median.")
    if any(r.get("warm_up_runs") for r in rows):
        lines.append(f"Warm-up (runs marked +): each timed run predicted under {WARM_UP_MAX_S * 1e3:g} ms follows one "
                     "untimed run of the same implementation, so it starts with its own code and data in cache, "
                     "as in a loop of runs; --no-warm-up times it right after the previous implementation's run.")
    elif info.get("warm_up") is False:
        lines.append("No warm-up: each timed run follows the previous implementation's run (cold caches "
                     "for the short rows).")
    lines.append("x Rust: steps/s against the seed's Rust figures (seed-benchmark.md); x NumPy, x Python: against "
                 "the baselines measured in this run.")
    if measured_rust:
        lines.append("x Rust now: against the rust rows, the seed's Rust reference rebuilt from its specification "
                     "(profiling/rust_seed, release build for baseline x86-64) and timed in this run.")
    lines.append(f"Parity: final confidence within {PARITY_RTOL:g} relative of the seed's value "
                 "(the seed's implementations agree to 7e-7).")
    if scaling:
        lines.append(f"* Scaling rows, not in the seed's table: step limit max({SEED_MAX_STEPS:,}, size) per "
                     f"episode, so every observation is consumed (under the seed's {SEED_MAX_STEPS:,}-step "
                     "limit 100000x1 would be the same work as 10000x1); no Rust figure or parity target.")
    return "\n".join(lines)
