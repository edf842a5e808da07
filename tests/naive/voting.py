"""Reference for ``kernels.voting``: tbp.monty's vote exchange (evidence-matching.md section 6),
written the way tbp.monty's code is organised: per module a dict object -> votes, per
receiver the votes pooled per object, every vote's distance to every hypothesis.

``send_out_vote`` (``EvidenceGraphLM``), ``_combine_votes``
(``MontyForEvidenceGraphMatching``) and ``_update_evidence_with_vote`` in plain NumPy;
the KD-tree query is a full sort of the distances (stable: of equal distances the
earlier vote first). Distances and transformed locations in float32, as the kernel
computes them (a float64 reference would move votes that lie on the radius).
"""

import numpy as np


def scaled_evidences(ev_by_object):
    """tbp.monty's ``get_scaled_evidences`` (joint over objects), float64."""
    lo, hi = np.inf, -np.inf
    for e in ev_by_object.values():
        if len(e):
            lo = min(lo, float(np.min(e)))
            hi = max(hi, float(np.max(e)))
    out = {}
    for o, e in ev_by_object.items():
        e = np.asarray(e, np.float64)
        if hi >= 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                out[o] = ((e - lo) / (hi - lo) - 0.5) * 2
        else:
            out[o] = np.clip(e, -1, 1)
    return out


def send_out_vote(obj, loc, rot, ev, threshold):
    """One module's votes: {object: [(location float32 (3,), rotation (3, 3), confidence)]}
    in row order. Rows with ``obj < 0`` are dead (no hypothesis)."""
    live = np.flatnonzero(obj >= 0)
    by_obj = {}
    for o in sorted(set(int(x) for x in obj[live])):
        rows = live[obj[live] == o]
        by_obj[o] = rows
    scaled = scaled_evidences({o: ev[rows] for o, rows in by_obj.items()})
    votes = {}
    for o, rows in by_obj.items():
        keep = np.flatnonzero(scaled[o] > threshold)
        if len(keep):
            votes[o] = [(loc[rows[k]].astype(np.float32), rot[rows[k]].reshape(3, 3).astype(np.float32),
                         np.float32(scaled[o][k])) for k in keep]
    return votes


def combine_votes(votes_per_module, sensed, senders_of, transpose=True):
    """Per receiver the pooled, transformed votes {object: [(location, confidence)]}, or None
    when the receiver itself did not vote (``votes_per_module[r] is None``)."""
    out = []
    for r, mine in enumerate(votes_per_module):
        if mine is None:
            out.append(None)
            continue
        pooled = {}
        for s in senders_of[r]:
            theirs = votes_per_module[s]
            if theirs is None:
                continue
            dp = (sensed[r].astype(np.float32) - sensed[s].astype(np.float32)).astype(np.float32)
            for o, votes in theirs.items():
                for location, rotation, conf in votes:
                    v = rotation.T if transpose else rotation
                    moved = np.array([location[a] + (v[a, 0] * dp[0] + v[a, 1] * dp[1] + v[a, 2] * dp[2])
                                      for a in range(3)], np.float32)
                    pooled.setdefault(o, []).append((moved, conf))
        out.append(pooled)
    return out


def receive_votes(obj, loc, ev, pooled, mmd, weight, bounded):
    """The receiver's new evidences (float32 copy) and the vote each row took (NaN: none)."""
    ev = ev.astype(np.float32).copy()
    taken = np.full(len(ev), np.nan, np.float32)
    mmd = np.float32(mmd)
    weight = np.float32(weight)
    for o, votes in pooled.items():
        vloc = np.array([v[0] for v in votes], np.float32).reshape(-1, 3)
        vconf = np.array([v[1] for v in votes], np.float32)
        k = min(3, len(votes))
        for h in np.flatnonzero(obj == o):
            d = vloc - loc[h].astype(np.float32)
            d2 = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]).astype(np.float32)
            nearest = np.argsort(d2, kind="stable")[:k]
            ok = nearest[d2[nearest] < mmd * mmd]
            if not len(ok):
                continue
            v = vconf[ok].max()
            taken[h] = v
            if bounded:
                ev[h] = (ev[h] + weight * v) / (np.float32(1) + weight)
            else:
                ev[h] = ev[h] + weight * v
    return ev, taken


def exchange(obj, loc, rot, ev, n_rows, sensed, sends, senders_of, threshold, weight, bounded, mmd,
             transpose=True):
    """The whole exchange over stacked module arrays; returns the new evidences (M, cap) and the
    votes each module sent."""
    n_mod = obj.shape[0]
    votes = []
    for m in range(n_mod):
        n = int(n_rows[m])
        votes.append(send_out_vote(obj[m, :n], loc[m, :n], rot[m, :n], ev[m, :n], threshold) if sends[m] else None)
    pooled = combine_votes(votes, sensed, senders_of, transpose)
    new_ev = ev.astype(np.float32).copy()
    for r in range(n_mod):
        if pooled[r] is None:
            continue
        n = int(n_rows[r])
        new_ev[r, :n], _ = receive_votes(obj[r, :n], loc[r, :n], ev[r, :n], pooled[r], mmd, weight, bounded)
    n_votes = [0 if v is None else sum(len(x) for x in v.values()) for v in votes]
    return new_ev, n_votes
