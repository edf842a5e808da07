"""Two mesh sets for the fidelity comparison against tbp.monty (``vs_tbp_monty.py``), generated.

- ``rocks_20``: twenty similar rock-like meshes. Each is an icosphere (4 subdivisions, 2,562
  vertices) with a smooth random radial displacement (twelve Gaussian bumps and dents on the
  sphere, each rock its own seed) and a random per-axis stretch: all drawn from one
  distribution, so they are alike in size and roughness, and none has a rotational symmetry.
- ``objects_10``: ten distinct everyday-object-like meshes (mug with a handle, claw hammer,
  L-bracket with unequal arms, teapot with spout, handle and knob, spoon, pear with a stem,
  wrench, bottle with an off-axis label bump, shoe, boomerang), each a smooth union of
  signed-distance primitives meshed with marching cubes (scikit-image). None is rotationally
  symmetric: a mirror plane is allowed (it maps no rotation onto the identity), and every
  near-symmetric body carries a part (handle, spout, stem, claw) that breaks it.

Deterministic (fixed seeds); the objects are written as binary PLY files, one object per file
(the engine centres each and scales it to a largest side of 10 cm). Needs trimesh and
scikit-image (the tbp.monty venv has both)::

    /tmp/venvmonty/bin/python profiling/mesh_sets.py            # writes profiling/configs/data/rocks_20, objects_10
    /tmp/venvmonty/bin/python profiling/mesh_sets.py --out DIR  # DIR/rocks_20, DIR/objects_10

``profiling/configs/rocks_20_noise.yaml`` and ``profiling/configs/objects_10_noise.yaml`` read the default folders.
A profiling tool: no test or CI runs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import trimesh

N_ROCKS = 20


# --------------------------------------------------------------------------- rocks


def rock(seed: int) -> trimesh.Trimesh:
    """One rock: a unit icosphere, radius 1 + sum of twelve Gaussian bumps/dents (angular width
    0.3-0.55 rad, height -0.2..0.35), then stretched by 0.7-1.0 along each axis."""
    rng = np.random.default_rng(np.random.SeedSequence([20, int(seed)]))
    ico = trimesh.creation.icosphere(subdivisions=4)
    v = np.asarray(ico.vertices, dtype=np.float64)
    centres = rng.standard_normal((12, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    widths = rng.uniform(0.3, 0.55, 12)
    heights = rng.uniform(-0.2, 0.35, 12)
    cosang = np.clip(v @ centres.T, -1.0, 1.0)
    ang = np.arccos(cosang)
    r = 1.0 + np.sum(heights * np.exp(-0.5 * (ang / widths) ** 2), axis=1)
    stretch = rng.uniform(0.7, 1.0, 3)
    mesh = trimesh.Trimesh(v * r[:, None] * stretch, ico.faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


# --------------------------------------------------------------------------- signed distances


def _sphere(p, c, r):
    return np.linalg.norm(p - np.asarray(c), axis=-1) - r


def _ellipsoid(p, c, radii):
    # the usual bound-corrected approximation: exact on the axes, good enough for a union
    q = (p - np.asarray(c)) / np.asarray(radii)
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / np.asarray(radii), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _capsule(p, a, b, r):
    a, b = np.asarray(a, float), np.asarray(b, float)
    pa, ba = p - a, b - a
    h = np.clip((pa @ ba) / (ba @ ba), 0.0, 1.0)
    return np.linalg.norm(pa - h[..., None] * ba, axis=-1) - r


def _round_box(p, c, half, r):
    q = np.abs(p - np.asarray(c)) - (np.asarray(half) - r)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(np.max(q, axis=-1), 0.0) - r


def _cylinder_z(p, c, radius, half_height, r=0.0):
    """A capped cylinder along z, edges rounded by ``r``."""
    y = p - np.asarray(c)
    d = np.stack([np.hypot(y[..., 0], y[..., 1]) - radius + r, np.abs(y[..., 2]) - half_height + r], axis=-1)
    return np.minimum(np.max(d, axis=-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1) - r


def _torus(p, c, ring, tube, plane="xz"):
    y = p - np.asarray(c)
    i, j, k = {"xz": (0, 2, 1), "xy": (0, 1, 2), "yz": (1, 2, 0)}[plane]
    return np.hypot(np.hypot(y[..., i], y[..., j]) - ring, y[..., k]) - tube


def _union(*ds, k=0.03):
    """Smooth minimum (polynomial, blend width ``k``): parts join with a fillet, no crease."""
    d = ds[0]
    for e in ds[1:]:
        h = np.clip(0.5 + 0.5 * (e - d) / k, 0.0, 1.0)
        d = e * (1 - h) + d * h - k * h * (1 - h)
    return d


def _cut(d, e, k=0.02):
    """``d`` minus ``e``, smoothly."""
    return -_union(-d, e, k=k)


def mug(p):
    body = _cylinder_z(p, (0, 0, 0), 0.35, 0.45, r=0.04)
    hollow = _cylinder_z(p, (0, 0, 0.2), 0.29, 0.45, r=0.04)
    handle = _torus(p, (0.38, 0, 0.02), 0.22, 0.055, "xz")
    handle = np.maximum(handle, -(p[..., 0] - 0.3))  # the outer half only
    return _union(_cut(body, hollow), handle, k=0.03)


def hammer(p):
    handle = _capsule(p, (0, 0, -0.6), (0, 0, 0.35), 0.06)
    head = _round_box(p, (0.05, 0, 0.45), (0.16, 0.07, 0.08), 0.03)
    face = _cylinder_z(np.stack([p[..., 2], p[..., 1], -p[..., 0]], -1), (0.45, 0, 0.2), 0.085, 0.06, r=0.02)
    claw = _capsule(p, (-0.1, 0, 0.45), (-0.3, 0, 0.33), 0.05)
    return _union(handle, head, face, claw, k=0.04)


def l_bracket(p):
    long_arm = _round_box(p, (0, 0, 0), (0.6, 0.18, 0.05), 0.03)
    short_arm = _round_box(p, (-0.55, 0, 0.22), (0.05, 0.18, 0.27), 0.03)
    rib = _round_box(p, (-0.43, 0.1, 0.12), (0.08, 0.025, 0.08), 0.02)
    hole = _cylinder_z(p, (0.35, 0.0, 0.0), 0.07, 0.2)
    return _cut(_union(long_arm, short_arm, rib, k=0.03), hole)


def teapot(p):
    body = _ellipsoid(p, (0, 0, 0), (0.4, 0.4, 0.3))
    base = _cylinder_z(p, (0, 0, -0.26), 0.25, 0.06, r=0.02)
    spout = _capsule(p, (0.3, 0, -0.05), (0.6, 0, 0.22), 0.06)
    handle = _torus(p, (-0.42, 0, 0.02), 0.16, 0.045, "xz")
    handle = np.maximum(handle, p[..., 0] + 0.38)
    knob = _sphere(p, (0.05, 0.04, 0.33), 0.07)
    return _union(body, base, spout, handle, knob, k=0.04)


def spoon(p):
    bowl = _ellipsoid(p, (0.45, 0, 0), (0.2, 0.13, 0.06))
    scoop = _ellipsoid(p, (0.45, 0, 0.07), (0.17, 0.1, 0.06))
    stem = _capsule(p, (0.25, 0, 0.02), (-0.55, 0, 0.12), 0.035)
    grip = _ellipsoid(p, (-0.45, 0, 0.11), (0.13, 0.06, 0.03))
    return _union(_cut(bowl, scoop, k=0.02), stem, grip, k=0.04)


def pear(p):
    low = _sphere(p, (0, 0, -0.15), 0.3)
    high = _sphere(p, (0.05, 0.02, 0.18), 0.19)
    stem = _capsule(p, (0.07, 0.03, 0.33), (0.14, 0.05, 0.5), 0.025)
    leaf = _ellipsoid(p, (0.2, 0.12, 0.45), (0.1, 0.05, 0.015))
    return _union(_union(low, high, k=0.15), stem, leaf, k=0.03)


def wrench(p):
    shaft = _round_box(p, (0, 0, 0), (0.5, 0.06, 0.03), 0.02)
    jaw = _cylinder_z(p, (0.55, 0, 0), 0.15, 0.035, r=0.015)
    mouth = _round_box(p, (0.68, 0, 0), (0.14, 0.06, 0.1), 0.01)
    ring = _torus(p, (-0.55, 0, 0), 0.1, 0.04, "xy")
    return _union(_cut(jaw, mouth, k=0.01), shaft, ring, k=0.04)


def bottle(p):
    body = _cylinder_z(p, (0, 0, -0.15), 0.2, 0.35, r=0.06)
    shoulder = _sphere(p, (0, 0, 0.2), 0.17)
    neck = _cylinder_z(p, (0, 0, 0.4), 0.07, 0.12, r=0.02)
    label = _round_box(p, (0.2, 0.0, -0.1), (0.03, 0.1, 0.15), 0.02)
    lip = _torus(p, (0, 0, 0.5), 0.08, 0.02, "xy")
    return _union(body, shoulder, neck, label, lip, k=0.04)


def shoe(p):
    sole = _round_box(p, (0, 0, -0.1), (0.5, 0.17, 0.04), 0.03)
    toe = _ellipsoid(p, (0.22, 0, -0.02), (0.3, 0.16, 0.12))
    heel = _round_box(p, (-0.32, 0, 0.05), (0.18, 0.15, 0.15), 0.08)
    collar = _torus(p, (-0.28, 0, 0.2), 0.12, 0.035, "xy")
    return _union(sole, toe, heel, collar, k=0.05)


def boomerang(p):
    a = _capsule(p, (0, 0, 0), (0.6, 0.1, 0), 0.09)
    b = _capsule(p, (0, 0, 0), (-0.25, 0.45, 0.03), 0.07)
    flat = np.abs(p[..., 2]) - 0.04
    return np.maximum(_union(a, b, k=0.08), flat)


OBJECTS = {"mug": mug, "hammer": hammer, "l_bracket": l_bracket, "teapot": teapot, "spoon": spoon,
           "pear": pear, "wrench": wrench, "bottle": bottle, "shoe": shoe, "boomerang": boomerang}


def implicit_mesh(sdf, resolution: int = 120, extent: float = 0.8) -> trimesh.Trimesh:
    """The zero level set of ``sdf`` over the cube [-extent, extent]^3 (marching cubes), its
    largest connected piece, faces outward."""
    from skimage.measure import marching_cubes

    g = np.linspace(-extent, extent, resolution)
    p = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1)
    d = sdf(p)
    if d[0].min() <= 0 or d[-1].min() <= 0 or d[:, 0].min() <= 0 or d[:, -1].min() <= 0 \
            or d[:, :, 0].min() <= 0 or d[:, :, -1].min() <= 0:
        raise ValueError("the object reaches the edge of the sampling cube")
    verts, faces, _, _ = marching_cubes(d, 0.0, spacing=(g[1] - g[0],) * 3)
    mesh = trimesh.Trimesh(verts - extent, faces, process=True)
    parts = mesh.split(only_watertight=False)
    mesh = max(parts, key=lambda m: len(m.faces))
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def write_sets(out: Path) -> dict[str, list[Path]]:
    written: dict[str, list[Path]] = {"rocks_20": [], "objects_10": []}
    rocks = out / "rocks_20"
    rocks.mkdir(parents=True, exist_ok=True)
    for i in range(N_ROCKS):
        f = rocks / f"rock_{i:02d}.ply"
        rock(i).export(f)
        written["rocks_20"].append(f)
    objs = out / "objects_10"
    objs.mkdir(parents=True, exist_ok=True)
    for name, sdf in OBJECTS.items():
        f = objs / f"{name}.ply"
        implicit_mesh(sdf).export(f)
        written["objects_10"].append(f)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "configs" / "data",
                   help="folder to write rocks_20/ and objects_10/ into (default: profiling/configs/data)")
    a = p.parse_args(argv)
    if importlib.util.find_spec("skimage") is None:  # marching cubes, for objects_10
        print("error: profiling/mesh_sets.py needs scikit-image (pip install scikit-image; the tbp.monty venv "
              "has it)", file=sys.stderr)
        return 2
    for name, files in write_sets(a.out).items():
        print(f"{name}: {len(files)} meshes in {files[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
