"""Tests of the seed's Rust reference rebuilt from its specification (engine.bench.rust_reference,
profiling/rust_seed) and of its rows in the seed benchmark (``bench --suite seed --rust``).

The bench integration is tested with a stand-in binary (a script that answers like the
reference), so it needs no Rust toolchain; the real reference is built and checked
against the seed's parity values where cargo is installed.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from engine.bench import seed as bench
from engine.bench import rust_reference
from engine.cli import main
from engine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def fake_binary(tmp_path, body: str) -> Path:
    """An executable that stands in for the reference binary: ``body`` is its Python code."""
    path = tmp_path / "rust_seed"
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_run_passes_the_row_and_parses_seconds_and_confidence(tmp_path):
    log = tmp_path / "argv.txt"
    binary = fake_binary(tmp_path, f"open({str(log)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                                   "print('0.00125 0.688552856')")
    dt, fc = rust_reference.run(binary, 10, 10, 10_000, warm_up=1)
    assert (dt, fc) == (0.00125, 0.688552856)
    assert log.read_text().split() == ["10", "10", "--max-steps", "10000", "--runs", "1", "--warm-up", "1"]


@pytest.mark.parametrize("body, message", [
    ("print('1.0')", "expected '<seconds> <final confidence>'"),
    ("sys.stderr.write('bad size'); sys.exit(2)", "bad size"),
])
def test_run_reports_a_broken_binary(tmp_path, body, message):
    with pytest.raises(RuntimeError, match=message):
        rust_reference.run(fake_binary(tmp_path, body), 10, 10, 10_000)


def test_build_outside_a_checkout_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="Cargo.toml not found"):
        rust_reference.build(tmp_path / "nowhere")


def test_seed_suite_with_a_rust_binary_adds_its_rows_and_the_measured_ratio(tmp_path):
    # the stand-in takes 1 ms per run and answers the seed's parity value
    binary = fake_binary(tmp_path, "print('0.001 0.688552856')")
    rows = bench.run_suite("seed", repeats=2, rows=[(10, 10)], implementations=("engine", "numpy"),
                           rust_binary=binary)
    by = {r["implementation"]: r for r in rows}
    assert list(by) == ["engine", "numpy", "rust"]
    assert all(set(r) == set(bench.ROW_KEYS) for r in rows)
    assert by["rust"]["median_s"] == 0.001 and by["rust"]["vs_rust_measured"] == pytest.approx(1.0)
    assert by["rust"]["bytes_per_observation"] == 16 and by["rust"]["parity_rel_error"] <= bench.PARITY_RTOL
    for impl in ("engine", "numpy"):
        assert by[impl]["vs_rust_measured"] == pytest.approx(0.001 / by[impl]["median_s"])
    table = bench.format_table(rows)
    assert "x Rust now" in table and "rebuilt from its specification" in table
    without = [dict(r, vs_rust_measured=None) for r in rows if r["implementation"] != "rust"]
    assert "x Rust now" not in bench.format_table(without)


@pytest.mark.parametrize("flag", ["--rust", "--no-warm-up"])
def test_seed_only_flags_with_another_suite_exit_2(capsys, flag):
    assert main(["bench", "--suite", "kdtree", flag]) == 2
    assert f"{flag}: only for --suite seed" in capsys.readouterr().err


@pytest.mark.skipif(rust_reference.find_cargo() is None, reason="needs the Rust toolchain (cargo), an optional tool")
def test_real_reference_matches_the_seed_parity_values():
    binary = rust_reference.build(ROOT / rust_reference.PROJECT)
    for (size, epochs), ref in bench.SEED_REFERENCE.items():
        dt, fc = rust_reference.run(binary, size, epochs, bench.SEED_MAX_STEPS)
        assert dt > 0
        assert fc == pytest.approx(ref["final_confidence"], rel=bench.PARITY_RTOL), (size, epochs)
