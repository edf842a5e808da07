"""Simulated sensor: surface samples with curvature, surface-following walks, tbp.monty-style
noise, and whole episode datasets (``monty-episodes/1``, docs/dataset-format.md).

Pipeline::

    mesh (engine.data.shapes) --sample_surface--> Surface --walk--> sample rows per episode
         --simulate--> EpisodeDataset (rotated into the world frame, noise on evaluation)

Rotations use the dataset's quaternion convention ``(w, x, y, z)`` (engine.data.rotations):
in an episode with quaternion ``q`` the sensed location of object point ``p`` is
``R(q) p`` and every pose row ``v`` becomes ``R(q) v``.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from kernels.geometry import fit_surface, surface_walk_kernel
from kernels.kdtree import KDTree, build_tree

from engine.data.dataset import EVAL, TRAIN, EpisodeDataset, SensorSteps, validate_dataset
from engine.data.rotations import quat_to_matrix, random_quaternions
from engine.data.shapes import BUILTIN_SHAPES, make_shape, visible_samples

__all__ = [
    "POSE_DEFINED_MIN_DIFFERENCE",
    "TRAINING_ROTATIONS_EULER",
    "Noise",
    "Surface",
    "apply_noise",
    "builtin_surfaces",
    "deferred_interrupts",
    "euler_xyz_to_quaternion",
    "sample_surface",
    "simulate",
    "walk",
]

#: ``pose_defined = abs(k1 - k2) >= this`` (1/m), tbp.monty's ``pc1_is_pc2_threshold``.
POSE_DEFINED_MIN_DIFFERENCE = 10.0

#: tbp.monty's 14 training rotations (xyz Euler angles in degrees, extrinsic; its
#: ``CONF/constants/defaults.yaml``), identity first.
TRAINING_ROTATIONS_EULER = np.array(
    [
        [0, 0, 0], [0, 90, 0], [0, 180, 0], [0, 270, 0], [90, 0, 0], [90, 180, 0],
        [35, 45, 0], [325, 45, 0], [35, 315, 0], [325, 315, 0], [35, 135, 0],
        [325, 135, 0], [35, 225, 0], [325, 225, 0],
    ],
    dtype=np.float64,
)
TRAINING_ROTATIONS_EULER.flags.writeable = False


# --------------------------------------------------------------------------- Ctrl-C

# Set by deferred_interrupts' SIGINT handler; checked between kernel calls.
_INTERRUPTED = threading.Event()


def _check_interrupt() -> None:
    """Raise the KeyboardInterrupt that :func:`deferred_interrupts` held back, here, between
    two kernel calls."""
    if _INTERRUPTED.is_set():
        _INTERRUPTED.clear()
        raise KeyboardInterrupt


@contextmanager
def deferred_interrupts():
    """Ctrl-C during the simulation, delivered between kernel calls.

    The simulation spends its time in compiled kernels, some in worker threads
    (``kernels.geometry.fit_surface``). Python raises a KeyboardInterrupt at whatever
    bytecode the main thread runs next, and inside a numba call that comes out as a
    ``SystemError`` (the kernel "returned a result with an exception set"). Within this
    context SIGINT only sets a flag, which the simulation checks between objects, fits and
    walks (every few milliseconds to seconds) and turns into a plain KeyboardInterrupt; a
    second Ctrl-C interrupts at once. Outside the main thread, or when SIGINT has a handler
    of the caller's, it changes nothing.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum, frame):
        if _INTERRUPTED.is_set():  # the second Ctrl-C: now
            _INTERRUPTED.clear()
            raise KeyboardInterrupt
        _INTERRUPTED.set()

    _INTERRUPTED.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
        _check_interrupt()
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()


# --------------------------------------------------------------------------- surfaces


@dataclass(frozen=True, eq=False)
class Surface:
    """Surface samples of one object, canonical frame, with their local geometry.

    Attributes
    ----------
    points : float32 (P, 3)
        Sample locations (metres).
    normals : float32 (P, 3)
        Unit outward normals (fitted, see ``kernels.geometry``).
    curvature : float32 (P, 2)
        ``k1, k2`` (1/m), ``abs(k1) >= abs(k2)``, convex negative.
    directions : float32 (P, 2, 3)
        Principal directions; ``[normal, dir1, dir2]`` is a right-handed orthonormal frame.
    pose_defined : bool (P,)
        ``abs(k1 - k2) >= 10``.
    tree : kernels.kdtree.KDTree
        Over ``points``.
    """

    points: np.ndarray
    normals: np.ndarray
    curvature: np.ndarray
    directions: np.ndarray
    pose_defined: np.ndarray
    tree: KDTree

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    def pose_vectors(self, rows=None) -> np.ndarray:
        """float32 (n, 3, 3): rows ``normal, dir1, dir2`` of the samples ``rows`` (all if
        None)."""
        sel = slice(None) if rows is None else rows
        return np.ascontiguousarray(
            np.concatenate([self.normals[sel][:, None, :], self.directions[sel]], axis=1)
        )


def sample_surface(mesh: trimesh.Trimesh, n_points: int = 20000, seed: int = 0,
                   radius: float = 0.0075) -> Surface:
    """Area-weighted random surface samples of a mesh with fitted normals and curvature.

    Samples are drawn with ``trimesh.sample.sample_surface`` (seeded); on a composite
    shape (``engine.data.shapes``) samples inside another part are dropped (twice as many are
    drawn, the first ``n_points`` visible ones kept). Rough normals are the sampled faces'
    normals; ``kernels.geometry.fit_surface`` with ``radius`` then gives the normal,
    curvatures and directions.

    Parameters
    ----------
    mesh : trimesh.Trimesh, outward-facing faces, metres
    n_points : int >= 1
    seed : int
    radius : float > 0
        Neighbourhood radius of the curvature fit (metres; 7.5 mm by default).

    Returns
    -------
    Surface, deterministic for ``(mesh, n_points, seed, radius)``.
    """
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise ValueError("mesh has no faces")
    n_points = int(n_points)
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    _check_interrupt()
    composite = bool(isinstance(mesh.metadata, dict) and mesh.metadata.get("parts"))
    count = 2 * n_points if composite else n_points
    pts, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    if composite:
        keep = np.flatnonzero(visible_samples(mesh, pts, face_index))[:n_points]
        pts, face_index = pts[keep], face_index[keep]
    points = np.ascontiguousarray(pts, dtype=np.float32)
    rough = np.ascontiguousarray(np.asarray(mesh.face_normals)[face_index], dtype=np.float32)
    tree = build_tree(points)
    _check_interrupt()
    normal, curvature, directions = fit_surface(
        points, rough, np.arange(len(points), dtype=np.int64), radius, tree=tree
    )
    _check_interrupt()
    pose_defined = np.abs(curvature[:, 0] - curvature[:, 1]) >= np.float32(POSE_DEFINED_MIN_DIFFERENCE)
    return Surface(points, normal, curvature, directions, pose_defined, tree)


def builtin_surfaces(names=BUILTIN_SHAPES, n_points: int = 20000, seed: int = 0) -> list[tuple[str, Surface]]:
    """``[(name, sample_surface(make_shape(name), n_points, seed)) ...]`` for
    :func:`simulate`."""
    return [(name, sample_surface(make_shape(name), n_points=n_points, seed=seed)) for name in names]


# --------------------------------------------------------------------------- walks


def walk(surface: Surface, n_steps: int, rng, step_size: float = 0.01,
         turn_sd_deg: float = 15.0) -> np.ndarray:
    """A surface-following walk (``kernels.geometry.surface_walk_kernel``).

    Starts at a random sample with a random tangent heading; each step turns the heading
    by ``N(0, turn_sd_deg)`` degrees about the normal and moves ``step_size`` along it,
    snapping to the surface samples.

    Parameters
    ----------
    surface : Surface
    n_steps : int >= 0
    rng : numpy.random.Generator or int or None
    step_size : float > 0, metres
    turn_sd_deg : float >= 0

    Returns
    -------
    int64 (n_steps,): rows of ``surface.points`` visited (consecutive repeats where the
    walk was stuck for a step).
    """
    rng = np.random.default_rng(rng)
    n_steps = int(n_steps)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    if not (turn_sd_deg >= 0 and math.isfinite(turn_sd_deg)):
        raise ValueError(f"turn_sd_deg must be finite and >= 0, got {turn_sd_deg!r}")
    _check_interrupt()
    start = np.int64(rng.integers(surface.n_points))
    heading = rng.standard_normal(3).astype(np.float32)
    turns = rng.normal(0.0, math.radians(turn_sd_deg), n_steps).astype(np.float32)
    return surface_walk_kernel(surface.points, surface.normals, surface.tree, start, heading,
                               np.float32(step_size), turns)


# --------------------------------------------------------------------------- several patches


def patch_layout(n_patches: int, spacing: float = 0.01) -> np.ndarray:
    """Offsets (metres) of ``n_patches`` sensor patches in the sensor's tangent frame, float64
    (S, 2) as (side, forward): the central patch first, then tbp.monty's 5-patch layout
    (``habitat_dist_agent_sensors5``: +y, -y, +x, -x, ``spacing`` apart), then the points of
    a square grid of that spacing by distance from the centre (diagonals, then 2 spacings
    along the axes, ...)."""
    n_patches = int(n_patches)
    if n_patches < 1:
        raise ValueError(f"n_patches must be >= 1, got {n_patches}")
    base = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]
    ring = 1
    while len(base) < n_patches:
        ring += 1
        more = [(x, y) for x in range(-ring, ring + 1) for y in range(-ring, ring + 1)
                if (x, y) not in base and max(abs(x), abs(y)) <= ring]
        more.sort(key=lambda xy: (xy[0] ** 2 + xy[1] ** 2, -xy[1], -xy[0]))
        base += more
    return np.array(base[:n_patches], np.float64) * float(spacing)


def patch_rows(surface: Surface, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The surface samples the other patches of a walk sense: int64 (len(rows), S).

    Column 0 is ``rows`` (the central patch). At step ``t`` the sensor's tangent frame is
    the normal of the central sample and its heading (towards the next step's point, the
    last heading where the walk stood still, the first curvature direction before it
    moved); patch ``s`` looks at ``p + side_s * (n x h) + forward_s * h`` and senses the
    surface sample nearest to it (so each patch has its own location, pose vectors,
    curvatures and ``pose_defined``).
    """
    from kernels.kdtree import knn_rows

    rows = np.asarray(rows, np.int64)
    n = len(rows)
    offsets = np.asarray(offsets, np.float64).reshape(-1, 2)
    out = np.empty((n, len(offsets)), np.int64)
    out[:, 0] = rows
    if n == 0 or len(offsets) == 1:
        return out
    p = surface.points[rows].astype(np.float64)
    nrm = surface.normals[rows].astype(np.float64)
    heading = np.empty((n, 3))
    h = surface.directions[rows[0], 0].astype(np.float64)
    for t in range(n):
        if t + 1 < n:
            d = p[t + 1] - p[t]
            d -= (d @ nrm[t]) * nrm[t]
            if np.linalg.norm(d) > 1e-9:
                h = d
        h = h - (h @ nrm[t]) * nrm[t]
        norm = np.linalg.norm(h)
        if norm < 1e-9:
            h = surface.directions[rows[t], 0].astype(np.float64)
            norm = np.linalg.norm(h)
        h = h / norm
        heading[t] = h
    side = np.cross(nrm, heading)
    targets = (p[:, None, :] + offsets[None, 1:, 0, None] * side[:, None, :]
               + offsets[None, 1:, 1, None] * heading[:, None, :]).reshape(-1, 3).astype(np.float32)
    idx = np.empty((len(targets), 1), np.int64)
    dist = np.empty((len(targets), 1), np.float32)
    # (the argument types of the surface walk's and the node grid's call: one compiled signature)
    knn_rows(surface.tree, np.ascontiguousarray(targets), 0, len(targets), 1, np.float32(np.inf), idx, dist,
             np.empty(0, np.int64))
    out[:, 1:] = idx[:, 0].reshape(n, len(offsets) - 1)
    return out


# --------------------------------------------------------------------------- rotations


def euler_xyz_to_quaternion(deg) -> np.ndarray:
    """Quaternions of extrinsic x-y-z Euler angles (scipy's lowercase ``"xyz"``).

    ``R = Rz(c) Ry(b) Rx(a)``: rotate about the fixed x axis by ``a``, then about fixed y
    by ``b``, then about fixed z by ``c`` (tbp.monty's and habitat's convention for its
    rotation lists).

    Parameters
    ----------
    deg : array_like (..., 3), degrees

    Returns
    -------
    float32 (..., 4): unit quaternions ``(w, x, y, z)`` with ``w >= 0``.
    """
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    if a.shape[-1:] != (3,):
        raise ValueError(f"Euler angles must have shape (..., 3), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("Euler angles must be finite")
    h = a / 2.0
    cx, sx = np.cos(h[..., 0]), np.sin(h[..., 0])
    cy, sy = np.cos(h[..., 1]), np.sin(h[..., 1])
    cz, sz = np.cos(h[..., 2]), np.sin(h[..., 2])
    # q = qz * qy * qx (Hamilton product; the rightmost rotation acts first).
    w = cz * cy * cx + sz * sy * sx
    x = cz * cy * sx - sz * sy * cx
    y = cz * sy * cx + sz * cy * sx
    z = sz * cy * cx - cz * sy * sx
    q = np.stack([w, x, y, z], axis=-1)
    q = np.where(q[..., :1] < 0.0, -q, q)
    return q.astype(np.float32)


# --------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class Noise:
    """Sensor noise of tbp.monty's ``DefaultMessageNoise`` kind (defaults = its levels).

    Attributes
    ----------
    location : float
        Standard deviation (metres) of Gaussian noise added to each location coordinate.
    pose_deg : float
        Standard deviation (degrees) of each xyz Euler angle of one random rotation
        applied to the whole pose matrix (it stays orthonormal and right-handed).
    curvature_log : float
        Standard deviation of Gaussian noise added to ``sign(k) ln(1 + |k|)``.
    hue : float
        Standard deviation of Gaussian noise added to hue (then clipped to [0, 1]).
    pose_defined_flip : float
        Probability of flipping ``pose_defined``.
    """

    location: float = 0.002
    pose_deg: float = 2.0
    curvature_log: float = 0.1
    hue: float = 0.1
    pose_defined_flip: float = 0.01

    @classmethod
    def none(cls) -> "Noise":
        """No noise at all."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self):
        for key, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Noise.{key} must be a finite number >= 0, got {value!r}")
        if self.pose_defined_flip > 1:
            raise ValueError(f"Noise.pose_defined_flip must be <= 1, got {self.pose_defined_flip!r}")


def apply_noise(noise: Noise, rng, location, pose_vectors, curvature, pose_defined, hue=None):
    """Noisy copies of one episode's observations (inputs are not modified).

    Parameters
    ----------
    noise : Noise
    rng : numpy.random.Generator
    location : float32 (n, 3)
    pose_vectors : float32 (n, 3, 3), rows normal, dir1, dir2
    curvature : float32 (n, 2), ``abs(k1) >= abs(k2)``
    pose_defined : bool (n,)
    hue : float32 (n,) or None

    Returns
    -------
    location, pose_vectors, curvature, pose_defined, hue : same shapes and dtypes (hue
    None when given None). Curvatures are re-sorted by absolute value after the noise;
    where the order flips, the directions swap as ``dir1' = dir2, dir2' = -dir1`` (so
    ``dir2' = normal x dir1'`` still holds).
    """
    n = location.shape[0]
    loc = location.astype(np.float64) + rng.normal(0.0, noise.location, (n, 3))
    # One small rotation per step applied to every pose row: v -> Rn v, i.e. P Rn^T.
    angles = rng.normal(0.0, noise.pose_deg, (n, 3))
    rn = quat_to_matrix(euler_xyz_to_quaternion(angles), dtype=np.float64)
    pose = np.einsum("tij,tkj->tik", pose_vectors.astype(np.float64), rn)
    k = curvature.astype(np.float64)
    logk = np.sign(k) * np.log1p(np.abs(k)) + rng.normal(0.0, noise.curvature_log, (n, 2))
    k = (np.sign(logk) * np.expm1(np.abs(logk))).astype(np.float32)
    flip = np.abs(k[:, 1]) > np.abs(k[:, 0])  # compared in float32, as the format checks
    k[flip] = k[flip][:, ::-1]
    d1 = pose[flip, 1].copy()
    pose[flip, 1] = pose[flip, 2]
    pose[flip, 2] = -d1
    defined = pose_defined ^ (rng.random(n) < noise.pose_defined_flip)
    out_hue = None
    if hue is not None:
        out_hue = np.clip(hue.astype(np.float64) + rng.normal(0.0, noise.hue, n), 0.0, 1.0).astype(np.float32)
    return (loc.astype(np.float32), pose.astype(np.float32), k, defined, out_hue)


# --------------------------------------------------------------------------- datasets


def simulate(objects, *, train_steps: int = 400, eval_rotations: int = 10, eval_steps: int = 100,
             noise: Noise | None = None, seed: int = 0, step_size: float = 0.01,
             hue: dict | None = None, patches: int = 1, patch_spacing: float = 0.01) -> EpisodeDataset:
    """A sensorimotor episode dataset from surface walks over objects.

    Episodes, in file order:

    - training (split 0): for each object in order, for each of the 14
      :data:`TRAINING_ROTATIONS_EULER`, a walk of ``train_steps`` steps, no noise;
    - evaluation (split 1): for each object, ``eval_rotations`` rotations drawn uniformly
      over SO(3) (seeded), a walk of ``eval_steps`` steps each, with ``noise`` if given.

    In an episode with rotation ``R`` the location is ``R p`` and each pose row ``R v``
    (computed in float64, rounded once).

    Parameters
    ----------
    objects : list of (name, Surface)
        Unique names.
    train_steps, eval_rotations, eval_steps : int >= 0
    noise : Noise or None
        Applied to evaluation episodes only.
    seed : int
        Seeds everything random (walks, evaluation rotations, noise): the same seed gives
        the same dataset.
    step_size : float > 0
        Walk step (metres).
    hue : dict name -> float in [0, 1), or None
        Per-object hue: a ``hue`` feature column (constant per object, plus noise). None:
        no feature columns.
    patches : int >= 1
        Sensor patches per step (:func:`patch_layout`, :func:`patch_rows`): the walk's
        point and ``patches - 1`` more around it, ``patch_spacing`` metres apart, each
        with its own noise; the dataset's ``sensors`` hold the patches beyond the first.
        With 1 the dataset is exactly the one-sensor dataset of the same arguments.

    Returns
    -------
    EpisodeDataset, validated; ``meta`` records the generator parameters.
    """
    objects = list(objects)
    if not objects:
        raise ValueError("objects must not be empty")
    names = [str(name) for name, _ in objects]
    if len(set(names)) != len(names):
        raise ValueError(f"object names must be unique, got {names}")
    for name, surf in objects:
        if not isinstance(surf, Surface):
            raise ValueError(f"object {name!r}: expected a Surface, got {type(surf).__name__}")
    for key, value in (("train_steps", train_steps), ("eval_rotations", eval_rotations),
                       ("eval_steps", eval_steps)):
        if int(value) != value or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
    if hue is not None:
        missing = [n for n in names if n not in hue]
        if missing:
            raise ValueError(f"hue has no value for objects {missing}")
        bad = {n: hue[n] for n in names if not (0.0 <= float(hue[n]) < 1.0)}
        if bad:
            raise ValueError(f"hue values must lie in [0, 1), got {bad}")

    patches = int(patches)
    if patches < 1:
        raise ValueError(f"patches must be >= 1, got {patches}")
    ss = np.random.SeedSequence(seed)
    rng_train, rng_rot, rng_eval, rng_noise = (np.random.default_rng(s) for s in ss.spawn(4))

    train_q = euler_xyz_to_quaternion(TRAINING_ROTATIONS_EULER)
    episodes = []  # (object index, quaternion float32 (4,), split, sample rows)
    for o, (_, surf) in enumerate(objects):
        for q in train_q:
            episodes.append((o, q, TRAIN, walk(surf, train_steps, rng_train, step_size)))
    for o, (_, surf) in enumerate(objects):
        for q in random_quaternions(int(eval_rotations), rng_rot):
            episodes.append((o, q, EVAL, walk(surf, eval_steps, rng_eval, step_size)))

    locs, poses, curvs, defs, hues = [], [], [], [], []
    for o, q, split, rows in episodes:
        _check_interrupt()
        surf = objects[o][1]
        r = quat_to_matrix(q, dtype=np.float64)
        loc = (surf.points[rows].astype(np.float64) @ r.T).astype(np.float32)
        pose = (surf.pose_vectors(rows).astype(np.float64) @ r.T).astype(np.float32)
        curv = surf.curvature[rows]
        pdef = surf.pose_defined[rows]
        h = np.full(len(rows), hue[names[o]], dtype=np.float32) if hue is not None else None
        if split == EVAL and noise is not None:
            loc, pose, curv, pdef, h = apply_noise(noise, rng_noise, loc, pose, curv, pdef, h)
        locs.append(loc)
        poses.append(pose)
        curvs.append(curv)
        defs.append(pdef)
        if h is not None:
            hues.append(h)

    sensors = ()
    if patches > 1:  # the other patches: their own samples and noise (a fifth seed stream)
        sensors = _patch_steps(objects, episodes, patch_layout(patches, patch_spacing), noise,
                               np.random.default_rng(ss.spawn(1)[0]), hue, names)

    lengths = np.array([len(e[3]) for e in episodes], dtype=np.int64)
    offsets = np.zeros(len(episodes) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_total = int(offsets[-1])
    if hue is not None:
        features = np.ascontiguousarray(np.concatenate(hues)[:, None], dtype=np.float32)
        feature_names = np.array(["hue"])
    else:
        features = np.zeros((n_total, 0), dtype=np.float32)
        feature_names = np.zeros(0, dtype="<U1")

    def cat(parts, shape, dtype):
        if parts:
            return np.ascontiguousarray(np.concatenate(parts), dtype=dtype)
        return np.zeros(shape, dtype=dtype)

    meta = {
        "generator": "engine.data.sensor.simulate",
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else str(seed),
        "train_steps": int(train_steps),
        "eval_rotations": int(eval_rotations),
        "eval_steps": int(eval_steps),
        "step_size": float(step_size),
        "training_rotations_euler_deg": TRAINING_ROTATIONS_EULER.tolist(),
        "noise": asdict(noise) if noise is not None else None,
        "hue": {n: float(hue[n]) for n in names} if hue is not None else None,
        "surface_points": [objects[o][1].n_points for o in range(len(objects))],
    }
    if patches > 1:
        meta["patches"] = patches
        meta["patch_spacing"] = float(patch_spacing)
    json.dumps(meta)  # fail here, not in the writer, if something is not JSON
    ds = EpisodeDataset(
        location=cat(locs, (0, 3), np.float32),
        pose_vectors=cat(poses, (0, 3, 3), np.float32),
        pose_defined=cat(defs, (0,), np.bool_),
        curvature=cat(curvs, (0, 2), np.float32),
        features=features,
        feature_names=feature_names,
        episode_offsets=offsets,
        episode_object=np.array([e[0] for e in episodes], dtype=np.int32),
        episode_rotation=np.ascontiguousarray(
            np.array([e[1] for e in episodes], dtype=np.float32).reshape(-1, 4)
        ),
        episode_split=np.array([e[2] for e in episodes], dtype=np.int8),
        object_names=np.array(names),
        meta=meta,
        sensors=sensors,
    )
    validate_dataset(ds)
    return ds


def _patch_steps(objects, episodes, offsets, noise, rng, hue, names):
    """SensorSteps of patches 1.. of every episode (see :func:`simulate`)."""
    per = [[[] for _ in range(5)] for _ in range(len(offsets) - 1)]
    for o, q, split, rows in episodes:
        _check_interrupt()
        surf = objects[o][1]
        r = quat_to_matrix(q, dtype=np.float64)
        all_rows = patch_rows(surf, rows, offsets)
        for s in range(1, len(offsets)):
            pr = all_rows[:, s]
            loc = (surf.points[pr].astype(np.float64) @ r.T).astype(np.float32)
            pose = (surf.pose_vectors(pr).astype(np.float64) @ r.T).astype(np.float32)
            curv = surf.curvature[pr]
            pdef = surf.pose_defined[pr]
            h = np.full(len(pr), hue[names[o]], dtype=np.float32) if hue is not None else None
            if split == EVAL and noise is not None:
                loc, pose, curv, pdef, h = apply_noise(noise, rng, loc, pose, curv, pdef, h)
            feats = h[:, None] if h is not None else np.zeros((len(pr), 0), np.float32)
            for part, a in zip(per[s - 1], (loc, pose, pdef, curv, feats)):
                part.append(a)
    out = []
    for parts in per:
        arrays = [np.ascontiguousarray(np.concatenate(p)) if p else None for p in parts]
        if arrays[0] is None:
            arrays = [np.zeros((0, 3), np.float32), np.zeros((0, 3, 3), np.float32), np.zeros(0, bool),
                      np.zeros((0, 2), np.float32), np.zeros((0, 0 if hue is None else 1), np.float32)]
        loc, pose, pdef, curv, feats = arrays
        out.append(SensorSteps(loc.astype(np.float32), pose.astype(np.float32), pdef.astype(np.bool_),
                               curv.astype(np.float32), np.ascontiguousarray(feats, np.float32)))
    return tuple(out)
