"""The evidence model type (``engine.run.registry``): building its experiment from a
config, its summary, its results rows and table, its plots.

Results (written by ``engine.run.results``, atomically, like every result file):

- ``summary.json``: ``accuracy`` (correct / evaluation episodes), ``accuracy_incl_mlh``
  (time-outs whose most likely hypothesis names the right object count as correct,
  as tbp.monty does), ``outcomes`` (counts of correct, confused, no_match, time_out),
  ``mean_rotation_error_deg`` (over correct episodes), ``mean_steps``,
  ``matching_step_s`` (mean wall time of one matching step, compile excluded),
  ``train_s``, and more (see :func:`summary`);
- ``episodes.csv``: one row per evaluation episode (:data:`EPISODE_COLUMNS`);
- with ``experiment.plot_evidence`` (needs matplotlib, the ``plot`` extra):
  ``evidence_EPOCH_EPISODE.png``, the evidence of each object's best hypothesis
  over the steps of each evaluation episode.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engine import __version__
from engine.errors import UserError
from engine.files import atomic_write
from engine.run.results import RunReport, shown_rows
from engine.run.runtime import threading_info

log = logging.getLogger(__name__)

EPISODE_COLUMNS = ("epoch", "episode", "object", "rotation_w", "rotation_x", "rotation_y", "rotation_z",
                   "detected_object", "mlh_object", "outcome", "steps", "rotation_error_deg", "symmetric",
                   "hypotheses", "seconds")


def summary(cfg, result, data_s: float | None = None, data_compile_s: float | None = None) -> dict:
    """summary.json of an evidence run.

    ``data_s``: seconds to simulate or read the dataset; ``data_compile_s``: seconds
    to compile or load the sensor simulation's kernels (0 for a recorded dataset).
    """
    eps = result.episodes
    n = len(eps)
    counts = Counter(e.outcome for e in eps)
    correct = [e for e in eps if e.outcome == "correct"]
    mlh_right = sum(1 for e in eps if e.outcome == "time_out" and e.mlh_correct)
    errs = [e.rotation_error_deg for e in correct if e.rotation_error_deg is not None]
    steps = sum(e.steps for e in eps)
    secs = sum(e.seconds for e in eps)
    return {
        "engine_version": __version__,
        "experiment": cfg.experiment.name,
        "model": "evidence",
        "updater": cfg.evidence.updater,
        "data_source": cfg.data.source,
        "path": result.path,
        "n_objects": len(result.object_names),
        "objects": list(result.object_names),
        "nodes_per_object": result.nodes_per_object,
        "n_train_episodes": result.n_train_episodes,
        "n_eval_episodes": n,
        "accuracy": counts["correct"] / n if n else None,
        "accuracy_incl_mlh": (counts["correct"] + mlh_right) / n if n else None,
        "outcomes": {k: counts.get(k, 0) for k in ("correct", "confused", "no_match", "time_out")},
        "time_out_mlh_correct": mlh_right,
        "mean_rotation_error_deg": float(np.mean(errs)) if errs else None,
        "median_rotation_error_deg": float(np.median(errs)) if errs else None,
        "mean_steps": steps / n if n else None,
        "matching_step_s": secs / steps if steps else None,
        "train_s": result.train_s,
        "compile_s": result.compile_s,
        "run_s": result.run_s,
        "data_s": data_s,
        "data_compile_s": data_compile_s,
        **threading_info(),
        "config": cfg.to_dict(),
    }


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def episode_rows(result) -> list[list]:
    """episodes.csv's rows (columns :data:`EPISODE_COLUMNS`)."""
    rows = []
    for e in result.episodes:
        q = [f"{float(v):.7g}" for v in e.rotation]
        rows.append([e.epoch, e.episode, e.object, *q, e.detected or "", e.mlh_object or "", e.outcome, e.steps,
                     _fmt(e.rotation_error_deg, ".4f"), int(e.symmetric), e.n_hypotheses, f"{e.seconds:.6g}"])
    return rows


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("experiment.plot_evidence needs matplotlib: pip install '.[plot]'") from None
    return plt


def write_plots(out_dir: Path, result) -> list[Path]:
    """One PNG per evaluation episode: each object's best evidence after each step."""
    plt = _matplotlib()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for e in result.episodes:
        if e.trace is None or not len(e.trace):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = np.arange(1, len(e.trace) + 1)
        for o, name in enumerate(result.object_names):
            y = np.where(np.isfinite(e.trace[:, o]), e.trace[:, o], np.nan)
            ax.plot(steps, y, label=name, lw=2.2 if name == e.object else 1.0)
        ax.set_xlabel("matching step")
        ax.set_ylabel("evidence of the best hypothesis")
        ax.set_title(f"episode {e.episode} (epoch {e.epoch}): {e.object} -> {e.outcome}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"evidence_{e.epoch}_{e.episode}.png"
        try:
            atomic_write(path, lambda f: fig.savefig(f, dpi=90, format="png"))
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def format_table(summary_data: dict, result, max_rows: int = 40) -> str:
    head = (f"{'ep':>4} {'object':<12} {'detected':<12} {'outcome':<9} {'steps':>5} {'rot err':>8} "
            f"{'sym':>3} {'hyps':>7}")
    lines = [head, "-" * len(head)]
    eps = result.episodes
    for e in shown_rows(eps, max_rows):
        if e is None:
            lines.append(f"... {len(eps) - max_rows} more episodes ...")
            continue
        det = e.detected or (f"({e.mlh_object})" if e.mlh_object else "-")
        err = "-" if e.rotation_error_deg is None else f"{e.rotation_error_deg:7.2f}d"
        lines.append(f"{e.episode:>4} {e.object[:12]:<12} {det[:12]:<12} {e.outcome:<9} {e.steps:>5} {err:>8} "
                     f"{'yes' if e.symmetric else '':>3} {e.n_hypotheses:>7}")
    s = summary_data
    lines.append("")
    if s["n_eval_episodes"]:
        err = s["mean_rotation_error_deg"]
        lines.append(
            f"{s['experiment']}: {s['n_objects']} objects, {s['n_eval_episodes']} evaluation episodes: "
            f"accuracy {s['accuracy']:.3f} ({s['accuracy_incl_mlh']:.3f} incl. MLH), outcomes {s['outcomes']}, "
            f"mean rotation error {'-' if err is None else f'{err:.2f} deg'}, mean steps {s['mean_steps']:.1f}, "
            f"{s['matching_step_s'] * 1e3:.3f} ms per matching step ({s['updater']}, {s['path']}"
            f"{_busy_note(s)}), training {s['train_s']:.2f} s{_compile_note(s)}")
    else:
        lines.append(f"{s['experiment']}: {s['n_objects']} objects learned in {s['train_s']:.2f} s"
                     f"{_compile_note(s)}; no evaluation")
    return "\n".join(lines)


def _busy_note(s: dict) -> str:
    """Said beside the step time when OpenMP's workers were passive because the machine was busy."""
    if s.get("openmp_wait_policy_source") != "busy":
        return ""
    return ("; OpenMP workers passive: the machine was busy at start, which slows each step; "
            "OMP_WAIT_POLICY=ACTIVE overrides")


def _compile_note(s: dict) -> str:
    """The data's and the kernels' time for the table line (", data 1.23 s, compile 0.45 s")."""
    compile_s = (s.get("compile_s") or 0.0) + (s.get("data_compile_s") or 0.0)
    data = f", data {s['data_s']:.2f} s" if s.get("data_s") is not None else ""
    return f"{data}, compile {compile_s:.2f} s"


def report(cfg, result, data_s: float | None = None, data_compile_s: float | None = None) -> RunReport:
    """The run's summary, episodes.csv rows and printed table."""
    data = summary(cfg, result, data_s=data_s, data_compile_s=data_compile_s)
    return RunReport(data, EPISODE_COLUMNS, episode_rows(result), format_table(data, result))


# --------------------------------------------------------------------------- the model type's protocol
# (engine.run.registry: what the CLI, warm-up and validate ask of a model type)

#: kernel modules this model calls (the cache inventory of ``python -m engine info``)
KERNEL_MODULES = ("kernels.evidence", "kernels.evidence_phases", "kernels.lane_cells", "kernels.lanes",
                  "kernels.graph", "kernels.geometry", "kernels.kdtree", "kernels.select")


def entry_kernel(cfg) -> str:
    """The kernel a run spends most of its compile time on: not in the cache means a first
    run, which compiles (the CLI says so)."""
    return "kernels.evidence.evidence_episode"


def build(cfg, *, progress: bool = False):
    """The config's observations (simulated or read) and its experiment, ready to run.

    The sensor's kernels are compiled (or loaded) apart first, so that ``data_s`` is
    the simulation itself and a cold cache shows up in ``data_compile_s``. When the
    episode kernel is not in the kernel cache (a first run), a second process compiles
    it meanwhile (``engine.run.background``); the experiment's ``warmup`` waits for it.
    """
    from engine.data.episodes import build_dataset
    from engine.models.evidence.model import EvidenceExperiment, warmup_sensor_kernels
    from engine.run import background
    from engine.run import runtime

    if cfg.experiment.plot_evidence:
        _matplotlib()  # fail before the run, not after it
    ahead = None
    # (a read-only kernel cache could not take what the second process compiles)
    if not runtime.is_cached(entry_kernel(cfg)) and not runtime.READ_ONLY_CACHE:
        ahead = background.start("from engine.models.evidence.model import compile_episode_kernel; "
                                 "compile_episode_kernel()")
    try:
        data_compile_s = warmup_sensor_kernels() if cfg.data.source != "dataset" else 0.0
        t0 = time.perf_counter()
        ds = build_dataset(cfg)
        ex = EvidenceExperiment(cfg, ds, progress=progress, data_s=time.perf_counter() - t0,
                                data_compile_s=data_compile_s)
    except BaseException:
        if ahead is not None:
            ahead.stop()
        raise
    ex.episode_kernel_ahead = ahead
    return ex


def describe_data(cfg) -> str:
    """What an evidence config's data is, checked without simulating anything (a recorded
    dataset: also that the model can hold each of its objects)."""
    p = cfg.data.params
    if cfg.data.source == "dataset":
        from engine.data.dataset import read_dataset
        from engine.data.episodes import check_objects_fit

        ds = read_dataset(p["path"])
        check_objects_fit(cfg, ds)
        return (f"dataset: {ds.n_steps} observations, {ds.n_episodes} episodes, {ds.n_objects} objects, "
                f"features {list(ds.feature_names)}")
    from engine.data import shapes

    names = list(p["objects"]) if p["objects"] is not None else ([] if p["mesh_dir"] else list(shapes.BUILTIN_SHAPES))
    meshes = [n for n, _ in shapes.load_mesh_folder(p["mesh_dir"])] if p["mesh_dir"] else []
    return (f"shapes: {len(names) + len(meshes)} objects ({', '.join(names + meshes)}), "
            f"{p['eval_rotations']} evaluation rotations each")


def warmup_config(cfg) -> None:
    """Compile (or load) every kernel the config can use: learning, both evaluation paths
    and (simulated data) the sensor's."""
    from engine.models.evidence.model import warmup_kernels

    warmup_kernels(cfg.evidence, simulate=cfg.data.source == "shapes")
