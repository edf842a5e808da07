"""Aligned ``.npz`` archives: write members whose array data starts aligned, and read a
stored member's ``.npy`` header in place to memory-map its data.

Plain numpy and ``zipfile`` code (no kernels): the one reader and writer of the
``.npz`` files that ``kernels.kdtree.save_tree`` / ``load_tree``, the engine's dataset
reader (``engine.data.dataset``) and ``make-dataset`` use. Every file written here is an
ordinary ``.npz`` archive that ``numpy.load`` reads; the reader also maps archives that
``numpy.savez`` wrote (their member data is then usually not aligned).

An uncompressed (stored) zip member holds its ``.npy`` file byte for byte after the
member's local file header (30 bytes, the name and an extra field, whose lengths that
header gives; they may differ from the central directory's). So the array data of a
stored member sits at a fixed offset in the archive and ``numpy.memmap`` can map it.
Aligned data (a multiple of the dtype's alignment, 64 bytes here) is what makes the
mapped array the same numba type as an array in memory.

Writing
-------
- :class:`AlignedNpzWriter`: an ``.npz`` archive member by member, from an array or from
  an iterator of chunks (so nothing of the archive's size is built in memory), each
  stored member's data 64-byte aligned, every zip timestamp 1980-01-01 (same input, same
  bytes). Two ways to align, both readable by any ``.npz`` reader:
  ``pad="npy"`` pads the ``.npy`` header with spaces (:func:`npy_header`),
  ``pad="zip-extra"`` pads the zip extra field (as Android's zipalign does) and keeps
  numpy's own ``.npy`` header.
- :func:`npy_header`, :func:`write_npy`: one ``.npy`` file (header padded so the data
  starts aligned) written chunk by chunk to any binary file.

Reading
-------
- :func:`read_npy_header`: ``(shape, fortran_order, dtype)`` at a file's position.
- :func:`member_dtype`: the dtype of a member from its header only (to refuse pickled
  object arrays without loading anything).
- :func:`member_header`: where a stored member's ``.npy`` header and data lie in the
  archive, checked against the zip directory and the file size (:class:`NpzError`).
- :func:`map_array`, :func:`map_member`: read-only (or copy-on-write) memory maps.
- :func:`read_member`: a member read into memory as ``numpy.load`` reads it (CRC
  checked, no pickles).
- :func:`load_member`: mapped where the member allows it, else read.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from typing import Any, BinaryIO, Iterable, NamedTuple

import numpy as np

__all__ = [
    "ALIGN",
    "NPY_MAGIC",
    "ZIP_DATE",
    "AlignedNpzWriter",
    "MemberHeader",
    "NpzError",
    "is_stored",
    "load_member",
    "map_array",
    "map_member",
    "member_dtype",
    "member_header",
    "npy_header",
    "nbytes",
    "read_member",
    "read_npy_header",
    "write_npy",
]

#: The first bytes of every ``.npy`` file.
NPY_MAGIC = b"\x93NUMPY"
#: Array data of every stored member written here starts at a multiple of this.
ALIGN = 64
#: The timestamp of every member written here: the same arrays give the same bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

_LOCAL_HEADER = 30  # fixed part of a zip local file header
_ZIP64_EXTRA = 20  # the zip64 extra field zipfile writes with force_zip64=True
_PAD_EXTRA_ID = 0xD935  # zip extra-field id of the alignment padding (zipalign's)


class NpzError(ValueError):
    """An archive that is truncated or corrupt; the message names the member."""


class MemberHeader(NamedTuple):
    """Where a stored member's ``.npy`` data lies in its archive.

    ``npy_offset``: file offset of the member's ``.npy`` header (the member's first
    byte); ``data_offset``: file offset of the array data after that header.
    """

    shape: tuple
    fortran_order: bool
    dtype: np.dtype
    npy_offset: int
    data_offset: int


# --------------------------------------------------------------------------- writing


def _plain_shape(shape: Iterable) -> tuple:
    # repr() goes into the header: np.int64(5) would read back, but not as numpy writes it
    return tuple(int(s) for s in shape)


def npy_header(dtype: np.dtype, shape: tuple, data_start: int = 0) -> bytes:
    """A ``.npy`` header (version 1.0, or 2.0 if long) for a C-order array, padded with
    spaces so that the data after it starts at a multiple of :data:`ALIGN` bytes in the
    file when the header starts at byte ``data_start``.

    numpy pads to 64 from the header's own start (and adds room for growing the first
    axis); readers depend on neither, so this header reads everywhere.
    """
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": _plain_shape(shape)}
    text = ("{" + "".join(f"'{k}': {d[k]!r}, " for k in sorted(d)) + "}").encode("latin1")
    for version, fmt in (((1, 0), "<H"), ((2, 0), "<I")):
        prefix = len(NPY_MAGIC) + 2 + struct.calcsize(fmt)
        pad = (-(data_start + prefix + len(text) + 1)) % ALIGN
        length = len(text) + pad + 1
        if length < 256 ** struct.calcsize(fmt):
            break
    return NPY_MAGIC + bytes(version) + struct.pack(fmt, length) + text + b" " * pad + b"\n"


def _numpy_npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """The header ``numpy.lib.format.write_array`` writes for a C-order array."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": _plain_shape(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # a header over 64 KiB (a huge structured dtype): version 2.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _write_data(out: Any, name: str, dtype: np.dtype, shape: tuple, chunks: Iterable) -> None:
    """The chunks' bytes to ``out``, checked against ``dtype`` and ``shape`` (a chunk is
    rows of the array, C order; a 0-d array is one chunk)."""
    rows = 0
    for c in chunks:
        c = np.asarray(c)
        if c.dtype != dtype or c.shape[1:] != shape[1:]:
            raise ValueError(f"{name}: chunk {c.dtype} {c.shape} for {dtype} {shape}")
        rows += c.shape[0] if shape else 1
        out.write(np.ascontiguousarray(c).reshape(-1).view(np.uint8))
    if rows != (shape[0] if shape else 1):
        raise ValueError(f"{name}: got {rows} rows, the header says {shape}")


def write_npy(out: BinaryIO, dtype: Any, shape: tuple, chunks: Iterable[np.ndarray],
              position: int = 0, name: str = "array") -> None:
    """Write one ``.npy`` file, header then data, to the binary file ``out``.

    Parameters
    ----------
    out : binary file (or zip member writer)
    dtype : numpy dtype (no objects)
    shape : tuple of int
        The whole array's shape.
    chunks : iterable of ndarray
        The array's rows in order: each chunk ``(k, *shape[1:])`` of ``dtype``; for a
        0-d array one 0-d chunk.
    position : int
        Byte of the file at which the header starts (the data then starts at a multiple
        of :data:`ALIGN`); 0 for a file of its own.
    name : str
        For error messages.

    Raises
    ------
    ValueError
        A chunk of another dtype or row shape, or rows that do not add up to ``shape``.
    """
    dtype, shape = np.dtype(dtype), _plain_shape(shape)
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not written (no pickled data)")
    out.write(npy_header(dtype, shape, position))
    _write_data(out, name, dtype, shape, chunks)


class AlignedNpzWriter:
    """Write an ``.npz`` archive member by member (use as a context manager).

    Parameters
    ----------
    file : str, os.PathLike or a seekable binary file opened for writing
    compress : bool
        Deflate the members (then nothing is aligned: compressed data is never mapped).
    pad : {"npy", "zip-extra"}
        How a stored member's data is aligned: ``"npy"`` pads the ``.npy`` header
        (:func:`npy_header`); ``"zip-extra"`` pads the zip extra field and writes
        numpy's own ``.npy`` header (numpy's header is a multiple of 64 bytes long).
    external_attr : int
        The members' zip ``external_attr`` (Unix mode in the high 16 bits; 0: none).

    Every member is named ``NAME.npy`` (what ``numpy.load`` looks up as ``NAME``), dated
    :data:`ZIP_DATE`, with a zip64 extra field (so members over 4 GiB need no
    rewrite of the header).
    """

    def __init__(self, file: Any, compress: bool = False, pad: str = "npy",
                 external_attr: int = 0o644 << 16) -> None:
        if pad not in ("npy", "zip-extra"):
            raise ValueError(f"pad must be 'npy' or 'zip-extra', got {pad!r}")
        self.compress = bool(compress)
        self.pad = pad
        self.external_attr = external_attr
        self._method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._zf = zipfile.ZipFile(file, "w", compression=self._method, allowZip64=True)

    def __enter__(self) -> AlignedNpzWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Write the central directory (and close the file if this writer opened it)."""
        self._zf.close()

    def add(self, name: str, array: Any) -> None:
        """Add ``array`` (any array-like without objects; written C order) as ``NAME.npy``."""
        a = np.asarray(array)
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        self.add_chunks(name, a.dtype, a.shape, [a])

    def add_chunks(self, name: str, dtype: Any, shape: tuple,
                   chunks: Iterable[np.ndarray]) -> None:
        """Add an array of ``dtype`` and ``shape`` as ``NAME.npy`` from its chunks of rows
        (see :func:`write_npy`), streamed: only one chunk is in memory at a time."""
        dtype, shape = np.dtype(dtype), _plain_shape(shape)
        if dtype.hasobject:
            raise ValueError(f"{name}: object arrays are not written (no pickled data)")
        member = name + ".npy"
        info = zipfile.ZipInfo(member, date_time=ZIP_DATE)
        info.compress_type = self._method
        if self.external_attr:
            info.external_attr = self.external_attr
        fp = self._zf.fp
        if self.pad == "zip-extra" and not self.compress:
            # The data starts after the local header (30 bytes + name + this extra field
            # of 4 + pad bytes + the zip64 extra that force_zip64 appends) and numpy's
            # header, whose length is a multiple of 64.
            offset = fp.tell() + _LOCAL_HEADER + len(member.encode()) + _ZIP64_EXTRA + 4
            pad = (-offset) % ALIGN
            info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"\0" * pad
        with self._zf.open(info, "w", force_zip64=True) as w:
            if self.pad == "zip-extra":
                w.write(_numpy_npy_header(dtype, shape))
                _write_data(w, name, dtype, shape, chunks)
            else:
                # Opening the member wrote its local header: fp.tell() is where the
                # member's first byte (the .npy header) lies in the file.
                write_npy(w, dtype, shape, chunks, 0 if self.compress else fp.tell(), name)


# --------------------------------------------------------------------------- reading


def read_npy_header(fh: BinaryIO) -> tuple[tuple, bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header at ``fh``'s position;
    leaves ``fh`` at the first byte of the array data.

    Raises ValueError (numpy's) for a malformed header.
    """
    version = np.lib.format.read_magic(fh)
    # Versions 2.0 and 3.0 differ only in the header's text encoding (latin-1 / utf-8).
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def nbytes(shape: tuple, dtype: np.dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (Python ints: no overflow)."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(dtype).itemsize


def is_stored(info: zipfile.ZipInfo) -> bool:
    """Whether the member's bytes lie in the archive as they are (stored, not encrypted),
    so that they can be mapped."""
    return info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1


def member_dtype(zf: zipfile.ZipFile, info: zipfile.ZipInfo | str) -> np.dtype | None:
    """The dtype a ``.npy`` member holds, from its header only; None if the member is not
    ``.npy`` data. ``dtype.hasobject`` means pickled Python objects."""
    with zf.open(info) as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            return None
        f.seek(0)
        return read_npy_header(f)[2]


def _file_size(fh: BinaryIO) -> int:
    try:
        return os.fstat(fh.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return fh.seek(0, io.SEEK_END)


def member_header(fh: BinaryIO, info: zipfile.ZipInfo) -> MemberHeader | None:
    """Where the stored member ``info`` of the archive open as ``fh`` (binary, seekable)
    keeps its ``.npy`` header and array data; None if the member is not ``.npy`` data.

    Raises
    ------
    ValueError
        The member is compressed or encrypted (:func:`is_stored` is False), or holds
        pickled objects (an object array).
    NpzError
        No local file header at the directory's offset, a ``.npy`` header that
        disagrees with the member's size in the zip directory, or a file that ends
        inside the member.
    ValueError (numpy's)
        A malformed ``.npy`` header.
    """
    if not is_stored(info):
        raise ValueError(f"member {info.filename!r} is compressed or encrypted: not in place")
    fh.seek(info.header_offset)
    local = fh.read(_LOCAL_HEADER)
    if len(local) != _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise NpzError(f"no local file header for member {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + _LOCAL_HEADER + name_len + extra_len
    fh.seek(start)
    if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
        return None
    fh.seek(start)
    shape, fortran, dtype = read_npy_header(fh)
    if dtype.hasobject:  # its bytes are a pickle, not array data: nothing to map
        raise ValueError(f"member {info.filename!r} holds pickled Python objects")
    data = fh.tell()
    size = nbytes(shape, dtype)
    if data - start + size != info.file_size:
        raise NpzError(
            f"member {info.filename!r} holds {info.file_size} bytes, its .npy header "
            f"says {data - start + size}"
        )
    if data + size > _file_size(fh):
        raise NpzError(f"the file ends inside member {info.filename!r}")
    return MemberHeader(shape, fortran, dtype, start, data)


def map_array(path: str | os.PathLike, dtype: Any, shape: tuple, offset: int,
              fortran_order: bool = False, mode: str = "r") -> np.ndarray:
    """A memory map of an array of ``dtype`` and ``shape`` stored at byte ``offset`` of
    the file ``path``.

    ``mode`` ``"r"``: read-only; ``"c"``: copy-on-write (writeable; writes stay in memory,
    never reach the file). An empty array has nothing to map: an in-memory array of the
    same shape, read-only for ``"r"``.
    """
    dtype = np.dtype(dtype)
    order = "F" if fortran_order else "C"
    if nbytes(shape, dtype) == 0:
        a = np.empty(shape, dtype=dtype, order=order)
        a.flags.writeable = mode != "r"
        return a
    return np.memmap(path, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)


def map_member(path: str | os.PathLike, fh: BinaryIO, info: zipfile.ZipInfo,
               mode: str = "r") -> tuple[np.ndarray, MemberHeader] | None:
    """Memory-map the stored ``.npy`` member ``info`` of the archive ``path`` (open as
    ``fh``): ``(array, header)``, or None if the member is not ``.npy`` data.

    The map is made whatever the data's alignment (x86-64 and AArch64 load misaligned
    data; ``header.data_offset % dtype.alignment`` tells). The member's CRC is not
    checked (that would read it all): a caller that needs it checks it while reading.
    Raises as :func:`member_header`.
    """
    header = member_header(fh, info)
    if header is None:
        return None
    a = map_array(path, header.dtype, header.shape, header.data_offset,
                  header.fortran_order, mode)
    return a, header


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo | str) -> np.ndarray | bytes:
    """A member read into memory as ``numpy.load`` reads it: the array (zipfile checks
    the CRC; pickled data is a ValueError), or the raw bytes of a member that is not
    ``.npy`` data."""
    with zf.open(info) as m:
        if m.read(len(NPY_MAGIC)) != NPY_MAGIC:
            return zf.read(info)
    with zf.open(info) as m:
        return np.lib.format.read_array(m, allow_pickle=False)


def load_member(zf: zipfile.ZipFile, fh: BinaryIO, path: str | os.PathLike,
                info: zipfile.ZipInfo, mmap: bool = True, mode: str = "r") -> np.ndarray | bytes:
    """One member of the archive ``path`` (open as ``zf`` and as the binary file ``fh``):
    memory-mapped (``mode`` as :func:`map_array`) when ``mmap`` and the member is stored,
    ``.npy`` data, not empty and aligned to its dtype; otherwise read into memory
    (:func:`read_member`: compressed members, misaligned data, empty arrays).

    Raises as :func:`member_header` and :func:`read_member`.
    """
    if mmap and is_stored(info):
        header = member_header(fh, info)
        if (header is not None and nbytes(header.shape, header.dtype) > 0
                and header.data_offset % max(header.dtype.alignment, 1) == 0):
            return map_array(path, header.dtype, header.shape, header.data_offset,
                             header.fortran_order, mode)
    return read_member(zf, info)
