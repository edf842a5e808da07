"""``bench --suite evidence``: the evidence model's time per matching step and training time
against the number of objects, for both hypothesis updaters.

``run_evidence_suite`` builds the objects (the 10 built-in shapes, then perturbed variants
``perturbed_shape(name, round)`` named ``name~round``, cycling through the built-in names,
round 1, 2, ...), samples their surfaces once per point count (cached within the run: the
same objects feed both updaters), simulates a dataset per size (``sensor.simulate``: the 14
training rotations of ``train_steps`` steps, ``eval_rotations`` random rotations of
``eval_steps`` steps per object, no noise) and, for each updater (``burst``, ``classic``),
with ``EvidenceSettings(updater=..., graph="grid")`` (tbp.monty's grid model, at most 2,000
nodes per object):

- compiles (or loads) every kernel first (``evidence_model.warmup_kernels``), apart from
  the timings (``compile_s``);
- times training: ``EvidenceModel.learn`` over every training episode plus building the
  flat model (``model_arrays``) (``train_s``);
- runs every evaluation episode once stepwise (not timed) for the live hypotheses after
  each matching step (``n_hypotheses``: their mean over all matching steps);
- runs every evaluation episode on the fused path ``repeats`` times (the first run is
  scored: ``accuracy`` = fraction of episodes whose outcome is ``correct``); per episode the
  fastest run counts; ``matching_step_s`` = the sum of those kernel seconds / the matching
  steps taken.

Rows of more than 10 objects evaluate at most ``MAX_EVAL_EPISODES`` episodes (objects spread
evenly over the list) and take fewer repeats where one pass is slow (``SLOW_PASS_S``), to
keep the suite's runtime reasonable on a 2-core machine; the table says so.

Before a row its hypothesis memory is estimated from the upper bound ``n_objects x
max_nodes`` (classic: ``max(2, umbilical_num_poses)`` rows per node, twice over while the
arrays grow); a row whose estimate exceeds ``MEMORY_FRACTION`` of ``MemAvailable``
(/proc/meminfo) is skipped: it has ``skipped`` (the reason) and no measurements.

Then two ``workers`` rows (:func:`run_workers_rows`): ``configs/shapes_10_noise.yaml`` (ten
built-in objects, sensor noise, 10 rotations per object: 100 evaluation episodes) recorded as
a dataset, trained once and saved, then its evaluation from the saved model in this process
(``--workers 1``) and over 2 Dask worker processes (``--workers 2``): ``eval_s`` side by side
(with workers each worker's data and model loading, ``worker_setup_s``, and ``cluster_start_s`` apart).
Without Dask's ``distributed`` (the ``dask`` extra) both rows are skipped with that reason.

Then the ``policy`` rows (``engine.bench.policy``): the replayed walk, the curvature policy and
the curvature policy with hypothesis-testing jumps on ``configs/shapes_10_noise.yaml`` and
``configs/similar_10.yaml``: accuracy, mean steps, time per matching step and the policy's share.

Library code prints nothing: progress goes to ``logging``; ``format_evidence`` returns the
text.
"""

from __future__ import annotations

import gc
import logging
import resource
import time

import numpy as np

from engine.bench.seed import SuiteRows, threads_note, write_json

log = logging.getLogger(__name__)

SUITE = "evidence"
UPDATERS = ("burst", "classic")
IMPLEMENTATION = {"burst": "engine-burst", "classic": "engine-classic"}
SIZES = (1, 10, 50, 100)

ROW_KEYS = ("suite", "case", "implementation", "n_objects", "n_hypotheses", "matching_step_s", "train_s",
            "accuracy", "skipped", "updater", "nodes_per_object", "n_nodes", "n_points", "train_steps",
            "eval_rotations", "eval_steps", "n_eval_episodes", "mean_steps", "matching_steps", "repeats",
            "ns_per_hypothesis_step", "vs_tbp_monty", "compile_s", "est_memory_mb", "peak_rss_mb", "workers",
            "eval_s", "cluster_start_s", "worker_setup_s", "n_modules", "module_step_s")

# ../shared/reference/tbp-monty.md: tbp.monty 0.55.0, 6 shapes of ~2,000 nodes (grid model), burst
# sampling, clean, 2 vCPU: 14.0 ms per matching step (mean; median 10.6 ms), training 70 s.
TBP_MONTY_STEP_S = 0.0140
TBP_MONTY_OBJECTS = 6
TBP_MONTY_TRAIN_S = 70.0

# Surface samples per object: the reference's 20,000 up to this many objects, 5,000 above
# (sampling and fitting 20,000 points takes 0.3-1.8 s per object).
FULL_POINTS = 20_000
FEW_POINTS = 5_000
FULL_POINTS_UP_TO = 10
# Evaluation rotations per object: 2 (the reference's) up to 10 objects, 1 above.
EVAL_ROTATIONS_UP_TO_10 = 2
EVAL_ROTATIONS_ABOVE = 1
# Evaluation episodes at most in rows of more than FULL_POINTS_UP_TO objects (objects spread
# evenly), for the suite's runtime: the classic updater's 100-object row takes ~9 s per episode
# and pass on 2 cores. Rows of up to 10 objects run every episode.
MAX_EVAL_EPISODES = 10
# The workers rows: this bundled config as it is (its 100 evaluation episodes; recording, training
# and both evaluations add ~13 s to the suite on 2 cores), these worker counts.
WORKERS_CONFIG = "shapes_10_noise.yaml"
WORKER_COUNTS = (1, 2)
# A fused pass over a row's episodes slower than this gets at most SLOW_REPEATS repeats.
SLOW_PASS_S = 3.0
SLOW_REPEATS = 1

MEMORY_FRACTION = 0.6


def hypothesis_row_bytes() -> int:
    """Bytes of one hypothesis row (every field of ``kernels.evidence_layout.HYPOTHESIS_FIELDS``)."""
    from kernels import evidence as kev

    return kev.hypothesis_row_bytes()


def estimate_memory_bytes(n_objects: int, settings) -> int:
    """Upper-bound estimate of the hypothesis arrays of a row (bytes), before training.

    Nodes: ``n_objects x max_nodes``. Classic: ``max(2, umbilical_num_poses)`` rows per node
    (every node x candidate rotation); burst: the initial capacity (0.4 N x 2) and a few bursts
    more, at most the classic count. Doubled: growing the arrays holds the old and the new
    ones at once. Plus the flat model (~100 bytes per node with its search grid).
    """
    nodes = int(n_objects) * int(settings.max_nodes)
    classic_rows = nodes * max(2, int(settings.umbilical_num_poses))
    if settings.updater == "classic":
        rows = classic_rows
    else:
        rows = min(classic_rows, 4 * int(2 * nodes * settings.sampling_multiplier + 16))
    return 2 * rows * hypothesis_row_bytes() + 100 * nodes


def mem_available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------
# Objects and data
# ---------------------------------------------------------------------------

def object_names(n: int) -> list[str]:
    """The first ``n`` objects: the built-ins, then ``name~round`` (perturbed_shape(name, round))."""
    from engine.data.shapes import BUILTIN_SHAPES

    out = list(BUILTIN_SHAPES[:n])
    i = 0
    while len(out) < n:
        out.append(f"{BUILTIN_SHAPES[i % len(BUILTIN_SHAPES)]}~{i // len(BUILTIN_SHAPES) + 1}")
        i += 1
    return out


def _mesh(name: str):
    from engine.data.shapes import make_shape, perturbed_shape

    if "~" in name:
        base, seed = name.split("~")
        return perturbed_shape(base, int(seed))
    return make_shape(name)


class _Surfaces:
    """Surface samples cached by (name, n_points) for the run."""

    def __init__(self):
        self._cache = {}
        self.seconds = 0.0

    def get(self, names, n_points: int):
        from engine.data.sensor import sample_surface

        out = []
        for name in names:
            key = (name, int(n_points))
            if key not in self._cache:
                t0 = time.perf_counter()
                self._cache[key] = sample_surface(_mesh(name), n_points=int(n_points), seed=0)
                self.seconds += time.perf_counter() - t0
            out.append((name, self._cache[key]))
        return out


def _eval_rows(ds, max_eval_episodes):
    """Evaluation episodes to run: all, or at most ``max_eval_episodes`` spread evenly over the objects."""
    from engine.data.dataset import EVAL

    rows = np.flatnonzero(np.asarray(ds.episode_split) == EVAL)
    if max_eval_episodes is None or len(rows) <= max_eval_episodes:
        return rows
    pick = np.unique(np.linspace(0, len(rows) - 1, int(max_eval_episodes)).round().astype(np.int64))
    return rows[pick]


# ---------------------------------------------------------------------------
# One row
# ---------------------------------------------------------------------------

def _run_row(ds, settings, *, eval_steps: int, repeats: int, max_eval_episodes) -> dict:
    from kernels import evidence as kev

    from engine.data.dataset import TRAIN
    from engine.models.evidence.model import EvidenceModel, episode_steps, live_hypotheses, matching_features

    feats, fnames = matching_features(ds)
    model = EvidenceModel(settings, fnames, max_eval_steps=eval_steps)
    train = [(str(ds.object_names[int(ds.episode_object[e])]), int(e))
             for e in np.flatnonzero(np.asarray(ds.episode_split) == TRAIN)]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for label, e in train:
            model.learn(label, *episode_steps(ds, feats, e), ds.episode_rotation[e])
        model.model_arrays()
        train_s = time.perf_counter() - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    episodes = [(int(e), episode_steps(ds, feats, e)) for e in _eval_rows(ds, max_eval_episodes)]

    # Live hypotheses per matching step: one stepwise pass, not timed.
    hyp_sum = 0
    hyp_steps = 0
    for _, obs in episodes:
        last = [0]

        def on_step(t, istate, obj_max, _last=last):
            nonlocal hyp_sum, hyp_steps
            m = int(istate[kev.IS_MATCHING_STEPS])
            if m > _last[0]:
                _last[0] = m
                hyp_sum += live_hypotheses(istate)
                hyp_steps += 1

        model.run_episode(*obs, stepwise=True, on_step=on_step)

    # Timed fused passes; the first is scored.
    best = [np.inf] * len(episodes)
    steps = [0] * len(episodes)
    correct = 0
    n_runs = repeats
    r = 0
    while r < n_runs:
        gc.disable()
        try:
            t_pass = time.perf_counter()
            for i, (e, _) in enumerate(episodes):
                code, istate, _, secs, sc = model.eval_episode(ds, feats, e)
                best[i] = min(best[i], secs)
                m = int(istate[kev.IS_MATCHING_STEPS])
                if r == 0:
                    steps[i] = m
                    correct += sc["outcome"] == "correct"
                elif m != steps[i]:
                    log.warning("episode %d: %d matching steps, %d in the first run", e, m, steps[i])
            t_pass = time.perf_counter() - t_pass
        finally:
            if gc_was_enabled:
                gc.enable()
        if r == 0 and t_pass > SLOW_PASS_S:
            n_runs = min(repeats, SLOW_REPEATS)
        log.info("%s pass %d: %.2f s", settings.updater, r + 1, t_pass)
        r += 1
    total_steps = int(sum(steps))
    nodes = model.nodes_per_object
    n_hyp = hyp_sum / hyp_steps if hyp_steps else 0.0
    step_s = float(sum(best)) / total_steps if total_steps else None
    return {
        "n_hypotheses": n_hyp, "matching_step_s": step_s, "train_s": train_s,
        "accuracy": correct / len(episodes) if episodes else None,
        "nodes_per_object": float(np.mean(nodes)) if nodes else 0.0, "n_nodes": int(sum(nodes)),
        "n_eval_episodes": len(episodes), "mean_steps": total_steps / len(episodes) if episodes else None,
        "matching_steps": total_steps, "repeats": n_runs,
        "ns_per_hypothesis_step": step_s / n_hyp * 1e9 if step_s and n_hyp else None,
    }


# ---------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------

def run_evidence_suite(sizes=SIZES, repeats: int = 3, json_path=None, n_points=None, eval_rotations=None,
                       train_steps: int = 400, eval_steps: int = 100, updaters=UPDATERS,
                       max_eval_episodes="auto", memory_fraction: float = MEMORY_FRACTION,
                       seed: int = 0, workers_rows: bool = True, policy_rows: bool | None = None,
                       module_rows: bool | None = None) -> SuiteRows:
    """Run the evidence suite; returns one row per (size, updater) (keys ``ROW_KEYS``).

    Parameters
    ----------
    sizes : numbers of objects
    repeats : fused passes over the evaluation episodes per row (fastest per episode counts);
        at most ``SLOW_REPEATS`` where one pass takes over ``SLOW_PASS_S`` seconds
    json_path : if given, the rows (skipped ones included) are written there as a JSON list
    n_points : surface samples per object; None: 20,000 up to 10 objects, 5,000 above
    eval_rotations : evaluation rotations per object; None: 2 up to 10 objects, 1 above
    train_steps, eval_steps : steps of each training / evaluation walk (``eval_steps`` is also
        the matching-step limit)
    updaters : a subset of ``UPDATERS``
    max_eval_episodes : evaluation episodes per row at most (None: all; "auto": all up to 10
        objects, ``MAX_EVAL_EPISODES`` above)
    memory_fraction : skip a row whose estimated hypothesis memory exceeds this fraction of
        MemAvailable
    seed : of the simulated walks and rotations
    workers_rows : add the ``workers`` rows (:func:`run_workers_rows`)
    policy_rows : add the ``policy`` rows (``engine.bench.policy``; None: as ``workers_rows``)
    module_rows : add the ``modules`` rows (``engine.bench.modules``: 1, 2, 5, 10 modules that
        vote); None: as ``workers_rows``
    """
    from engine.models.evidence.model import warmup_kernels
    from engine.models.evidence.settings import EvidenceSettings
    from engine.data.sensor import simulate

    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for u in updaters:
        if u not in UPDATERS:
            raise ValueError(f"unknown updater {u!r}; one of {', '.join(UPDATERS)}")
    sizes = [int(n) for n in sizes]
    if any(n < 1 for n in sizes):
        raise ValueError(f"sizes must be >= 1, got {sizes}")

    settings = {u: EvidenceSettings(updater=u, graph="grid") for u in updaters}
    compile_s = {}
    for u in updaters:
        compile_s[u] = warmup_kernels(settings[u])
        log.info("warmup %s: %.2f s", u, compile_s[u])

    surfaces = _Surfaces()
    out = SuiteRows(info={"suite": SUITE, "repeats": repeats, "max_eval_episodes": max_eval_episodes,
                          "compile": compile_s, "threads": threads_note()})
    available = mem_available_bytes()
    for n in sizes:
        pts = int(n_points) if n_points is not None else (FULL_POINTS if n <= FULL_POINTS_UP_TO else FEW_POINTS)
        rot = (int(eval_rotations) if eval_rotations is not None
               else (EVAL_ROTATIONS_UP_TO_10 if n <= 10 else EVAL_ROTATIONS_ABOVE))
        cap = ((None if n <= FULL_POINTS_UP_TO else MAX_EVAL_EPISODES) if max_eval_episodes == "auto"
               else max_eval_episodes)
        objs = surfaces.get(object_names(n), pts)
        t0 = time.perf_counter()
        ds = simulate(objs, train_steps=train_steps, eval_rotations=rot, eval_steps=eval_steps, seed=seed)
        log.info("%d objects: surfaces %.1f s so far, simulate %.1f s", n, surfaces.seconds, time.perf_counter() - t0)
        for u in updaters:
            s = settings[u]
            est = estimate_memory_bytes(n, s)
            row = {k: None for k in ROW_KEYS}
            row.update({"suite": SUITE, "case": f"{n}obj", "implementation": IMPLEMENTATION[u], "n_objects": n,
                        "updater": u, "n_points": pts, "train_steps": train_steps, "eval_rotations": rot,
                        "eval_steps": eval_steps, "compile_s": compile_s[u], "est_memory_mb": est / 1e6})
            if available is not None and est > memory_fraction * available:
                reason = (f"estimated hypothesis memory {est / 1e9:.2f} GB > {memory_fraction:.0%} of "
                          f"MemAvailable {available / 1e9:.2f} GB")
                row["skipped"] = reason
                log.warning("%dobj %s: skipped (%s)", n, u, reason)
                out.append(row)
                continue
            row.update(_run_row(ds, s, eval_steps=eval_steps, repeats=repeats, max_eval_episodes=cap))
            if row["matching_step_s"] is not None:
                row["vs_tbp_monty"] = TBP_MONTY_STEP_S / row["matching_step_s"]
            row["peak_rss_mb"] = peak_rss_mb()
            out.append(row)
            log.info("%dobj %s: %.3f ms/step, %.0f hypotheses, train %.2f s", n, u,
                     (row["matching_step_s"] or 0) * 1e3, row["n_hypotheses"], row["train_s"])
        del ds
    out.info["surface_s"] = surfaces.seconds
    if workers_rows:
        out.extend(run_workers_rows())
    if workers_rows if policy_rows is None else policy_rows:
        from engine.bench.policy import run_policy_rows

        out.extend(run_policy_rows())
    if module_rows or (module_rows is None and workers_rows):
        from engine.bench.modules import run_module_rows

        out.extend(run_module_rows(ROW_KEYS))
    if json_path is not None:
        write_json(out, json_path)
    return out


def run_workers_rows(config=None, counts=WORKER_COUNTS, data_overrides: dict | None = None) -> list[dict]:
    """The ``workers`` rows: ``config`` (default: the bundled ``WORKERS_CONFIG``, a ``shapes``
    config; ``data_overrides``: other values of its ``data`` settings) recorded as an uncompressed dataset in a temporary folder (so that
    workers map it), trained once, saved, and evaluated from the saved model with each worker
    count in ``counts`` (1: in this process). One row per count (keys ``ROW_KEYS``;
    ``case`` "workers", ``implementation`` "engine-workers-N") with ``eval_s`` (the
    evaluation's wall time), ``cluster_start_s``, ``accuracy``, ``matching_step_s``; skipped
    rows (with the reason) when Dask's ``distributed`` is missing or the config is not there."""
    import copy
    import dataclasses
    import importlib.util
    import tempfile
    from pathlib import Path

    from engine.config import read_yaml, validate
    from engine.data.make_dataset import make_shapes_dataset
    from engine.run import registry, workers

    path = Path(config) if config is not None else Path(__file__).resolve().parents[2] / "configs" / WORKERS_CONFIG
    rows = []
    for n in counts:
        row = {k: None for k in ROW_KEYS}
        row.update({"suite": SUITE, "case": "workers", "implementation": f"engine-workers-{n}", "workers": n,
                    "updater": "burst"})
        rows.append(row)
    skip = None
    if any(n > 1 for n in counts) and importlib.util.find_spec("distributed") is None:
        skip = "needs Dask's distributed package (pip install '.[dask]')"
    elif not path.is_file():
        skip = f"{path} not found (run from a checkout)"
    if skip is not None:
        for row in rows:
            row["skipped"] = skip
        return rows
    raw = read_yaml(path)
    params = dict(validate(copy.deepcopy(raw), str(path)).data.params)
    params.update(data_overrides or {})
    with tempfile.TemporaryDirectory(prefix="engine-bench-workers-") as tmp:
        data_path = Path(tmp) / "shapes.npz"
        t0 = time.perf_counter()
        make_shapes_dataset(data_path, **params)
        log.info("workers rows: %s recorded in %.1f s", path.name, time.perf_counter() - t0)
        doc = copy.deepcopy(raw)
        doc["data"] = {"source": "dataset", "path": str(data_path)}
        doc.pop("output_dir", None)
        cfg = validate(doc, str(path))
        ex = registry.for_config(cfg).build(cfg)
        compile_s = ex.warmup()
        train_s = ex.train()
        model = Path(tmp) / "model.npz"
        registry.save_model(cfg, ex, model)
        del ex
        gc.collect()
        for row in rows:
            n = row["workers"]
            c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(model)),
                                    execution=dataclasses.replace(cfg.execution, workers=n))
            ex = registry.load_experiment(c)
            ex.warmup()
            result, info = workers.run(ex, c)
            s = ex.report(result).summary
            row.update({"n_objects": s["n_objects"], "nodes_per_object": s["nodes_per_object"],
                        "n_points": params["n_points"], "train_steps": params["train_steps"],
                        "eval_rotations": params["eval_rotations"], "eval_steps": params["eval_steps"],
                        "n_eval_episodes": s["n_eval_episodes"], "mean_steps": s["mean_steps"],
                        "matching_step_s": s["matching_step_s"], "accuracy": s["accuracy"], "train_s": train_s,
                        "compile_s": compile_s, "eval_s": info["eval_s"], "cluster_start_s": info["cluster_start_s"],
                        "worker_setup_s": info.get("worker_setup_s"),
                        "repeats": 1, "peak_rss_mb": peak_rss_mb()})
            log.info("workers rows: %d worker(s): eval %.2f s", n, info["eval_s"])
            del ex
            gc.collect()
    return rows


def format_workers(rows) -> list[str]:
    """The lines the table gives the ``workers`` rows (none without such rows)."""
    rows = [r for r in rows if r.get("case") == "workers"]
    if not rows:
        return []
    if any(r.get("skipped") for r in rows):
        return [f"Workers rows skipped: {rows[0]['skipped']}."]
    r0 = rows[0]
    parts = []
    for r in rows:
        start = "" if r["cluster_start_s"] is None else (
            f" (+ cluster start {r['cluster_start_s']:.2f} s, worker setup {r.get('worker_setup_s') or 0.0:.2f} s)")
        parts.append(f"{r['workers']} worker{'s' * (r['workers'] != 1)}: eval_s {r['eval_s']:.2f} s{start}, "
                     f"accuracy {_f(r['accuracy'], '.3f')}")
    return [f"Evaluation over workers ({WORKERS_CONFIG} from a saved model: {r0['n_objects']} objects, "
            f"{r0['n_eval_episodes']} episodes of up to {r0['eval_steps']} steps, burst updater): " + "; ".join(parts)
            + ". eval_s with workers leaves out the cluster's start and each worker's data and model loading (apart); "
            "1 worker runs in this process."]


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def _f(v, fmt) -> str:
    return "-" if v is None else format(v, fmt)


def format_evidence(rows) -> str:
    """The suite as readable text: one line per (size, updater), then the reference figure,
    the speed-up of the 10-object burst row, the classic updater's linearity check and notes.
    Takes ``run_evidence_suite``'s result or the rows read back from its JSON."""
    info = getattr(rows, "info", {})
    all_rows = list(rows)
    rows = [r for r in all_rows if r.get("case") not in ("workers", "policy", "modules")]
    head = (f"{'case':<7} {'implementation':<15} {'nodes/obj':>9} {'points':>6} {'episodes':>8} {'steps':>6} "
            f"{'hypotheses':>10} {'ms/step':>8} {'ns/hyp-step':>11} {'train s':>8} {'accuracy':>8} {'x tbp':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"{r['case']:<7} {r['implementation']:<15} skipped: {r['skipped']}")
            continue
        lines.append(
            f"{r['case']:<7} {r['implementation']:<15} {_f(r.get('nodes_per_object'), '.0f'):>9} "
            f"{_f(r.get('n_points'), 'd'):>6} {_f(r.get('n_eval_episodes'), 'd'):>8} "
            f"{_f(r.get('mean_steps'), '.1f'):>6} {_f(r['n_hypotheses'], ',.0f'):>10} "
            f"{_f(None if r['matching_step_s'] is None else r['matching_step_s'] * 1e3, '.3f'):>8} "
            f"{_f(r.get('ns_per_hypothesis_step'), '.1f'):>11} {_f(r['train_s'], '.2f'):>8} "
            f"{_f(r['accuracy'], '.2f'):>8} {_f(r.get('vs_tbp_monty'), '.2f'):>6}")
    lines.append("")
    lines.append(f"Reference (../shared/reference/tbp-monty.md): tbp.monty 0.55.0, {TBP_MONTY_OBJECTS} shapes of "
                 f"~2,000 nodes, burst sampling, 2 vCPU: {TBP_MONTY_STEP_S * 1e3:.1f} ms per matching step (mean), "
                 f"training {TBP_MONTY_TRAIN_S:.0f} s. x tbp = {TBP_MONTY_STEP_S * 1e3:.1f} ms / ms/step.")
    ten = [r for r in rows if r["n_objects"] == 10 and r["implementation"] == "engine-burst" and not r.get("skipped")]
    if ten and ten[0]["matching_step_s"]:
        r = ten[0]
        lines.append(f"10-object burst row: {r['matching_step_s'] * 1e3:.3f} ms per matching step, "
                     f"{TBP_MONTY_STEP_S / r['matching_step_s']:.2f}x faster than tbp.monty's "
                     f"{TBP_MONTY_STEP_S * 1e3:.1f} ms ({TBP_MONTY_OBJECTS} objects).")
    classic = [r for r in rows if r["implementation"] == "engine-classic" and not r.get("skipped")
               and r.get("ns_per_hypothesis_step")]
    if classic:
        ns = [r["ns_per_hypothesis_step"] for r in classic]
        parts = ", ".join(f"{r['case']} {v:.1f}" for r, v in zip(classic, ns))
        spread = max(ns) / min(ns) if min(ns) > 0 else float("inf")
        verdict = "roughly flat" if spread <= 2.0 else "NOT flat"
        lines.append(f"Linear in hypotheses (classic updater, ns per hypothesis-step): {parts} "
                     f"(max/min {spread:.2f}: {verdict}).")
    done = [r for r in rows if not r.get("skipped")]
    if done:
        pts = sorted({r["n_points"] for r in done})
        by_pts = "; ".join(
            f"{p:,} points per object for {', '.join(sorted({r['case'] for r in done if r['n_points'] == p}, key=lambda c: int(c[:-3])))}"
            for p in pts)
        r0 = done[0]
        lines.append(f"Objects: the 10 built-in shapes, then perturbed variants (name~round). Surfaces: {by_pts}. "
                     f"Training: 14 rotations x {r0['train_steps']} steps per object, grid model (<= 2,000 nodes).")
        rots = "; ".join(f"{r['case']} {r['eval_rotations']} rotation(s) per object"
                         for r in done if r["implementation"] == done[0]["implementation"])
        capped = [r for r in done if r["implementation"] == done[0]["implementation"]
                  and r["n_eval_episodes"] < r["n_objects"] * r["eval_rotations"]]
        cap_text = ""
        if capped:
            cap_text = (f"; {', '.join(r['case'] for r in capped)}: a subset of "
                        f"{max(r['n_eval_episodes'] for r in capped)} episodes "
                        "at most (objects spread evenly), for the suite's runtime")
        lines.append(f"Evaluation: {r0['eval_steps']}-step walks, no noise; {rots}{cap_text}.")
    comp = info.get("compile")
    reps = info.get("repeats")
    timing = ("Times: kernel seconds of the fused path, fastest of "
              f"{reps} pass(es) per episode ({SLOW_REPEATS} where one pass takes over {SLOW_PASS_S:g} s); " if reps else
              "Times: kernel seconds of the fused path; ")
    timing += ("ms/step = those seconds / matching steps; hypotheses = mean live hypotheses per matching step "
               "(stepwise pass, not timed); train s includes building the flat model")
    if comp:
        timing += "; compile / cache load apart: " + ", ".join(f"{u} {s:.2f} s" for u, s in comp.items())
    if info.get("threads"):
        timing += f"; {info['threads']}"
    lines.append(timing + ".")
    lines.extend(format_workers(all_rows))
    from engine.bench.policy import format_policy

    lines.extend(format_policy(all_rows))
    from engine.bench.modules import format_modules

    lines.extend(format_modules(all_rows))
    return "\n".join(lines)
