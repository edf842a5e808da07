"""Every kernel that both a fastmath kernel and other code call states its own ``fastmath``.

numba compiles a jitted callee that does not set ``fastmath`` with its first caller's flags
and keeps that build for every later call of the same signature, from Python or from any
other kernel, and in the on-disk cache for later processes. A helper called from a fastmath
episode kernel and from the simulation, a test or another kernel would then compute
differently depending on which compiled first (measured: a dot product's last digits; the
voting kernels once gave an evidence 1 ulp off, see ``kernels/voting.py``). So such a helper
must say ``fastmath=False`` (or the fastmath set) itself.

A static check over ``kernels/``: the call graph of the ``@njit`` functions (an
``inline="always"`` function and an ``@overload`` take their caller's flags, by design), the
fastmath kernels as one kind of root, and every kernel named in ``engine/``, ``tests/`` or
``profiling/`` as the other (called from Python, or through it).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flag(decorator: str) -> str | None:
    """'fast', 'plain', 'unset', 'inline' (takes the caller's flags) or None (not a kernel)."""
    if not decorator.startswith(("njit", "numba.njit", "overload")):
        return None
    if decorator.startswith("overload") or "inline='always'" in decorator or 'inline="always"' in decorator:
        return "inline"
    if "FASTMATH" in decorator or "fastmath=True" in decorator or "fastmath={" in decorator:
        return "fast"
    if "fastmath=False" in decorator or "_PLAIN" in decorator:
        return "plain"
    return "unset"


def kernel_graph():
    """``({name: (file, flag)}, {caller: {callees}})`` of the kernels in ``kernels/``."""
    defs, calls = {}, defaultdict(set)
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            flags = [f for f in (_flag(ast.unparse(d)) for d in node.decorator_list) if f]
            if not flags:
                continue
            defs[node.name] = (path.name, flags[0])
            for sub in ast.walk(node):
                if isinstance(sub, ast.Call):
                    fn = sub.func
                    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                    if name:
                        calls[node.name].add(name)
    return defs, {k: {c for c in v if c in defs and c != k} for k, v in calls.items()}


def mixed_kernels():
    """Kernels without a fastmath setting of their own that run in both kinds of context."""
    defs, calls = kernel_graph()
    called = set()  # every name called in Python code outside kernels/
    for d in ("engine", "tests", "profiling"):
        for p in (ROOT / d).rglob("*.py"):
            called.update(re.findall(r"\b(\w+)\(", p.read_text()))
    contexts = defaultdict(set)
    seen = set()

    def visit(fn, ctx):
        if (fn, ctx) in seen:
            return
        seen.add((fn, ctx))
        flag = defs[fn][1]
        own = ctx if flag in ("unset", "inline") else flag
        contexts[fn].add(own)
        for callee in calls.get(fn, ()):
            visit(callee, own)

    for name, (_, flag) in defs.items():
        if flag == "fast":
            visit(name, "fast")
        if name in called:
            visit(name, "fast" if flag == "fast" else "plain")
    return sorted(f"{defs[n][0]}:{n}" for n, c in contexts.items() if defs[n][1] == "unset" and len(c) > 1)


def test_the_graph_sees_the_kernels():
    """The check is only as good as its graph: it finds the episode kernels and their helpers."""
    defs, calls = kernel_graph()
    assert defs["evidence_episode"][1] == "fast" and defs["exchange_votes"][1] == "plain"
    assert "snap_move" in calls["surface_walk_kernel"] or any("snap_move" in calls[c] for c in calls["surface_walk_kernel"])
    assert defs["exchange_body"][1] == "inline"


def test_no_kernel_takes_its_fastmath_from_whoever_compiles_it_first():
    assert mixed_kernels() == []
