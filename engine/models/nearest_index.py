"""The ``nearest`` model's memory: stored observations behind a KD-tree, grown per episode.

Strategy: observations of a training episode are appended when the episode
ends, and the KD-tree is rebuilt over all stored positions then (O(n log n) per
training episode: ~0.3 s for 1e6 stored on this 2-core machine; the build is
parallel). Matching never sees a half-built index: every matching step of an
evaluation episode uses the tree of the finished training. With
``dedup_distance`` set, an incoming observation that close to a stored one
(or to one kept earlier in the same episode) with an L1 feature distance
<= ``dedup_feature`` is not stored, the way Monty's graph memory thins points.

Memory per stored observation: the tree's positions (float32 12 B, or float16
6 B with ``storage: float16``) and the features (4 or 2 B each), plus the index
proper: int32 indices (4 B) and the node boxes, leaf offsets and splits of a
tree with leaves of up to 32 points (~3 B).
"""

from __future__ import annotations

import numpy as np

from kernels import kdtree
from kernels.compact import from_float16_bits, to_float16_bits
from kernels.nearest import dedup_keep

LEAF_SIZE = 32  # k = 10 queries as fast as at 16, and half the per-point index memory


class NearestIndex:
    """Stored observations (positions in a KD-tree, features (F, n)) of the ``nearest`` model."""

    def __init__(self, n_features: int, storage: str = "float32"):
        self.storage = storage
        self.n_features = n_features
        self.tree = self._compact(kdtree.build_tree(np.zeros((0, 3), np.float32), LEAF_SIZE))
        self.features = self._store_features(np.zeros((n_features, 0), np.float32))

    @classmethod
    def from_arrays(cls, tree, features, storage: str = "float32") -> "NearestIndex":
        """An index over a tree and features built elsewhere (a saved model's)."""
        index = cls.__new__(cls)
        index.storage = storage
        index.n_features = int(features.shape[0])
        index.tree, index.features = tree, features
        return index

    @property
    def n(self) -> int:
        return int(self.tree.points.shape[0])

    def _compact(self, tree):
        return kdtree.compact_tree(tree, float16=self.storage == "float16")

    def _store_features(self, feats):
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        return to_float16_bits(feats) if self.storage == "float16" else feats

    def positions(self) -> np.ndarray:
        """Stored positions in insertion order, float32 (n, 3) (a new array)."""
        pts = self.tree.points
        if pts.dtype == np.uint16:
            pts = from_float16_bits(pts)
        out = np.empty((self.n, 3), np.float32)
        out[self.tree.indices] = pts
        return out

    def add(self, location, features, start: int, stop: int, dedup_distance=None, dedup_feature=None) -> int:
        """Store observations ``start:stop`` (after thinning) and rebuild the tree; returns how many were kept."""
        if stop <= start:
            return 0
        if dedup_distance is not None:
            df = np.inf if dedup_feature is None else dedup_feature
            keep = dedup_keep(self.tree, self.features, location, features, start, stop,
                              np.float32(dedup_distance), np.float32(df))
            rows = np.arange(start, stop)[keep]
        else:
            rows = np.arange(start, stop)
        if rows.size == 0:
            return 0
        new_pos = location[rows]
        new_feat = features[rows].T
        if self.storage == "float16":  # store what float16 can hold, and index exactly that
            new_pos = from_float16_bits(to_float16_bits(new_pos))
            old_feat = from_float16_bits(self.features)
        else:
            old_feat = self.features
        positions = np.concatenate([self.positions(), new_pos]).astype(np.float32)
        self.tree = self._compact(kdtree.build_tree(np.ascontiguousarray(positions), LEAF_SIZE))
        self.features = self._store_features(np.concatenate([old_feat, new_feat], axis=1))
        return int(rows.size)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tree) + self.features.nbytes

    def bytes_per_observation(self) -> float:
        return self.nbytes() / self.n if self.n else 0.0
