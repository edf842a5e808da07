"""Small quaternion helpers for writing and reading episode datasets (plain NumPy).

Quaternions are ``(w, x, y, z)`` with the scalar part first, the convention of the
dataset format (docs/dataset-format.md, ``episode_rotation``) and of tbp.monty. A unit
quaternion ``q`` stands for the rotation matrix ``R = quat_to_matrix(q)`` that maps an
object's canonical frame into the world frame: ``world = R @ p``.

Arithmetic is done in float64 and the results are rounded to float32 once, so that the
float32 outputs are as accurate as float32 allows (and reproducible bit for bit for a
given seed). These helpers are for data preparation in ``engine/``; compiled kernels keep
their own versions in ``kernels/`` (kernels never import ``engine``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["IDENTITY_QUATERNION", "quat_to_matrix", "random_quaternions"]

#: The identity rotation as a float32 ``(4,)`` quaternion ``(w, x, y, z)``.
IDENTITY_QUATERNION = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
IDENTITY_QUATERNION.flags.writeable = False  # a shared constant: nobody may change it


def quat_to_matrix(q, dtype=np.float32) -> np.ndarray:
    """Rotation matrices of quaternions.

    Parameters
    ----------
    q : array_like, shape (..., 4)
        Quaternions ``(w, x, y, z)``, any float dtype. They are normalised first, so a
        quaternion that is unit only to float32 precision still gives a proper rotation;
        a zero or non-finite quaternion raises ``ValueError``.
    dtype : numpy dtype, default float32
        Output dtype; the matrix is always computed in float64 (pass ``numpy.float64`` to
        keep that precision, e.g. to rotate points before rounding them to float32 once).

    Returns
    -------
    numpy.ndarray, ``dtype`` (float32 by default), shape (..., 3, 3)
        ``R`` with ``R @ p`` the rotated column vector ``p``; ``q`` and ``-q`` give the same
        matrix.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape (..., 4), got {q.shape}")
    norm = np.sqrt(np.sum(q * q, axis=-1, keepdims=True))
    if not np.all(np.isfinite(norm)) or np.any(norm == 0.0):
        raise ValueError("quaternions must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    # Standard formula for a unit quaternion (Hamilton convention, scalar first).
    r = np.empty(q.shape[:-1] + (3, 3), dtype=np.float64)
    r[..., 0, 0] = 1.0 - 2.0 * (y * y + z * z)
    r[..., 0, 1] = 2.0 * (x * y - w * z)
    r[..., 0, 2] = 2.0 * (x * z + w * y)
    r[..., 1, 0] = 2.0 * (x * y + w * z)
    r[..., 1, 1] = 1.0 - 2.0 * (x * x + z * z)
    r[..., 1, 2] = 2.0 * (y * z - w * x)
    r[..., 2, 0] = 2.0 * (x * z - w * y)
    r[..., 2, 1] = 2.0 * (y * z + w * x)
    r[..., 2, 2] = 1.0 - 2.0 * (x * x + y * y)
    return r.astype(dtype)


def random_quaternions(n: int, rng=None) -> np.ndarray:
    """``n`` random rotations, uniformly distributed over SO(3).

    A 4-D standard normal vector normalised to unit length is uniform on the 3-sphere,
    and the unit quaternions of the 3-sphere cover SO(3) uniformly (twice). The sign is
    then fixed so that ``w >= 0``, which picks one of the two quaternions of a rotation
    without changing the distribution of rotations.

    Parameters
    ----------
    n : int
        Number of quaternions (``n >= 0``).
    rng : numpy.random.Generator or int or None
        Random source; an int (or None) seeds ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray, float32, shape (n, 4)
        Unit quaternions ``(w, x, y, z)``, unit norm to float32 precision.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(rng)
    q = rng.standard_normal((int(n), 4))
    norm = np.sqrt(np.sum(q * q, axis=1, keepdims=True))
    # A draw of exactly zero has probability zero; guard anyway rather than divide by 0.
    zero = norm[:, 0] == 0.0
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    norm[zero] = 1.0
    q = q / norm
    q[q[:, 0] < 0.0] *= -1.0
    return q.astype(np.float32)
