"""Observation sources: the arrays an experiment steps through.

Every source produces an ``Observations``: the observation arrays of the data
flow (``location`` float32 (T, 3), ``features`` float32 (T, F), C-contiguous)
and the episodes of a training epoch and of an evaluation epoch as
``starts, stops`` int64 row ranges. Every epoch presents the same episodes.

Synthetic sources (the seed's): ``seed_spiral`` (the seed benchmark's
generator), ``cube`` and ``sphere`` (point sets of the seed demo), ``random``
(uniform points, seeded). For these one episode per epoch walks the whole point
sequence; training and evaluation episodes present the same sequence, except
``random``, whose evaluation episode is a second, independent draw.
``dataset`` replays a recorded episode file (``engine.data.dataset``): its training
episodes (split 0) form a training epoch, its evaluation episodes (split 1) an
evaluation epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

f32 = np.float32


@dataclass(frozen=True)
class Observations:
    """Observation arrays and the episodes of one training and one evaluation epoch."""

    location: np.ndarray          # float32 (T, 3)
    features: np.ndarray          # float32 (T, F)
    feature_names: tuple
    train_starts: np.ndarray      # int64 (E_train,)
    train_stops: np.ndarray       # int64 (E_train,)
    eval_starts: np.ndarray       # int64 (E_eval,)
    eval_stops: np.ndarray        # int64 (E_eval,)
    train_objects: tuple = ()     # object name per training episode ("" when unknown)
    eval_objects: tuple = ()      # object name per evaluation episode

    @property
    def n_features(self) -> int:
        return self.features.shape[1]


def _one_episode(location, features, feature_names, object_name, eval_location=None, eval_features=None):
    """Observations whose training and evaluation epochs are one episode each."""
    location = np.ascontiguousarray(location, dtype=f32)
    features = np.ascontiguousarray(features, dtype=f32)  # (T, F), F may be 0
    n = location.shape[0]
    if eval_location is None:
        ev = (0, n)
    else:
        location = np.ascontiguousarray(np.concatenate([location, eval_location]), dtype=f32)
        features = np.ascontiguousarray(np.concatenate([features, eval_features]), dtype=f32)
        ev = (n, location.shape[0])
    return Observations(location, features, tuple(feature_names),
                        np.array([0], np.int64), np.array([n], np.int64),
                        np.array([ev[0]], np.int64), np.array([ev[1]], np.int64),
                        (object_name,), (object_name,))


def seed_spiral(size: int = 100) -> Observations:
    """The seed benchmark's data: t = 0.1 i (float32), position (sin t, cos t, 0.5 t), feature sin t + cos t."""
    t = np.arange(size, dtype=f32) * f32(0.1)
    s, c = np.sin(t), np.cos(t)
    location = np.stack([s, c, f32(0.5) * t], axis=1)
    return _one_episode(location, (s + c)[:, None], ("sin_plus_cos",), "spiral")


def cube(points_per_edge: int = 4, side: float = 0.1) -> Observations:
    """Surface grid points of a cube centred at the origin, in raster order.

    Feature: the height ``z / side + 0.5`` in [0, 1].
    """
    g = (np.linspace(0.0, 1.0, points_per_edge) - 0.5) * side
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    on_surface = (np.abs(pts) >= 0.5 * side - 1e-9).any(axis=1)
    pts = pts[on_surface].astype(f32)
    return _one_episode(pts, (pts[:, 2] / f32(side) + f32(0.5))[:, None], ("height",), "cube")


def sphere(n_points: int = 64, radius: float = 0.05) -> Observations:
    """Fibonacci-lattice points on a sphere centred at the origin; feature: height in [0, 1]."""
    i = np.arange(n_points, dtype=np.float64) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n_points)
    azimuth = np.pi * (1.0 + 5.0 ** 0.5) * i
    pts = radius * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)
    pts = pts.astype(f32)
    return _one_episode(pts, (pts[:, 2] / f32(2 * radius) + f32(0.5))[:, None], ("height",), "sphere")


def random_points(n_points: int = 100, n_features: int = 1, seed: int = 0) -> Observations:
    """Uniform points in the unit cube and uniform features in [0, 1); evaluation is a second draw."""
    rng = np.random.default_rng(seed)
    train_loc = rng.random((n_points, 3), dtype=f32)
    train_feat = rng.random((n_points, n_features), dtype=f32)
    eval_loc = rng.random((n_points, 3), dtype=f32)
    eval_feat = rng.random((n_points, n_features), dtype=f32)
    names = tuple(f"feature_{k}" for k in range(n_features))
    return _one_episode(train_loc, train_feat, names, "random", eval_loc, eval_feat)


def from_dataset(path: str) -> Observations:
    """A recorded episode file: split-0 episodes train, split-1 episodes evaluate."""
    from engine.data.dataset import read_dataset

    ds = read_dataset(path)
    tr_s, tr_e = ds.episode_bounds(0)
    ev_s, ev_e = ds.episode_bounds(1)
    names = [str(n) for n in ds.object_names]
    tr_obj = tuple(names[ds.episode_object[e]] for e in ds.episode_indices(0))
    ev_obj = tuple(names[ds.episode_object[e]] for e in ds.episode_indices(1))
    return Observations(ds.location, ds.features, tuple(str(n) for n in ds.feature_names),
                        np.asarray(tr_s, np.int64), np.asarray(tr_e, np.int64),
                        np.asarray(ev_s, np.int64), np.asarray(ev_e, np.int64), tr_obj, ev_obj)


def build(source: str, params: dict) -> Observations:
    """The observations of a validated ``data`` config section."""
    if source == "seed_spiral":
        return seed_spiral(**params)
    if source == "cube":
        return cube(**params)
    if source == "sphere":
        return sphere(**params)
    if source == "random":
        return random_points(**params)
    if source == "dataset":
        return from_dataset(params["path"])
    raise ValueError(f"unknown data source {source!r}")
