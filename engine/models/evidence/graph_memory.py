"""Object models of the evidence model: tbp.monty's graph memory (spec §2.2–2.7).

Supervised learning: each training episode shows one known object in a known
world rotation Q. ``GraphMemory.add_episode`` brings the episode's observations
into that object's model frame (x_M = Qᵀ·x, pose rows v_M = Qᵀ·v; the datasets
have no translation) and merges them into the object's model:

* ``kind="graph"`` (``GraphObjectModel``, what the YCB benchmarks use): the old
  nodes are kept verbatim and the new observations appended and thinned
  greedily against every accepted node (``kernels.graph.thin_nodes``). No
  averaging: the first observation at a place wins.
* ``kind="grid"`` (``GridObjectModel``): observations are binned into a voxel
  grid (``max_size`` metres, ``voxels_per_dim`` per axis, placed at the first
  build so that the first observation is at the centre); per voxel a count and
  mean location / features / pose; the ``max_nodes`` fullest voxels are the
  nodes. An update with fewer than 90 % of its observations inside the grid is
  skipped (tbp.monty's ``GridTooSmallError``): a ``GridTooSmallWarning`` is
  issued and ``last_update_skipped`` is True.

Differences from tbp.monty, on purpose:

* Every episode, the first included, is transformed with its known Q, so the
  model frame is the object's canonical frame even when the first episode does
  not show it in the identity pose (tbp.monty stores the first episode as is;
  with an identity first episode, as in the YCB training, both agree).
* An episode with no observations changes nothing (a new object is still
  registered, with 0 nodes); tbp.monty would fail on it.
* Grid: a new voxel whose observations all have all-zero pose rows gets a zero
  pose (tbp.monty would store NaN there and then assert). ``node_pfd`` of a grid
  model is the stored value, which after an update can be 0.5, 0.75, ... (the
  (new + old)/2 of majority votes, as in tbp.monty); the matcher reads it as
  tbp.monty 0.55 does, as a bool (``model.curvature_defined``). A circular column of a re-seen voxel is averaged
  arithmetically with the old value (tbp.monty's literal (new + old)/2), so
  hues either side of 0 average to about 0.5: a tbp.monty quirk kept for
  parity.
* If an object's first grid build fails the 90 % rule, the object is not
  created.

Pose vectors of the grid model follow tbp.monty 0.55's code, not the spec's §2.5
(written from an older tbp.monty): a voxel's mean pose is orthonormalised
(``orthonormal_pose_vectors``), and a re-seen voxel's pose is the count-weighted
rotation mean of the new and the stored pose (``pose_vector_merge``), not their
arithmetic mean. The arithmetic mean left curvature directions of any length, near
zero where two observations with opposite signs met, and such a node cost every
hypothesis matched against it its curvature evidence (found on a thin wrench: a
180-degree flip that tbp.monty did not make).

Layout for the matcher (spec §2.7): ``arrays()`` concatenates all objects in
insertion order with CSR offsets ``obj_start``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from kernels import graph as kg

#: Minimum fraction of an update's observations that must fall inside the grid.
MIN_IN_BOUNDS = 0.9

#: Rotation matrices must be orthonormal to this tolerance (float32 data).
_ROTATION_TOL = 1e-3


class GridTooSmallWarning(UserWarning):
    """A grid-model update was skipped: fewer than 90 % of its observations fit the grid."""


@dataclass
class GraphArrays:
    """All objects' nodes concatenated in insertion order (CSR over objects).

    Object ``o`` owns rows ``obj_start[o]:obj_start[o + 1]``.
    """

    node_pos: np.ndarray    # (N, 3) float32, model frame
    node_pose: np.ndarray   # (N, 9) float32, rows n̂, ĉ1, ĉ2 flattened
    node_pfd: np.ndarray    # (N,) float32, pose_fully_defined (0/1; grid: averaged)
    node_feat: np.ndarray   # (N, F) float32
    obj_start: np.ndarray   # (O + 1,) int64
    object_names: tuple[str, ...]


@dataclass
class _Nodes:
    pos: np.ndarray    # (n, 3) float32
    pose: np.ndarray   # (n, 9) float32
    pfd: np.ndarray    # (n,) float32
    feat: np.ndarray   # (n, F) float32


@dataclass
class _Grid:
    """One object's sparse voxel grid: voxels in increasing linear key order."""

    offset: np.ndarray  # (3,) int64
    keys: np.ndarray    # (K,) int64
    count: np.ndarray   # (K,) int64
    loc: np.ndarray     # (K, 3) float32
    feat: np.ndarray    # (K, F) float32
    pose: np.ndarray    # (K, 9) float32
    pfd: np.ndarray     # (K,) float32


def _empty_nodes(n_features: int) -> _Nodes:
    return _Nodes(np.zeros((0, 3), np.float32), np.zeros((0, 9), np.float32),
                  np.zeros(0, np.float32), np.zeros((0, n_features), np.float32))


def _check_array(name: str, a, dtype, shape) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` and ``shape`` (None = any length), else ValueError."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("L" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(a)


class GraphMemory:
    """Per-object node sets (``kind="graph"`` or ``"grid"``), grown one training episode at a time.

    Parameters
    ----------
    n_features : int
        F, the number of matching-feature columns.
    circular : bool (F,)
        Which columns are circular with range 1 (hue).
    kind : "graph" | "grid"
    distance, normal_angle, feat_thresholds
        Graph thinning thresholds (``kernels.graph.thin_nodes``): metres, radians, and
        float (F,) (default 1.0 for non-circular and 0.1 for circular columns; +inf
        ignores a column). Ignored by the grid model, as in tbp.monty.
    max_size, voxels_per_dim, max_nodes
        Grid model: side of the grid in metres, voxels per axis, most nodes per object.
    """

    def __init__(self, n_features: int, circular: np.ndarray, *, kind: str = "graph",
                 distance=0.01, normal_angle=np.pi / 8, feat_thresholds=None,
                 max_size=0.3, voxels_per_dim=100, max_nodes=2000):
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 0:
            raise ValueError(f"n_features must be a non-negative integer, got {n_features!r}")
        self.n_features = int(n_features)
        circular = np.asarray(circular)
        if circular.dtype != np.bool_ or circular.shape != (self.n_features,):
            raise ValueError(f"circular must be a bool array of shape ({self.n_features},), "
                             f"got {circular.dtype} {circular.shape}")
        self.circular = circular.copy()
        if kind not in ("graph", "grid"):
            raise ValueError(f"kind must be 'graph' or 'grid', got {kind!r}")
        self.kind = kind
        self.distance = self._scalar("distance", distance, min_value=0.0)
        self.normal_angle = self._scalar("normal_angle", normal_angle)
        if feat_thresholds is None:
            feat_thresholds = np.where(self.circular, 0.1, 1.0)
        feat_thresholds = np.asarray(feat_thresholds, dtype=np.float64)
        if feat_thresholds.shape != (self.n_features,):
            raise ValueError(f"feat_thresholds must have shape ({self.n_features},), got {feat_thresholds.shape}")
        if np.isnan(feat_thresholds).any():
            raise ValueError("feat_thresholds contains NaN")
        self.feat_thresholds = feat_thresholds.astype(np.float32)
        self.max_size = self._scalar("max_size", max_size, min_value=0.0, strict=True)
        self.voxels_per_dim = self._integer("voxels_per_dim", voxels_per_dim, 1)
        self.max_nodes = self._integer("max_nodes", max_nodes, 0)
        # The grid index (g·V + g)·V + g must fit int64.
        if self.voxels_per_dim ** 3 >= 2 ** 62:
            raise ValueError(f"voxels_per_dim {self.voxels_per_dim} is too large")
        self._nodes: dict[str, _Nodes] = {}   # insertion order = object order
        self._grids: dict[str, _Grid] = {}
        self._arrays: GraphArrays | None = None
        self.last_update_skipped = False

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _scalar(name, value, min_value=None, strict=False) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if np.isnan(v):
            raise ValueError(f"{name} is NaN")
        if min_value is not None and (v <= min_value if strict else v < min_value):
            raise ValueError(f"{name} must be {'>' if strict else '>='} {min_value}, got {v}")
        return v

    @staticmethod
    def _integer(name, value, min_value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < min_value:
            raise ValueError(f"{name} must be an integer >= {min_value}, got {value!r}")
        return int(value)

    # ------------------------------------------------------------------ public API
    @property
    def labels(self) -> tuple[str, ...]:
        """Object labels in insertion order."""
        return tuple(self._nodes)

    def n_nodes(self, label: str) -> int:
        """Number of nodes of object ``label`` (KeyError if unknown)."""
        if label not in self._nodes:
            raise KeyError(f"unknown object {label!r}")
        return int(self._nodes[label].pos.shape[0])

    def add_episode(self, label: str, location, pose, pose_defined, features, rotation_matrix) -> int:
        """Merge one supervised training episode of object ``label``; returns its node count.

        Parameters
        ----------
        label : str, the object's name
        location : float32 (L, 3), world frame
        pose : float32 (L, 3, 3), rows n̂, ĉ1, ĉ2, world frame
        pose_defined : bool (L,)
        features : float32 (L, F)
        rotation_matrix : float32 (3, 3), the object's world orientation Q (orthonormal)

        Raises ValueError (naming the argument) on a wrong type, dtype or shape, NaN or
        infinity, or a rotation that is not orthonormal. A grid update with fewer than
        90 % of the observations inside the grid is skipped with a
        ``GridTooSmallWarning`` (``last_update_skipped`` is then True).
        """
        if not isinstance(label, str) or not label:
            raise ValueError(f"label must be a non-empty string, got {label!r}")
        location = _check_array("location", location, np.float32, (None, 3))
        n = location.shape[0]
        pose = _check_array("pose", pose, np.float32, (n, 3, 3))
        pose_defined = _check_array("pose_defined", pose_defined, np.bool_, (n,))
        features = _check_array("features", features, np.float32, (n, self.n_features))
        rotation_matrix = _check_array("rotation_matrix", rotation_matrix, np.float32, (3, 3))
        q64 = rotation_matrix.astype(np.float64)
        if (np.abs(q64.T @ q64 - np.eye(3)).max() > _ROTATION_TOL
                or abs(np.linalg.det(q64) - 1.0) > _ROTATION_TOL):
            raise ValueError("rotation_matrix must be a rotation (orthonormal, determinant +1)")

        self.last_update_skipped = False
        loc_m, pose_m = kg.to_model_frame(location, pose, rotation_matrix)
        pose_m = pose_m.reshape(n, 9)
        pfd = pose_defined.astype(np.float32)
        if self.kind == "graph":
            nodes = self._merge_graph(label, loc_m, pose_m, pfd, features)
        else:
            nodes = self._merge_grid(label, loc_m, pose_m, pfd, features)
            if nodes is None:  # skipped
                self.last_update_skipped = True
                warnings.warn(f"grid update of {label!r} skipped: fewer than {MIN_IN_BOUNDS:.0%} of "
                              f"its {n} observations lie inside the {self.max_size} m grid",
                              GridTooSmallWarning, stacklevel=2)
                return self.n_nodes(label) if label in self._nodes else 0
        self._nodes[label] = nodes
        self._arrays = None
        return int(nodes.pos.shape[0])

    def arrays(self) -> GraphArrays:
        """All objects' nodes, concatenated in insertion order (cached until the next change)."""
        if self._arrays is None:
            objs = list(self._nodes.values())
            counts = [o.pos.shape[0] for o in objs]
            obj_start = np.zeros(len(objs) + 1, np.int64)
            obj_start[1:] = np.cumsum(counts, dtype=np.int64)
            f = self.n_features

            def cat(field, empty_shape):
                parts = [getattr(o, field) for o in objs]
                return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros(empty_shape, np.float32)

            self._arrays = GraphArrays(
                node_pos=cat("pos", (0, 3)), node_pose=cat("pose", (0, 9)), node_pfd=cat("pfd", (0,)),
                node_feat=cat("feat", (0, f)), obj_start=obj_start, object_names=tuple(self._nodes))
        return self._arrays

    # ------------------------------------------------------------------ merging
    def _merge_graph(self, label, loc, pose, pfd, feat) -> _Nodes:
        old = self._nodes.get(label) or _empty_nodes(self.n_features)
        n_old = old.pos.shape[0]
        all_pos = np.concatenate([old.pos, loc])
        all_pose = np.concatenate([old.pose, pose])
        all_pfd = np.concatenate([old.pfd, pfd])
        all_feat = np.concatenate([old.feat, feat])
        keep = kg.thin_nodes(all_pos, np.ascontiguousarray(all_pose[:, 0:3]), all_feat, n_old,
                             np.float32(self.distance), np.float32(self.normal_angle),
                             self.feat_thresholds, self.circular)
        return _Nodes(all_pos[keep], all_pose[keep], all_pfd[keep], all_feat[keep])

    def _merge_grid(self, label, loc, pose, pfd, feat) -> _Nodes | None:
        scale = 1.0 / (self.max_size / self.voxels_per_dim)  # as tbp.monty: 1 / voxel size
        grid = self._grids.get(label)
        if grid is None:
            if loc.shape[0] == 0:
                return _empty_nodes(self.n_features)
            # The first observation sits in the centre voxel.
            offset = (self.voxels_per_dim // 2 - np.rint(loc[0].astype(np.float64) * scale)).astype(np.int64)
            f = self.n_features
            grid = _Grid(offset, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32),
                         np.zeros((0, f), np.float32), np.zeros((0, 9), np.float32), np.zeros(0, np.float32))
        if loc.shape[0] == 0:
            return self._nodes[label]
        keys = kg.voxel_keys(loc, scale, grid.offset, self.voxels_per_dim)
        if np.count_nonzero(keys >= 0) / keys.shape[0] < MIN_IN_BOUNDS:  # tbp.monty's test, literally
            return None
        batch = kg.voxel_batch_means(keys, loc, pose, pfd, feat, self.circular)
        merged = kg.merge_voxels(grid.keys, grid.count, grid.loc, grid.feat, grid.pose, grid.pfd, *batch)
        grid = _Grid(grid.offset, *merged)
        self._grids[label] = grid
        top = kg.top_voxels(grid.count, self.max_nodes)
        return _Nodes(grid.loc[top], grid.pose[top], grid.pfd[top], grid.feat[top])
