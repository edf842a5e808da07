"""Surface geometry of sampled point sets: local curvature fits and surface-following walks.

``fit_surface`` estimates, at chosen sample points of a surface, the outward normal, the
two principal curvatures and their directions, the way tbp.monty's sensor module does from
a depth patch (``surface_normal_total_least_squares`` and ``principal_curvatures`` of its
``sensor_processing``), but over 3-D surface samples instead of pixels:

1. neighbours: the samples within ``radius`` of the centre (``kernels.kdtree``), less
   those whose rough normal faces away from the centre's (dot < ``MIN_NEIGHBOUR_DOT``:
   the other side of a thin part is not the same surface);
2. Gaussian weights ``w = exp(-d^2 / (2 sigma^2))``, ``sigma = SIGMA_FRACTION * radius``,
   ``d`` the distance to the centre;
3. normal: total least squares plane, the eigenvector of the smallest eigenvalue of the
   weighted scatter matrix about the weighted mean, its sign chosen to agree with the
   centre's rough normal;
4. a weighted least-squares quadric ``h = a u^2 + b v^2 + c uv + d u + e v + f`` of the
   neighbours' offsets from the centre in a tangent basis ``(e1, e2, n)``;
5. shape operator ``G^-1 B`` at ``(u, v) = 0`` from the first fundamental form
   ``G = [[1 + d^2, de], [de, 1 + e^2]]`` and the second
   ``B = [[2a, c], [c, 2b]] / sqrt(1 + d^2 + e^2)``; its eigenvalues are the principal
   curvatures and its eigenvectors (mapped to 3-D by ``x_u e1' + x_v e2'``, the surface
   tangents ``e1' = e1 + d n``, ``e2' = e2 + e n``) the principal directions.

Output convention (the dataset format's, docs/dataset-format.md): ``abs(k1) >= abs(k2)``;
convex is negative (``h`` is measured along the outward normal, so the outside of a sphere
of radius r curves away from it and gives ``-1/r``); ``dir1`` is orthonormalised against
the normal and ``dir2 = normal x dir1``, so the rows ``[normal, dir1, dir2]`` are a
right-handed orthonormal frame. Where fewer than ``MIN_NEIGHBOURS`` neighbours remain (or
the quadric system is singular, e.g. collinear neighbours) the result is the rough normal
(normalised), curvature 0 and an arbitrary orthonormal tangent frame.

Precision: inputs and outputs are float32. The per-centre sums (scatter matrix, 6x6 normal
equations) are accumulated in float64 on purpose: the normal equations square the
condition number of the quadric fit, and float32 would lose the curvature of nearly flat
patches. Offsets are divided by ``radius`` before fitting so that the monomials are O(1).

``surface_walk`` moves a sensor over the samples: see its docstring.

Kernels call the serial KD-tree kernels ``knn_rows`` and ``radius_lists`` only, never a
parallel one (numba/numba#8578), and none is parallel itself, so any cached kernel may call
them. The Python wrapper ``fit_surface`` splits the centres into one part per thread
(``numba.get_num_threads()``, parts of at least ``_FIT_PART_MIN``) and runs each part's
radius query and fit on a Python thread: the kernels release the GIL, so the parts run at
once, and no parallel kernel has to be compiled (a cold cache compiled the parallel batch
radius query with its leaf ordering for ~2 s of the sensor simulation's ~15 s). The
results do not depend on the split.
"""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from ._flags import HELPER
from .kdtree import KDTree, build_tree, check_points, knn_rows, radius_lists

__all__ = [
    "MIN_NEIGHBOURS",
    "MIN_NEIGHBOUR_DOT",
    "SIGMA_FRACTION",
    "fit_surface",
    "fit_surface_kernel",
    "surface_walk",
    "surface_walk_kernel",
    "tangent_basis",
]

#: Fewest neighbours (centre included) for a quadric fit (it has 6 coefficients).
MIN_NEIGHBOURS = 6
#: Neighbours whose rough normal has a dot product below this with the centre's rough
#: normal are left out of the fit (about 107 degrees apart: the far side of a thin part;
#: the two faces at a box edge, 90 degrees apart, stay in).
MIN_NEIGHBOUR_DOT = -0.3
#: Gaussian weight width as a fraction of the neighbourhood radius.
SIGMA_FRACTION = 0.5

# fit_surface: centres per thread at least (below 2 of these, one thread does all). The
# fit runs on Python threads over serial, GIL-releasing kernels instead of in a parallel
# kernel: the same results, and on a cold cache the parallel radius batch with its leaf
# ordering took ~2 s of the sensor simulation's ~15 s of compiling.
_FIT_PART_MIN = 2048

# Walk: candidates examined per snap, retries per step, the in-surface push of the target
# (fraction of the step along -normal, so that a step past a convex edge snaps onto the
# next face instead of back onto the edge), the shortest accepted move (fraction of the
# step: shorter means the walk is stuck), and the normal agreement a snap needs.
WALK_K = 8
_WALK_RETRIES = 8
_WALK_PUSH = np.float32(0.2)
_WALK_MIN_MOVE = np.float32(0.3)
_WALK_MIN_DOT = np.float32(-0.5)
# Heading turn per retry: the golden angle, so successive retries spread around the circle.
_RETRY_TURN = np.float32(2.399963)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_INF32 = np.float32(np.inf)
# int64 arguments of kernel calls (a bare 0 or 1 is typed as a literal and compiles a
# specialisation of its own)
_Z64 = np.int64(0)
_ONE64 = np.int64(1)


@njit(cache=True, fastmath=False)
def tangent_basis(n):
    """Two unit vectors ``e1, e2`` with ``(n, e1, e2)`` orthonormal and right-handed.

    Parameters
    ----------
    n : float64 (3,), unit (float32 works too, compiled apart: the kernels here pass float64)

    Returns
    -------
    e1, e2 : float64 (3,) each; ``e2 = n x e1``. Deterministic: ``e1`` is the coordinate
    axis least aligned with ``n``, orthogonalised against it.
    """
    ax = abs(n[0])
    ay = abs(n[1])
    az = abs(n[2])
    a = np.zeros(3)
    if ax <= ay and ax <= az:
        a[0] = 1.0
    elif ay <= az:
        a[1] = 1.0
    else:
        a[2] = 1.0
    dot = a[0] * n[0] + a[1] * n[1] + a[2] * n[2]
    e1 = np.empty(3)
    for j in range(3):
        e1[j] = a[j] - dot * n[j]
    s = np.sqrt(e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2])
    for j in range(3):
        e1[j] /= s
    e2 = np.empty(3)
    e2[0] = n[1] * e1[2] - n[2] * e1[1]
    e2[1] = n[2] * e1[0] - n[0] * e1[2]
    e2[2] = n[0] * e1[1] - n[1] * e1[0]
    return e1, e2


@njit(**HELPER)
def _smallest_eigvec3(a):
    """Unit eigenvector of the smallest eigenvalue of a symmetric 3x3 float64 matrix.

    Cyclic Jacobi rotations (no LAPACK: numba's np.linalg needs scipy at run time, which
    is a test-only dependency here); converges to machine precision in a few sweeps.
    """
    m = a.copy()
    v = np.empty((3, 3))  # the identity (np.eye would compile one more implementation)
    for p in range(3):
        for q in range(3):
            v[p, q] = 1.0 if p == q else 0.0
    for _ in range(32):
        off = m[0, 1] * m[0, 1] + m[0, 2] * m[0, 2] + m[1, 2] * m[1, 2]
        diag = m[0, 0] * m[0, 0] + m[1, 1] * m[1, 1] + m[2, 2] * m[2, 2]
        if off <= 1e-30 * diag or off == 0.0:
            break
        for p in range(2):
            for q in range(p + 1, 3):
                apq = m[p, q]
                if apq == 0.0:
                    continue
                theta = (m[q, q] - m[p, p]) / (2.0 * apq)
                t = np.sign(theta) / (abs(theta) + np.sqrt(theta * theta + 1.0))
                if theta == 0.0:
                    t = 1.0
                c = 1.0 / np.sqrt(t * t + 1.0)
                s = t * c
                for k in range(3):  # m <- J^T m J, columns then rows
                    mkp = m[k, p]
                    mkq = m[k, q]
                    m[k, p] = c * mkp - s * mkq
                    m[k, q] = s * mkp + c * mkq
                for k in range(3):
                    mpk = m[p, k]
                    mqk = m[q, k]
                    m[p, k] = c * mpk - s * mqk
                    m[q, k] = s * mpk + c * mqk
                for k in range(3):
                    vkp = v[k, p]
                    vkq = v[k, q]
                    v[k, p] = c * vkp - s * vkq
                    v[k, q] = s * vkp + c * vkq
    best = 0
    for j in range(1, 3):
        if m[j, j] < m[best, best]:
            best = j
    out = np.empty(3)
    s = np.sqrt(v[0, best] ** 2 + v[1, best] ** 2 + v[2, best] ** 2)
    for k in range(3):
        out[k] = v[k, best] / s
    return out


@njit(**HELPER)
def _solve(m, rhs):
    """Solve ``m x = rhs`` (float64, n x n) by Gaussian elimination with partial
    pivoting; returns ``(x, ok)``, ok False when a pivot is negligible (singular)."""
    n = rhs.shape[0]
    a = m.copy()
    b = rhs.copy()
    scale = 0.0
    for i in range(n):
        scale = max(scale, abs(a[i, i]))
    tol = 1e-12 * scale
    for col in range(n):
        piv = col
        for r in range(col + 1, n):
            if abs(a[r, col]) > abs(a[piv, col]):
                piv = r
        if not abs(a[piv, col]) > tol:
            return b, False
        if piv != col:
            for k in range(n):
                tmp = a[col, k]
                a[col, k] = a[piv, k]
                a[piv, k] = tmp
            tmp = b[col]
            b[col] = b[piv]
            b[piv] = tmp
        for r in range(col + 1, n):
            f = a[r, col] / a[col, col]
            if f != 0.0:
                for k in range(col, n):
                    a[r, k] -= f * a[col, k]
                b[r] -= f * b[col]
    x = np.empty(n)
    for i in range(n - 1, -1, -1):
        s = b[i]
        for k in range(i + 1, n):
            s -= a[i, k] * x[k]
        x[i] = s / a[i, i]
    return x, True


@njit(**HELPER)
def _write_frame(i, n, d1, k1, k2, normal_out, curv_out, dir_out):
    """Store one result: unit normal, d1 orthonormalised against it, d2 = n x d1."""
    s = np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    nn = np.empty(3)
    for j in range(3):
        nn[j] = n[j] / s
    dot = d1[0] * nn[0] + d1[1] * nn[1] + d1[2] * nn[2]
    t = np.empty(3)
    for j in range(3):
        t[j] = d1[j] - dot * nn[j]
    s = np.sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2])
    if not s > 1e-9:
        t, _e2 = tangent_basis(nn)
    else:
        for j in range(3):
            t[j] /= s
    d2 = np.empty(3)
    d2[0] = nn[1] * t[2] - nn[2] * t[1]
    d2[1] = nn[2] * t[0] - nn[0] * t[2]
    d2[2] = nn[0] * t[1] - nn[1] * t[0]
    for j in range(3):
        normal_out[i, j] = np.float32(nn[j])
        dir_out[i, 0, j] = np.float32(t[j])
        dir_out[i, 1, j] = np.float32(d2[j])
    curv_out[i, 0] = np.float32(k1)
    curv_out[i, 1] = np.float32(k2)


@njit(**HELPER)
def _fallback(i, rough, normal_out, curv_out, dir_out):
    n = np.empty(3)
    for j in range(3):
        n[j] = rough[j]
    s = np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    if not s > 0.0:  # a zero rough normal: any unit vector keeps the frame valid
        n[0] = 0.0
        n[1] = 0.0
        n[2] = 1.0
    else:
        for j in range(3):
            n[j] /= s
    e1, _e2 = tangent_basis(n)
    _write_frame(i, n, e1, 0.0, 0.0, normal_out, curv_out, dir_out)


@njit(**HELPER)
def _eigenvector(k, g11, g12, g22, b11, b12, b22, umbilic0, umbilic1):
    """A solution ``x`` of ``(B - k G) x = 0`` (2x2): orthogonal to the larger row of
    ``B - k G``. Where that matrix vanishes (an umbilic, ``ka == kb``) every direction is
    principal and ``(umbilic0, umbilic1)`` is returned."""
    ra0 = b11 - k * g11
    ra1 = b12 - k * g12
    rb0 = b12 - k * g12
    rb1 = b22 - k * g22
    if ra0 * ra0 + ra1 * ra1 >= rb0 * rb0 + rb1 * rb1:
        x0 = -ra1
        x1 = ra0
    else:
        x0 = -rb1
        x1 = rb0
    if x0 * x0 + x1 * x1 <= 1e-24 * (b11 * b11 + b22 * b22 + b12 * b12 + 1e-300):
        return umbilic0, umbilic1
    return x0, x1


@njit(**HELPER)
def _principal(g11, g12, g22, b11, b12, b22):
    """Eigenvalues/vectors of ``G^-1 B`` (2x2, G symmetric positive definite, B symmetric)
    as the generalised problem ``B x = k G x``. Returns ``(ka, xa0, xa1, kb, xb0, xb1)``,
    ``ka >= kb``; the vectors are in (u, v) parameter coordinates, not normalised."""
    det_g = g11 * g22 - g12 * g12
    tr = b11 * g22 + b22 * g11 - 2.0 * b12 * g12
    det_b = b11 * b22 - b12 * b12
    disc = tr * tr - 4.0 * det_g * det_b
    if disc < 0.0:  # >= 0 in exact arithmetic (real eigenvalues): rounding only
        disc = 0.0
    root = np.sqrt(disc)
    ka = (tr + root) / (2.0 * det_g)
    kb = (tr - root) / (2.0 * det_g)
    xa0, xa1 = _eigenvector(ka, g11, g12, g22, b11, b12, b22, 1.0, 0.0)
    # The second direction: the same construction with kb (exact for 2x2).
    xb0, xb1 = _eigenvector(kb, g11, g12, g22, b11, b12, b22, 0.0, 1.0)
    return ka, xa0, xa1, kb, xb0, xb1


@njit(cache=True, nogil=True)
def fit_surface_kernel(points, normals, centers, nb_indices, nb_offsets, radius):
    """Local quadric fits (module docstring); no validation.

    Parameters
    ----------
    points : float32 (P, 3)
        Surface samples.
    normals : float32 (P, 3)
        Rough outward normals (any non-zero length).
    centers : int64 (M,)
        Rows of ``points`` to fit at, each in ``[0, P)``.
    nb_indices, nb_offsets : int64 (C,), int64 (M + 1,)
        The rows of ``points`` within ``radius`` of centre ``i`` are
        ``nb_indices[nb_offsets[i]:nb_offsets[i + 1]]`` (what
        ``kernels.kdtree.radius_lists(tree, points[centers], radius)`` or
        ``query_radius_batch`` returns; a batch query is some 2x faster than one
        ``query_radius`` per centre inside this loop).
    radius : float32 > 0
        Neighbourhood radius (metres).

    Returns
    -------
    normal : float32 (M, 3)
    curvature : float32 (M, 2)
        ``k1, k2`` (1/m), ``abs(k1) >= abs(k2)``, convex negative.
    directions : float32 (M, 2, 3)
        Rows ``dir1, dir2``; ``[normal, dir1, dir2]`` orthonormal, ``dir2 = normal x dir1``.
    """
    m = centers.shape[0]
    normal_out = np.empty((m, 3), dtype=np.float32)
    curv_out = np.empty((m, 2), dtype=np.float32)
    dir_out = np.empty((m, 2, 3), dtype=np.float32)
    r = np.float64(radius)
    inv_2s2 = 1.0 / (2.0 * (SIGMA_FRACTION * r) ** 2)
    ata = np.empty((6, 6))
    atb = np.empty(6)
    row = np.empty(6)
    scatter = np.empty((3, 3))
    for i in range(m):
        c = centers[i]
        rough = normals[c]
        rn = np.sqrt(np.float64(rough[0]) ** 2 + np.float64(rough[1]) ** 2 + np.float64(rough[2]) ** 2)
        nb_all = nb_indices[nb_offsets[i]:nb_offsets[i + 1]]
        # Keep neighbours on the same side (see MIN_NEIGHBOUR_DOT); weights.
        cnt = 0
        nb = np.empty(nb_all.shape[0], dtype=np.int64)
        w = np.empty(nb_all.shape[0])
        for t in range(nb_all.shape[0]):
            j = nb_all[t]
            q = normals[j]
            qn = np.sqrt(np.float64(q[0]) ** 2 + np.float64(q[1]) ** 2 + np.float64(q[2]) ** 2)
            dot = np.float64(q[0]) * rough[0] + np.float64(q[1]) * rough[1] + np.float64(q[2]) * rough[2]
            if not dot >= MIN_NEIGHBOUR_DOT * qn * rn:
                continue
            d2 = 0.0
            for k in range(3):
                dk = np.float64(points[j, k]) - np.float64(points[c, k])
                d2 += dk * dk
            nb[cnt] = j
            w[cnt] = np.exp(-d2 * inv_2s2)
            cnt += 1
        if cnt < MIN_NEIGHBOURS or not rn > 0.0:
            _fallback(i, rough, normal_out, curv_out, dir_out)
            continue
        # Weighted mean and scatter (offsets from the centre, divided by r).
        wsum = 0.0
        mean = np.zeros(3)
        for t in range(cnt):
            j = nb[t]
            for k in range(3):
                mean[k] += w[t] * (np.float64(points[j, k]) - np.float64(points[c, k])) / r
            wsum += w[t]
        for k in range(3):
            mean[k] /= wsum
        for a in range(3):  # loops, not slice assignments: less code to compile
            for b in range(3):
                scatter[a, b] = 0.0
        for t in range(cnt):
            j = nb[t]
            x0 = (np.float64(points[j, 0]) - np.float64(points[c, 0])) / r - mean[0]
            x1 = (np.float64(points[j, 1]) - np.float64(points[c, 1])) / r - mean[1]
            x2 = (np.float64(points[j, 2]) - np.float64(points[c, 2])) / r - mean[2]
            scatter[0, 0] += w[t] * x0 * x0
            scatter[0, 1] += w[t] * x0 * x1
            scatter[0, 2] += w[t] * x0 * x2
            scatter[1, 1] += w[t] * x1 * x1
            scatter[1, 2] += w[t] * x1 * x2
            scatter[2, 2] += w[t] * x2 * x2
        scatter[1, 0] = scatter[0, 1]
        scatter[2, 0] = scatter[0, 2]
        scatter[2, 1] = scatter[1, 2]
        n = _smallest_eigvec3(scatter)
        if n[0] * rough[0] + n[1] * rough[1] + n[2] * rough[2] < 0.0:
            for k in range(3):
                n[k] = -n[k]
        e1, e2 = tangent_basis(n)
        # Weighted quadric fit h = a u^2 + b v^2 + c uv + d u + e v + f (scaled units).
        for a in range(6):
            atb[a] = 0.0
            for b in range(6):
                ata[a, b] = 0.0
        for t in range(cnt):
            j = nb[t]
            x0 = (np.float64(points[j, 0]) - np.float64(points[c, 0])) / r
            x1 = (np.float64(points[j, 1]) - np.float64(points[c, 1])) / r
            x2 = (np.float64(points[j, 2]) - np.float64(points[c, 2])) / r
            u = x0 * e1[0] + x1 * e1[1] + x2 * e1[2]
            v = x0 * e2[0] + x1 * e2[1] + x2 * e2[2]
            h = x0 * n[0] + x1 * n[1] + x2 * n[2]
            row[0] = u * u
            row[1] = v * v
            row[2] = u * v
            row[3] = u
            row[4] = v
            row[5] = 1.0
            for a in range(6):
                wa = w[t] * row[a]
                atb[a] += wa * h
                for b in range(a, 6):
                    ata[a, b] += wa * row[b]
        for a in range(6):
            for b in range(a):
                ata[a, b] = ata[b, a]
        coef, ok = _solve(ata, atb)
        if not ok:
            _fallback(i, rough, normal_out, curv_out, dir_out)
            continue
        # Back to metres: h/r = a' (u/r)^2 + ... gives a = a'/r, c = c'/r; d, e unitless.
        qa = coef[0] / r
        qb = coef[1] / r
        qc = coef[2] / r
        qd = coef[3]
        qe = coef[4]
        g11 = 1.0 + qd * qd
        g12 = qd * qe
        g22 = 1.0 + qe * qe
        inv_len = 1.0 / np.sqrt(1.0 + qd * qd + qe * qe)
        ka, xa0, xa1, kb, xb0, xb1 = _principal(
            g11, g12, g22, 2.0 * qa * inv_len, qc * inv_len, 2.0 * qb * inv_len
        )
        if abs(ka) >= abs(kb):
            k1 = ka
            k2 = kb
            p0 = xa0
            p1 = xa1
        else:
            k1 = kb
            k2 = ka
            p0 = xb0
            p1 = xb1
        d1 = np.empty(3)
        for k in range(3):
            # Surface tangents r_u = e1 + d n, r_v = e2 + e n; the n part is removed when
            # d1 is orthonormalised against the normal in _write_frame.
            d1[k] = p0 * (e1[k] + qd * n[k]) + p1 * (e2[k] + qe * n[k])
        _write_frame(i, n, d1, k1, k2, normal_out, curv_out, dir_out)
    return normal_out, curv_out, dir_out


def _check_radius(radius):
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a number > 0, got {radius!r}") from None
    if not (r > 0.0 and np.isfinite(r)):
        raise ValueError(f"radius must be finite and > 0, got {radius!r}")
    return np.float32(r)


def fit_surface(points, normals, centers, radius, tree=None):
    """Normals, principal curvatures and directions at chosen surface samples.

    Validated Python entry point of :func:`fit_surface_kernel` (see the module docstring
    for the method and the output convention).

    Parameters
    ----------
    points : float32 (P, 3)
        Finite surface samples (metres).
    normals : float32 (P, 3)
        Finite rough outward normals per sample (e.g. the face normals of the samples).
    centers : int64 (M,)
        Sample rows to fit at, each in ``[0, P)``; M may be 0.
    radius : float > 0
        Neighbourhood radius (metres).
    tree : KDTree, optional
        A tree already built over ``points`` (``kernels.kdtree.build_tree``); built here
        when None.

    Returns
    -------
    normal : float32 (M, 3)
        Unit outward normals.
    curvature : float32 (M, 2)
        ``k1, k2`` (1/m), ``abs(k1) >= abs(k2)``, convex negative.
    directions : float32 (M, 2, 3)
        Unit principal directions ``dir1, dir2`` with ``dir2 = normal x dir1``.

    Raises
    ------
    ValueError
        Wrong type, dtype or shape, NaN or infinity, a centre out of range, or a radius
        that is not a finite positive number.
    """
    points = check_points("points", points)
    normals = check_points("normals", normals)
    if normals.shape[0] != points.shape[0]:
        raise ValueError(
            f"normals must have the same number of rows as points ({points.shape[0]}), "
            f"got {normals.shape[0]}"
        )
    if not isinstance(centers, np.ndarray) or centers.dtype != np.int64 or centers.ndim != 1:
        raise ValueError(f"centers must be an int64 array of shape (M,), got {_describe(centers)}")
    if centers.size and (centers.min() < 0 or centers.max() >= points.shape[0]):
        raise ValueError(f"centers must lie in [0, {points.shape[0]}), got values out of range")
    r = _check_radius(radius)
    if tree is None:
        tree = build_tree(points)
    elif not isinstance(tree, KDTree) or tree.points.shape[0] != points.shape[0]:
        raise ValueError("tree must be a KDTree built over points")
    # The centres in the tree's point order (neighbouring queries touch the same nodes
    # and points: 1.4x faster searches), the results put back in the caller's order.
    rank = np.empty(points.shape[0], dtype=np.int64)
    rank[tree.indices] = np.arange(points.shape[0])
    order = np.argsort(rank[centers], kind="stable")
    ordered = np.ascontiguousarray(centers[order])
    queries = points[ordered]
    m = centers.shape[0]
    n_parts = max(1, min(numba.get_num_threads(), m // _FIT_PART_MIN))

    def part(lo, hi):
        nb_indices, nb_offsets = radius_lists(tree, queries[lo:hi], float(r))
        return fit_surface_kernel(points, normals, ordered[lo:hi], nb_indices, nb_offsets, r)

    if n_parts == 1:
        parts = [part(0, m)]
    else:
        bounds = [m * j // n_parts for j in range(n_parts + 1)]
        with ThreadPoolExecutor(n_parts) as pool:
            parts = list(pool.map(part, bounds[:-1], bounds[1:]))
    results = []
    for j in range(3):
        got = np.concatenate([p[j] for p in parts])
        out = np.empty_like(got)
        out[order] = got
        results.append(out)
    return tuple(results)


def _describe(a):
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {a.shape}"
    return type(a).__name__


# --------------------------------------------------------------------------- walk


@njit(**HELPER, fastmath=False)
def rotate_about(h, axis, angle):
    """Rodrigues rotation of vector ``h`` about unit ``axis`` by ``angle`` (float32)."""
    c = np.float32(np.cos(angle))
    s = np.float32(np.sin(angle))
    dot = h[0] * axis[0] + h[1] * axis[1] + h[2] * axis[2]
    cx = axis[1] * h[2] - axis[2] * h[1]
    cy = axis[2] * h[0] - axis[0] * h[2]
    cz = axis[0] * h[1] - axis[1] * h[0]
    out = np.empty(3, dtype=np.float32)
    k = (_F1 - c) * dot
    out[0] = h[0] * c + cx * s + axis[0] * k
    out[1] = h[1] * c + cy * s + axis[1] * k
    out[2] = h[2] * c + cz * s + axis[2] * k
    return out


@njit(**HELPER, fastmath=False)
def to_tangent(h, n):
    """``h`` projected onto the plane normal to unit ``n`` and normalised; a fixed tangent
    when the projection vanishes."""
    dot = h[0] * n[0] + h[1] * n[1] + h[2] * n[2]
    out = np.empty(3, dtype=np.float32)
    for j in range(3):
        out[j] = h[j] - dot * n[j]
    s = np.sqrt(out[0] * out[0] + out[1] * out[1] + out[2] * out[2])
    if s > np.float32(1e-6):
        for j in range(3):
            out[j] /= s
        return out
    n64 = np.empty(3)  # float64, so that tangent_basis has one signature (exact: float32 -> float64)
    for j in range(3):
        n64[j] = n[j]
    e1, _e2 = tangent_basis(n64)
    for j in range(3):
        out[j] = np.float32(e1[j])
    return out


@njit(**HELPER, fastmath=False)
def transport_heading(h, n_old, n_new):
    """Parallel transport of tangent ``h`` from the plane of ``n_old`` to that of ``n_new``:
    the smallest rotation taking ``n_old`` to ``n_new``, applied to ``h``, then projected
    (so that walking over a 90-degree edge turns the heading down the next face instead of
    projecting it to nothing)."""
    ax = n_old[1] * n_new[2] - n_old[2] * n_new[1]
    ay = n_old[2] * n_new[0] - n_old[0] * n_new[2]
    az = n_old[0] * n_new[1] - n_old[1] * n_new[0]
    s = np.sqrt(ax * ax + ay * ay + az * az)
    c = n_old[0] * n_new[0] + n_old[1] * n_new[1] + n_old[2] * n_new[2]
    if s > np.float32(1e-6):
        axis = np.empty(3, dtype=np.float32)
        axis[0] = ax / s
        axis[1] = ay / s
        axis[2] = az / s
        h = rotate_about(h, axis, np.arctan2(s, c))
    return to_tangent(h, n_new)


@njit(cache=True, fastmath=False)
def snap_move(points, normals, tree, cur, h, step, target, nb_idx, nb_dist):
    """One step's snap of the walk (:func:`surface_walk_kernel`, and the policies' moves in
    ``kernels.policy``): aim ``step`` along tangent
    ``h`` from sample ``cur`` (pushed 0.2 step into the surface), take the nearest of the 8
    nearest samples that moved at least 0.3 step and whose normal agrees; retry turned by
    the golden angle up to 8 times.

    ``target`` float32 (1, 3), ``nb_idx`` int64 (1, k), ``nb_dist`` float32 (1, k): scratch.
    Returns ``(row, h)``: the sample reached (-1: stuck) and the heading after the retries.
    """
    k = nb_idx.shape[1]
    no_rows = np.empty(0, dtype=np.int64)
    n_cur = normals[cur]
    min_move2 = (_WALK_MIN_MOVE * step) ** 2
    nxt = np.int64(-1)
    for attempt in range(_WALK_RETRIES):
        if attempt > 0:
            h = rotate_about(h, n_cur, _RETRY_TURN)
        for j in range(3):
            target[0, j] = points[cur, j] + step * h[j] - _WALK_PUSH * step * n_cur[j]
        knn_rows(tree, target, _Z64, _ONE64, k, _INF32, nb_idx, nb_dist, no_rows)
        for t in range(k):
            cand = nb_idx[0, t]
            if cand < 0 or cand == cur:
                continue
            d2 = _F0
            for j in range(3):
                dj = points[cand, j] - points[cur, j]
                d2 += dj * dj
            if d2 < min_move2:
                continue
            nd = normals[cand, 0] * n_cur[0] + normals[cand, 1] * n_cur[1] + normals[cand, 2] * n_cur[2]
            if nd < _WALK_MIN_DOT:
                continue
            nxt = cand
            break
        if nxt >= 0:
            break
    return nxt, h


@njit(cache=True)
def surface_walk_kernel(points, normals, tree, start, heading, step, turn_angles):
    """A surface-following walk over samples; no validation.

    Starting at sample ``start`` with tangent ``heading``, each step turns the heading
    about the current normal by ``turn_angles[i]``, aims at
    ``p + step * heading - 0.2 * step * normal`` (the small push into the surface makes a
    step past a convex edge land on the next face), and snaps to the nearest of the 8
    nearest samples that is not the current one, lies at least ``0.3 * step`` away (else
    the walk is stuck at a rim) and whose normal agrees (dot >= -0.5: not the far side of
    a thin part). If none qualifies the heading turns by the golden angle and the step is
    retried, up to 8 times; after that the walk stays put for that step. The heading is
    then parallel-transported into the new tangent plane.

    Parameters
    ----------
    points : float32 (P, 3), P >= 1
    normals : float32 (P, 3), unit outward normals
    tree : KDTree over ``points``
    start : int, in ``[0, P)``
    heading : float32 (3,), any non-zero vector (projected onto the tangent plane)
    step : float32 > 0, step length (metres)
    turn_angles : float32 (n_steps,), radians; entry 0 is unused (step 0 is the start)

    Returns
    -------
    int64 (n_steps,): the visited sample rows, ``[0] = start``.
    """
    n_steps = turn_angles.shape[0]
    out = np.empty(n_steps, dtype=np.int64)
    if n_steps == 0:
        return out
    cur = np.int64(start)
    out[0] = cur
    h = to_tangent(heading.astype(np.float32), normals[cur])
    k = min(WALK_K, points.shape[0])
    # The k-nearest query and its outputs, allocated once (``knn_rows``).
    target = np.empty((1, 3), dtype=np.float32)
    nb_idx = np.empty((1, k), dtype=np.int64)
    nb_dist = np.empty((1, k), dtype=np.float32)
    for i in range(1, n_steps):
        n_cur = normals[cur]
        h = rotate_about(h, n_cur, turn_angles[i])
        nxt, h = snap_move(points, normals, tree, cur, h, step, target, nb_idx, nb_dist)
        if nxt >= 0:
            h = transport_heading(h, n_cur, normals[nxt])
            cur = nxt
        out[i] = cur
    return out


def surface_walk(points, normals, tree, start, heading, step, turn_angles):
    """Validated Python entry point of :func:`surface_walk_kernel` (same parameters and
    result). Raises ValueError on wrong dtypes or shapes, NaN, an out-of-range start, a
    zero heading or a step that is not finite and positive."""
    points = check_points("points", points)
    normals = check_points("normals", normals)
    if normals.shape[0] != points.shape[0] or points.shape[0] == 0:
        raise ValueError("points and normals must have the same, non-zero number of rows")
    if not isinstance(tree, KDTree) or tree.points.shape[0] != points.shape[0]:
        raise ValueError("tree must be a KDTree built over points")
    start = int(start)
    if not 0 <= start < points.shape[0]:
        raise ValueError(f"start must lie in [0, {points.shape[0]}), got {start}")
    heading = np.asarray(heading, dtype=np.float32)
    if heading.shape != (3,) or not np.isfinite(heading).all() or not np.any(heading != 0):
        raise ValueError("heading must be a finite, non-zero vector of shape (3,)")
    step = float(step)
    if not (step > 0 and np.isfinite(step)):
        raise ValueError(f"step must be finite and > 0, got {step!r}")
    turn_angles = np.asarray(turn_angles)
    if turn_angles.dtype != np.float32 or turn_angles.ndim != 1:
        raise ValueError(f"turn_angles must be a float32 array of shape (n_steps,), got {_describe(turn_angles)}")
    if not np.isfinite(turn_angles).all():
        raise ValueError("turn_angles must be finite")
    return surface_walk_kernel(points, normals, tree, np.int64(start), heading, np.float32(step),
                               np.ascontiguousarray(turn_angles))
