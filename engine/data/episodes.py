"""The observations of an evidence config: a recorded dataset, or the sensor simulated
on built-in shapes and mesh files. Knows configs and data, no model."""

from __future__ import annotations

import logging

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)


def object_extents(ds, chunk: int = 1 << 20) -> dict[str, float]:
    """Each object's largest side (metres) in its own frame, over its training episodes: the
    locations of an episode with rotation ``Q`` brought back with ``Q^T`` (as the graph
    memory does), read in chunks of ``chunk`` steps (a memory-mapped dataset stays mapped)."""
    from engine.data.dataset import TRAIN
    from engine.data.rotations import quat_to_matrix

    names = [str(n) for n in ds.object_names]
    lo = np.full((len(names), 3), np.inf)
    hi = np.full((len(names), 3), -np.inf)
    offsets = np.asarray(ds.episode_offsets, dtype=np.int64)
    for e in np.flatnonzero(np.asarray(ds.episode_split) == TRAIN):
        o = int(ds.episode_object[e])
        r = quat_to_matrix(np.asarray(ds.episode_rotation[e], np.float64), dtype=np.float64)
        for a in range(int(offsets[e]), int(offsets[e + 1]), chunk):
            b = min(a + chunk, int(offsets[e + 1]))
            x = np.asarray(ds.location[a:b], np.float64) @ r  # rows x^T R = (R^T x)^T
            lo[o] = np.minimum(lo[o], x.min(axis=0))
            hi[o] = np.maximum(hi[o], x.max(axis=0))
    return {n: float(np.max(hi[i] - lo[i])) for i, n in enumerate(names) if np.isfinite(lo[i]).all()}


def check_objects_fit(cfg, ds) -> None:
    """A UserError when the evidence model cannot hold an object of a recorded dataset: a
    grid model is placed around an object's first sensed point, so an object larger than
    half the grid (``evidence.max_graph_size / 2``) may fall outside and never be learned
    (tbp.monty skips such updates with a warning); an object smaller than one voxel (grid) or
    than the node spacing (graph) becomes one node."""
    s = cfg.evidence
    if s is None:
        return
    for name, side in object_extents(ds).items():
        shown = name if len(name) <= 40 else name[:40] + "..."
        where = f"{cfg.source_file}: data.path: {cfg.data.params['path']}: object {shown!r} is {side:.3g} m"
        if s.graph == "grid":
            if side > s.max_graph_size / 2:
                raise UserError(f"{where} on its largest side; the grid model (evidence.max_graph_size "
                                f"{s.max_graph_size:g} m, placed around the first sensed point) holds at most "
                                f"{s.max_graph_size / 2:g} m: record it in metres, or raise max_graph_size")
            voxel = s.max_graph_size / s.voxels_per_dim
            if side < voxel:
                raise UserError(f"{where} on its largest side, less than one voxel ({voxel:.3g} m = "
                                f"evidence.max_graph_size / voxels_per_dim): it would be one node; record it "
                                "in metres, or use smaller voxels")
        elif side < s.graph_distance:
            raise UserError(f"{where} on its largest side, less than evidence.graph_distance "
                            f"({s.graph_distance:g} m): it would be one node; record it in metres")


def build_dataset(cfg, surfaces=None):
    """The observations of an evidence config: simulated shapes or a recorded dataset.

    ``surfaces``: the objects' surfaces (``build_surfaces(cfg)``) when built already."""
    params = cfg.data.params
    if cfg.data.source == "dataset":
        from engine.data.dataset import read_dataset

        ds = read_dataset(params["path"])
        check_objects_fit(cfg, ds)
        check_sensor_count(cfg, ds)
        return ds
    from engine.data import sensor

    if surfaces is None:
        surfaces = build_surfaces(cfg)
    with sensor.deferred_interrupts():  # Ctrl-C between kernel calls: a clean KeyboardInterrupt
        hue = None
        if params["hue"]:
            # distinct colours: golden-ratio steps around the hue circle
            hue = {name: float((0.618033988749895 * i) % 1.0) for i, (name, _) in enumerate(surfaces)}
        return sensor.simulate(surfaces, train_steps=params["train_steps"],
                               eval_rotations=params["eval_rotations"], eval_steps=params["eval_steps"],
                               noise=sensor.Noise() if params["noise"] else None, seed=params["seed"], hue=hue,
                               **_patches(cfg))


def build_surfaces(cfg):
    """``[(name, engine.data.sensor.Surface) ...]`` of a shapes config's objects, in order."""
    params = cfg.data.params
    from engine.data import sensor
    from engine.data import shapes
    from engine import memory

    names = params["objects"]
    meshes = []
    if params["mesh_dir"] is not None:
        meshes = shapes.load_mesh_folder(params["mesh_dir"])
        if names is None:
            names = []
    if names is None:
        names = list(shapes.BUILTIN_SHAPES)
    meshes = meshes + variant_meshes(params.get("variants", 0))
    clash = sorted(set(names) & {n for n, _ in meshes})
    if clash:
        raise UserError(f"{cfg.source_file}: data.mesh_dir: mesh {clash[0]!r} has the name of a built-in object "
                        "in data.objects; rename the file")
    if not names and not meshes:
        raise UserError(f"{cfg.source_file}: data.objects: no objects to simulate")
    memory.check_bytes(memory.simulation_bytes(params, len(names) + len(meshes), 1 if params["hue"] else 0),
                       getattr(cfg, "source_file", "data"))
    log.info("sampling %d object surfaces (%d points each)", len(names) + len(meshes), params["n_points"])
    with sensor.deferred_interrupts():  # Ctrl-C between kernel calls: a clean KeyboardInterrupt
        surfaces = sensor.builtin_surfaces(names, n_points=params["n_points"], seed=params["seed"])
        for name, mesh in meshes:
            surfaces.append((name, sensor.sample_surface(mesh, n_points=params["n_points"], seed=params["seed"])))
    return surfaces


def variant_meshes(n: int) -> list:
    """``data.variants``: (name, mesh) of ``n`` perturbed built-ins, ``name~round``: the built-ins
    in turn, round 1 for the first ten, 2 for the next ten, ... (``shapes.perturbed_shape``, as
    the evidence benchmark names and builds them)."""
    from engine.data.shapes import BUILTIN_SHAPES, perturbed_shape

    out = []
    for i in range(int(n)):
        base, rnd = BUILTIN_SHAPES[i % len(BUILTIN_SHAPES)], i // len(BUILTIN_SHAPES) + 1
        out.append((f"{base}~{rnd}", perturbed_shape(base, rnd)))
    return out


def _patches(cfg) -> dict:
    """simulate's patch arguments: one patch per learning module (none given for one)."""
    ev = getattr(cfg, "evidence", None)
    n = ev.n_modules if ev is not None else 1
    return {} if n == 1 else {"patches": n, "patch_spacing": cfg.data.params["patch_spacing"]}


def check_sensor_count(cfg, ds) -> None:
    """A UserError when a recorded dataset's sensor patches are not one per learning module."""
    ev = getattr(cfg, "evidence", None)
    n = ev.n_modules if ev is not None else 1
    if ds.n_sensors != n:
        raise UserError(f"{cfg.source_file}: data.path: {cfg.data.params['path']} holds {ds.n_sensors} sensor "
                        f"patch{'es' if ds.n_sensors != 1 else ''} per step, but evidence.n_modules is {n}: "
                        "each learning module needs its own patch")
