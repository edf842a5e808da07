"""Config loading and validation: every bad value names its key path and what is allowed."""

import pytest

from engine.config import SCHEMA, SOURCES, TOP_LEVEL, from_dict, load_config, reference_rows
from engine.errors import ConfigError

BASE = {"data": {"source": "cube"}}


def cfg(**sections):
    raw = {"data": {"source": "cube"}}
    raw.update(sections)
    return raw


def test_defaults_filled():
    c = from_dict(BASE)
    assert c.experiment.n_train_epochs == 1 and c.experiment.do_train is True
    assert c.model.type == "similarity" and c.model.confidence_threshold is None
    assert c.data.params == {"points_per_edge": 4, "side": 0.1}
    assert c.execution.stepwise is False and c.execution.chunk_size == 64
    assert c.output_dir == "results"


@pytest.mark.parametrize("raw, key, allowed", [
    (cfg(experiment={"n_train_epoch": 2}), "experiment.n_train_epoch", "did you mean 'n_train_epochs'"),
    (cfg(modle={}), "modle", "did you mean 'model'"),
    ({"data": {"source": "cube", "n_points": 5}}, "data.n_points", "allowed: points_per_edge, side, source"),
    ({"data": {"source": "sphere", "size": 5}}, "data.size", "allowed: n_points, radius, source"),
])
def test_unknown_keys(raw, key, allowed):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert key in str(e.value) and "unknown key" in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("raw, key, text", [
    (cfg(experiment={"n_train_epochs": "two"}), "experiment.n_train_epochs", "an integer >= 0"),
    (cfg(experiment={"n_train_epochs": 2.0}), "experiment.n_train_epochs", "an integer"),
    (cfg(experiment={"n_train_epochs": True}), "experiment.n_train_epochs", "an integer"),
    (cfg(experiment={"n_train_epochs": -1}), "experiment.n_train_epochs", ">= 0"),
    (cfg(experiment={"max_eval_steps": 0}), "experiment.max_eval_steps", ">= 1"),
    (cfg(experiment={"do_train": "yes"}), "experiment.do_train", "true or false"),
    (cfg(experiment={"do_train": 1}), "experiment.do_train", "true or false"),
    (cfg(model={"confidence_threshold": 0}), "model.confidence_threshold", "> 0.0"),
    (cfg(model={"confidence_threshold": 1.5}), "model.confidence_threshold", "<= 1.0"),
    (cfg(model={"confidence_threshold": ".nan"}), "model.confidence_threshold", "a number"),
    (cfg(model={"confidence_threshold": float("nan")}), "model.confidence_threshold", "a number"),
    (cfg(model={"type": "banana"}), "model.type", "one of 'similarity'"),
    (cfg(execution={"chunk_size": 0}), "execution.chunk_size", ">= 1"),
    (cfg(experiment=[1, 2]), "experiment", "a mapping"),
    (cfg(output_dir=5), "output_dir", "a string"),
    ({"data": {"source": "cubes"}}, "data.source", "one of 'seed_spiral', 'cube'"),
    ({"data": {}}, "data.source", "one of"),
    ({"experiment": {}}, "data", "required section"),
    ({"data": {"source": "dataset"}}, "data.path", "required"),
    ({"data": {"source": "random", "n_features": 65}}, "data.n_features", "<= 64"),
])
def test_bad_values_name_key_and_allowed(raw, key, text):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    msg = str(e.value)
    assert f"{key}:" in msg and text in msg


def test_yaml_file_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("experiment:\n  name: x\n   bad: [1, 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "malformed YAML at line" in str(e.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)
    p.write_text("")
    with pytest.raises(ConfigError, match="data: required section"):
        load_config(p)


def test_dataset_path_relative_to_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.npz").write_bytes(b"x")
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  source: dataset\n  path: sub/d.npz\n")
    assert load_config(p).data.params["path"] == str(tmp_path / "sub" / "d.npz")
    p.write_text("data:\n  source: dataset\n  path: nothere.npz\n")
    with pytest.raises(ConfigError, match=r"data.path: file not found: .*nothere.npz"):
        load_config(p)


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  source: cube\nmodel:\n  confidence_threshold: 0.5\n")
    c = load_config(p, ["model.confidence_threshold=0.75", "experiment.n_eval_epochs=3",
                        "execution.stepwise=true", "data.side=0.2"])
    assert c.model.confidence_threshold == 0.75 and c.experiment.n_eval_epochs == 3
    assert c.execution.stepwise is True and c.data.params["side"] == 0.2
    assert load_config(p, ["model.confidence_threshold=null"]).model.confidence_threshold is None
    with pytest.raises(ConfigError, match="experiment.n_eval_epoch: unknown key"):
        load_config(p, ["experiment.n_eval_epoch=3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(p, ["experiment.n_eval_epochs"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(p, ["model.confidence_threshold.x=1"])
    with pytest.raises(ConfigError, match="experiment.n_eval_epochs: expected an integer"):
        load_config(p, ["experiment.n_eval_epochs=many"])


def test_to_dict_round_trips():
    c = from_dict(cfg(experiment={"n_train_epochs": 3}, model={"confidence_threshold": 0.7}))
    assert from_dict(c.to_dict()) == c


def test_reference_rows_cover_every_setting():
    keys = {row[0] for row in reference_rows()}
    n = sum(len(s) for s in SCHEMA.values()) + sum(len(s) for s in SOURCES.values()) + len(TOP_LEVEL)
    assert len(keys) == n
    assert "model.confidence_threshold" in keys and "data.path (dataset)" in keys


def test_nearest_to_dict_round_trips():
    c = from_dict({"model": {"type": "nearest", "k": 3, "dedup_distance": 0.01}, "data": {"source": "cube"}})
    assert from_dict(c.to_dict()) == c
