"""The model types behind one protocol: the registry, the shared hook API, one report shape."""

import csv
import json

import pytest

from engine import config as config_mod
from engine.config import from_dict
from engine.errors import UserError
from engine.run import registry
from engine.run.hooks import EVENTS, HookEvent, Hooks
from engine.run.results import RunReport, shown_rows, write_report

PROTOCOL = ("build", "describe_data", "warmup_config", "KERNEL_MODULES", "entry_kernel")


def test_every_model_type_implements_the_protocol():
    assert tuple(registry.MODEL_TYPES) == config_mod.MODEL_TYPES == ("similarity", "nearest", "evidence")
    for name, mt in registry.MODEL_TYPES.items():
        mod = mt.load()
        missing = [a for a in PROTOCOL if not hasattr(mod, a)]
        assert not missing, (name, missing)
        assert all(m.startswith("kernels.") for m in mod.KERNEL_MODULES)
    assert registry.MODEL_TYPES["similarity"].profiles and not registry.MODEL_TYPES["evidence"].profiles


def test_unknown_model_type_is_a_user_error():
    with pytest.raises(UserError, match="unknown model type 'votes'; one of similarity, nearest, evidence"):
        registry.model_type("votes")


def test_for_config_picks_the_module():
    cfg = from_dict({"model": {"type": "nearest"}, "data": {"source": "cube"}})
    assert registry.for_config(cfg).__name__ == "engine.models.similarity"


def _config(**model):
    return from_dict({"experiment": {"n_train_epochs": 2, "n_eval_epochs": 2, "max_eval_steps": 20},
                      "model": {"confidence_threshold": 0.55, **model},
                      "data": {"source": "random", "n_points": 40, "n_features": 2, "seed": 5},
                      "execution": {"chunk_size": 4}})


@pytest.mark.parametrize("model", [{"type": "similarity"}, {"type": "nearest", "k": 4}])
@pytest.mark.parametrize("stepwise", [False, True])
def test_train_then_evaluate_episode_equals_the_run(model, stepwise):
    """What a scheduler does (train once, hand out evaluation episodes in any order)
    gives the records of the whole run on its fused path."""
    cfg = _config(**model)
    mod = registry.for_config(cfg)
    whole = mod.build(cfg)
    want = [r for r in whole.records(whole.run()) if r.mode == "eval"]
    if stepwise:
        cfg = from_dict({**cfg.to_dict(), "execution": {"chunk_size": 4, "stepwise": True}})
    ex = mod.build(cfg)
    with pytest.raises(RuntimeError, match="train"):
        ex.evaluate_episode(0, 0)
    ex.train()
    n_ep = ex.obs.eval_starts.shape[0]
    order = [(p, e) for p in (1, 0) for e in reversed(range(n_ep))]
    got = {(p, e): ex.evaluate_episode(p, e) for p, e in order}
    assert [got[(r.epoch, r.episode)] for r in want] == want
    with pytest.raises(IndexError, match="out of range"):
        ex.evaluate_episode(2, 0)


def test_report_is_what_run_writes(tmp_path):
    cfg = _config()
    ex = registry.for_config(cfg).build(cfg)
    compile_s = ex.warmup()
    rep = ex.report(ex.run())
    assert isinstance(rep, RunReport) and rep.summary["compile_s"] == compile_s
    s_path, e_path = write_report(tmp_path / "out", rep)
    assert json.loads(s_path.read_text()) == json.loads(json.dumps(rep.summary))
    rows = list(csv.reader(e_path.open()))
    assert tuple(rows[0]) == rep.columns and len(rows) - 1 == len(rep.rows)
    assert rows[1:] == [[str(v) for v in r] for r in rep.rows]
    assert rep.summary["experiment"] in rep.table.splitlines()[-1]


def test_hooks_registry():
    h = Hooks(EVENTS)
    with pytest.raises(ValueError, match="unknown hook event 'after_lunch'; events: before_experiment"):
        h.add("after_lunch", print)
    with pytest.raises(TypeError):
        h.add("after_step", None)
    seen = []
    h.add("before_experiment", seen.append)
    assert h.granular == 0 and h.has("before_experiment") and not h.has("after_step", "before_epoch")
    h.add("after_step", seen.append)
    assert h.granular == 1
    h.emit("after_step", "x", step=3, confidence=0.5)
    h.emit("after_epoch", "x", epoch=1)  # no hook: nothing built, nothing called
    assert seen == [HookEvent("after_step", "x", step=3, confidence=0.5)]


@pytest.mark.parametrize("n, max_rows, shown", [(0, 4, 0), (4, 4, 4), (5, 4, 5), (9, 4, 5)])
def test_shown_rows(n, max_rows, shown):
    rows = list(range(n))
    out = shown_rows(rows, max_rows)
    assert len(out) == shown
    if n > max_rows:
        assert out[:2] == rows[:2] and out[2] is None and out[3:] == rows[-2:]
    else:
        assert out == rows


def test_kernel_modules_name_modules_that_define_kernels():
    """The first-run notice and `info` look at these modules: each must exist and hold kernels."""
    import importlib

    from numba.core.registry import CPUDispatcher

    for mt in registry.MODEL_TYPES.values():
        for name in mt.load().KERNEL_MODULES:
            mod = importlib.import_module(name)
            assert any(isinstance(v, CPUDispatcher) for v in vars(mod).values()), name


@pytest.mark.parametrize("name", list(registry.MODEL_TYPES))
def test_entry_kernel_is_a_cached_kernel(name):
    """The first-run check looks this name up in the kernel cache: it must name a cached
    (cache=True) kernel of one of the model's kernel modules."""
    import importlib

    cfg = from_dict({"model": {"type": name}, "data": {"source": "shapes" if name == "evidence" else "cube"}})
    mod = registry.for_config(cfg)
    module, fn = mod.entry_kernel(cfg).rsplit(".", 1)
    assert module in mod.KERNEL_MODULES
    disp = getattr(importlib.import_module(module), fn)
    assert disp._cache.__class__.__name__ != "NullCache", "the entry kernel must be cache=True"


# --------------------------------------------------------------------------- a new model type: one module + one line
# This test module is itself the toy model type's module: the protocol's names below.

KERNEL_MODULES = ("kernels.distance",)


def entry_kernel(cfg):
    return "kernels.distance.pairwise_distances"


class _CountingExperiment:
    """A toy learning module: 'recognises' an episode by its number of steps."""

    HOOK_EVENTS = EVENTS

    def __init__(self, cfg):
        from engine.data import sources

        self.config, self.obs = cfg, sources.build(cfg.data.source, cfg.data.params)
        self.hooks, self.trained = Hooks(EVENTS), None

    def add_hook(self, event, fn):
        self.hooks.add(event, fn)

    def warmup(self):
        return 0.0

    def train(self):
        self.trained = int((self.obs.train_stops - self.obs.train_starts).sum())
        return 0.0

    def evaluate_episode(self, epoch, episode):
        rec = (epoch, episode, int(self.obs.eval_stops[episode] - self.obs.eval_starts[episode]))
        self.hooks.emit("after_episode", self, mode="eval", epoch=epoch, episode=episode, record=rec)
        return rec

    def run(self):
        self.train()
        return [self.evaluate_episode(0, e) for e in range(self.obs.eval_starts.shape[0])]

    def report(self, result):
        summary = {"model": self.config.model.type, "trained_steps": self.trained, "compile_s": 0.0}
        return RunReport(summary, ("epoch", "episode", "steps"), [list(r) for r in result], "counted")

    def write_extras(self, out_dir, result):
        return []


def build(cfg, *, progress=False):
    return _CountingExperiment(cfg)


def describe_data(cfg):
    return f"{cfg.data.source} data, counted"


def warmup_config(cfg):
    pass


def test_a_new_model_type_is_one_module_and_one_registry_line(tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setitem(registry.MODEL_TYPES, "counting", registry.ModelType("counting", __name__, "a toy"))
    # the config's allowed model types are the registry's (taken when engine.config is imported)
    monkeypatch.setattr(config_mod.SCHEMA["model"]["type"], "choices", tuple(registry.MODEL_TYPES))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  type: counting\ndata:\n  source: cube\n")
    assert main(["validate", str(cfg)]) == 0
    assert "ok (counting model, cube data, counted)" in capsys.readouterr().out
    assert main(["-q", "run", str(cfg), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.startswith("counted\n")
    assert json.loads((tmp_path / "o/summary.json").read_text())["model"] == "counting"
    assert (tmp_path / "o/episodes.csv").read_text().splitlines()[0] == "epoch,episode,steps"
    assert main(["profile", str(cfg)]) == 2  # no profile_run: a clear error, not a traceback
    assert "profile covers the similarity and nearest models" in capsys.readouterr().err
