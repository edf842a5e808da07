"""The model types, each behind one protocol; the CLI, ``warmup``, ``profile`` and
``validate`` ask this registry instead of branching on ``model.type``.

A model type is a module that defines, at its top level:

- ``build(cfg, *, progress=False, data=None) -> LearningModule``: the data (loaded, generated
  or simulated; or ``data``, the ``data`` of an experiment built for the same config) and the
  experiment, ready to run;
- ``describe_data(cfg) -> str``: what the config's data is, checked without running
  (``python -m engine validate``);
- ``warmup_config(cfg) -> None``: compile (or load from the cache) every kernel
  signature the config can use, on every execution path (``python -m engine warmup``);
- ``KERNEL_MODULES``: the kernel modules it calls (the cache inventory of ``info``);
- ``entry_kernel(cfg) -> str``: the kernel a run spends its compile time on; when the
  kernel cache lacks it, the CLI says that this first run compiles, and how long it took;
- ``profile_run(cfg, out_dir, top)`` only if it supports ``python -m engine profile``;
- ``save_state(experiment) -> dict`` and ``load_state(experiment, saved)`` only if its
  models can be saved (``python -m engine train --save``, ``run --model``): ``save_state``
  gives what a model file keeps of a trained experiment (``arrays``: name -> array,
  ``feature_columns``, ``settings``: the learning settings, ``training``: a JSON object
  describing the training, ``trained_on``: the training data's digest); ``load_state``
  checks a :class:`engine.run.model_file.SavedModel` against the experiment's config and
  data (one-line :class:`engine.errors.UserError` otherwise) and makes the experiment
  evaluate it instead of training. :func:`save_model` and :func:`load_experiment` are
  the CLI's side. Its experiment then also offers ``evaluation_pairs()`` (every
  evaluation episode's (epoch, episode), in result order) and
  ``result_from_records(records, compile_s=, run_s=)`` (the run's result from records
  evaluated elsewhere), which :mod:`engine.run.workers` uses to spread the evaluation
  over worker processes. ``evaluation_settings(cfg)`` (dotted config keys a saved model may
  be evaluated with other values of, beyond :data:`EVALUATION_KEYS`) lets
  :func:`training_settings` tell which sweep points can share one training.

The :class:`LearningModule` an experiment object implements: ``add_hook`` (one hook
API, :mod:`engine.run.hooks`), ``warmup`` (compile or load the run's kernels, seconds),
``train`` (training epochs only), ``evaluate_episode(epoch, episode)`` (one evaluation
episode after ``train`` -> its record, the same record ``run`` gives), ``run`` (the whole
experiment on its fastest path) and ``report(result)`` (one result shape for every
model: :class:`engine.run.results.RunReport`, which ``engine.run.results`` writes).

A new model type is one module with those names plus one line in :data:`MODEL_TYPES`.
The registry imports a model's module only when that model is asked for, so start-up
stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from engine.errors import UserError


class LearningModule(Protocol):
    """What every model type's experiment object offers (see the module docstring)."""

    config: Any
    HOOK_EVENTS: tuple[str, ...]

    def add_hook(self, event: str, fn) -> None: ...

    def warmup(self) -> float: ...

    def train(self) -> float: ...

    def evaluate_episode(self, epoch: int, episode: int) -> Any: ...

    def run(self) -> Any: ...

    def report(self, result: Any) -> Any: ...


@dataclass(frozen=True)
class ModelType:
    """One registered model type: its name, the module that implements it, a line of help."""

    name: str
    module: str
    help: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def profiles(self) -> bool:
        """Whether ``python -m engine profile`` supports this model type."""
        return hasattr(self.load(), "profile_run")


#: name -> model type. ``similarity`` and ``nearest`` share one implementation (the
#: nearest model is the similarity model over a KD-tree of the store).
MODEL_TYPES: dict[str, ModelType] = {m.name: m for m in (
    ModelType("similarity", "engine.models.similarity",
              "mean over every stored observation of 1 / (1 + distance + feature L1) (linear scan)"),
    ModelType("nearest", "engine.models.similarity",
              "the same over the k nearest stored observations (KD-tree)"),
    ModelType("evidence", "engine.models.evidence.run",
              "tbp.monty's object and pose recognition (evidence matching over object graphs)"),
)}


def model_type(name: str) -> ModelType:
    """The registered model type ``name``; a UserError naming the known ones otherwise."""
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise UserError(f"unknown model type {name!r}; one of {', '.join(MODEL_TYPES)}") from None


def for_config(cfg) -> ModuleType:
    """The module implementing ``cfg.model.type``."""
    return model_type(cfg.model.type).load()


def saves_models(module: ModuleType) -> bool:
    """Whether the model type's models can be saved and loaded."""
    return hasattr(module, "save_state") and hasattr(module, "load_state")


def _need_saving(cfg, module: ModuleType) -> None:
    if not saves_models(module):
        raise UserError(f"{cfg.source_file}: the {cfg.model.type} model cannot be saved or loaded")


def save_model(cfg, experiment, path) -> str:
    """Write the trained ``experiment``'s model to ``path`` (atomically); its content digest."""
    from engine.run import model_file

    module = for_config(cfg)
    _need_saving(cfg, module)
    state = module.save_state(experiment)
    return model_file.write_model(path, cfg.model.type, state["arrays"], config=cfg.to_dict(),
                                  trained_on=state["trained_on"], feature_columns=state["feature_columns"],
                                  settings=state["settings"], training=state["training"])


def load_experiment(cfg, *, progress: bool = False, data=None):
    """The experiment of ``cfg`` evaluating the saved model ``cfg.model.path`` (read and
    checked before the data is built; checked against the data after). ``data``: observations
    already built for ``cfg`` (an experiment's ``data``), used instead of building them."""
    from engine.run import model_file

    module = for_config(cfg)
    _need_saving(cfg, module)
    saved = model_file.read_model(cfg.model.path)
    model_file.check_model_type(saved, cfg.model.type, cfg.source_file)
    experiment = module.build(cfg, progress=progress, **({"data": data} if data is not None else {}))
    module.load_state(experiment, saved)
    return experiment


#: config keys (dotted; a section name covers the section) that never change what training
#: learns, for every model type: the evaluation's, the run's name, where it runs and writes
EVALUATION_KEYS = ("experiment.name", "experiment.do_eval", "experiment.n_eval_epochs", "experiment.max_eval_steps",
                   "experiment.plot_evidence", "model.path", "execution", "output_dir")


def training_settings(cfg) -> dict | None:
    """The part of ``cfg``'s resolved config that the model it trains depends on: the
    config less :data:`EVALUATION_KEYS` and the model type's ``evaluation_settings(cfg)``.
    Two configs with equal training settings train the same model, so one saved model
    serves both (``python -m engine sweep``). None when the model type cannot save models."""
    module = for_config(cfg)
    if not saves_models(module):
        return None
    doc = cfg.to_dict()
    free = EVALUATION_KEYS + tuple(getattr(module, "evaluation_settings", lambda c: ())(cfg))
    for key in free:
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return doc
