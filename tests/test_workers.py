"""Evaluation over worker processes (engine/run/workers.py, ``run --workers N``,
``execution.workers``): the results of a saved model are the same whatever N.

Each case starts a Dask LocalCluster (about a second here) whose workers build the data and
map the model file; the runs call ``engine.cli.main`` in this process.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from engine.cli import main

from cli_helpers import run_cli

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
#: fields that measure time or the machine, or how the evaluation was spread
VOLATILE = {"compile_s", "run_s", "train_s", "data_s", "data_compile_s", "matching_step_s", "openmp_wait_policy",
            "openmp_wait_policy_source", "workers", "scheduler", "eval_s", "cluster_start_s", "worker_setup_s",
            "kernel_calls", "eval_threads"}
EVIDENCE = ROOT / "configs" / "recorded_evidence.yaml"




def _episodes(folder):
    lines = (folder / "episodes.csv").read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("seconds") if "seconds" in header else None
    return [[v for i, v in enumerate(line.split(",")) if i != drop] for line in lines]


def _summary(folder):
    s = json.loads((folder / "summary.json").read_text())
    return s, {k: v for k, v in s.items() if k not in VOLATILE and k != "config"}


@pytest.mark.parametrize("config, extra, counts", [
    ("demo.yaml", [], (2,)),
    ("nearest_spiral.yaml", ["--set", "data.size=400", "--set", "experiment.max_train_steps=400",
                             "--set", "experiment.max_eval_steps=400", "--set", "experiment.n_eval_epochs=3"], (3,)),
    ("recorded_evidence.yaml", [], (2, 3)),
    ("recorded_5lm.yaml", [], (2,)),  # five modules that vote
])
def test_same_results_whatever_the_workers(tmp_path, capsys, config, extra, counts):
    cfg = ROOT / "configs" / config
    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", cfg, "--save", model, "-q", *extra)[0] == 0
    rc, out, err = run_cli(capsys, "run", cfg, "--model", model, "--out", tmp_path / "w1", "-q", *extra)
    assert rc == 0, err
    one, one_fields = _summary(tmp_path / "w1")
    assert one["workers"] == 1 and one["cluster_start_s"] is None and one["eval_s"] == one["run_s"]
    for n in counts:
        rc, out, err = run_cli(capsys, "run", cfg, "--model", model, "--out", tmp_path / f"w{n}", "-q",
                            "--workers", n, *extra)
        assert rc == 0, err
        assert _episodes(tmp_path / f"w{n}") == _episodes(tmp_path / "w1")
        many, many_fields = _summary(tmp_path / f"w{n}")
        assert many_fields == one_fields
        assert many["workers"] == n and many["config"]["execution"]["workers"] == n
        assert many["cluster_start_s"] > 0 and many["eval_s"] > 0 and many["run_s"] >= many["eval_s"]
        assert err == ""  # the cluster's log lines stay quiet


def test_workers_need_a_saved_model(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "o", "--workers", 2)
    assert rc == 2 and err.count("\n") == 1 and "evaluates a saved model" in err and "--model" in err
    rc, out, err = run_cli(capsys, "run", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "o", "--workers", 0)
    assert rc == 2 and "execution.workers: expected an integer >= 1 and <= 1024, got 0" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.fixture(scope="module")
def evidence_model(tmp_path_factory):
    """recorded_evidence.yaml's saved model, and its evaluation in one process (8 episodes)."""
    tmp = tmp_path_factory.mktemp("workers")
    assert main(["train", str(EVIDENCE), "--save", str(tmp / "m.npz"), "-q"]) == 0
    assert main(["run", str(EVIDENCE), "--model", str(tmp / "m.npz"), "--out", str(tmp / "w1"), "-q"]) == 0
    return tmp / "m.npz", tmp / "w1"


def test_scheduler_of_a_running_cluster(evidence_model, tmp_path, capsys):
    """--scheduler sends the tasks to a cluster started elsewhere (here by the test)."""
    import logging

    from distributed import LocalCluster

    model, one = evidence_model
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        rc, out, err = run_cli(capsys, "run", EVIDENCE, "--model", model, "--out", tmp_path / "s", "-q",
                            "--scheduler", address)
        assert rc == 0, err
        assert len(cluster.workers) == 2  # the run left the cluster running
    assert _episodes(tmp_path / "s") == _episodes(one)
    s, fields = _summary(tmp_path / "s")
    assert fields == _summary(one)[1]
    assert s["scheduler"] == address and s["workers"] == 2 and s["config"]["execution"]["scheduler"] == address
    assert s["cluster_start_s"] > 0 and s["eval_s"] > 0 and s["worker_setup_s"] > 0


def test_killed_worker_episodes_run_elsewhere(evidence_model, tmp_path, capsys, monkeypatch):
    """A worker killed (SIGKILL) after evaluating its first task's episodes, before returning
    them (ENGINE_TEST_PAUSE_AT=worker_task): the episodes are evaluated again elsewhere, each
    counted once, and the results are those of one process."""
    model, one = evidence_model
    flag = tmp_path / "pause"
    monkeypatch.setenv("ENGINE_TEST_PAUSE_AT", "worker_task")
    monkeypatch.setenv("ENGINE_TEST_PAUSE_FILE", str(flag))
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                pid, phase = flag.read_text().split()
            except (OSError, ValueError):  # not there yet, or half written
                time.sleep(0.01)
                continue
            assert phase == "worker_task"
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
            time.sleep(0.2)
            flag.unlink()
            return

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    rc, out, err = run_cli(capsys, "run", EVIDENCE, "--model", model, "--out", tmp_path / "k", "-q", "--workers", 2)
    t.join(5)
    assert rc == 0, err
    assert len(killed) == 1 and killed[0] != os.getpid()
    assert (tmp_path / "pause.once").exists()  # the pause was reached, in a worker
    episodes = _episodes(tmp_path / "k")
    assert len(episodes) == 1 + 8 and len({tuple(r[:2]) for r in episodes[1:]}) == 8  # each episode once
    assert episodes == _episodes(one)
    assert _summary(tmp_path / "k")[1] == _summary(one)[1]


def test_scheduler_errors_exit_2(evidence_model, tmp_path, capsys, monkeypatch):
    from engine.config import ConfigError, from_dict
    from engine.run import workers

    model, _ = evidence_model
    monkeypatch.setattr(workers, "CONNECT_TIMEOUT_S", 2)
    rc, out, err = run_cli(capsys, "run", EVIDENCE, "--model", model, "--out", tmp_path / "o", "--scheduler",
                        "tcp://127.0.0.1:9")
    assert rc == 2 and err.count("\n") == 1, err
    assert "execution.scheduler: cannot reach the Dask scheduler at tcp://127.0.0.1:9 within 2 s" in err
    rc, out, err = run_cli(capsys, "run", EVIDENCE, "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:9")
    assert rc == 2 and "execution.scheduler = tcp://127.0.0.1:9 evaluates a saved model" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    with pytest.raises(ConfigError, match="execution.scheduler: set together with execution.workers = 2"):
        from_dict({"data": {"source": "cube"}, "execution": {"workers": 2, "scheduler": "tcp://127.0.0.1:9"}})


def test_workers_get_the_runs_observations_instead_of_making_them(tmp_path, capsys, monkeypatch):
    """Data made in the run's process (simulated, generated) is sent to the workers, which build
    their experiment on it without making it again; a dataset file is mapped by each worker."""
    from engine.config import load_config
    from engine.data import sources
    from engine.models import similarity
    from engine.run import registry, workers

    model = tmp_path / "m.npz"
    assert run_cli(capsys, "train", ROOT / "configs" / "demo.yaml", "--save", model, "-q")[0] == 0
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"model.path={json.dumps(str(model))}"])
    ex = registry.load_experiment(cfg)
    assert workers.shipped_data(ex, cfg) is ex.data and ex.data is ex.obs
    evidence_cfg = load_config(EVIDENCE)
    assert workers.shipped_data(object(), evidence_cfg) is None  # a dataset file: not shipped

    def no_second_build(*args, **kwargs):
        raise AssertionError("the worker made the observations again")

    monkeypatch.setattr(sources, "build", no_second_build)
    monkeypatch.setattr(workers, "_WORKER_EXPERIMENTS", {})
    import numba

    threads = numba.get_num_threads()
    try:  # what each worker runs (it sets one kernel thread: given back to this process after)
        in_worker = workers._experiment_in_worker(cfg, ex.data)
        records = workers.evaluate_chunk(cfg, [(0, 0)], ex.data)
    finally:
        numba.set_num_threads(threads)
    assert in_worker.data is ex.data
    assert [(p, e) for p, e, _ in records] == [(0, 0)]
    assert isinstance(in_worker, similarity.Experiment)


def _recorder(ex, events):
    """Register a hook on every event but the per-step ones; each call appends its fields."""
    seen = []
    for name in events:
        ex.add_hook(name, lambda ev: seen.append(
            (ev.name, ev.mode, ev.epoch, ev.episode,
             None if ev.record is None else (ev.record.object, ev.record.outcome, ev.record.steps),
             ev.result is not None)))
    return seen


def test_hooks_over_workers_see_what_one_process_sees(evidence_model):
    """Episode, epoch and experiment hooks fire in this process, in the order (and with the
    records) of a run in one process; a per-step hook is refused before anything runs."""
    import dataclasses

    from engine.config import load_config
    from engine.run import registry, workers
    from engine.run.hooks import EVENTS

    model, _ = evidence_model
    cfg = load_config(EVIDENCE, [f"model.path={model}"])
    events = [e for e in EVENTS if e not in workers.STEP_EVENTS]
    serial = registry.load_experiment(cfg)
    seen_serial = _recorder(serial, events)
    serial.run()
    assert len(seen_serial) == 2 + 2 + 2 * 8  # experiment, epoch, 8 episodes

    spread = dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, workers=2))
    ex = registry.load_experiment(spread)
    seen = _recorder(ex, events)
    result, info = workers.run(ex, spread)
    assert info["workers"] == 2 and len(result.episodes) == 8
    assert seen == seen_serial

    ex = registry.load_experiment(spread)
    ex.add_hook("after_step", lambda ev: None)
    with pytest.raises(ValueError, match="after_step hooks need the evaluation's steps in this process"):
        workers.run(ex, spread)


def test_evaluation_events_in_order_whatever_the_arrival():
    """Records arriving out of order (and a retried task's repeat) give the events of a run in
    one process, each episode once, and the progress bar counts each episode once."""
    from types import SimpleNamespace

    from engine.run.hooks import EVENTS, Hooks
    from engine.run.workers import EvaluationEvents

    ex = SimpleNamespace(hooks=Hooks(EVENTS), progress=True)
    seen = []
    for name in EVENTS:
        ex.hooks.add(name, lambda ev: seen.append((ev.name, ev.epoch, ev.episode, ev.record)))
    pairs = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    ev = EvaluationEvents(ex, pairs)
    ev.arrived([(0, 1, "b"), (1, 0, "d")])
    assert seen == [] and ev.bar.n == 2  # episode (0, 0) is not in yet
    ev.arrived([(0, 0, "a")])
    assert seen == [("before_epoch", 0, None, None), ("before_episode", 0, 0, None), ("after_episode", 0, 0, "a"),
                    ("before_episode", 0, 1, None), ("after_episode", 0, 1, "b")]
    ev.arrived([(0, 1, "repeat"), (1, 2, "f"), (0, 2, "c")])
    ev.arrived([(1, 1, "e")])
    assert ev.bar.n == 6
    ev.close()
    after = [(name, epoch, episode, record) for name, epoch, episode, record in seen if name == "after_episode"]
    assert after == [("after_episode", p, e, r) for (p, e), r in zip(pairs, "abcdef")]
    assert [s[0] for s in seen if s[0].endswith("epoch")] == ["before_epoch", "after_epoch"] * 2
    assert seen.index(("after_epoch", 0, None, None)) < seen.index(("before_epoch", 1, None, None))
    assert len(seen) == 2 * 2 + 2 * 6
