"""Several evidence modules through the engine: config keys, a small simulated run, make-dataset with
several patches replayed from the file, and the results' module fields."""

from __future__ import annotations

import csv
import json

import pytest

from tests.cli_helpers import ok_cli, run_cli

TINY = """
experiment: {{name: tiny_modules, max_eval_steps: 200}}
model: {{type: evidence}}
evidence: {{max_nneighbors: 10, n_modules: 3, min_lms_match: 2{extra}}}
data: {{source: shapes, objects: [box, mug, banana], n_points: 3000, train_steps: 60, eval_rotations: 2,
        eval_steps: 40, noise: true}}
output_dir: {out}
"""


def _config(tmp_path, extra="", name="c.yaml"):
    path = tmp_path / name
    path.write_text(TINY.format(extra=extra, out=tmp_path / "out"))
    return path


@pytest.mark.parametrize("extra,text", [
    (", voting: some", "evidence.voting: expected 'all', null (no voting) or a list"),
    (", voting: [[1], [0]]", "evidence.voting: expected 'all', null or a list of 3 lists"),
    (", voting: [[1], [0], [5]]", "evidence.voting[2]: module index 5 is not in 0..2"),
    (", voting: [[1], [0], [true]]", "evidence.voting: expected"),
    (", min_lms_match: 4", "evidence.min_lms_match: 4 modules cannot match when there are 3"),
    (", n_modules: 0", "evidence.n_modules: expected an integer >= 1"),
    (", n_modules: 17", "evidence.n_modules"),
    (", vote_transform: sideways", "evidence.vote_transform: expected one of 'transpose', 'rotate'"),
    (", vote_evidence_threshold: 1.5", "evidence.vote_evidence_threshold"),
    (", vote_weight: -1", "evidence.vote_weight"),
    (", vote_weights: 1", "unknown key"),
])
def test_bad_module_settings_are_one_line_errors(tmp_path, capsys, extra, text):
    if extra.startswith(", min_lms_match"):  # (the config sets it already: replace it)
        path = tmp_path / "c.yaml"
        path.write_text(TINY.format(extra="", out=tmp_path / "out").replace("min_lms_match: 2", extra[2:]))
    else:
        path = _config(tmp_path, extra)
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2, (out, err)
    assert text in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_several_modules_run_and_their_results(tmp_path, capsys):
    path = _config(tmp_path, ", voting: all")
    ok_cli(capsys, "run", str(path))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_modules"] == 3
    assert len(summary["module_accuracy"]) == 3
    rows = list(csv.DictReader((tmp_path / "out" / "episodes.csv").open()))
    assert len(rows) == 6
    matched = [int(r["modules_matched"]) for r in rows]
    for r, m in zip(rows, matched):
        # an episode ends with a match when at least min_lms_match (2) modules matched
        assert (m >= 2) == (r["outcome"] in ("correct", "confused")), r
        assert 0 <= m <= 3
    assert summary["mean_modules_matched"] == pytest.approx(sum(matched) / 6)
    assert summary["accuracy"] >= 0.5  # three distinct objects: voting modules recognise most


def test_make_dataset_with_patches_replays_the_simulation(tmp_path, capsys):
    data = tmp_path / "d3.npz"
    ok_cli(capsys, "make-dataset", "--source", "shapes", "--objects", "box,mug,banana", "--n-points", "3000",
           "--train-steps", "60", "--eval-rotations", "2", "--eval-steps", "40", "--noise", "--patches", "3",
           "--out", str(data))
    shapes = _config(tmp_path, name="shapes.yaml")
    ok_cli(capsys, "run", str(shapes), "--set", f"output_dir={tmp_path / 'sim'}")
    rec = tmp_path / "rec.yaml"
    rec.write_text(TINY.format(extra="", out=tmp_path / "rec").split("data:")[0]
                   + f"data: {{source: dataset, path: {data}}}\noutput_dir: {tmp_path / 'rec'}\n")
    ok_cli(capsys, "run", str(rec))

    def rows(folder):
        with open(folder / "episodes.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert rows(tmp_path / "sim") == rows(tmp_path / "rec")
    # a file with another number of patches than modules is a one-line error
    code, out, err = run_cli(capsys, "run", str(rec), "--set", "evidence.n_modules=2", "--set",
                             "evidence.min_lms_match=1")
    assert code == 2 and "holds 3 sensor patches per step, but evidence.n_modules is 2" in err


def test_several_modules_cannot_be_saved_yet(tmp_path, capsys):
    path = _config(tmp_path)
    code, out, err = run_cli(capsys, "train", str(path), "--save", str(tmp_path / "m.npz"))
    assert code == 2 and "evidence.n_modules" in err and "one module only" in err


def test_variants_are_named_as_the_benchmark_names_them():
    from engine.bench.evidence import object_names
    from engine.data.episodes import variant_meshes
    from engine.data.shapes import BUILTIN_SHAPES

    got = variant_meshes(11)
    assert [n for n, _ in got] == object_names(21)[10:]
    assert got[10][0] == f"{BUILTIN_SHAPES[0]}~2"
    assert len(got[0][1].faces) > 0


def test_bad_variants_setting(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(TINY.format(extra="", out=tmp_path / "out").replace("noise: true", "noise: true, variants: -1"))
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "data.variants: expected an integer >= 0" in err


def test_stepwise_is_the_fused_path_with_several_modules(tmp_path, capsys):
    """configs/recorded_5lm.yaml (the bundled five-patch file): one kernel call per step gives the
    episodes of one call per episode."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    config = root / "configs" / "recorded_5lm.yaml"
    out = {}
    for stepwise in ("false", "true"):
        folder = tmp_path / stepwise
        ok_cli(capsys, "run", str(config), "--set", f"execution.stepwise={stepwise}", "--set", f"output_dir={folder}")
        with open(folder / "episodes.csv") as f:
            out[stepwise] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert out["false"] == out["true"]
    assert len(out["false"]) == 8 and "modules_matched" in out["false"][0]
