"""kernels.npzfile against plain numpy: what the writer writes numpy.load reads, what the
reader maps equals what numpy.load reads, and broken archives are refused."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from kernels import npzfile
from kernels.npzfile import (
    ALIGN,
    AlignedNpzWriter,
    NpzError,
    load_member,
    map_member,
    member_dtype,
    member_header,
    npy_header,
    read_member,
    write_npy,
)

ARRAYS = {
    "points": np.arange(3 * 1001, dtype=np.float32).reshape(1001, 3),
    "flags": np.arange(37) % 3 == 0,
    "ids": np.arange(11, dtype=np.int64),
    "small": np.array([1, -2, 3], np.int8),
    "names": np.array(["box", "mug", "banana"]),
    "scalar": np.array(7, np.int64),
    "empty": np.zeros((0, 3), np.float32),
    "half": np.arange(50, dtype=np.float16),
}


def _write(path, pad="npy", compress=False, arrays=ARRAYS):
    with AlignedNpzWriter(path, compress=compress, pad=pad) as npz:
        for name, a in arrays.items():
            npz.add(name, a)


def _members(path):
    """{name: (ZipInfo, MemberHeader or None)} of every member of the archive."""
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        return {i.filename[:-4]: (i, member_header(fh, i) if npzfile.is_stored(i) else None)
                for i in zf.infolist()}


@pytest.mark.parametrize("pad", ["npy", "zip-extra"])
def test_numpy_reads_what_the_writer_writes(tmp_path, pad):
    path = tmp_path / "a.npz"
    _write(path, pad)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(ARRAYS)
        for name, a in ARRAYS.items():
            assert z[name].dtype == a.dtype and z[name].shape == a.shape
            np.testing.assert_array_equal(z[name], a)
    for name, (info, h) in _members(path).items():
        assert h.data_offset % ALIGN == 0, name  # every member's data starts aligned
        assert info.date_time == npzfile.ZIP_DATE
        assert (h.shape, h.dtype) == (ARRAYS[name].shape, ARRAYS[name].dtype)


@pytest.mark.parametrize("pad", ["npy", "zip-extra"])
def test_same_arrays_same_bytes(tmp_path, pad):
    _write(tmp_path / "a.npz", pad)
    _write(tmp_path / "b.npz", pad)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_zip_extra_pad_keeps_numpys_own_npy_header(tmp_path):
    """pad="zip-extra" writes the .npy file numpy.save writes, byte for byte."""
    path = tmp_path / "a.npz"
    _write(path, "zip-extra")
    with zipfile.ZipFile(path) as zf:
        for name, a in ARRAYS.items():
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            assert zf.read(name + ".npy") == buf.getvalue(), name


def test_mapped_members_equal_numpy_load(tmp_path):
    path = tmp_path / "a.npz"
    _write(path)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh, np.load(path) as z:
        for info in zf.infolist():
            name = info.filename[:-4]
            got = load_member(zf, fh, path, info)
            np.testing.assert_array_equal(got, z[name])
            assert got.dtype == z[name].dtype
            # mapped unless empty (nothing to map)
            assert isinstance(got, np.memmap) == (ARRAYS[name].size > 0), name
            if isinstance(got, np.memmap):
                assert not got.flags.writeable
        cow = load_member(zf, fh, path, zf.getinfo("points.npy"), mode="c")
        cow[0, 0] = -1.0  # copy-on-write: writeable, the file keeps its data
        assert cow.flags.aligned
    with np.load(path) as z:
        assert z["points"][0, 0] == 0.0


def test_chunks_stream_into_one_member(tmp_path):
    a = np.random.default_rng(0).random((1000, 3, 3), dtype=np.float32)
    path = tmp_path / "c.npz"
    with AlignedNpzWriter(path) as npz:
        npz.add_chunks("pose", a.dtype, a.shape, (a[i : i + 128] for i in range(0, 1000, 128)))
        npz.add_chunks("one", np.int32, (), [np.array(5, np.int32)])
    with np.load(path) as z:
        np.testing.assert_array_equal(z["pose"], a)
        assert z["one"] == 5 and z["one"].shape == ()


def test_chunks_must_match_the_header(tmp_path):
    with AlignedNpzWriter(io.BytesIO()) as npz:
        with pytest.raises(ValueError, match="chunk float64"):
            npz.add_chunks("x", np.float32, (4, 3), [np.zeros((4, 3))])
        with pytest.raises(ValueError, match="got 3 rows, the header says"):
            npz.add_chunks("y", np.float32, (4, 3), [np.zeros((3, 3), np.float32)])
        with pytest.raises(ValueError, match="object arrays"):
            npz.add("z", np.array([{}], dtype=object))


def test_fortran_order_input_is_written_c_order(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    path = tmp_path / "f.npz"
    with AlignedNpzWriter(path) as npz:
        npz.add("a", a)
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], a)
        assert z["a"].flags.c_contiguous


def test_compressed_members_are_read_not_mapped(tmp_path):
    path = tmp_path / "z.npz"
    _write(path, compress=True)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        for name, a in ARRAYS.items():
            info = zf.getinfo(name + ".npy")
            assert info.compress_type == zipfile.ZIP_DEFLATED
            got = load_member(zf, fh, path, info)
            assert not isinstance(got, np.memmap)
            np.testing.assert_array_equal(got, a)
        with pytest.raises(ValueError, match="compressed"):
            member_header(fh, zf.getinfo("points.npy"))


def test_numpy_savez_files_map_and_misaligned_members_are_read(tmp_path):
    """An archive numpy.savez wrote: map_member maps every member wherever its data lies;
    load_member reads a member whose data is not aligned to its dtype instead."""
    path = tmp_path / "s.npz"
    a = np.arange(40, dtype=np.float64)
    # find a member name that puts the data off an 8-byte boundary
    for n in range(1, 16):
        np.savez(path, **{"x" * n: a})
        (info, h), = _members(path).values()
        if h.data_offset % 8:
            break
    else:
        pytest.fail("numpy.savez aligned every try")
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        mapped, header = map_member(path, fh, info)
        assert isinstance(mapped, np.memmap) and header.data_offset % 8
        np.testing.assert_array_equal(mapped, a)
        got = load_member(zf, fh, path, info)
        assert not isinstance(got, np.memmap) and got.flags.aligned
        np.testing.assert_array_equal(got, a)


def test_mmap_false_reads(tmp_path):
    path = tmp_path / "a.npz"
    _write(path)
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        got = load_member(zf, fh, path, zf.getinfo("points.npy"), mmap=False)
    assert not isinstance(got, np.memmap) and got.flags.writeable
    np.testing.assert_array_equal(got, ARRAYS["points"])


def test_truncated_file_rejected(tmp_path):
    path = tmp_path / "a.npz"
    _write(path)
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("points.npy")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: info.header_offset + 200])  # inside the points' data
    with open(cut, "rb") as fh:
        with pytest.raises(NpzError, match="the file ends inside member 'points.npy'"):
            member_header(fh, info)
    cut.write_bytes(data[: info.header_offset + 10])  # inside the local header
    with open(cut, "rb") as fh:
        with pytest.raises(NpzError, match="no local file header for member 'points.npy'"):
            member_header(fh, info)
    with pytest.raises(zipfile.BadZipFile):  # no central directory: zipfile refuses it
        zipfile.ZipFile(cut)


def test_header_that_disagrees_with_the_member_size_rejected(tmp_path):
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("a.npy", "w") as w:
            np.lib.format.write_array_header_1_0(w, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (720, 3)})
            w.write(np.zeros((700, 3), np.float32).tobytes())
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        with pytest.raises(NpzError, match=r"member 'a.npy' holds \d+ bytes, its .npy header says"):
            member_header(fh, zf.getinfo("a.npy"))


def test_pickled_member_rejected(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, obj=np.array([{"a": 1}, None], dtype=object), ok=np.arange(3))
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        info = zf.getinfo("obj.npy")
        assert member_dtype(zf, info).hasobject
        assert not member_dtype(zf, "ok.npy").hasobject
        with pytest.raises(ValueError, match="[Oo]bject arrays cannot be loaded"):
            read_member(zf, info)
        with pytest.raises(ValueError, match="pickled"):
            map_member(path, fh, info)
        with pytest.raises(ValueError):
            load_member(zf, fh, path, info)


def test_member_that_is_not_npy_data(tmp_path):
    path = tmp_path / "raw.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", b"hello")
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        info = zf.getinfo("notes.txt")
        assert member_dtype(zf, info) is None
        assert member_header(fh, info) is None and map_member(path, fh, info) is None
        assert read_member(zf, info) == b"hello" == load_member(zf, fh, path, info)


@pytest.mark.parametrize("start", [0, 1, 63, 64, 1000])
def test_npy_header_aligns_the_data(start):
    shape = (123456789, 3)
    h = npy_header(np.float32, shape, start)
    assert (start + len(h)) % ALIGN == 0
    f = io.BytesIO(h)
    assert npzfile.read_npy_header(f) == (shape, False, np.dtype("<f4"))
    assert f.tell() == len(h)


def test_write_npy_file_reads_with_numpy(tmp_path):
    a = np.arange(30, dtype="<u2").reshape(10, 3)
    path = tmp_path / "a.npy"
    with open(path, "wb") as f:
        write_npy(f, a.dtype, a.shape, [a[:4], a[4:]])
    np.testing.assert_array_equal(np.load(path), a)
    m = np.load(path, mmap_mode="r")
    assert m.offset % ALIGN == 0
