"""Procedural test objects and mesh loading (trimesh), for the sensor simulation.

Every built-in object is a ``trimesh.Trimesh`` with outward-facing faces, centred (the
centre of its bounding box at the origin) and scaled so that the largest side of its
bounding box is :data:`SIZE` (0.1 m). Generation is deterministic (no randomness except in
:func:`perturbed_shape`, which is seeded).

Composite objects (``mug``, and any perturbed version of it) are several overlapping
closed or open parts; their surfaces run through each other. Samples taken on the surface
of one part that lie inside another part are not on the object's visible surface, so the
mesh records its parts in ``mesh.metadata["parts"]`` (each a primitive with analytic
parameters in the frame the object was built in), the part of each face in
``mesh.metadata["face_part"]`` (int (n_faces,)), together with ``mesh.metadata["build_to_mesh"]`` (per-axis scale and offset mapping that frame to
the mesh's), and :func:`visible_samples` drops the samples of one part that are inside
another with simple analytic inside tests (a perturbed shape maps samples back with its
linear transform only, so samples within a bump's height (<= 3 mm) of a seam may be
misjudged; a deliberate simplification).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from engine.errors import UserError

__all__ = [
    "BUILTIN_SHAPES",
    "VARIANT_SHAPES",
    "SIZE",
    "load_mesh",
    "load_mesh_folder",
    "make_shape",
    "mesh_files",
    "normalise_mesh",
    "perturbed_shape",
    "visible_samples",
]

#: Largest bounding-box side of every built-in object (metres).
SIZE = 0.1

#: Names of the built-in objects, in this order.
BUILTIN_SHAPES = (
    "box", "sphere", "cylinder", "cone", "torus", "capsule", "mug", "bowl", "banana", "die",
)

#: Variants of built-in objects that differ from them in one part (``configs/similar_10.yaml``):
#: ``cup`` the mug without its handle, ``pill`` the cylinder with hemispherical ends,
#: ``rounded_box`` the box with rounded edges and corners, ``deep_bowl`` the bowl with a
#: straight wall above its rim, ``truncated_cone`` the cone cut a quarter below its tip. Each
#: is scaled as the object it varies (the parts they share have the same size); they are not in
#: ``BUILTIN_SHAPES`` (``data.objects: null`` still means the ten above).
VARIANT_SHAPES = ("cup", "pill", "rounded_box", "deep_bowl", "truncated_cone")

# Extensions load_mesh_folder picks up (lower case).
MESH_EXTENSIONS = (".obj", ".ply", ".stl", ".glb", ".gltf", ".off")


# --------------------------------------------------------------------------- helpers


def _grid_mesh(vertices: np.ndarray, n_rows: int, n_cols: int, *, wrap_cols: bool) -> np.ndarray:
    """Faces of a quad grid of ``n_rows x n_cols`` vertices (row-major), two triangles per
    quad; columns wrap around when ``wrap_cols``."""
    faces = []
    cols = n_cols if wrap_cols else n_cols - 1
    for i in range(n_rows - 1):
        for j in range(cols):
            a = i * n_cols + j
            b = i * n_cols + (j + 1) % n_cols
            c = (i + 1) * n_cols + j
            d = (i + 1) * n_cols + (j + 1) % n_cols
            faces.append((a, b, d))
            faces.append((a, d, c))
    return np.asarray(faces, dtype=np.int64)


def _orient_outward(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Flip all faces if the (closed) mesh's signed volume is negative."""
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _normalise(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its largest side to SIZE; record the
    map in ``metadata["build_to_mesh"]`` (composed with any earlier one)."""
    lo, hi = mesh.bounds
    centre = (lo + hi) / 2.0
    # a variant is scaled as the object it varies (metadata "scale_side": that one's largest side)
    scale = SIZE / float(mesh.metadata.pop("scale_side", np.max(hi - lo)))
    mesh.vertices = (mesh.vertices - centre) * scale
    old_scale, old_offset = mesh.metadata.get("build_to_mesh", (np.ones(3), np.zeros(3)))
    old_scale = np.asarray(old_scale, dtype=np.float64)
    old_offset = np.asarray(old_offset, dtype=np.float64)
    # x_mesh = (x_old_mesh - centre) * scale, x_old_mesh = x_build * old_scale + old_offset
    mesh.metadata["build_to_mesh"] = (old_scale * scale, (old_offset - centre) * scale)
    return mesh


def _tube(path: np.ndarray, radii: np.ndarray, sections: int) -> trimesh.Trimesh:
    """A tube of circular cross-section along a planar path (in the x-y plane), with the
    radius going to zero at both ends (closed by single pole vertices).

    path : (n, 3) centre-line points, radii : (n,) radii (radii[0] = radii[-1] = 0 mark the
    poles).
    """
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    up = np.array([0.0, 0.0, 1.0])
    side = np.cross(tangent, up)
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    theta = np.linspace(0.0, 2.0 * np.pi, sections, endpoint=False)
    inner = path[1:-1, None, :] + radii[1:-1, None, None] * (
        np.cos(theta)[None, :, None] * side[1:-1, None, :] + np.sin(theta)[None, :, None] * up
    )
    rows = inner.shape[0]
    verts = np.concatenate([inner.reshape(-1, 3), path[:1], path[-1:]])
    faces = [_grid_mesh(verts[: rows * sections], rows, sections, wrap_cols=True)]
    first, last = rows * sections, rows * sections + 1
    j = np.arange(sections)
    jn = (j + 1) % sections
    faces.append(np.stack([np.full(sections, first), jn, j], axis=1))
    base = (rows - 1) * sections
    faces.append(np.stack([np.full(sections, last), base + j, base + jn], axis=1))
    mesh = trimesh.Trimesh(verts, np.concatenate(faces), process=True)
    return _orient_outward(mesh)


# --------------------------------------------------------------------------- shapes


def _box() -> trimesh.Trimesh:
    # Unequal sides, so that the box is not just a cube (the die is the cube).
    return trimesh.creation.box(extents=(1.0, 0.75, 0.5))


def _sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=0.5)


def _cylinder() -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=0.3, height=1.0, sections=128)


def _cone() -> trimesh.Trimesh:
    return trimesh.creation.cone(radius=0.4, height=1.0, sections=128)


def _torus() -> trimesh.Trimesh:
    return trimesh.creation.torus(0.35, 0.15, major_sections=96, minor_sections=48)


def _capsule() -> trimesh.Trimesh:
    return trimesh.creation.capsule(height=0.6, radius=0.2, count=[48, 48])


def _mug() -> trimesh.Trimesh:
    # Body: solid cylinder of radius 0.35, height 0.9, axis z. Handle: the half of a torus
    # (ring radius 0.25, tube radius 0.06) in the x-z plane, centred on the body's side
    # (x = 0.35), the half with x >= 0.35 outside; its open ends are buried in the body.
    body = trimesh.creation.cylinder(radius=0.35, height=0.9, sections=128)
    ring, tube, cx = 0.25, 0.06, 0.35
    n_major, n_minor = 64, 24
    # Half-ring plus a little overlap at each end so the ends are well inside the body.
    phi = np.linspace(-np.pi / 2 - 0.35, np.pi / 2 + 0.35, n_major)
    theta = np.linspace(0.0, 2.0 * np.pi, n_minor, endpoint=False)
    ph, th = np.meshgrid(phi, theta, indexing="ij")
    rr = ring + tube * np.cos(th)
    verts = np.stack([cx + rr * np.cos(ph), tube * np.sin(th), rr * np.sin(ph)], axis=-1).reshape(-1, 3)
    faces = _grid_mesh(verts, n_major, n_minor, wrap_cols=True)
    handle = trimesh.Trimesh(verts, faces, process=False)
    # Orientation check of an open tube: the face normals must point away from the ring.
    centre_line = np.stack([cx + ring * np.cos(ph), 0 * ph, ring * np.sin(ph)], axis=-1).reshape(-1, 3)
    away = handle.triangles_center - centre_line[faces[:, 0]]
    if np.sum(np.einsum("ij,ij->i", away, handle.face_normals)) < 0:
        handle.invert()
    mesh = trimesh.util.concatenate([body, handle])
    mesh.metadata["parts"] = [
        {"kind": "cylinder", "radius": 0.35, "half_height": 0.45, "centre": [0.0, 0.0, 0.0]},
        {"kind": "torus_xz", "ring": ring, "tube": tube, "centre": [cx, 0.0, 0.0]},
    ]
    mesh.metadata["face_part"] = np.repeat([0, 1], [len(body.faces), len(handle.faces)])
    return mesh


def _bowl() -> trimesh.Trimesh:
    # Thick hemispherical shell, open top: profile (radius, height) from the bottom centre
    # up the outside to the rim, across the flat rim and back down the inside.
    outer, inner = 0.5, 0.43
    a = np.linspace(-np.pi / 2, 0.0, 48)
    out_arc = np.stack([outer * np.cos(a), outer * np.sin(a)], axis=1)
    in_arc = np.stack([inner * np.cos(a[::-1]), inner * np.sin(a[::-1])], axis=1)
    profile = np.concatenate([out_arc, in_arc])
    profile[0, 0] = 0.0
    profile[-1, 0] = 0.0
    mesh = trimesh.creation.revolve(profile, sections=128)
    return _orient_outward(mesh)


def _banana() -> trimesh.Trimesh:
    # Centre line: an arc of radius 1 over 100 degrees; cross-section radius tapers to 0
    # at both tips as (1 - s^2)^0.6 (s in [-1, 1] along the arc): rounded, slightly
    # pointed ends.
    n = 96
    s = np.linspace(-1.0, 1.0, n)
    ang = np.deg2rad(50.0) * s
    path = np.stack([np.sin(ang), -np.cos(ang), np.zeros(n)], axis=1)
    radii = 0.16 * np.clip(1.0 - s * s, 0.0, None) ** 0.6
    return _tube(path, radii, sections=48)


def _die() -> trimesh.Trimesh:
    # A rounded cube: the superellipsoid |x|^8 + |y|^8 + |z|^8 = 1, by projecting the
    # vertices of an icosphere radially onto it (same connectivity, outward faces).
    base = trimesh.creation.icosphere(subdivisions=5)
    v = base.vertices
    norm8 = np.sum(np.abs(v) ** 8, axis=1) ** (1.0 / 8.0)
    mesh = trimesh.Trimesh(v / norm8[:, None], base.faces, process=False)
    return _orient_outward(mesh)


def _largest_side(mesh: trimesh.Trimesh) -> float:
    lo, hi = mesh.bounds
    return float(np.max(hi - lo))


def _cup() -> trimesh.Trimesh:
    # the mug's body alone, at the mug's scale
    mesh = trimesh.creation.cylinder(radius=0.35, height=0.9, sections=128)
    mesh.metadata["scale_side"] = _largest_side(_mug())
    return mesh


def _pill() -> trimesh.Trimesh:
    # the cylinder's radius and length, with hemispherical ends instead of flat ones
    return trimesh.creation.capsule(height=0.4, radius=0.3, count=[48, 48])


def _rounded_box() -> trimesh.Trimesh:
    # the box's extents, edges and corners rounded with radius 0.1: the convex hull of spheres
    # at the corners of the box shrunk by the radius
    r = 0.1
    half = np.array([1.0, 0.75, 0.5]) / 2.0 - r
    ball = trimesh.creation.icosphere(subdivisions=3, radius=r).vertices
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    return _orient_outward(trimesh.convex.convex_hull(np.concatenate([c + ball for c in corners])))


def _deep_bowl() -> trimesh.Trimesh:
    # the bowl with a straight wall of 0.2 above its hemispherical shell
    outer, inner, wall = 0.5, 0.43, 0.2
    a = np.linspace(-np.pi / 2, 0.0, 48)
    out_arc = np.stack([outer * np.cos(a), outer * np.sin(a)], axis=1)
    in_arc = np.stack([inner * np.cos(a[::-1]), inner * np.sin(a[::-1])], axis=1)
    up = np.linspace(0.0, wall, 9)[1:]
    out_wall = np.stack([np.full(8, outer), up], axis=1)
    in_wall = np.stack([np.full(8, inner), up[::-1]], axis=1)
    profile = np.concatenate([out_arc, out_wall, in_wall, in_arc])
    profile[0, 0] = 0.0
    profile[-1, 0] = 0.0
    return _orient_outward(trimesh.creation.revolve(profile, sections=128))


def _truncated_cone() -> trimesh.Trimesh:
    # the cone (radius 0.4, height 1.0) cut flat at height 0.75, at the cone's scale
    h = 0.75
    top = 0.4 * (1.0 - h)
    profile = np.array([[0.0, 0.0], [0.4, 0.0], [top, h], [0.0, h]])
    mesh = _orient_outward(trimesh.creation.revolve(profile, sections=128))
    mesh.metadata["scale_side"] = 1.0
    return mesh


_BUILDERS = {
    "box": _box, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
    "capsule": _capsule, "mug": _mug, "bowl": _bowl, "banana": _banana, "die": _die,
    "cup": _cup, "pill": _pill, "rounded_box": _rounded_box, "deep_bowl": _deep_bowl,
    "truncated_cone": _truncated_cone,
}


def make_shape(name: str) -> trimesh.Trimesh:
    """A built-in object (one of :data:`BUILTIN_SHAPES`), centred, largest side 0.1 m.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown shape {name!r}; known shapes: {', '.join(BUILTIN_SHAPES + VARIANT_SHAPES)}")
    mesh = _BUILDERS[name]()
    mesh.metadata.pop("file_name", None)
    mesh.metadata["name"] = name
    return _normalise(mesh)


def perturbed_shape(name: str, seed: int) -> trimesh.Trimesh:
    """A random variant of a built-in object (for benchmarks with many objects).

    Each axis is scaled by a factor drawn uniformly from [0.7, 1.3], then every vertex is
    moved along its vertex normal by a smooth random bump field (the sum of 6 Gaussian
    bumps of width 15-30 mm and height -3..3 mm centred on random vertices), and the result
    is re-centred and scaled to a largest side of 0.1 m. Deterministic for
    ``(name, seed)``.
    """
    base = make_shape(name)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), BUILTIN_SHAPES.index(name)]))
    scale = rng.uniform(0.7, 1.3, size=3)
    # Subdivide first (edges <= 4 mm), so that the bumps bend flat faces (a box has only 8
    # vertices) and stay smooth; each new face remembers its original face (its part).
    v, f, origin = trimesh.remesh.subdivide_to_size(
        base.vertices, base.faces, max_edge=0.004, return_index=True
    )
    meta = dict(base.metadata)
    if "face_part" in meta:
        meta["face_part"] = np.asarray(meta["face_part"])[origin]
    mesh = trimesh.Trimesh(v * scale, f, process=True, metadata=meta)
    old_scale, old_offset = meta["build_to_mesh"]
    mesh.metadata["build_to_mesh"] = (np.asarray(old_scale) * scale, np.asarray(old_offset) * scale)
    v = np.asarray(mesh.vertices)
    n = _vertex_normals(mesh)
    centres = v[rng.integers(0, len(v), size=6)]
    widths = rng.uniform(0.015, 0.03, size=6)
    heights = rng.uniform(-0.003, 0.003, size=6)
    d2 = np.sum((v[:, None, :] - centres[None, :, :]) ** 2, axis=2)
    disp = np.sum(heights * np.exp(-d2 / (2.0 * widths**2)), axis=1)
    mesh.vertices = v + disp[:, None] * n
    mesh.metadata["name"] = f"{name}_{int(seed)}"
    return _normalise(mesh)


def _vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Area-weighted vertex normals (plain numpy: trimesh's own use scipy.sparse, which is
    not a run-time dependency here)."""
    fn = np.asarray(mesh.face_normals) * np.asarray(mesh.area_faces)[:, None]
    acc = np.zeros_like(np.asarray(mesh.vertices))
    for k in range(3):
        np.add.at(acc, np.asarray(mesh.faces)[:, k], fn)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return acc / np.where(norm > 0.0, norm, 1.0)


# --------------------------------------------------------------------------- composites


def _inside_part(part: dict, x: np.ndarray) -> np.ndarray:
    """Analytic inside test of one primitive, points ``x`` (n, 3) in the build frame."""
    c = np.asarray(part["centre"], dtype=np.float64)
    y = x - c
    if part["kind"] == "cylinder":  # axis z
        return (np.hypot(y[:, 0], y[:, 1]) < part["radius"]) & (np.abs(y[:, 2]) < part["half_height"])
    if part["kind"] == "torus_xz":  # ring in the x-z plane
        ring_dist = np.hypot(y[:, 0], y[:, 2]) - part["ring"]
        return np.hypot(ring_dist, y[:, 1]) < part["tube"]
    raise ValueError(f"unknown part kind {part['kind']!r}")


def visible_samples(mesh: trimesh.Trimesh, points: np.ndarray, face_index: np.ndarray) -> np.ndarray:
    """Which surface samples lie on the visible surface: for a composite mesh (one with
    ``metadata["parts"]``), False for the samples of one part that are inside another part;
    all True otherwise.

    Parameters
    ----------
    points : (n, 3) float, samples on ``mesh``; face_index : (n,) int, their faces.

    Returns
    -------
    bool (n,)
    """
    keep = np.ones(len(points), dtype=bool)
    meta = mesh.metadata if isinstance(mesh.metadata, dict) else {}
    parts = meta.get("parts")
    face_part = meta.get("face_part")
    if not parts or face_part is None or len(face_part) != len(mesh.faces):
        return keep
    scale, offset = meta["build_to_mesh"]
    x = (np.asarray(points, dtype=np.float64) - np.asarray(offset)) / np.asarray(scale)
    sample_part = np.asarray(face_part)[np.asarray(face_index)]
    for i, part in enumerate(parts):
        own = sample_part == i
        for j, other in enumerate(parts):
            if j != i:
                keep[own] &= ~_inside_part(other, x[own])
    return keep


# --------------------------------------------------------------------------- loading


def load_mesh(path) -> trimesh.Trimesh:
    """Read a mesh file in any format trimesh reads (obj, ply, stl, glb, off, ...).

    A file holding a scene (several meshes, e.g. glb) is flattened into one mesh with the
    scene's transforms applied. The mesh is returned as stored (no centring or scaling).

    Raises
    ------
    UserError
        The file is missing, cannot be read as a mesh, or holds no triangles; the message
        names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: mesh file not found")
    try:
        loaded = trimesh.load(str(p), force=None)
    except Exception as exc:  # trimesh raises many kinds; the user needs the file and why
        raise UserError(f"{p}: cannot read mesh ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        mesh = trimesh.util.concatenate(geoms) if geoms else None
    elif isinstance(loaded, trimesh.Trimesh):
        mesh = loaded
    else:
        mesh = None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise UserError(f"{p}: no triangle mesh in the file (empty, or points/lines only)")
    if not np.isfinite(mesh.vertices).all():
        raise UserError(f"{p}: mesh has non-finite vertex coordinates")
    if float(np.sum(mesh.area_faces)) <= 0.0:
        raise UserError(f"{p}: mesh has zero surface area")
    return mesh


def mesh_files(folder) -> list[Path]:
    """The mesh files (by extension: obj, ply, stl, glb, gltf, off) directly in ``folder``,
    sorted by file name; each is one object named by its file stem.

    Raises
    ------
    UserError
        The folder is missing or holds no mesh file, or two files would give two objects the
        same name (``cup.obj`` and ``cup.stl``).
    """
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"{d}: mesh folder not found")
    try:
        files = sorted((f for f in d.iterdir() if f.suffix.lower() in MESH_EXTENSIONS and f.is_file()),
                       key=lambda f: f.name)
    except OSError as exc:
        raise UserError(f"{d}: cannot list the mesh folder ({exc.strerror or exc})") from None
    if not files:
        raise UserError(f"{d}: no mesh files ({', '.join(MESH_EXTENSIONS)}) in the folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise UserError(f"{d}: {seen[f.stem].name} and {f.name} would both be object {f.stem!r}; "
                            "rename or remove one (each mesh file is one object, named by its file)")
        seen[f.stem] = f
    return files


def normalise_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    """``mesh`` (modified) centred at its bounding box's centre and scaled so that the largest
    side of its bounding box is :data:`SIZE` (0.1 m), as every built-in object: the sensor
    (1 cm steps, 7.5 mm curvature fit) and the evidence model's defaults are made for
    objects of that size.

    Raises
    ------
    UserError
        The mesh is flat in every direction (largest side 0), or too small or too large for
        float64 to scale (largest side outside 1e-150 .. 1e150 m): the message gives its size.
    """
    lo, hi = mesh.bounds
    side = float(np.max(hi - lo))
    if not (1e-150 <= side <= 1e150):
        raise UserError(f"{name}: the mesh's largest side is {side:.3g} (in the file's units); meshes are scaled "
                        f"to a largest side of {SIZE} m, which needs a side between 1e-150 and 1e150")
    mesh.metadata.pop("build_to_mesh", None)
    return _normalise(mesh)


def load_mesh_folder(folder) -> list[tuple[str, trimesh.Trimesh]]:
    """Every mesh file of :func:`mesh_files` as ``(stem, mesh)`` pairs, each centred and
    scaled to a largest side of :data:`SIZE` (0.1 m) like the built-in objects
    (:func:`normalise_mesh`).

    Raises
    ------
    UserError
        The folder is missing or holds no mesh file, two files have one name, or a file
        cannot be read or scaled.
    """
    out = []
    for f in mesh_files(folder):
        mesh = normalise_mesh(load_mesh(f), str(f))
        if not float(np.sum(mesh.area_faces)) > 0.0:
            raise UserError(f"{f}: mesh has zero surface area")
        out.append((f.stem, mesh))
    return out
