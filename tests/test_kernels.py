"""Rules for the ``kernels`` package as a whole: it imports only NumPy, numba, llvmlite and the
standard library (never ``engine``), and importing it compiles nothing.

The kernels themselves are tested one module each: ``test_distance.py``, ``test_matching.py``,
``test_loop.py``, ``test_store.py``, ``test_kdtree.py``, ``test_geometry.py``, ``test_graph.py``, ...
against the references in ``tests/naive/``."""

import ast
import pathlib
import sys

import pytest

from kernel_helpers import run_python, LIST_DISPATCHERS

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS_DIR = ROOT / "kernels"
NAIVE_DIR = ROOT / "tests" / "naive"


def kernel_sources():
    files = sorted(KERNELS_DIR.glob("*.py"))
    assert files
    return files


@pytest.mark.parametrize("path", kernel_sources(), ids=lambda p: p.name)
def test_kernels_import_only_numpy_numba_llvmlite_and_the_standard_library(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: inside kernels
                continue
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top != "engine", f"{path.name}:{node.lineno} imports {name}"
            # llvmlite is numba's own code generator (kernels.timing emits an LLVM intrinsic)
            assert top in ("numpy", "numba", "llvmlite") or top in sys.stdlib_module_names, \
                f"{path.name}:{node.lineno} imports {name}"


def test_importing_kernels_compiles_nothing(tmp_path):
    cache = tmp_path / "numba_cache"
    cache.mkdir()
    got = run_python(LIST_DISPATCHERS + """
    print(json.dumps({name: [str(s) for s in d.signatures] for name, d in dispatchers()}))
    """, cache)
    assert len(got) >= 20  # the kernels of distance, matching and loop at least
    assert "kernels.distance.pairwise_distances" in got and "kernels.loop.run_experiment_grouped" in got
    assert {name: sigs for name, sigs in got.items() if sigs} == {}
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # and cached nothing (numba makes empty folders)


def naive_sources():
    files = sorted(NAIVE_DIR.glob("*.py"))
    assert files
    return files


@pytest.mark.parametrize("path", naive_sources(), ids=lambda p: p.name)
def test_naive_references_import_neither_kernels_nor_engine(path):
    # A reference that used the code under test could inherit its mistakes.
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in ("kernels", "engine"), f"{path.name}:{node.lineno} imports {name}"
