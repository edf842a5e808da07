"""Recorded-episode datasets, format ``monty-episodes/1``: in-memory form, writer, reader
and validator.

The format is specified in docs/dataset-format.md (in the shared docs): one ``.npz``
archive (``numpy.savez`` layout, no pickled data) holding step arrays (``location``,
``pose_vectors``, ``pose_defined``, ``curvature``, ``features``), episode arrays
(``episode_offsets``, ``episode_object``, ``episode_rotation``, ``episode_split``), names
(``feature_names``, ``object_names``), the ``format`` tag and an optional JSON ``meta``.

Shapes use four sizes: ``T`` steps, ``E`` episodes, ``O`` objects, ``F`` feature columns.

Public API
----------
- :class:`EpisodeDataset`: the arrays of one file (structure of arrays, exactly the
  on-disk dtypes, so they can be handed to compiled kernels without a copy).
- :func:`validate_dataset`: every rule of the format; raises :class:`DatasetError`.
- :func:`write_dataset` / :func:`read_dataset`: atomic write, validated read.
- :func:`points_dataset`: build a dataset from per-object point sets (for generators).

Every problem with a file or a dataset is a :class:`DatasetError` whose message names the
file and the key, says what was wrong and what is allowed; the CLI prints it and exits 2,
so the message has to stand on its own. Nothing from numpy or zipfile escapes the reader.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UserError
from .rotations import quat_to_matrix

__all__ = [
    "EVAL",
    "FORMAT",
    "TRAIN",
    "DatasetError",
    "EpisodeDataset",
    "points_dataset",
    "read_dataset",
    "validate_dataset",
    "write_dataset",
]

logger = logging.getLogger(__name__)

#: The value of the ``format`` key of every file this module writes and reads.
FORMAT = "monty-episodes/1"

#: ``episode_split`` values.
TRAIN = 0
EVAL = 1

#: Tolerance of the pose-vector checks (row norms, dot products, determinant), per spec.
POSE_TOLERANCE = 1e-3
#: Tolerance of the unit-quaternion check, per spec.
QUATERNION_TOLERANCE = 1e-3
#: Largest allowed ``abs(location)``: squared distances of larger values overflow float32
#: (max ~3.4e38) inside the kernels.
MAX_ABS_LOCATION = 1e18
#: ``pose_defined = abs(k1 - k2) >= this`` (1/m) in :func:`points_dataset`, as tbp.monty's
#: sensor module decides it.
POSE_DEFINED_MIN_CURVATURE_DIFFERENCE = 10.0

# Steps checked per chunk by the pose check: big enough that the Python loop over chunks
# costs little (610 iterations for 10M steps), small enough that the float32 temporaries
# of a chunk stay in cache instead of allocating arrays of size T (measured: 2^14 steps
# ~0.2 s for 10M steps, 2^18 ~0.35 s).
_CHUNK = 1 << 14

# The required array keys in spec order: (key, dtype, shape). dtype "str" means any
# little-endian numpy unicode dtype ("<U<n>"); the other dtypes are exact, little-endian.
# A shape entry is an int or a size symbol (T, F, E, O); "E+1" means E + 1 entries. The
# value of each symbol is the one most arrays agree on (see _bind_sizes).
_ARRAY_KEYS: tuple[tuple[str, str, tuple], ...] = (
    ("location", "<f4", ("T", 3)),
    ("pose_vectors", "<f4", ("T", 3, 3)),
    ("pose_defined", "|b1", ("T",)),
    ("curvature", "<f4", ("T", 2)),
    ("features", "<f4", ("T", "F")),
    ("feature_names", "str", ("F",)),
    ("episode_offsets", "<i8", ("E+1",)),
    ("episode_object", "<i4", ("E",)),
    ("episode_rotation", "<f4", ("E", 4)),
    ("episode_split", "|i1", ("E",)),
    ("object_names", "str", ("O",)),
)
_ARRAY_FIELDS = tuple(key for key, _, _ in _ARRAY_KEYS)
_FLOAT_FIELDS = tuple(key for key, dt, _ in _ARRAY_KEYS if dt == "<f4")
# Every key the reader loads; anything else in a file is ignored (but checked for pickles).
_KNOWN_KEYS = ("format", *_ARRAY_FIELDS, "meta")

_NPY_MAGIC = b"\x93NUMPY"


class DatasetError(UserError, ValueError):
    """A dataset file or in-memory dataset breaks the ``monty-episodes/1`` format.

    The message names the file (or ``<memory>``) and the key, what was wrong and what is
    allowed, e.g. ``data/x.npz: key 'location': expected float32 array of shape (T, 3),
    got float64 (1000, 3)``. It is meant to be shown to the user as is.
    """


@dataclass(frozen=True, eq=False)
class EpisodeDataset:
    """The arrays of one ``monty-episodes/1`` dataset (see docs/dataset-format.md).

    Sizes: ``T`` steps, ``E`` episodes, ``O`` objects, ``F`` feature columns. Float arrays
    are little-endian float32 and every array is C-contiguous, so each can be passed to a
    kernel as is. Construction does not validate: call :func:`validate_dataset` (the
    reader and the writer always do).

    Attributes
    ----------
    location : float32 (T, 3)
        Sensed surface point, world frame, metres.
    pose_vectors : float32 (T, 3, 3)
        Rows: unit outward normal, first and second principal curvature directions;
        orthonormal and right-handed (row2 = row0 x row1); world frame.
    pose_defined : bool (T,)
        False where the principal directions are meaningless (flat or spherical patch).
    curvature : float32 (T, 2)
        Signed principal curvatures ``k1, k2`` (1/m), ``abs(k1) >= abs(k2)``, convex < 0.
    features : float32 (T, F)
        Other per-step features (``F`` may be 0), e.g. hue in [0, 1).
    feature_names : str (F,)
        Names of the ``features`` columns.
    episode_offsets : int64 (E + 1,)
        Episode ``e`` is steps ``[episode_offsets[e], episode_offsets[e + 1])``.
    episode_object : int32 (E,)
        Index into ``object_names`` of the object of episode ``e``.
    episode_rotation : float32 (E, 4)
        Unit quaternion ``(w, x, y, z)``: the object's world rotation in episode ``e``.
    episode_split : int8 (E,)
        ``TRAIN`` (0) or ``EVAL`` (1).
    object_names : str (O,)
        Object names.
    meta : dict
        Free-form JSON object (generator, parameters, ...); stored as a JSON string, so
        what reads back is what JSON round-trips (tuples come back as lists).

    Notes
    -----
    ``==`` compares every array (dtype, shape and values) and ``meta``; the class is not
    hashable (its arrays are mutable).
    """

    location: np.ndarray
    pose_vectors: np.ndarray
    pose_defined: np.ndarray
    curvature: np.ndarray
    features: np.ndarray
    feature_names: np.ndarray
    episode_offsets: np.ndarray
    episode_object: np.ndarray
    episode_rotation: np.ndarray
    episode_split: np.ndarray
    object_names: np.ndarray
    meta: dict = field(default_factory=dict)

    # eq=False above because the generated __eq__ would compare arrays with ``==`` and
    # fail on their ambiguous truth value; this one compares them properly.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpisodeDataset):
            return NotImplemented
        for key in _ARRAY_FIELDS:
            a, b = getattr(self, key), getattr(other, key)
            if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
                return False
            # String widths (<U5 vs <U7) may differ for equal names; other dtypes must match.
            same_dtype = a.dtype == b.dtype or (a.dtype.kind == b.dtype.kind == "U")
            if not same_dtype or a.shape != b.shape or not np.array_equal(a, b):
                return False
        return self.meta == other.meta

    __hash__ = None  # type: ignore[assignment]

    @property
    def n_steps(self) -> int:
        """``T``, the number of steps (rows of ``location``)."""
        return int(self.location.shape[0])

    @property
    def n_episodes(self) -> int:
        """``E``, the number of episodes (``len(episode_offsets) - 1``)."""
        return int(self.episode_offsets.shape[0]) - 1

    @property
    def n_features(self) -> int:
        """``F``, the number of feature columns."""
        return int(self.features.shape[1])

    @property
    def n_objects(self) -> int:
        """``O``, the number of objects."""
        return int(self.object_names.shape[0])

    def episode_indices(self, split: int) -> np.ndarray:
        """Episode numbers of one split, in file order.

        Parameters
        ----------
        split : int
            ``TRAIN`` (0) or ``EVAL`` (1).

        Returns
        -------
        numpy.ndarray, int64, shape (n,)
            The ``e`` with ``episode_split[e] == split``, ascending.
        """
        if split not in (TRAIN, EVAL):
            raise ValueError(f"split must be {TRAIN} (train) or {EVAL} (eval), got {split!r}")
        return np.flatnonzero(self.episode_split == split).astype(np.int64)

    def episode_bounds(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """Step ranges of the episodes of one split, in file order.

        Parameters
        ----------
        split : int
            ``TRAIN`` (0) or ``EVAL`` (1).

        Returns
        -------
        starts, stops : numpy.ndarray, int64, shape (n,) each
            Episode ``episode_indices(split)[i]`` is steps ``[starts[i], stops[i])``.
        """
        idx = self.episode_indices(split)
        offsets = np.asarray(self.episode_offsets, dtype=np.int64)
        return offsets[idx], offsets[idx + 1]


# --------------------------------------------------------------------------- validation


def _is_little_endian(dtype: np.dtype) -> bool:
    order = dtype.byteorder
    return order in ("<", "|") or (order == "=" and sys.byteorder == "little")


def _describe(value: Any) -> str:
    """What a value is, for messages: 'float64 (1000, 3)', 'big-endian float32 (5,)'."""
    if not isinstance(value, np.ndarray):
        return f"{type(value).__name__} (not a numpy array)"
    dt = value.dtype
    if dt.kind == "U":
        name = "str"
    elif dt.kind == "S":
        name = "bytes"
    elif dt.kind == "O":
        name = "object"
    else:
        name = dt.name
    if dt.kind != "O" and not _is_little_endian(dt):
        name = "big-endian " + name
    return f"{name} {value.shape}"


def _expected_dtype_name(dtype: str) -> str:
    return "str" if dtype == "str" else np.dtype(dtype).name


def _shape_text(spec: tuple) -> str:
    parts = [str(s).replace("+", " + ") for s in spec]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _split_symbol(want: str) -> tuple[str, int]:
    """'E+1' -> ('E', 1); 'T' -> ('T', 0)."""
    symbol, _, plus = want.partition("+")
    return symbol, int(plus) if plus else 0


def _bind_sizes(ds: EpisodeDataset) -> dict[str, tuple[int, str]]:
    """The sizes T, F, E, O: for each, the value most arrays with the right number of
    dimensions agree on (ties: the first key in spec order), with the first key giving it.

    Taking the majority, rather than the first array, puts the blame for a length mismatch
    on the odd array out: an ``episode_object`` one entry short is reported as wrong, not
    ``episode_offsets`` and every other episode array.

    Returns ``{symbol: (size, key)}``; a symbol no array can give is left out.
    """
    votes: dict[str, dict[int, list[str]]] = {}
    for key, _, spec in _ARRAY_KEYS:
        value = getattr(ds, key)
        if not isinstance(value, np.ndarray) or value.ndim != len(spec):
            continue
        for want, got in zip(spec, value.shape):
            if isinstance(want, str):
                symbol, offset = _split_symbol(want)
                if got - offset >= 0:
                    votes.setdefault(symbol, {}).setdefault(got - offset, []).append(key)
    dims = {}
    for symbol, by_size in votes.items():
        # max() returns the first of equal counts, and dicts keep first-seen order: a tie
        # goes to the size of the earliest key.
        size, keys = max(by_size.items(), key=lambda item: len(item[1]))
        dims[symbol] = (size, keys[0])
    return dims


def _check_array(
    src: str, key: str, value: Any, dtype: str, spec: tuple, dims: dict[str, tuple[int, str]]
) -> None:
    """Check one array's type, dtype, byte order, layout and shape.

    ``dims`` maps a size symbol to ``(value, key it comes from)`` (see _bind_sizes).
    """
    expected = f"{_expected_dtype_name(dtype)} array of shape {_shape_text(spec)}"
    prefix = f"{src}: key '{key}'"
    if not isinstance(value, np.ndarray):
        raise DatasetError(f"{prefix}: expected {expected}, got {_describe(value)}")
    dt = value.dtype
    if dtype == "str":
        dtype_ok = dt.kind == "U" and _is_little_endian(dt)
    else:
        dtype_ok = dt == np.dtype(dtype)
    if not dtype_ok:
        if dt.kind == "O":
            raise DatasetError(
                f"{prefix}: expected {expected}, got an object array (pickled Python "
                "objects are not allowed)"
            )
        # Say "little-endian" only when the byte order is the problem, to keep it short.
        endian = "" if _is_little_endian(dt) else "little-endian "
        raise DatasetError(f"{prefix}: expected {endian}{expected}, got {_describe(value)}")
    if value.ndim != len(spec):
        raise DatasetError(f"{prefix}: expected {expected}, got {_describe(value)}")
    for axis, (want, got) in enumerate(zip(spec, value.shape)):
        if isinstance(want, int):
            if got != want:
                raise DatasetError(f"{prefix}: expected {expected}, got {_describe(value)}")
            continue
        symbol, offset = _split_symbol(want)
        if symbol not in dims:  # only an empty episode_offsets gets here
            raise DatasetError(f"{prefix}: expected {expected}, got {_describe(value)}")
        size, origin = dims[symbol]
        if got - offset != size:
            where = "" if origin == key else f" with {symbol} = {size} (from '{origin}')"
            raise DatasetError(
                f"{prefix}: expected {expected}{where}, got {_describe(value)}"
            )
    if not value.flags.c_contiguous:
        # Kernels take the arrays as they are; a strided or Fortran-order array would need
        # a copy, which the format rules out (it must be possible to memory-map a file).
        raise DatasetError(
            f"{prefix}: array is not C-contiguous (Fortran-order or a strided view); "
            "allowed: C-contiguous arrays only (use numpy.ascontiguousarray)"
        )


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _values(row: np.ndarray) -> str:
    """A short row of numbers for messages: '(1, -5)'."""
    return "(" + ", ".join(f"{float(v):.6g}" for v in row) + ")"


def _check_finite(src: str, key: str, a: np.ndarray) -> None:
    """No NaN or infinity in ``a``; names the first offending row."""
    if a.size == 0:
        return
    # min/max propagate NaN and expose +-inf: two reductions, no temporary of a's size.
    if np.isfinite(a.min()) and np.isfinite(a.max()):
        return
    rows = a.reshape(a.shape[0], -1)
    bad_rows = ~np.isfinite(rows).all(axis=1)
    i = _first(bad_rows)
    what = "NaN" if np.isnan(rows[i]).any() else "infinity"
    raise DatasetError(
        f"{src}: key '{key}': {key}[{i}] contains {what} (NaN or infinity in "
        f"{int(bad_rows.sum())} of {rows.shape[0]} rows); allowed: finite values only"
    )


def _pose_residuals(p: np.ndarray) -> tuple[np.ndarray, ...]:
    """Orthonormality residuals of pose matrices ``p`` (n, 3, 3) float32, rows as vectors.

    Returns seven float32 (n,) arrays: the three row norms, the dot products of rows
    (0, 1), (0, 2), (1, 2), and the determinant. Float32 is accurate to ~1e-7 here, far
    below the 1e-3 tolerance.
    """
    # One transposed copy makes each of the nine components a contiguous (n,) row, which
    # the elementwise ops below vectorise far better than stride-9 views (~1.5x faster).
    a0, a1, a2, b0, b1, b2, c0, c1, c2 = np.ascontiguousarray(p.reshape(-1, 9).T)
    n0 = np.sqrt(a0 * a0 + a1 * a1 + a2 * a2)
    n1 = np.sqrt(b0 * b0 + b1 * b1 + b2 * b2)
    n2 = np.sqrt(c0 * c0 + c1 * c1 + c2 * c2)
    d01 = a0 * b0 + a1 * b1 + a2 * b2
    d02 = a0 * c0 + a1 * c1 + a2 * c2
    d12 = b0 * c0 + b1 * c1 + b2 * c2
    det = a0 * (b1 * c2 - b2 * c1) + a1 * (b2 * c0 - b0 * c2) + a2 * (b0 * c1 - b1 * c0)
    return n0, n1, n2, d01, d02, d12, det


def _pose_failures(pose: np.ndarray) -> list[np.ndarray]:
    """Seven (n,) bool arrays for pose matrices ``pose`` (n, 3, 3) float32, True where a
    residual of :func:`_pose_residuals` is out of tolerance, in the order row norms 0-2,
    dot products (0, 1), (0, 2), (1, 2), determinant.

    The chunked check and the error message both use this, so they can never disagree on
    a borderline value.
    """
    tol = np.float32(POSE_TOLERANCE)
    one = np.float32(1.0)
    n0, n1, n2, d01, d02, d12, det = _pose_residuals(pose)
    return [
        np.abs(n0 - one) > tol,
        np.abs(n1 - one) > tol,
        np.abs(n2 - one) > tol,
        np.abs(d01) > tol,
        np.abs(d02) > tol,
        np.abs(d12) > tol,
        np.abs(det - one) > tol,
    ]


def _check_pose_vectors(src: str, pose: np.ndarray) -> None:
    """Each ``pose[t]`` orthonormal and right-handed within ``POSE_TOLERANCE``."""
    for start in range(0, pose.shape[0], _CHUNK):
        failures = _pose_failures(pose[start : start + _CHUNK])
        bad = failures[0]
        for more in failures[1:]:
            bad |= more
        if bad.any():
            t = start + _first(bad)
            raise DatasetError(f"{src}: key 'pose_vectors': {_pose_problem(pose, t)}")


def _pose_problem(pose: np.ndarray, t: int) -> str:
    """Why ``pose[t]`` fails: the first failed test of :func:`_pose_failures`."""
    step = pose[t : t + 1]
    residuals = [float(r[0]) for r in _pose_residuals(step)]
    failed = [bool(f[0]) for f in _pose_failures(step)]
    allowed = (
        f"allowed: rows of unit length, pairwise orthogonal, determinant +1 "
        f"(row2 = row0 x row1), each within {POSE_TOLERANCE:g}"
    )
    for row in range(3):
        if failed[row]:
            return (
                f"pose_vectors[{t}] is not orthonormal (row {row} norm "
                f"{residuals[row]:.4g}); {allowed}"
            )
    for i, (r, s) in enumerate(((0, 1), (0, 2), (1, 2)), start=3):
        if failed[i]:
            return (
                f"pose_vectors[{t}] is not orthonormal (rows {r} and {s} have dot product "
                f"{residuals[i]:.4g}); {allowed}"
            )
    det = residuals[6]
    if det < 0.0:
        return (
            f"pose_vectors[{t}] is left-handed (determinant {det:.4g}; row2 must equal "
            f"row0 x row1); {allowed}"
        )
    return f"pose_vectors[{t}] has determinant {det:.4g}; {allowed}"


def _check_values(src: str, ds: EpisodeDataset, n_steps: int, n_objects: int) -> None:
    """Value rules, after every dtype and shape is known to be right."""
    for key in _FLOAT_FIELDS:
        _check_finite(src, key, getattr(ds, key))

    loc = ds.location
    if loc.size and max(-float(loc.min()), float(loc.max())) > MAX_ABS_LOCATION:
        i = _first((np.abs(loc) > MAX_ABS_LOCATION).any(axis=1))
        raise DatasetError(
            f"{src}: key 'location': location[{i}] = {_values(loc[i])} is too large; "
            f"allowed: abs(value) <= {MAX_ABS_LOCATION:g} (squared distances must fit float32)"
        )

    _check_pose_vectors(src, ds.pose_vectors)

    curv = ds.curvature
    bad = np.abs(curv[:, 0]) < np.abs(curv[:, 1])
    if bad.any():
        i = _first(bad)
        raise DatasetError(
            f"{src}: key 'curvature': curvature[{i}] = {_values(curv[i])} has abs(k1) < "
            "abs(k2); allowed: abs(k1) >= abs(k2) (k1 is the principal curvature of "
            "larger magnitude)"
        )

    q = ds.episode_rotation.astype(np.float64)
    norms = np.sqrt(np.sum(q * q, axis=1))
    bad = np.abs(norms - 1.0) > QUATERNION_TOLERANCE
    if bad.any():
        e = _first(bad)
        raise DatasetError(
            f"{src}: key 'episode_rotation': episode_rotation[{e}] has norm {norms[e]:.6g}; "
            f"allowed: unit quaternions (w, x, y, z), norm within {QUATERNION_TOLERANCE:g} of 1"
        )

    off = ds.episode_offsets
    if off[0] != 0:
        raise DatasetError(
            f"{src}: key 'episode_offsets': episode_offsets[0] = {int(off[0])}; "
            "allowed: offsets start at 0"
        )
    if off[-1] != n_steps:
        raise DatasetError(
            f"{src}: key 'episode_offsets': episode_offsets[-1] = {int(off[-1])}; "
            f"allowed: offsets end at T = {n_steps} (the number of steps)"
        )
    bad = off[1:] < off[:-1]
    if bad.any():
        i = _first(bad) + 1
        raise DatasetError(
            f"{src}: key 'episode_offsets': episode_offsets[{i}] = {int(off[i])} is less "
            f"than episode_offsets[{i - 1}] = {int(off[i - 1])}; allowed: non-decreasing offsets"
        )

    obj = ds.episode_object
    bad = (obj < 0) | (obj >= n_objects)
    if bad.any():
        e = _first(bad)
        raise DatasetError(
            f"{src}: key 'episode_object': episode_object[{e}] = {int(obj[e])} is out of "
            f"range; allowed: 0 <= index < O = {n_objects} (the number of object_names)"
        )

    split = ds.episode_split
    bad = (split != TRAIN) & (split != EVAL)
    if bad.any():
        e = _first(bad)
        raise DatasetError(
            f"{src}: key 'episode_split': episode_split[{e}] = {int(split[e])}; "
            f"allowed: {TRAIN} (train) or {EVAL} (eval)"
        )


def _meta_json(src: str, meta: Any) -> str:
    """``meta`` as a strict JSON object string (no NaN/inf, which other readers reject)."""
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{src}: key 'meta': expected a dict (a JSON object), got {type(meta).__name__}"
        )
    try:
        return json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DatasetError(
            f"{src}: key 'meta': not JSON-serialisable ({exc}); allowed: a dict of str keys "
            "and JSON values (str, int, finite float, bool, None, list, dict)"
        ) from exc


def validate_dataset(ds: EpisodeDataset, source: str = "<memory>") -> None:
    """Check ``ds`` against every rule of the ``monty-episodes/1`` format.

    Rules: every array has its dtype (float arrays little-endian float32), the shape of the
    spec with ``T``, ``E``, ``O``, ``F`` consistent, and is C-contiguous; no NaN or
    infinity in a float array; ``abs(location) <= 1e18``; each ``pose_vectors[t]``
    orthonormal and right-handed within 1e-3; ``abs(k1) >= abs(k2)`` in ``curvature``;
    quaternions unit within 1e-3; offsets start at 0, end at ``T``, non-decreasing; object
    indices in ``[0, O)``; split values 0 or 1; ``meta`` a JSON-serialisable dict.

    Vectorised (per-step checks run over chunks of steps): ~0.35 s for 10M steps.

    Parameters
    ----------
    ds : EpisodeDataset
    source : str
        Where ``ds`` comes from (a file name), used as the start of error messages.

    Raises
    ------
    DatasetError
        At the first broken rule, naming ``source``, the key and, for per-step or
        per-episode problems, the first offending index.
    """
    if not isinstance(ds, EpisodeDataset):
        raise TypeError(f"expected an EpisodeDataset, got {type(ds).__name__}")
    dims = _bind_sizes(ds)
    for key, dtype, spec in _ARRAY_KEYS:
        _check_array(source, key, getattr(ds, key), dtype, spec, dims)
    _check_values(source, ds, n_steps=dims["T"][0], n_objects=dims["O"][0])
    _meta_json(source, ds.meta)


# --------------------------------------------------------------------------- writing


def write_dataset(path: str | os.PathLike, ds: EpisodeDataset, compress: bool = False) -> None:
    """Validate ``ds`` and write it to ``path`` atomically.

    The archive is written to a hidden temporary file in the same folder and moved onto
    ``path`` with ``os.replace``, so readers never see a half-written file and an
    interrupted or failed write leaves ``path`` as it was. The file gets exactly the name
    given (numpy would append ``.npz`` to a bare name; writing through an open file avoids
    that).

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its folder must exist. An existing file is replaced.
    ds : EpisodeDataset
    compress : bool
        ``numpy.savez_compressed`` instead of ``numpy.savez``. Uncompressed files can later
        be memory-mapped; compressed ones are smaller.

    Raises
    ------
    DatasetError
        ``ds`` breaks a rule (nothing is written), or the file cannot be written.
    """
    path = os.fspath(path)
    validate_dataset(ds, source=f"writing {path}")
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT)}
    for key in _ARRAY_FIELDS:
        arrays[key] = getattr(ds, key)
    arrays["meta"] = np.array(_meta_json(f"writing {path}", ds.meta))

    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    save = np.savez_compressed if compress else np.savez
    try:
        # "xb" creates the file (honouring the umask, unlike tempfile.mkstemp's 0600) and
        # never clobbers another writer's temporary file.
        with open(tmp, "xb") as f:
            save(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DatasetError(f"{path}: cannot write dataset ({exc})") from exc
        raise
    logger.debug(
        "wrote %s: %d steps, %d episodes, %d objects, %d features",
        path, ds.n_steps, ds.n_episodes, ds.n_objects, ds.n_features,
    )


# --------------------------------------------------------------------------- reading


def _member_is_object_array(zf: Any, member: str) -> bool:
    """Whether a ``.npy`` member of an open zip holds an object (pickled) array.

    Reads only the member's header, so unknown keys are checked without being loaded.
    Members that are not ``.npy`` data are not arrays and return False.
    """
    with zf.open(member) as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            return False
        f.seek(0)
        version = np.lib.format.read_magic(f)
        # Header versions 2.0 and 3.0 differ only in the text encoding (latin-1 / utf-8)
        # of the header, which does not matter for telling whether the dtype holds objects.
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        _, _, dtype = read_header(f)
    return bool(dtype.hasobject)


def _load_arrays(path: str) -> dict[str, np.ndarray]:
    """Open the ``.npz`` at ``path`` and return its known keys as in-memory arrays.

    The one place that touches the file: a memory-mapping reader replaces this function.
    Unknown keys are not loaded, but every ``.npy`` member's header is read so that a
    file holding pickled data anywhere is rejected.

    Raises
    ------
    DatasetError
        Missing or unreadable file, not a zip/npz, truncated or corrupt archive, pickled
        data.
    """
    try:
        # One open file for the sniffing and for numpy: np.load(path) leaks its own file
        # handle when the zip turns out to be broken (ResourceWarning), a handle we close
        # cannot leak.
        with open(path, "rb") as f:
            _check_leading_bytes(path, f.read(8))
            f.seek(0)
            return _load_npz(path, f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, not a dataset file") from None
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def _check_leading_bytes(path: str, head: bytes) -> None:
    """Reject files that cannot be an npz archive before numpy sees them (numpy would
    take a text file for pickled data)."""
    if not head:
        raise DatasetError(f"{path}: empty file; expected a numpy .npz archive ({FORMAT})")
    if head.startswith(_NPY_MAGIC):
        raise DatasetError(
            f"{path}: a single-array .npy file, not an .npz archive; a {FORMAT} dataset is "
            "a numpy .npz archive (write it with engine.dataset.write_dataset)"
        )
    if not head.startswith(b"PK"):
        raise DatasetError(
            f"{path}: not a zip/npz archive (file starts with {head!r}); a {FORMAT} dataset "
            "is a numpy .npz archive"
        )


def _load_npz(path: str, f: Any) -> dict[str, np.ndarray]:
    """The known keys of the npz archive open as ``f``, loaded into memory."""
    try:
        with np.load(f, allow_pickle=False) as npz:
            for member in npz.zip.namelist():
                if _member_is_object_array(npz.zip, member):
                    key = member[:-4] if member.endswith(".npy") else member
                    raise DatasetError(
                        f"{path}: key '{key}' holds pickled Python objects (an object "
                        "array); the format allows no pickled data anywhere"
                    )
            return {key: npz[key] for key in _KNOWN_KEYS if key in npz.files}
    except DatasetError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - nothing from numpy/zipfile may escape
        # zipfile.BadZipFile (no central directory: truncated), zlib.error / EOFError /
        # CRC errors (corrupt member data), ValueError (bad .npy header), OSError.
        raise DatasetError(
            f"{path}: not a valid npz archive: truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _dataset_from_arrays(arrays: dict[str, np.ndarray], source: str) -> EpisodeDataset:
    """Check ``format`` and ``meta`` and that every required key is present; build the
    dataset (not yet value-validated)."""
    fmt = arrays.get("format")
    if fmt is None:
        raise DatasetError(
            f"{source}: missing required key 'format' (should be the string {FORMAT!r}; "
            "is this a monty-episodes dataset?)"
        )
    if not (isinstance(fmt, np.ndarray) and fmt.dtype.kind == "U" and fmt.shape == ()):
        raise DatasetError(
            f"{source}: key 'format': expected a 0-d str array holding {FORMAT!r}, "
            f"got {_describe(fmt)}"
        )
    if str(fmt) != FORMAT:
        raise DatasetError(
            f"{source}: key 'format': unsupported format {str(fmt)!r}; this reader "
            f"supports {FORMAT!r}"
        )
    for key, dtype, spec in _ARRAY_KEYS:
        if key not in arrays:
            raise DatasetError(
                f"{source}: missing required key '{key}' (a {_expected_dtype_name(dtype)} "
                f"array of shape {_shape_text(spec)})"
            )

    meta: dict = {}
    if "meta" in arrays:
        raw = arrays["meta"]
        if not (isinstance(raw, np.ndarray) and raw.dtype.kind == "U" and raw.shape == ()):
            raise DatasetError(
                f"{source}: key 'meta': expected a 0-d str array holding a JSON object, "
                f"got {_describe(raw)}"
            )
        try:
            meta = json.loads(str(raw))
        except ValueError as exc:
            raise DatasetError(
                f"{source}: key 'meta': not valid JSON ({exc}); allowed: a JSON object string"
            ) from exc
        if not isinstance(meta, dict):
            raise DatasetError(
                f"{source}: key 'meta': JSON {type(meta).__name__} instead of an object; "
                "allowed: a JSON object string"
            )
    return EpisodeDataset(**{key: arrays[key] for key in _ARRAY_FIELDS}, meta=meta)


def read_dataset(path: str | os.PathLike) -> EpisodeDataset:
    """Read and validate a ``monty-episodes/1`` file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    EpisodeDataset
        Arrays in memory, exactly as stored (little-endian, C-contiguous). Unknown keys in
        the file are ignored.

    Raises
    ------
    DatasetError
        Naming the file: missing file, not a zip/npz, truncated, pickled data, a missing
        key, a wrong format string, a wrong dtype or shape, ``meta`` not a JSON object,
        or any value rule of :func:`validate_dataset`.
    """
    path = os.fspath(path)
    ds = _dataset_from_arrays(_load_arrays(path), source=path)
    validate_dataset(ds, source=path)
    logger.debug(
        "read %s: %d steps, %d episodes, %d objects, %d features",
        path, ds.n_steps, ds.n_episodes, ds.n_objects, ds.n_features,
    )
    return ds


# --------------------------------------------------------------------------- building


def _unit_rows(v: np.ndarray, what: str) -> np.ndarray:
    norm = np.sqrt(np.sum(v * v, axis=1, keepdims=True))
    if np.any(~np.isfinite(norm)) or np.any(norm < 1e-9):
        raise ValueError(f"{what}: every vector must be finite and non-zero")
    return v / norm


def _frames(normals: np.ndarray, direction: np.ndarray | None, what: str) -> np.ndarray:
    """Right-handed orthonormal frames (N, 3, 3) float64: rows normal, dir1, normal x dir1.

    ``direction`` (N, 3) or None: the first principal direction, made orthogonal to the
    normal; without it, any unit vector orthogonal to the normal (from the coordinate axis
    least aligned with it, which keeps the construction well conditioned).
    """
    n = _unit_rows(normals, f"{what} normals")
    if direction is None:
        axis = np.eye(3)[np.argmin(np.abs(n), axis=1)]
        d = axis - np.sum(axis * n, axis=1, keepdims=True) * n
    else:
        d = direction - np.sum(direction * n, axis=1, keepdims=True) * n
    d = _unit_rows(d, f"{what} principal directions (orthogonal to the normal)")
    return np.stack([n, d, np.cross(n, d)], axis=1)


def _as_quaternions(rotations: Any, what: str) -> np.ndarray:
    """(K, 4) float32 unit quaternions.

    Quaternions already unit to float32 precision are kept bit for bit (so the caller's
    float32 quaternions are what gets stored); others are normalised in float64.
    """
    q = np.asarray(rotations, dtype=np.float64)
    if q.size == 0:
        q = q.reshape(0, 4)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"{what}: expected quaternions of shape (K, 4), got {q.shape}")
    norm = np.sqrt(np.sum(q * q, axis=1, keepdims=True))
    if np.any(~np.isfinite(norm)) or np.any(norm == 0.0):
        raise ValueError(f"{what}: quaternions must be finite and non-zero")
    q32 = q.astype(np.float32)
    q64 = q32.astype(np.float64)
    unit = np.abs(np.sqrt(np.sum(q64 * q64, axis=1)) - 1.0) <= 1e-6
    return np.where(unit[:, None], q32, (q / norm).astype(np.float32))


def points_dataset(
    objects,
    *,
    train_rotations,
    eval_rotations,
    feature_names=(),
    seed: int | np.random.SeedSequence | None = 0,
    meta: dict | None = None,
) -> EpisodeDataset:
    """Build a dataset from per-object point sets (for synthetic generators).

    Episodes, in file order: for each training rotation, one training episode per object
    (in ``objects`` order); then for each eval rotation, one eval episode per object. So
    with the identity as first training rotation every object is first seen in its
    canonical pose. An episode's steps are all of its object's points rotated by the
    episode's quaternion ``R``: ``location = R p``, each pose-vector row ``v -> R v``;
    curvature and features are rotation invariant and copied.

    Parameters
    ----------
    objects : sequence of tuples
        ``(name, location, normals, curvature, features)`` or, optionally,
        ``(name, location, normals, curvature, features, direction1)``, per object, in
        the object's canonical frame:
        ``location`` (N, 3), ``normals`` (N, 3) outward (normalised here), ``curvature``
        (N, 2) with ``abs(k1) >= abs(k2)`` (1/m, convex negative), ``features`` (N, F)
        (None allowed when F = 0), ``direction1`` (N, 3) the first principal curvature
        direction. Without ``direction1`` row 1 of the pose is any unit vector orthogonal
        to the normal, which is right wherever ``pose_defined`` is False (flat or
        spherical patches) but arbitrary elsewhere. Any float dtype.
    train_rotations, eval_rotations : array_like, shape (K, 4)
        Quaternions ``(w, x, y, z)`` (normalised here; stored as float32).
    feature_names : sequence of str, length F
    seed : int, numpy.random.SeedSequence or None
        Seeds the visiting order (``numpy.random.default_rng(seed)``): every episode
        visits its object's points in an independent random permutation. None keeps the
        given point order.
    meta : dict or None
        Stored as ``meta`` (copied).

    Returns
    -------
    EpisodeDataset
        Validated. ``pose_defined = abs(k1 - k2) >= 10`` (1/m), as tbp.monty decides it.

    Raises
    ------
    ValueError
        Inconsistent input shapes, zero normals or quaternions (``DatasetError``, a
        ``ValueError``, for rule violations such as NaN or unsorted curvatures).
    """
    feature_names = [str(name) for name in feature_names]
    n_features = len(feature_names)
    names: list[str] = []
    per_object = []  # (location (N,3) f64, frames (N,3,3) f64, curvature (N,2) f32, feats)
    for i, obj in enumerate(objects):
        if len(obj) not in (5, 6):
            raise ValueError(
                f"objects[{i}]: expected (name, location, normals, curvature, features"
                f"[, direction1]), got a tuple of length {len(obj)}"
            )
        name, loc, normals, curv, feats = obj[:5]
        what = f"objects[{i}] ({name!r})"
        loc = np.asarray(loc, dtype=np.float64)
        if loc.ndim != 2 or loc.shape[1] != 3:
            raise ValueError(f"{what}: location must have shape (N, 3), got {loc.shape}")
        n = loc.shape[0]
        if feats is None:
            feats = np.zeros((n, 0))
        arrays = {
            "normals": (np.asarray(normals, dtype=np.float64), (n, 3)),
            "curvature": (np.asarray(curv, dtype=np.float32), (n, 2)),
            "features": (np.asarray(feats, dtype=np.float32), (n, n_features)),
        }
        if len(obj) == 6:
            arrays["direction1"] = (np.asarray(obj[5], dtype=np.float64), (n, 3))
        for label, (a, shape) in arrays.items():
            if a.shape != shape:
                raise ValueError(f"{what}: {label} must have shape {shape}, got {a.shape}")
        direction = arrays["direction1"][0] if "direction1" in arrays else None
        frames = _frames(arrays["normals"][0], direction, what)
        names.append(str(name))
        per_object.append((loc, frames, arrays["curvature"][0], arrays["features"][0]))

    rng = None if seed is None else np.random.default_rng(seed)
    episodes = []  # (split, object index, quaternion f32 (4,))
    for split, rotations, what in (
        (TRAIN, train_rotations, "train_rotations"),
        (EVAL, eval_rotations, "eval_rotations"),
    ):
        for q in _as_quaternions(rotations, what):
            episodes.extend((split, o, q) for o in range(len(per_object)))

    loc_parts, pose_parts, curv_parts, feat_parts = [], [], [], []
    lengths = []
    for _, o, q in episodes:
        loc, frames, curv, feats = per_object[o]
        order = np.arange(loc.shape[0]) if rng is None else rng.permutation(loc.shape[0])
        # The matrix of the stored float32 quaternion, in float64: the data then matches
        # R(episode_rotation[e]) as a reader computes it, rounded to float32 only once.
        rot = quat_to_matrix(q, dtype=np.float64)
        loc_parts.append(loc[order] @ rot.T)
        pose_parts.append(frames[order] @ rot.T)  # each row v -> R v
        curv_parts.append(curv[order])
        feat_parts.append(feats[order])
        lengths.append(loc.shape[0])

    def cat(parts: list, shape: tuple) -> np.ndarray:
        if not parts:
            return np.zeros(shape, dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts).astype(np.float32))

    curvature = cat(curv_parts, (0, 2))
    diff = np.abs(curvature[:, 0] - curvature[:, 1])
    ds = EpisodeDataset(
        location=cat(loc_parts, (0, 3)),
        pose_vectors=cat(pose_parts, (0, 3, 3)),
        pose_defined=diff >= np.float32(POSE_DEFINED_MIN_CURVATURE_DIFFERENCE),
        curvature=curvature,
        features=cat(feat_parts, (0, n_features)),
        feature_names=np.array(feature_names, dtype=str).reshape(n_features),
        episode_offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
        episode_object=np.array([o for _, o, _ in episodes], dtype=np.int32),
        episode_rotation=np.array([q for _, _, q in episodes], dtype=np.float32).reshape(-1, 4),
        episode_split=np.array([s for s, _, _ in episodes], dtype=np.int8),
        object_names=np.array(names, dtype=str).reshape(len(names)),
        meta=dict(meta) if meta is not None else {},
    )
    validate_dataset(ds, source="points_dataset")
    return ds
