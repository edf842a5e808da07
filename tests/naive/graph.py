"""References for ``kernels.graph`` and the graph memory: literal transcriptions of tbp.monty's rules
(spec §2.3–2.5), in float64. ``ref_thin`` is the O(N²) greedy ``remove_close_points`` loop; ``RefGrid``
the per-voxel loop of ``GridObjectModel._update_grids`` with ``pose_vector_mean`` / ``circular_mean`` /
``get_most_common_bool`` and tbp.monty 0.55's ``pose_vector_merge`` (scipy's weighted rotation mean)."""

import numpy as np


def ref_thin(pos, normals, feat, n_old, distance, normal_angle, thr, circ):
    pos = pos.astype(np.float64)
    normals = normals.astype(np.float64)
    feat = feat.astype(np.float64)
    n = pos.shape[0]
    keep = np.zeros(n, bool)
    keep[:n_old] = True
    accepted = list(range(min(n_old, n)))
    for i in range(n_old, n):
        rejected = False
        for a in accepted:
            if not np.linalg.norm(pos[i] - pos[a]) < distance:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                cosang = normals[i] @ normals[a] / (np.linalg.norm(normals[i]) * np.linalg.norm(normals[a]))
                angle = np.arccos(np.clip(cosang, -1, 1))
            if angle > normal_angle:  # NaN (zero normal) is never ">": counts as close
                continue
            similar = True
            for k in range(feat.shape[1]):
                if thr[k] == np.inf:
                    continue
                d = abs(feat[i, k] - feat[a, k])
                if circ[k]:
                    d = min(d, 1 - d)
                if d > thr[k]:
                    similar = False
                    break
            if similar:
                rejected = True
                break
        if not rejected:
            accepted.append(i)
            keep[i] = True
    return keep


def _rha(v1, v2, pn):
    return np.arctan2(np.dot(np.cross(v1, v2), pn), np.dot(v1, v2))


def ref_orthonormal_pose_vectors(normal, direction):
    """tbp.monty 0.55's ``orthonormal_pose_vectors`` (with ``TangentFrame``'s basis_u fallback)."""
    n = normal / np.linalg.norm(normal)
    t = direction - np.dot(direction, n) * n
    if np.linalg.norm(t) < 1e-6:
        axis = np.array([0.0, 1.0, 0.0])
        if abs(np.dot(axis, n)) > 0.95:
            axis = np.array([0.0, 0.0, 1.0])
        t = np.cross(axis, n)
    c1 = t / np.linalg.norm(t)
    return np.hstack([n, c1, np.cross(n, c1)])


def ref_pose_vector_mean(pose_vecs, pfd):
    """tbp.monty 0.55's pose_vector_mean, float64. Returns (mean or None, use_cds)."""
    pose_vecs = pose_vecs.astype(np.float64)
    valid = np.where(np.any(pose_vecs, axis=1))[0]
    if len(valid) == 0:
        return None, False
    sn = pose_vecs[valid, :3]
    cds1 = pose_vecs[valid, 3:6].copy()
    cds2 = pose_vecs[valid, 6:9]
    use = np.array([_rha(s, cds1[0], cds2[0]) > 0 for s in sn])
    if use.sum() < len(use) // 2 or use.sum() == 0:
        use = ~use
    nm = sn[use].mean(axis=0)
    nm = nm / np.linalg.norm(nm)
    if pfd.sum() < len(pfd) // 2:
        return ref_orthonormal_pose_vectors(nm, cds1[0]), False
    flip = np.array([_rha(c, cds2[0], nm) < 0 for c in cds1])
    cds1[flip] = -cds1[flip]
    return ref_orthonormal_pose_vectors(nm, cds1.mean(axis=0)), True


def ref_pose_vector_merge(new, old, n_new, n_old):
    """tbp.monty 0.55's ``pose_vector_merge``: scipy's weighted rotation mean of the two poses."""
    from scipy.spatial.transform import Rotation

    mats = np.stack([np.asarray(new, np.float64).reshape(3, 3), np.asarray(old, np.float64).reshape(3, 3)])
    return Rotation.from_matrix(mats).mean(weights=[n_new, n_old]).as_matrix().ravel()


def ref_circular_mean(values):
    ang = np.asarray(values, np.float64) * 2 * np.pi
    m = np.arctan2(np.mean(np.sin(ang)), np.mean(np.cos(ang)))
    if m < 0:
        m += 2 * np.pi
    return m / (2 * np.pi)


class RefGrid:
    """Dict-of-voxels grid model, step by step as GridObjectModel (float64)."""

    def __init__(self, max_size, v, max_nodes, circ):
        self.scale = 1 / (max_size / v)
        self.v, self.max_nodes, self.circ = v, max_nodes, circ
        self.offset = None
        self.vox = {}  # (gx, gy, gz) -> dict(count, loc, feat, pose, pfd)

    def update(self, loc, pose, pfd, feat):
        loc = loc.astype(np.float64)
        if self.offset is None:
            self.offset = self.v // 2 - np.round(loc[0] * self.scale).astype(int)
        g = np.round(loc * self.scale).astype(int) + self.offset
        inb = np.all((g >= 0) & (g < self.v), axis=1)
        if inb.sum() / len(inb) < 0.9:
            return False
        g, loc, pose, pfd, feat = g[inb], loc[inb], pose[inb], pfd[inb], feat[inb].astype(np.float64)
        for key in sorted(set(map(tuple, g))):
            ids = np.where((g == key).all(axis=1))[0]  # temporal order
            m = len(ids)
            new_loc = loc[ids].mean(axis=0)
            new_feat = np.array([ref_circular_mean(feat[ids, k]) if self.circ[k] else feat[ids, k].mean()
                                 for k in range(feat.shape[1])])
            new_pfd = float(pfd[ids].sum() >= (1 - pfd[ids]).sum())
            pv, _ = ref_pose_vector_mean(pose[ids], pfd[ids])
            old = self.vox.get(key)
            if old is None:
                self.vox[key] = dict(count=m, loc=new_loc, feat=new_feat,
                                     pose=pv if pv is not None else np.zeros(9), pfd=new_pfd)
            else:
                if pv is None:
                    pv = old["pose"].copy()
                elif np.any(old["pose"]):
                    pv = ref_pose_vector_merge(pv, old["pose"], m, old["count"])
                self.vox[key] = dict(count=old["count"] + m, loc=(new_loc + old["loc"]) / 2,
                                     feat=(new_feat + old["feat"]) / 2, pose=pv,
                                     pfd=(new_pfd + old["pfd"]) / 2)
        return True

    def counts_by_key(self):
        """(keys in increasing order, int64 counts): what tbp.monty's ``topk`` runs over."""
        keys = sorted(self.vox)
        return keys, np.array([self.vox[k]["count"] for k in keys], np.int64)

    def top_counts(self):
        """The counts of the ``max_nodes`` fullest voxels, decreasing (which of several voxels
        tied at the cut are kept is torch's choice: see ``kernels.topk_order``)."""
        return sorted((v["count"] for v in self.vox.values()), reverse=True)[: self.max_nodes]

    def nodes(self, keys):
        """The voxels ``keys`` (a list of (gx, gy, gz)), in that order."""
        get = lambda f: np.array([self.vox[k][f] for k in keys])  # noqa: E731
        return list(keys), get("count"), get("loc"), get("feat"), get("pose"), get("pfd")
