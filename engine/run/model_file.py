"""Saved models, format ``engine-model/1``: what training learned, in one ``.npz`` file
that is validated on read and memory-mapped.

``python -m engine train CONFIG --save MODEL`` writes one; ``python -m engine run CONFIG
--model MODEL`` (or ``model.path`` in the config) evaluates it without training.

The file
--------
An uncompressed ``.npz`` archive (``kernels.npzfile.AlignedNpzWriter``: every member's
data 64-byte aligned, every zip date 1980-01-01, no pickled data anywhere) holding:

- ``format``: a 0-d str array, :data:`FORMAT`;
- ``meta``: a 0-d str array, a JSON object: ``engine_version``, ``model_type``,
  ``config`` (the resolved config it was trained with), ``trained_on`` (the digest of the
  training data, :func:`digest_arrays`), ``feature_columns`` (the data's feature columns,
  in order), ``settings`` (the settings the model was learned with: the ones an
  evaluating config must match, or that the model is rebuilt for) and ``training``
  (what the training was: episode counts and the like, per model type);
- ``digest``: a 0-d str array, ``sha256:<hex>`` over ``meta`` and every array
  (:func:`content_digest`), checked on read;
- the model type's arrays, one member each (their names, dtypes and shapes are the model
  type's: ``engine.models.evidence.run.MODEL_ARRAYS``,
  ``engine.models.similarity.model_arrays_spec``).

Reading (:func:`read_model`) maps every array copy-on-write (``numpy.memmap`` mode
``"c"``: the same numba type as an array in memory, so no kernel compiles anew, and
processes that map one file share its pages) and refuses, with one line naming the file
and member (:class:`ModelFileError`, exit 2 from the CLI): a missing file, a folder, an
empty file or one that is not a zip archive, a truncated or corrupt archive, a pickled
member, a compressed member, an unknown ``format`` (version), ``meta`` that is not the
JSON object described above, NaN in any float array, a digest that does not match.
The model type then checks its arrays' names, dtypes and shapes
(:func:`check_arrays`) and their contents, and the config against ``meta``
(:func:`check_feature_columns`, :func:`check_settings`).

Files are written atomically (``engine.files.atomic_write``), and read back and checked
before they are renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from engine import __version__
from engine.errors import UserError
from engine.files import atomic_write
from kernels import npzfile

__all__ = ["FORMAT", "META_KEYS", "ModelFileError", "SavedModel", "check_arrays", "check_feature_columns",
           "check_settings", "content_digest", "digest_arrays", "read_model", "write_model"]

#: The ``format`` member of every model file this module writes and reads.
FORMAT = "engine-model/1"
#: The keys ``meta`` must hold.
META_KEYS = ("engine_version", "model_type", "config", "trained_on", "feature_columns", "settings", "training")
#: Members every model file holds besides the model type's arrays.
_RESERVED = ("format", "meta", "digest")


class ModelFileError(UserError, ValueError):
    """A model file that cannot be used: the message names the file and says why (one line)."""


@dataclass
class SavedModel:
    """A model file read and checked by :func:`read_model`.

    ``arrays``: the model type's arrays (copy-on-write memory maps of the file where
    possible); ``meta``: the JSON object; ``digest``: its content digest.
    """

    path: str
    meta: dict
    arrays: dict
    digest: str

    @property
    def model_type(self) -> str:
        return self.meta["model_type"]

    @property
    def feature_columns(self) -> list:
        return list(self.meta["feature_columns"])

    @property
    def settings(self) -> dict:
        return dict(self.meta["settings"])

    @property
    def training(self) -> dict:
        return dict(self.meta["training"])

    @property
    def trained_on(self) -> str:
        return self.meta["trained_on"]

    def error(self, detail: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {detail}")


# --------------------------------------------------------------------------- digests


def _update(h, a: np.ndarray, name: str = "") -> None:
    a = np.asarray(a)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    a = np.ascontiguousarray(a)
    if a.size:
        h.update(memoryview(a.reshape(-1).view(np.uint8)))


def digest_arrays(arrays: Iterable) -> str:
    """``sha256:<hex>`` over a sequence of arrays (each one's dtype, shape and bytes, in
    order): the digest of training data (``trained_on``)."""
    h = hashlib.sha256()
    for a in arrays:
        _update(h, a)
    return "sha256:" + h.hexdigest()


def content_digest(meta_json: str, arrays: dict) -> str:
    """``sha256:<hex>`` over the ``meta`` text and every array by name (sorted): the
    ``digest`` member, and summary.json's ``model_digest``."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(arrays):
        _update(h, arrays[name], name)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- writing


def _plain(value):
    """``value`` as JSON data (tuples to lists, numpy scalars to Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_model(path: str | os.PathLike, model_type: str, arrays: dict, *, config: dict, trained_on: str,
                feature_columns, settings: dict, training: dict) -> str:
    """Write a model file atomically; returns its content digest.

    ``arrays``: name -> array (no object arrays; names other than ``format``, ``meta``
    and ``digest``); the rest goes into ``meta``. The written file is read back with
    :func:`read_model` before it replaces ``path``. Raises :class:`ModelFileError` when
    the file cannot be written.
    """
    path = os.fspath(path)
    clash = [n for n in arrays if n in _RESERVED]
    if clash:
        raise ValueError(f"array names {clash} are reserved")
    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    meta = _plain({"engine_version": __version__, "model_type": model_type, "config": config,
                   "trained_on": trained_on, "feature_columns": list(feature_columns), "settings": settings,
                   "training": training})
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    digest = content_digest(meta_json, arrays)

    def fill(f):
        with npzfile.AlignedNpzWriter(f, pad="npy") as w:
            w.add("format", np.array(FORMAT))
            w.add("meta", np.array(meta_json))
            w.add("digest", np.array(digest))
            for name, a in arrays.items():
                w.add(name, a)

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory; a model is saved as one file (choose a file name)")
    if not os.path.isdir(folder):
        raise ModelFileError(f"{path}: cannot save the model: folder {folder} does not exist")
    try:
        atomic_write(path, fill, check=lambda tmp: read_model(tmp, mmap=False))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot save the model ({exc.strerror or exc})") from None
    return digest


# --------------------------------------------------------------------------- reading


def _open_checks(path: str) -> None:
    if not os.path.lexists(path):
        raise ModelFileError(f"{path}: model file not found (write one with python -m engine train CONFIG --save PATH)")
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not a model file (a model is one .npz file written by "
                             "python -m engine train --save)")


def _leading_bytes(path: str, head: bytes) -> None:
    if not head:
        raise ModelFileError(f"{path}: empty file; expected a model file ({FORMAT}, an .npz archive)")
    if not head.startswith(b"PK"):
        raise ModelFileError(f"{path}: not a model file (not a zip/npz archive: it starts with {head[:8]!r}); "
                             f"expected {FORMAT}")


def _str_member(path: str, name: str, value) -> str:
    if not (isinstance(value, np.ndarray) and value.dtype.kind == "U" and value.shape == ()):
        raise ModelFileError(f"{path}: member '{name}': expected a 0-d str array, got "
                             f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}")
    return str(value)


def _check_meta(path: str, meta_json: str) -> dict:
    try:
        meta = json.loads(meta_json)
    except ValueError as exc:
        raise ModelFileError(f"{path}: member 'meta': not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: member 'meta': a JSON {type(meta).__name__}, expected an object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{path}: member 'meta': missing {', '.join(missing)}")
    kinds = {"engine_version": str, "model_type": str, "config": dict, "trained_on": str, "feature_columns": list,
             "settings": dict, "training": dict}
    for key, kind in kinds.items():
        if not isinstance(meta[key], kind):
            raise ModelFileError(f"{path}: member 'meta': '{key}' is a {type(meta[key]).__name__}, "
                                 f"expected a {kind.__name__}")
    if not all(isinstance(c, str) for c in meta["feature_columns"]):
        raise ModelFileError(f"{path}: member 'meta': 'feature_columns' must be a list of names")
    return meta


def _check_no_nan(path: str, name: str, a: np.ndarray) -> None:
    if a.dtype.kind == "f" and a.size:
        bad = np.isnan(a)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ModelFileError(f"{path}: member '{name}' holds NaN (first at index {where}); a model holds "
                                 "no NaN")


def read_model(path: str | os.PathLike, mmap: bool = True) -> SavedModel:
    """Read and check a model file (see the module docstring); every problem is a
    :class:`ModelFileError` naming the file.

    With ``mmap`` the arrays are copy-on-write memory maps of the file (writeable
    arrays whose writes never reach the file); without, they are read into memory.
    """
    path = os.fspath(path)
    _open_checks(path)
    try:
        with open(path, "rb") as fh:
            _leading_bytes(path, fh.read(8))
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                by_key = {}
                for info in infos:
                    name = info.filename
                    if not name.endswith(".npy"):
                        raise ModelFileError(f"{path}: member {name!r} is not a .npy array")
                    key = name[:-4]
                    if key in by_key:
                        raise ModelFileError(f"{path}: member {name!r} appears twice")
                    dtype = npzfile.member_dtype(zf, info)
                    if dtype is None:
                        raise ModelFileError(f"{path}: member {name!r} is not .npy data")
                    if dtype.hasobject:
                        raise ModelFileError(f"{path}: member '{key}' holds pickled Python objects; a model file "
                                             "holds no pickled data")
                    if not npzfile.is_stored(info):
                        raise ModelFileError(f"{path}: member '{key}' is compressed; a model file is stored "
                                             "uncompressed (so that it can be memory-mapped)")
                    by_key[key] = info
                for key in _RESERVED:
                    if key not in by_key:
                        raise ModelFileError(f"{path}: member '{key}' is missing: not a model file ({FORMAT})")
                fmt = _str_member(path, "format", npzfile.read_member(zf, by_key["format"]))
                if fmt != FORMAT:
                    raise ModelFileError(f"{path}: unknown model format {fmt!r}; this engine reads {FORMAT!r} "
                                         "(retrain the model with this version: python -m engine train)")
                meta_json = _str_member(path, "meta", npzfile.read_member(zf, by_key["meta"]))
                meta = _check_meta(path, meta_json)
                digest = _str_member(path, "digest", npzfile.read_member(zf, by_key["digest"]))
                arrays = {}
                for key, info in by_key.items():
                    if key in _RESERVED:
                        continue
                    a = npzfile.load_member(zf, fh, path, info, mmap=mmap, mode="c")
                    if not isinstance(a, np.ndarray):
                        raise ModelFileError(f"{path}: member '{key}' is not .npy data")
                    arrays[key] = np.asarray(a)  # a plain ndarray view of the map (numba types it as in memory)
    except ModelFileError:
        raise
    except MemoryError:
        raise
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - nothing from numpy or zipfile may escape
        # zipfile.BadZipFile (truncated: no central directory), NpzError (the file ends
        # inside a member), ValueError (a malformed .npy header), CRC errors
        raise ModelFileError(f"{path}: truncated or corrupt model file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for key, a in arrays.items():
        _check_no_nan(path, key, a)
    if content_digest(meta_json, arrays) != digest:
        raise ModelFileError(f"{path}: corrupt model file: its content does not match its digest "
                             f"(meta or an array changed after it was written)")
    return SavedModel(path, meta, arrays, digest)


# --------------------------------------------------------------------------- checks a model type makes


def check_arrays(saved: SavedModel, spec, sizes: dict | None = None) -> dict:
    """Check that ``saved.arrays`` are exactly the arrays of ``spec``: ``(name, dtype,
    shape)`` rows, a shape entry an int or a size symbol (``"N"``, ``"O+1"``: one more
    than ``O``); ``dtype`` a numpy dtype, a tuple of allowed ones, or ``"str"`` (any
    unicode). Symbols are bound by the first array that uses them (or by ``sizes``).
    Returns the bound sizes; raises :class:`ModelFileError` otherwise."""
    sizes = dict(sizes or {})
    names = [row[0] for row in spec]
    extra = sorted(set(saved.arrays) - set(names))
    if extra:
        raise saved.error(f"unexpected member '{extra[0]}' for a {saved.model_type} model")
    for name, dtype, shape in spec:
        if name not in saved.arrays:
            raise saved.error(f"member '{name}' is missing (a {saved.model_type} model needs it)")
        a = saved.arrays[name]
        if dtype == "str":
            ok = a.dtype.kind == "U"
            want = "str"
        else:
            allowed = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
            ok = a.dtype in allowed
            want = " or ".join(d.name for d in allowed)
        if not ok:
            raise saved.error(f"member '{name}': dtype {a.dtype.name}, expected {want}")
        if a.ndim != len(shape):
            raise saved.error(f"member '{name}': shape {a.shape}, expected {len(shape)} dimension(s) "
                              f"({', '.join(map(str, shape))})")
        for axis, (want_n, n) in enumerate(zip(shape, a.shape)):
            if isinstance(want_n, str):
                symbol, _, plus = want_n.partition("+")
                extra_n = int(plus) if plus else 0
                if symbol not in sizes:
                    sizes[symbol] = n - extra_n
                want_n = sizes[symbol] + extra_n
            if n != want_n:
                raise saved.error(f"member '{name}': shape {a.shape}, expected {want_n} along axis {axis} "
                                  f"({', '.join(map(str, shape))} with {_bound(sizes)})")
    return sizes


def _bound(sizes: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sizes.items()) or "no sizes"


def check_model_type(saved: SavedModel, model_type: str, source: str) -> None:
    """A model of another type than the config's is an error."""
    if saved.model_type != model_type:
        raise saved.error(f"a {saved.model_type!r} model, but {source} has model.type {model_type!r} "
                          "(evaluate it with a config of its model type)")


def check_feature_columns(saved: SavedModel, columns, source: str) -> None:
    """The data's feature columns must be the ones the model was learned with."""
    columns = [str(c) for c in columns]
    if columns != saved.feature_columns:
        raise saved.error(f"learned with feature columns {saved.feature_columns}, but the data of {source} has "
                          f"{columns}")


def check_settings(saved: SavedModel, current: dict, source: str, section: str) -> None:
    """Every setting in ``current`` must equal the one the model was learned with."""
    learned = saved.settings
    for key, value in current.items():
        if key not in learned:
            raise saved.error(f"setting '{key}' is missing from the model's meta")
        if _plain(value) != learned[key]:
            raise saved.error(f"learned with {section}.{key} = {learned[key]!r}, but {source} sets {value!r} "
                              f"(a learning setting: evaluate with the value it was trained with, or retrain)")


def settings_of(obj: Any, keys) -> dict:
    """``{key: obj.key}`` as JSON data."""
    return {k: _plain(getattr(obj, k)) for k in keys}
