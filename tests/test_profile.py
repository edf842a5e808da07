"""``python -m engine profile``: report structure, and the kernels it lists are the ones the run called."""

import json
import subprocess
import sys

import pytest

from engine.cli import main
from engine.config import load_config
from engine.models.profile import CompileRecorder, profile_run

pytest.importorskip("line_profiler")

CALLED = {"kernels.loop.run_experiment_packed", "kernels.loop.train_episodes", "kernels.matching.batch_similarity_at",
          "kernels.matching.scan_segments"}


@pytest.mark.parametrize("config", ["demo.yaml", "seed_benchmark.yaml"])
def test_profile_report(tmp_path, root, config, capsys):
    assert main(["-q", "profile", str(root / "configs" / config), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "profile.json").read_text())
    assert set(report) >= {"compile", "first_call", "kernels", "lines", "fused_run_s", "stepwise_run_s", "lprof"}
    assert report["final_confidence"] == report["stepwise_final_confidence"]
    kernels = {r["kernel"]: r for r in report["kernels"]}
    assert CALLED <= set(kernels)
    for name in CALLED:
        assert kernels[name]["calls"] >= 1 and kernels[name]["total_s"] >= 0
        assert kernels[name]["mean_s"] == pytest.approx(kernels[name]["total_s"] / kernels[name]["calls"])
        assert name in out
    cfg = load_config(root / "configs" / config)
    assert kernels["kernels.loop.train_episodes"]["calls"] == cfg.experiment.n_train_epochs
    # every timed kernel runs inside run_experiment: their sum cannot exceed it
    inner = sum(kernels[k]["total_s"] for k in CALLED - {"kernels.loop.run_experiment_packed"})
    assert inner <= kernels["kernels.loop.run_experiment_packed"]["total_s"] * 1.05
    lines = report["lines"]
    assert lines and {r["function"] for r in lines} <= {"Experiment._episode_stepwise", "Experiment._emit"}
    assert any("train_step" in r["source"] or "match_step" in r["source"] for r in lines)
    assert lines == sorted(lines, key=lambda r: -r["time_s"])
    for row in report["compile"]:
        assert row["kernel"].startswith("kernels.") and row["cache"] in ("hit", "miss", "mixed")
    assert "Hottest orchestrator lines" in out and "Kernels of the fused run" in out


def test_lprof_readable_by_line_profiler(tmp_path, root):
    profile_run(load_config(root / "configs" / "demo.yaml"), tmp_path)
    p = subprocess.run([sys.executable, "-m", "line_profiler", str(tmp_path / "lines.lprof")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "_episode_stepwise" in p.stdout and "Timer unit" in p.stdout


def test_compile_recorder_sees_a_fresh_compile():
    import numpy as np
    from numba import njit

    @njit
    def fresh(x):
        return x + 1

    with CompileRecorder(prefix="") as rec:
        fresh(np.float32(1))
    rows = [r for r in rec.rows() if r["kernel"].endswith("fresh")]
    assert len(rows) == 1 and rows[0]["cache_misses"] == 1 and rows[0]["cache"] == "miss"
    assert rows[0]["compile_s"] > 0


def test_profile_bad_config_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  source: nope\n")
    assert main(["profile", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "data.source" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_profiling_scripts_run(root, tmp_path):
    p = subprocess.run([sys.executable, str(root / "profiling/kernel_lines.py"), "--stored", "50", "--steps", "20",
                        "--episodes", "2", "--out", str(tmp_path / "k.lprof")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "_similarity_sum" in p.stdout and "acc +=" in p.stdout and (tmp_path / "k.lprof").is_file()
    p = subprocess.run([sys.executable, str(root / "profiling/kernel_timing.py"), "--stored", "500", "--queries",
                        "50", "--repeats", "2"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "first call" in p.stdout and "ns per comparison" in p.stdout


def test_profile_nearest_model(tmp_path, root, capsys):
    assert main(["-q", "profile", str(root / "configs" / "nearest_spiral.yaml"), "--out", str(tmp_path),
                 "--set", "data.size=2000"]) == 0
    report = json.loads((tmp_path / "profile.json").read_text())
    assert report["final_confidence"] == report["stepwise_final_confidence"]
    assert report["kernels"][0]["calls"] == 3  # two training episodes, one evaluation call
    assert any("nearest_match_step" in r["source"] for r in report["lines"])


def test_knn_costs_script_reports_each_condition(root):
    # profiling/knn_costs.py on a small simulated run: six rows, sane figures
    p = subprocess.run([sys.executable, str(root / "profiling/knn_costs.py"), str(root / "configs/shapes_10.yaml"),
                        "--step", "2", "--repeats", "1", "--set", "data.objects=[mug, cone]",
                        "--set", "data.n_points=1500", "--set", "data.train_steps=60",
                        "--set", "data.eval_rotations=1", "--set", "data.eval_steps=10"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert "k = 5" in lines[0] and "step 2" in lines[0]
    rows = {}
    for line in lines[2:-1]:
        name, n, ns, scanned = line.rsplit(None, 3)
        rows[name.strip()] = (int(n), float(ns), float(scanned))
    assert set(rows) == {"lock-step", "lock-step, sample", "one at a time", "sample, shuffled", "sample, same order",
                         "distances only"}
    assert all(n > 0 and ns > 0 and scanned > 0 for n, ns, scanned in rows.values())
    # the same queries and candidates: the step's search, the one-query search and the floor
    assert rows["lock-step"][0] == rows["one at a time"][0] == rows["distances only"][0]
    assert rows["lock-step"][2] == rows["one at a time"][2] == rows["distances only"][2]
    assert lines[-1] == "lock-step and one-at-a-time neighbours: the same"


def test_knn_costs_refuses_other_models(root):
    p = subprocess.run([sys.executable, str(root / "profiling/knn_costs.py"), str(root / "configs/demo.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not an evidence config" in p.stderr
    p = subprocess.run([sys.executable, str(root / "profiling/knn_costs.py"), str(root / "configs/missing.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr


@pytest.fixture
def phases_script(root):
    sys.path.insert(0, str(root / "profiling"))
    try:
        import evidence_phases
    finally:
        sys.path.remove(str(root / "profiling"))
    return evidence_phases


def test_evidence_phases_patch_finds_every_marker(root, phases_script):
    """The timers go in at every marker of the current step (the script fails loudly when one moves)."""
    layout = (root / "kernels" / "evidence_layout.py").read_text()
    src = (root / "kernels" / "evidence_phases.py").read_text()
    patched_layout, patched = phases_script.patch_step_source(layout, src)
    compile(patched, "evidence_phases.py", "exec")
    compile(patched_layout, "evidence_layout.py", "exec")
    base = int(layout.split("\nN_ISTATE = ")[1].split()[0])
    # 6 timers around the step's phases, 5 around the update loop's passes
    assert patched.count("ticks()") == 11
    assert f"\nN_ISTATE = {base + len(phases_script.PHASES) + 1}\n" in patched_layout
    with pytest.raises(ValueError, match="4b. their K nearest nodes"):
        phases_script.patch_step_source(layout, src.replace("# 4b. their K nearest nodes", "# 4b. moved"))


def test_evidence_phases_script_reports_every_phase(root, phases_script):
    # a small simulated run in the timed copy (its kernels compile afresh: about a minute)
    p = subprocess.run([sys.executable, str(root / "profiling/evidence_phases.py"), str(root / "configs/shapes_10.yaml"),
                        "--passes", "1", "--set", "data.objects=[mug, cone]", "--set", "data.n_points=1500",
                        "--set", "data.train_steps=60", "--set", "data.eval_rotations=1", "--set", "data.eval_steps=10"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("evidence step, ") and "ms per step (timed copy)" in lines[0]
    values = {line[:32].strip(): float(line[32:].split()[0]) for line in lines[1:]}
    assert list(values) == [label.strip() for label, _ in phases_script.PHASES]
    assert all(v > 0 for v in values.values())
    step_ms = float(lines[0].split(": ")[1].split()[0])
    assert values["update of existing hypotheses"] < step_ms  # a part of the step, not more


def test_vote_exchange_script_times_every_part(root):
    """profiling/vote_exchange.py on the bundled five-module recording: each part timed, the
    searches no more than the rows, and configs without an exchange refused (exit 2)."""
    p = subprocess.run([sys.executable, str(root / "profiling/vote_exchange.py"), str(root / "configs/recorded_5lm.yaml"),
                        "--episodes", "2", "--steps", "3,6", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("vote exchange, 5 modules, one core")
    for step in (3, 6):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"after step {step} (2 inputs): "))
        head = lines[at].split(": ")[1].split(", ")
        rows, votes, searches = (float(x.split()[0]) for x in head)
        assert rows > 0 and votes > 0 and 0 < searches <= rows
        parts = {line[:24].strip(): float(line[24:].split()[0]) for line in lines[at + 1:at + 7]}
        assert list(parts) == ["exchange", "selecting votes", "pooling, grouping", "tree builds", "searches, row order",
                               "searches, cell order"]
        assert all(v > 0 for v in parts.values())
    for config in ("configs/shapes_10_noise.yaml", "configs/demo.yaml"):
        p = subprocess.run([sys.executable, str(root / "profiling/vote_exchange.py"), str(root / config)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_evidence_phases_refuses_other_models(root):
    p = subprocess.run([sys.executable, str(root / "profiling/evidence_phases.py"), str(root / "configs/demo.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "not an evidence config" in p.stderr and "Traceback" not in p.stderr
