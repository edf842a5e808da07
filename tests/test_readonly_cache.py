"""A populated kernel cache folder that cannot be written (a container image's) is used, not ignored."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _kernel_cache_files():
    return sorted(p.name for p in (ROOT / "kernels" / "__pycache__").glob("*.nb[ic]"))


@pytest.fixture
def populated(tmp_path, engine_env):
    """A copy of a kernel cache holding the demo's kernels (the session's, warmed here)."""
    src = engine_env.get("NUMBA_CACHE_DIR")
    if not src:
        src = str(tmp_path / "fresh")
        engine_env = dict(engine_env, NUMBA_CACHE_DIR=src)
    p = subprocess.run([sys.executable, "-m", "engine", "-q", "warmup", DEMO], env=engine_env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    dst = tmp_path / "shipped"
    shutil.copytree(src, dst)
    return dst


def test_read_only_populated_cache_is_loaded_not_ignored(tmp_path, engine_env, populated):
    before = _kernel_cache_files()
    res = tmp_path / "res"
    res.mkdir()
    py = sys.executable
    commands = f"""
NUMBA_CACHE_DIR="$CACHE" "{py}" -m engine run {DEMO} --out "{res}/out" > /dev/null 2> "{res}/run.err"
echo $? > "{res}/run.rc"
NUMBA_CACHE_DIR="$CACHE" "{py}" -m engine info --json > "{res}/info.json" 2> "{res}/info.err"
NUMBA_CACHE_DIR="$CACHE" "{py}" -m engine warmup {DEMO} > /dev/null 2> "{res}/warmup.err"
echo $? > "{res}/warmup.rc"
(touch "$CACHE/probe" 2> /dev/null && echo writable || echo read-only) > "{res}/probe"
"""
    if os.geteuid() != 0:  # permissions stop an ordinary user
        for d, _, fs in os.walk(populated):
            for f in fs:
                os.chmod(os.path.join(d, f), 0o444)
            os.chmod(d, 0o555)
        try:
            subprocess.run(["sh", "-c", commands], env=dict(engine_env, CACHE=str(populated)), check=True,
                           timeout=600)
        finally:
            for d, _, _ in os.walk(populated):
                os.chmod(d, 0o755)
    else:  # root writes through permissions: a read-only bind mount in a private mount namespace
        if shutil.which("unshare") is None:
            pytest.skip("a read-only mount needs unshare(1), which is not installed")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        script = f'mount --bind "{populated}" "{mnt}" && mount -o remount,ro,bind "{mnt}" || exit 97\n' + commands
        p = subprocess.run(["unshare", "-m", "sh", "-c", script], env=dict(engine_env, CACHE=str(mnt)),
                           capture_output=True, text=True, timeout=600)
        if p.returncode == 97:
            pytest.skip(f"cannot mount read-only here: {p.stderr.strip()}")
        assert p.returncode == 0, p.stderr
    assert (res / "probe").read_text().strip() == "read-only"  # the folder really was read-only
    err = (res / "run.err").read_text()
    assert (res / "run.rc").read_text().strip() == "0", err
    assert "compil" not in err, err  # every kernel loaded from the folder: no first-run notice
    info = json.loads((res / "info.json").read_text())
    assert info["cache_read_only"] is True and info["kernels_cached"] > 0
    cached = {k["kernel"]: k["cached_signatures"] for k in info["kernels"]}
    assert cached["kernels.loop.run_experiment_packed"] >= 1
    assert (res / "warmup.rc").read_text().strip() == "2"  # warmup cannot fill a read-only folder
    assert "read-only" in (res / "warmup.err").read_text()
    assert _kernel_cache_files() == before  # nothing compiled into the package's __pycache__
