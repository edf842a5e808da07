"""Running the evidence model from a config: its data, its results files, its summary table.

``python -m engine run`` hands configs with ``model.type: evidence`` to :func:`run`.
Results (written atomically, like every result file of the engine):

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

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engine import __version__
from engine.errors import UserError
from engine.run.results import atomic_write_text
from engine.run.runtime import threading_info

log = logging.getLogger(__name__)

EPISODE_COLUMNS = ("epoch", "episode", "object", "rotation_w", "rotation_x", "rotation_y", "rotation_z",
                   "detected_object", "mlh_object", "outcome", "steps", "rotation_error_deg", "symmetric",
                   "hypotheses", "seconds")


def build_dataset(cfg):
    """The observations of an evidence config: simulated shapes or a recorded dataset."""
    params = cfg.data.params
    if cfg.data.source == "dataset":
        from engine.data.dataset import read_dataset

        return read_dataset(params["path"])
    from engine.data import sensor
    from engine.data import shapes

    names = params["objects"]
    meshes = []
    if params["mesh_dir"] is not None:
        meshes = shapes.load_mesh_folder(params["mesh_dir"])
        if names is None:
            names = []
    if names is None:
        names = list(shapes.BUILTIN_SHAPES)
    clash = sorted(set(names) & {n for n, _ in meshes})
    if clash:
        raise UserError(f"{cfg.source_file}: data.mesh_dir: mesh {clash[0]!r} has the name of a built-in object "
                        "in data.objects; rename the file")
    if not names and not meshes:
        raise UserError(f"{cfg.source_file}: data.objects: no objects to simulate")
    log.info("sampling %d object surfaces (%d points each)", len(names) + len(meshes), params["n_points"])
    surfaces = sensor.builtin_surfaces(names, n_points=params["n_points"], seed=params["seed"])
    for name, mesh in meshes:
        surfaces.append((name, sensor.sample_surface(mesh, n_points=params["n_points"], seed=params["seed"])))
    hue = None
    if params["hue"]:
        # distinct colours: golden-ratio steps around the hue circle
        hue = {name: float((0.618033988749895 * i) % 1.0) for i, (name, _) in enumerate(surfaces)}
    return sensor.simulate(surfaces, train_steps=params["train_steps"], eval_rotations=params["eval_rotations"],
                           eval_steps=params["eval_steps"], noise=sensor.Noise() if params["noise"] else None,
                           seed=params["seed"], hue=hue)


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


def episodes_csv(result) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EPISODE_COLUMNS)
    for e in result.episodes:
        q = [f"{float(v):.7g}" for v in e.rotation]
        w.writerow([e.epoch, e.episode, e.object, *q, e.detected or "", e.mlh_object or "", e.outcome, e.steps,
                    _fmt(e.rotation_error_deg, ".4f"), int(e.symmetric), e.n_hypotheses, f"{e.seconds:.6g}"])
    return buf.getvalue()


def write_results(out_dir, summary_data: dict, result, plot: bool = False) -> tuple[Path, Path]:
    """summary.json, episodes.csv (and evidence plots) into ``out_dir``, each file atomically."""
    out_dir = Path(out_dir)
    s_path, e_path = out_dir / "summary.json", out_dir / "episodes.csv"
    if plot:
        write_plots(out_dir, result)
    atomic_write_text(e_path, episodes_csv(result))
    atomic_write_text(s_path, json.dumps(summary_data, indent=2) + "\n")
    return s_path, e_path


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
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=out_dir)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=90)
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    return paths


def format_table(summary_data: dict, result, max_rows: int = 40) -> str:
    head = (f"{'ep':>4} {'object':<12} {'detected':<12} {'outcome':<9} {'steps':>5} {'rot err':>8} "
            f"{'sym':>3} {'hyps':>7}")
    lines = [head, "-" * len(head)]
    eps = result.episodes
    shown = eps if len(eps) <= max_rows else eps[: max_rows // 2] + [None] + eps[-max_rows // 2:]
    for e in shown:
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


def run(cfg, out_dir: Path, *, progress: bool = False) -> tuple[dict, object, Path, Path]:
    """Build the data, train, evaluate, write the results; returns (summary, result, paths...)."""
    from engine.models.evidence.model import EvidenceExperiment, warmup_sensor_kernels

    if cfg.experiment.plot_evidence:
        _matplotlib()  # fail before the run, not after it
    # The sensor's kernels are compiled (or loaded) apart, so that data_s is the
    # simulation itself and a cold cache shows up in data_compile_s.
    data_compile_s = warmup_sensor_kernels() if cfg.data.source != "dataset" else 0.0
    t0 = time.perf_counter()
    ds = build_dataset(cfg)
    data_s = time.perf_counter() - t0
    ex = EvidenceExperiment(cfg, ds, progress=progress)
    result = ex.run()
    data = summary(cfg, result, data_s=data_s, data_compile_s=data_compile_s)
    try:
        s_path, e_path = write_results(out_dir, data, result, plot=cfg.experiment.plot_evidence)
    except OSError as exc:
        raise UserError(f"cannot write results to {out_dir}: {exc}") from None
    return data, result, s_path, e_path
