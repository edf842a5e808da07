"""``bench --suite evidence``'s ``modules`` rows: several evidence modules that vote, on the ten
built-in objects, for 1, 2, 5 and 10 modules (``engine.models.evidence.modules``).

One dataset is simulated with as many sensor patches as the largest count (tbp.monty's
noise on the evaluation steps, ``eval_rotations`` random rotations per object) and one
module per patch is trained; a row with ``n`` modules uses the first ``n`` (the first five
are tbp.monty's 5-patch layout), all-to-all voting, and ends an episode when
``min(3, (n + 1) // 2)`` modules matched (tbp.monty's 5-module benchmarks: 3 of 5).

Per row two passes over the evaluation episodes:

- the episodes as they run (``accuracy``, ``mean_steps``);
- the cost: every episode run for exactly ``cost_steps`` matching steps (no terminal check
  before), fastest of ``repeats`` runs per episode, the rows in turn episode by episode
  (so that drift hits every row alike): ``matching_step_s`` (kernel seconds per
  step of all modules and their votes) and ``module_step_s`` (that over the modules), the
  same steps for every row, so rows compare step for step.
"""

from __future__ import annotations

import dataclasses
import logging
import time

log = logging.getLogger(__name__)

MODULE_COUNTS = (1, 2, 5, 10)


def _min_match(n: int) -> int:
    return min(3, (n + 1) // 2)


def run_module_rows(row_keys, counts=MODULE_COUNTS, n_points: int = 20_000, train_steps: int = 400,
                    eval_rotations: int = 2, eval_steps: int = 100, cost_steps: int = 25, repeats: int = 2,
                    seed: int = 0) -> list[dict]:
    """The ``modules`` rows (keys ``row_keys``); see the module notes."""
    import numpy as np

    from engine.data.dataset import EVAL
    from engine.data.sensor import Noise, builtin_surfaces, simulate
    from engine.models.evidence.model import EvidenceModel, matching_features
    from engine.models.evidence.modules import ModulesModel, compile_voting_kernel, sensor_features
    from engine.models.evidence.settings import EvidenceSettings

    counts = [int(n) for n in counts]
    top = max(counts)
    compile_s = compile_voting_kernel()
    surfaces = builtin_surfaces(n_points=n_points, seed=seed)
    ds = simulate(surfaces, train_steps=train_steps, eval_rotations=eval_rotations, eval_steps=eval_steps,
                  noise=Noise(), seed=seed, patches=top)
    _, names = matching_features(ds)
    feats = sensor_features(ds)
    base = EvidenceSettings(updater="burst", graph="grid", max_nneighbors=10, n_modules=top, min_lms_match=1)
    trained = ModulesModel(base, names, top, max_eval_steps=eval_steps)
    t0 = time.perf_counter()
    train_rows = np.flatnonzero(ds.episode_split == 0)
    for e in train_rows:
        s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
        label = str(ds.object_names[int(ds.episode_object[e])])
        for m, mod in enumerate(trained.modules):
            p = ds.sensor(m)
            mod.learn(label, p.location[s0:s1], p.pose_vectors[s0:s1], p.pose_defined[s0:s1], feats[m][s0:s1],
                      ds.episode_rotation[e])
    arrays = [mod.model_arrays() for mod in trained.modules]
    train_s = time.perf_counter() - t0
    objects = trained.object_names
    eval_rows = np.flatnonzero(ds.episode_split == EVAL)

    def steps(m, e):
        s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
        p = ds.sensor(m)
        return p.location[s0:s1], p.pose_vectors[s0:s1], p.pose_defined[s0:s1], feats[m][s0:s1]

    def model_of(settings, n, max_steps):
        mm = ModulesModel(settings, names, n, max_eval_steps=max_steps)
        mm.modules = [EvidenceModel.from_arrays(settings, names, arrays[m], objects, max_eval_steps=max_steps)
                      for m in range(n)]
        return mm

    rows = []
    costs = {}
    for n in counts:
        row = {k: None for k in row_keys}
        s = dataclasses.replace(base, n_modules=n, min_lms_match=_min_match(n), voting="all" if n > 1 else None)
        real = model_of(s, n, eval_steps)
        correct = 0
        n_steps = 0
        for e in eval_rows:
            code, st, _, _ = real.run_episode([steps(m, e) for m in range(n)])
            n_steps += int(st.istate[0, 3])
            target = objects.index(str(ds.object_names[int(ds.episode_object[e])]))
            det = [int(st.istate[m, 7]) for m in range(n) if int(st.istate[m, 6]) == 1]
            if code == 1 and det and max(set(det), key=det.count) == target:
                correct += 1
        costs[n] = model_of(dataclasses.replace(s, min_eval_steps=10 * cost_steps), n, cost_steps)
        row.update({"suite": "evidence", "case": "modules", "implementation": f"engine-{n}lm", "n_modules": n,
                    "n_objects": len(objects), "updater": "burst", "n_points": n_points, "train_steps": train_steps,
                    "eval_rotations": eval_rotations, "eval_steps": eval_steps, "n_eval_episodes": len(eval_rows),
                    "accuracy": correct / len(eval_rows), "mean_steps": n_steps / len(eval_rows),
                    "matching_steps": cost_steps, "repeats": repeats, "train_s": train_s, "compile_s": compile_s})
        rows.append(row)
    # the cost pass, the rows side by side: episode by episode, every module count in turn, so
    # that the machine's drift (2 noisy cores) hits every row alike
    secs = dict.fromkeys(counts, 0.0)
    for e in eval_rows:
        for n in counts:
            best = None
            for _ in range(repeats):
                _, st, _, sec = costs[n].run_episode([steps(m, e) for m in range(n)])
                best = sec if best is None else min(best, sec)
            secs[n] += best
    for n, row in zip(counts, rows):
        step_s = secs[n] / (cost_steps * len(eval_rows))
        row.update({"matching_step_s": step_s, "module_step_s": step_s / n})
        log.info("%d modules: %.3f ms per step, accuracy %.2f, %.1f steps", n, step_s * 1e3, row["accuracy"],
                 row["mean_steps"])
    return rows


def format_modules(rows) -> list[str]:
    """The lines the table gives the ``modules`` rows (none without such rows)."""
    rows = [r for r in rows if r.get("case") == "modules"]
    if not rows:
        return []
    one = next((r for r in rows if r["n_modules"] == 1), None)
    lines = ["", f"{'modules':>7} {'ms/step':>8} {'ms/module-step':>14} {'x 1 module':>10} {'accuracy':>8} "
                 f"{'steps':>6}"]
    for r in rows:
        ratio = "-" if one is None else f"{r['matching_step_s'] / one['matching_step_s']:.2f}"
        lines.append(f"{r['n_modules']:>7} {r['matching_step_s'] * 1e3:>8.3f} {r['module_step_s'] * 1e3:>14.3f} "
                     f"{ratio:>10} {r['accuracy']:>8.2f} {r['mean_steps']:>6.1f}")
    r0 = rows[0]
    lines.append(f"Several modules that vote: the {r0['n_objects']} built-in objects with noise, "
                 f"{r0['n_eval_episodes']} episodes, one module per patch, all-to-all voting, a match when "
                 f"min(3, (n + 1) // 2) modules matched; ms/step over the first {r0['matching_steps']} steps of "
                 f"every episode (fastest of {r0['repeats']}), votes included.")
    return lines
