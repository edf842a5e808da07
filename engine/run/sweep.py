"""Sweeps: ``python -m engine sweep SWEEP.yaml [--out DIR] [--workers N | --scheduler ADDRESS]``.

A sweep file names a base config and the points to run, each a set of overrides of it::

    base: shapes_10_noise.yaml          # relative to the sweep file's folder
    set:                                # optional: overrides of every point
      data.eval_rotations: 2
    grid:                               # every combination (or list: one mapping per point)
      evidence.max_nneighbors: [5, 10]
      evidence.x_percent_threshold: [10, 20]
    output_dir: results/my_sweep        # optional; --out overrides; default results/sweeps/<file stem>

Each point is a run into its own result folder ``DIR/<point>`` (named from its overrides:
:func:`point_name`), written as one unit like any run's (``engine.run.results``), plus
``point.json`` (the point's overrides, resolved config and its digest) committed with it.
Points whose training settings are equal (``engine.run.registry.training_settings``: the
config less the settings evaluation may change) share one training: it is saved once to
``DIR/models/<type>-<digest>.npz`` and every such point evaluates that saved model. With
``--workers N`` (or ``--scheduler``) one Dask cluster evaluates every point.
``DIR/sweep.csv`` (written atomically after each point) has a row per completed point: the
point's folder, the value of every key the sweep varies, the model file, and the summary's
accuracy, accuracy_incl_mlh, mean_rotation_error_deg, mean_steps (the evidence model's;
``eval_steps / n_eval_episodes`` for the similarity models), mean_eval_confidence, step_s
(``matching_step_s``, or ``eval_s / eval_steps``) and eval_s.

Running a sweep again skips every point whose folder holds a complete result (no pending
commit) whose ``point.json`` digest is the point's digest now (so an interrupted sweep
resumes, and a changed point runs again), and trains only models that are not in
``DIR/models`` yet. A bad sweep file is one line naming the file and key, exit 2, before
anything runs.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, UserError

log = logging.getLogger(__name__)

#: the keys a sweep file may hold
SWEEP_KEYS = ("base", "set", "grid", "list", "output_dir")
#: the most points one sweep may have
MAX_POINTS = 10_000
#: keys a sweep sets itself (per point or from the command line), so no sweep file may
RESERVED_KEYS = ("output_dir", "execution.workers", "execution.scheduler")
POINT_FILE = "point.json"
SWEEP_CSV = "sweep.csv"
MODELS_DIR = "models"
#: sweep.csv's columns after ``point`` and the varied keys
RESULT_COLUMNS = ("model", "n_eval_episodes", "accuracy", "accuracy_incl_mlh", "mean_rotation_error_deg",
                  "mean_steps", "mean_eval_confidence", "step_s", "eval_s")
#: sweep.csv columns that measure time
TIMING_COLUMNS = ("step_s", "eval_s")
#: longest point folder name (bytes; a file name may have 255)
MAX_NAME = 120
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass
class Point:
    """One point of a sweep: its overrides (dotted key -> value, in the sweep's order), its
    folder name, its resolved config, the digest ``point.json`` keeps, and its training
    settings' digest (None: the point trains nothing or cannot share training)."""

    index: int
    overrides: dict
    name: str
    cfg: Any
    digest: str
    train_key: str | None


@dataclass
class Sweep:
    path: Path
    base: Path
    keys: list
    points: list
    output_dir: str | None


# --------------------------------------------------------------------------- reading


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _check_key(key, where: str) -> str:
    from engine.config import MAX_SHOWN, clip, key_paths

    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: keys must be config keys like evidence.max_nneighbors, got {key!r}")
    known = key_paths()
    if key not in known:
        hint = difflib.get_close_matches(key, known, n=1) if len(key) <= MAX_SHOWN else []
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{where}.{clip(key)}: unknown config key (keys are dotted paths like "
                          f"evidence.max_nneighbors or data.path){did}")
    if key in RESERVED_KEYS:
        raise ConfigError(f"{where}.{key}: a sweep sets it itself (each point's folder; --workers or --scheduler "
                          "for the whole sweep)")
    return key


def _mapping(value, where: str, what: str) -> dict:
    from engine.config import describe_value

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected {what}, got {describe_value(value)}")
    return value


def _set_path(doc: dict, key: str, value, where: str) -> None:
    import copy

    node = doc
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[:i + 1])} is not a section in the base config")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _show_value(value) -> str:
    """A value as text: YAML's spelling of scalars (true, null), JSON for lists and mappings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def point_name(overrides: dict) -> str:
    """A point's folder name: ``key=value`` per override joined by ``__`` (``base`` for no
    overrides), from the characters ``A-Za-z0-9._=+-`` only. Where a value needs others (or
    the name would be longer than :data:`MAX_NAME`), they become ``_`` and 8 hex digits of the
    overrides' digest are appended, so names stay distinct; a point's name depends on its own
    overrides only (stable when points are added)."""
    if not overrides:
        return "base"
    text = "__".join(f"{k}={_show_value(v)}" for k, v in overrides.items())
    safe = _SAFE.sub("_", text)
    if safe != text or len(safe) > MAX_NAME or safe.startswith("."):
        safe = safe[:MAX_NAME - 9].lstrip(".") + "-" + _digest(overrides)[:8]
    return safe


def _grid_points(grid: dict, where: str) -> list:
    import itertools

    from engine.config import describe_value

    if not grid:
        raise ConfigError(f"{where}: empty: give at least one key with a list of values")
    keys, values = [], []
    for key, vals in grid.items():
        _check_key(key, where)
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.{key}: expected a non-empty list of values, got {describe_value(vals)}")
        shown = [_show_value(v) for v in vals]
        dup = next((v for i, v in enumerate(shown) if v in shown[:i]), None)
        if dup is not None:
            raise ConfigError(f"{where}.{key}: the value {dup} appears twice")
        keys.append(key)
        values.append(vals)
    n = math.prod(len(v) for v in values)
    if n > MAX_POINTS:
        raise ConfigError(f"{where}: {n:,} points; a sweep may have at most {MAX_POINTS:,}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _list_points(items, where: str) -> list:
    from engine.config import describe_value

    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: expected a non-empty list of mappings (key: value, one mapping per point), "
                          f"got {describe_value(items)}")
    if len(items) > MAX_POINTS:
        raise ConfigError(f"{where}: {len(items):,} points; a sweep may have at most {MAX_POINTS:,}")
    points, seen = [], {}
    for i, item in enumerate(items):
        item = {} if item is None else item
        _mapping(item, f"{where}[{i}]", "a mapping of config keys to values")
        for key in item:
            _check_key(key, f"{where}[{i}]")
        digest = _digest({k: item[k] for k in sorted(item)})
        if digest in seen:
            raise ConfigError(f"{where}[{i}]: repeats point {seen[digest]}")
        seen[digest] = i
        points.append(dict(item))
    return points


def read_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file and every point's config (one-line ConfigError naming the
    file otherwise); nothing runs."""
    from engine.config import describe_value, clip, read_yaml, validate

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: " + ("is not a regular file" if path.exists() else "sweep file not found"))
    raw = read_yaml(path)
    raw = _mapping({} if raw is None else raw, where, "a mapping with base and grid (or list)")
    for key in raw:
        if key not in SWEEP_KEYS:
            hint = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: {clip(str(key))}: unknown key (allowed: {', '.join(SWEEP_KEYS)}){did}")
    if "base" not in raw:
        raise ConfigError(f"{where}: base: required (the config file the points override, relative to the "
                          "sweep file's folder)")
    base = raw["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: base: expected a config file name, got {describe_value(base)}")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.resolve().parent / base_path
    if ("grid" in raw) == ("list" in raw):
        raise ConfigError(f"{where}: expected one of grid (every combination of values per key) or list "
                          "(one mapping of overrides per point)"
                          + (", not both" if "grid" in raw else ""))
    common = _mapping({} if raw.get("set") is None else raw["set"], f"{where}: set",
                      "a mapping of config keys to values")
    for key in common:
        _check_key(key, f"{where}: set")
    out_dir = raw.get("output_dir")
    if out_dir is not None and (not isinstance(out_dir, str) or not out_dir):
        raise ConfigError(f"{where}: output_dir: expected a folder name, got {describe_value(out_dir)}")
    if "grid" in raw:
        grid = _mapping(raw["grid"], f"{where}: grid", "a mapping of config keys to lists of values")
        overrides = _grid_points(grid, f"{where}: grid")
    else:
        overrides = _list_points(raw["list"], f"{where}: list")

    try:
        base_doc = read_yaml(base_path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base: {exc}") from None
    if base_doc is None:
        base_doc = {}
    if not isinstance(base_doc, dict):
        raise ConfigError(f"{where}: base: {base_path}: the config must be a mapping of sections, got "
                          f"{describe_value(base_doc)}")
    import copy

    doc = copy.deepcopy(base_doc)
    for key, value in common.items():
        _set_path(doc, key, value, f"{where}: set.{key}")
    try:
        validate(copy.deepcopy(doc), str(base_path))
    except ConfigError as exc:
        raise ConfigError(f"{where}: base (with set): {exc}") from None

    keys = list(dict.fromkeys(k for o in overrides for k in o))
    points, names = [], {}
    for i, o in enumerate(overrides):
        name = point_name(o)
        if name in names:  # cannot happen with distinct overrides; never overwrite a point
            raise ConfigError(f"{where}: points {names[name]} and {i} would share the folder {name}")
        names[name] = i
        pdoc = copy.deepcopy(doc)
        for key, value in o.items():
            _set_path(pdoc, key, value, f"{where}: point {name}")
        try:
            cfg = validate(pdoc, str(base_path))
        except ConfigError as exc:
            raise ConfigError(f"{where}: point {name}: {exc}") from None
        points.append(Point(i, o, name, cfg, point_digest(cfg), _train_key(cfg)))
    return Sweep(path, base_path, keys, points, out_dir)


def _without_execution(cfg) -> dict:
    d = cfg.to_dict()
    d.pop("output_dir", None)
    d["execution"] = {k: v for k, v in d["execution"].items() if k not in ("workers", "scheduler")}
    return d


def point_digest(cfg) -> str:
    """``sha256:`` over a point's resolved config, less where it runs (workers, scheduler)
    and writes (output_dir): results with the same digest are the same results."""
    return "sha256:" + _digest(_without_execution(cfg))


def _train_key(cfg) -> str | None:
    """The digest of the point's training settings, or None when it trains nothing here (it
    evaluates a saved model already, has no training, or its model type cannot be saved)."""
    from engine.run import registry

    if cfg.model.path is not None or not cfg.experiment.do_train:
        return None
    settings = registry.training_settings(cfg)
    return None if settings is None else _digest(settings)[:16]


# --------------------------------------------------------------------------- running


def complete_point(folder: Path, digest: str) -> dict | None:
    """The summary of the complete result in ``folder`` when its ``point.json`` has
    ``digest``, else None (missing, partial, pending commit, another config)."""
    from engine.run import results

    try:
        if (folder / results.JOURNAL_NAME).exists() or not (folder / results.EPISODES_NAME).is_file():
            return None
        point = json.loads((folder / POINT_FILE).read_text())
        if not isinstance(point, dict) or point.get("digest") != digest:
            return None
        summary = json.loads((folder / results.SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _model_ok(path: Path, model_type: str) -> bool:
    from engine.run import model_file

    if not path.is_file():
        return False
    try:
        return model_file.read_model(path).model_type == model_type
    except UserError as exc:
        log.warning("%s: %s: training it again", path, exc)
        return False


def _train(cfg, path: Path, progress: bool) -> float:
    """Train ``cfg``'s model and save it to ``path``; seconds taken."""
    import gc

    from engine import memory
    from engine.run import registry

    t0 = time.perf_counter()
    memory.check(cfg)
    ex = registry.for_config(cfg).build(cfg, progress=progress)
    ex.warmup()
    ex.train()
    registry.save_model(cfg, ex, path)
    del ex
    gc.collect()
    return time.perf_counter() - t0


def _run_point(point: Point, cfg, folder: Path, cluster, progress: bool, state: dict) -> dict:
    """Run one point into ``folder`` (one unit: summary.json, episodes.csv, extras,
    point.json); its summary."""
    import gc

    from engine import memory
    from engine.files import write_new_file
    from engine.run import registry, results, workers

    memory.check(cfg)
    with results.ResultFolder(folder) as held:
        state["results"] = held
        for line in held.recovered:
            log.warning("%s: %s", folder, line)
        if cfg.model.path is not None:
            ex = registry.load_experiment(cfg, progress=progress)
        else:
            ex = registry.for_config(cfg).build(cfg, progress=progress)
        ex.warmup()
        use = cluster if (cluster is not None and cfg.model.path is not None) else None
        result, execution = workers.run(ex, cfg, cluster=use)
        report = ex.report(result)
        report.summary.update(execution)
        point_json = {"point": point.name, "overrides": point.overrides, "digest": point.digest,
                      "model": cfg.model.path, "config": cfg.to_dict()}
        try:
            ex.write_extras(held.stage, result)
            write_new_file(held.stage / POINT_FILE, (json.dumps(point_json, indent=2) + "\n").encode())
        except OSError as exc:
            raise UserError(f"cannot write results to {folder}: {exc.strerror or exc}; "
                            "earlier results there are unchanged") from None
        held.commit(report)
        state.pop("results", None)
    del ex
    gc.collect()
    return report.summary


def _key_value(cfg, key: str):
    node = cfg.to_dict()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


def result_row(summary: dict) -> dict:
    """sweep.csv's result columns of one point's summary (``model`` aside)."""
    n = summary.get("n_eval_episodes")
    mean_steps = summary.get("mean_steps")
    eval_steps = summary.get("eval_steps")
    if mean_steps is None and eval_steps is not None and n:
        mean_steps = eval_steps / n
    step_s = summary.get("matching_step_s")
    eval_s = summary.get("eval_s")
    if step_s is None and eval_s is not None and eval_steps:
        step_s = eval_s / eval_steps
    return {"n_eval_episodes": n, "accuracy": summary.get("accuracy"),
            "accuracy_incl_mlh": summary.get("accuracy_incl_mlh"),
            "mean_rotation_error_deg": summary.get("mean_rotation_error_deg"), "mean_steps": mean_steps,
            "mean_eval_confidence": summary.get("mean_eval_confidence"), "step_s": step_s, "eval_s": eval_s}


def sweep_csv(sweep: Sweep, done: dict, out: Path) -> str:
    """sweep.csv's text: a row per point in ``done`` (index -> summary), in sweep order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["point", *sweep.keys, *RESULT_COLUMNS])
    for p in sweep.points:
        if p.index not in done:
            continue
        summary = done[p.index]
        model = summary.get("model_path")
        if model is not None:
            try:
                model = os.path.relpath(model, out)
            except ValueError:
                pass
        row = result_row(summary)
        row["model"] = model
        w.writerow([p.name, *(_show_value(_key_value(p.cfg, k)) for k in sweep.keys),
                    *(row[c] if c == "model" and row[c] is not None else _number(row[c]) for c in RESULT_COLUMNS)])
    return buf.getvalue()


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def run_sweep(path, *, out=None, workers=None, scheduler=None, quiet: bool = False, state: dict | None = None,
              say=None) -> str:
    """``python -m engine sweep``: see the module docstring. ``say(line)``, when given, gets a
    line per trained model and per point (the CLI prints them); returns the totals' line."""
    say = say if say is not None and not quiet else (lambda line: None)
    from engine.files import atomic_write_text
    from engine.run import results
    from engine.run import workers as dask_workers

    state = {} if state is None else state
    if workers is not None and not 1 <= workers <= 1024:
        raise UserError(f"--workers: expected an integer 1..1024, got {workers}")
    sweep = read_sweep(path)
    first = sweep.points[0].cfg
    n_workers = workers if workers is not None else (1 if scheduler is not None else first.execution.workers)
    address = scheduler if scheduler is not None else (None if workers is not None else first.execution.scheduler)
    if n_workers > 1 or address is not None:
        dask_workers.check_dask(f"{path}: " + (f"--scheduler {address}" if address else f"--workers {n_workers}"))
    out_dir = Path(out if out is not None else (sweep.output_dir or f"results/sweeps/{sweep.path.stem}"))
    from engine import memory

    for p in sweep.points:  # every point's memory estimate before anything runs
        memory.check(p.cfg)
    from engine.run.runtime import use_config_cache

    use_config_cache(first)
    progress = sys.stderr.isatty() and not quiet
    done: dict = {}
    counts = {"run": 0, "skipped": 0, "trained": 0, "reused": 0}
    models_dir = out_dir / MODELS_DIR
    checked_models: set = set()
    cluster = None
    with results.ResultFolder(out_dir):  # one sweep per folder (its lock)
        state["sweep"] = str(out_dir)
        csv_path = out_dir / SWEEP_CSV
        try:
            for k, p in enumerate(sweep.points, 1):
                folder = out_dir / p.name
                summary = complete_point(folder, p.digest)
                if summary is not None:
                    counts["skipped"] += 1
                    how = "complete, skipped"
                else:
                    cfg = p.cfg
                    if p.train_key is not None:
                        model = models_dir / f"{cfg.model.type}-{p.train_key}.npz"
                        if p.train_key not in checked_models and not _model_ok(model, cfg.model.type):
                            models_dir.mkdir(exist_ok=True)
                            log.info("training %s for %s", model, p.name)
                            seconds = _train(cfg, model, progress)
                            counts["trained"] += 1
                            say(f"trained {model} in {seconds:.2f} s")
                        elif p.train_key not in checked_models:
                            counts["reused"] += 1
                        checked_models.add(p.train_key)
                        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                                 path=str(model.absolute())))
                    if cfg.model.path is not None and (n_workers > 1 or address is not None):
                        cfg = dataclasses.replace(cfg, execution=dataclasses.replace(
                            cfg.execution, workers=1 if address else n_workers, scheduler=address))
                        if cluster is None:
                            cluster = dask_workers.Cluster(n_workers, address, str(sweep.path)).__enter__()
                    summary = _run_point(p, cfg, folder, cluster, progress, state)
                    counts["run"] += 1
                    how = "ran"
                done[p.index] = summary
                atomic_write_text(csv_path, sweep_csv(sweep, done, out_dir))
                results.pause_point("sweep_point")
                r = result_row(summary)
                say(f"[{k}/{len(sweep.points)}] {p.name}: {how}; accuracy {_fmt(r['accuracy'], '.3f')}, "
                    f"mean steps {_fmt(r['mean_steps'], '.1f')}, step {_fmt(r['step_s'] and r['step_s'] * 1e3, '.3f')} ms")
        finally:
            if cluster is not None:
                cluster.close()
    return (f"{csv_path}: {len(sweep.points)} points ({counts['run']} run, {counts['skipped']} complete already); "
            f"{counts['trained']} models trained, {counts['reused']} reused from {models_dir}")
