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

With one patch only the ``EvidenceGraphLM.matching_step`` call is timed (``time.perf_counter``), so the
figure compares with our engine's time per matching step measured in the same process or
VM. Parameters are those of tbp.monty's 10-object benchmark configs
(``evidence_1lm_nn5*.yaml``, see reference/tbp-monty.md in the shared docs):
max_match_distance 0.01, x_percent_threshold 20, evidence_threshold_config "all",
feature weights pose_vectors [1, 1, 1] and principal_curvatures_log [1, 1], tolerances
principal_curvatures_log [1, 1], burst-sampling hypotheses updater with max_nneighbors 5
(use 10 for noisy data), min_eval_steps 20. A dataset with a ``hue`` feature column is fed
as hsv = (hue, 1, 1) with the benchmark's hsv weights and tolerances.

Several sensor patches (a ``monty-episodes/2`` file, ``S`` patches): one EvidenceGraphLM
per patch in one ``MontyForEvidenceGraphMatching``, as tbp.monty's 5-LM benchmark
(``randrot_noise_10distinctobj_5lms_dist_agent``: ``5lm_5sm`` connectivity, LM ``i`` fed by
sensor module ``patch_i``, the LMs' default ``vote_weight`` 1 and
``vote_evidence_threshold`` 0.8, ``AnyLMsMatch(count=3)``): each LM learns from its own
patch in training (all supervised) and, in evaluation, gets its own patch's percept; each
step then runs tbp.monty's own ``_step_learning_modules``, ``_vote`` (every LM's
``send_out_vote``, ``_combine_votes`` with each patch's sensed location from the LM's
buffer, ``receive_votes``) and ``_set_step_type_and_check_if_done`` with the match
criterion, and all three are timed together (the whole step of all LMs with voting).
The per-LM scores are tbp.monty's ``get_stats_per_lm``; the episode's result combines them
as our engine does for several modules (``combine_lm_results``). ``--min-lms-match`` and
``--no-voting`` change the two settings.

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
        [--nneighbors K] [--episodes N] [--min-lms-match 3] [--no-voting] [--json PATH]

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


def channel_names(n_modules: int) -> list[str]:
    """The sensor module ids: ``patch`` for one (the one-LM benchmark configs), else
    ``patch_0`` .. ``patch_{n-1}`` (tbp.monty's 5sm connectivity, ``5lm_5sm.yaml``)."""
    return [CHANNEL] if n_modules == 1 else [f"{CHANNEL}_{i}" for i in range(n_modules)]


def vote_matrix(voting, n_modules: int):
    """tbp.monty's ``lm_to_lm_vote_matrix`` of our ``evidence.voting`` (``'all'``: every
    other LM, as ``5lm_5sm.yaml``; ``None``: no voting; else the given lists)."""
    if voting is None or n_modules == 1:
        return None
    if voting == "all":
        return [[j for j in range(n_modules) if j != i] for i in range(n_modules)]
    return [[int(j) for j in senders] for senders in voting]


def _make_lm(channel: str, max_nneighbors: int, updater: str, multithreading: bool, with_hsv: bool,
             vote_weight: float, vote_evidence_threshold: float):
    """One EvidenceGraphLM with the benchmark settings, its features keyed by ``channel``."""
    from tbp.monty.frameworks.models.evidence_matching.burst_sampling import (
        BurstSamplingHypothesesUpdater,
    )
    from tbp.monty.frameworks.models.evidence_matching.hypotheses_updater import (
        DefaultHypothesesUpdater,
    )
    from tbp.monty.frameworks.models.evidence_matching.learning_module import EvidenceGraphLM

    updaters = {"burst": BurstSamplingHypothesesUpdater, "default": DefaultHypothesesUpdater}
    tolerances = {channel: {"principal_curvatures_log": np.ones(2)}}
    weights = {channel: {"pose_vectors": np.ones(3), "principal_curvatures_log": np.ones(2)}}
    if with_hsv:  # evidence_1lm_nn5*.yaml values
        tolerances[channel]["hsv"] = np.array([0.1, 0.2, 0.2])
        weights[channel]["hsv"] = np.array([2.0, 0.5, 0.5])
    return EvidenceGraphLM(
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
        vote_weight=vote_weight,
        vote_evidence_threshold=vote_evidence_threshold,
    )


def build_monty(max_nneighbors: int, min_eval_steps: int, updater: str, multithreading: bool,
                 with_hsv: bool):
    """A MontyForEvidenceGraphMatching holding one EvidenceGraphLM with the benchmark settings."""
    monty = build_monty_modules(1, max_nneighbors, min_eval_steps, updater, multithreading, with_hsv)
    return monty, monty.learning_modules[0]


def build_monty_modules(n_modules: int, max_nneighbors: int, min_eval_steps: int, updater: str,
                        multithreading: bool, with_hsv: bool, *, voting="all", vote_weight: float = 1.0,
                        vote_evidence_threshold: float = 0.8, min_lms_match: int = 1):
    """A MontyForEvidenceGraphMatching with ``n_modules`` EvidenceGraphLMs, LM ``i`` fed by
    sensor module ``i`` (``sm_to_lm_matrix`` [[0], [1], ...]), voting through tbp.monty's
    ``lm_to_lm_vote_matrix`` (``vote_matrix(voting)``) and ending an episode by
    ``AnyLMsMatch(min_lms_match)`` (``any3_objectrecognition_*.yaml`` for 5 LMs).
    ``vote_weight`` and ``vote_evidence_threshold`` default to EvidenceGraphLM's own."""
    from tbp.monty.experiment.match_criteria import AnyLMsMatch
    from tbp.monty.frameworks.models.evidence_matching.model import (
        MontyForEvidenceGraphMatching,
    )

    lms = [_make_lm(ch, max_nneighbors, updater, multithreading, with_hsv, vote_weight,
                    vote_evidence_threshold) for ch in channel_names(n_modules)]
    if n_modules > 1:
        # MontyExperiment names each LM by its config key; the terminal check collects the
        # LMs' states in a dict keyed by these ids, so they must differ (the default is LM_0).
        for i, lm in enumerate(lms):
            lm.learning_module_id = f"learning_module_{i}"
    # No sensor modules: the replayed percepts are put where the SM outputs would be
    # (sensor_module_outputs[i]), so Monty's own _collect_inputs_to_lm finds them.
    monty = MontyForEvidenceGraphMatching(
        sensor_modules=[], learning_modules=lms, motor_system=_NoMotorSystem(),
        sm_to_agent_dict={}, sm_to_lm_matrix=[[i] for i in range(n_modules)], lm_to_lm_matrix=None,
        lm_to_lm_vote_matrix=vote_matrix(voting, n_modules), min_eval_steps=min_eval_steps,
        min_train_steps=3,
        num_exploratory_steps=1000,  # graph_exp1000 configs; > any training episode here
    )
    monty._match_criterion = AnyLMsMatch(count=min_lms_match)  # set by the experiment in tbp.monty
    monty.learning_module_outputs = []
    return monty


def _percept(ds, t: int, hue_col: int | None, sensor: int = 0, channel: str = CHANNEL):
    """The Message tbp.monty's sensor module ``channel`` would send for step t of sensor
    patch ``sensor`` (on the object): the patch's own sensed location and pose vectors,
    which an LM's ``send_out_vote`` reports as its ``sensed_pose_rel_body``."""
    from tbp.monty.cmp import Message
    from tbp.monty.frameworks.utils.sensor_processing import log_sign
    from tbp.monty.geometry import SurfacePoseVectors

    p = ds.sensor(sensor)
    non_morph = {"principal_curvatures_log": log_sign(p.curvature[t].astype(np.float64))}
    if hue_col is not None:
        non_morph["hsv"] = np.array([float(p.features[t, hue_col]), 1.0, 1.0])
    return Message(
        location=p.location[t].astype(np.float64),
        morphological_features={
            "pose_vectors": SurfacePoseVectors(p.pose_vectors[t].astype(np.float64)),
            "pose_fully_defined": bool(p.pose_defined[t]),
            "on_object": 1.0,  # the SM sends float(on_object); every recorded step is on it
        },
        non_morphological_features=non_morph,
        confidence=1.0,
        pass_message=True,
        process_features_in_lm=True,
        sender_id=channel,
        sender_type="SM",
    )


def _start_episode(monty, mode, name: str, quat_wxyz) -> None:
    """What MontyExperiment.pre_episode does to the model: reset, mode, ground truth."""
    monty.reset()
    monty.set_experiment_mode(mode)
    # tbp.monty's Rotation.from_quat is scalar-first (w, x, y, z), as the file's quaternions.
    monty.fixme_set_ground_truth({"object": name, "quat_rotation": np.asarray(quat_wxyz, float)})


def percepts(monty, ds, t: int, hue_col) -> list:
    """Step t's percept of every sensor patch, one per LM (patch i to LM i)."""
    n = len(monty.learning_modules)
    return [_percept(ds, t, hue_col, s, ch) for s, ch in enumerate(channel_names(n))]


def train(monty, lm, ds, hue_col) -> float:
    """Supervised training on every training episode, in file order; returns seconds.

    Every LM of ``monty`` learns from its own patch (``lm`` is its first, kept for callers)."""
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
            monty.sensor_module_outputs = percepts(monty, ds, t, hue_col)
            monty._step_learning_modules(ctx)
            monty._set_step_type_and_check_if_done()
        # MontySupervisedObjectPretrainingExperiment._pass_target_info_to_model: objects sit
        # at the world origin (no translation), so both reference points are the origin.
        monty.detected_object = name
        rotation = Rotation.from_quat(quat)
        for lm_ in monty.learning_modules:  # every LM is supervised
            lm_.detected_object = name
            lm_.buffer.stats["possible_matches"] = [name]
            lm_.buffer.stats["detected_location_on_model"] = np.zeros(3)
            lm_.buffer.stats["detected_location_rel_body"] = np.zeros(3)
            lm_.buffer.stats["detected_rotation"] = rotation.as_euler("xyz", degrees=True)
            lm_.detected_rotation_r = rotation.inv()
            lm_.buffer.stats["detected_scale"] = 1
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


def evaluate_modules_episode(monty, ds, e: int, hue_col, max_eval_steps: int,
                             min_lms_match: int) -> dict:
    """One evaluation episode of several LMs, stepped as tbp.monty's ``_matching_step``
    (less the sensor modules, goal states and motor system) and scored by its own
    ``get_stats_per_lm``; every step is timed whole (see ``step_times_s``).

    Per step: each patch's percept goes to its LM, then, timed: ``_step_learning_modules``
    (every LM's ``matching_step``), ``_vote`` (``send_out_vote``, ``_combine_votes``,
    ``receive_votes`` and ``update_stats_after_vote`` of every LM) and
    ``_set_step_type_and_check_if_done`` (counters, every LM's terminal condition and the
    match criterion). ``lm_step_times_s`` and ``vote_times_s`` are the first two parts.

    The episode's result, from tbp.monty's per-LM stats, by the rule our engine uses for
    several modules (``engine/models/evidence/modules.py``): when at least
    ``min_lms_match`` LMs are in terminal state ``match``, the detected object is the one
    most of them name (ties to the lowest LM), ``modules_matched`` how many name it, and
    the rotation error that of the first of them (tbp.monty's ``rotation_error``); all
    LMs ``no_match``: ``no_match``; otherwise ``time_out`` with the most likely object of
    the LM with the highest evidence. ``lm_performance`` lists each LM's own
    ``primary_performance``."""
    from tbp.monty.context import RuntimeContext
    from tbp.monty.frameworks.experiments.mode import ExperimentMode
    from tbp.monty.frameworks.utils.logging_utils import get_stats_per_lm
    from tbp.monty.geometry import Rotation

    names = [str(n) for n in ds.object_names]
    target = names[ds.episode_object[e]]
    quat = ds.episode_rotation[e].astype(np.float64)
    _start_episode(monty, ExperimentMode.EVAL, target, quat)
    ctx = RuntimeContext(rng=np.random.RandomState(SEED + int(e)))

    times: list[float] = []
    lm_times: list[float] = []
    vote_times: list[float] = []
    clock = time.perf_counter
    for t in range(ds.episode_offsets[e], ds.episode_offsets[e + 1]):
        monty.sensor_module_outputs = percepts(monty, ds, t, hue_col)
        t0 = clock()
        monty._step_learning_modules(ctx)
        t1 = clock()
        monty._vote()
        t2 = clock()
        monty._set_step_type_and_check_if_done()
        t3 = clock()
        times.append(t3 - t0)
        lm_times.append(t1 - t0)
        vote_times.append(t2 - t1)
        if monty.is_done or monty.matching_steps >= max_eval_steps:
            break
    if not monty.is_done:  # step limit reached or the recorded episode ran out
        monty.deal_with_time_out()

    euler = Rotation.from_quat(quat).as_euler("xyz", degrees=True)
    target_info = {"object": target, "position": np.zeros(3), "euler_rotation": euler,
                   "rotation": quat, "scale": np.ones(3)}
    per_lm = list(get_stats_per_lm(monty, target_info, SEED + int(e)).values())
    lms = monty.learning_modules
    res = combine_lm_results([lm.terminal_state for lm in lms], [lm.detected_object for lm in lms],
                             [s["highest_evidence"] for s in per_lm], [s["most_likely_object"] for s in per_lm],
                             target, min_lms_match)
    outcome, detected, modules_matched, first = res
    rot_err = symmetric = None
    if first is not None:
        rot_err = per_lm[first]["rotation_error"]
        if outcome != "time_out":
            symmetric = lms[first].buffer.stats.get("symmetric_rotations") is not None
    return {
        "episode": int(e),
        "object": target,
        "detected": detected,
        "outcome": outcome,
        "rotation_error_deg": None if rot_err is None else float(rot_err),
        "symmetric": symmetric,
        "steps": int(monty.matching_steps),
        "modules_matched": modules_matched,
        "lm_performance": [str(s["primary_performance"]) for s in per_lm],
        "lm_rotation_error_deg": [None if s["rotation_error"] is None else float(s["rotation_error"])
                                  for s in per_lm],
        "step_times_s": times,
        "lm_step_times_s": lm_times,
        "vote_times_s": vote_times,
    }


def combine_lm_results(terminal_states, detected_objects, highest_evidence, mlh_objects, target,
                       min_lms_match: int):
    """The episode's result from its LMs' (our engine's rule for several modules): returns
    ``(outcome, detected, modules_matched, first)``.

    At least ``min_lms_match`` LMs in terminal state ``"match"``: ``detected`` is the object
    most of them detected (ties: the one the lowest such LM names), ``modules_matched`` how
    many of them detected it, ``first`` the lowest of those LMs (whose pose and rotation
    error stand for the episode) and ``outcome`` ``"correct"`` or ``"confused"``. Every LM
    ``"no_match"``: ``("no_match", None, 0, None)``. Otherwise ``"time_out"`` with the most
    likely object of the LM with the highest evidence (ties: the lowest LM), ``first`` that
    LM (its MLH's rotation error, tbp.monty's ``correct_mlh`` one, stands for the episode)."""
    matched = [i for i, ts in enumerate(terminal_states) if ts == "match"]
    if matched and len(matched) >= min_lms_match:
        counts: dict = {}
        for i in matched:
            counts[detected_objects[i]] = counts.get(detected_objects[i], 0) + 1
        n = max(counts.values())
        first = next(i for i in matched if counts[detected_objects[i]] == n)
        det = detected_objects[first]
        return ("correct" if det == target else "confused"), det, n, first
    if all(ts == "no_match" for ts in terminal_states):
        return "no_match", None, 0, None
    best = max(range(len(terminal_states)), key=lambda i: (float(highest_evidence[i]), -i))
    return "time_out", mlh_objects[best], 0, best


def hue_column(ds) -> int | None:
    """The dataset's ``hue`` feature column (fed to tbp.monty as hsv), or None."""
    names = [str(n) for n in ds.feature_names]
    return names.index("hue") if "hue" in names else None


def run_monty(dataset_path, *, max_nneighbors=5, max_eval_steps=60, min_eval_steps=20,
              episodes=None, updater="burst", multithreading=True, voting="all", min_lms_match=3,
              vote_weight=1.0, vote_evidence_threshold=0.8) -> dict:
    """Train tbp.monty's EvidenceGraphLM(s) on the dataset's training episodes and run its
    evaluation episodes (the first ``episodes`` of them if given); see the module docstring.

    A ``monty-episodes/2`` file with ``S`` sensor patches gets ``S`` LMs, one per patch, that
    vote (``voting``: ``'all'``, None or tbp.monty's ``lm_to_lm_vote_matrix``) and end an
    episode when ``min_lms_match`` matched; one patch: one LM (the voting settings unused).

    Returns a dict: ``episodes`` (per episode: object, detected, outcome, steps,
    step_times_s, ...), ``mean_step_s`` / ``median_step_s`` over all matching steps,
    ``train_s``, ``accuracy`` (correct / episodes), ``nodes_per_object`` and the settings.
    """
    from engine.data.dataset import EVAL, read_dataset  # our reader: validates the file

    ds = read_dataset(dataset_path, mmap=False)
    hue_col = hue_column(ds)
    n = ds.n_sensors
    if n == 1:
        monty, lm = build_monty(max_nneighbors, min_eval_steps, updater, multithreading,
                                with_hsv=hue_col is not None)
    else:
        min_lms_match = min(min_lms_match, n)
        monty = build_monty_modules(n, max_nneighbors, min_eval_steps, updater, multithreading,
                                    hue_col is not None, voting=voting, vote_weight=vote_weight,
                                    vote_evidence_threshold=vote_evidence_threshold,
                                    min_lms_match=min_lms_match)
        lm = monty.learning_modules[0]
    train_s = train(monty, lm, ds, hue_col)
    nodes = nodes_per_object(monty)

    eval_ids = ds.episode_indices(EVAL)
    if episodes is not None:
        eval_ids = eval_ids[:episodes]
    if n == 1:
        results = [evaluate_episode(monty, lm, ds, int(e), hue_col, max_eval_steps) for e in eval_ids]
    else:
        results = [evaluate_modules_episode(monty, ds, int(e), hue_col, max_eval_steps, min_lms_match)
                   for e in eval_ids]

    all_times = [s for r in results for s in r["step_times_s"]]
    errors = [r["rotation_error_deg"] for r in results
              if r["outcome"] == "correct" and r["rotation_error_deg"] is not None]
    n_ep = len(results)
    settings = {"max_nneighbors": max_nneighbors, "max_eval_steps": max_eval_steps,
                "min_eval_steps": min_eval_steps, "updater": updater,
                "use_multithreading": multithreading, "hsv": hue_col is not None, "n_modules": n}
    if n > 1:
        settings.update(voting=voting, min_lms_match=min_lms_match, vote_weight=vote_weight,
                        vote_evidence_threshold=vote_evidence_threshold)
    return {
        "dataset": str(dataset_path),
        "tbp_monty_version": tbp_version(),
        "settings": settings,
        "timed": "EvidenceGraphLM.matching_step" if n == 1 else
                 "_step_learning_modules + _vote + _set_step_type_and_check_if_done",
        "episodes": results,
        "n_episodes": n_ep,
        "n_steps": len(all_times),
        "mean_step_s": statistics.fmean(all_times) if all_times else float("nan"),
        "median_step_s": statistics.median(all_times) if all_times else float("nan"),
        "train_s": train_s,
        "accuracy": sum(r["outcome"] == "correct" for r in results) / n_ep if n_ep else float("nan"),
        "mean_steps": statistics.fmean(r["steps"] for r in results) if n_ep else float("nan"),
        "mean_rotation_error_deg": statistics.fmean(errors) if errors else None,
        "median_rotation_error_deg": statistics.median(errors) if errors else None,
        "nodes_per_object": nodes,
    }


def nodes_per_object(monty) -> dict:
    """Graph nodes per object of each LM: ``{object: n}`` for one LM, ``{object: [n, ...]}``
    (one per LM) for several."""
    lms = monty.learning_modules
    chans = channel_names(len(lms))
    per = [{g: int(lm.graph_memory.get_num_nodes_in_graph(g, ch)) for g in lm.get_all_known_object_ids()}
           for lm, ch in zip(lms, chans)]
    if len(per) == 1:
        return per[0]
    return {g: [p.get(g, 0) for p in per] for g in per[0]}


def training_key(ds, settings: dict) -> str:
    """A digest of everything training depends on: every patch's training steps, the
    training episodes' objects and rotations, the object names, the LM settings and
    tbp.monty's version (the key of ``save_trained`` / ``load_trained``)."""
    import hashlib

    from engine.data.dataset import TRAIN

    h = hashlib.sha256()
    h.update(json.dumps({**settings, "tbp_monty": tbp_version()}, sort_keys=True, default=str).encode())
    h.update("\0".join(str(x) for x in ds.object_names).encode())
    for e in ds.episode_indices(TRAIN):
        s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
        h.update(np.int64([ds.episode_object[e], s1 - s0]).tobytes())
        h.update(np.ascontiguousarray(ds.episode_rotation[e]).tobytes())
        for s in range(ds.n_sensors):
            for a in ds.sensor(s):
                h.update(np.ascontiguousarray(a[s0:s1]).tobytes())
    return h.hexdigest()


def save_trained(path, monty, key: str, train_s: float) -> None:
    """tbp.monty's own snapshot of the trained LMs (``MontyBase.snapshot``: every LM's
    ``state_dict``), pickled with ``key`` and the training time."""
    import os
    import pickle

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"key": key, "train_s": train_s, "snapshot": monty.snapshot()}, f)
    os.replace(tmp, path)


def load_trained(path, monty, key: str) -> float | None:
    """Restore ``save_trained``'s LMs into ``monty`` (``MontyBase.restore``) when the file
    exists and was saved under ``key``; returns its training seconds, else None."""
    import pickle

    path = Path(path)
    if not path.exists():
        return None
    with open(path, "rb") as f:
        saved = pickle.load(f)
    if saved.get("key") != key:
        return None
    monty.restore(saved["snapshot"])
    return float(saved["train_s"])


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
    p.add_argument("--min-lms-match", type=int, default=3,
                   help="several patches: LMs that must match (tbp.monty's 5-LM benchmarks: 3)")
    p.add_argument("--no-voting", action="store_true", help="several patches: LMs do not vote")
    p.add_argument("--json", type=Path, help="write the full result (step times included)")
    a = p.parse_args(argv)

    try:
        res = run_monty(a.dataset, max_nneighbors=a.nneighbors, max_eval_steps=a.max_steps,
                        episodes=a.episodes, updater=a.updater,
                        voting=None if a.no_voting else "all", min_lms_match=a.min_lms_match)
    except ModuleNotFoundError as exc:  # tbp.monty lives in its own venv (see docstring)
        print(f"error: {exc}; run this with the tbp.monty venv's python", file=sys.stderr)
        return 2
    print(f"tbp.monty {res['tbp_monty_version']}: trained in {res['train_s']:.1f} s, "
          f"nodes per object {res['nodes_per_object']}")
    several = res["settings"]["n_modules"] > 1
    print(f"timed per step: {res['timed']}")
    print(f"{'ep':>4} {'object':<14} {'detected':<14} {'outcome':<9} {'steps':>5} "
          f"{'rot err':>8} {'mean ms':>8} {'median ms':>9}" + ("  matched" if several else ""))
    for r in res["episodes"]:
        st = r["step_times_s"]
        err = "" if r["rotation_error_deg"] is None else f"{r['rotation_error_deg']:.1f}"
        print(f"{r['episode']:>4} {r['object']:<14} {str(r['detected']):<14} "
              f"{r['outcome']:<9} {r['steps']:>5} {err:>8} "
              f"{1e3 * statistics.fmean(st):>8.2f} {1e3 * statistics.median(st):>9.2f}"
              + (f"  {r['modules_matched']:>7}" if several else ""))
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
