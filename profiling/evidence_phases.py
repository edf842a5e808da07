"""Where the evidence step's time goes, phase by phase, from a timed scratch copy of the step.

    python profiling/evidence_phases.py [CONFIG] [--passes 2] [--set KEY.PATH=VALUE ...]

Copies ``engine/`` and ``kernels/`` into a temporary folder and, in the copy of
``kernels/evidence_phases.py``, reads the CPU's cycle counter (``kernels.timing.ticks``)
around the numbered phases of ``_step`` and, inside the update loop's ``prange`` body
(``update_existing``), around its four passes per block of rows. The ticks add up in
spare slots of ``istate`` (the copy of ``kernels/evidence_layout.py`` gets a larger
``N_ISTATE``), so nothing else changes. CONFIG's evaluation episodes (default ``configs/shapes_10.yaml``)
then run ``--passes`` times on the fused path in that copy, with its own fresh numba cache:
the copy's evidence kernels compile first (about a minute on the development machine).

Printed per matching step, over all steps of all passes: the wall time of each section
of the step (milliseconds), and for the three passes of the update loop the time of one
core per hypothesis (nanoseconds; the two threads' sum, so their sum over the passes is
about twice the update's wall time per hypothesis on two threads). The timers cost a few
nanoseconds each, a few per block of 512 rows. The section markers are lines of
``kernels/evidence_phases.py``: when a marker moves, this script says which one is missing.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evidence_config import load_evidence_config  # noqa: E402

# (label, kind): "wall" sections are ms per step; "core" passes are ns per hypothesis on one core
PHASES = (
    ("burst trigger, compaction", "wall"),
    ("feature evidence", "wall"),
    ("update of existing hypotheses", "wall"),
    ("  path integration", "core"),
    ("  nearest-node search", "core"),
    ("  evidence change", "core"),
    ("  accumulation", "core"),
    ("sampling new hypotheses", "wall"),
    ("maxima, counts, MLH", "wall"),
)
_N_SLOTS = len(PHASES) + 1  # the last slot counts the hypotheses updated
LAYOUT = "kernels/evidence_layout.py"  # holds N_ISTATE
STEP = "kernels/evidence_phases.py"  # holds the step's phases


def _rep(name, s, old, new):
    if s.count(old) != 1:
        raise ValueError(f"{name}: marker not found exactly once: {old.strip()!r}")
    return s.replace(old, new)


def istate_base(layout: str) -> int:
    """``N_ISTATE`` of ``kernels/evidence_layout.py``'s source (the first spare slot)."""
    m = re.search(r"^N_ISTATE = (\d+)$", layout, re.M)
    if not m:
        raise ValueError(f"{LAYOUT}: no line 'N_ISTATE = <int>'")
    return int(m.group(1))


def patch_step_source(layout: str, src: str) -> tuple[str, str]:
    """``kernels/evidence_layout.py`` and ``kernels/evidence_phases.py`` with the phase timers in;
    raises ``ValueError`` naming a missing marker."""
    base = istate_base(layout)
    slot = [base + i for i in range(_N_SLOTS)]
    lay = _rep(LAYOUT, layout, f"\nN_ISTATE = {base}\n", f"\nN_ISTATE = {base + _N_SLOTS}\n")

    def rep(s, old, new):
        return _rep(STEP, s, old, new)

    s = rep(src, "from .select import kth_smallest_f32\n", "from .select import kth_smallest_f32\nfrom .timing import ticks\n")
    # the step's phases
    s = rep(s, "    # 1. burst trigger, compaction, capacity\n",
            "    _t0 = ticks()\n    # 1. burst trigger, compaction, capacity\n")
    s = rep(s, "    # 2. displacement and the lane passes' parameters\n",
            f"    _t1 = ticks()\n    st.istate[{slot[0]}] += _t1 - _t0\n"
            "    # 2. displacement and the lane passes' parameters\n")
    s = rep(s, "    # 4. evidence of the existing hypotheses\n",
            f"    _t2 = ticks()\n    st.istate[{slot[1]}] += _t2 - _t1\n    # 4. evidence of the existing hypotheses\n")
    s = rep(s, "    blocks = update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj)\n",
            "    blocks = update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj, st)\n")
    s = rep(s, "    # 5. new hypotheses\n",
            f"    _t3 = ticks()\n    st.istate[{slot[2]}] += _t3 - _t2\n    st.istate[{slot[9]}] += n_old\n"
            "    # 5. new hypotheses\n")
    s = rep(s, "    # 6. counters, per-object maxima, MLH\n",
            f"    _t4 = ticks()\n    st.istate[{slot[7]}] += _t4 - _t3\n    # 6. counters, per-object maxima, MLH\n")
    s = rep(s, "    # 7. possible objects and terminal conditions\n",
            f"    st.istate[{slot[8]}] += ticks() - _t4\n    # 7. possible objects and terminal conditions\n")
    # the update loop's passes, per block of rows
    s = rep(s, "def update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj):",
            "def update_existing(model, prm, hyp, phi, path_par, ev_par, n_old, step, n_obj, st):")
    s = rep(s, "    b_max, b_arg, b_cnt, b_slope, b_dead = new_blocks(n_chunks, n_obj)\n",
            "    b_max, b_arg, b_cnt, b_slope, b_dead = new_blocks(n_chunks, n_obj)\n"
            "    _tch = np.zeros((n_chunks, 4), np.int64)\n")
    s = rep(s, "        # 4a. deletion and path integration\n", "        _ta = ticks()\n")
    s = rep(s, "        # 4b. their K nearest nodes\n", "        _tb = ticks()\n        _tch[c, 0] = _tb - _ta\n")
    s = rep(s, "        # 4c. evidence change\n", "        _tc = ticks()\n        _tch[c, 1] = _tc - _tb\n")
    s = rep(s, "        # 4d. accumulation, slope\n", "        _td = ticks()\n        _tch[c, 2] = _td - _tc\n")
    s = rep(s, "        b_dead[c] = dead\n", "        b_dead[c] = dead\n        _tch[c, 3] = ticks() - _td\n")
    s = rep(s, "    return Blocks(b_max, b_arg, b_cnt, b_slope, b_dead)\n",
            "    for c in range(n_chunks):\n" + "".join(f"        st.istate[{slot[3 + i]}] += _tch[c, {i}]\n" for i in range(4))
            + "    return Blocks(b_max, b_arg, b_cnt, b_slope, b_dead)\n")
    return lay, s


# Runs in the scratch copy: prints one JSON object.
_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])  # the copy before the checkout (python -c puts the working folder first)
import numpy as np
from engine.config import load_config
from engine.models.evidence.model import EvidenceExperiment
from engine.data.episodes import build_dataset
from kernels import evidence as kev
from kernels.timing import ticks_per_second

path, overrides, passes, base, n_slots = json.loads(sys.argv[1])
cfg = load_config(path, overrides)
ds = build_dataset(cfg)
ex = EvidenceExperiment(cfg, ds)
ex.warmup()  # the fused path's kernels, on a toy model
ex.train()
acc = np.zeros(n_slots)
steps, seconds = 0, 0.0
for _ in range(passes):
    for e in np.flatnonzero(np.asarray(ds.episode_split) == 1):
        s0, s1 = int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1])
        code, istate, trace, secs = ex.model.run_episode(ds.location[s0:s1], ds.pose_vectors[s0:s1],
                                                         ds.pose_defined[s0:s1], ex.features[s0:s1])
        acc += istate[base:base + n_slots]
        steps += int(istate[kev.IS_MATCHING_STEPS])
        seconds += secs
assert kev.__file__.startswith(sys.argv[2]), kev.__file__
print(json.dumps({"ticks": acc.tolist(), "steps": steps, "seconds": seconds, "tps": ticks_per_second(),
                  "threads": __import__("numba").get_num_threads()}))
"""


def measure(config_path: str, overrides, passes: int = 2, keep=None) -> dict:
    """Run the timed copy; returns ``{"phases": [(label, kind, value)], "ms_per_step", "hypotheses", ...}``."""
    layout, src = (ROOT / LAYOUT).read_text(), (ROOT / STEP).read_text()
    patched_layout, patched = patch_step_source(layout, src)
    base = istate_base(layout)
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="evidence-phases-"))
    try:
        for pkg in ("engine", "kernels"):
            shutil.copytree(ROOT / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        (tmp / LAYOUT).write_text(patched_layout)
        (tmp / STEP).write_text(patched)
        env = dict(os.environ, PYTHONPATH=str(tmp), NUMBA_CACHE_DIR=str(tmp / "numba-cache"))
        arg = json.dumps([str(Path(config_path).resolve()), list(overrides), passes, base, _N_SLOTS])
        p = subprocess.run([sys.executable, "-c", _CHILD, arg, str(tmp)], cwd=str(ROOT), env=env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"the timed copy failed:\n{p.stderr[-4000:]}")
        out = json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    steps = max(out["steps"], 1)
    hyps = out["ticks"][-1]
    phases = []
    for (label, kind), t in zip(PHASES, out["ticks"]):
        sec = t / out["tps"] if out["tps"] else float("nan")
        phases.append((label, kind, sec / steps * 1e3 if kind == "wall" else sec / max(hyps, 1) * 1e9))
    return {"phases": phases, "ms_per_step": out["seconds"] / steps * 1e3, "steps": out["steps"],
            "hypotheses": hyps / steps, "threads": out["threads"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(ROOT / "configs/shapes_10.yaml"))
    p.add_argument("--passes", type=int, default=2, help="passes over the evaluation episodes (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="config override")
    a = p.parse_args(argv)
    if a.passes < 1:
        p.error("--passes must be >= 1")
    cfg = load_evidence_config(a.config, a.set)
    if cfg is None:
        return 2
    r = measure(a.config, a.set, a.passes)
    print(f"evidence step, {r['steps']} matching steps, {r['hypotheses']:.0f} hypotheses per step, "
          f"{r['threads']} threads: {r['ms_per_step']:.3f} ms per step (timed copy)")
    for label, kind, value in r["phases"]:
        unit = "ms per step" if kind == "wall" else "ns per hypothesis, one core"
        print(f"{label:<32} {value:>9.4f} {unit}" if kind == "wall" else f"{label:<32} {value:>9.1f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
