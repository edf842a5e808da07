"""Several evidence modules through the engine: config keys, a small simulated run, make-dataset with
several patches replayed from the file, and the results' module fields."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from engine.cli import main
from engine.run import model_file
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


def _episode_rows(folder):
    with (folder / "episodes.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _rewritten(src, dst, change):
    """The model file ``src`` written again through ``write_model`` (its digest right) with
    ``change(arrays, settings)`` applied."""
    saved = model_file.read_model(src, mmap=False)
    arrays = {k: np.array(v) for k, v in saved.arrays.items()}
    m = saved.meta
    settings = dict(m["settings"])
    change(arrays, settings)
    model_file.write_model(dst, m["model_type"], arrays, config=m["config"], trained_on=m["trained_on"],
                           feature_columns=m["feature_columns"], settings=settings, training=m["training"])
    return dst


@pytest.fixture(scope="module")
def saved_modules(tmp_path_factory):
    """A three-module run that trains, and the same training saved (``train --save``)."""
    tmp = tmp_path_factory.mktemp("saved_modules")
    path = _config(tmp, ", voting: all")
    assert main(["run", str(path), "--out", str(tmp / "trained"), "-q"]) == 0
    assert main(["train", str(path), "--save", str(tmp / "m.npz"), "-q"]) == 0
    return path, tmp


def test_several_modules_round_trip(saved_modules, capsys):
    path, tmp = saved_modules
    ok_cli(capsys, "run", str(path), "--out", str(tmp / "loaded"), "--model", str(tmp / "m.npz"))
    assert _episode_rows(tmp / "trained") == _episode_rows(tmp / "loaded")
    a = json.loads((tmp / "trained" / "summary.json").read_text())
    b = json.loads((tmp / "loaded" / "summary.json").read_text())
    for key in ("accuracy", "n_modules", "module_accuracy", "mean_modules_matched", "mean_steps",
                "mean_rotation_error_deg"):
        assert a[key] == b[key], key
    assert b["train_s"] == 0.0
    saved = model_file.read_model(tmp / "m.npz")
    assert saved.settings["n_modules"] == 3
    assert {k.split(".")[0] for k in saved.arrays} == {"module0", "module1", "module2"}


@pytest.mark.parametrize("change, text", [
    ("nan", "member 'module1.node_pos' holds NaN"),  # (write_model refuses NaN: written raw)
    (lambda a, s: a.pop("module2.order"), "member 'module2.order' is missing (an evidence model of 3 modules"),
    (lambda a, s: a.__setitem__("module3.order", a["module2.order"]), "unexpected member 'module3.order'"),
    (lambda a, s: a["module1.cand_node"].__setitem__(0, 10 ** 6), "module 1: member 'cand_node'"),
    (lambda a, s: a.__setitem__("module2.node_feat", a["module2.node_feat"][:, :1].copy()),
     "module 2: member 'node_feat': shape"),
    (lambda a, s: a.__setitem__("module1.object_names", a["module1.object_names"][::-1].copy()),
     "the modules hold different objects"),
    (lambda a, s: s.__setitem__("n_modules", 2), "holds 2 learning module(s), but"),
    (lambda a, s: s.__setitem__("n_modules", "3"), "setting 'n_modules' must be an integer >= 1"),
])
def test_bad_model_of_several_modules_exit_2(saved_modules, capsys, tmp_path, change, text):
    path, tmp = saved_modules
    bad = tmp_path / "bad.npz"
    if change == "nan":
        with np.load(tmp / "m.npz") as z:
            raw = {k: np.array(z[k]) for k in z.files}
        raw["module1.node_pos"][0, 0] = np.nan
        np.savez(bad, **raw)
    else:
        _rewritten(tmp / "m.npz", bad, change)
    code, out, err = run_cli(capsys, "run", str(path), "--out", str(tmp_path / "out"), "--model", str(bad))
    assert code == 2, (out, err)
    assert text in err and str(bad) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_module_count_must_match_the_model(saved_modules, capsys, tmp_path):
    path, tmp = saved_modules
    one = tmp_path / "one.yaml"
    one.write_text(path.read_text().replace("n_modules: 3, min_lms_match: 2", "n_modules: 1, min_lms_match: 1"))
    code, out, err = run_cli(capsys, "run", str(one), "--out", str(tmp_path / "out"), "--model", str(tmp / "m.npz"))
    assert code == 2 and "holds 3 learning module(s), but" in err and "evidence.n_modules 1" in err, err


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


def test_sweeps_train_anew_for_another_module_count(tmp_path):
    """A sweep shares one saved model between points that differ only in evaluation settings:
    the votes' settings are, the module count is not (each module learns its own model)."""
    from engine.config import load_config
    from engine.models.evidence.run import evaluation_settings

    keys = evaluation_settings(load_config(_config(tmp_path, ", voting: all")))
    assert "evidence.n_modules" not in keys
    assert {"evidence.voting", "evidence.vote_weight", "evidence.min_lms_match"} <= set(keys)


def test_step_hooks_with_several_modules_see_each_module(tmp_path):
    """``after_step`` with several modules: one event per matching step with a module axis
    (live hypotheses per module, each module's best evidence per object: the episode's trace
    row), and the episodes are those of a run without the hook."""
    from engine.config import load_config
    from engine.data.episodes import build_dataset
    from engine.models.evidence.modules import ModulesExperiment

    cfg = load_config(_config(tmp_path, ", voting: all"))
    ds = build_dataset(cfg)
    plain = ModulesExperiment(cfg, ds).run()
    ex = ModulesExperiment(cfg, ds)
    steps = []
    ex.add_hook("after_step", lambda ev: steps.append((ev.episode, ev.step, ev.n_hypotheses, ev.object_evidence)))
    hooked = ex.run()
    fields = ("object", "outcome", "detected", "mlh_object", "steps", "rotation_error_deg", "modules_matched",
              "module_outcomes", "n_hypotheses")
    assert [[getattr(e, f) for f in fields] for e in hooked.episodes] == \
        [[getattr(e, f) for f in fields] for e in plain.episodes]
    assert len(steps) == sum(e.steps for e in hooked.episodes) > 0
    for rec in hooked.episodes:
        mine = [s for s in steps if s[0] == rec.episode]
        assert [s[1] for s in mine] == list(range(rec.steps))
        for _, t, live, evidence in mine:
            assert live.shape == (3,) and live.dtype == np.int64 and (live > 0).all()
            np.testing.assert_array_equal(evidence, rec.trace[t])
