"""Synthetic datasets in the ``monty-episodes/1`` format, written chunk by chunk.

``make_dataset(source, size, out)`` writes the observations of one of the engine's
synthetic sources (``engine.data.sources``) as a dataset file (``npz``) or folder
(``npy-dir``) that ``data.source: dataset`` replays and ``engine.data.dataset.read_dataset``
memory-maps. Nothing of size ``T`` is ever built in memory: each array is generated and
written :data:`WRITE_CHUNK` points at a time, so 10 million steps take a few MB of memory
besides the file.

Every source gives two episodes of one object, like the engine's source: a training
episode (split 0) and an evaluation episode (split 1), each ``n`` steps, identity
rotation. ``size`` is the source's one size parameter:

- ``seed_spiral``: ``size`` = steps per episode (``data.size``). The helix
  (sin t, cos t, 0.5 t), t = 0.1 i, lies on the unit cylinder x^2 + y^2 = 1, whose
  geometry it gets: outward normal (sin t, cos t, 0), first principal direction
  (cos t, -sin t, 0) (around the cylinder), curvature (-1, 0) 1/m, ``pose_defined``
  False (abs(k1 - k2) = 1 < 10 1/m, tbp.monty's rule). Feature ``sin_plus_cos``.
- ``cube``: ``size`` = points per edge (``data.points_per_edge``; n^3 - (n-2)^3 points,
  1 point for size 1). The surface grid of a cube of side 0.1 m in raster order: face
  normal (at edges and corners the normalised sum of the faces' normals), curvature
  (0, 0), ``pose_defined`` False. Feature ``height`` in [0, 1].
- ``sphere``: ``size`` = points (``data.n_points``). Fibonacci lattice on a sphere of
  radius 0.05 m: normal ``p / r``, curvature (-1/r, -1/r) = (-20, -20) 1/m,
  ``pose_defined`` False. Feature ``height``.
- ``random``: ``size`` = points (``data.n_points``). Uniform points in the unit cube (no
  surface): constant normal (0, 0, 1), curvature (0, 0), ``pose_defined`` False;
  ``n_features`` uniform features; the evaluation episode is a second draw.

The evaluation episode of ``seed_spiral``, ``cube`` and ``sphere`` repeats the training
sequence (the format's episodes cannot share steps), so every source has ``T = 2 n``
steps. ``location`` and ``features`` equal the arrays of
``engine.data.sources`` bit for bit (``random`` with the same ``seed``); ``seed`` affects
``random`` only. ``n_features``: 0 or 1 for the geometric sources (0 drops their
feature), 0 to 64 for ``random``. For ``cube``, ``sphere`` and ``random`` (flat or
spherical patches, ``pose_defined`` False) the second row of each pose matrix is any unit
vector orthogonal to the normal, as the format allows.

Files: each ``.npy`` header is padded so that the array data starts 64-byte aligned in
the file (also inside the ``.npz``), members are stored uncompressed unless ``compress``,
and every zip timestamp is 1980-01-01, so the same arguments give the same bytes.
Writing is atomic (temporary name, validated with ``read_dataset``, then renamed).

The ``shapes`` source (:func:`make_shapes_dataset`) is different: it writes the simulated
evidence dataset that a config with ``data.source: shapes`` generates on the fly (the
same ``engine.data.episodes.build_dataset`` call, so the same options give the same
arrays): surface walks over built-in objects and/or the meshes of a folder, 14 training
episodes per object and ``eval_rotations`` evaluation episodes per object under random
rotations (see ``engine.data.sensor.simulate``). It is built in memory (about 60 bytes per step)
and written with ``engine.data.dataset.write_dataset``; it takes no ``size``.

Command line (wired in ``engine.cli``)::

    python -m engine make-dataset --source seed_spiral --size N --out FILE
        [--seed S] [--features F] [--layout npz|npy-dir] [--compress]
    python -m engine make-dataset --source shapes --out FILE [--objects NAME,NAME,...]
        [--mesh-dir DIR] [--n-points N] [--train-steps N] [--eval-rotations N]
        [--eval-steps N] [--noise] [--hue] [--seed S] [--layout npz|npy-dir] [--compress]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from engine import __version__
from engine.data.dataset import (
    ARRAY_FIELDS,
    EVAL,
    FORMAT,
    LAYOUTS,
    TRAIN,
    check_dataset_folder,
    frames_from_normals,
    read_dataset,
    write_dataset,
)
from engine.errors import UserError
from engine.files import atomic_write, atomic_write_dir
from kernels.npzfile import AlignedNpzWriter, write_npy

__all__ = [
    "MAX_FEATURES",
    "SOURCES",
    "WRITE_CHUNK",
    "SHAPES",
    "MadeDataset",
    "add_cli",
    "run_from_args",
    "make_dataset",
    "make_shapes_dataset",
]

logger = logging.getLogger(__name__)

#: The synthetic sources :func:`make_dataset` writes.
SOURCES = ("seed_spiral", "cube", "sphere", "random")
#: The simulated evidence source (:func:`make_shapes_dataset`), ``data.source: shapes``.
SHAPES = "shapes"
#: Largest ``n_features`` of the ``random`` source (as ``data.n_features`` allows).
MAX_FEATURES = 64
#: Points generated and written per chunk (per array): about 9 MB of float32 pose
#: vectors, so memory stays small whatever the size.
WRITE_CHUNK = 1 << 18

# Bytes per step of the step arrays, without features: location 12, pose 36, flag 1,
# curvature 8 (for the free-space check).
_STEP_BYTES = 12 + 36 + 1 + 8

f32 = np.float32


@dataclass(frozen=True)
class MadeDataset:
    """What :func:`make_dataset` wrote (sizes named as ``EpisodeDataset``'s)."""

    path: str
    source: str
    size: int
    layout: str
    compressed: bool
    n_steps: int
    n_episodes: int
    n_objects: int
    n_features: int
    nbytes: int  # file size, or the folder's files together
    seconds: float
    n_train_episodes: int = 1
    n_eval_episodes: int = 1


# --------------------------------------------------------------------------- sources


class _Generator:
    """One synthetic source: ``n`` points per episode, generated in chunks.

    ``chunks(episode, key, chunk)`` yields consecutive float32/bool arrays of the step
    array ``key`` for episode ``episode`` (0 training, 1 evaluation), at most about
    ``chunk`` points each, ``n`` points in all.
    """

    name = ""
    object_name = ""
    n = 0
    feature_names: tuple[str, ...] = ()
    params: dict = {}

    def chunks(self, episode: int, key: str, chunk: int) -> Iterator[np.ndarray]:
        for i0 in range(0, self.n, chunk):
            yield self.block(i0, min(self.n, i0 + chunk), key)

    def block(self, i0: int, i1: int, key: str) -> np.ndarray:
        raise NotImplementedError


def _pose_from_normals(normals: np.ndarray) -> np.ndarray:
    """(k, 3, 3) float32 right-handed frames with row 0 the (normalised) normal."""
    if normals.shape[0] == 0:
        return np.zeros((0, 3, 3), f32)
    return frames_from_normals(np.asarray(normals, np.float64), None, "normals").astype(f32)


def _constant_rows(k: int, row, dtype=f32) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(row, dtype), (k, len(row))))


class _Spiral(_Generator):
    """engine.data.sources.seed_spiral: t = 0.1 i (float32), (sin t, cos t, 0.5 t)."""

    name, object_name = "seed_spiral", "spiral"

    def __init__(self, size: int, n_features: int, seed: int):
        self.n = size
        self.feature_names = ("sin_plus_cos",)[:n_features]
        self.params = {"size": size}

    def block(self, i0: int, i1: int, key: str) -> np.ndarray:
        k = i1 - i0
        if key == "pose_defined":
            return np.zeros(k, bool)
        if key == "curvature":
            return _constant_rows(k, (-1.0, 0.0))
        # np.arange(size, dtype=float32)[i] is float32(i) rounded to nearest: the same as
        # float64 i rounded once, whatever the chunk's start.
        t = np.arange(i0, i1, dtype=np.float64).astype(f32) * f32(0.1)
        s, c = np.sin(t), np.cos(t)
        if key == "location":
            return np.stack([s, c, f32(0.5) * t], axis=1)
        if key == "features":
            return (s + c)[:, None] if self.feature_names else np.zeros((k, 0), f32)
        if key == "pose_vectors":
            pose = np.zeros((k, 3, 3), f32)
            pose[:, 0, 0], pose[:, 0, 1] = s, c  # outward normal of the unit cylinder
            pose[:, 1, 0], pose[:, 1, 1] = c, -s  # around the cylinder (k1 = -1)
            pose[:, 2, 2] = -1.0  # row0 x row1 = (0, 0, -(s^2 + c^2))
            return pose
        raise KeyError(key)


class _Cube(_Generator):
    """engine.data.sources.cube: surface points of an n x n x n grid, raster order."""

    name, object_name = "cube", "cube"
    side = 0.1

    def __init__(self, size: int, n_features: int, seed: int):
        self.per_edge = size
        self.n = size**3 - max(size - 2, 0) ** 3
        self.feature_names = ("height",)[:n_features]
        self.params = {"points_per_edge": size, "side": self.side}
        self.grid = (np.linspace(0.0, 1.0, size) - 0.5) * self.side

    def chunks(self, episode: int, key: str, chunk: int) -> Iterator[np.ndarray]:
        # Blocks of whole rows (x fixed, y over a few values, z over all): the points of
        # np.meshgrid(g, g, g, indexing="ij") in raster order, filtered to the surface.
        g, m = self.grid, self.per_edge
        rows = max(1, chunk // m)
        for i in range(m):
            for j0 in range(0, m, rows):
                j1 = min(m, j0 + rows)
                pts = np.empty(((j1 - j0) * m, 3))
                pts[:, 0] = g[i]
                pts[:, 1] = np.repeat(g[j0:j1], m)
                pts[:, 2] = np.tile(g, j1 - j0)
                on = np.abs(pts) >= 0.5 * self.side - 1e-9
                keep = on.any(axis=1)
                if keep.any():
                    yield self._values(pts[keep], on[keep], key)

    def _values(self, pts: np.ndarray, on: np.ndarray, key: str) -> np.ndarray:
        k = pts.shape[0]
        if key == "location":
            return pts.astype(f32)
        if key == "features":
            p = pts.astype(f32)
            if not self.feature_names:
                return np.zeros((k, 0), f32)
            return (p[:, 2] / f32(self.side) + f32(0.5))[:, None]
        if key == "pose_vectors":
            return _pose_from_normals(on * np.sign(pts))
        if key == "pose_defined":
            return np.zeros(k, bool)
        if key == "curvature":
            return np.zeros((k, 2), f32)
        raise KeyError(key)


class _Sphere(_Generator):
    """engine.data.sources.sphere: Fibonacci lattice, radius 0.05."""

    name, object_name = "sphere", "sphere"
    radius = 0.05

    def __init__(self, size: int, n_features: int, seed: int):
        self.n = size
        self.feature_names = ("height",)[:n_features]
        self.params = {"n_points": size, "radius": self.radius}

    def block(self, i0: int, i1: int, key: str) -> np.ndarray:
        k = i1 - i0
        if key == "pose_defined":
            return np.zeros(k, bool)
        if key == "curvature":
            return _constant_rows(k, (-1.0 / self.radius, -1.0 / self.radius))
        i = np.arange(i0, i1, dtype=np.float64) + 0.5
        polar = np.arccos(1.0 - 2.0 * i / self.n)
        azimuth = np.pi * (1.0 + 5.0**0.5) * i
        unit = np.stack(
            [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)],
            axis=1,
        )
        if key == "pose_vectors":
            return _pose_from_normals(unit)
        pts = (self.radius * unit).astype(f32)
        if key == "location":
            return pts
        if key == "features":
            if not self.feature_names:
                return np.zeros((k, 0), f32)
            return (pts[:, 2] / f32(2 * self.radius) + f32(0.5))[:, None]
        raise KeyError(key)


class _Random(_Generator):
    """engine.data.sources.random_points: one generator draws, in this order, the training
    points (n, 3), training features (n, F), evaluation points, evaluation features.

    Each float32 draw takes 32 bits of PCG64's output (two per 64-bit step), so the
    stream position of each block is known and reached with ``advance``: chunks give the
    same numbers as the one-shot draws.
    """

    name, object_name = "random", "random"

    def __init__(self, size: int, n_features: int, seed: int):
        self.n = size
        self.n_feat = n_features
        self.seed = seed
        self.feature_names = tuple(f"feature_{k}" for k in range(n_features))
        self.params = {"n_points": size, "n_features": n_features, "seed": seed}

    def _rng_at(self, position: int) -> np.random.Generator:
        """A generator positioned after ``position`` float32 draws from the seed."""
        rng = np.random.default_rng(self.seed)
        rng.bit_generator.advance(position // 2)  # (also clears the buffered 32 bits)
        if position % 2:
            rng.random(1, dtype=f32)  # the low half of the next 64 bits; the high is kept
        return rng

    def chunks(self, episode: int, key: str, chunk: int) -> Iterator[np.ndarray]:
        n, nf = self.n, self.n_feat
        if key in ("location", "features"):
            width = 3 if key == "location" else nf
            # positions: train loc 0, train feat 3n, eval loc 3n + nF, eval feat 6n + nF
            start = episode * (3 * n + n * nf) + (3 * n if key == "features" else 0)
            rng = self._rng_at(start)
            for i0 in range(0, n, chunk):
                yield rng.random((min(n, i0 + chunk) - i0, width), dtype=f32)
            return
        for i0 in range(0, n, chunk):
            k = min(n, i0 + chunk) - i0
            if key == "pose_vectors":
                pose = np.zeros((k, 3, 3), f32)
                pose[:, 0, 2] = pose[:, 1, 0] = pose[:, 2, 1] = 1.0  # z, x, y: right-handed
                yield pose
            elif key == "pose_defined":
                yield np.zeros(k, bool)
            elif key == "curvature":
                yield np.zeros((k, 2), f32)
            else:
                raise KeyError(key)


_GENERATORS: dict[str, Callable[[int, int, int], _Generator]] = {
    "seed_spiral": _Spiral,
    "cube": _Cube,
    "sphere": _Sphere,
    "random": _Random,
}


# --------------------------------------------------------------------------- writing


@dataclass
class _Member:
    key: str
    dtype: np.dtype
    shape: tuple
    chunks: Callable[[], Iterator[np.ndarray]]


def _members(gen: _Generator, meta: dict) -> list[_Member]:
    """Every key of the dataset, in the order write_dataset stores them."""
    n, nf = gen.n, len(gen.feature_names)
    t = 2 * n
    chunk = max(1, int(WRITE_CHUNK))
    small = {
        "format": np.array(FORMAT),
        "feature_names": np.array(gen.feature_names, dtype=str).reshape(nf),
        "episode_offsets": np.array([0, n, t], np.int64),
        "episode_object": np.zeros(2, np.int32),
        "episode_rotation": np.array([[1, 0, 0, 0]] * 2, np.float32),
        "episode_split": np.array([TRAIN, EVAL], np.int8),
        "object_names": np.array([gen.object_name]),
        "meta": np.array(json.dumps(meta, allow_nan=False)),
    }
    step_specs = {
        "location": (f32, (t, 3)),
        "pose_vectors": (f32, (t, 3, 3)),
        "pose_defined": (bool, (t,)),
        "curvature": (f32, (t, 2)),
        "features": (f32, (t, nf)),
    }

    def step_chunks(key: str) -> Callable[[], Iterator[np.ndarray]]:
        def chunks() -> Iterator[np.ndarray]:
            for episode in (0, 1):
                yield from gen.chunks(episode, key, chunk)

        return chunks

    members = []
    for key in ("format", *ARRAY_FIELDS, "meta"):
        if key in step_specs:
            dtype, shape = step_specs[key]
            members.append(_Member(key, np.dtype(dtype), shape, step_chunks(key)))
        else:
            a = small[key]
            members.append(_Member(key, a.dtype, a.shape, lambda a=a: iter([a])))
    return members


def _write_npz(f: Any, members: list[_Member], compress: bool) -> None:
    # Each stored member's .npy header is padded so that its data starts 64-byte
    # aligned in the file, every timestamp is 1980-01-01: same arguments, same bytes.
    with AlignedNpzWriter(f, compress=compress, pad="npy") as npz:
        for m in members:
            logger.debug("writing %s %s %s", m.key, m.dtype, m.shape)
            npz.add_chunks(m.key, m.dtype, m.shape, m.chunks())


def _write_folder(folder: str, members: list[_Member]) -> None:
    for m in members:
        with open(os.path.join(folder, m.key + ".npy"), "xb") as f:
            logger.debug("writing %s %s %s", m.key, m.dtype, m.shape)
            write_npy(f, m.dtype, m.shape, m.chunks(), 0, m.key)
            f.flush()
            os.fsync(f.fileno())


def _size_on_disk(path: str) -> int:
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)


# --------------------------------------------------------------------------- API


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"{low}..{high}"
        shown = str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise UserError(f"{name}: expected an integer {allowed}, got {shown}")
    return value


def _check_output(out: str, layout: str, needed: int | None) -> None:
    """Fail before writing anything when ``out`` cannot be (re)placed."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: folder {parent} is not writable")
    if os.path.lexists(out) and not (os.path.isfile(out) or os.path.isdir(out)):
        # replacing it would replace a device (/dev/null) or a FIFO with a regular file
        raise UserError(f"{out}: exists and is not a regular file or a folder; write the dataset elsewhere")
    if layout == "npz" and os.path.isdir(out):
        raise UserError(f"{out}: is a folder; an npz dataset is a file (or use --layout npy-dir)")
    if layout == "npy-dir":
        check_dataset_folder(out)  # a DatasetError, which is a UserError
    if needed is not None:
        free = shutil.disk_usage(parent).free
        if needed > free:
            raise UserError(
                f"{out}: the dataset needs about {needed / 1e9:.2f} GB, only "
                f"{free / 1e9:.2f} GB free in {parent}"
            )


def make_dataset(
    source: str,
    size: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    n_features: int = 1,
    layout: str = "npz",
    compress: bool = False,
) -> MadeDataset:
    """Write a synthetic source's observations as a ``monty-episodes/1`` dataset.

    Parameters
    ----------
    source : {"seed_spiral", "cube", "sphere", "random"}
    size : int >= 1
        ``seed_spiral``: steps per episode; ``cube``: points per edge; ``sphere``,
        ``random``: points (per episode). The dataset has two episodes (training and
        evaluation) of that many points each (see the module docstring).
    out : str or os.PathLike
        The file (``npz``) or folder (``npy-dir``) to write; its parent folder must exist.
        An existing file, or an existing npy-dir dataset folder, is replaced.
    seed : int >= 0
        Seed of ``random`` (the same draws as ``data.seed``); other sources ignore it.
    n_features : int
        0 or 1 for ``seed_spiral``, ``cube``, ``sphere`` (their one feature, or none);
        0 to 64 uniform feature columns for ``random``.
    layout : {"npz", "npy-dir"}
    compress : bool
        Deflate the members (``npz`` only; a compressed file cannot be memory-mapped).

    Returns
    -------
    MadeDataset
        Where and what was written, its size on disk and the time taken.

    Raises
    ------
    UserError
        Unknown source or layout, a size or feature count out of range, ``compress``
        with ``npy-dir``, an output that cannot be written (missing or read-only folder,
        a folder where a file goes or the reverse, not enough free disk space).
    """
    t0 = time.perf_counter()
    if source == SHAPES:
        raise UserError("the shapes source takes no size: use make_shapes_dataset (CLI: --source shapes "
                        "without --size)")
    if source not in _GENERATORS:
        raise UserError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)} "
                        f"(or {SHAPES!r}, see make_shapes_dataset)")
    # the bounds of the config settings the sizes stand for (engine.config: data.size,
    # data.points_per_edge, data.n_points, data.seed)
    size = _check_int("size", size, 1, 100_000 if source == "cube" else 2**31 - 1)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    n_features = _check_int(
        "features", n_features, 0, MAX_FEATURES if source == "random" else 1
    )
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if compress and layout != "npz":
        raise UserError("compress: only the npz layout can be compressed")
    out = os.fspath(out)

    gen = _GENERATORS[source](size, n_features, seed)
    n_steps = 2 * gen.n
    needed = None if compress else n_steps * (_STEP_BYTES + 4 * n_features) + (1 << 20)
    _check_output(out, layout, needed)

    meta = {
        "generator": "engine.data.make_dataset",
        "engine_version": __version__,
        "source": source,
        "size": size,
        "params": gen.params,
        "n_features": n_features,
        "seed": seed,
        "episodes": "one training and one evaluation episode of the source's points",
    }
    members = _members(gen, meta)
    logger.info(
        "writing %s: %s, %d steps, %d features (%s%s)",
        out, source, n_steps, n_features, layout, ", compressed" if compress else "",
    )

    def check(tmp: str) -> None:
        read_dataset(tmp)  # every rule of the format, streaming: never a bad file

    try:
        if layout == "npz":
            atomic_write(out, lambda f: _write_npz(f, members, compress), check)
        else:
            atomic_write_dir(out, lambda d: _write_folder(d, members), check,
                             replaceable=check_dataset_folder)
    except OSError as exc:
        raise UserError(f"{out}: cannot write dataset ({exc})") from exc
    made = MadeDataset(
        path=out,
        source=source,
        size=size,
        layout=layout,
        compressed=compress,
        n_steps=n_steps,
        n_episodes=2,
        n_objects=1,
        n_features=n_features,
        nbytes=_size_on_disk(out),
        seconds=time.perf_counter() - t0,
    )
    logger.info("wrote %s: %d bytes in %.2f s", out, made.nbytes, made.seconds)
    return made


# --------------------------------------------------------------------------- shapes

def _shapes_settings() -> dict:
    """The settings of ``data.source: shapes`` (their defaults and ranges are ours)."""
    from engine.config import SOURCES as CONFIG_SOURCES

    return CONFIG_SOURCES["shapes"]


def _mesh_stems(folder: str) -> list[str]:
    """Object names (file stems) of the mesh files ``load_mesh_folder`` reads in ``folder``."""
    from engine.data.shapes import MESH_EXTENSIONS

    return sorted(os.path.splitext(e.name)[0] for e in os.scandir(folder)
                  if e.is_file() and os.path.splitext(e.name)[1].lower() in MESH_EXTENSIONS)


def make_shapes_dataset(
    out: str | os.PathLike,
    *,
    objects: list[str] | tuple[str, ...] | None = None,
    mesh_dir: str | os.PathLike | None = None,
    n_points: int = 20000,
    train_steps: int = 400,
    eval_rotations: int = 10,
    eval_steps: int = 100,
    noise: bool = False,
    hue: bool = False,
    seed: int = 0,
    layout: str = "npz",
    compress: bool = False,
    patches: int = 1,
    variants: int = 0,
    patch_spacing: float | None = None,
) -> MadeDataset:
    """Write the simulated evidence dataset of ``data.source: shapes`` as a dataset.

    The arrays are those ``engine.data.episodes.build_dataset`` gives a config with
    ``data.source: shapes`` and the same settings (it is called here), so a config with
    ``data.source: dataset`` on the file replays exactly what the ``shapes`` config
    simulates. Defaults are the config's.

    Parameters
    ----------
    out : str or os.PathLike
        File (``npz``) or folder (``npy-dir``); its parent must exist; replaced if it exists.
    objects : list of built-in names (``engine.data.shapes.BUILTIN_SHAPES``), or None
        None: all ten built-ins, or none when ``mesh_dir`` is given (as ``data.objects``).
    mesh_dir : folder of mesh files (obj, ply, stl, glb, gltf, off), or None
        Each file is one more object, named by its file stem (after the built-ins).
    n_points : int >= 100
        Surface samples per object.
    train_steps : int >= 1
        Steps of each of the 14 training episodes per object.
    eval_rotations : int >= 0
        Evaluation episodes per object (random rotations).
    eval_steps : int >= 1
        Steps of each evaluation episode.
    noise : bool
        tbp.monty's sensor noise on the evaluation steps (``engine.data.sensor.Noise``).
    hue : bool
        A ``hue`` feature column, a distinct colour per object.
    seed : int >= 0
        Seeds surface sampling, walks, rotations and noise.
    layout : {"npz", "npy-dir"}
    compress : bool
        Deflate the npz members (smaller; cannot be memory-mapped).
    patches : int >= 1
        Sensor patches per step (a config's ``evidence.n_modules``); more than one writes a
        ``monty-episodes/2`` file.
    variants : int >= 0
        Perturbed variants of the built-ins after the objects (``data.variants``).
    patch_spacing : float or None
        Distance between neighbouring patches (``data.patch_spacing``; None: its default).

    Returns
    -------
    MadeDataset (``size`` is ``n_points``).

    Raises
    ------
    UserError
        A setting out of range, an unknown object, a missing or empty mesh folder, an
        unreadable mesh file (named), a mesh named like a chosen built-in, no objects at
        all, an output that cannot be written. Nothing is written then.
    """
    from engine.data.episodes import build_dataset

    t0 = time.perf_counter()
    settings = _shapes_settings()
    if objects is not None:
        if isinstance(objects, str) or not isinstance(objects, (list, tuple)):
            raise UserError(f"objects: expected a list of names, got {objects!r}")
        objects = settings["objects"].check(list(objects), "objects")
    values = {"n_points": n_points, "train_steps": train_steps, "eval_rotations": eval_rotations,
              "eval_steps": eval_steps, "noise": noise, "hue": hue, "seed": seed}
    params = {key: settings[key].check(value, key) for key, value in values.items()}
    if isinstance(patches, bool) or not isinstance(patches, int) or not 1 <= patches <= 16:
        raise UserError(f"patches: expected an integer from 1 to 16, got {patches!r}")
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if compress and layout != "npz":
        raise UserError("compress: only the npz layout can be compressed")
    if mesh_dir is not None:
        mesh_dir = os.path.abspath(os.fspath(mesh_dir))
        if not os.path.isdir(mesh_dir):
            raise UserError(f"mesh_dir: folder not found: {mesh_dir}")
        stems = _mesh_stems(mesh_dir)
        clash = sorted(set(stems) & set(objects or ()))
        if clash:
            raise UserError(f"mesh_dir: mesh {clash[0]!r} in {mesh_dir} has the name of a built-in object in "
                            "objects; rename the file or leave the object out")
    elif objects is not None and not objects:
        raise UserError("objects: no objects to simulate (name built-in objects, or give a mesh folder)")
    out = os.fspath(out)
    _check_output(out, layout, None)

    spacing = settings["patch_spacing"].default if patch_spacing is None else \
        settings["patch_spacing"].check(patch_spacing, "patch_spacing")
    params = {"objects": objects, "mesh_dir": mesh_dir, **params, "patch_spacing": spacing,
              "variants": settings["variants"].check(variants, "variants")}
    cfg = _ShapesConfig(params, patches)
    ds = build_dataset(cfg)  # the data.source: shapes simulation itself
    meta = dict(ds.meta)
    meta.update({
        "written_by": "engine.data.make_dataset",
        "engine_version": __version__,
        "source": SHAPES,
        "objects": [str(n) for n in ds.object_names],
        "params": {k: v for k, v in params.items()},
        "n_points": params["n_points"],
    })
    ds = dataclasses.replace(ds, meta=meta)
    logger.info("writing %s: shapes, %d objects, %d steps (%s%s)", out, ds.n_objects, ds.n_steps, layout,
                ", compressed" if compress else "")
    try:
        write_dataset(out, ds, compress=compress, layout=layout)
    except OSError as exc:
        raise UserError(f"{out}: cannot write dataset ({exc})") from exc
    n_train = int(np.count_nonzero(ds.episode_split == TRAIN))
    made = MadeDataset(
        path=out,
        source=SHAPES,
        size=params["n_points"],
        layout=layout,
        compressed=compress,
        n_steps=ds.n_steps,
        n_episodes=ds.n_episodes,
        n_objects=ds.n_objects,
        n_features=ds.n_features,
        nbytes=_size_on_disk(out),
        seconds=time.perf_counter() - t0,
        n_train_episodes=n_train,
        n_eval_episodes=ds.n_episodes - n_train,
    )
    logger.info("wrote %s: %d bytes in %.2f s", out, made.nbytes, made.seconds)
    return made


class _ShapesConfig:
    """What ``engine.data.episodes.build_dataset`` reads of a config."""

    source_file = "make-dataset"

    def __init__(self, params: dict, patches: int = 1):
        self.data = argparse.Namespace(source=SHAPES, params=params)
        self.evidence = argparse.Namespace(n_modules=patches)  # one patch per learning module


# --------------------------------------------------------------------------- CLI

# Options of the shapes source only, with the argparse dest of each.
_SHAPES_FLAGS = {"--objects": "objects", "--mesh-dir": "mesh_dir", "--n-points": "n_points",
                 "--train-steps": "train_steps", "--eval-rotations": "eval_rotations",
                 "--eval-steps": "eval_steps", "--noise": "noise", "--hue": "hue", "--patches": "patches"}
# Options of the chunked synthetic sources only.
_SYNTHETIC_FLAGS = {"--size": "size", "--features": "features"}


def add_cli(subparsers: Any, parents: tuple | list = ()) -> argparse.ArgumentParser:
    """Add the ``make-dataset`` subcommand to ``subparsers`` (of ``engine.cli``);
    dispatch it to :func:`run_from_args`."""
    p = subparsers.add_parser(
        "make-dataset",
        parents=list(parents),
        help="write a synthetic source, or the simulated shapes, as a monty-episodes/1 dataset",
        description="Write a synthetic source's observations (one training and one "
        "evaluation episode, chunked, any size) or the simulated evidence dataset of "
        "data.source: shapes (--source shapes) as a monty-episodes/1 dataset that "
        "data.source: dataset replays; uncompressed files are memory-mapped when read.",
    )
    p.add_argument("--source", required=True, choices=(*SOURCES, SHAPES),
                   help="synthetic source, or shapes: the evidence model's simulated objects")
    p.add_argument("--size", type=int, metavar="N",
                   help="required for seed_spiral, cube, sphere, random (not shapes): seed_spiral: "
                        "steps per episode; cube: points per edge; sphere, random: points per episode")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output file (npz) or folder (npy-dir); replaced if it exists")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed (random and shapes; default 0)")
    p.add_argument("--features", type=int, metavar="F",
                   help="feature columns: 0 or 1 (seed_spiral, cube, sphere), "
                        f"0..{MAX_FEATURES} (random); default 1; not for shapes (see --hue)")
    p.add_argument("--layout", choices=LAYOUTS, default="npz",
                   help="npz: one archive (default); npy-dir: a folder of KEY.npy files")
    p.add_argument("--compress", action="store_true",
                   help="deflate the npz members (smaller, but cannot be memory-mapped)")
    g = p.add_argument_group("shapes source (data.source: shapes settings; defaults as there)")
    g.add_argument("--objects", metavar="NAME,NAME,...",
                   help="built-in objects, comma-separated (default: all ten, or none with --mesh-dir; "
                        "'' for none)")
    g.add_argument("--mesh-dir", metavar="DIR",
                   help="folder of mesh files (obj, ply, stl, glb, gltf, off): one object each, named by "
                        "its file stem")
    g.add_argument("--n-points", type=int, metavar="N", help="surface samples per object (default 20000)")
    g.add_argument("--train-steps", type=int, metavar="N",
                   help="steps of each of the 14 training episodes per object (default 400)")
    g.add_argument("--eval-rotations", type=int, metavar="N",
                   help="evaluation episodes per object, random rotations (default 10)")
    g.add_argument("--eval-steps", type=int, metavar="N", help="steps of each evaluation episode (default 100)")
    g.add_argument("--noise", action="store_true", default=None,
                   help="tbp.monty's sensor noise on the evaluation steps")
    g.add_argument("--hue", action="store_true", default=None,
                   help="a hue feature column (a distinct colour per object)")
    g.add_argument("--patches", type=int, metavar="S",
                   help="sensor patches per step, one per learning module (default 1; more: monty-episodes/2)")
    return p


def _given(args: argparse.Namespace, flags: dict) -> list[str]:
    return [flag for flag, dest in flags.items() if getattr(args, dest, None) is not None]


def _report(made: MadeDataset) -> str:
    kind = "npz, compressed" if made.compressed else made.layout
    objects = f"{made.n_objects} object(s), " if made.source == SHAPES else ""
    return (f"wrote {made.path} ({kind}): {made.source}, {made.n_steps} steps in "
            f"{made.n_episodes} episodes ({made.n_train_episodes} training, {made.n_eval_episodes} "
            f"evaluation), {objects}{made.n_features} feature(s), {made.nbytes / 1e6:.1f} MB in "
            f"{made.seconds:.2f} s")


def run_from_args(args: argparse.Namespace) -> str:
    """Run ``make-dataset`` from parsed CLI arguments; returns the one-line report the CLI prints.

    Bad input (including an option that does not apply to the source) raises :class:`UserError`.
    """
    if args.source == SHAPES:
        wrong = _given(args, _SYNTHETIC_FLAGS)
        if wrong:
            raise UserError(f"{wrong[0]}: does not apply to --source shapes (its options: "
                            f"{', '.join(_SHAPES_FLAGS)}, --seed)")
        objects = None
        if args.objects is not None:
            objects = [n.strip() for n in args.objects.split(",") if n.strip()]
        defaults = {k: s.default for k, s in _shapes_settings().items()}
        kwargs = {k: (defaults[k] if getattr(args, k) is None else getattr(args, k))
                  for k in ("n_points", "train_steps", "eval_rotations", "eval_steps", "noise", "hue")}
        try:
            made = make_shapes_dataset(args.out, objects=objects, mesh_dir=args.mesh_dir, seed=args.seed,
                                       layout=args.layout, compress=args.compress,
                                       patches=1 if args.patches is None else args.patches, **kwargs)
        except UserError as exc:
            raise UserError(_flag_names(str(exc))) from None
        return _report(made)
    wrong = _given(args, _SHAPES_FLAGS)
    if wrong:
        raise UserError(f"{wrong[0]}: applies to --source shapes only, not {args.source}")
    if args.size is None:
        raise UserError(f"--size: required for --source {args.source}")
    made = make_dataset(
        args.source,
        args.size,
        args.out,
        seed=args.seed,
        n_features=1 if args.features is None else args.features,
        layout=args.layout,
        compress=args.compress,
    )
    return _report(made)


def _flag_names(message: str) -> str:
    """A make_shapes_dataset message with its parameter name spelled as the CLI flag."""
    for flag, dest in {**_SHAPES_FLAGS, "--seed": "seed"}.items():
        if message.startswith(dest + ":"):
            return flag + message[len(dest):]
    return message
