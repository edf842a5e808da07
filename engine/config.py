"""Experiment configs: plain YAML, validated against one schema before anything runs.

Every setting, its type, its allowed range and its default live in ``SCHEMA``
and ``SOURCES`` below (the one place defaults are defined; the README's config
reference is written from them). ``load_config`` reads a file, applies
``--set key.path=value`` overrides, fills defaults and validates; any problem
raises ``ConfigError`` whose message names the file, the key path and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ConfigError
from engine.run.registry import MODEL_TYPES as REGISTERED_MODEL_TYPES


#: Largest value of an integer setting unless it says otherwise: sizes and counts reach
#: the kernels as int32 or int64 and are multiplied together, so nothing beyond int32.
INT_MAX = 2**31 - 1
#: Largest seed (numpy seeds take any non-negative integer; int64 keeps it one machine word).
SEED_MAX = 2**63 - 1
#: Largest magnitude of a number setting: the kernels compute in float32, where anything
#: larger is infinity.
FLOAT_MAX = 3.4028234663852886e38
#: Bounds on a config document (file or ``--set`` value): its size in bytes, and the
#: number of values it holds once every YAML alias is expanded (a config has ~100).
MAX_DOCUMENT_BYTES = 1 << 20
MAX_DOCUMENT_NODES = 10_000
#: Longest string setting (a name or a path; PATH_MAX on Linux).
MAX_STRING = 4096
#: Longest shown value in an error message (characters).
MAX_SHOWN = 80


class _Setting:
    """One config value: its kind, default and allowed range (for messages and checks).

    Every integer and number has both bounds: ``INT_MAX`` (``SEED_MAX`` for seeds) and
    ``+-FLOAT_MAX`` where the setting names none, so no value can overflow where it is used.
    """

    def __init__(self, kind, default=None, *, minimum=None, maximum=None, choices=None,
                 nullable=False, required=False, exclusive_min=False, doc=""):
        self.kind = kind
        self.default = default
        if kind is int and maximum is None:
            maximum = INT_MAX
        if kind is float:
            minimum = -FLOAT_MAX if minimum is None else minimum
            maximum = FLOAT_MAX if maximum is None else maximum
        self.minimum = minimum
        self.maximum = maximum
        self.choices = choices
        self.nullable = nullable
        self.required = required
        self.exclusive_min = exclusive_min
        self.doc = doc

    def allowed(self, full: bool = False) -> str:
        """What the setting allows, in words; the default ceilings (INT_MAX, +-FLOAT_MAX) only
        with ``full`` (the message of a value beyond them)."""
        if self.kind is list:
            text = "a list of names" + (" from " + ", ".join(repr(c) for c in self.choices) if self.choices else "")
        elif self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is bool:
            text = "true or false"
        else:
            text = {int: "an integer", float: "a number", str: "a string"}[self.kind]
            lo = hi = None
            if self.minimum is not None and (full or self.minimum != -FLOAT_MAX):
                lo = ("> " if self.exclusive_min else ">= ") + _bound(self.minimum)
            if self.maximum is not None and (full or self.maximum not in (INT_MAX, FLOAT_MAX)):
                hi = "<= " + _bound(self.maximum)
            bounds = " and ".join(b for b in (lo, hi) if b)
            if bounds:
                text += " " + bounds
        if self.nullable:
            text += ", or null"
        return text

    def check(self, value, where: str):
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where}: expected {self.allowed()}, got null")
        ok = True
        if self.kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: expected {self.allowed()}, got {describe_value(value)}")
            bad = [v for v in value if self.choices and v not in self.choices]
            if bad:
                raise ConfigError(f"{where}: unknown name {bad[0]!r} (allowed: {', '.join(self.choices)})")
            if len(set(value)) != len(value):
                raise ConfigError(f"{where}: names must be distinct, got {describe_value(value)}")
            return list(value)
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                value = float(value)
                ok = math.isfinite(value)
        elif self.kind is str:
            ok = isinstance(value, str) and value != ""
            if ok and len(value) > MAX_STRING:
                raise ConfigError(f"{where}: expected at most {MAX_STRING} characters (the longest a path may "
                                  f"be), got {len(value):,}")
        if not ok:
            raise ConfigError(f"{where}: expected {self.allowed()}, got {describe_value(value)}{_number_hint(self.kind, value)}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}: expected {self.allowed()}, got {describe_value(value)}")
        if self.minimum is not None and (value < self.minimum or (self.exclusive_min and value == self.minimum)):
            raise ConfigError(f"{where}: expected {self.allowed(full=self.minimum == -FLOAT_MAX)}, "
                              f"got {describe_value(value)}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{where}: expected {self.allowed(full=self.maximum in (INT_MAX, FLOAT_MAX))}, "
                              f"got {describe_value(value)}")
        return value


def _number_hint(kind, value) -> str:
    """For a number YAML read as a string (YAML 1.1 wants ``1.0e+23``, not ``1e23``): how to
    write it."""
    if kind not in (int, float) or not isinstance(value, str) or len(value) > 40:
        return ""
    try:
        x = float(value)
    except ValueError:
        return ""
    if not math.isfinite(x):
        return ""
    if kind is int:
        return f" (write an integer as digits: {int(x)})" if x.is_integer() and abs(x) < 1e30 else ""
    return f" (YAML reads {value} as text; write a number as e.g. {x:.1e})".replace("e+0", "e+").replace("e-0", "e-")


def _bound(x) -> str:
    """A bound as the README's table shows it: 2**31 - 1 and float32's largest in full
    would be unreadable."""
    if x == INT_MAX:
        return "2147483647 (2**31 - 1)"
    if x == SEED_MAX:
        return "2**63 - 1"
    if abs(x) == FLOAT_MAX:
        return f"{'-' if x < 0 else ''}3.4e38 (float32's largest)"
    return str(x)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxset = 3, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = MAX_SHOWN, 40, MAX_SHOWN


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis and the full length when cut)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def describe_value(value) -> str:
    """A value for an error message, never longer than ~MAX_SHOWN characters: reprlib
    stops at a few items and levels, so a huge or deeply aliased value costs nothing."""
    if isinstance(value, str):
        return clip(repr(value)) if len(value) <= 4 * MAX_SHOWN else clip(_REPR.repr(value))
    if isinstance(value, (dict, list)):
        kind = "mapping" if isinstance(value, dict) else "list"
        return f"a {kind} of {len(value)} item{'s' * (len(value) != 1)} ({clip(_REPR.repr(value))})"
    if isinstance(value, bool):
        return repr(value).lower()
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a huge int is slow, or refused
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return clip(f"{_REPR.repr(value)} ({type(value).__name__})")


MODEL_TYPES = tuple(REGISTERED_MODEL_TYPES)  # the registry names the model types (engine.run.registry)
# Data sources each model can read: the evidence model needs pose vectors and curvatures.
EVIDENCE_SOURCES = ("shapes", "dataset")
BUILTIN_SHAPE_NAMES = ("box", "sphere", "cylinder", "cone", "torus", "capsule", "mug", "bowl", "banana", "die")
# engine.data.shapes.VARIANT_SHAPES: objects that differ from a built-in one in one part
BUILTIN_SHAPE_NAMES += ("cup", "pill", "rounded_box", "deep_bowl", "truncated_cone")
# Settings that only the nearest model reads.
NEAREST_ONLY = ("k", "max_distance", "dedup_distance", "dedup_feature")

SCHEMA: dict[str, dict[str, _Setting]] = {
    "experiment": {
        "name": _Setting(str, "experiment", doc="name shown in the summary"),
        "do_train": _Setting(bool, True, doc="run the training epochs"),
        "do_eval": _Setting(bool, True, doc="run the evaluation epochs"),
        "n_train_epochs": _Setting(int, 1, minimum=0, maximum=1_000_000,
                                   doc="training epochs (each presents every training episode)"),
        "n_eval_epochs": _Setting(int, 1, minimum=0, maximum=1_000_000, doc="evaluation epochs"),
        "max_train_steps": _Setting(int, 10000, minimum=1, doc="step limit of a training episode"),
        "max_eval_steps": _Setting(int, 10000, minimum=1, doc="step limit of an evaluation episode "
                                                               "(evidence model: matching steps)"),
        "plot_evidence": _Setting(bool, False, doc="evidence model: a PNG per evaluation episode of each "
                                                   "object's best evidence over the steps (needs matplotlib)"),
    },
    "model": {
        "type": _Setting(str, "similarity", choices=MODEL_TYPES,
                         doc="similarity: linear scan over every stored observation; "
                             "nearest: the same similarity over the k nearest (KD-tree); "
                             "evidence: tbp.monty's object and pose recognition (settings in `evidence`)"),
        "k": _Setting(int, 10, minimum=1, maximum=100_000, doc="nearest: neighbours per matching step"),
        "max_distance": _Setting(float, None, minimum=0.0, exclusive_min=True, nullable=True,
                                 doc="nearest: only neighbours this close count (null: no bound)"),
        "dedup_distance": _Setting(float, None, minimum=0.0, nullable=True,
                                   doc="nearest: a training observation this close to a stored one "
                                       "(with similar features) is not stored (null: store all)"),
        "dedup_feature": _Setting(float, None, minimum=0.0, nullable=True,
                                  doc="nearest: L1 feature distance up to which dedup applies (null: any)"),
        "storage": _Setting(str, "float32", choices=("float32", "float16"),
                            doc="storage of stored observations (compute is float32 either way): "
                                "float32 16 B, float16 8 B per observation with one feature"),
        "confidence_threshold": _Setting(float, None, minimum=0.0, maximum=1.0, exclusive_min=True, nullable=True,
                                         doc="an evaluation episode is done when the confidence reaches this; "
                                             "null: never done early"),
        "path": _Setting(str, None, nullable=True,
                         doc="a saved model (`python -m engine train --save`) to evaluate instead of training, "
                             "relative to the config file's folder; null: train"),
    },
    "data": {
        "source": _Setting(str, None, required=True,
                           choices=("seed_spiral", "cube", "sphere", "random", "dataset", "shapes"),
                           doc="where observations come from (settings per source below)"),
    },
    "execution": {
        "stepwise": _Setting(bool, False, doc="Python loop with one kernel call per step (debugging, profiling)"),
        "chunk_size": _Setting(int, 64, minimum=1, maximum=1_000_000, doc="evaluation steps per batch between termination checks"),
        "workers": _Setting(int, 1, minimum=1, maximum=1024, doc="worker processes the evaluation of a saved model (model.path) "
                                                   "is spread over (Dask; the dask extra); 1: this process"),
        "scheduler": _Setting(str, None, nullable=True,
                              doc="address of a running Dask scheduler (tcp://HOST:8786) whose workers evaluate a "
                                  "saved model (model.path) instead of a local cluster (the dask extra); "
                                  "null: execution.workers decides"),
        "cache_dir": _Setting(str, None, nullable=True,
                              doc="folder for compiled kernels (relative to the config file's folder); "
                                  "null: NUMBA_CACHE_DIR or numba's default"),
    },
}

# Settings of each data source, beside ``data.source``.
SOURCES: dict[str, dict[str, _Setting]] = {
    "seed_spiral": {"size": _Setting(int, 100, minimum=1, doc="observations per episode (the seed benchmark's size)")},
    "cube": {"points_per_edge": _Setting(int, 4, minimum=2, maximum=100_000, doc="surface grid points along each edge"),
             "side": _Setting(float, 0.1, minimum=0.0, exclusive_min=True, doc="edge length (m)")},
    "sphere": {"n_points": _Setting(int, 64, minimum=1, doc="points on the sphere (Fibonacci lattice)"),
               "radius": _Setting(float, 0.05, minimum=0.0, exclusive_min=True, doc="sphere radius (m)")},
    "random": {"n_points": _Setting(int, 100, minimum=1, doc="observations per episode"),
               "n_features": _Setting(int, 1, minimum=0, maximum=64, doc="feature columns"),
               "seed": _Setting(int, 0, minimum=0, maximum=SEED_MAX, doc="random seed")},
    "dataset": {"path": _Setting(str, None, required=True,
                                 doc="recorded episode file (.npz) or npy-dir folder, relative to the config file's folder")},
    "shapes": {
        "objects": _Setting(list, None, choices=BUILTIN_SHAPE_NAMES, nullable=True,
                            doc="built-in objects to simulate (null: all ten, or none when mesh_dir is set)"),
        "mesh_dir": _Setting(str, None, nullable=True,
                             doc="folder of mesh files (obj, ply, stl, glb; each one object named by its file), "
                                 "relative to the config file's folder"),
        "n_points": _Setting(int, 20000, minimum=100, doc="surface samples per object (the sensor's surface)"),
        "train_steps": _Setting(int, 400, minimum=1, doc="steps of each training episode (14 per object)"),
        "eval_rotations": _Setting(int, 10, minimum=0, doc="evaluation episodes per object (random rotations)"),
        "eval_steps": _Setting(int, 100, minimum=1, doc="steps of each evaluation episode"),
        "noise": _Setting(bool, False, doc="tbp.monty's sensor noise on evaluation steps (2 mm location, "
                                          "2 deg pose, 0.1 log curvature, 0.1 hue, 1% pose_defined flips)"),
        "hue": _Setting(bool, False, doc="sense a hue per object (a distinct colour each) as a feature"),
        "seed": _Setting(int, 0, minimum=0, maximum=SEED_MAX, doc="seed of surface sampling, walks, rotations and noise"),
        "variants": _Setting(int, 0, minimum=0, maximum=1000,
                             doc="perturbed variants of the built-in objects added after the objects (name~round: "
                                 "the built-ins in turn, each axis scaled by 0.7-1.3 and bumped, as the evidence "
                                 "benchmark builds them)"),
        "patch_spacing": _Setting(float, 0.01, minimum=0.0, exclusive_min=True, maximum=0.05,
                                  doc="distance (m) between neighbouring sensor patches (evidence.n_modules > 1)"),
    },
}


# Sensible ceilings of evidence integers (the rest: INT_MAX): neighbours beyond a model's
# nodes add nothing, rotations about an undefined curvature direction beyond one per degree
# add nothing either, and voxels_per_dim ** 3 must fit an int64 voxel key.
_EVIDENCE_MAXIMA = {"max_nneighbors": 1000, "umbilical_num_poses": 360, "voxels_per_dim": 100_000,
                    "n_modules": 16, "min_lms_match": 16}


class _VotingSetting(_Setting):
    """``evidence.voting``: 'all', null or a list of lists of module indices (the count is
    checked against ``evidence.n_modules`` once the section is read)."""

    def allowed(self, full: bool = False) -> str:
        return "'all', null (no voting) or a list of one list of sender module indices per module"

    def check(self, value, where: str):
        if value is None or value == "all":
            return value
        if (isinstance(value, list) and all(isinstance(v, list) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in v) for v in value)):
            return tuple(tuple(v) for v in value)
        raise ConfigError(f"{where}: expected {self.allowed()}, got {describe_value(value)}")


def _evidence_schema() -> dict[str, _Setting]:
    """The ``evidence`` section, generated from ``EvidenceSettings`` (its defaults live there)."""
    from engine.models.evidence.settings import SETTING_DOCS, EvidenceSettings

    out = {}
    for f in dataclasses.fields(EvidenceSettings):
        kind = type(f.default)
        extra = {}
        if f.name == "voting":
            out[f.name] = _VotingSetting(str, f.default, nullable=True, doc=SETTING_DOCS.get(f.name, ""))
            continue
        if f.name == "vote_transform":
            extra["choices"] = ("transpose", "rotate")
        elif f.name == "vote_evidence_threshold":
            extra["minimum"] = -1.0
            extra["maximum"] = 1.0
        elif f.name == "updater":
            extra["choices"] = ("burst", "classic")
        elif f.name == "graph":
            extra["choices"] = ("graph", "grid")
        elif kind is int:
            extra["minimum"] = 1
            extra["maximum"] = _EVIDENCE_MAXIMA.get(f.name)
        elif f.name in ("past_weight", "x_percent_threshold", "object_evidence_threshold"):
            extra["minimum"] = 0.0
        elif kind is float and f.name not in ("deletion_trigger_slope", "burst_trigger_slope"):
            extra["minimum"] = 0.0
            extra["exclusive_min"] = f.name.endswith(("distance", "tolerance", "size")) or f.name in (
                "max_match_distance", "present_weight")
        out[f.name] = _Setting(kind, f.default, doc=SETTING_DOCS.get(f.name, ""), **extra)
    return out


SCHEMA["evidence"] = _evidence_schema()


def _policy_schema() -> dict[str, _Setting]:
    """The ``policy`` section, generated from ``PolicySettings`` (its defaults live there)."""
    from engine.models.evidence.policy_settings import POLICY_DOCS, POLICY_INT_MIN, PolicySettings

    out = {}
    for f in dataclasses.fields(PolicySettings):
        kind = type(f.default)
        extra = {}
        if f.name == "type":
            extra["choices"] = ("walk", "curvature")
        elif kind is int:
            extra["minimum"] = POLICY_INT_MIN.get(f.name, 1)
            extra["maximum"] = 1_000_000
        elif kind is float:
            extra["minimum"] = 0.0
            extra["exclusive_min"] = f.name in ("step_size", "desired_object_distance", "jump_ray_radius")
            extra["maximum"] = 1.0  # fractions, and metres (ten objects' sizes)
        out[f.name] = _Setting(kind, f.default, doc=POLICY_DOCS.get(f.name, ""), **extra)
    return out


SCHEMA["policy"] = _policy_schema()

TOP_LEVEL = {"output_dir": _Setting(str, "results", doc="folder for summary.json and episodes.csv "
                                                         "(relative to the working directory)")}


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    do_train: bool
    do_eval: bool
    n_train_epochs: int
    n_eval_epochs: int
    max_train_steps: int
    max_eval_steps: int
    plot_evidence: bool = False


@dataclass(frozen=True)
class ModelConfig:
    type: str
    confidence_threshold: float | None
    storage: str = "float32"
    k: int = 10
    max_distance: float | None = None
    dedup_distance: float | None = None
    dedup_feature: float | None = None
    path: str | None = None


@dataclass(frozen=True)
class DataConfig:
    source: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionConfig:
    stepwise: bool
    chunk_size: int
    cache_dir: str | None = None
    workers: int = 1
    scheduler: str | None = None


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig
    model: ModelConfig
    data: DataConfig
    execution: ExecutionConfig
    output_dir: str
    source_file: str = "<config>"
    evidence: Any = None  # engine.models.evidence.model.EvidenceSettings when model.type is evidence
    policy: Any = None  # engine.models.evidence.policy_settings.PolicySettings when model.type is evidence

    def to_dict(self) -> dict:
        """The resolved config (defaults filled) as plain data, as written to summary.json."""
        out = {
            "experiment": vars(self.experiment).copy(),
            "model": {k: v for k, v in vars(self.model).items()
                      if self.model.type == "nearest" or k not in NEAREST_ONLY},
            "data": {"source": self.data.source, **self.data.params},
            "execution": vars(self.execution).copy(),
            "output_dir": self.output_dir,
        }
        if self.evidence is not None:
            out["evidence"] = dataclasses.asdict(self.evidence)
        if self.policy is not None:
            out["policy"] = dataclasses.asdict(self.policy)
        return out


def _unknown(key: str, prefix: str, allowed) -> ConfigError:
    """``prefix + key: unknown key``; the key cut to MAX_SHOWN characters."""
    key = str(key)
    hint = difflib.get_close_matches(key, list(allowed), n=1) if len(key) <= MAX_SHOWN else []
    did = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"{prefix}{clip(key)}: unknown key (allowed: {', '.join(sorted(allowed))}){did}")


def _section(raw: dict, name: str, settings: dict[str, _Setting], prefix: str, extra_ok=()) -> dict:
    value = raw.get(name, {})
    where = f"{prefix}{name}"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {describe_value(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {describe_value(key)}")
        if key not in settings and key not in extra_ok:
            raise _unknown(key, f"{where}.", list(settings) + list(extra_ok))
    out = {}
    for key, setting in settings.items():
        if key in value:
            out[key] = setting.check(value[key], f"{where}.{key}")
        elif setting.required:
            raise ConfigError(f"{where}.{key}: required ({setting.allowed()})")
        else:
            out[key] = setting.default
    return out


def validate(raw: Any, source_file: str = "<config>") -> Config:
    """Validate a parsed YAML document and return the resolved ``Config``."""
    prefix = f"{source_file}: "
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source_file}: the config must be a mapping of sections, got {describe_value(raw)}")
    allowed_top = list(SCHEMA) + list(TOP_LEVEL)
    for key in raw:
        if key not in allowed_top:
            raise _unknown(str(key) if isinstance(key, str) else describe_value(key), prefix, allowed_top)
    if "data" not in raw:
        raise ConfigError(f"{prefix}data: required section (data.source: {SCHEMA['data']['source'].allowed()})")
    exp = _section(raw, "experiment", SCHEMA["experiment"], prefix)
    model = _section(raw, "model", SCHEMA["model"], prefix)
    if model["type"] != "nearest":
        given = [k for k in NEAREST_ONLY if isinstance(raw.get("model"), dict) and k in raw["model"]]
        if given:
            raise ConfigError(f"{prefix}model.{given[0]}: only the nearest model reads it "
                              f"(model.type is {model['type']!r})")
    evidence = None
    if model["type"] == "evidence":
        from engine.models.evidence.settings import EvidenceSettings

        evidence = EvidenceSettings(**_section(raw, "evidence", SCHEMA["evidence"], prefix))
        _check_modules(evidence, prefix)
    elif "evidence" in raw:
        raise ConfigError(f"{prefix}evidence: only the evidence model reads it (model.type is {model['type']!r})")
    policy = None
    if model["type"] == "evidence":
        from engine.models.evidence.policy_settings import PolicySettings

        policy = PolicySettings(**_section(raw, "policy", SCHEMA["policy"], prefix))
    elif "policy" in raw:
        raise ConfigError(f"{prefix}policy: only the evidence model reads it (model.type is {model['type']!r})")
    execution = _section(raw, "execution", SCHEMA["execution"], prefix)
    if execution["scheduler"] is not None and execution["workers"] > 1:
        raise ConfigError(f"{prefix}execution.scheduler: set together with execution.workers = "
                          f"{execution['workers']}: the scheduler's workers evaluate; leave execution.workers at 1 "
                          "(or set execution.scheduler: null for a local cluster)")
    data_raw = raw.get("data")
    if not isinstance(data_raw, dict):
        raise ConfigError(f"{prefix}data: expected a mapping of settings, got {describe_value(data_raw)}")
    source = SCHEMA["data"]["source"].check(data_raw.get("source"), f"{prefix}data.source")
    params = _section(raw, "data", SOURCES[source], prefix, extra_ok=("source",))
    params.pop("source", None)
    if execution["cache_dir"] is not None:
        execution["cache_dir"] = str(_resolve_relative(execution["cache_dir"], source_file))
    if model["path"] is not None:
        model["path"] = str(_resolve_relative(model["path"], source_file))
    if model["type"] == "evidence" and source not in EVIDENCE_SOURCES:
        raise ConfigError(f"{prefix}data.source: the evidence model needs pose vectors and curvatures: "
                          f"expected one of {', '.join(repr(s) for s in EVIDENCE_SOURCES)}, got {source!r}")
    if source == "shapes" and model["type"] != "evidence":
        raise ConfigError(f"{prefix}data.source: 'shapes' feeds the evidence model only (model.type is {model['type']!r})")
    if source == "shapes":
        _check_object_size(evidence, prefix)
    if source == "shapes" and params["mesh_dir"] is not None:
        params["mesh_dir"] = str(_resolve_relative(params["mesh_dir"], source_file))
        if not Path(params["mesh_dir"]).is_dir():
            raise ConfigError(f"{prefix}data.mesh_dir: folder not found: {params['mesh_dir']}")
    if policy is not None and policy.in_loop and evidence is not None and evidence.n_modules > 1:
        key = "policy.type" if policy.type != "walk" else "policy.hypothesis_testing"
        raise ConfigError(f"{prefix}{key}: a policy in the loop moves one sensor; it does not drive several "
                          f"patches yet (evidence.n_modules is {evidence.n_modules}): use policy.type: walk "
                          "without hypothesis_testing, or one module")
    if source == "dataset" and policy is not None and policy.in_loop:
        key = "policy.type" if policy.type != "walk" else "policy.hypothesis_testing"
        raise ConfigError(f"{prefix}{key}: a recorded dataset holds no surface to move over; the policy needs "
                          "data.source: shapes (or policy.type: walk with hypothesis_testing: false)")
    if source == "dataset":
        params["path"] = str(_resolve_relative(params["path"], source_file))
        data_path = Path(params["path"])
        if not data_path.exists():
            raise ConfigError(f"{prefix}data.path: file not found: {params['path']} "
                              "(a dataset .npz file or npy-dir folder)")
        if not (data_path.is_file() or data_path.is_dir()):
            raise ConfigError(f"{prefix}data.path: {params['path']} is not a regular file or a folder "
                              "(a dataset .npz file or npy-dir folder)")
    top = {key: setting.check(raw[key], f"{prefix}{key}") if key in raw else setting.default
           for key, setting in TOP_LEVEL.items()}
    return Config(
        experiment=ExperimentConfig(**exp),
        model=ModelConfig(**model),
        data=DataConfig(source=source, params=params),
        execution=ExecutionConfig(**execution),
        output_dir=top["output_dir"],
        source_file=source_file,
        evidence=evidence,
        policy=policy,
    )


#: Largest side of every simulated object (built-ins and meshes are scaled to it), metres;
#: engine.data.shapes.SIZE (not imported: reading a config does not import trimesh).
OBJECT_SIZE = 0.1


def _check_modules(s, prefix: str) -> None:
    """``evidence.voting`` and ``min_lms_match`` against ``evidence.n_modules``."""
    from engine.models.evidence.settings import check_voting

    problem = check_voting(s.voting, s.n_modules, f"{prefix}evidence.voting")
    if problem:
        raise ConfigError(problem)
    if s.min_lms_match > s.n_modules:
        raise ConfigError(f"{prefix}evidence.min_lms_match: {s.min_lms_match} modules cannot match when there are "
                          f"{s.n_modules} (evidence.n_modules); expected at most {s.n_modules}")


def _check_object_size(s, prefix: str) -> None:
    """The evidence model must be able to hold a simulated object (OBJECT_SIZE on its
    largest side): a grid model is placed around the first sensed point, so it needs a side
    of twice the object's (else the updates of episodes that start near one end fall
    outside and are skipped: the object is never learned), and voxels (or graph node
    spacing) under half the object's size (else the object is a handful of nodes)."""
    if s is None:
        return
    if s.graph == "grid":
        if s.max_graph_size < 2 * OBJECT_SIZE:
            raise ConfigError(f"{prefix}evidence.max_graph_size: a grid of {s.max_graph_size:g} m cannot hold the "
                              f"objects, which are {OBJECT_SIZE:g} m on their largest side (built-ins and meshes "
                              f"are scaled to that) from wherever the first step lands: use at least "
                              f"{2 * OBJECT_SIZE:g}")
        voxel = s.max_graph_size / s.voxels_per_dim
        if voxel > OBJECT_SIZE / 2:
            raise ConfigError(f"{prefix}evidence.voxels_per_dim: {s.voxels_per_dim} voxels over "
                              f"{s.max_graph_size:g} m are {voxel:.3g} m wide, more than half the objects' "
                              f"{OBJECT_SIZE:g} m: each object would be a few nodes; use at least "
                              f"{math.ceil(2 * s.max_graph_size / OBJECT_SIZE)}")
    elif s.graph_distance > OBJECT_SIZE / 2:
        raise ConfigError(f"{prefix}evidence.graph_distance: nodes {s.graph_distance:g} m apart on objects "
                          f"of {OBJECT_SIZE:g} m would be a few nodes per object: use at most {OBJECT_SIZE / 2:g}")


def _resolve_relative(path: str, source_file: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or source_file.startswith("<"):
        return p
    return Path(source_file).resolve().parent / p


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses documents nested deeper than ``MAX_DEPTH`` (its
    composer recurses once per level) or holding more than ``MAX_DOCUMENT_NODES`` values;
    :func:`parse_yaml` also counts what aliases expand to."""

    MAX_DEPTH = 50

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > self.MAX_DEPTH:
                raise _DocumentTooLarge(f"nested more than {self.MAX_DEPTH} levels deep")
            if self._nodes > MAX_DOCUMENT_NODES:
                raise _DocumentTooLarge(f"more than {MAX_DOCUMENT_NODES:,} values")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _DocumentTooLarge(Exception):
    pass


def _expanded_size(node, limit: int) -> int:
    """Values in the document rooted at ``node`` with every alias expanded (an alias shares
    its anchor's node, so ``&a [1, 2]`` used 3 times counts 3 times), stopping past ``limit``.
    Shared nodes are measured once (memo), so a "billion laughs" document costs its node
    count, not its expansion."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise _DocumentTooLarge("an alias refers to itself (a recursive value)")
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        active.discard(key)
        memo[key] = total
        return total

    return size(node)


def parse_yaml(text: str, where: str) -> Any:
    """Parse one YAML document, bounded: at most ``MAX_DOCUMENT_BYTES`` of text and
    ``MAX_DOCUMENT_NODES`` values once aliases are expanded, at most 50 levels deep. Any
    problem is a ConfigError starting with ``where``."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters; a config may hold at most "
                          f"{MAX_DOCUMENT_BYTES:,}")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_DOCUMENT_NODES) > MAX_DOCUMENT_NODES:
            raise _DocumentTooLarge(f"more than {MAX_DOCUMENT_NODES:,} values once its aliases are expanded")
        return loader.construct_document(node)
    except _DocumentTooLarge as exc:
        raise ConfigError(f"{where}: the document is too large: {exc} (a config may hold at most "
                          f"{MAX_DOCUMENT_NODES:,} values, {_BoundedLoader.MAX_DEPTH} levels deep)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: malformed YAML{at}: {clip(problem, 200)}") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of over 4300 digits
        raise ConfigError(f"{where}: malformed YAML: {clip(exc, 200)}") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``key.path=value`` into its key path and its YAML-parsed value."""
    shown = clip(text)
    if "=" not in text:
        raise ConfigError(f"--set {shown}: expected key.path=value, e.g. --set model.confidence_threshold=0.7")
    key, _, value_text = text.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"--set {shown}: empty key in the key path")
    value = parse_yaml(value_text, f"--set {clip(key, 60)}") if value_text.strip() else None
    return path, value


def apply_overrides(raw: Any, overrides: list[str]) -> Any:
    """Apply ``--set`` overrides to a parsed YAML document (returns a new document)."""
    import copy

    doc = copy.deepcopy(raw) if raw is not None else {}
    for text in overrides or []:
        path, value = parse_override(text)
        node = doc
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict):
                raise ConfigError(f"--set {clip(text)}: {clip('.'.join(path[:i]))} is not a section")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {clip(text)}: {clip('.'.join(path[:-1]))} is not a section")
        node[path[-1]] = value
    return doc


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (bounded, see :func:`parse_yaml`); a missing or unreadable file or a
    syntax error is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        what = "is not a regular file" if p.exists() else "config file not found"
        raise ConfigError(f"{path}: {what}")
    try:
        with p.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ConfigError(f"{path}: the file is larger than {MAX_DOCUMENT_BYTES:,} bytes, the most a "
                              "config may hold")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({clip(exc, 200)})") from None
    return parse_yaml(text, str(path))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override, validate: the resolved ``Config`` of a YAML file."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, str(path))


def from_dict(raw: dict, overrides: list[str] | None = None) -> Config:
    """Validate a config given as a Python mapping (for tests, benchmarks and user code)."""
    return validate(apply_overrides(raw, overrides or []), "<config>")


def key_paths() -> list[str]:
    """Every config key as a dotted path (``evidence.max_nneighbors``, ``data.path``,
    ``output_dir``): what ``--set`` and a sweep may set."""
    keys = [f"{section}.{key}" for section, settings in SCHEMA.items() for key in settings]
    keys += [f"data.{key}" for settings in SOURCES.values() for key in settings]
    keys += list(TOP_LEVEL)
    return list(dict.fromkeys(keys))


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, allowed, default, meaning) for every setting: the README's config reference."""
    rows = []
    for section, settings in SCHEMA.items():
        for key, s in settings.items():
            rows.append((f"{section}.{key}", s.allowed(), "required" if s.required else repr(s.default), s.doc))
    for source, settings in SOURCES.items():
        for key, s in settings.items():
            rows.append((f"data.{key} ({source})", s.allowed(), "required" if s.required else repr(s.default), s.doc))
    for key, s in TOP_LEVEL.items():
        rows.append((key, s.allowed(), repr(s.default), s.doc))
    return rows
