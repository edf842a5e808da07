"""tbp.monty's own evidence learning module, timed per matching step on a recorded dataset.

What it measures
----------------
The real ``EvidenceGraphLM`` of tbp.monty (PyPI ``tbp-monty`` 0.55.0), driven by the real
``MontyForEvidenceGraphMatching`` step logic for one LM (no voting, no sensor module, no
motor system, no goal-state jumps), replaying the observations of a ``monty-episodes/1``
file (docs/dataset-format.md in the shared docs):

- training: every training episode in file order, supervised: exploratory steps, then the
  object label and rotation are handed to the LM the way
  ``MontySupervisedObjectPretrainingExperiment`` does, and the LM builds its grid models
  (at most 2,000 nodes, 100 voxels per dimension, 0.3 m);
- evaluation: each evaluation episode is reset and fed one observation per step; after each
  step Monty's own terminal checks run (min_eval_steps, symmetry, unique pose,
  ``AnyLMsMatch(1)``), up to ``max_eval_steps``; episodes are scored by tbp.monty's own
  ``get_graph_lm_episode_stats`` / ``add_evidence_lm_episode_stats``.

Only the ``EvidenceGraphLM.matching_step`` call is timed (``time.perf_counter``), so the
figure compares with our engine's time per matching step measured in the same process or
VM. Parameters are those of tbp.monty's 10-object benchmark configs
(``evidence_1lm_nn5*.yaml``, see reference/tbp-monty.md in the shared docs):
max_match_distance 0.01, x_percent_threshold 20, evidence_threshold_config "all",
feature weights pose_vectors [1, 1, 1] and principal_curvatures_log [1, 1], tolerances
principal_curvatures_log [1, 1], burst-sampling hypotheses updater with max_nneighbors 5
(use 10 for noisy data), min_eval_steps 20. A dataset with a ``hue`` feature column is fed
as hsv = (hue, 1, 1) with the benchmark's hsv weights and tolerances.

Observations are fed as tbp.monty's sensor module would send them: location, pose vectors
(normal, curvature directions), pose_fully_defined, on_object and
principal_curvatures_log = sign(k) log(1 + |k|). The curvature pair is fed in the file's
order (|k1| >= |k2|), exactly what our engine reads, not re-sorted to tbp.monty's signed
k1 >= k2: training and evaluation use the same convention, so the models and the matching
are unaffected except for which curvature direction is called "first".

Environment (a separate venv: tbp.monty needs torch; our engine's venv has none)::

    python3.11 -m venv /tmp/venvmonty
    /tmp/venvmonty/bin/pip install torch   # or the CPU-only build: --index-url https://download.pytorch.org/whl/cpu
    /tmp/venvmonty/bin/pip install tbp-monty==0.55.0 --no-deps
    /tmp/venvmonty/bin/pip install torch-geometric scipy scikit-learn scikit-image \\
        numpy-quaternion matplotlib pandas pydantic hydra-core omegaconf \\
        opencv-python-headless numba pyyaml trimesh tqdm

Used here: torch 2.14.1, torch-geometric 2.8.1, numpy 2.4.6, scipy 1.17.1,
scikit-learn 1.9.1, scikit-image 0.26.0, numpy-quaternion 2024.0.13, pandas 3.1.1,
matplotlib 3.11.2, pydantic 2.14.4, hydra-core 1.3.8, omegaconf 2.3.1,
opencv-python-headless 5.1.0.95, numba 0.68.1, PyYAML 6.0.4 (trimesh and tqdm: our engine's
simulation of ``data.source: shapes``, for ``vs_tbp_monty.py``). torch-scatter, torch-sparse
and wandb (declared dependencies of tbp-monty) are not needed on this code path.

Run from the repository root (so ``engine`` imports for the dataset reader)::

    /tmp/venvmonty/bin/python profiling/tbp_monty_step.py DATASET.npz \\
        [--nneighbors K] [--episodes N] [--json PATH]

This is a profiling / comparison tool: no test or CI uses it, and it imports tbp.monty only
inside functions, so the module itself imports without tbp.monty installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CHANNEL = "patch"  # the sensor module id of tbp.monty's benchmark configs
SEED = 42  # the benchmark experiments' seed (nothing on this path draws from it)


class _NoMotorSystem:
    """Stands in for the motor system: observations are replayed, so Monty never moves.
    ``MontyBase.reset`` only needs ``reset()``; nothing else of it is called here."""

    motor_only_step = False

    def reset(self) -> None:
        pass


def build_monty(max_nneighbors: int, min_eval_steps: int, updater: str, multithreading: bool,
                 with_hsv: bool):
    """A MontyForEvidenceGraphMatching holding one EvidenceGraphLM with the benchmark settings."""
    from tbp.monty.experiment.match_criteria import AnyLMsMatch
    from tbp.monty.frameworks.models.evidence_matching.burst_sampling import (
        BurstSamplingHypothesesUpdater,
    )
    from tbp.monty.frameworks.models.evidence_matching.hypotheses_updater import (
        DefaultHypothesesUpdater,
    )
    from tbp.monty.frameworks.models.evidence_matching.learning_module import EvidenceGraphLM
    from tbp.monty.frameworks.models.evidence_matching.model import (
        MontyForEvidenceGraphMatching,
    )

    updaters = {"burst": BurstSamplingHypothesesUpdater, "default": DefaultHypothesesUpdater}
    tolerances = {CHANNEL: {"principal_curvatures_log": np.ones(2)}}
    weights = {CHANNEL: {"pose_vectors": np.ones(3), "principal_curvatures_log": np.ones(2)}}
    if with_hsv:  # evidence_1lm_nn5*.yaml values
        tolerances[CHANNEL]["hsv"] = np.array([0.1, 0.2, 0.2])
        weights[CHANNEL]["hsv"] = np.array([2.0, 0.5, 0.5])
    lm = EvidenceGraphLM(
        max_match_distance=0.01,
        tolerances=tolerances,
        feature_weights=weights,
        x_percent_threshold=20,
        evidence_threshold_config="all",
        max_graph_size=0.3,
        num_model_voxels_per_dim=100,
        max_nodes_per_graph=2000,
        use_multithreading=multithreading,
        gsg=None,  # no goal-state generator: observations come from the file
        hypotheses_updater_class=updaters[updater],
        hypotheses_updater_args={"max_nneighbors": max_nneighbors},
    )
    # No sensor modules: the replayed percept is put where the SM output would be
    # (sensor_module_outputs[0]), so Monty's own _collect_inputs_to_lm finds it.
    monty = MontyForEvidenceGraphMatching(
        sensor_modules=[], learning_modules=[lm], motor_system=_NoMotorSystem(),
        sm_to_agent_dict={}, sm_to_lm_matrix=[[0]], lm_to_lm_matrix=None,
        lm_to_lm_vote_matrix=None, min_eval_steps=min_eval_steps, min_train_steps=3,
        num_exploratory_steps=1000,  # graph_exp1000 configs; > any training episode here
    )
    monty._match_criterion = AnyLMsMatch(count=1)  # set by the experiment in tbp.monty
    monty.learning_module_outputs = []
    return monty, lm


def _percept(ds, t: int, hue_col: int | None):
    """The Message tbp.monty's sensor module would send for step t (on the object)."""
    from tbp.monty.cmp import Message
    from tbp.monty.frameworks.utils.sensor_processing import log_sign
    from tbp.monty.geometry import SurfacePoseVectors

    non_morph = {"principal_curvatures_log": log_sign(ds.curvature[t].astype(np.float64))}
    if hue_col is not None:
        non_morph["hsv"] = np.array([float(ds.features[t, hue_col]), 1.0, 1.0])
    return Message(
        location=ds.location[t].astype(np.float64),
        morphological_features={
            "pose_vectors": SurfacePoseVectors(ds.pose_vectors[t].astype(np.float64)),
            "pose_fully_defined": bool(ds.pose_defined[t]),
            "on_object": 1.0,  # the SM sends float(on_object); every recorded step is on it
        },
        non_morphological_features=non_morph,
        confidence=1.0,
        pass_message=True,
        process_features_in_lm=True,
        sender_id=CHANNEL,
        sender_type="SM",
    )


def _start_episode(monty, mode, name: str, quat_wxyz) -> None:
    """What MontyExperiment.pre_episode does to the model: reset, mode, ground truth."""
    monty.reset()
    monty.set_experiment_mode(mode)
    # tbp.monty's Rotation.from_quat is scalar-first (w, x, y, z), as the file's quaternions.
    monty.fixme_set_ground_truth({"object": name, "quat_rotation": np.asarray(quat_wxyz, float)})


def train(monty, lm, ds, hue_col) -> float:
    """Supervised training on every training episode, in file order; returns seconds."""
    from tbp.monty.context import RuntimeContext
    from tbp.monty.frameworks.experiments.mode import ExperimentMode
    from tbp.monty.geometry import Rotation

    ctx = RuntimeContext(rng=np.random.RandomState(SEED))
    names = [str(n) for n in ds.object_names]
    t0 = time.perf_counter()
    for e in ds.episode_indices(0):
        name, quat = names[ds.episode_object[e]], ds.episode_rotation[e].astype(np.float64)
        _start_episode(monty, ExperimentMode.TRAIN, name, quat)
        # All LMs are supervised, so the pretraining experiment skips matching entirely.
        monty.switch_to_exploratory_step()
        for t in range(ds.episode_offsets[e], ds.episode_offsets[e + 1]):
            monty.sensor_module_outputs = [_percept(ds, t, hue_col)]
            monty._step_learning_modules(ctx)
            monty._set_step_type_and_check_if_done()
        # MontySupervisedObjectPretrainingExperiment._pass_target_info_to_model: objects sit
        # at the world origin (no translation), so both reference points are the origin.
        monty.detected_object = name
        lm.detected_object = name
        lm.buffer.stats["possible_matches"] = [name]
        lm.buffer.stats["detected_location_on_model"] = np.zeros(3)
        lm.buffer.stats["detected_location_rel_body"] = np.zeros(3)
        rotation = Rotation.from_quat(quat)
        lm.buffer.stats["detected_rotation"] = rotation.as_euler("xyz", degrees=True)
        lm.detected_rotation_r = rotation.inv()
        lm.buffer.stats["detected_scale"] = 1
        # GraphMemory.update_memory print()s "building graph for ..." per new object.
        with contextlib.redirect_stdout(io.StringIO()):
            monty.update_ltm()
    return time.perf_counter() - t0


def evaluate_episode(monty, lm, ds, e: int, hue_col, max_eval_steps: int) -> dict:
    """One evaluation episode, stepped like MontyForGraphMatching; only matching_step timed."""
    from tbp.monty.context import RuntimeContext
    from tbp.monty.frameworks.experiments.mode import ExperimentMode
    from tbp.monty.frameworks.utils.logging_utils import (
        add_evidence_lm_episode_stats,
        get_graph_lm_episode_stats,
    )

    names = [str(n) for n in ds.object_names]
    target = names[ds.episode_object[e]]
    _start_episode(monty, ExperimentMode.EVAL, target, ds.episode_rotation[e].astype(np.float64))
    ctx = RuntimeContext(rng=np.random.RandomState(SEED + int(e)))

    times: list[float] = []
    step_impl = lm.matching_step  # bound method of the class; the wrapper shadows it

    def timed_matching_step(ctx_, percepts):
        t0 = time.perf_counter()
        step_impl(ctx_, percepts)
        times.append(time.perf_counter() - t0)

    # Monty's _step_learning_modules looks the step method up with getattr, so an instance
    # attribute puts the timer around exactly the LM's matching step and nothing else.
    lm.matching_step = timed_matching_step
    try:
        for t in range(ds.episode_offsets[e], ds.episode_offsets[e + 1]):
            monty.sensor_module_outputs = [_percept(ds, t, hue_col)]
            monty._step_learning_modules(ctx)
            monty._vote()  # no vote matrix: only logs possible matches, as in tbp.monty
            monty._set_step_type_and_check_if_done()  # counters + terminal conditions
            if monty.is_done:
                break
            if monty.matching_steps >= max_eval_steps:  # the experiment's step limit
                break
        if not monty.is_done:  # step limit reached or the recorded episode ran out
            monty.deal_with_time_out()
    finally:
        del lm.matching_step

    stats = add_evidence_lm_episode_stats(lm, get_graph_lm_episode_stats(lm))
    perf = stats["primary_performance"]
    # Our format's outcome names: tbp.monty's "used MLH" time-outs count as time_out.
    outcome = {"correct_mlh": "time_out", "confused_mlh": "time_out"}.get(perf, perf)
    detected = lm.detected_object if perf in ("correct", "confused") else None
    if outcome == "time_out":
        detected = stats["most_likely_object"]
    rot_err = stats.get("rotation_error")
    # the most likely hypothesis' own pose error (the reported pose), whatever the symmetry rule
    # scored: a match by symmetry scores the nearest of the poses still possible
    mlh = lm._get_current_mlh()
    mlh_err = None
    if mlh.get("graph_id") == target and "rotation" in mlh:
        from tbp.monty.frameworks.utils.logging_utils import compute_pose_error
        from tbp.monty.geometry import Rotation

        mlh_err = float(compute_pose_error(mlh["rotation"].inv(), Rotation.from_quat(lm.primary_target_rotation_quat),
                                           return_degrees=True))
    return {
        "episode": int(e),
        "object": target,
        "detected": detected,
        "outcome": outcome,
        "tbp_performance": perf,
        "rotation_error_deg": None if rot_err is None else float(rot_err),
        "symmetric": perf == "correct" and lm.buffer.stats.get("symmetric_rotations") is not None,
        "mlh_rotation_error_deg": mlh_err,
        "steps": int(monty.matching_steps),
        "step_times_s": times,
    }


def hue_column(ds) -> int | None:
    """The dataset's ``hue`` feature column (fed to tbp.monty as hsv), or None."""
    names = [str(n) for n in ds.feature_names]
    return names.index("hue") if "hue" in names else None


def run_monty(dataset_path, *, max_nneighbors=5, max_eval_steps=60, min_eval_steps=20,
              episodes=None, updater="burst", multithreading=True) -> dict:
    """Train tbp.monty's EvidenceGraphLM on the dataset's training episodes and run its
    evaluation episodes (the first ``episodes`` of them if given); see the module docstring.

    Returns a dict: ``episodes`` (per episode: object, detected, outcome, steps,
    step_times_s, ...), ``mean_step_s`` / ``median_step_s`` over all matching steps,
    ``train_s``, ``accuracy`` (correct / episodes), ``nodes_per_object`` and the settings.
    """
    from engine.data.dataset import EVAL, read_dataset  # our reader: validates the file

    ds = read_dataset(dataset_path, mmap=False)
    hue_col = hue_column(ds)
    monty, lm = build_monty(max_nneighbors, min_eval_steps, updater, multithreading,
                             with_hsv=hue_col is not None)
    train_s = train(monty, lm, ds, hue_col)
    nodes = {g: int(lm.graph_memory.get_num_nodes_in_graph(g, CHANNEL))
             for g in lm.get_all_known_object_ids()}

    eval_ids = ds.episode_indices(EVAL)
    if episodes is not None:
        eval_ids = eval_ids[:episodes]
    results = [evaluate_episode(monty, lm, ds, int(e), hue_col, max_eval_steps) for e in eval_ids]

    all_times = [s for r in results for s in r["step_times_s"]]
    errors = [r["rotation_error_deg"] for r in results
              if r["outcome"] == "correct" and r["rotation_error_deg"] is not None]
    n = len(results)
    return {
        "dataset": str(dataset_path),
        "tbp_monty_version": tbp_version(),
        "settings": {"max_nneighbors": max_nneighbors, "max_eval_steps": max_eval_steps,
                     "min_eval_steps": min_eval_steps, "updater": updater,
                     "use_multithreading": multithreading, "hsv": hue_col is not None},
        "episodes": results,
        "n_episodes": n,
        "n_steps": len(all_times),
        "mean_step_s": statistics.fmean(all_times) if all_times else float("nan"),
        "median_step_s": statistics.median(all_times) if all_times else float("nan"),
        "train_s": train_s,
        "accuracy": sum(r["outcome"] == "correct" for r in results) / n if n else float("nan"),
        "mean_steps": statistics.fmean(r["steps"] for r in results) if n else float("nan"),
        "mean_rotation_error_deg": statistics.fmean(errors) if errors else None,
        "nodes_per_object": nodes,
    }


def tbp_version() -> str:
    from importlib.metadata import version

    return version("tbp.monty")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="monty-episodes/1 file (.npz or npy-dir folder)")
    p.add_argument("--nneighbors", type=int, default=5,
                   help="max_nneighbors (benchmark: 5 clean, 10 noisy)")
    p.add_argument("--episodes", type=int, default=None, help="first N evaluation episodes")
    p.add_argument("--max-steps", type=int, default=60, help="max_eval_steps (default 60)")
    p.add_argument("--updater", choices=("burst", "default"), default="burst")
    p.add_argument("--json", type=Path, help="write the full result (step times included)")
    a = p.parse_args(argv)

    try:
        res = run_monty(a.dataset, max_nneighbors=a.nneighbors, max_eval_steps=a.max_steps,
                        episodes=a.episodes, updater=a.updater)
    except ModuleNotFoundError as exc:  # tbp.monty lives in its own venv (see docstring)
        print(f"error: {exc}; run this with the tbp.monty venv's python", file=sys.stderr)
        return 2
    print(f"tbp.monty {res['tbp_monty_version']}: trained in {res['train_s']:.1f} s, "
          f"nodes per object {res['nodes_per_object']}")
    print(f"{'ep':>4} {'object':<14} {'detected':<14} {'outcome':<9} {'steps':>5} "
          f"{'rot err':>8} {'mean ms':>8} {'median ms':>9}")
    for r in res["episodes"]:
        st = r["step_times_s"]
        err = "" if r["rotation_error_deg"] is None else f"{r['rotation_error_deg']:.1f}"
        print(f"{r['episode']:>4} {r['object']:<14} {str(r['detected']):<14} "
              f"{r['outcome']:<9} {r['steps']:>5} {err:>8} "
              f"{1e3 * statistics.fmean(st):>8.2f} {1e3 * statistics.median(st):>9.2f}")
    n_ok = sum(r["outcome"] == "correct" for r in res["episodes"])
    print(f"correct {n_ok}/{res['n_episodes']}, mean steps {res['mean_steps']:.1f}, "
          f"matching step mean {1e3 * res['mean_step_s']:.2f} ms / median "
          f"{1e3 * res['median_step_s']:.2f} ms over {res['n_steps']} steps")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    # Run as a script from profiling/: put the repository root on the path for ``engine``.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
