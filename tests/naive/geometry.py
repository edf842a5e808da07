"""References for ``kernels.geometry``: the weighted quadric fit (np.linalg, float64) and the surface walk
(float64, brute-force nearest neighbours)."""

import numpy as np

F32 = np.float32


def quadric_fit(points, normals, center, radius, min_neighbour_dot, min_neighbours, sigma_fraction):
    """The fit of kernels.geometry written for clarity with np.linalg (float64).

    ``min_neighbour_dot``, ``min_neighbours``, ``sigma_fraction``: the fit's constants (kernels.geometry's
    MIN_NEIGHBOUR_DOT, MIN_NEIGHBOURS, SIGMA_FRACTION; passed in, so this module imports no kernel).
    Returns ``(normal, curvatures (k1, k2), direction of k1 or None)``.
    """
    p = points.astype(F32)
    d = p - p[center]
    # Neighbourhood exactly as the KD-tree decides it: float32 squared distance, summed
    # left to right, against float32(r) * float32(r).
    d2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2]
    r32 = F32(radius)
    nb = np.flatnonzero(d2 <= r32 * r32)
    rough = normals[center].astype(np.float64)
    nrm = normals[nb].astype(np.float64)
    same_side = nrm @ rough >= min_neighbour_dot * np.linalg.norm(nrm, axis=1) * np.linalg.norm(rough)
    nb = nb[same_side]
    if len(nb) < min_neighbours:
        return rough / np.linalg.norm(rough), np.zeros(2), None
    r = float(r32)
    x = (points[nb].astype(np.float64) - points[center].astype(np.float64)) / r
    w = np.exp(-np.sum(x * x, axis=1) * r * r / (2.0 * (sigma_fraction * r) ** 2))
    mean = w @ x / w.sum()
    scatter = (w[:, None] * (x - mean)).T @ (x - mean)
    _, vecs = np.linalg.eigh(scatter)
    n = vecs[:, 0]
    if n @ rough < 0:
        n = -n
    helper = np.eye(3)[np.argmin(np.abs(n))]
    e1 = np.cross(n, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    u, v, h = x @ e1, x @ e2, x @ n
    design = np.stack([u * u, v * v, u * v, u, v, np.ones_like(u)], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], h * sw, rcond=None)
    a, b, c = coef[0] / r, coef[1] / r, coef[2] / r
    dd, ee = coef[3], coef[4]
    g = np.array([[1 + dd * dd, dd * ee], [dd * ee, 1 + ee * ee]])
    bmat = np.array([[2 * a, c], [c, 2 * b]]) / np.sqrt(1 + dd * dd + ee * ee)
    vals, vecs2 = np.linalg.eig(np.linalg.inv(g) @ bmat)
    vals, vecs2 = vals.real, vecs2.real
    order = np.argsort(-np.abs(vals), kind="stable")
    k = vals[order]
    x1 = vecs2[:, order[0]]
    d1 = x1[0] * (e1 + dd * n) + x1[1] * (e2 + ee * n)
    d1 -= (d1 @ n) * n
    d1 /= np.linalg.norm(d1)
    return n, k, d1


def surface_walk(points, normals, start, heading, step, turns):
    """The surface walk of ``surface_walk_kernel``'s docstring, plainly, in float64 with a
    brute-force 8-nearest search (ties by lower index)."""
    p = points.astype(np.float64)
    nrm = normals.astype(np.float64)

    def tangent(h, n):
        t = h - (h @ n) * n
        s = np.linalg.norm(t)
        if s > 1e-6:
            return t / s
        a = np.zeros(3)
        a[np.argmin(np.abs(n))] = 1.0
        t = a - (a @ n) * n
        return t / np.linalg.norm(t)

    def rotate(h, axis, angle):
        return h * np.cos(angle) + np.cross(axis, h) * np.sin(angle) + axis * (axis @ h) * (1 - np.cos(angle))

    out = [start]
    cur = start
    h = tangent(heading.astype(np.float64), nrm[cur])
    k = min(8, len(p))
    for i in range(1, len(turns)):
        n_cur = nrm[cur]
        h = rotate(h, n_cur, float(turns[i]))
        nxt = -1
        for attempt in range(8):
            if attempt > 0:
                h = rotate(h, n_cur, 2.399963)
            target = p[cur] + step * h - 0.2 * step * n_cur
            d = np.linalg.norm(p - target, axis=1)
            for cand in np.lexsort((np.arange(len(p)), d))[:k]:
                if cand == cur or np.linalg.norm(p[cand] - p[cur]) < 0.3 * step or nrm[cand] @ n_cur < -0.5:
                    continue
                nxt = int(cand)
                break
            if nxt >= 0:
                break
        if nxt >= 0:
            axis = np.cross(n_cur, nrm[nxt])
            s = np.linalg.norm(axis)
            if s > 1e-6:
                h = rotate(h, axis / s, np.arctan2(s, n_cur @ nrm[nxt]))
            h = tangent(h, nrm[nxt])
            cur = nxt
        out.append(cur)
    return np.array(out)
