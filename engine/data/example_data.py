"""A small synthetic ``monty-episodes/1`` dataset: three objects, shipped as
``configs/data/example_episodes.npz`` for examples, configs and tests.

Objects (canonical frame, centred on the origin, metres):

- ``cube``: side 0.05, a 4 x 4 grid of cell centres on each face (96 points); flat, so
  curvature (0, 0) and ``pose_defined`` False; hue by face, 0.05 ... 0.25.
- ``sphere``: radius 0.03, 80 points on a Fibonacci spiral; curvature (-1/r, -1/r)
  (convex is negative), ``pose_defined`` False; hue 0.5 ... 0.6 from bottom to top.
- ``cylinder``: radius 0.02, height 0.06, side only, 8 x 8 points; curvature
  (-1/r, 0) with the first principal direction around the circumference, so
  ``pose_defined`` True; hue 0.8 ... 0.9 from bottom to top.

Episodes: one training episode per object in the identity rotation, then two evaluation
episodes per object, in two seeded random rotations (rotation-major order, see
:func:`engine.data.dataset.points_dataset`). Each episode visits its object's points in a
seeded random order. The same seed gives bit-identical arrays.

Regenerate the bundled file with::

    python -c "from engine.data.example_data import write_example_dataset; write_example_dataset()"
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.data.dataset import EpisodeDataset, points_dataset, write_dataset
from engine.data.rotations import IDENTITY_QUATERNION, random_quaternions

__all__ = ["EXAMPLE_DATASET_PATH", "make_example_dataset", "write_example_dataset"]

#: Where the bundled example dataset lives in the repository.
EXAMPLE_DATASET_PATH = (
    Path(__file__).resolve().parents[2] / "configs" / "data" / "example_episodes.npz"
)

_CUBE_SIDE = 0.05
_CUBE_GRID = 4
_SPHERE_RADIUS = 0.03
_SPHERE_POINTS = 80
_CYLINDER_RADIUS = 0.02
_CYLINDER_HEIGHT = 0.06
_CYLINDER_GRID = 8
_EVAL_ROTATIONS = 2


def _cube():
    """Cell centres of a grid on each face: flat patches, normal = face axis."""
    half = _CUBE_SIDE / 2.0
    ticks = (np.arange(_CUBE_GRID) + 0.5) / _CUBE_GRID * _CUBE_SIDE - half
    u, v = (g.ravel() for g in np.meshgrid(ticks, ticks, indexing="ij"))
    locs, normals, hues = [], [], []
    face = 0
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for sign in (-1.0, 1.0):
            p = np.empty((u.size, 3))
            p[:, axis] = sign * half
            p[:, others[0]] = u
            p[:, others[1]] = v
            n = np.zeros((u.size, 3))
            n[:, axis] = sign
            locs.append(p)
            normals.append(n)
            hues.append(np.full(u.size, 0.05 + 0.04 * face))
            face += 1
    loc = np.concatenate(locs)
    curvature = np.zeros((loc.shape[0], 2))
    return "cube", loc, np.concatenate(normals), curvature, np.concatenate(hues)[:, None]


def _sphere():
    """Fibonacci-spiral points: near-uniform cover with no random draws."""
    i = np.arange(_SPHERE_POINTS) + 0.5
    z = 1.0 - 2.0 * i / _SPHERE_POINTS
    rho = np.sqrt(1.0 - z * z)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i  # golden angle steps
    normals = np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)
    curvature = np.full((_SPHERE_POINTS, 2), -1.0 / _SPHERE_RADIUS)
    hue = 0.5 + 0.1 * (z + 1.0) / 2.0
    return "sphere", _SPHERE_RADIUS * normals, normals, curvature, hue[:, None]


def _cylinder():
    """Side of a cylinder along z: curved around (k1 = -1/r), straight along (k2 = 0)."""
    theta = 2.0 * np.pi * np.arange(_CYLINDER_GRID) / _CYLINDER_GRID
    height = ((np.arange(_CYLINDER_GRID) + 0.5) / _CYLINDER_GRID - 0.5) * _CYLINDER_HEIGHT
    th, h = (g.ravel() for g in np.meshgrid(theta, height, indexing="ij"))
    normals = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], axis=1)
    loc = _CYLINDER_RADIUS * normals + np.stack([0 * h, 0 * h, h], axis=1)
    around = np.stack([-np.sin(th), np.cos(th), np.zeros_like(th)], axis=1)
    curvature = np.zeros((th.size, 2))
    curvature[:, 0] = -1.0 / _CYLINDER_RADIUS
    hue = 0.8 + 0.1 * (h / _CYLINDER_HEIGHT + 0.5)
    return "cylinder", loc, normals, curvature, hue[:, None], around


def make_example_dataset(seed: int = 0) -> EpisodeDataset:
    """The example dataset (see the module docstring); deterministic in ``seed``.

    Returns
    -------
    EpisodeDataset
        720 steps, 9 episodes (3 training, 6 evaluation), 3 objects, 1 feature ``hue``.
    """
    # Independent streams for the rotations and the visiting orders, so that changing one
    # (e.g. more rotations) does not reshuffle the other.
    rotation_seed, order_seed = np.random.SeedSequence(seed).spawn(2)
    eval_rotations = random_quaternions(_EVAL_ROTATIONS, np.random.default_rng(rotation_seed))
    meta = {
        "generator": "engine.data.example_data.make_example_dataset",
        "seed": seed,
        "objects": {
            "cube": {"side_m": _CUBE_SIDE, "grid_per_face": _CUBE_GRID},
            "sphere": {"radius_m": _SPHERE_RADIUS, "points": _SPHERE_POINTS},
            "cylinder": {
                "radius_m": _CYLINDER_RADIUS,
                "height_m": _CYLINDER_HEIGHT,
                "grid": _CYLINDER_GRID,
            },
        },
        "train_rotations": "identity, one episode per object",
        "eval_rotations": f"{_EVAL_ROTATIONS} uniform random (seeded), one episode per object each",
        "step_order": "seeded random permutation of the object's points per episode",
        "noise": "none",
    }
    return points_dataset(
        [_cube(), _sphere(), _cylinder()],
        train_rotations=IDENTITY_QUATERNION[None, :],
        eval_rotations=eval_rotations,
        feature_names=("hue",),
        seed=order_seed,
        meta=meta,
    )


def write_example_dataset(
    path: str | os.PathLike = EXAMPLE_DATASET_PATH, seed: int = 0
) -> EpisodeDataset:
    """Write :func:`make_example_dataset` (uncompressed) to ``path`` and return it."""
    ds = make_example_dataset(seed)
    write_dataset(path, ds, compress=False)
    return ds
