"""A first run's second compile process (engine.run.background) and the toy models it compiles on."""

import logging
import time

import numba
import numpy as np
import pytest

from engine.models.evidence import model as em
from engine.models.evidence.settings import EvidenceSettings
from engine.run import background, runtime


def _tiny_kernel_statement(n):
    # a small cached kernel of the project, called with an argument type no other test uses
    return (f"import numpy as np; from kernels.select import sort_range; "
            f"a = np.arange({n}, 0, -1).astype(np.int16); sort_range(a, 0, {n})")


def test_child_compiles_into_the_callers_cache(tmp_path, monkeypatch):
    """The child inherits the kernel cache folder and finds the project's packages from any
    working folder; what it compiled is in the cache for the caller."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(background.ENV_SWITCH, raising=False)
    monkeypatch.chdir(tmp_path)
    if background.usable_cores() < 2:
        pytest.skip("one core: no second process is started (checked in test_switched_off)")
    job = background.start(_tiny_kernel_statement(9))
    assert job is not None
    assert job.wait() is True
    cached = list((tmp_path / "cache").rglob("*sort_range*.nbi"))
    assert cached, list((tmp_path / "cache").rglob("*"))


def test_switched_off(monkeypatch):
    monkeypatch.setenv(background.ENV_SWITCH, "0")
    assert background.start("pass") is None
    monkeypatch.delenv(background.ENV_SWITCH)
    monkeypatch.setattr(background, "usable_cores", lambda: 1)
    assert background.start("pass") is None


def test_failed_child_is_reported_and_not_fatal(caplog, monkeypatch):
    monkeypatch.setattr(background, "usable_cores", lambda: 2)
    monkeypatch.delenv(background.ENV_SWITCH, raising=False)
    job = background.start("raise SystemExit('no such kernel here')")
    with caplog.at_level(logging.WARNING, logger="engine.run.background"):
        assert job.wait() is False
    assert "compiling in this process instead" in caplog.text and "no such kernel here" in caplog.text


def test_stop_kills_a_running_child(monkeypatch):
    monkeypatch.setattr(background, "usable_cores", lambda: 2)
    monkeypatch.delenv(background.ENV_SWITCH, raising=False)
    job = background.start("import time; time.sleep(60)")
    t0 = time.perf_counter()
    job.stop()
    assert job.proc.poll() is not None and time.perf_counter() - t0 < 10
    job.stop()  # twice is harmless


def test_child_never_starts_a_third_process(monkeypatch):
    monkeypatch.setattr(background, "usable_cores", lambda: 2)
    monkeypatch.delenv(background.ENV_SWITCH, raising=False)
    job = background.start(f"import os, sys; sys.exit(0 if os.environ['{background.ENV_SWITCH}'] == '0' else 3)")
    assert job.wait() is True


def _typeof(models):
    return numba.typeof(models)


def test_toy_models_have_the_kernel_signature_of_learned_ones():
    """The episode kernel the second process compiles on toy models is the one a run calls:
    the same numba types (dtypes, ranks, layout, writability) as a learned model's arrays."""
    s = EvidenceSettings()
    loc, pose, pfd, curv = em.toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    toy = em.toy_models(loc, pose, pfd, logk, s.max_match_distance)
    learned = em.EvidenceModel(s, em.CURVATURE_FEATURES, max_eval_steps=4)
    q = np.array([1, 0, 0, 0], np.float32)
    learned.learn("a", loc, pose, pfd, logk, q)
    learned.learn("b", loc * np.float32(0.5), pose, pfd, logk, q)
    assert _typeof(toy) == _typeof(learned.model_arrays())


def test_toy_models_run_and_rank_the_toy_objects():
    """compile_episode_kernel's toy models are valid models: an episode on the first toy
    object's own points keeps hypotheses on both objects without touching memory it must not."""
    s = EvidenceSettings()
    loc, pose, pfd, curv = em.toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    model = em.EvidenceModel.from_arrays(s, em.CURVATURE_FEATURES, em.toy_models(loc, pose, pfd, logk,
                                                                                     s.max_match_distance),
                                         ("a", "b"), max_eval_steps=4)
    assert model.object_names == ("a", "b") and model.nodes_per_object == [64, 64]
    code, istate, trace, _ = model.run_episode(loc[:4], pose[:4], pfd[:4], logk[:4])
    assert trace.shape[1] == 2 and np.isfinite(trace).any()
    with pytest.raises(RuntimeError, match="does not learn"):
        model.learn("c", loc, pose, pfd, logk, np.array([1, 0, 0, 0], np.float32))


def test_from_arrays_checks_the_names():
    s = EvidenceSettings()
    loc, pose, pfd, curv = em.toy_observations()
    logk = (np.sign(curv) * np.log1p(np.abs(curv))).astype(np.float32)
    with pytest.raises(ValueError, match="1 names for 2 object models"):
        em.EvidenceModel.from_arrays(s, em.CURVATURE_FEATURES, em.toy_models(loc, pose, pfd, logk, 0.01), ("a",))


class _FakeJob:
    def __init__(self, log):
        self.log = log

    def wait(self):
        self.log.append("wait")
        return True

    def stop(self):
        self.log.append("stop")


def _record_compiles(monkeypatch):
    """``(calls, statements)``: "start" for each second process started (its statement kept),
    "wait" / "stop" for what the run asks of it (``_FakeJob``), "episode" for each call of the
    one-module episode kernel."""
    from kernels import evidence as kev

    calls, statements = [], []

    def fake_start(statement):
        statements.append(statement)
        calls.append("start")
        return _FakeJob(calls)

    real_episode = kev.evidence_episode

    def episode(*args):
        calls.append("episode")
        return real_episode(*args)

    monkeypatch.setattr(background, "start", fake_start)
    monkeypatch.setattr(kev, "evidence_episode", episode)
    return calls, statements


def test_cold_evidence_run_waits_for_the_second_process_before_the_episode_kernel(root, monkeypatch):
    """A run that finds the episode kernel missing from the cache starts the second process
    (with a statement that compiles that kernel) before building its data, and waits for it
    before its first call of the episode kernel; then stops it."""
    from engine.config import load_config
    from engine.models.evidence import run as evidence_run

    calls, statements = _record_compiles(monkeypatch)
    monkeypatch.setattr(runtime, "is_cached", lambda name: False)
    ex = evidence_run.build(load_config(root / "configs/recorded_evidence.yaml"))
    assert calls == ["start"]
    ex.warmup()
    assert calls[:3] == ["start", "wait", "episode"] and calls[-1] == "stop", calls
    assert "compile_episode_kernel()" in statements[0]
    exec(statements[0], {})  # the statement itself runs (here: loads the kernel the suite compiled)


def test_warm_cache_starts_no_second_process(root, monkeypatch):
    from engine.config import load_config
    from engine.models.evidence import run as evidence_run

    monkeypatch.setattr(background, "start", lambda statement: pytest.fail("started a second process"))
    monkeypatch.setattr(runtime, "is_cached", lambda name: True)
    ex = evidence_run.build(load_config(root / "configs/recorded_evidence.yaml"))
    assert ex.episode_kernel_ahead is None


def test_cold_policy_run_compiles_the_policy_kernel_in_the_second_process(root, monkeypatch):
    """A policy config whose in-loop kernel is missing from the cache gives that kernel (the
    larger compile) to the second process; this one compiles the rest without waiting, then
    waits for the second process before warm-up ends (its kernel is then loaded, not compiled
    again), and stops it."""
    from engine.config import load_config
    from engine.models.evidence import run as evidence_run

    calls, statements = _record_compiles(monkeypatch)
    monkeypatch.setattr(runtime, "is_cached", lambda name: name != evidence_run.POLICY_KERNEL)
    cfg = load_config(root / "configs/shapes_10_policy.yaml",
                      ["data.objects=[mug, cone]", "data.n_points=1500", "data.train_steps=40", "data.eval_rotations=1"])
    ex = evidence_run.build(cfg)
    assert calls == ["start"] and ex.policy_kernel_ahead is not None and ex.episode_kernel_ahead is None
    ex.warmup()
    assert calls[0] == "start" and "episode" in calls and calls.index("episode") < calls.index("wait"), calls
    assert calls[-1] == "stop"
    assert "compile_policy_kernel()" in statements[0]
