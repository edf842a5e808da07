"""The observations of an evidence config: a recorded dataset, or the sensor simulated
on built-in shapes and mesh files. Knows configs and data, no model."""

from __future__ import annotations

import logging

from engine.errors import UserError

log = logging.getLogger(__name__)


def build_dataset(cfg):
    """The observations of an evidence config: simulated shapes or a recorded dataset."""
    params = cfg.data.params
    if cfg.data.source == "dataset":
        from engine.data.dataset import read_dataset

        return read_dataset(params["path"])
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
        hue = None
        if params["hue"]:
            # distinct colours: golden-ratio steps around the hue circle
            hue = {name: float((0.618033988749895 * i) % 1.0) for i, (name, _) in enumerate(surfaces)}
        return sensor.simulate(surfaces, train_steps=params["train_steps"],
                               eval_rotations=params["eval_rotations"], eval_steps=params["eval_steps"],
                               noise=sensor.Noise() if params["noise"] else None, seed=params["seed"], hue=hue)
