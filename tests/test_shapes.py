"""engine.data.shapes: built-in procedural objects, perturbed variants, composites' visible
samples and mesh loading."""

import numpy as np
import pytest
import trimesh

from engine.errors import UserError
from engine.data.shapes import (
    BUILTIN_SHAPES,
    SIZE,
    load_mesh,
    load_mesh_folder,
    make_shape,
    perturbed_shape,
    visible_samples,
)

# Shapes that are one closed surface (the mug is a body plus an open handle tube).
CLOSED = [name for name in BUILTIN_SHAPES if name != "mug"]


def test_names():
    assert BUILTIN_SHAPES == (
        "box", "sphere", "cylinder", "cone", "torus", "capsule", "mug", "bowl", "banana", "die",
    )
    with pytest.raises(ValueError, match="unknown shape"):
        make_shape("teapot")


@pytest.mark.parametrize("name", BUILTIN_SHAPES)
def test_builtin_centred_scaled_outward_deterministic(name):
    mesh = make_shape(name)
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 0
    lo, hi = mesh.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    assert np.max(hi - lo) == pytest.approx(SIZE, rel=1e-12)
    assert mesh.volume > 0  # faces point outward
    if name in CLOSED:
        assert mesh.is_watertight and mesh.is_winding_consistent
    again = make_shape(name)
    assert np.array_equal(mesh.vertices, again.vertices)
    assert np.array_equal(mesh.faces, again.faces)


def test_shapes_differ():
    # The ten objects are distinct: their normalised extents and volumes differ.
    sig = {name: (tuple(np.round(np.sort(np.ptp(make_shape(name).bounds, axis=0)), 4)),
                  round(float(make_shape(name).volume), 7)) for name in BUILTIN_SHAPES}
    assert len(set(sig.values())) == len(BUILTIN_SHAPES)


def test_bowl_is_open_and_banana_is_curved():
    bowl = make_shape("bowl")
    # Much less volume than the solid hemisphere of the same size: a shell.
    assert bowl.volume < 0.5 * (2 / 3) * np.pi * (SIZE / 2) ** 3
    banana = make_shape("banana")
    ext = np.sort(np.ptp(banana.bounds, axis=0))
    assert ext[2] == pytest.approx(SIZE) and ext[0] < 0.3 * SIZE
    # Bent: the tips (the ends of the long axis) are off-centre in the bend direction.
    v = banana.vertices
    long_axis, bend_axis = np.argsort(np.ptp(banana.bounds, axis=0))[[2, 1]]
    tips = v[[np.argmin(v[:, long_axis]), np.argmax(v[:, long_axis])]]
    assert np.all(np.abs(tips[:, bend_axis]) > 0.3 * np.ptp(v[:, bend_axis]))


@pytest.mark.parametrize("name", ["box", "mug", "sphere"])
def test_perturbed_shape(name):
    a = perturbed_shape(name, 1)
    b = perturbed_shape(name, 1)
    c = perturbed_shape(name, 2)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert not (a.vertices.shape == c.vertices.shape and np.allclose(a.vertices, c.vertices))
    lo, hi = a.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    assert np.max(hi - lo) == pytest.approx(SIZE)
    assert a.volume > 0
    base = np.sort(np.ptp(make_shape(name).bounds, axis=0))
    assert not np.allclose(np.sort(np.ptp(a.bounds, axis=0)), base, atol=1e-3)
    if name == "box":  # bumps bend the flat faces
        assert len(np.unique(np.round(a.face_normals, 3), axis=0)) > 6


def _inside_body(x, scale, offset):
    y = (x - offset) / scale
    return (np.hypot(y[:, 0], y[:, 1]) < 0.35) & (np.abs(y[:, 2]) < 0.45)


def _inside_handle(x, scale, offset):
    y = (x - offset) / scale
    return np.hypot(np.hypot(y[:, 0] - 0.35, y[:, 2]) - 0.25, y[:, 1]) < 0.06


def test_mug_visible_samples():
    mesh = make_shape("mug")
    pts, faces = trimesh.sample.sample_surface(mesh, 20000, seed=3)
    keep = visible_samples(mesh, pts, faces)
    part = np.asarray(mesh.metadata["face_part"])[faces]
    scale, offset = mesh.metadata["build_to_mesh"]
    dropped = ~keep
    assert 0.005 < dropped.mean() < 0.1
    # kept handle samples are outside the body, kept body samples outside the handle
    assert not np.any(_inside_body(pts[keep & (part == 1)], scale, offset))
    assert not np.any(_inside_handle(pts[keep & (part == 0)], scale, offset))
    # and every dropped sample is inside the other part
    assert np.all(_inside_body(pts[dropped & (part == 1)], scale, offset))
    assert np.all(_inside_handle(pts[dropped & (part == 0)], scale, offset))
    # a simple shape keeps everything
    box = make_shape("box")
    p, f = trimesh.sample.sample_surface(box, 100, seed=0)
    assert visible_samples(box, p, f).all()


@pytest.mark.parametrize("ext", ["obj", "stl", "ply", "glb"])
def test_load_mesh_roundtrip(tmp_path, ext):
    mesh = make_shape("cone")
    path = tmp_path / f"cone.{ext}"
    mesh.export(path)
    loaded = load_mesh(path)
    assert isinstance(loaded, trimesh.Trimesh)
    assert loaded.area == pytest.approx(mesh.area, rel=1e-5)
    np.testing.assert_allclose(loaded.bounds, mesh.bounds, atol=1e-6)


def test_load_mesh_scene_concatenated(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(make_shape("box"), node_name="a")
    scene.add_geometry(make_shape("sphere"), node_name="b",
                       transform=trimesh.transformations.translation_matrix([0.2, 0, 0]))
    path = tmp_path / "two.glb"
    scene.export(path)
    mesh = load_mesh(path)
    assert len(mesh.faces) == len(make_shape("box").faces) + len(make_shape("sphere").faces)
    assert mesh.bounds[1, 0] == pytest.approx(0.25, abs=1e-6)


def test_load_mesh_errors(tmp_path):
    with pytest.raises(UserError, match="not found") as e:
        load_mesh(tmp_path / "missing.obj")
    assert "missing.obj" in str(e.value)
    garbage = tmp_path / "garbage.stl"
    garbage.write_bytes(b"\x00\x01 this is not a mesh")
    with pytest.raises(UserError, match="garbage.stl"):
        load_mesh(garbage)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing here\n")
    with pytest.raises(UserError, match="empty.obj"):
        load_mesh(empty)
    points_only = tmp_path / "points.obj"
    points_only.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(UserError, match="points.obj"):
        load_mesh(points_only)
    unknown = tmp_path / "mesh.xyz123"
    unknown.write_text("hello")
    with pytest.raises(UserError, match="mesh.xyz123"):
        load_mesh(unknown)


def test_load_mesh_folder(tmp_path):
    make_shape("sphere").export(tmp_path / "b_sphere.stl")
    make_shape("box").export(tmp_path / "a_box.obj")
    (tmp_path / "notes.txt").write_text("not a mesh")
    got = load_mesh_folder(tmp_path)
    assert [name for name, _ in got] == ["a_box", "b_sphere"]
    assert all(isinstance(m, trimesh.Trimesh) for _, m in got)
    with pytest.raises(UserError, match="not found"):
        load_mesh_folder(tmp_path / "nope")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(UserError, match="no mesh files"):
        load_mesh_folder(empty)
