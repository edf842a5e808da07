"""The seed's Rust reference benchmark, rebuilt from its specification, for side-by-side timing.

The seed benchmark's "x Rust" ratios use fixed figures measured on this machine kind on
2026-11-25 (``../shared/reference/seed-benchmark.md``), but these VMs drift by up to 2x
between sessions. ``profiling/rust_seed`` is that benchmark written again from the
workload's specification (array of 16-byte structs, a sequential float32 sum, a release
build for baseline x86-64, no ``target-cpu``), so ``python -m engine bench --suite seed
--rust`` can time it interleaved with the other implementations: the ``rust`` rows, and
the ratio ``vs_rust_measured``, then say what the fixed figures would be on today's VM.

Needs a Rust toolchain (``cargo``) and a checkout of the repository (the Cargo project
is not part of the installed package). The binary builds the data itself, then times
only the experiment's run (``std::time::Instant``) and prints one line per timed run:
``<seconds> <final confidence>``; process start-up is not timed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from engine.errors import UserError

# The Cargo project, relative to the repository root (the current folder by default).
PROJECT = Path("profiling") / "rust_seed"
BINARY = Path("target") / "release" / "rust_seed"


def find_cargo() -> str | None:
    """The ``cargo`` on PATH, else rustup's default ``~/.cargo/bin/cargo``; None when neither exists."""
    cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
    return cargo if os.path.isfile(cargo) else None


def build(project: Path | str = PROJECT) -> Path:
    """Build the reference (``cargo build --release --offline``) and return its binary's path.

    Raises ``UserError`` (exit code 2 at the CLI) when the project is not there (not a
    checkout of the repository), when ``cargo`` is not installed, or when the build fails.
    Cargo rebuilds only when the source changed, so this is quick after the first time.
    """
    project = Path(project)
    if not (project / "Cargo.toml").is_file():
        raise UserError(f"--rust: {project / 'Cargo.toml'} not found: run the benchmark from a checkout of "
                        "the repository (the Rust reference is not part of the installed package)")
    cargo = find_cargo()
    if cargo is None:
        raise UserError("--rust: cargo (the Rust toolchain) is not installed; see https://rustup.rs")
    proc = subprocess.run([cargo, "build", "--release", "--offline", "--quiet"], cwd=project,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"--rust: cargo build failed in {project}:\n{proc.stderr.strip()}")
    return project / BINARY


def run(binary: Path | str, size: int, epochs: int, max_steps: int, warm_up: int = 0) -> tuple[float, float]:
    """One timed run of the reference: (seconds, final confidence).

    ``warm_up`` untimed runs come first in the same process (the bench's warm-up
    policy: see ``engine.bench.seed.run_suite``).
    """
    cmd = [str(binary), str(size), str(epochs), "--max-steps", str(max_steps), "--runs", "1",
           "--warm-up", str(warm_up)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    fields = proc.stdout.split()
    if len(fields) != 2:
        raise RuntimeError(f"{' '.join(cmd)}: expected '<seconds> <final confidence>', got {proc.stdout!r}")
    return float(fields[0]), float(fields[1])
