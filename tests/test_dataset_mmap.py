"""Memory-mapped reading of ``monty-episodes/1`` datasets (engine.data.dataset): uncompressed
``.npz`` members and ``npy-dir`` folders map, compressed files fall back to memory, every
validation rule still holds on mapped files (validated with file reads, in chunks), and
reading a large mapped file adds little to the resident memory."""

from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import engine.data.dataset as dataset_mod
from engine.data.dataset import (
    FORMAT,
    DatasetError,
    EpisodeDataset,
    read_dataset,
    validate_dataset,
    write_dataset,
)
from engine.data.example_data import EXAMPLE_DATASET_PATH, make_example_dataset

ARRAY_FIELDS = [f.name for f in dataclasses.fields(EpisodeDataset) if f.name not in ("meta", "sensors")]
STEP_FIELDS = ["location", "pose_vectors", "pose_defined", "curvature", "features"]
SMALL_FIELDS = [k for k in ARRAY_FIELDS if k not in STEP_FIELDS]
LAYOUTS = ["npz", "npy-dir"]


@pytest.fixture(scope="module")
def example() -> EpisodeDataset:
    return make_example_dataset()


def _is_mapped(a) -> bool:
    """Whether ``a`` is a memory map or a view whose base chain ends in one."""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def _copy(ds: EpisodeDataset, **changes) -> EpisodeDataset:
    fields = {key: np.array(getattr(ds, key), copy=True) for key in ARRAY_FIELDS}
    fields["meta"] = dict(ds.meta)
    fields.update(changes)
    return EpisodeDataset(**fields)


def _write_raw(path, ds: EpisodeDataset, layout: str) -> None:
    """The arrays of ``ds`` in a file or folder, unvalidated (for broken datasets)."""
    arrays = {key: getattr(ds, key) for key in ARRAY_FIELDS}
    arrays["format"] = np.array(FORMAT)
    arrays["meta"] = np.array(json.dumps(ds.meta))
    if layout == "npz":
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    else:
        os.mkdir(path)
        for key, value in arrays.items():
            np.save(os.path.join(path, key + ".npy"), value)


def _assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    for key in ARRAY_FIELDS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and x.shape == y.shape, key
        np.testing.assert_array_equal(x, y, err_msg=key)
    assert a == b


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("layout", LAYOUTS)
def test_uncompressed_reads_as_memmap(tmp_path, example, layout):
    path = tmp_path / ("ds.npz" if layout == "npz" else "ds")
    write_dataset(path, example, layout=layout)
    ds = read_dataset(path)
    for key in STEP_FIELDS:
        a = getattr(ds, key)
        assert isinstance(a, np.memmap), key
        assert _is_mapped(a), key
        assert a.flags.writeable, key  # copy-on-write: the kernels' one signature
        assert a.flags.c_contiguous, key
    def stored():
        return path.read_bytes() if path.is_file() else {p.name: p.read_bytes() for p in sorted(path.iterdir())}

    before = stored()
    ds.location[0] = -7.0  # copy-on-write: this process's copy changes, the file never
    assert ds.location[0, 0] == -7.0
    assert stored() == before
    assert read_dataset(path).location[0, 0] == example.location[0, 0]
    ds = read_dataset(path)
    for key in SMALL_FIELDS:
        assert not _is_mapped(getattr(ds, key)), key
    assert ds.location.dtype == np.float32 and ds.features.dtype == np.float32
    in_memory = read_dataset(path, mmap=False)
    for key in ARRAY_FIELDS:
        assert not _is_mapped(getattr(in_memory, key)), key
        assert getattr(in_memory, key).flags.writeable, key
    _assert_same(in_memory, ds)
    _assert_same(example, ds)


def test_npy_dir_layout_files(tmp_path, example):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary folder left
    names = sorted(os.listdir(path))
    assert names == sorted(f"{k}.npy" for k in ["format", *ARRAY_FIELDS, "meta"])
    for name in names:  # plain .npy files, readable by numpy without pickles
        np.load(path / name, allow_pickle=False)
    assert str(np.load(path / "format.npy")) == FORMAT
    # numpy.save puts the data 64-byte aligned: mapped arrays are aligned
    assert read_dataset(path).location.ctypes.data % 64 == 0


def test_bundled_example_maps(example):
    with zipfile.ZipFile(EXAMPLE_DATASET_PATH) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    ds = read_dataset(EXAMPLE_DATASET_PATH)
    assert all(isinstance(getattr(ds, k), np.memmap) for k in STEP_FIELDS)
    _assert_same(example, ds)


def test_compressed_falls_back_to_memory(tmp_path, example, caplog):
    path = tmp_path / "small.npz"
    write_dataset(path, example, compress=True)
    with caplog.at_level(logging.INFO, logger="engine.data.dataset"):
        ds = read_dataset(path)
    for key in ARRAY_FIELDS:
        assert not _is_mapped(getattr(ds, key)), key
    assert "cannot be memory-mapped" in caplog.text
    _assert_same(example, ds)


def test_empty_arrays_map(tmp_path):
    pts = np.eye(3, dtype=np.float32)
    ds = dataset_mod.points_dataset(
        [("tri", pts, pts, np.zeros((3, 2)), None)],
        train_rotations=[[1, 0, 0, 0]],
        eval_rotations=np.zeros((0, 4)),
    )
    for layout in LAYOUTS:
        path = tmp_path / f"f0-{layout}"
        write_dataset(path, ds, layout=layout)
        back = read_dataset(path)
        assert back.features.shape == (3, 0) and back.features.flags.writeable
        _assert_same(ds, back)


def test_sources_pass_maps_through(tmp_path, example):
    from engine.data import sources

    path = tmp_path / "ds.npz"
    write_dataset(path, example)
    obs = sources.from_dataset(str(path))
    for a in (obs.location, obs.features):
        assert _is_mapped(a)
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable


def test_experiment_on_mapped_dataset_equals_in_memory(root, monkeypatch):
    """The kernels take the read-only maps (their own compiled signature) and give the
    same results as on in-memory arrays."""
    from engine.data import sources
    from engine.config import load_config
    from engine.models.similarity import Experiment

    cfg = load_config(root / "configs" / "recorded_demo.yaml")
    mapped = sources.build(cfg.data.source, cfg.data.params)
    assert isinstance(mapped.location, np.memmap)
    copied = dataclasses.replace(
        mapped, location=np.array(mapped.location), features=np.array(mapped.features)
    )
    a, b = Experiment(cfg, mapped).run(), Experiment(cfg, copied).run()
    for field in ("train_steps", "train_stored", "eval_steps", "eval_confidence", "eval_reason"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


# --------------------------------------------------------------------------- validation


def _set(key, index, value):
    def mutate(ds):
        a = np.array(getattr(ds, key), copy=True)
        a[index] = value
        return {key: a}

    return mutate


def _both(*mutations):
    def mutate(ds):
        changes = {}
        for m in mutations:
            ds2 = _copy(ds, **changes)
            changes.update(m(ds2))
        return changes

    return mutate


def _scale_row(t, row, factor):
    def mutate(ds):
        p = ds.pose_vectors.copy()
        p[t, row] *= factor
        return {"pose_vectors": p}

    return mutate


# Steps past the first chunks (VALIDATION_CHUNK is set to 64 below, T = 720).
STEP_VIOLATIONS = {
    "nan-location": (_both(_set("location", 500, np.nan), _set("location", 650, np.nan)),
                     "location[500] contains NaN (NaN or infinity in 2 of 720 rows)"),
    "inf-pose": (_set("pose_vectors", 333, np.inf), "pose_vectors[333] contains infinity"),
    "nan-curvature": (_set("curvature", 199, np.nan), "curvature[199] contains NaN"),
    "inf-features": (_set("features", 719, -np.inf), "features[719] contains infinity"),
    "location-huge": (_set("location", 401, 1e19), "location[401] = (1e+19, 1e+19, 1e+19)"),
    "pose-row-norm": (_scale_row(333, 1, 0.87), "pose_vectors[333] is not orthonormal (row 1"),
    "pose-left-handed": (_scale_row(600, 2, -1.0), "pose_vectors[600] is left-handed"),
    "curvature-order": (_set("curvature", 700, (1.0, -5.0)), "curvature[700] = (1, -5)"),
    # priority as in validate_dataset: a NaN anywhere before any other rule
    "nan-features-before-pose": (_both(_scale_row(3, 0, 2.0), _set("features", 600, np.nan)),
                                 "features[600] contains NaN"),
    "huge-before-pose": (_both(_scale_row(3, 0, 2.0), _set("location", 650, -1e19)),
                         "location[650]"),
    "pose-before-curvature": (_both(_set("curvature", 1, (0.0, 1.0)), _scale_row(700, 0, 2.0)),
                              "pose_vectors[700]"),
    "nan-rotation-after-steps": (_both(_set("episode_rotation", 2, np.nan), _scale_row(9, 0, 2.0)),
                                 "episode_rotation[2] contains NaN"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk", [64, 1, 1 << 16])
@pytest.mark.parametrize("case", list(STEP_VIOLATIONS))
def test_validation_on_mapped_files(tmp_path, example, monkeypatch, layout, chunk, case):
    monkeypatch.setattr(dataset_mod, "VALIDATION_CHUNK", chunk)
    mutate, text = STEP_VIOLATIONS[case]
    bad = _copy(example, **mutate(example))
    path = tmp_path / ("bad.npz" if layout == "npz" else "bad")
    _write_raw(path, bad, layout)
    with pytest.raises(DatasetError) as mapped:
        read_dataset(path)
    with pytest.raises(DatasetError) as loaded:
        read_dataset(path, mmap=False)
    with pytest.raises(DatasetError) as in_memory:
        validate_dataset(bad, source=str(path))
    msg = str(mapped.value)
    assert text in msg, msg
    # exactly the message of the in-memory validation, global step index included
    assert msg == str(loaded.value) == str(in_memory.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_and_layout_rules_on_mapped_files(tmp_path, example, layout):
    cases = {
        "location": (example.location.astype(np.float64), "expected float32"),
        "pose_vectors": (example.pose_vectors.astype(">f4"), "expected little-endian float32"),
        "curvature": (np.asfortranarray(example.curvature), "C-contiguous"),
        "features": (example.features[:-1], "shape"),
    }
    for key, (value, text) in cases.items():
        path = tmp_path / f"{key}-{layout}"
        _write_raw(path, _copy(example, **{key: value}), layout)
        with pytest.raises(DatasetError, match=f"^{path}: key '{key}'.*{text}"):
            read_dataset(path)


# --------------------------------------------------------------------------- broken files


def _member_data_offset(path, member: str) -> int:
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        info = zf.getinfo(member)
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def test_crc_checked_on_mapped_members(tmp_path, example, monkeypatch):
    monkeypatch.setattr(dataset_mod, "VALIDATION_CHUNK", 64)
    path = tmp_path / "flip.npz"
    write_dataset(path, example)
    data = bytearray(path.read_bytes())
    # flip the lowest mantissa bit of location[600, 1]: still a valid value, wrong CRC
    offset = _member_data_offset(path, "location.npy") + (600 * 3 + 1) * 4
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"truncated or corrupt.*CRC.*location\.npy"):
        read_dataset(path)
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_dataset(path, mmap=False)


def test_truncated_npz_rejected(tmp_path, example):
    path = tmp_path / "full.npz"
    write_dataset(path, example)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(DatasetError, match=f"^{bad}: .*truncated or corrupt"):
            read_dataset(bad)


def test_member_size_mismatch_rejected(tmp_path, example):
    """A stored member whose .npy header claims more data than the member holds."""
    arrays = {k: getattr(example, k) for k in ARRAY_FIELDS}
    arrays["format"] = np.array(FORMAT)
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            with zf.open(key + ".npy", "w") as w:
                if key == "location":  # header of 720 rows, data of 700
                    np.lib.format.write_array_header_1_0(
                        w, {"descr": "<f4", "fortran_order": False, "shape": (720, 3)}
                    )
                    w.write(value[:700].tobytes())
                else:
                    np.lib.format.write_array(w, value)
    with pytest.raises(DatasetError, match=r"truncated or corrupt.*location\.npy"):
        read_dataset(path)


@pytest.mark.parametrize("key", ["location", "object_names"])
def test_truncated_npy_dir_file_rejected(tmp_path, example, key):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    file = path / f"{key}.npy"
    file.write_bytes(file.read_bytes()[:-10])
    text = f"^{path}: key '{key}': {key}.npy is truncated or corrupt"
    with pytest.raises(DatasetError, match=text):
        read_dataset(path)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("key", ["object_names", "unknown_extra"])
def test_pickled_rejected(tmp_path, example, layout, key):
    evil = np.array(["cube", "sphere", {"evil": 1}], dtype=object)
    if layout == "npz":
        path = tmp_path / "pickled.npz"
        arrays = {k: getattr(example, k) for k in ARRAY_FIELDS}
        arrays.update(format=np.array(FORMAT), **{key: evil})
        with open(path, "wb") as f:
            np.savez(f, allow_pickle=True, **arrays)
    else:
        path = tmp_path / "pickled"
        write_dataset(path, example, layout="npy-dir")
        np.save(path / f"{key}.npy", evil, allow_pickle=True)
    with pytest.raises(DatasetError, match=f"^{path}: key '{key}' holds pickled Python objects"):
        read_dataset(path)


def test_npy_dir_missing_key_and_not_npy(tmp_path, example):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    (path / "features.npy").unlink()
    with pytest.raises(DatasetError, match=f"^{path}: missing required key 'features'"):
        read_dataset(path)
    (path / "features.npy").write_text("not an array")
    with pytest.raises(DatasetError, match="key 'features': features.npy is not a .npy file"):
        read_dataset(path)


def test_npy_dir_ignores_other_files(tmp_path, example):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    (path / "README.txt").write_text("notes")
    np.save(path / "future_extension.npy", np.arange(4))
    _assert_same(example, read_dataset(path))


def test_folder_without_format_is_not_a_dataset(tmp_path, example):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    (path / "format.npy").unlink()
    with pytest.raises(DatasetError, match="is a directory"):
        read_dataset(path)


# --------------------------------------------------------------------------- writing folders


def test_npy_dir_write_replaces_dataset_folder_only(tmp_path, example):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    other = _copy(example, meta={"second": True})
    write_dataset(path, other, layout="npy-dir")  # a dataset folder is replaced
    assert read_dataset(path).meta == {"second": True}
    assert sorted(os.listdir(tmp_path)) == ["ds"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not an npy-dir dataset"):
        write_dataset(foreign, example, layout="npy-dir")
    assert (foreign / "thesis.tex").read_text() == "precious"

    file = tmp_path / "file.npz"
    file.write_text("x")
    with pytest.raises(DatasetError, match="exists and is not a folder"):
        write_dataset(file, example, layout="npy-dir")
    with pytest.raises(ValueError, match="npz"):
        write_dataset(tmp_path / "c", example, compress=True, layout="npy-dir")
    with pytest.raises(ValueError, match="layout"):
        write_dataset(tmp_path / "c", example, layout="zip")
    assert sorted(os.listdir(tmp_path)) == ["ds", "file.npz", "mine"]


def test_interrupted_npy_dir_write_leaves_previous(tmp_path, example, monkeypatch):
    path = tmp_path / "ds"
    write_dataset(path, example, layout="npy-dir")
    calls = []

    def exploding_save(file, arr, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_save(file, arr, *args, **kwargs)

    real_save = np.save
    monkeypatch.setattr(np, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(path, _copy(example, meta={"new": 1}), layout="npy-dir")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    _assert_same(example, read_dataset(path))


def test_convert_mapped_npz_to_npy_dir(tmp_path, example):
    src = tmp_path / "a.npz"
    write_dataset(src, example)
    write_dataset(tmp_path / "b", read_dataset(src), layout="npy-dir")
    write_dataset(tmp_path / "c.npz", read_dataset(tmp_path / "b"), compress=True)
    _assert_same(example, read_dataset(tmp_path / "c.npz"))


# --------------------------------------------------------------------------- memory

_PROBE = r"""
import json, sys, time
def status():
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
    return values
import numpy as np
from engine.data.dataset import read_dataset
before = status()
t0 = time.perf_counter()
ds = read_dataset(sys.argv[1])
seconds = time.perf_counter() - t0
after = status()
print(json.dumps({"rss_before": before["VmRSS"], "hwm_after": after["VmHWM"],
                  "rss_after": after["VmRSS"], "seconds": seconds,
                  "memmap": isinstance(ds.location, np.memmap), "steps": ds.n_steps}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reading_large_mapped_file_keeps_memory_small(tmp_path, engine_env, layout):
    from engine.data.make_dataset import make_dataset

    path = tmp_path / ("big.npz" if layout == "npz" else "big")
    made = make_dataset("seed_spiral", 1_000_000, path, layout=layout)  # 2M steps, ~122 MB
    assert made.n_steps == 2_000_000 and made.nbytes > 120e6
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)],
        env=engine_env, capture_output=True, text=True, timeout=120, check=True,
    )
    m = json.loads(out.stdout)
    assert m["memmap"] and m["steps"] == 2_000_000
    growth = m["hwm_after"] - m["rss_before"]  # peak resident growth, validation included
    assert growth < made.nbytes / 4, (growth, made.nbytes)
