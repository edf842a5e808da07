"""Our evidence model against tbp.monty's own, side by side: time per matching step in one process.

The speed goal of the evidence model is a ratio to tbp.monty's matching step. Its figure in
``reference/tbp-monty.md`` (shared docs) was measured on another day, and these VMs drift
by up to 2x between sessions; this script measures both in the same process instead:

1. builds the data of an evidence config (``data.source: shapes`` simulates it,
   ``dataset`` reads it), so both systems see the same observations;
2. trains both: our ``EvidenceExperiment`` (every kernel compiled or loaded first, apart)
   and tbp.monty's ``EvidenceGraphLM`` (``tbp_monty_step.py``: burst sampling, the
   config's ``max_nneighbors``, graphs of at most 2,000 nodes);
3. runs every evaluation episode ``--passes`` times, alternating the two systems episode
   by episode (tbp.monty, then ours), so drift hits both alike, with ``--gap`` seconds of
   idle (untimed) before each episode: the worker threads the other system left spinning
   (OpenBLAS's, OpenMP's) go to sleep first, as they would in a process running one system
   (without it, ours measured 0.96 instead of ~0.7 ms per step right after tbp.monty's
   episodes), and one untimed run of our previous episode before each of ours: a
   tbp.monty episode (~1 s, a large heap) leaves our model and hypothesis arrays out of
   cache, which cost ours 1.08-1.24 ms per step on shapes_10 against 0.69 in a run of its
   own; a run of ours has its previous episode right before each one. The result also
   gives ours alone, episodes back to back, after the passes;
4. reports, per system, the mean time per matching step (all time / all matching steps),
   the accuracy (first pass) and mean steps, and the ratio of the means.

What is timed: ours, the episode kernel's wall time (``EvidenceModel.run_episode``, the
figure ``summary.json`` reports as ``matching_step_s``) over its matching steps; tbp.monty,
each ``EvidenceGraphLM.matching_step`` call (no goal-state generator, so tbp.monty's
figure here leaves out that part of its step: the ratio is, if anything, in its favour).
Both use the machine's 2 cores (our kernels' threads; tbp.monty's thread per object).

Several modules (a config with ``evidence.n_modules`` > 1, e.g.
``configs/shapes_10_5lm_noise.yaml``; ``compare_modules``): our voting modules
(``ModulesExperiment``, one voting episode kernel call per episode) against tbp.monty's
``MontyForEvidenceGraphMatching`` with as many ``EvidenceGraphLM``s, LM ``i`` fed by patch
``i`` (training too), tbp.monty's own ``_vote`` over the config's connectivity
(``voting: all``: its ``5lm_5sm`` matrix), the config's ``vote_weight`` and
``vote_evidence_threshold`` and ``AnyLMsMatch(min_lms_match)``
(``tbp_monty_step.evaluate_modules_episode``). tbp.monty's timed step is the whole step of
all its LMs: ``_step_learning_modules`` + ``_vote`` + ``_set_step_type_and_check_if_done``
(the first two also reported apart); ours the voting episode kernel's wall time over its
matching steps. One pass by default (tbp.monty's five LMs take ~0.2 s per step and its
training ~5x one LM's); ``--monty-cache FILE`` keeps tbp.monty's trained LMs (its own
``snapshot``) and reuses them when the training data and settings are the same (the clean
and noisy 5-module configs share theirs). ``--episodes-csv`` gains
``ours_modules_matched``, ``tbp_modules_matched`` (modules that matched the detected
object) and ``tbp_lm_performance`` (each LM's own ``primary_performance``).

Needs tbp.monty, so run it with the tbp.monty venv's python (see ``tbp_monty_step.py``
for how to make that venv; it also needs numba and PyYAML for our engine), from the
repository root::

    /tmp/venvmonty/bin/python profiling/vs_tbp_monty.py configs/shapes_10.yaml \\
        [--set key=value ...] [--passes 2] [--episodes N] [--json PATH] [--episodes-csv PATH]
    /tmp/venvmonty/bin/python profiling/vs_tbp_monty.py configs/shapes_10_5lm_noise.yaml \\
        --monty-cache /tmp/shapes_10_5lm_monty.pkl --episodes-csv PATH [--episodes N]

``--episodes-csv`` writes one row per evaluation episode, both systems side by side
(``EPISODE_COLUMNS``): outcome, steps, the scored rotation error (for a match by symmetry the
nearest pose still possible, tbp.monty's rule) and the most likely hypothesis' own error (the
pose reported), so a flip hidden by the symmetric minimum shows.

A profiling tool: no test or CI runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _our_side(cfg, ds):
    """Our experiment, trained and warmed up: (experiment, train seconds, compile seconds)."""
    from engine.models.evidence.model import EvidenceExperiment

    ex = EvidenceExperiment(cfg, ds)
    compile_s = ex.warmup()  # the fused path's kernels, on a toy model
    train_s = ex.train()
    return ex, train_s, compile_s


def _our_episode(ex, e: int) -> dict:
    """One evaluation episode on our fused path: outcome, matching steps, kernel seconds."""
    from kernels import evidence as kev

    code, istate, _, secs, sc = ex.model.eval_episode(ex.dataset, ex.features, e)
    return {"outcome": sc["outcome"], "steps": int(istate[kev.IS_MATCHING_STEPS]), "seconds": float(secs),
            "rotation_error_deg": sc["rotation_error_deg"], "detected": sc["detected"],
            "symmetric": bool(sc["symmetric"]), "mlh_rotation_error_deg": _mlh_error(ex, e, sc)}


def _mlh_error(ex, e: int, sc: dict):
    """The most likely hypothesis' own rotation error (the reported pose) when its object is the
    episode's, in degrees; a match by symmetry scores the nearest possible pose instead."""
    from engine.data.rotations import quat_to_matrix
    from engine.models.evidence.model import rotation_angle_deg

    ds = ex.dataset
    if sc.get("detected_rotation") is None or sc.get("mlh_object") != str(ds.object_names[int(ds.episode_object[e])]):
        return None
    truth = quat_to_matrix(ds.episode_rotation[e].astype("float32")).astype("float64")
    return rotation_angle_deg(sc["detected_rotation"], truth)


def _workers_side(cfg, ex, n_workers: int, log) -> dict:
    """Our evaluation of every evaluation episode over ``n_workers`` Dask worker processes from a
    saved model (``engine.run.workers``, as ``run --model M --workers N``): the evaluation's
    wall time (``eval_s``: cluster start and each worker's loading apart) per matching step."""
    import dataclasses
    import tempfile

    from engine.run import registry, workers

    with tempfile.TemporaryDirectory(prefix="vs-tbp-monty-") as tmp:
        model = Path(tmp) / "model.npz"
        registry.save_model(cfg, ex, model)
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(model)),
                                execution=dataclasses.replace(cfg.execution, workers=n_workers))
        wex = registry.load_experiment(c, data=ex.dataset)
        wex.warmup()
        result, info = workers.run(wex, c)
    steps = sum(e.steps for e in result.episodes)
    log(f"ours over {n_workers} workers: eval_s {info['eval_s']:.2f} s for {steps} matching steps "
        f"(cluster start {info['cluster_start_s'] or 0:.2f} s, worker setup {info.get('worker_setup_s') or 0:.2f} s)")
    return {"workers": n_workers, "eval_s": info["eval_s"], "matching_steps": steps,
            "eval_wall_per_step_s": info["eval_s"] / steps if steps else None,
            "cluster_start_s": info["cluster_start_s"], "worker_setup_s": info.get("worker_setup_s"),
            "accuracy": sum(e.outcome == "correct" for e in result.episodes) / max(1, len(result.episodes))}


def compare(cfg, *, passes: int = 2, episodes: int | None = None, gap: float = 0.3, warm_up: bool = True,
            workers: int = 0, monty_cache: Path | None = None, log=print) -> dict:
    """Train both systems on ``cfg``'s data and time their matching steps side by side."""
    import tbp_monty_step as tms

    from engine.data.episodes import build_dataset

    ds = build_dataset(cfg)
    hue_col = tms.hue_column(ds)
    ex, our_train_s, our_compile_s = _our_side(cfg, ds)
    log(f"ours: trained in {our_train_s:.1f} s (compile/cache load {our_compile_s:.1f} s apart), "
        f"nodes per object {ex.model.nodes_per_object}")
    k = cfg.evidence.max_nneighbors
    monty, lm = tms.build_monty(k, 20, "burst", True, with_hsv=hue_col is not None)
    monty_train_s = _train_monty(monty, lm, ds, hue_col, {"n_modules": 1, "hsv": hue_col is not None},
                                 monty_cache, log)
    nodes = [int(lm.graph_memory.get_num_nodes_in_graph(g, tms.CHANNEL)) for g in lm.get_all_known_object_ids()]
    log(f"tbp.monty: nodes per object {nodes}")

    rows = _eval_rows(ds, episodes)
    max_steps = cfg.experiment.max_eval_steps
    ours = {"seconds": 0.0, "steps": 0, "first": []}
    theirs = {"seconds": 0.0, "steps": 0, "first": []}
    for p in range(passes):
        t_pass = time.perf_counter()
        for i, e in enumerate(rows):
            time.sleep(gap)
            m = tms.evaluate_episode(monty, lm, ds, e, hue_col, max_steps)
            time.sleep(gap)
            if warm_up:  # untimed: the episode before this one, as in a run of ours alone
                _our_episode(ex, rows[i - 1])
            o = _our_episode(ex, e)
            theirs["seconds"] += sum(m["step_times_s"])
            theirs["steps"] += len(m["step_times_s"])
            ours["seconds"] += o["seconds"]
            ours["steps"] += o["steps"]
            if p == 0:
                theirs["first"].append({k_: m.get(k_) for k_ in ("outcome", "steps", "rotation_error_deg",
                                                                  "detected", "symmetric",
                                                                  "mlh_rotation_error_deg")})
                ours["first"].append(o)
        log(f"pass {p + 1}/{passes}: {len(rows)} episodes each, {time.perf_counter() - t_pass:.1f} s; so far "
            f"ours {1e3 * ours['seconds'] / ours['steps']:.3f} ms, "
            f"tbp.monty {1e3 * theirs['seconds'] / theirs['steps']:.2f} ms per matching step")
    # For reference: ours alone, its episodes back to back (no tbp.monty between them).
    alone = [_our_episode(ex, e) for e in rows]
    alone_s = sum(o["seconds"] for o in alone) / sum(o["steps"] for o in alone)

    summary = _summary

    import numba

    import kernels

    out = {"config": str(cfg.source_file), "n_objects": len(ds.object_names), "n_eval_episodes": len(rows),
           "openmp": f"{kernels.OPENMP_WAIT_POLICY_SOURCE}: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
                     f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, numba threading layer "
                     f"{numba.threading_layer()}, {numba.get_num_threads()} threads",
           "passes": passes, "gap_s": gap, "max_nneighbors": k, "tbp_monty_version": tms.tbp_version(),
           "ours": summary(ours, our_train_s), "tbp_monty": summary(theirs, monty_train_s),
           "our_nodes_per_object": [int(n) for n in ex.model.nodes_per_object],
           "tbp_monty_nodes_per_object": nodes}
    out["speedup"] = out["tbp_monty"]["matching_step_s"] / out["ours"]["matching_step_s"]
    out["episodes"] = episode_rows(ds, rows, ours["first"], theirs["first"])
    if workers:
        w = _workers_side(cfg, ex, workers, log)
        out["ours_workers"] = w
        # evaluation throughput: tbp.monty's time per matching step over our evaluation's wall
        # time per matching step with the episodes spread over worker processes
        out["throughput_speedup"] = out["tbp_monty"]["matching_step_s"] / w["eval_wall_per_step_s"]
    out["warm_up"] = warm_up
    out["ours_back_to_back_step_s"] = alone_s
    return out


def _train_monty(monty, lm, ds, hue_col, settings: dict, monty_cache, log) -> float:
    """Train tbp.monty's LMs on ``ds``'s training episodes, or restore them from
    ``monty_cache`` when it was saved from the same training data and ``settings``;
    returns the training seconds (those of the run that saved the cache)."""
    import tbp_monty_step as tms

    key = tms.training_key(ds, settings) if monty_cache else None
    if monty_cache:
        train_s = tms.load_trained(monty_cache, monty, key)
        if train_s is not None:
            log(f"tbp.monty: trained LMs loaded from {monty_cache} (trained in {train_s:.1f} s)")
            return train_s
    train_s = tms.train(monty, lm, ds, hue_col)
    log(f"tbp.monty: trained in {train_s:.1f} s")
    if monty_cache:
        tms.save_trained(monty_cache, monty, key, train_s)
    return train_s


def _summary(side, train_s):
    """A system's figures: time per matching step, and accuracy, mean steps and rotation
    error (mean, median and 90th percentile over its correct episodes) of its first pass."""
    first = side["first"]
    ok = [r for r in first if r["outcome"] == "correct"]
    errs = [r["rotation_error_deg"] for r in ok if r["rotation_error_deg"] is not None]
    out = {"matching_step_s": side["seconds"] / side["steps"], "matching_steps": side["steps"],
           "accuracy": len(ok) / len(first), "mean_steps": statistics.fmean(r["steps"] for r in first),
           "mean_rotation_error_deg": statistics.fmean(errs) if errs else None,
           "median_rotation_error_deg": statistics.median(errs) if errs else None,
           "p90_rotation_error_deg": _percentile(errs, 90.0), "train_s": train_s}
    if first and "modules_matched" in first[0]:
        out["mean_modules_matched"] = statistics.fmean(r["modules_matched"] for r in first)
    return out


def _our_modules_episode(ex, i: int) -> dict:
    """Our evaluation episode ``i`` (index among the evaluation episodes) of several modules:
    one voting episode kernel call (``ModulesModel.run_episode``); seconds its wall time."""
    rec = ex.evaluate_episode(0, i)
    return {"outcome": rec.outcome, "steps": int(rec.steps), "seconds": float(rec.seconds),
            "rotation_error_deg": rec.rotation_error_deg, "detected": rec.detected,
            "symmetric": bool(rec.symmetric), "modules_matched": int(rec.modules_matched),
            "module_outcomes": list(rec.module_outcomes)}


def compare_modules(cfg, *, passes: int = 1, episodes: int | None = None, gap: float = 0.3,
                    warm_up: bool = True, monty_cache: Path | None = None, log=print,
                    episodes_csv: Path | None = None) -> dict:
    """``compare`` for a config with ``evidence.n_modules`` > 1: our voting modules against
    tbp.monty's MontyForEvidenceGraphMatching with as many EvidenceGraphLMs, its voting and
    ``AnyLMsMatch(min_lms_match)`` (``tbp_monty_step.evaluate_modules_episode``).

    tbp.monty's timed step: ``_step_learning_modules`` + ``_vote`` +
    ``_set_step_type_and_check_if_done`` (all LMs' matching steps, the vote exchange, the
    terminal checks); ours: the voting episode kernel's wall time. ``monty_cache``: a file
    for tbp.monty's trained LMs (``tbp_monty_step.save_trained``), reused when its training
    data and settings are the same (clean and noisy configs share their training data).
    ``episodes_csv``: rewritten after every episode of the first pass (a long run stopped
    early keeps what it measured)."""
    import tbp_monty_step as tms

    from engine.data.episodes import build_dataset
    from engine.models.evidence.modules import ModulesExperiment

    ev = cfg.evidence
    n = ev.n_modules
    ds = build_dataset(cfg)
    hue_col = tms.hue_column(ds)
    ex = ModulesExperiment(cfg, ds)
    our_compile_s = ex.warmup()
    our_train_s = ex.train()
    log(f"ours: {n} modules trained in {our_train_s:.1f} s (compile/cache load {our_compile_s:.1f} s apart), "
        f"nodes per object (summed over modules) {ex.model.nodes_per_object}")
    k = ev.max_nneighbors
    voting = None if ev.voting is None else ev.voting if isinstance(ev.voting, str) else [list(v) for v in ev.voting]
    monty = tms.build_monty_modules(n, k, 20, "burst", True, hue_col is not None, voting=voting,
                                    vote_weight=ev.vote_weight, vote_evidence_threshold=ev.vote_evidence_threshold,
                                    min_lms_match=ev.min_lms_match)
    settings = {"n_modules": n, "hsv": hue_col is not None}  # what the graph models depend on
    monty_train_s = _train_monty(monty, monty.learning_modules[0], ds, hue_col, settings, monty_cache, log)
    nodes = tms.nodes_per_object(monty)
    log(f"tbp.monty: nodes per object and LM {nodes}")

    rows = _eval_rows(ds, episodes)
    max_steps = cfg.experiment.max_eval_steps
    ours = {"seconds": 0.0, "steps": 0, "first": []}
    theirs = {"seconds": 0.0, "steps": 0, "lm_seconds": 0.0, "vote_seconds": 0.0, "first": []}
    for p in range(passes):
        t_pass = time.perf_counter()
        for i, e in enumerate(rows):
            time.sleep(gap)
            m = tms.evaluate_modules_episode(monty, ds, e, hue_col, max_steps, ev.min_lms_match)
            time.sleep(gap)
            if warm_up:  # untimed: the episode before this one, as in a run of ours alone
                _our_modules_episode(ex, i - 1 if i else len(rows) - 1)
            o = _our_modules_episode(ex, i)
            theirs["seconds"] += sum(m["step_times_s"])
            theirs["lm_seconds"] += sum(m["lm_step_times_s"])
            theirs["vote_seconds"] += sum(m["vote_times_s"])
            theirs["steps"] += len(m["step_times_s"])
            ours["seconds"] += o["seconds"]
            ours["steps"] += o["steps"]
            if p == 0:
                theirs["first"].append({k_: m.get(k_) for k_ in ("outcome", "steps", "rotation_error_deg", "detected",
                                                                  "symmetric", "modules_matched", "lm_performance")})
                ours["first"].append(o)
                log(f"  episode {i} {m['object']}: tbp.monty {m['outcome']} {_deg(m['rotation_error_deg'])} "
                    f"{m['steps']} steps {1e3 * statistics.fmean(m['step_times_s']):.1f} ms/step, matched "
                    f"{m['modules_matched']}; ours {o['outcome']} {_deg(o['rotation_error_deg'])} {o['steps']} steps "
                    f"{1e3 * o['seconds'] / max(1, o['steps']):.2f} ms/step, matched {o['modules_matched']}")
                if episodes_csv:
                    write_episodes_csv(episodes_csv, episode_rows(ds, rows, ours["first"], theirs["first"]))
        log(f"pass {p + 1}/{passes}: {len(rows)} episodes each, {time.perf_counter() - t_pass:.1f} s; so far "
            f"ours {1e3 * ours['seconds'] / ours['steps']:.3f} ms, "
            f"tbp.monty {1e3 * theirs['seconds'] / theirs['steps']:.2f} ms per matching step")

    import numba

    import kernels

    out = {"config": str(cfg.source_file), "n_objects": len(ds.object_names), "n_eval_episodes": len(rows),
           "n_modules": n, "voting": voting, "min_lms_match": ev.min_lms_match, "vote_weight": ev.vote_weight,
           "vote_evidence_threshold": ev.vote_evidence_threshold, "vote_transform": ev.vote_transform,
           "openmp": f"{kernels.OPENMP_WAIT_POLICY_SOURCE}: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
                     f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}, numba threading layer "
                     f"{numba.threading_layer()}, {numba.get_num_threads()} threads",
           "passes": passes, "gap_s": gap, "max_nneighbors": k, "tbp_monty_version": tms.tbp_version(),
           "tbp_monty_timed": "_step_learning_modules + _vote + _set_step_type_and_check_if_done",
           "ours": _summary(ours, our_train_s), "tbp_monty": _summary(theirs, monty_train_s),
           "our_nodes_per_object": [int(x) for x in ex.model.nodes_per_object],
           "tbp_monty_nodes_per_object": nodes}
    out["tbp_monty"]["lm_steps_s"] = theirs["lm_seconds"] / theirs["steps"]
    out["tbp_monty"]["vote_s"] = theirs["vote_seconds"] / theirs["steps"]
    out["speedup"] = out["tbp_monty"]["matching_step_s"] / out["ours"]["matching_step_s"]
    out["episodes"] = episode_rows(ds, rows, ours["first"], theirs["first"])
    out["warm_up"] = warm_up
    return out


#: the columns of ``--episodes-csv``: one row per evaluation episode, both systems side by side
EPISODE_COLUMNS = ("episode", "object", "rotation_w", "rotation_x", "rotation_y", "rotation_z",
                   "ours_outcome", "ours_detected", "ours_steps", "ours_rotation_error_deg", "ours_symmetric",
                   "tbp_outcome", "tbp_detected", "tbp_steps", "tbp_rotation_error_deg", "tbp_symmetric",
                   "same_outcome", "rotation_error_diff_deg", "ours_mlh_rotation_error_deg",
                   "tbp_mlh_rotation_error_deg")


#: the extra columns with several modules: how many modules matched the detected object
MODULE_COLUMNS = ("ours_modules_matched", "tbp_modules_matched", "tbp_lm_performance")


def episode_rows(ds, rows, ours: list, theirs: list) -> list[dict]:
    """One dict per evaluation episode (``EPISODE_COLUMNS``, and ``MODULE_COLUMNS`` with
    several modules): the first pass of each system."""
    out = []
    for i, (e, o, m) in enumerate(zip(rows, ours, theirs)):
        q = [float(x) for x in ds.episode_rotation[e]]
        eo, em = o.get("rotation_error_deg"), m.get("rotation_error_deg")
        out.append({"episode": i, "object": str(ds.object_names[int(ds.episode_object[e])]),
                    "rotation_w": q[0], "rotation_x": q[1], "rotation_y": q[2], "rotation_z": q[3],
                    "ours_outcome": o["outcome"], "ours_detected": o.get("detected"), "ours_steps": o["steps"],
                    "ours_rotation_error_deg": eo, "ours_symmetric": o.get("symmetric"),
                    "tbp_outcome": m["outcome"], "tbp_detected": m.get("detected"), "tbp_steps": m["steps"],
                    "tbp_rotation_error_deg": em, "tbp_symmetric": m.get("symmetric"),
                    "same_outcome": o["outcome"] == m["outcome"],
                    "rotation_error_diff_deg": None if eo is None or em is None else float(eo) - float(em),
                    "ours_mlh_rotation_error_deg": o.get("mlh_rotation_error_deg"),
                    "tbp_mlh_rotation_error_deg": m.get("mlh_rotation_error_deg")})
        if "modules_matched" in o:
            out[-1].update(ours_modules_matched=o["modules_matched"], tbp_modules_matched=m["modules_matched"],
                           tbp_lm_performance=" ".join(m["lm_performance"]))
    return out


def write_episodes_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` (``episode_rows``) as CSV, written to a temporary file and renamed."""
    import csv
    import io

    buf = io.StringIO()
    cols = EPISODE_COLUMNS + (MODULE_COLUMNS if rows and "ours_modules_matched" in rows[0] else ())
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]))
                    for k in cols})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def format_comparison(r: dict) -> str:
    lines = [f"{r['config']}: {r['n_objects']} objects, {r['n_eval_episodes']} evaluation episodes x "
             f"{r['passes']} passes, alternating episode by episode ({r['gap_s']:g} s idle before each); "
             f"max_nneighbors {r['max_nneighbors']}",
             f"{'system':<16} {'ms/step':>9} {'steps timed':>11} {'correct':>8} {'mean steps':>10} "
             f"{'rot err mean / median / p90':>27} {'train s':>8}" + (" matched" if "n_modules" in r else "")]
    for name, key in (("ours", "ours"), (f"tbp.monty {r['tbp_monty_version']}", "tbp_monty")):
        s = r[key]
        err = "-" if s["mean_rotation_error_deg"] is None else (
            f"{s['mean_rotation_error_deg']:.2f} / {s['median_rotation_error_deg']:.2f} / "
            f"{s['p90_rotation_error_deg']:.2f}")
        lines.append(f"{name:<16} {1e3 * s['matching_step_s']:>9.3f} {s['matching_steps']:>11} "
                     f"{s['accuracy']:>8.1%} {s['mean_steps']:>10.1f} {err:>27} {s['train_s']:>8.1f}"
                     + (f" {s['mean_modules_matched']:>7.2f}" if "mean_modules_matched" in s else ""))
    lines.append(f"tbp.monty's matching step / ours: {r['speedup']:.1f}x (means over all timed steps)")
    if "n_modules" in r:
        t = r["tbp_monty"]
        lines.append(f"{r['n_modules']} modules, voting {r['voting']}, min_lms_match {r['min_lms_match']}, "
                     f"vote_weight {r['vote_weight']:g}, vote_evidence_threshold {r['vote_evidence_threshold']:g}, "
                     f"our vote_transform {r['vote_transform']}; tbp.monty timed: {r['tbp_monty_timed']} "
                     f"({1e3 * t['lm_steps_s']:.1f} ms the LMs' steps, {1e3 * t['vote_s']:.1f} ms the vote, "
                     f"the rest the terminal checks); ours: the voting episode kernel's wall time")
    else:
        lines.append(f"ours alone afterwards, episodes back to back: {1e3 * r['ours_back_to_back_step_s']:.3f} ms "
                     f"per step; warm-up run before each of ours: {'yes' if r['warm_up'] else 'no'}")
    w = r.get("ours_workers")
    if w:
        lines.append(f"ours over {w['workers']} worker processes: evaluation wall time {w['eval_s']:.2f} s for "
                     f"{w['matching_steps']} matching steps, {1e3 * w['eval_wall_per_step_s']:.3f} ms per step; "
                     f"tbp.monty's step / that: {r['throughput_speedup']:.1f}x")
    eps = r.get("episodes") or []
    differ = [e for e in eps if not e["same_outcome"] or (e["rotation_error_diff_deg"] is not None
                                                          and abs(e["rotation_error_diff_deg"]) > 5)]
    lines.append(f"episodes: {sum(e['same_outcome'] for e in eps)}/{len(eps)} with the same outcome; "
                 f"{len(differ)} differ in outcome or by more than 5 degrees of rotation error")
    flips = [sum(1 for e in eps if e[f"{side}_outcome"] == "correct" and (e[f"{side}_mlh_rotation_error_deg"] or 0) > 90)
             for side in ("ours", "tbp")]
    lines.append(f"correct episodes whose most likely pose is more than 90 degrees off (scored by the symmetric "
                 f"minimum): ours {flips[0]}, tbp.monty {flips[1]}")
    for e in differ[:40]:
        matched = (f" ({e['ours_modules_matched']} / {e['tbp_modules_matched']} modules matched)"
                   if "ours_modules_matched" in e else "")
        lines.append(f"  episode {e['episode']} {e['object']}: ours {e['ours_outcome']} "
                     f"{_deg(e['ours_rotation_error_deg'])} in {e['ours_steps']} steps, tbp.monty {e['tbp_outcome']} "
                     f"{_deg(e['tbp_rotation_error_deg'])} in {e['tbp_steps']} steps{matched} (most likely pose: ours "
                     f"{_deg(e['ours_mlh_rotation_error_deg'])}, tbp.monty {_deg(e['tbp_mlh_rotation_error_deg'])})")
    lines.append(f"OpenMP: {r['openmp']}")
    return "\n".join(lines)


def _eval_rows(ds, episodes):
    """The evaluation episodes' rows of ``ds`` (the first ``episodes`` of them; None: all)."""
    from engine.data.dataset import EVAL

    rows = [int(e) for e in ds.episode_indices(EVAL)]
    return rows if episodes is None else rows[:episodes]


def _percentile(xs, q: float):
    """The ``q``-th percentile of ``xs`` (linear interpolation, as numpy's default); None if empty."""
    if not xs:
        return None
    v = sorted(float(x) for x in xs)
    pos = (len(v) - 1) * q / 100.0
    i = int(pos)
    return v[i] if i + 1 >= len(v) else v[i] + (v[i + 1] - v[i]) * (pos - i)


def _deg(x) -> str:
    return "-" if x is None else f"{x:.2f} deg"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="an evidence config (e.g. configs/shapes_10.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--passes", type=int, default=None,
                   help="timed passes over the evaluation episodes (default 2; 1 with several modules)")
    p.add_argument("--episodes", type=int, default=None, help="only the first N evaluation episodes")
    p.add_argument("--gap", type=float, default=0.3, help="idle seconds before each timed episode")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="no untimed run of our previous episode before each of ours")
    p.add_argument("--workers", type=int, default=0,
                   help="also evaluate ours over N worker processes from a saved model (the throughput ratio)")
    p.add_argument("--episodes-csv", type=Path, help="write the per-episode comparison (both systems) as CSV")
    p.add_argument("--monty-cache", type=Path,
                   help="keep tbp.monty's trained LMs in this file and reuse them when the "
                        "training data and settings are the same")
    p.add_argument("--json", type=Path, help="also write the result as JSON")
    a = p.parse_args(argv)
    from engine.config import load_config
    from engine.errors import UserError

    try:
        cfg = load_config(a.config, a.overrides)
        if cfg.model.type != "evidence":
            raise UserError(f"{a.config}: model.type must be evidence")
        log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        if cfg.evidence.n_modules > 1:
            if a.workers:
                raise UserError(f"{a.config}: --workers needs saved models, not available with several modules")
            r = compare_modules(cfg, passes=max(1, a.passes or 1), episodes=a.episodes, gap=max(0.0, a.gap),
                                warm_up=a.warm_up, monty_cache=a.monty_cache, log=log, episodes_csv=a.episodes_csv)
        else:
            r = compare(cfg, passes=max(1, a.passes or 2), episodes=a.episodes, gap=max(0.0, a.gap),
                        warm_up=a.warm_up, workers=max(0, a.workers), monty_cache=a.monty_cache, log=log)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # tbp.monty lives in its own venv (see tbp_monty_step.py)
        print(f"error: {exc}; run this with the tbp.monty venv's python", file=sys.stderr)
        return 2
    print(format_comparison(r))
    if a.episodes_csv:
        write_episodes_csv(a.episodes_csv, r["episodes"])
    if a.json:
        a.json.write_text(json.dumps(r, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    # OpenMP's default wait policy (workers spin ~300,000 rounds, then sleep), for our
    # kernels and torch's alike, whatever the load average says when ``kernels`` is
    # imported: it switches to sleeping workers on a busy machine (see
    # ``kernels._choose_openmp_wait_policy``), and a tbp.monty run that just finished
    # counts as busy. Sleeping workers cost each of our step's parallel regions a
    # wake-up: 1.075 ms per step instead of 0.69 on shapes_10. Spinning forever
    # (ACTIVE) would instead take a core from tbp.monty's episodes.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default, set explicitly
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here.parent), str(here)]  # ``engine``, ``kernels`` and tbp_monty_step
    sys.exit(main())
