"""What a config will allocate, estimated before anything is built, and the check that it fits.

``estimate(cfg)`` adds up the large arrays a run of the config holds at its peak: the
observations (generated, simulated or loaded), the sensor simulation's surfaces and
neighbour lists, the model (store, KD-tree, object graphs and node grid), the evidence
model's hypothesis rows and per-step scratch, and the per-episode results. The sizes come
from the config alone (and, for a recorded dataset, from the file's size; for a mesh
folder, from the number of mesh files), so the check costs milliseconds. It is an
estimate: it is meant to be within a small factor of the peak, and errs on the high side
where the peak depends on the data (the evidence model's hypothesis count).

``check(cfg)`` raises a :class:`~engine.errors.UserError` when the estimate exceeds the
memory available now (``MemAvailable`` of ``/proc/meminfo``, else physical pages x page
size from ``os.sysconf``), naming both figures; ``run``, ``validate`` and ``profile`` call
it before building anything, and the sensor simulation (also behind ``make-dataset``)
calls :func:`check_bytes` with its own part.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from engine.errors import UserError

__all__ = ["Estimate", "available_bytes", "check", "check_bytes", "estimate", "format_bytes",
           "simulation_bytes"]

#: tbp.monty's 14 training rotations: training episodes per object of the sensor simulation.
TRAINING_ROTATIONS = 14
#: Surface fit neighbourhood (m) and object size (m) of the sensor simulation
#: (``engine.data.sensor.sample_surface``, ``engine.data.shapes.SIZE``).
FIT_RADIUS = 0.0075
OBJECT_SIZE = 0.1
#: Fraction of an object's surface samples within FIT_RADIUS of one sample: a 7.5 mm disc
#: over the ~0.03 m^2 surface of a 10 cm object, rounded up for flat and thin objects.
NEIGHBOUR_FRACTION = 0.01
#: Python objects per simulated episode (arrays, tuples, list entries): ~1 KB.
EPISODE_OVERHEAD = 1024


@dataclass
class Estimate:
    """Bytes a run will hold at its peak, by part (largest first in :meth:`describe`)."""

    parts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, nbytes: float) -> None:
        self.parts[name] = self.parts.get(name, 0) + int(max(0.0, nbytes))

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self, n: int = 3) -> str:
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {format_bytes(b)}" for name, b in top if b > 0)


def format_bytes(n: float) -> str:
    """``n`` bytes as ``'12.3 GB'`` (decimal units; huge estimates in powers of ten)."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            if n >= 1e3 * 1e12:
                return f"{n:.1e} B"
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def available_bytes() -> int | None:
    """Memory available to a new allocation now: ``MemAvailable`` of /proc/meminfo, else
    the physical memory (``os.sysconf``: SC_AVPHYS_PAGES, then SC_PHYS_PAGES, x page size);
    None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            pages = os.sysconf(name)
            size = os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
        if pages > 0 and size > 0:
            return int(pages) * int(size)
    return None


# --------------------------------------------------------------------------- parts


def simulation_bytes(params: dict, n_objects: int, n_features: int = 0) -> Estimate:
    """The sensor simulation (``engine.data.episodes.build_dataset`` on shapes): every
    object's surface (samples, fitted geometry, KD-tree: ~100 B per sample, kept), the
    curvature fit's neighbour lists (8 B per neighbour, ~1% of the samples each, while one
    object is fitted), the walks and the dataset they make (57 B + 4 B per feature per step,
    held twice while the episodes are concatenated, plus float64 temporaries of the longest
    episode) and the per-episode Python objects."""
    est = Estimate()
    n_obj = int(n_objects)
    p = int(params["n_points"])
    train, evals = int(params["train_steps"]), int(params["eval_steps"])
    rotations = int(params["eval_rotations"])
    est.add("surface samples", n_obj * p * 100.0 + 2 * p * 32.0)
    est.add("surface fit neighbour lists", p * min(p, math.ceil(p * NEIGHBOUR_FRACTION)) * 8.0)
    steps = n_obj * (TRAINING_ROTATIONS * train + rotations * evals)
    per_step = 57 + 4 * n_features
    est.add("simulated observations", steps * (2.0 * per_step + 8.0) + max(train, evals) * 300.0)
    est.add("simulated episodes", n_obj * (TRAINING_ROTATIONS + rotations) * (EPISODE_OVERHEAD + 128.0))
    return est


def _hypothesis_row_bytes() -> int:
    from kernels.evidence_layout import hypothesis_row_bytes

    return hypothesis_row_bytes()


def _evidence_model(est: Estimate, cfg, n_obj: int, train_steps_per_object: int, n_features: int,
                    n_eval_episodes: int, eval_steps: int) -> None:
    """The evidence model: object graphs and node grid, hypothesis rows (as the evidence
    benchmark estimates them: classic every node x pose, burst its sampling bound; doubled
    while the arrays grow), per-step scratch of the nearest-node search, results."""
    s = cfg.evidence
    if s.graph == "grid":
        nodes_per_object = min(int(s.max_nodes), train_steps_per_object, int(s.voxels_per_dim) ** 3)
        # the voxel grid while learning: one voxel per training observation at most
        est.add("object graphs", n_obj * min(train_steps_per_object, int(s.voxels_per_dim) ** 3) * 80.0)
    else:
        nodes_per_object = train_steps_per_object
    nodes = n_obj * nodes_per_object
    k = int(s.max_nneighbors)
    n_feat = n_features + 2
    est.add("object graphs", nodes * (52.0 + 4 * n_feat))
    # node grid: cells half the match radius wide over an object (10 cm unless recorded), and
    # per occupied cell a list of at least k candidates (int32 node, float32 distance and the
    # int32 code of both the search reads)
    cells_per_axis = min(OBJECT_SIZE / (float(s.max_match_distance) / 2.0) + 2.0, 1e10)
    cells = n_obj * cells_per_axis ** 3
    est.add("node grid", cells * 16.0 + nodes * 12.0 * (k + 1))
    classic = nodes * max(2, int(s.umbilical_num_poses))
    rows = classic if s.updater == "classic" else min(classic, 4 * int(2 * nodes * s.sampling_multiplier + 16))
    est.add("hypotheses", 2.0 * rows * _hypothesis_row_bytes())
    threads = _threads()
    block = 512  # kernels.evidence_phases._CHUNK: hypotheses per parallel work item
    est.add("search scratch", threads * (block * (4.0 * k + 64.0) + k * 16 * 8.0))
    est.add("results", n_eval_episodes * (eval_steps * (n_obj * 4.0 + 64.0) + 512.0))


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1))
    except ValueError:
        return os.cpu_count() or 1


def _dataset_bytes(path: str) -> tuple[int, bool]:
    """(bytes of the arrays in a recorded dataset, whether reading it loads them into
    memory): the members' uncompressed sizes of a .npz (compressed members are loaded),
    the files of an npy-dir folder (memory-mapped)."""
    import zipfile

    if os.path.isdir(path):
        total = 0
        with os.scandir(path) as it:
            for e in it:
                if e.is_file():
                    total += e.stat().st_size
        return total, False
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            return sum(i.file_size for i in infos), any(i.compress_type != zipfile.ZIP_STORED for i in infos)
    except (OSError, zipfile.BadZipFile, ValueError):
        return 0, False  # the reader says what is wrong with the file


def _similarity(est: Estimate, cfg) -> None:
    """The similarity and nearest models: observations, the store (every training step of
    every training epoch, (3 + F) values each), the KD-tree, the per-episode results."""
    src, p = cfg.data.source, cfg.data.params
    exp = cfg.experiment
    n_feat = 1
    if src == "seed_spiral":
        t_train = int(p["size"])
        est.add("observations", t_train * 48.0)
    elif src == "cube":
        e = int(p["points_per_edge"])
        t_train = 6 * e * e
        est.add("observations", e ** 3 * 3 * 8 * 4.0 + t_train * 32.0)
    elif src == "sphere":
        t_train = int(p["n_points"])
        est.add("observations", t_train * 120.0)
    elif src == "random":
        n_feat = int(p["n_features"])
        t_train = int(p["n_points"])
        est.add("observations", 2 * t_train * (12 + 4 * n_feat) * 2.0)
    else:  # dataset: the observation arrays are at most the file's arrays
        size, loaded = _dataset_bytes(p["path"])
        est.add("observations", size if loaded else 0)
        # a store row ((3 + F) float32) is never larger than a recorded step's location + features
        t_train = size // 16
    steps_train = min(t_train, exp.max_train_steps) if exp.do_train else 0
    epochs_train = exp.n_train_epochs if exp.do_train else 0
    epochs_eval = exp.n_eval_epochs if exp.do_eval else 0
    stored = steps_train * epochs_train
    width = 2 if cfg.model.storage == "float16" else 4
    est.add("store", stored * (3 + n_feat) * width)
    if cfg.model.type == "nearest":
        est.add("KD-tree", stored * 24.0 + cfg.model.k * 16.0 * _threads())
    est.add("results", (epochs_train + epochs_eval) * 64.0 + cfg.execution.chunk_size * 8.0 * _threads())


def _mesh_count(folder: str) -> int:
    from engine.data.shapes import mesh_files

    try:
        return len(mesh_files(folder))
    except UserError:
        return 0  # the simulation says what is wrong with the folder


def estimate(cfg) -> Estimate:
    """The estimated peak allocation of a run of ``cfg`` (an ``engine.config.Config``)."""
    est = Estimate()
    if cfg.model.type != "evidence":
        _similarity(est, cfg)
        return est
    p = cfg.data.params
    exp = cfg.experiment
    epochs_train = exp.n_train_epochs if exp.do_train else 0
    epochs_eval = exp.n_eval_epochs if exp.do_eval else 0
    if cfg.data.source == "shapes":
        from engine.data.shapes import BUILTIN_SHAPES

        names = p["objects"] if p["objects"] is not None else ([] if p["mesh_dir"] else BUILTIN_SHAPES)
        n_obj = len(names) + (_mesh_count(p["mesh_dir"]) if p["mesh_dir"] else 0)
        n_features = 1 if p["hue"] else 0
        for name, b in simulation_bytes(p, n_obj, n_features).parts.items():
            est.add(name, b)
        per_object = TRAINING_ROTATIONS * int(p["train_steps"]) * max(1, epochs_train)
        n_eval = n_obj * int(p["eval_rotations"]) * epochs_eval
        eval_steps = min(int(p["eval_steps"]), exp.max_eval_steps)
    else:
        size, loaded = _dataset_bytes(p["path"])
        est.add("observations", size if loaded else 0)
        n_obj, n_features = 1, 1
        # every recorded step is at least 57 bytes (location, pose, curvature, pose_defined)
        per_object = max(1, size // 57) * max(1, epochs_train)
        n_eval = 0
        eval_steps = 0
    _evidence_model(est, cfg, n_obj, per_object, n_features, n_eval, eval_steps)
    return est


def check_bytes(est: Estimate, where: str, available: int | None = None) -> None:
    """A UserError when ``est.total`` exceeds the available memory (``available``, else
    :func:`available_bytes`); nothing when the memory is unknown."""
    avail = available_bytes() if available is None else available
    if avail is None or est.total <= avail:
        return
    raise UserError(f"{where}: this run would allocate about {format_bytes(est.total)} ({est.describe()}), "
                    f"more than the {format_bytes(avail)} of memory available: make the data or the model "
                    "smaller (see the README's limits)")


def check(cfg, available: int | None = None) -> Estimate:
    """Estimate ``cfg``'s allocation and raise a UserError when it cannot fit (see
    :func:`check_bytes`); returns the estimate."""
    est = estimate(cfg)
    check_bytes(est, cfg.source_file, available)
    return est
