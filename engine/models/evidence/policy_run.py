"""Evaluation episodes with the sensor in the loop (``policy`` config section), from Python.

With ``policy.type: walk`` and ``policy.hypothesis_testing: false`` (the default) nothing here
runs: the episode replays the dataset's walk (``kernels.evidence.evidence_episode``), as
before. Otherwise each evaluation episode of simulated data is one call of
``kernels.evidence_policy.evidence_policy_episode`` (or one per step on the stepwise path):
the policy moves the sensor over the object's surface samples, the kernel senses them (with
the configured noise) and updates the evidence, step by step. The episode shows the object
under the dataset's evaluation rotation (the walk's episodes use the same objects and
rotations); its start sample and its random numbers come from ``data.seed`` and the episode's
index, so a run is reproducible and the two paths agree.
"""

from __future__ import annotations

import math
import time

import numpy as np

from kernels import evidence as kev
from kernels import policy as kp
from kernels.evidence_policy import evidence_policy_episode
from kernels.timing import ticks_per_second

from engine.data.rotations import quat_to_matrix

#: the walk's turn of the heading per step (``engine.data.sensor.walk``'s turn_sd_deg)
WALK_TURN_SD_DEG = 15.0


def policy_params(policy, evidence, noise: bool, hue: float | None = None):
    """The kernels' ``(fparams, iparams)`` (``kernels.policy.PF_*`` / ``PI_*``) of a
    ``PolicySettings``, the evidence settings and the data's noise."""
    from engine.data.sensor import Noise

    n = Noise() if noise else Noise.none()
    fp = np.zeros(kp.N_PF, np.float32)
    fp[kp.PF_STEP] = policy.step_size
    fp[kp.PF_TURN_SD] = math.radians(WALK_TURN_SD_DEG)
    fp[kp.PF_ALPHA] = policy.alpha
    fp[kp.PF_PC_ALPHA] = policy.pc_alpha
    fp[kp.PF_X_SCALE] = policy.x_percent_scale_factor
    fp[kp.PF_DOD] = policy.desired_object_distance
    fp[kp.PF_RAY_RADIUS] = policy.jump_ray_radius
    fp[kp.PF_X_PERCENT] = evidence.x_percent_threshold
    fp[kp.PF_NOISE_LOC] = n.location
    fp[kp.PF_NOISE_POSE] = n.pose_deg
    fp[kp.PF_NOISE_CURV] = n.curvature_log
    fp[kp.PF_NOISE_HUE] = n.hue
    fp[kp.PF_NOISE_FLIP] = n.pose_defined_flip
    fp[kp.PF_HUE] = 0.0 if hue is None else hue
    fp[kp.PF_REVERSE] = evidence.max_match_distance if policy.reverse_mismatch else 0.0
    ip = np.zeros(kp.N_PI, np.int64)
    ip[kp.PI_TYPE] = kp.TYPE_CURVATURE if policy.type == "curvature" else kp.TYPE_WALK
    ip[kp.PI_JUMPS] = 1 if policy.hypothesis_testing else 0
    ip[kp.PI_MAX_PC_BIAS] = policy.max_pc_bias_steps
    ip[kp.PI_MIN_GENERAL] = policy.min_general_steps
    ip[kp.PI_MIN_HEADING] = policy.min_heading_steps
    ip[kp.PI_MIN_POST_GOAL] = policy.min_post_goal_success_steps
    ip[kp.PI_ELAPSED_FACTOR] = policy.elapsed_steps_factor
    ip[kp.PI_WAIT_GROWTH] = policy.wait_growth_multiplier
    ip[kp.PI_NOISE] = 1 if noise else 0
    return fp, ip


def surface_arrays(surface):
    """The kernels' ``kernels.policy.SurfaceSamples`` of an ``engine.data.sensor.Surface``: points,
    normals, curvature (P, 2), directions (P, 6), and its KD-tree."""
    return kp.SurfaceSamples(surface.points, surface.normals, surface.curvature,
                             np.ascontiguousarray(surface.directions.reshape(-1, 6)), surface.tree)


def episode_seeds(data_seed: int, episode: int, n_points: int) -> tuple[int, int]:
    """``(start sample, RNG state)`` of evaluation episode ``episode`` (deterministic)."""
    rs = np.random.default_rng(np.random.SeedSequence([int(data_seed), 18, int(episode)]))
    return int(rs.integers(n_points)), int(rs.integers(0, 2 ** 63))


def check_inputs(surface, rotation_q, start: int, n_steps: int, n_features: int) -> None:
    """The kernels index and trust what they are given: a ValueError naming what is wrong with a
    surface (NaN or infinity, mismatched rows, no samples), a rotation (NaN, zero), a start
    sample out of range, a negative step count or feature columns other than 2 or 3."""
    points, normals, curvature, directions, _ = surface_arrays(surface)
    n = points.shape[0]
    if n == 0:
        raise ValueError("the surface has no samples")
    for name, a, shape in (("points", points, (n, 3)), ("normals", normals, (n, 3)),
                           ("curvature", curvature, (n, 2)), ("directions", directions, (n, 6))):
        if a.dtype != np.float32 or a.shape != shape:
            raise ValueError(f"surface {name} must be float32 {shape}, got {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"surface {name} holds NaN or infinity")
    q = np.asarray(rotation_q, np.float64)
    if q.shape != (4,) or not np.isfinite(q).all() or not np.any(q != 0):
        raise ValueError(f"rotation must be a finite, non-zero quaternion (w, x, y, z), got {q}")
    if not 0 <= int(start) < n:
        raise ValueError(f"start must lie in [0, {n}), got {start}")
    if int(n_steps) < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if int(n_features) not in (2, 3):
        raise ValueError(f"the observations have 2 (log curvatures) or 3 (hue first) feature columns, "
                         f"got {n_features}")


def run_policy_episode(model, surface, rotation_q, fparams, iparams, seed: int, start: int, n_steps: int,
                       n_features: int, *, stepwise: bool = False, on_step=None):
    """One evaluation episode of ``model`` (an ``EvidenceModel``) with the sensor on ``surface``.

    ``rotation_q`` float32 (4,) the object's rotation; ``n_steps`` observation rows (the step
    budget); ``n_features`` the matching feature columns (2, or 3 with a hue first).
    Returns ``(code, istate, trace, seconds, pol, obs)``: as ``EvidenceModel.run_episode``,
    plus the final ``kernels.policy.PolicyState`` and the observations sensed.
    """
    check_inputs(surface, rotation_q, start, n_steps, n_features)
    models = model.model_arrays()
    prm = kev.params(model.feature_spec, model.fparams, model.iparams)
    n_obj = len(models.obj_start) - 1
    T = int(n_steps)
    obs = kev.observations(np.zeros((T, 3), np.float32), np.zeros((T, 9), np.float32), np.zeros(T, bool),
                           np.zeros((T, n_features), np.float32), np.zeros(T, np.float32))
    st = model.new_state()
    istate = st.istate
    trace = np.full((T, n_obj), -np.inf, np.float32)
    hyp = model._hypotheses(model.initial_capacity())
    rot = quat_to_matrix(np.asarray(rotation_q, np.float32), dtype=np.float64).astype(np.float32)
    pol = kp.new_policy_state(fparams, iparams, seed, rot, T, start)
    surf = surface_arrays(surface)
    t = 0
    code = kev.RUNNING
    seconds = 0.0
    while t < T:
        t0 = time.perf_counter()
        code, t_next = evidence_policy_episode(models, prm, st, hyp, obs, np.int64(t), np.int64(1 if stepwise else 0),
                                               trace, surf, pol)
        seconds += time.perf_counter() - t0
        if code == kev.NEED_CAPACITY:
            hyp = model._hypotheses(int(istate[kev.IS_NEED]))
            t = t_next
            continue
        if stepwise and on_step is not None:
            on_step(t, istate, st.obj_max)
        t = t_next
        if code != kev.RUNNING:
            break
    return code, istate, trace[: int(istate[kev.IS_MATCHING_STEPS])], seconds, pol, obs


def surfaces_of(ex):
    """The experiment's object surfaces (built once; a worker given the data builds them
    again, deterministically from the config)."""
    surfaces = getattr(ex, "_surfaces", None)
    if surfaces is None:
        from engine.data.episodes import build_surfaces

        surfaces = build_surfaces(ex.config)
        ex._surfaces = surfaces
    return surfaces


def eval_episode(ex, e: int, *, stepwise: bool = False, on_step=None, n_steps: int | None = None):
    """Evaluate dataset episode ``e`` of experiment ``ex`` with the sensor in the loop, scored
    like ``EvidenceModel.eval_episode``. Returns ``(code, istate, trace, seconds, score, jumps)``
    with ``jumps = (attempted, landed on the object, steps that were jumps, seconds spent moving
    the sensor and making its observations)``."""
    cfg, ds, model = ex.config, ex.dataset, ex.model
    surfaces = dict(surfaces_of(ex))
    name = str(ds.object_names[int(ds.episode_object[e])])
    surface = surfaces[name]
    hue = None
    if "hue" in [str(n) for n in ds.feature_names]:
        hue = float((ds.meta or {}).get("hue", {}).get(name, 0.0))
    fp, ip = policy_params(cfg.policy, cfg.evidence, bool(cfg.data.params["noise"]), hue)
    start, seed = episode_seeds(cfg.data.params["seed"], e, surface.n_points)
    T = int(cfg.data.params["eval_steps"]) if n_steps is None else int(n_steps)
    code, istate, trace, secs, pol, _ = run_policy_episode(
        model, surface, ds.episode_rotation[e], fp, ip, seed, start, T, len(ex.feature_names),
        stepwise=stepwise, on_step=on_step)
    target = model.object_index(name)
    score = model.score(code, istate, target, ds.episode_rotation[e])
    jumped = pol.jumped[: int(pol.istate[kp.SI_WRITTEN])]
    landed = tuple(int(x) for x in np.flatnonzero(jumped == 1))
    rate = ticks_per_second()
    policy_s = float(pol.istate[kp.SI_TICKS]) / rate if rate > 0 else 0.0
    jumps = (int(pol.istate[kp.SI_N_GOALS]), int(pol.istate[kp.SI_N_ON]), landed, policy_s)
    return code, istate, trace, secs, score, jumps


def compile_policy_kernel() -> float:
    """Compile (or load) the in-loop episode kernel on a toy model and surface (an icosphere),
    both paths; seconds. Its signature depends on array types only."""
    import trimesh

    from engine.data import sensor
    from engine.models.evidence.model import toy_model
    from engine.models.evidence.policy_settings import PolicySettings

    t0 = time.perf_counter()
    model, _ = toy_model()
    settings = model.settings
    surface = sensor.sample_surface(trimesh.creation.icosphere(subdivisions=2, radius=0.05), n_points=300)
    fp, ip = policy_params(PolicySettings(type="curvature", hypothesis_testing=True), settings, True)
    for stepwise in (False, True):
        run_policy_episode(model, surface, np.array([1, 0, 0, 0], np.float32), fp, ip, 1, 0, 4, 2,
                           stepwise=stepwise)
    return time.perf_counter() - t0
