"""No user input ends in a traceback, costs unbounded memory or gives a silently wrong result.

Each class of bad input (numbers beyond their type, sizes that cannot fit in memory, YAML
documents that expand without bound, paths that are not regular files, mesh folders with
two objects of one name, datasets with repeated or empty object names, objects the model
cannot hold, Ctrl-C inside a kernel, internal errors) is checked in-process against the
config loader, the validator and the CLI's ``main``; a few subprocess runs check the exit
status, the single stderr line and the absence of "Traceback" end to end.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine import cli, memory
from engine.config import SCHEMA, SOURCES, from_dict, load_config
from engine.errors import ConfigError, UserError

SHAPES = {"source": "shapes", "objects": ["box"], "n_points": 200, "train_steps": 5, "eval_rotations": 1,
          "eval_steps": 5}


def _raw_for(section, key, value, source=None):
    """A minimal valid config with ``section.key = value`` (the model and data a key needs)."""
    if section == "data":
        data = dict(SHAPES) if source == "shapes" else {"source": source}
        if source == "dataset":
            data["path"] = "configs/data/example_episodes.npz"
        data[key] = value
        model = {"type": "evidence"} if source == "shapes" else {}
        return {"model": model, "data": data}
    raw = {"data": {"source": "cube"}}
    if section in ("evidence", "policy"):  # the sections only the evidence model reads
        raw = {"model": {"type": "evidence"}, "data": dict(SHAPES)}
    if section == "model" and key in ("k", "max_distance", "dedup_distance", "dedup_feature"):
        raw["model"] = {"type": "nearest"}
    raw.setdefault(section, {})[key] = value
    return raw


def _numeric_keys():
    out = []
    for section, settings in SCHEMA.items():
        for key, s in settings.items():
            if s.kind in (int, float) and not s.choices:
                out.append((section, key, None, s.kind))
    for source, settings in SOURCES.items():
        for key, s in settings.items():
            if s.kind in (int, float):
                out.append(("data", key, source, s.kind))
    return out


NUMERIC = _numeric_keys()


def test_every_numeric_key_is_covered():
    # the parametrisation below walks the schema: make sure it found the known keys
    names = {f"{s}.{k}" for s, k, _, _ in NUMERIC}
    assert {"evidence.max_nneighbors", "data.n_points", "data.eval_rotations", "experiment.n_train_epochs",
            "model.k", "execution.chunk_size", "evidence.max_match_distance"} <= names
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize("section, key, source, kind", NUMERIC,
                         ids=[f"{s}.{k}" + (f"-{src}" if src else "") for s, k, src, _ in NUMERIC])
def test_numbers_beyond_their_type_are_rejected_with_the_bound(section, key, source, kind):
    huge = 10**23 if kind is int else 1.0e39  # past int64 / past float32
    with pytest.raises(ConfigError) as e:
        from_dict(_raw_for(section, key, huge, source))
    msg = str(e.value)
    assert f"{section}.{key}: expected" in msg and "<= " in msg, msg
    assert "\n" not in msg and len(msg) < 300
    if kind is float:
        with pytest.raises(ConfigError) as e:
            from_dict(_raw_for(section, key, -1.0e39, source))
        assert f"{section}.{key}: expected" in str(e.value) and ">" in str(e.value)


@pytest.mark.parametrize("section, key, source, kind", [n for n in NUMERIC if n[3] is int],
                         ids=[f"{s}.{k}" + (f"-{src}" if src else "") for s, k, src, kind in NUMERIC if kind is int])
def test_integers_past_int32_are_rejected_except_seeds(section, key, source, kind):
    raw = _raw_for(section, key, 2**31, source)
    if key == "seed":
        assert from_dict(raw).data.params["seed"] == 2**31
        with pytest.raises(ConfigError, match="2\\*\\*63 - 1"):
            from_dict(_raw_for(section, key, 2**63, source))
    else:
        with pytest.raises(ConfigError, match=f"{section}.{key}: expected an integer"):
            from_dict(raw)


@pytest.mark.parametrize("text, expected", [
    ("evidence.max_nneighbors=100000000000000000000000", "evidence.max_nneighbors: expected an integer >= 1 and <= 1000"),
    ("evidence.max_nneighbors=1e23", "write an integer as digits"),
    ("evidence.max_nneighbors=1001", "<= 1000"),
    ("evidence.umbilical_num_poses=100000", "<= 360"),
    ("evidence.voxels_per_dim=1000000000", "<= 100000"),
    ("evidence.max_match_distance=1.0e+39", "<= 3.4e38"),
    ("evidence.past_weight=1.0e+300", "evidence.past_weight"),
    ("data.seed=" + "9" * 5000, "4300 digits"),
])
def test_overrides_out_of_range(text, expected):
    with pytest.raises(ConfigError) as e:
        load_config("configs/shapes_10.yaml", [text])
    assert expected in str(e.value) and len(str(e.value)) < 400


def test_strings_are_bounded():
    with pytest.raises(ConfigError, match="experiment.name: expected at most 4096 characters"):
        from_dict({"data": {"source": "cube"}, "experiment": {"name": "n" * 5000}})
    assert from_dict({"data": {"source": "cube"}, "experiment": {"name": "n" * 4096}}).experiment.name


def test_bench_repeats_bounded(capsys):
    assert cli.main(["bench", "--repeats", str(10**20)]) == 2
    assert "--repeats: expected an integer 1..1000" in capsys.readouterr().err


def test_values_at_their_bounds_are_accepted():
    c = from_dict(_raw_for("evidence", "max_nneighbors", 1000))
    assert c.evidence.max_nneighbors == 1000
    c = from_dict(_raw_for("experiment", "max_eval_steps", 2**31 - 1))
    assert c.experiment.max_eval_steps == 2**31 - 1


# --------------------------------------------------------------------------- YAML documents

def _laughs(levels=9):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "x:\n" + "".join(f"  {line}\n" for line in lines)


DOCUMENTS = {
    "billion_laughs": (_laughs() + "experiment:\n  name: *a8\ndata: {source: cube}\n",
                       "once its aliases are expanded"),
    "million_item_list": ("data: {source: cube}\nexperiment:\n  name:\n" + "  - 1\n" * 1_000_000,
                          "larger than 1,048,576 bytes"),
    "long_list_in_scalar": ("data: {source: cube}\nexperiment:\n  name: [" + ", ".join(["1"] * 5000) + "]\n",
                            "experiment.name: expected a string, got a list of 5000 items"),
    "long_string_in_number": ("data: {source: cube}\nexperiment:\n  n_train_epochs: '" + "x" * 200_000 + "'\n",
                              "experiment.n_train_epochs: expected an integer"),
    "deep_nesting": ("data: {source: cube}\nexperiment:\n  name: " + "[" * 3000 + "]" * 3000 + "\n",
                     "levels deep"),
    "recursive_alias": ("data: {source: cube}\nexperiment:\n  name: &a [*a]\n", "refers to itself"),
    "huge_integer": ("data: {source: cube}\nexperiment:\n  n_train_epochs: " + "9" * 5000 + "\n", "digits"),
    "long_unknown_key": ("data: {source: cube}\nexperiment:\n  " + "k" * 1000 + ": 1\n", "unknown key"),
    "non_string_key": ("data: {source: cube}\nexperiment:\n  12: 1\n", "keys must be strings, got 12"),
    "unhashable_key": ("data: {source: cube}\nexperiment:\n  [1, 2]: 1\n", "unhashable key"),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_documents_are_bounded_and_messages_short(tmp_path, name):
    text, expected = DOCUMENTS[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert expected in msg, msg
    assert len(msg) < 400 and "\n" not in msg


def test_override_values_are_bounded_too():
    deep = "[" * 200 + "]" * 200
    with pytest.raises(ConfigError, match="levels deep"):
        load_config("configs/demo.yaml", [f"experiment.name={deep}"])
    with pytest.raises(ConfigError) as e:
        load_config("configs/demo.yaml", ["experiment.name=[" + ",".join(["7"] * 3000) + "]"])
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("make", ["dir", "fifo", "devzero"])
def test_config_path_not_a_regular_file(tmp_path, make):
    path = {"dir": tmp_path, "devzero": "/dev/zero"}.get(make)
    if make == "fifo":
        path = tmp_path / "c.yaml"
        os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path)


# --------------------------------------------------------------------------- memory

BIG = 1_000_000_000


@pytest.mark.parametrize("key", ["data.n_points", "data.eval_steps", "data.train_steps", "data.eval_rotations"])
def test_sizes_that_cannot_fit_are_rejected_with_both_figures(key):
    cfg = load_config("configs/shapes_10.yaml", [f"{key}={BIG}"])
    with pytest.raises(UserError) as e:
        memory.check(cfg, available=16 * 10**9)
    msg = str(e.value)
    assert "would allocate about" in msg and "more than the 16.0 GB of memory available" in msg, msg
    assert "\n" not in msg


def test_similarity_sizes_that_cannot_fit_are_rejected():
    for override in ("data.size=2000000000", ):
        cfg = load_config("configs/seed_benchmark.yaml", [override, "experiment.n_train_epochs=100"])
        with pytest.raises(UserError, match="more than the 1.0 GB"):
            memory.check(cfg, available=10**9)
    cfg = from_dict({"data": {"source": "cube", "points_per_edge": 100_000}})
    with pytest.raises(UserError, match="observations"):
        memory.check(cfg, available=10**9)


def test_tiny_match_distance_is_a_memory_error_not_an_overflow():
    cfg = load_config("configs/shapes_10.yaml", ["evidence.max_match_distance=1.0e-30"])
    with pytest.raises(UserError, match="node grid"):
        memory.check(cfg, available=10**12)


def test_bundled_configs_fit_in_a_gigabyte(root):
    for path in sorted((root / "configs").glob("*.yaml")):
        est = memory.estimate(load_config(path))
        assert 0 < est.total < 10**9, (path.name, est.parts)


def test_estimate_grows_with_the_sizes():
    base = memory.estimate(load_config("configs/shapes_10.yaml")).total
    for key, value in (("data.n_points", 200_000), ("data.eval_steps", 100_000), ("data.train_steps", 40_000),
                       ("data.eval_rotations", 100_000), ("evidence.max_nneighbors", 1000)):
        assert memory.estimate(load_config("configs/shapes_10.yaml", [f"{key}={value}"])).total > 2 * base, key
    burst = memory.estimate(load_config("configs/shapes_10.yaml")).parts["hypotheses"]
    classic = memory.estimate(load_config("configs/shapes_10.yaml", ["evidence.updater=classic"])).parts["hypotheses"]
    assert classic > 2 * burst


def test_available_memory_falls_back_to_sysconf(monkeypatch):
    real_open = open

    def no_meminfo(path, *a, **k):
        if str(path) == "/proc/meminfo":
            raise OSError("no /proc")
        return real_open(path, *a, **k)

    assert memory.available_bytes() > 10**6
    monkeypatch.setattr("builtins.open", no_meminfo)
    assert memory.available_bytes() > 10**6


def test_run_rejects_before_building_anything(monkeypatch, capsys, tmp_path):
    from engine.run import registry

    def must_not_build(cfg):
        raise AssertionError("built a model for a config that cannot fit")

    monkeypatch.setattr(registry, "for_config", must_not_build)
    monkeypatch.setattr(memory, "available_bytes", lambda: 4 * 10**9)
    for cmd in ("run", "validate"):
        rc = cli.main([cmd, "configs/shapes_10.yaml", "--set", f"data.eval_steps={BIG}"]
                      + (["--out", str(tmp_path / "o")] if cmd == "run" else []))
        err = capsys.readouterr().err
        assert rc == 2 and "more than the 4.0 GB of memory available" in err and err.count("\n") == 1


def test_simulation_checks_memory_itself(monkeypatch, tmp_path):
    # make-dataset and the API reach the simulation without a config check
    from engine.data import make_dataset

    monkeypatch.setattr(memory, "available_bytes", lambda: 10**9)
    with pytest.raises(UserError, match="more than the 1.0 GB"):
        make_dataset.make_shapes_dataset(tmp_path / "x.npz", objects=["box"], eval_steps=BIG)
    assert not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- data paths, datasets, meshes

def _dataset_arrays(root):
    with np.load(root / "configs/data/example_episodes.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.mark.parametrize("make", ["dir", "fifo", "devzero"])
def test_data_path_not_a_regular_file(tmp_path, make):
    from engine.data.dataset import DatasetError, read_dataset

    if make == "dir":
        path = tmp_path
        (tmp_path / "x.txt").write_text("x")
    elif make == "fifo":
        path = tmp_path / "d.npz"
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    with pytest.raises(DatasetError, match="not a dataset file|not a regular file"):
        read_dataset(path)
    raw = {"data": {"source": "dataset", "path": str(path)}}
    if make == "dir":  # a folder may be an npy-dir dataset: the reader says it is not one
        assert from_dict(raw).data.params["path"] == str(path)
    else:
        with pytest.raises(ConfigError, match="not a regular file or a folder"):
            from_dict(raw)


@pytest.mark.parametrize("names, expected", [
    (["cube", "sphere", "cube"], "object_names[0] and object_names[2] are both 'cube'"),
    (["cube", "", "cylinder"], "object_names[1] is ''"),
    (["cube", "  ", "cylinder"], "object_names[1] is '  '"),
])
def test_dataset_object_names_must_be_distinct_and_non_empty(tmp_path, root, names, expected):
    from engine.data.dataset import DatasetError, read_dataset

    a = _dataset_arrays(root)
    a["object_names"] = np.array(names)
    path = tmp_path / "d.npz"
    np.savez(path, **a)
    with pytest.raises(DatasetError) as e:
        read_dataset(path)
    assert expected in str(e.value) and str(path) in str(e.value)


def _write_box(path, extents):
    import trimesh

    trimesh.creation.box(extents=extents).export(str(path))


def test_two_mesh_files_of_one_name_are_rejected(tmp_path):
    from engine.data.shapes import load_mesh_folder, mesh_files

    _write_box(tmp_path / "cup.obj", (0.1, 0.1, 0.1))
    _write_box(tmp_path / "cup.stl", (0.1, 0.1, 0.1))
    for f in (mesh_files, load_mesh_folder):
        with pytest.raises(UserError, match="cup.obj and cup.stl would both be object 'cup'"):
            f(tmp_path)


@pytest.mark.parametrize("scale", [1e6, 1e-6, 1.0])
def test_meshes_of_any_size_are_scaled_to_10_cm(tmp_path, scale):
    from engine.data.shapes import load_mesh_folder

    _write_box(tmp_path / "thing.stl", (0.3 * scale, 0.2 * scale, 0.1 * scale))
    [(name, mesh)] = load_mesh_folder(tmp_path)
    lo, hi = mesh.bounds
    assert name == "thing"
    np.testing.assert_allclose(hi - lo, [0.1, 0.2 / 3, 0.1 / 3], rtol=1e-5)
    np.testing.assert_allclose((hi + lo) / 2, 0.0, atol=1e-9)


def test_a_mesh_too_small_to_scale_names_its_size(tmp_path):
    from engine.data.shapes import load_mesh_folder

    _write_box(tmp_path / "speck.stl", (1e-200, 1e-200, 1e-200))
    with pytest.raises(UserError, match="speck.stl.*(1e-200|zero surface area|largest side)"):
        load_mesh_folder(tmp_path)


@pytest.mark.parametrize("override, key", [
    ("evidence.max_graph_size=0.15", "evidence.max_graph_size: a grid of 0.15 m cannot hold the objects"),
    ("evidence.voxels_per_dim=2", "evidence.voxels_per_dim: 2 voxels over 0.3 m"),
])
def test_a_grid_that_cannot_hold_the_objects_is_an_error(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("configs/my_meshes.yaml", [override])


def test_a_graph_too_coarse_for_the_objects_is_an_error():
    with pytest.raises(ConfigError, match="evidence.graph_distance"):
        load_config("configs/shapes_10.yaml", ["evidence.graph=graph", "evidence.graph_distance=0.2"])
    assert load_config("configs/shapes_10.yaml", ["evidence.max_graph_size=0.2"]).evidence.max_graph_size == 0.2


# --------------------------------------------------------------------------- help, internal errors, Ctrl-C

def _actions(parser, where="python -m engine"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")
        else:
            yield where, action


def test_every_option_of_every_subcommand_has_help():
    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}" for where, a in _actions(cli.build_parser())
               if not a.help or a.help == argparse.SUPPRESS]
    seen = {where for where, _ in _actions(cli.build_parser())}
    assert {"python -m engine validate", "python -m engine profile", "python -m engine make-dataset"} <= seen
    assert not missing, missing


def test_internal_errors_are_one_line_traceback_only_with_v(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("an invariant broke " + "x" * 1000)

    monkeypatch.setattr(cli, "cmd_validate", bug)
    assert cli.main(["validate", "configs/demo.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: RuntimeError: an invariant broke") and err.count("\n") == 1
    assert "Traceback" not in err and "report" in err and "-v" in err and len(err) < 600
    assert cli.main(["validate", "-v", "configs/demo.yaml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("internal error: RuntimeError")


@pytest.mark.parametrize("cause, rc, text", [
    (KeyboardInterrupt, 130, "interrupted"),
    (MemoryError, 2, "error: out of memory"),
])
def test_kernel_errors_caused_by_ctrl_c_or_memory(monkeypatch, capsys, cause, rc, text):
    # numba reports an exception raised during a compiled call as
    # SystemError("... returned a result with an exception set") caused by it
    def kernel(args):
        try:
            raise cause()
        except BaseException as exc:
            raise SystemError("CPUDispatcher(<function k>) returned a result with an exception set") from exc

    monkeypatch.setattr(cli, "cmd_validate", kernel)
    assert cli.main(["validate", "configs/demo.yaml"]) == rc
    err = capsys.readouterr().err
    assert err.startswith(text) and err.count("\n") == 1 and "Traceback" not in err


def test_ctrl_c_in_the_simulation_waits_for_the_kernel(sigint_default):
    from engine.data import sensor

    class Stub:
        n_points = 1

    with pytest.raises(KeyboardInterrupt):
        with sensor.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler ran: it only noted the signal
            sensor.walk(Stub(), 3, 0)  # the next check point raises, before the kernel
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("args, text", [
    (["validate", "configs/shapes_10.yaml", "--set", "evidence.max_nneighbors=100000000000000000000000"],
     "evidence.max_nneighbors: expected an integer >= 1 and <= 1000"),
    (["run", "configs/shapes_10.yaml", "--set", f"data.eval_rotations={BIG}"], "of memory available"),
    (["validate", "configs/shapes_10.yaml", "--set", f"data.n_points={BIG}"], "of memory available"),
])
def test_cli_exit_2_one_line(engine_env, tmp_path, args, text):
    p = _cli(*args, "--out" if args[0] == "run" else "-q", *([str(tmp_path / "o")] if args[0] == "run" else []),
             env=engine_env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert text in p.stderr


def test_cli_billion_laughs(engine_env, tmp_path):
    path = tmp_path / "lol.yaml"
    path.write_text(DOCUMENTS["billion_laughs"][0])
    p = _cli("validate", str(path), env=engine_env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_cli_ctrl_c_while_simulating(engine_env, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {type: evidence}\ndata: {source: shapes, objects: [box, sphere, cylinder, cone], "
                   "n_points: 20000, train_steps: 400, eval_rotations: 50, eval_steps: 100}\n")
    p = subprocess.Popen([sys.executable, "-m", "engine", "run", str(cfg), "-v", "--out", str(tmp_path / "o")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env,
                         # SIGINT's default even when pytest runs with it ignored (a background job)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in p.stderr:
        if "sampling" in line:  # the simulation starts
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: no result files were written")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, text", [
    (["make-dataset", "--source", "seed_spiral", "--size", "10", "--out", "{fifo}"], "is not a regular file"),
    (["make-dataset", "--source", "cube", "--size", "100000000000", "--out", "{tmp}/c.npz"], "size: expected an integer 1..100000"),
    (["make-dataset", "--source", "random", "--size", "10", "--seed", str(2**64), "--out", "{tmp}/r.npz"], "seed: expected"),
    (["bench", "--suite", "startup", "--json", "{fifo}"], "exists and is not a regular file"),
    (["info", "--cache-dir", "{file}"], "--cache-dir"),
    (["profile", "configs/demo.yaml", "--out", "{file}"], "exists and is not a folder"),
])
def test_command_line_outputs_that_are_not_files(tmp_path, capsys, argv, text):
    # a FIFO stands for any non-regular file (a device such as /dev/null would be replaced by
    # the atomic rename when the engine runs as root)
    fifo, afile = tmp_path / "fifo", tmp_path / "afile"
    os.mkfifo(fifo)
    afile.write_text("x")
    argv = [a.format(fifo=fifo, tmp=tmp_path, file=afile) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and text in err and err.count("\n") == 1, err
    assert fifo.exists() and not fifo.is_file()  # still the FIFO


@pytest.mark.parametrize("scale, text", [(1e6, "holds at most 0.15 m"), (1e-6, "less than one voxel")])
def test_recorded_objects_the_model_cannot_hold(tmp_path, root, capsys, scale, text):
    from engine.data.episodes import build_dataset

    with np.load(root / "configs/data/evidence_example.npz") as d:
        a = {k: d[k] for k in d.files}
    a["location"] = (a["location"].astype(np.float64) * scale).astype(np.float32)
    np.savez(tmp_path / "d.npz", **a)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("model: {type: evidence}\ndata: {source: dataset, path: d.npz}\n")
    assert cli.main(["validate", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "object 'box' is" in err and text in err and err.count("\n") == 1, err
    with pytest.raises(UserError, match=text):
        build_dataset(load_config(cfg_path))
    # at its own size it is accepted
    a["location"] = (a["location"].astype(np.float64) / scale).astype(np.float32)
    np.savez(tmp_path / "d.npz", **a)
    assert cli.main(["validate", str(cfg_path)]) == 0


def test_warmup_checks_memory(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: random, n_points: 2000000000}\n")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**9)
    assert cli.main(["warmup", str(cfg)]) == 2
    assert "more than the 1.0 GB of memory available" in capsys.readouterr().err
