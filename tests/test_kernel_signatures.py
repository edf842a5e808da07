"""One compiled signature for data in memory and memory-mapped: mapped datasets are copy-on-write."""

import numba
import numpy as np

from engine.data import sources
from engine.data.dataset import read_dataset, write_dataset


def test_compressed_and_memory_mapped_datasets_give_the_kernels_one_type(tmp_path, root):
    """A read-only map would be another numba type than the same data loaded (a second compile
    of every kernel the data reaches): the mapped arrays are copy-on-write, typed as in memory."""
    ds = read_dataset(root / "configs/data/evidence_example.npz")
    write_dataset(tmp_path / "plain.npz", ds)
    write_dataset(tmp_path / "packed.npz", ds, compress=True)
    mapped, loaded = read_dataset(tmp_path / "plain.npz"), read_dataset(tmp_path / "packed.npz")
    assert isinstance(mapped.location, np.memmap) and not isinstance(loaded.location, np.memmap)
    for name in ("location", "pose_vectors", "pose_defined", "curvature", "features"):
        assert numba.typeof(getattr(mapped, name)) == numba.typeof(getattr(loaded, name)), name
    a = sources.from_dataset(str(tmp_path / "plain.npz"))
    b = sources.from_dataset(str(tmp_path / "packed.npz"))
    c = sources.cube(points_per_edge=3)  # a synthetic source: arrays made in memory
    for name in ("location", "features"):
        assert numba.typeof(getattr(a, name)) == numba.typeof(getattr(b, name)) == numba.typeof(getattr(c, name))
