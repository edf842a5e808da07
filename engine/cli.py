"""The command line: ``python -m engine run | validate | bench``.

User errors (a bad config, a bad data file, a bad flag) print one message that
says what and where, and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from engine import __version__
from engine.errors import UserError

log = logging.getLogger("engine")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-vv for debug), and the traceback of an internal error")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    p = argparse.ArgumentParser(prog="python -m engine", parents=[common],
                                description="Numba-compiled sensorimotor learning engine (the Monty core loop).")
    p.add_argument("--version", action="version", version=f"engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="run an experiment from a YAML config")
    r.add_argument("config", help="YAML config file")
    r.add_argument("--out", metavar="DIR", help="output folder (overrides output_dir in the config)")
    r.add_argument("--set", metavar="KEY.PATH=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value, e.g. --set model.confidence_threshold=0.7 (repeatable)")
    r.add_argument("--stepwise", action="store_true",
                   help="use the stepwise path: a Python loop with one kernel call per step")
    r.add_argument("--model", metavar="MODEL",
                   help="evaluate this saved model (python -m engine train --save) instead of training "
                        "(overrides model.path in the config)")
    rw = r.add_mutually_exclusive_group()
    rw.add_argument("--workers", type=int, metavar="N",
                    help="evaluate the saved model over N worker processes (overrides execution.workers; "
                         "needs --model and the dask extra)")
    rw.add_argument("--scheduler", metavar="ADDRESS",
                    help="evaluate the saved model on the workers of the running Dask scheduler at ADDRESS, e.g. "
                         "tcp://10.0.0.5:8786 (overrides execution.scheduler; needs --model and the dask extra)")

    sw = sub.add_parser("sweep", parents=[common],
                        help="run a grid (or list) of config overrides, one result folder per point, training "
                             "shared between points, and summarize them in sweep.csv")
    sw.add_argument("sweep", metavar="SWEEP", help="sweep file (YAML: base, grid or list, optional set)")
    sw.add_argument("--out", metavar="DIR", help="sweep folder (overrides output_dir in the sweep file)")
    sww = sw.add_mutually_exclusive_group()
    sww.add_argument("--workers", type=int, metavar="N",
                     help="evaluate every point over N worker processes of one local Dask cluster (the dask extra)")
    sww.add_argument("--scheduler", metavar="ADDRESS",
                     help="evaluate every point on the workers of the running Dask scheduler at ADDRESS")

    t = sub.add_parser("train", parents=[common], help="train a model from a YAML config and save it (no evaluation)")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--save", metavar="MODEL", required=True, help="model file to write (.npz; replaced atomically)")
    t.add_argument("--set", metavar="KEY.PATH=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value (repeatable)")

    v = sub.add_parser("validate", parents=[common], help="check a config (and its data) without running")
    v.add_argument("config", help="YAML config file")
    v.add_argument("--out", metavar="DIR", help="output folder to check (overrides output_dir in the config)")
    v.add_argument("--set", metavar="KEY.PATH=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value before checking it, as for run (repeatable)")

    pr = sub.add_parser("profile", parents=[common],
                        help="profile a run: compile time, per-kernel times, hot orchestrator lines")
    pr.add_argument("config", help="YAML config file (similarity or nearest model)")
    pr.add_argument("--out", metavar="DIR", help="report folder (default: OUTPUT_DIR/profile)")
    pr.add_argument("--set", metavar="KEY.PATH=VALUE", action="append", default=[], dest="overrides",
                    help="override a config value, as for run (repeatable)")
    pr.add_argument("--top", type=int, default=10, metavar="N", help="rows shown per table (default 10)")

    w = sub.add_parser("warmup", parents=[common],
                       help="compile every kernel signature the configs use (default: the bundled configs)")
    w.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML configs (default: configs/*.yaml)")
    w.add_argument("--cache-dir", metavar="DIR", help="kernel cache folder (default: NUMBA_CACHE_DIR or numba's)")

    i = sub.add_parser("info", parents=[common], help="versions, threading, kernel cache state, CPU features")
    i.add_argument("--cache-dir", metavar="DIR", help="kernel cache folder to inspect")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")

    from engine.data import make_dataset

    make_dataset.add_cli(sub, parents=[common])

    b = sub.add_parser("bench", parents=[common], help="benchmark the engine against baselines in one run")
    b.add_argument("--suite", default="seed", choices=["seed", "startup", "kdtree", "scale", "evidence"],
                   help="seed: the seed's benchmark table; startup: cold/warm start-to-result; "
                        "kdtree: our KD-tree against scipy and pykdtree; scale: per-step cost from 1e3 "
                        "to 1e7 stored, linear scan vs KD-tree, float32 and float16; evidence: the evidence model's "
                        "time per matching step and training time for 1 to 100 objects, both updaters "
                        "(default: seed)")
    b.add_argument("--json", metavar="PATH", help="also write the measurements as JSON to PATH")
    b.add_argument("--repeats", type=int, default=5, metavar="N", help="timed runs per row and implementation")
    b.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="seed suite: time each short run right after the previous implementation's run, without "
                        "an untimed run of its own first (cold caches)")
    b.add_argument("--rust", action="store_true",
                   help="seed suite: also build (cargo) and time the seed's Rust reference rebuilt from its "
                        "specification (profiling/rust_seed; run from a checkout of the repository)")
    return p


def _setup_logging(args) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


BUNDLED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _apply_cache(cfg) -> None:
    from engine.run.runtime import use_config_cache

    use_config_cache(cfg)


def default_warmup_configs() -> list:
    """One default config per registered model type (the evidence model's on simulated
    shapes, which compiles the sensor's kernels too): what ``warmup`` compiles where no
    configs are bundled, e.g. in a container that installed the package without the checkout."""
    from engine.config import validate
    from engine.run import registry

    source = {"evidence": "shapes"}
    return [validate({"model": {"type": name}, "data": {"source": source.get(name, "cube")}},
                     f"<default {name} config>") for name in registry.MODEL_TYPES]


def cmd_warmup(args) -> int:
    from engine.run import runtime
    from engine.config import load_config

    paths = [Path(p) for p in args.configs] or sorted(BUNDLED_CONFIGS.glob("*.yaml"))
    if paths:
        configs = [load_config(p) for p in paths]
    else:  # an installed package (no checkout, no bundled configs): every model type's defaults
        configs = default_warmup_configs()
        log.info("no configs bundled in %s: warming up every model type's default config", BUNDLED_CONFIGS)
    from engine import memory

    for cfg in configs:  # warm-up builds a similarity config's observations
        memory.check(cfg)
    if args.cache_dir:
        try:
            runtime.configure_cache(args.cache_dir)
        except OSError as exc:
            raise UserError(f"--cache-dir {args.cache_dir}: {exc}") from None
    else:
        for cfg in configs:
            _apply_cache(cfg)
    if runtime.READ_ONLY_CACHE:
        raise UserError(f"kernel cache {runtime.READ_ONLY_CACHE} is read-only: warmup cannot save kernels there "
                        "(choose a writable folder with --cache-dir or NUMBA_CACHE_DIR)")
    rows = runtime.warmup_configs(configs, progress=lambda r: log.info("warmed up %s in %.2f s", r["config"], r["seconds"]))
    data = runtime.info()
    for r in rows:
        print(f"{r['seconds']:7.2f} s  {r['config']}")
    print(f"kernel cache: {data['cache_dir'] or 'numba default'}; "
          f"{data['kernels_cached']} of {data['kernels_total']} kernels cached")
    return 0


def cmd_info(args) -> int:
    import json

    from engine.run import runtime

    try:
        runtime.configure_cache(args.cache_dir or None)
    except OSError as exc:
        raise UserError(f"--cache-dir {args.cache_dir}: {exc}") from None
    data = runtime.info()
    print(json.dumps(data, indent=2) if args.json else runtime.format_info(data))
    return 0


def cmd_run(args) -> int:
    from engine.config import load_config
    from engine import memory
    from engine.run import registry, results, runtime

    overrides = list(args.overrides) + (["execution.stepwise=true"] if args.stepwise else [])
    if args.model:  # a path relative to the working directory; quoted (JSON is YAML) so it stays a string
        overrides.append(f"model.path={json.dumps(str(Path(args.model).absolute()))}")
    if args.workers is not None:  # and not the config's scheduler
        overrides += [f"execution.workers={args.workers}", "execution.scheduler=null"]
    if args.scheduler is not None:  # the scheduler's workers, not the config's local ones
        overrides += [f"execution.scheduler={json.dumps(args.scheduler)}", "execution.workers=1"]
    cfg = load_config(args.config, overrides)
    memory.check(cfg)
    from engine.run import workers

    workers.check_workers(cfg)
    _apply_cache(cfg)
    out_dir = Path(args.out if args.out else cfg.output_dir)
    model = registry.for_config(cfg)
    if cfg.model.path is not None:
        log.info("evaluating the saved model %s (no training)", cfg.model.path)
    # the folder is checked and held (lock) before anything runs: see engine/run/results.py
    with results.ResultFolder(out_dir) as held:
        _RUN_STATE["results"] = held
        for line in held.recovered:
            log.warning("%s: %s", out_dir, line)
        first_run = not args.quiet and not runtime.is_cached(model.entry_kernel(cfg))
        if first_run:
            print("compiling kernels (first run only: later runs load them from the kernel cache)...",
                  file=sys.stderr, flush=True)
        results.pause_point("simulation")
        progress = sys.stderr.isatty() and not args.quiet
        if cfg.model.path is not None:
            ex = registry.load_experiment(cfg, progress=progress)
        else:
            ex = model.build(cfg, progress=progress)
        results.pause_point("compile")
        compile_s = ex.warmup()
        if first_run:  # the sensor simulation's kernels (evidence model) compile while its data is built
            total = compile_s + (getattr(ex, "data_compile_s", None) or 0.0)
            print(f"compiled kernels in {total:.1f} s", file=sys.stderr, flush=True)
        log.info("compiled (or loaded from cache) in %.3f s; running %s", compile_s, cfg.experiment.name)
        _test_phase_hooks(ex, results.pause_point)
        result, execution = workers.run(ex, cfg)
        report = ex.report(result)
        report.summary.update(execution)
        try:
            ex.write_extras(held.stage, result)
        except OSError as exc:
            raise UserError(f"cannot write results to {out_dir}: {exc.strerror or exc}; "
                            "earlier results there are unchanged") from None
        s_path, e_path = held.commit(report)
    print(report.table)
    print(f"compile/cache load {report.summary['compile_s']:.3f} s; results: {s_path}, {e_path}")
    return 0


def cmd_train(args) -> int:
    from engine.config import load_config
    from engine import memory
    from engine.run import registry

    cfg = load_config(args.config, args.overrides)
    memory.check(cfg)
    if cfg.model.path is not None:
        raise UserError(f"{args.config}: model.path is set ({cfg.model.path}): train learns a new model "
                        "(use run to evaluate a saved one, or --set model.path=null)")
    if not cfg.experiment.do_train:
        raise UserError(f"{args.config}: experiment.do_train is false: there is nothing to train")
    model = registry.for_config(cfg)
    if not registry.saves_models(model):
        raise UserError(f"{args.config}: the {cfg.model.type} model cannot be saved")
    save = Path(args.save)
    if save.is_dir():
        raise UserError(f"--save {save}: is a directory; a model is saved as one file")
    if not save.absolute().parent.is_dir():
        raise UserError(f"--save {save}: folder {save.absolute().parent} does not exist")
    _apply_cache(cfg)
    ex = model.build(cfg, progress=sys.stderr.isatty() and not args.quiet)
    compile_s = ex.warmup()
    train_s = ex.train()
    digest = registry.save_model(cfg, ex, save)
    print(f"trained the {cfg.model.type} model in {train_s:.2f} s (compile/cache load {compile_s:.2f} s); "
          f"saved {save} ({digest})")
    return 0


def cmd_sweep(args) -> int:
    from engine.run import sweep

    totals = sweep.run_sweep(args.sweep, out=args.out, workers=args.workers, scheduler=args.scheduler,
                             quiet=args.quiet, state=_RUN_STATE, say=lambda line: print(line, flush=True))
    print(totals)
    return 0


def _test_phase_hooks(ex, pause) -> None:
    """Test-only (ENGINE_TEST_PAUSE_AT, see engine.run.results.pause_point): hooks that
    pause at the start of training and of the first evaluation epoch. Registered only
    when a test asks for one of these phases (an epoch hook changes how the fused path
    crosses into compiled code), after the warm-up so it never pauses there."""
    import os

    phase = os.environ.get("ENGINE_TEST_PAUSE_AT")
    if phase == "training":
        ex.add_hook("before_experiment", lambda ev: pause("training"))
    elif phase == "evaluation":
        ex.add_hook("before_epoch", lambda ev: pause("evaluation") if ev.mode == "eval" and ev.epoch == 0 else None)


def cmd_validate(args) -> int:
    from engine.config import load_config
    from engine import memory
    from engine.run import registry, results

    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out if args.out else cfg.output_dir)
    results.check_output_folder(out_dir)
    est = memory.check(cfg)
    log.info("estimated peak memory %s (%s)", memory.format_bytes(est.total), est.describe())
    if cfg.model.path is not None:
        from engine.run import model_file

        saved = model_file.read_model(cfg.model.path)
        model_file.check_model_type(saved, cfg.model.type, args.config)
    print(f"{args.config}: ok ({cfg.model.type} model, {registry.for_config(cfg).describe_data(cfg)})")
    return 0


def cmd_profile(args) -> int:
    from engine.config import load_config
    from engine.models import profile
    from engine import memory
    from engine.run import registry

    cfg = load_config(args.config, args.overrides)
    memory.check(cfg)
    model = registry.for_config(cfg)
    if cfg.model.path is not None:
        raise UserError(f"{args.config}: profile measures a run that trains; model.path is set "
                        "(--set model.path=null)")
    if not hasattr(model, "profile_run"):
        raise UserError(f"{args.config}: profile covers the similarity and nearest models; for the "
                        f"{cfg.model.type} model see summary.json's matching_step_s and profiling/README.md")
    _apply_cache(cfg)
    out_dir = Path(args.out) if args.out else Path(cfg.output_dir) / "profile"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"report folder {out_dir} exists and is not a folder")
    report = model.profile_run(cfg, out_dir, top=max(args.top, 1))
    print(profile.format_report(report, top=max(args.top, 1)))
    print(f"\nreports: {out_dir / profile.JSON_NAME}, {report['lprof']}")
    return 0


def cmd_bench(args) -> int:
    if not 1 <= args.repeats <= 1000:
        raise UserError(f"--repeats: expected an integer 1..1000, got {args.repeats}")
    if args.suite != "seed" and (args.rust or not args.warm_up):
        flag = "--rust" if args.rust else "--no-warm-up"
        raise UserError(f"{flag}: only for --suite seed (got --suite {args.suite})")
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            raise UserError(f"--json {args.json}: folder {parent} does not exist")
        if os.path.lexists(args.json) and not os.path.isfile(args.json):
            # the atomic write would replace a folder, a device (/dev/null) or a FIFO
            raise UserError(f"--json {args.json}: exists and is not a regular file")
    from engine.bench import seed as bench

    if args.suite == "scale":
        from engine.bench import scale as bench_scale

        rows = bench_scale.run_scale_suite(repeats=min(args.repeats, 3), json_path=args.json)
        print(bench_scale.format_scale(rows, bench_scale.seed_float16_accuracy()))
        return 0
    if args.suite == "kdtree":
        from engine.bench import kdtree as bench_kdtree

        rows = bench_kdtree.run_kdtree_suite(repeats=args.repeats, json_path=args.json)
        print(bench_kdtree.format_kdtree(rows))
        return 0
    if args.suite == "evidence":
        from engine.bench import evidence as bench_evidence

        rows = bench_evidence.run_evidence_suite(repeats=args.repeats, json_path=args.json)
        print(bench_evidence.format_evidence(rows))
        return 0
    if args.suite == "startup":
        from engine.bench import startup as bench_startup

        rows = bench_startup.run_startup(repeats=args.repeats)
        if args.json:
            bench.write_json(rows, args.json)
        print(bench_startup.format_startup(rows))
        return 0
    rust_binary = None
    if args.rust:
        from engine.bench import rust_reference

        rust_binary = rust_reference.build()
    wait_policy = bench.keep_workers_spinning()
    rows = bench.run_suite(args.suite, repeats=args.repeats, json_path=args.json, wait_policy=wait_policy,
                           warm_up=args.warm_up, rust_binary=rust_binary)
    print(bench.format_table(rows))
    return 0


def _cmd_make_dataset(args) -> int:
    from engine.data import make_dataset

    print(make_dataset.run_from_args(args))
    return 0


#: what the running ``run`` command holds (its ResultFolder), for the message an
#: interrupted run prints
_RUN_STATE: dict = {}


class Terminated(BaseException):
    """Raised by the SIGTERM / SIGHUP handler ``main`` installs, so that clean-up
    (``finally`` blocks, the result folder's) runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def _interrupted_note(command: str) -> str:
    """The truth about the result files after a signal."""
    if command == "sweep" and _RUN_STATE.get("sweep") is not None:
        return (f"the points completed so far keep their results in {_RUN_STATE['sweep']} (sweep.csv lists "
                "them); run the sweep again to resume")
    held = _RUN_STATE.get("results")
    if command != "run" or held is None:
        return "no result files were written"
    if held.committed:
        return f"the results were written to {held.out} before the signal arrived"
    return f"no result files were written; earlier results in {held.out}, if any, are unchanged"


def _caused_by(exc: BaseException, kind: type) -> bool:
    """Whether ``exc`` is, or was caused by, a ``kind``: Ctrl-C, or an allocation that
    failed, while a compiled kernel runs surfaces as numba's ``SystemError(... returned a
    result with an exception set)`` with the KeyboardInterrupt or MemoryError as its cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _internal_error(exc: BaseException, verbose: bool) -> int:
    """A bug, not bad input: one line saying so and how to report it; the traceback only
    with ``-v``."""
    import traceback

    from engine.config import clip

    if verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if verbose else "; run again with -v for the traceback"
    print(f"internal error: {type(exc).__name__}: {clip(str(exc), 200)} (a bug in engine {__version__}, not in "
          f"your input: please report it to the engine's issue tracker with the command, the config and "
          f"the command's output with -v{hint})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    handlers = {"run": cmd_run, "train": cmd_train, "sweep": cmd_sweep, "validate": cmd_validate, "profile": cmd_profile, "warmup": cmd_warmup,
                "info": cmd_info, "bench": cmd_bench, "make-dataset": _cmd_make_dataset}
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:  # nohup's SIG_IGN stays
                installed[sig] = signal.signal(sig, _raise_terminated)
    _RUN_STATE.clear()
    try:
        return handlers[args.command](args)
    except UserError as exc:  # engine.data.dataset.DatasetError is one too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_interrupted_note(args.command)}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"terminated ({signal.Signals(exc.signum).name}): {_interrupted_note(args.command)}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of ours
        sys.stderr.close()
        return 0
    except MemoryError:
        return _out_of_memory()
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if _caused_by(exc, KeyboardInterrupt):
            print(f"interrupted: {_interrupted_note(args.command)}", file=sys.stderr)
            return 130
        if _caused_by(exc, MemoryError):
            return _out_of_memory()
        return _internal_error(exc, args.verbose > 0)
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        _RUN_STATE.clear()


def _out_of_memory() -> int:
    # past the memory check (engine.memory): its estimate was low, or other processes took
    # the memory meanwhile
    print("error: out of memory: this run needs more memory than is available (the estimate that "
          "`validate -v` prints was too low, or other processes took the memory): make the data or "
          "the model smaller", file=sys.stderr)
    return 2
