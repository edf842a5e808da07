"""engine.files: the atomic writers, and the modes of the files the engine writes with them."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from engine.files import (
    atomic_write,
    atomic_write_dir,
    atomic_write_text,
    check_replaceable_folder,
    fsync_folder,
    temporary_name,
    unwritable_folder,
    write_new_file,
)


@pytest.fixture
def umask022():
    """Run the test under umask 022 (what most users have), then restore the old one."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- the writers


def test_text_is_written_as_given(tmp_path):
    target = tmp_path / "a.csv"
    atomic_write_text(target, "x,y\r\n1,ä\n")
    assert target.read_bytes() == "x,y\r\n1,ä\n".encode()  # no newline translation, UTF-8
    atomic_write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert os.listdir(tmp_path) == ["a.csv"]


def test_binary_fill_and_check_see_the_temporary_file(tmp_path):
    target = tmp_path / "b.bin"
    seen = []

    def check(tmp):
        seen.append(tmp)
        with open(tmp, "rb") as f:
            assert f.read() == b"\x00\x01"
        assert not target.exists()  # not renamed before the check passes

    atomic_write(target, lambda f: f.write(b"\x00\x01"), check)
    assert target.read_bytes() == b"\x00\x01"
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert os.path.basename(seen[0]).startswith(".b.bin.") and seen[0].endswith(".tmp")
    assert not os.path.exists(seen[0])


@pytest.mark.parametrize("failure", ["fill", "check", "replace", "interrupt"])
def test_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    target = tmp_path / "c.txt"
    target.write_text("old")

    def fill(f):
        f.write(b"new")
        if failure == "fill":
            raise ValueError("bad data")
        if failure == "interrupt":
            raise KeyboardInterrupt

    def check(tmp):
        if failure == "check":
            raise ValueError("refused")

    if failure == "replace":
        def boom(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", boom)
    with pytest.raises((ValueError, OSError, KeyboardInterrupt)):
        atomic_write(target, fill, check)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["c.txt"]


def test_missing_folder_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "x.txt", "x")
    assert os.listdir(tmp_path) == []


def test_never_clobbers_another_writers_temporary_file(tmp_path, monkeypatch):
    """Temporary files are created exclusively: a name already taken is an error, the
    other writer's file stays as it was."""
    target = tmp_path / "d.txt"
    taken = tmp_path / ".d.txt.000000000000.tmp"
    taken.write_text("another writer's data")
    monkeypatch.setattr("engine.files.temporary_name", lambda path, suffix="tmp": str(taken))
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "mine")
    assert taken.read_text() == "another writer's data"
    assert not target.exists()


def test_temporary_names_differ(tmp_path):
    names = {temporary_name(tmp_path / "x") for _ in range(50)}
    assert len(names) == 50
    assert all(os.path.basename(n).startswith(".x.") for n in names)


def test_files_honour_the_umask(tmp_path, umask022):
    atomic_write_text(tmp_path / "t.txt", "x")
    atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    assert _mode(tmp_path / "t.txt") == 0o644
    assert _mode(tmp_path / "b.bin") == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600


# --------------------------------------------------------------------------- folders


def _fill(names):
    def fill(folder):
        for name in names:
            with open(os.path.join(folder, name), "xb") as f:
                f.write(name.encode())

    return fill


def test_folder_written_and_replaced(tmp_path, umask022):
    target = tmp_path / "out"
    atomic_write_dir(target, _fill(["MARK", "a"]), replaceable=lambda p: check_replaceable_folder(p, "MARK"))
    assert sorted(os.listdir(target)) == ["MARK", "a"]
    assert _mode(target) == 0o755 and _mode(target / "a") == 0o644
    atomic_write_dir(target, _fill(["MARK", "b"]), replaceable=lambda p: check_replaceable_folder(p, "MARK"))
    assert sorted(os.listdir(target)) == ["MARK", "b"]
    assert os.listdir(tmp_path) == ["out"]  # no temporary or old folder left


def test_folder_failure_leaves_the_old_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()

    def fill(folder):
        _fill(["x"])(folder)
        raise KeyboardInterrupt

    def refuse(folder):
        raise ValueError("refused")

    with pytest.raises(KeyboardInterrupt):
        atomic_write_dir(target, fill)
    with pytest.raises(ValueError, match="refused"):
        atomic_write_dir(target, _fill(["x"]), refuse)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(target) == []


def test_never_removes_another_writers_temporary_folder(tmp_path, monkeypatch):
    taken = tmp_path / ".out.000000000000.tmp"
    taken.mkdir()
    (taken / "theirs").write_text("x")
    monkeypatch.setattr("engine.files.temporary_name", lambda path, suffix="tmp": str(taken))
    with pytest.raises(FileExistsError):
        atomic_write_dir(tmp_path / "out", _fill(["a"]))
    assert (taken / "theirs").read_text() == "x"


def test_replaceable_folder_rules(tmp_path):
    check_replaceable_folder(tmp_path / "absent", "MARK")
    (tmp_path / "empty").mkdir()
    check_replaceable_folder(tmp_path / "empty", "MARK")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "MARK").write_text("")
    check_replaceable_folder(tmp_path / "ours", "MARK")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match=r"theirs: folder exists and is not a thing \(no MARK\)"):
        check_replaceable_folder(tmp_path / "theirs", "MARK", "a thing")
    with pytest.raises(FileExistsError, match="is not empty"):
        check_replaceable_folder(tmp_path / "ours")  # no marker: only empty folders
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeyError, match="exists and is not a folder; a thing is a folder"):
        check_replaceable_folder(tmp_path / "file", "MARK", "a thing", KeyError)
    with pytest.raises(FileExistsError):
        atomic_write_dir(tmp_path / "theirs", _fill(["x"]))
    assert (tmp_path / "theirs" / "thesis.tex").read_text() == "precious"


# --------------------------------------------------------------------------- staged files, writable folders


def test_write_new_file_never_replaces(tmp_path, umask022):
    target = tmp_path / "n.csv"
    write_new_file(target, b"a,b\n")
    assert target.read_bytes() == b"a,b\n" and _mode(target) == 0o644
    with pytest.raises(FileExistsError):
        write_new_file(target, b"other")
    assert target.read_bytes() == b"a,b\n"


def test_write_new_file_removes_a_partial_file(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        write_new_file(tmp_path / "n.csv", b"data")
    assert os.listdir(tmp_path) == []


def test_unwritable_folder(tmp_path, monkeypatch):
    assert unwritable_folder(tmp_path) is None
    assert unwritable_folder(tmp_path / "not" / "yet") is None  # would be created in tmp_path
    (tmp_path / "f").write_text("")
    assert unwritable_folder(tmp_path / "f") == "exists and is not a folder"
    assert unwritable_folder(tmp_path / "f" / "x") == f"{tmp_path / 'f'} is not a folder"
    asked = []
    monkeypatch.setattr(os, "access", lambda p, mode: asked.append((p, mode)) and False)
    assert unwritable_folder(tmp_path / "new") == f"permission denied ({tmp_path})"
    assert asked == [(str(tmp_path), os.W_OK | os.X_OK)]
    fsync_folder(tmp_path)  # no error on a folder
    assert os.listdir(tmp_path) == ["f"]  # the checks created nothing


# --------------------------------------------------------------------------- the engine's files


def test_results_are_readable_by_group_and_others(tmp_path, root, umask022):
    from engine.cli import main

    out = tmp_path / "o"
    assert main(["-q", "run", str(root / "configs/demo.yaml"), "--out", str(out)]) == 0
    for name in ("summary.json", "episodes.csv"):
        assert _mode(out / name) == 0o644, name


def test_bench_json_is_readable(tmp_path, umask022):
    from engine.bench.seed import write_json

    write_json([{"a": np.float64(1.5)}], tmp_path / "new" / "rows.json")
    assert _mode(tmp_path / "new" / "rows.json") == 0o644
    assert (tmp_path / "new" / "rows.json").read_text() == '[\n {\n  "a": 1.5\n }\n]\n'


def test_plots_are_readable(tmp_path, umask022):
    pytest.importorskip("matplotlib")
    from engine.models.evidence.run import write_plots

    trace = np.array([[0.5, 0.1], [1.0, np.inf]], np.float32)
    ep = SimpleNamespace(trace=trace, object="box", epoch=0, episode=3, outcome="correct")
    result = SimpleNamespace(episodes=[ep], object_names=["box", "mug"])
    (path,) = write_plots(tmp_path, result)
    assert path == tmp_path / "evidence_0_3.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _mode(path) == 0o644
    assert os.listdir(tmp_path) == ["evidence_0_3.png"]


def test_datasets_are_readable(tmp_path, root, umask022):
    from engine.data.dataset import read_dataset, write_dataset
    from engine.data.make_dataset import make_dataset

    ds = read_dataset(root / "configs/data/example_episodes.npz")
    write_dataset(tmp_path / "a.npz", ds)
    write_dataset(tmp_path / "d", ds, layout="npy-dir")
    make_dataset("sphere", 10, tmp_path / "m.npz")
    make_dataset("sphere", 10, tmp_path / "md", layout="npy-dir")
    assert _mode(tmp_path / "a.npz") == 0o644 and _mode(tmp_path / "m.npz") == 0o644
    for folder in ("d", "md"):
        assert _mode(tmp_path / folder) == 0o755
        assert {_mode(p) for p in (tmp_path / folder).iterdir()} == {0o644}


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink-to-fifo"])
def test_atomic_write_refuses_a_target_that_is_not_a_regular_file(tmp_path, kind):
    """The rename would replace a folder, a FIFO or a device (as root even /dev/null): refused,
    nothing written, the target untouched."""
    target = tmp_path / "t"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        os.mkfifo(tmp_path / "f")
        target.symlink_to(tmp_path / "f")
    with pytest.raises(OSError, match="not a regular file"):
        atomic_write_text(target, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t"] + (["f"] if kind == "symlink-to-fifo" else []))
    assert not target.is_file()
