"""The stored observations of the ``similarity`` model, as structure of arrays.

A store is one C-contiguous float32 array of shape ``(3 + F, capacity)``
(or uint16 holding float16 bits: compact storage, ``kernels.compact``):
rows 0..2 hold the x, y and z coordinates of the stored positions, rows 3.. the
F feature columns. One stored observation of the seed workload (F = 1) costs
4 x 4 = 16 bytes. Separate coordinate rows let the similarity reduction load
eight or sixteen observations per SIMD instruction; the count of observations
in use travels beside the array as an integer ``n_stored``.
"""

import numpy as np


STORAGE_DTYPES = {"float32": np.float32, "float16": np.uint16}


def new_store(n_features, capacity, storage="float32"):
    """Return an empty store of shape ``(3 + n_features, capacity)``.

    ``storage`` "float32" gives a float32 array (16 bytes per observation with
    one feature); "float16" a uint16 array of float16 bit patterns (8 bytes;
    see ``kernels.compact``). Kernels compute in float32 either way.
    """
    if n_features < 0 or capacity < 0:
        raise ValueError("n_features and capacity must be >= 0")
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    return np.zeros((3 + int(n_features), int(capacity)), dtype=STORAGE_DTYPES[storage])


def store_from_arrays(location, features):
    """Build a full store from ``location (N, 3)`` and ``features (N, F)`` float32.

    Returns ``(store, n_stored)``; the store is a new ``(3 + F, N)`` array.
    """
    location = np.asarray(location, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    if location.ndim != 2 or location.shape[1] != 3:
        raise ValueError(f"location must have shape (N, 3), got {location.shape}")
    if features.ndim != 2 or features.shape[0] != location.shape[0]:
        raise ValueError(f"features must have shape (N, F) with N = {location.shape[0]}, got {features.shape}")
    store = np.ascontiguousarray(np.concatenate([location.T, features.T], axis=0), dtype=np.float32)
    return store, location.shape[0]


def bytes_per_observation(store):
    """Bytes one stored observation occupies in ``store``."""
    return store.shape[0] * store.itemsize
