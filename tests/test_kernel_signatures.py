"""One compiled signature for data in memory and memory-mapped: the kernels' inputs are read-only views."""

import numba
import numpy as np

from engine.data import sources
from engine.data.dataset import read_dataset, write_dataset
from engine.models.evidence import graph_memory
from kernels import evidence_layout as lay


def test_read_only_is_a_view_not_a_copy():
    a = np.arange(6, dtype=np.float32)
    v = lay.read_only(a)
    assert not v.flags.writeable and np.shares_memory(a, v) and a.flags.writeable
    assert lay.read_only(v) is v


def test_observations_and_models_are_read_only_whatever_their_source():
    rng = np.random.default_rng(0)
    T = 5
    writable = lay.observations(rng.normal(size=(T, 3)), rng.normal(size=(T, 9)), np.ones(T, bool),
                                rng.normal(size=(T, 2)), rng.normal(size=T))
    frozen = [lay.read_only(np.ascontiguousarray(a)) for a in writable]
    again = lay.observations(*frozen)
    assert all(not a.flags.writeable for a in writable)
    assert numba.typeof(writable) == numba.typeof(again)
    m = lay.object_models(np.zeros((2, 3)), np.zeros((2, 9)), np.zeros(2), np.zeros((2, 1)), np.array([0, 2]),
                          np.zeros((1, 3)), np.array([[1, 1, 1, 0]]), np.array([0, 2]), np.arange(2), np.zeros(2))
    assert all(not a.flags.writeable for a in m)


def test_compressed_and_memory_mapped_datasets_give_the_kernels_one_type(tmp_path, root):
    ds = read_dataset(root / "configs/data/evidence_example.npz")
    write_dataset(tmp_path / "plain.npz", ds)
    write_dataset(tmp_path / "packed.npz", ds, compress=True)
    mapped, loaded = read_dataset(tmp_path / "plain.npz"), read_dataset(tmp_path / "packed.npz")
    assert not mapped.location.flags.writeable and loaded.location.flags.writeable  # the files differ ...
    a = sources.from_dataset(str(tmp_path / "plain.npz"))
    b = sources.from_dataset(str(tmp_path / "packed.npz"))
    for name in ("location", "features"):  # ... the kernels' arrays do not
        assert numba.typeof(getattr(a, name)) == numba.typeof(getattr(b, name))
        assert not getattr(b, name).flags.writeable
    assert np.array_equal(a.location, b.location)
    x = graph_memory._check_array("location", loaded.location[:4], np.float32, (None, 3))
    y = graph_memory._check_array("location", mapped.location[:4], np.float32, (None, 3))
    assert numba.typeof(x) == numba.typeof(y)


def test_synthetic_sources_are_read_only_too():
    obs = sources.cube(points_per_edge=3)
    assert not obs.location.flags.writeable and not obs.features.flags.writeable
