"""Record ``torch.topk``'s CPU output on tie-heavy counts, the reference for ``kernels.topk_order``.

tbp.monty's grid model keeps ``counts.topk(max_nodes)`` voxels; which tied voxels it keeps,
and their order, is torch's (libstdc++'s ``nth_element`` and ``sort``). CI has no torch, so
this script records torch's answers once into ``tests/data/torch_topk_cases.npz`` (plain
int64 arrays, no pickle) and ``tests/test_topk_order.py`` checks our replay against them.
Run it with a Python that has torch (the tbp.monty venv, see ``tbp_monty_step.py``)::

    /tmp/venvmonty/bin/python profiling/torch_topk_cases.py [--out tests/data/torch_topk_cases.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def cases(seed: int = 0):
    """(counts int64 (n,), k) pairs: random counts with few distinct values (many ties), sorted
    and reversed inputs, an organ pipe and a sawtooth; always 64 k > n (torch's branch that the
    grid model takes)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (1, 2, 3, 4, 5, 16, 17, 18, 40, 100, 300, 1000, 2500):
        for hi in (1, 3, 30):
            c = rng.integers(1, hi + 1, n).astype(np.int64)
            for k in sorted({1, max(1, n // 2), max(1, n - 1), n}):
                if 64 * k > n:
                    out.append((c, k))
    for n in (200, 2100):
        a = np.arange(n, dtype=np.int64)
        for c in (np.sort(rng.integers(1, 5, n)), np.sort(rng.integers(1, 5, n))[::-1].copy(),
                  np.minimum(a, n - a), a % 7):
            out.append((np.asarray(c, np.int64), min(n, 2000)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" /
                   "torch_topk_cases.npz")
    a = p.parse_args(argv)
    import torch

    cs = cases()
    counts = np.concatenate([c for c, _ in cs])
    offsets = np.cumsum([0] + [len(c) for c, _ in cs]).astype(np.int64)
    ks = np.array([k for _, k in cs], np.int64)
    picked = np.concatenate([torch.from_numpy(c).topk(k).indices.numpy() for c, k in cs]).astype(np.int64)
    np.savez_compressed(a.out, counts=counts, offsets=offsets, k=ks, picked=picked,
                        torch_version=np.array(torch.__version__))
    print(f"{len(cs)} cases, {len(counts)} counts -> {a.out} (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
