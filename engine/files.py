"""Atomic file and folder writes: the one writer every engine module uses.

A file is written under a hidden temporary name next to its target
(``.NAME.<random>.tmp``), flushed to disk, optionally checked, then renamed onto the
target, so a reader sees the old file or the whole new one, never a half-written one,
and an interrupted or failed write leaves the target as it was and no temporary file
behind.

- :func:`atomic_write`: a binary file through ``fill(open file)``.
- :func:`atomic_write_text`: a text file (UTF-8, newlines as given).
- :func:`atomic_write_dir`: a folder through ``fill(temporary folder)``.
- :func:`check_replaceable_folder`: whether a folder may be replaced by a new one.
- :func:`write_new_file`: create a file that must not exist yet, write it, fsync it
  (a file inside a private staging folder, committed by the caller's own renames).
- :func:`unwritable_folder`: why files cannot be created in a folder (or None), without
  creating anything.
- :func:`fsync_folder`: flush a folder's entries (renames, unlinks) to disk.

New files get the mode any file the user creates gets (0666 less the umask: 0644
under umask 022), unlike ``tempfile.mkstemp``'s 0600, which would leave results
unreadable to the group. Temporary files are created exclusively (``open(..., "xb")``),
so two writers never write into each other's temporary file.

Errors: ``OSError`` from the file system reaches the caller unchanged (a caller that
reports errors in its own terms, as the dataset writer does, translates it). This module
sits below every other engine module and imports nothing from the engine.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from typing import BinaryIO, Callable

__all__ = [
    "atomic_write",
    "atomic_write_dir",
    "atomic_write_text",
    "check_replaceable_folder",
    "fsync_folder",
    "temporary_name",
    "unwritable_folder",
    "write_new_file",
]


def temporary_name(path: str | os.PathLike, suffix: str = "tmp") -> str:
    """A hidden name next to ``path`` that no other writer uses:
    ``FOLDER/.NAME.<12 hex digits>.SUFFIX``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.normpath(path))
    return os.path.join(folder, f".{base}.{secrets.token_hex(6)}.{suffix}")


def atomic_write(
    path: str | os.PathLike,
    fill: Callable[[BinaryIO], object],
    check: Callable[[str], object] | None = None,
) -> None:
    """Write the file ``path`` through ``fill(binary file open for writing)`` under a
    temporary name, run ``check(temporary path)`` if given (it may raise to refuse the
    file), then rename it onto ``path`` (replacing an existing file).

    The data is fsynced before the rename, so that after a crash ``path`` holds the old
    file or the new one, not an empty one. Any failure (an exception from ``fill`` or
    ``check``, a KeyboardInterrupt, an ``OSError``) removes the temporary file, leaves
    ``path`` as it was and propagates. The parent folder must exist. A ``path`` that
    exists and is not a regular file (a folder, a device such as ``/dev/null``, a FIFO, a
    socket) is refused with ``IsADirectoryError`` / ``FileExistsError`` before anything is
    written: the rename would replace it (as root, even ``/dev/null``).
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isfile(path):
        err = IsADirectoryError if os.path.isdir(path) else FileExistsError
        raise err(errno.EISDIR if err is IsADirectoryError else errno.EEXIST,
                  "exists and is not a regular file", path)
    tmp = temporary_name(path)
    # "xb" creates the file with the umask's mode (mkstemp's would be 0600) and fails
    # rather than clobber a file of that name; that failure is outside the try below,
    # which removes the temporary file: a name we did not create is not ours to remove.
    f = open(tmp, "xb")
    try:
        with f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to the file ``path`` atomically (:func:`atomic_write`), encoded as
    ``encoding``, newlines written as they are in ``text`` (no translation)."""
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))


def check_replaceable_folder(
    path: str | os.PathLike,
    marker: str | None = None,
    what: str = "a folder this program writes",
    error: Callable[[str], BaseException] = FileExistsError,
) -> None:
    """Raise ``error(message)`` unless ``path`` is absent, an empty folder, or a folder
    holding the file ``marker`` (a folder this program wrote before, described by
    ``what``): replacing anything else would delete the user's files.

    The message names ``path``, says what is there and what to do; an ``OSError`` while
    listing the folder is also reported through ``error``.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise error(
            f"{path}: exists and is not a folder; {what} is a folder "
            "(remove the file or choose another name)"
        )
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise error(f"{path}: cannot write {what} ({exc})") from exc
    if names and (marker is None or marker not in names):
        missing = "is not empty" if marker is None else f"is not {what} (no {marker})"
        raise error(
            f"{path}: folder exists and {missing}; not replacing it (remove it or choose "
            "another name)"
        )


def atomic_write_dir(
    path: str | os.PathLike,
    fill: Callable[[str], object],
    check: Callable[[str], object] | None = None,
    replaceable: Callable[[str], object] = check_replaceable_folder,
) -> None:
    """Write the folder ``path`` through ``fill(temporary folder)`` (which creates the
    files in it), run ``check(temporary folder)`` if given, then rename it onto ``path``.

    ``replaceable(path)`` is called first and again just before the swap; it raises to
    refuse replacing what is at ``path`` (default :func:`check_replaceable_folder`: only
    an empty folder is replaced). A folder that may be replaced is renamed aside, the new
    folder renamed in, the old one deleted (``path`` is briefly missing in between:
    POSIX has no atomic exchange of folders). The files ``fill`` writes should be
    fsynced by it; the folder's entries are fsynced here. Any failure removes the
    temporary folder, leaves ``path`` as it was and propagates.
    """
    path = os.fspath(path)
    replaceable(path)
    tmp = temporary_name(path)
    os.mkdir(tmp)  # fails rather than reuse another writer's folder (and leaves it)
    try:
        fill(tmp)
        if check is not None:
            check(tmp)
        fsync_folder(tmp)
        if os.path.lexists(path):
            replaceable(path)  # something may have appeared since the first check
            old = temporary_name(path, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Create the file ``path`` (which must not exist), write ``data`` and fsync it.

    Not atomic by itself: for a file in a folder nobody else reads (a staging folder)
    that the caller renames into place. A failure removes the partly written file and
    propagates.
    """
    path = os.fspath(path)
    f = open(path, "xb")  # our file from here on (the umask's mode, as atomic_write)
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why files cannot be created in the folder ``path`` (or, when it does not exist
    yet, why it cannot be created), or None when they can. Creates nothing.

    Looks at ``path`` or its nearest existing parent: not a folder; a read-only file
    system; no write or search permission (``os.access``: the real user's rights, which
    for root on a writable file system are all rights). Returns a short reason such as
    ``"read-only file system"``.
    """
    path = os.path.abspath(os.fspath(path))
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return "exists and is not a folder" if probe == path else f"{probe} is not a folder"
    if os.access(probe, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    where = "" if probe == path else f" ({probe})"
    return ("read-only file system" if read_only else "permission denied") + where


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries to disk (where the platform allows opening folders)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
