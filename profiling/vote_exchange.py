"""Where the vote exchange's time goes: its inputs captured from real episodes, timed part by part.

    python profiling/vote_exchange.py [CONFIG] [--episodes 6] [--steps 6,16] [--repeats 5] [--set KEY.PATH=VALUE ...]

CONFIG is an evidence config with several modules that vote (default
``configs/shapes_10_5lm_noise.yaml``). Each of ``--episodes`` evaluation episodes, spread
evenly over them (they come object by object), runs to each step S of ``--steps`` (its observations cut after S steps), and the modules'
hypotheses then (after step S's own exchange) are the input of one more exchange,
``kernels.voting.exchange_votes``: every module's votes from its evidences, moved into each
receiver's position, and each receiver's rows given the best of their three nearest votes.
That is the serial form of what the episode kernel runs with its loops in parallel, so the
figures are one core's. An episode that ends before S gives no input for S.

Printed per step S (means over the inputs, each the best of ``--repeats`` after one untimed call): the rows of all
modules, the votes sent, the exchange's time, and its parts, each timed on its own with the
same kernels: selecting the votes, pooling each receiver's votes (moved into its position)
and grouping its rows by object, the KD-trees over each (receiver, object) pool, and the
three-nearest searches of the receiver's rows, in row order (as the exchange does) and in
the order of their cells of ``max_match_distance`` (what a spatial order of the queries
would be worth, before the cost of sorting them).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evidence_config import load_evidence_config  # noqa: E402

PARTS = ("exchange", "selecting votes", "pooling, grouping", "tree builds", "searches, row order",
         "searches, cell order")


def capture(cfg, n_episodes: int, steps: list[int]) -> tuple[list[dict], object]:
    """The exchange inputs: one dict of arrays per (episode, step) reached, and the
    ``kernels.voting.Receiving`` of the run's settings."""
    from engine.data.dataset import EVAL
    from engine.run import registry
    from kernels import evidence as kev
    from kernels import voting as kv
    from kernels.evidence_voting import FV_THRESHOLD, FV_WEIGHT, IV_MODE

    ex = registry.for_config(cfg).build(cfg)
    ex.warmup()
    ex.train()
    model = ex.model
    fp = model.modules[0].fparams
    rcv = kv.receiving(model.vp.fvote[FV_WEIGHT], fp[kev.FP_PAST] + fp[kev.FP_PRESENT] == np.float32(1.0),
                       fp[kev.FP_MMD], model.vp.ivote[IV_MODE])
    states = []
    rows = ex._episode_rows(EVAL)
    # spread over the evaluation episodes (they come object by object)
    picked = np.unique(np.linspace(0, len(rows) - 1, min(n_episodes, len(rows))).round().astype(np.int64))
    for e in rows[picked]:
        for s in steps:
            cut = [ex._steps(m, e, s) for m in range(model.n_modules)]
            if len(cut[0][0]) < s:
                continue  # a shorter walk
            code, st, _, _ = model.run_episode(cut)
            if code in (kev.MATCH, kev.NO_MATCH) and int(st.istate[0, kev.IS_MATCHING_STEPS]) < s:
                continue  # it ended before step s
            hyp = model._hyp  # the stacked hypotheses the episode left (ModulesModel keeps them)
            states.append({"step": s, "obj": hyp.obj.copy(), "loc": hyp.loc.copy(), "rot": hyp.rot.copy(),
                           "ev": hyp.ev.copy(), "n_rows": st.istate[:, kev.IS_N_HYP].copy(),
                           "sensed": np.stack([c[0][s - 1] for c in cut]).astype(np.float32),
                           "conn": model.vp.conn.copy(), "threshold": float(model.vp.fvote[FV_THRESHOLD])})
    return states, rcv


def _best(fn, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``fn``, after one untimed call (the first call
    of a kernel with new argument types loads it from the cache)."""
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def time_parts(s: dict, rcv, repeats: int) -> dict:
    """Seconds of the exchange and of each of its parts on input ``s`` (best of ``repeats``),
    with the rows and votes."""
    from kernels import voting as kv
    from kernels.kdtree import build_tree, knn_rows

    obj, loc, rot, n_rows, sensed, conn = s["obj"], s["loc"], s["rot"], s["n_rows"], s["sensed"], s["conn"]
    n_mod = obj.shape[0]
    sends = np.ones(n_mod, np.uint8)
    out = {}
    out["exchange"] = _best(lambda: kv.exchange_votes(obj, loc, rot, s["ev"].copy(), n_rows, sensed, sends, conn,
                                                      s["threshold"], rcv), repeats)
    ev = s["ev"]
    n_obj = int(max(obj[m, :n_rows[m]].max(initial=-1) for m in range(n_mod))) + 1
    threshold = np.float64(s["threshold"])

    def select():
        ranges = [kv.evidence_range(obj[m], ev[m], n_rows[m]) for m in range(n_mod)]
        counts = np.array([kv.count_in_range(obj[m], ev[m], n_rows[m], threshold, ranges[m]) for m in range(n_mod)],
                          np.int64)
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(start[-1])
        votes = kv.VoteOut(np.empty(n, np.int32), np.empty(n, np.int32), np.empty((n, 3), np.float32),
                           np.empty((n, 9), np.float32), np.empty(n, np.float32))
        for m in range(n_mod):
            kv.select_in_range(obj[m], loc[m], rot[m], ev[m], n_rows[m], threshold, m, votes, start[m], ranges[m])
        return counts, start, votes

    out["selecting votes"] = _best(select, repeats)
    counts, start, votes = select()
    pooled = (start, votes.obj, votes.loc, votes.rot, votes.conf)
    receivers = []

    def pool():
        receivers.clear()
        for r in range(n_mod):
            c = int(sum(counts[x] for x in range(n_mod) if conn[r, x]))
            p_loc, p_conf = np.empty((c, 3), np.float32), np.empty(c, np.float32)
            v_at, h_at = np.zeros(n_obj + 1, np.int64), np.zeros(n_obj + 1, np.int64)
            h_order = np.empty(n_rows[r], np.int64)
            if c:
                kv.pool_receiver(r, sensed, sends, conn, pooled, rcv.mode, n_obj, p_loc, p_conf, 0, v_at)
                kv.group_by_object(obj[r], n_rows[r], n_obj, h_order, h_at)
            receivers.append((p_loc, v_at, h_order, h_at))

    out["pooling, grouping"] = _best(pool, repeats)
    pool()
    tasks = []
    for r, (p_loc, v_at, h_order, h_at) in enumerate(receivers):
        for o in range(n_obj):
            a, e, ha, he = v_at[o], v_at[o + 1], h_at[o], h_at[o + 1]
            if a < e and ha < he:
                q = np.ascontiguousarray(loc[r][h_order[ha:he]])
                cell = np.floor(q / rcv.mmd).astype(np.int64)
                tasks.append((np.ascontiguousarray(p_loc[a:e]), q,
                              np.ascontiguousarray(q[np.lexsort((cell[:, 0], cell[:, 1], cell[:, 2]))])))
    out["tree builds"] = _best(lambda: [build_tree(p) for p, _, _ in tasks], repeats)
    trees = [build_tree(p) for p, _, _ in tasks]
    r2 = np.float32(rcv.mmd * rcv.mmd)

    def search(which):
        for tree, (p, q_rows, q_cells) in zip(trees, tasks):
            q = q_rows if which == 0 else q_cells
            k = min(kv.VOTE_K, len(p))
            knn_rows(tree, q, 0, len(q), k, r2, np.empty((len(q), k), np.int64), np.empty((len(q), k), np.float32),
                     np.empty(0, np.int64))

    out["searches, row order"] = _best(lambda: search(0), repeats)
    out["searches, cell order"] = _best(lambda: search(1), repeats)
    out["rows"] = int(n_rows.sum())
    out["votes"] = int(counts.sum())
    out["queries"] = int(sum(len(q) for _, q, _ in tasks))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs/shapes_10_5lm_noise.yaml"))
    p.add_argument("--episodes", type=int, default=6, help="evaluation episodes to capture from, spread over them (default 6)")
    p.add_argument("--steps", default="6,16", help="the steps after which to capture, comma-separated (default 6,16)")
    p.add_argument("--repeats", type=int, default=5, help="timings per part, the best kept (default 5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    a = p.parse_args(argv)
    cfg = load_evidence_config(a.config, a.overrides)
    if cfg is None:
        return 2
    if cfg.evidence.n_modules < 2 or cfg.evidence.voting is None:
        print(f"error: {a.config}: no vote exchange to time: it needs evidence.n_modules of 2 or more (it is "
              f"{cfg.evidence.n_modules}) and voting on (it is {cfg.evidence.voting!r})", file=sys.stderr)
        return 2
    try:
        steps = sorted({int(x) for x in a.steps.split(",")})
    except ValueError:
        steps = []
    if not steps or steps[0] < 1 or a.episodes < 1 or a.repeats < 1:
        print("error: --steps must be positive integers, --episodes and --repeats at least 1", file=sys.stderr)
        return 2
    states, rcv = capture(cfg, a.episodes, steps)
    print(f"vote exchange, {cfg.evidence.n_modules} modules, one core (best of {a.repeats}), means over the "
          f"inputs captured:")
    for s in steps:
        got = [time_parts(x, rcv, a.repeats) for x in states if x["step"] == s]
        if not got:
            print(f"after step {s}: no episode reached it")
            continue
        mean = {k: float(np.mean([g[k] for g in got])) for k in got[0]}
        print(f"after step {s} ({len(got)} inputs): {mean['rows']:.0f} rows, {mean['votes']:.0f} votes, "
              f"{mean['queries']:.0f} searches")
        for k in PARTS:
            print(f"  {k:<22} {mean[k] * 1e3:9.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
