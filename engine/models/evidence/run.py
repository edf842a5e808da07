"""The evidence model type (``engine.run.registry``): building its experiment from a
config, its summary, its results rows and table, its plots.

Results (written by ``engine.run.results``, atomically, like every result file):

- ``summary.json``: ``accuracy`` (correct / evaluation episodes), ``accuracy_incl_mlh``
  (time-outs whose most likely hypothesis names the right object count as correct,
  as tbp.monty's ``percent_correct`` does), ``used_mlh`` (the time-outs' share: tbp.monty's
  "used MLH"), ``outcomes`` (counts of correct, confused, no_match, time_out),
  ``mean_rotation_error_deg`` (over correct episodes; ``median_rotation_error_deg`` and
  ``p90_rotation_error_deg`` beside it), ``mean_steps``,
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
from kernels.evidence_layout import MODEL_FIELDS

log = logging.getLogger(__name__)

EPISODE_COLUMNS = ("epoch", "episode", "object", "rotation_w", "rotation_x", "rotation_y", "rotation_z",
                   "detected_object", "mlh_object", "outcome", "steps", "rotation_error_deg", "symmetric",
                   "hypotheses", "seconds")
#: episodes.csv's extra columns when the sensor is in the loop (``policy``)
POLICY_COLUMNS = ("jumps", "jumps_on_object")


def _in_loop(cfg) -> bool:
    return getattr(cfg, "policy", None) is not None and cfg.policy.in_loop


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
        # tbp.monty's "used MLH": the episodes decided by their most likely hypothesis after a
        # time-out (every evidence time-out is), right or wrong; its tables print it beside
        # percent_correct, which is accuracy_incl_mlh
        "used_mlh": counts["time_out"] / n if n else None,
        "mean_rotation_error_deg": float(np.mean(errs)) if errs else None,
        "median_rotation_error_deg": float(np.median(errs)) if errs else None,
        # one outlier (a flip of ~180 degrees) moves the mean: the 90th percentile shows it as one
        "p90_rotation_error_deg": float(np.percentile(errs, 90)) if errs else None,
        "mean_steps": steps / n if n else None,
        **_module_summary(cfg, eps),
        "matching_step_s": secs / steps if steps else None,
        "train_s": result.train_s,
        "compile_s": result.compile_s,
        "run_s": result.run_s,
        "data_s": data_s,
        "data_compile_s": data_compile_s,
        "policy": _policy_name(cfg),
        "mean_jumps": sum(e.jumps for e in eps) / n if n else None,
        "mean_jumps_on_object": sum(e.jumps_on_object for e in eps) / n if n else None,
        # of matching_step_s: moving the sensor and making its observation (0 for the replayed walk)
        "policy_step_s": sum(e.policy_seconds for e in eps) / steps if steps else None,
        "model_path": result.model_path,
        "model_digest": result.model_digest,
        "trained_on": result.trained_on,
        **threading_info(),
        # the kernel threads the evaluation episodes ran with (engine.run.cpu_share: fewer when
        # other processes held cores); empty when evaluated over workers (one thread each)
        "eval_threads": list(getattr(result, "eval_threads", [])),
        "config": cfg.to_dict(),
    }


def _policy_name(cfg) -> str:
    """``walk``, ``curvature``, ``walk+jumps`` or ``curvature+jumps``."""
    p = getattr(cfg, "policy", None)
    if p is None:
        return "walk"
    return p.type + ("+jumps" if p.hypothesis_testing else "")


def _module_summary(cfg, eps) -> dict:
    """summary.json's module fields: ``n_modules``; with several, ``mean_modules_matched`` (modules
    that matched the detected object, over all episodes) and ``module_accuracy`` /
    ``module_accuracy_incl_mlh`` (each module's own outcome correct; with its time-outs whose
    most likely hypothesis is right)."""
    n_mod = cfg.evidence.n_modules
    out = {"n_modules": n_mod}
    if n_mod == 1:
        return out
    n = len(eps)
    out["mean_modules_matched"] = sum(e.modules_matched or 0 for e in eps) / n if n else None
    out["module_accuracy"] = [sum(1 for e in eps if e.module_outcomes and e.module_outcomes[m] == "correct") / n
                              if n else None for m in range(n_mod)]
    return out


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def episode_rows(result, policy_columns: bool = False) -> list[list]:
    """episodes.csv's rows (columns :data:`EPISODE_COLUMNS`, then :data:`POLICY_COLUMNS` with
    ``policy_columns``, and ``modules_matched`` with several modules)."""
    rows = []
    for e in result.episodes:
        q = [f"{float(v):.7g}" for v in e.rotation]
        rows.append([e.epoch, e.episode, e.object, *q, e.detected or "", e.mlh_object or "", e.outcome, e.steps,
                     _fmt(e.rotation_error_deg, ".4f"), int(e.symmetric), e.n_hypotheses, f"{e.seconds:.6g}"])
        if policy_columns:
            rows[-1] += [e.jumps, e.jumps_on_object]
        if e.modules_matched is not None:
            rows[-1].append(e.modules_matched)
    return rows


def episode_columns(cfg) -> tuple[str, ...]:
    """episodes.csv's columns: :data:`EPISODE_COLUMNS`, then :data:`POLICY_COLUMNS` with a policy
    in the loop, and ``modules_matched`` with several modules."""
    return (EPISODE_COLUMNS + (POLICY_COLUMNS if _in_loop(cfg) else ())
            + (("modules_matched",) if cfg.evidence.n_modules > 1 else ()))


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
        if e.trace.ndim == 3:  # several modules: each module's evidence for the detected (else shown) object
            name = e.detected or e.object
            o = list(result.object_names).index(name) if name in result.object_names else 0
            for m in range(e.trace.shape[1]):
                y = np.where(np.isfinite(e.trace[:, m, o]), e.trace[:, m, o], np.nan)
                ax.plot(steps, y, label=f"module {m}: {result.object_names[o]}", lw=1.2)
        for o, name in enumerate(result.object_names if e.trace.ndim == 2 else ()):
            y = np.where(np.isfinite(e.trace[:, o]), e.trace[:, o], np.nan)
            ax.plot(steps, y, label=name, lw=2.2 if name == e.object else 1.0)
        for j, t in enumerate(s for s in getattr(e, "jump_steps", ()) if s < len(e.trace)):  # the policy's jumps
            ax.axvline(t + 1, color="0.5", ls=":", lw=1.0, label="jump" if j == 0 else None)
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


def _rotation_errors(s: dict) -> str:
    """The table's rotation error: mean, median and 90th percentile over correct episodes."""
    if s["mean_rotation_error_deg"] is None:
        return "-"
    return (f"mean {s['mean_rotation_error_deg']:.2f} deg (median {s['median_rotation_error_deg']:.2f}, "
            f"90th percentile {s['p90_rotation_error_deg']:.2f})")


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
        lines.append(
            f"{s['experiment']}: {s['n_objects']} objects, {s['n_eval_episodes']} evaluation episodes: "
            f"accuracy {s['accuracy']:.3f} ({s['accuracy_incl_mlh']:.3f} incl. MLH), outcomes {s['outcomes']}, "
            f"rotation error {_rotation_errors(s)}, mean steps {s['mean_steps']:.1f}, "
            f"{s['matching_step_s'] * 1e3:.3f} ms per matching step ({s['updater']}, {s['path']}{_policy_note(s)}"
            f"{_busy_note(s)}), {_training_note(s)}{_compile_note(s)}")
    else:
        lines.append(f"{s['experiment']}: {s['n_objects']} objects learned in {s['train_s']:.2f} s"
                     f"{_compile_note(s)}; no evaluation")
    if s.get("n_modules", 1) > 1 and s["n_eval_episodes"]:
        lines.append(f"{s['n_modules']} modules: {s['mean_modules_matched']:.2f} matched the detected object on "
                     f"average; each module's own accuracy "
                     + " ".join(f"{a:.2f}" for a in s["module_accuracy"]))
    return "\n".join(lines)


def _policy_note(s: dict) -> str:
    """The policy beside the path when the sensor is in the loop (", curvature+jumps, 3.1 jumps")."""
    if s.get("policy", "walk") == "walk":
        return ""
    jumps = f", {s['mean_jumps']:.1f} jumps per episode" if s.get("mean_jumps") else ""
    return f", {s['policy']}{jumps}"


def _training_note(s: dict) -> str:
    if s.get("model_path"):
        return f"saved model {s['model_path']}"
    return f"training {s['train_s']:.2f} s"


def _busy_note(s: dict) -> str:
    """Said beside the step time when other processes held cores: OpenMP's workers passive
    (busy at start) or episodes on fewer threads (busy meanwhile)."""
    notes = []
    if s.get("openmp_wait_policy_source") == "busy":
        notes.append("OpenMP workers passive (other processes were running at start)")
    threads = s.get("eval_threads") or []
    if threads and min(threads) < s.get("threads", max(threads)):
        span = f"{min(threads)}" if min(threads) == max(threads) else f"{min(threads)}-{max(threads)}"
        notes.append(f"episodes on {span} of {s.get('threads')} threads (other processes held cores)")
    return "".join("; " + n for n in notes)


def _compile_note(s: dict) -> str:
    """The data's and the kernels' time for the table line (", data 1.23 s, compile 0.45 s")."""
    compile_s = (s.get("compile_s") or 0.0) + (s.get("data_compile_s") or 0.0)
    data = f", data {s['data_s']:.2f} s" if s.get("data_s") is not None else ""
    return f"{data}, compile {compile_s:.2f} s"


def report(cfg, result, data_s: float | None = None, data_compile_s: float | None = None) -> RunReport:
    """The run's summary, episodes.csv rows and printed table."""
    data = summary(cfg, result, data_s=data_s, data_compile_s=data_compile_s)
    return RunReport(data, episode_columns(cfg), episode_rows(result, _in_loop(cfg)), format_table(data, result))


# --------------------------------------------------------------------------- the model type's protocol
# (engine.run.registry: what the CLI, warm-up and validate ask of a model type)

#: kernel modules this model calls (the cache inventory of ``python -m engine info``)
KERNEL_MODULES = ("kernels.evidence", "kernels.evidence_phases", "kernels.evidence_voting", "kernels.voting", "kernels.lane_cells", "kernels.lanes",
                  "kernels.graph", "kernels.geometry", "kernels.kdtree", "kernels.select")
KERNEL_MODULES += ("kernels.evidence_policy", "kernels.policy")  # the sensor in the loop (policy)


#: the in-loop (policy) episode kernel, compiled by a second process on a first run
POLICY_KERNEL = "kernels.evidence_policy.evidence_policy_episode"


def entry_kernel(cfg) -> str:
    """The kernel a run spends most of its compile time on: not in the cache means a first
    run, which compiles (the CLI says so)."""
    if cfg.evidence is not None and cfg.evidence.n_modules > 1:
        return "kernels.evidence_voting.voting_episode"
    return "kernels.evidence.evidence_episode"


def build(cfg, *, progress: bool = False, data=None):
    """The config's observations (simulated or read; ``data``: an ``EpisodeDataset`` built
    already, e.g. an experiment's ``data``) and its experiment, ready to run.

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
    experiment = EvidenceExperiment
    if cfg.evidence.n_modules > 1:
        from engine.models.evidence.modules import ModulesExperiment as experiment
    if data is not None:  # built already (a Dask worker gets the run's): no simulation, no sensor kernels
        return experiment(cfg, data, progress=progress, data_s=0.0, data_compile_s=0.0)
    ahead = policy_ahead = None
    # (a read-only kernel cache could not take what the second process compiles)
    if _in_loop(cfg) and not runtime.READ_ONLY_CACHE and not runtime.is_cached(POLICY_KERNEL):
        # the policy's episode kernel is the larger compile (~35 s): the second process takes it,
        # this one compiles the rest (the one-module kernel included) and waits for it after
        policy_ahead = background.start("from engine.models.evidence.policy_run import compile_policy_kernel; "
                                        "compile_policy_kernel()")
    elif not runtime.is_cached(entry_kernel(cfg)) and not runtime.READ_ONLY_CACHE and cfg.evidence.n_modules == 1:
        ahead = background.start("from engine.models.evidence.model import compile_episode_kernel; "
                                 "compile_episode_kernel()")
    try:
        data_compile_s = warmup_sensor_kernels() if cfg.data.source != "dataset" else 0.0
        t0 = time.perf_counter()
        surfaces = None
        if _in_loop(cfg):  # the policy moves over the surfaces while evaluating: keep them
            from engine.data.episodes import build_surfaces

            surfaces = build_surfaces(cfg)
        ds = build_dataset(cfg) if surfaces is None else build_dataset(cfg, surfaces)
        ex = experiment(cfg, ds, progress=progress, data_s=time.perf_counter() - t0,
                        data_compile_s=data_compile_s)
        ex._surfaces = surfaces
    except BaseException:
        for a in (ahead, policy_ahead):
            if a is not None:
                a.stop()
        raise
    ex.episode_kernel_ahead = ahead
    ex.policy_kernel_ahead = policy_ahead
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
        from engine.data.episodes import check_sensor_count

        check_sensor_count(cfg, ds)
        return (f"dataset: {ds.n_steps} observations, {ds.n_episodes} episodes, {ds.n_objects} objects, "
                f"features {list(ds.feature_names)}")
    from engine.data import shapes

    names = list(p["objects"]) if p["objects"] is not None else ([] if p["mesh_dir"] else list(shapes.BUILTIN_SHAPES))
    meshes = [n for n, _ in shapes.load_mesh_folder(p["mesh_dir"])] if p["mesh_dir"] else []
    variants = f" and {p['variants']} perturbed variants" if p.get("variants") else ""
    return (f"shapes: {len(names) + len(meshes)} objects ({', '.join(names + meshes)}){variants}, "
            f"{p['eval_rotations']} evaluation rotations each")


def warmup_config(cfg) -> None:
    """Compile (or load) every kernel the config can use: learning, both evaluation paths
    and (simulated data) the sensor's."""
    from engine.models.evidence.model import warmup_kernels

    warmup_kernels(cfg.evidence, simulate=cfg.data.source == "shapes")
    if _in_loop(cfg):
        from engine.models.evidence.policy_run import compile_policy_kernel

        compile_policy_kernel()
    if cfg.evidence.n_modules > 1:
        from engine.models.evidence.modules import compile_voting_kernel

        for stepwise in (False, True):
            compile_voting_kernel(stepwise=stepwise)


# --------------------------------------------------------------------------- saved models
# (engine.run.model_file; the registry's optional save_state / load_state)

#: settings the object models are learned with: a saved model is evaluated only with the same
LEARNING_SETTINGS = ("graph", "graph_distance", "graph_normal_angle", "graph_curvature_threshold",
                     "graph_hue_threshold", "max_graph_size", "voxels_per_dim", "max_nodes")
#: settings the node grid is built for: a config that differs gets the grid rebuilt from the nodes
GRID_SETTINGS = ("max_match_distance", "max_nneighbors")



def evaluation_settings(cfg) -> tuple[str, ...]:
    """Config keys (dotted) that a saved model may be evaluated with other values of than it
    was trained with, beside the ones every model type has (``registry.EVALUATION_KEYS``):
    every ``evidence`` setting but :data:`LEARNING_SETTINGS` (:data:`GRID_SETTINGS` rebuild
    the node grid, exactly as training with them builds it), and ``model.confidence_threshold``
    (which this model does not read). ``python -m engine sweep`` trains once for points that
    differ only in these."""
    from engine.models.evidence.settings import EvidenceSettings
    import dataclasses

    from engine.models.evidence.policy_settings import PolicySettings

    return ("model.confidence_threshold",) + tuple(
        f"evidence.{f.name}" for f in dataclasses.fields(EvidenceSettings)
        if f.name not in LEARNING_SETTINGS and f.name != "n_modules"  # modules learn one model each
    ) + tuple(f"policy.{f.name}" for f in dataclasses.fields(PolicySettings))


#: the object models' arrays a model file keeps: ``kernels.evidence_layout.MODEL_FIELDS`` but
#: ``cand_code`` (the search's one-int32 form of ``cand_node`` and ``cand_dist``, rebuilt on
#: reading)
STORED_FIELDS = tuple(f for f in MODEL_FIELDS if f[0] != "cand_code")

#: the arrays of an evidence model file: :data:`STORED_FIELDS` (the object models sorted into
#: their node grid), ``order`` (row i of them is row order[i] of the learned order: what a
#: rebuilt grid starts from) and ``object_names``
MODEL_ARRAYS = STORED_FIELDS + (
    ("order", np.int64, ("N",)),
    ("object_names", "str", ("O",)),
)


def training_digest(ex) -> str:
    """The digest of what training consumed: the dataset's feature names and, per training
    episode, its object name, rotation and steps (up to max_train_steps)."""
    from engine.data.dataset import TRAIN
    from engine.run.model_file import digest_arrays

    ds, cfg = ex.dataset, ex.config

    def parts():
        yield np.asarray(ds.feature_names)
        if not cfg.experiment.do_train:
            return
        for e in np.flatnonzero(np.asarray(ds.episode_split) == TRAIN):
            s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
            s1 = min(s1, s0 + cfg.experiment.max_train_steps)
            yield np.asarray(str(ds.object_names[int(ds.episode_object[e])]))
            yield ds.episode_rotation[e]
            for a in (ds.location, ds.pose_vectors, ds.pose_defined, ds.curvature, ds.features):
                yield a[s0:s1]

    return digest_arrays(parts())


def module_prefix(m: int) -> str:
    """The member-name prefix of module ``m``'s arrays in a model file of several modules."""
    return f"module{m}."


def save_state(ex) -> dict:
    """What a model file keeps of a trained evidence experiment (``engine.run.model_file``).

    One module: :data:`MODEL_ARRAYS` as they are. Several (``evidence.n_modules`` > 1): each
    module's :data:`MODEL_ARRAYS` under its :func:`module_prefix` (``module0.node_pos``, ...),
    and ``n_modules`` among the settings."""
    from engine.run.model_file import settings_of

    model = ex.model
    n_mod = ex.config.evidence.n_modules
    modules = model.modules if n_mod > 1 else [model]
    if not model.object_names:
        raise UserError(f"{ex.config.source_file}: nothing was learned (no training episodes, or do_train is "
                        "false): there is no model to save")
    arrays = {}
    for m, mod in enumerate(modules):
        prefix = module_prefix(m) if n_mod > 1 else ""
        own = dict(mod.model_arrays()._asdict())
        del own["cand_code"]  # rebuilt on reading (STORED_FIELDS)
        own["order"] = mod.node_order()
        own["object_names"] = np.array(mod.object_names)
        arrays.update({prefix + k: v for k, v in own.items()})
    settings = settings_of(ex.config.evidence, LEARNING_SETTINGS + GRID_SETTINGS)
    if n_mod > 1:
        settings["n_modules"] = n_mod
    return {
        "arrays": arrays,
        "feature_columns": [str(n) for n in ex.dataset.feature_names],
        "settings": settings,
        "training": {"n_train_episodes": len(ex._episode_rows(0)) if ex.config.experiment.do_train else 0,
                     "n_train_epochs": ex.config.experiment.n_train_epochs,
                     "max_train_steps": ex.config.experiment.max_train_steps,
                     "nodes_per_object": model.nodes_per_object},
        "trained_on": training_digest(ex),
    }


def _check_model_contents(saved, sizes: dict) -> None:
    """The integer arrays index others without bounds checks in the kernels: check them."""
    a = saved.arrays
    n, n_obj = sizes["N"], sizes["O"]
    bad = saved.error
    obj_start = a["obj_start"]
    if n_obj < 1:
        raise bad("member 'obj_start': no objects")
    if obj_start[0] != 0 or obj_start[-1] != n or np.any(np.diff(obj_start) < 0):
        raise bad(f"member 'obj_start': must rise from 0 to {n} (the node count)")
    cand_start = a["cand_start"]
    if cand_start[0] != 0 or cand_start[-1] != sizes["M"] or np.any(np.diff(cand_start) < 0):
        raise bad(f"member 'cand_start': must rise from 0 to {sizes['M']} (the candidate count)")
    if sizes["M"] and (a["cand_node"].min() < 0 or a["cand_node"].max() >= n):
        raise bad(f"member 'cand_node': node rows must lie in 0..{n - 1}")
    index = a["grid_index"]
    cells = index[:, 0] * index[:, 1] * index[:, 2]
    if np.any(index[:, :3] < 1) or np.any(index[:, 3] != np.concatenate([[0], np.cumsum(cells)[:-1]])) \
            or int(cells.sum()) != sizes["C"]:
        raise bad("member 'grid_index': cells per axis must be >= 1 and each object's first cell the sum "
                  "of the cells before it, adding up to the candidate lists")
    order = a["order"]
    owner = np.repeat(np.arange(n_obj), np.diff(obj_start))
    if n and (order.min() < 0 or order.max() >= n or np.any(np.bincount(order, minlength=n) != 1)
              or np.any(order < obj_start[owner]) or np.any(order >= obj_start[owner + 1])):
        raise bad("member 'order': must be a permutation of the nodes within each object's range")
    for name in ("node_pos", "node_pose", "node_pfd", "node_feat", "grid_origin", "cand_dist"):
        if not np.isfinite(a[name]).all():
            raise bad(f"member '{name}' holds infinite values")
    names = [str(x) for x in a["object_names"]]
    if len(set(names)) != len(names) or not all(names):
        raise bad("member 'object_names': names must be distinct and not empty")


def _saved_module(cfg, ex, settings, view):
    """One module's ``EvidenceModel`` from its arrays (``view``: a ``SavedModel`` whose arrays are
    that module's), checked."""
    from engine.models.evidence.model import EvidenceModel
    from engine.run import model_file
    from kernels import evidence as kev, evidence_layout as layout

    sizes = model_file.check_arrays(view, MODEL_ARRAYS, {"F": len(ex.feature_names)})
    _check_model_contents(view, sizes)
    arrays = view.arrays
    stored = [arrays[name] for name, _, _ in STORED_FIELDS]
    try:
        codes = kev.candidate_codes(arrays["cand_node"], arrays["cand_dist"], settings["max_match_distance"])
    except ValueError as e:  # a model larger than the search's codes hold
        raise view.error(f"member 'cand_node': {e}") from None
    models = layout.object_models(*stored, codes)
    names = tuple(str(x) for x in arrays["object_names"])
    return EvidenceModel.from_saved(cfg.evidence, ex.feature_names, models, arrays["order"], names,
                                    (settings["max_match_distance"], settings["max_nneighbors"]),
                                    max_eval_steps=cfg.experiment.max_eval_steps)


def _saved_modules(cfg, ex, saved, settings, n_mod: int):
    """A ``ModulesModel`` of the ``n_mod`` modules of a model file (see :func:`save_state`)."""
    from engine.models.evidence.modules import ModulesModel
    from engine.run.model_file import SavedModel

    wanted = {module_prefix(m) + name for m in range(n_mod) for name, _, _ in MODEL_ARRAYS}
    extra = sorted(set(saved.arrays) - wanted)
    if extra:
        raise saved.error(f"unexpected member '{extra[0]}' for an evidence model of {n_mod} modules")
    modules = []
    for m in range(n_mod):
        prefix = module_prefix(m)
        own = {k[len(prefix):]: v for k, v in saved.arrays.items() if k.startswith(prefix)}
        missing = [prefix + name for name, _, _ in MODEL_ARRAYS if name not in own]
        if missing:
            raise saved.error(f"member '{missing[0]}' is missing (an evidence model of {n_mod} modules needs it)")
        # the module's arrays by their own names; errors say which module
        modules.append(_saved_module(cfg, ex, settings,
                                     SavedModel(f"{saved.path}: module {m}", saved.meta, own, saved.digest)))
    names = {mod.object_names for mod in modules}
    if len(names) != 1:
        raise saved.error("the modules hold different objects (every module learns the same objects)")
    model = ModulesModel(cfg.evidence, ex.feature_names, n_mod, max_eval_steps=cfg.experiment.max_eval_steps)
    model.modules = modules
    return model


def load_state(ex, saved) -> None:
    """Make ``ex`` (built by :func:`build`) evaluate the saved model instead of training.

    The data's feature columns and the learning settings (:data:`LEARNING_SETTINGS`) must
    be the ones the model was learned with, and so must ``evidence.n_modules`` (a file of one
    module has none); the grid settings (:data:`GRID_SETTINGS`) may differ (each module's node
    grid is rebuilt from its nodes); every other setting may differ."""
    from engine.run import model_file

    try:
        cfg = ex.config
        where = cfg.source_file
        model_file.check_feature_columns(saved, [str(n) for n in ex.dataset.feature_names], where)
        model_file.check_settings(saved, model_file.settings_of(cfg.evidence, LEARNING_SETTINGS), where,
                                  "evidence")
        settings = saved.settings
        for key in GRID_SETTINGS:
            if key not in settings:
                raise saved.error(f"setting '{key}' is missing from the model's meta")
        n_saved = settings.get("n_modules", 1)
        if isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1:
            raise saved.error(f"setting 'n_modules' must be an integer >= 1, got {n_saved!r}")
        n_mod = cfg.evidence.n_modules
        if n_saved != n_mod:
            raise saved.error(f"holds {n_saved} learning module(s), but {where} sets evidence.n_modules {n_mod} "
                              "(evaluate it with as many modules as it was trained with, or retrain)")
        if n_mod == 1:
            model = _saved_module(cfg, ex, settings, saved)
        else:
            model = _saved_modules(cfg, ex, saved, settings, n_mod)
    except BaseException:
        if ex.episode_kernel_ahead is not None:
            ex.episode_kernel_ahead.stop()
        raise
    ex.use_saved_model(saved, model)
