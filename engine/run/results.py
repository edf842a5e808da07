"""Run results: the summary table, ``summary.json`` and ``episodes.csv``.

Files are written to a temporary name in the output folder and renamed into
place, so an interrupted run never leaves a half-written result file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from engine import __version__
from engine.models.similarity import EpisodeRecord, Experiment, RunResult

EPISODE_COLUMNS = ("mode", "epoch", "episode", "object", "steps", "stored", "confidence", "reason")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def summary(experiment: Experiment, result: RunResult, records: list[EpisodeRecord]) -> dict:
    """The run's summary as plain data (the content of summary.json)."""
    cfg = experiment.config
    evals = [r for r in records if r.mode == "eval"]
    trains = [r for r in records if r.mode == "train"]
    return {
        "engine_version": __version__,
        "experiment": cfg.experiment.name,
        "model": cfg.model.type,
        "data_source": cfg.data.source,
        "path": result.path,
        "n_train_episodes": len(trains),
        "n_eval_episodes": len(evals),
        "train_steps": sum(r.steps for r in trains),
        "eval_steps": sum(r.steps for r in evals),
        "stored_observations": result.n_stored,
        "bytes_per_observation": result.bytes_per_observation,
        "final_confidence": result.final_confidence,
        "mean_eval_confidence": (sum(r.confidence for r in evals) / len(evals)) if evals else None,
        "eval_done": sum(r.reason == "done" for r in evals),
        "reasons": {"train": dict(Counter(r.reason for r in trains)), "eval": dict(Counter(r.reason for r in evals))},
        "run_s": result.run_s,
        "kernel_calls": result.kernel_calls,
        "config": cfg.to_dict(),
    }


def episodes_csv(records: list[EpisodeRecord]) -> str:
    """episodes.csv: one row per episode, columns ``EPISODE_COLUMNS``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EPISODE_COLUMNS)
    for r in records:
        w.writerow([r.mode, r.epoch, r.episode, r.object, r.steps, r.stored, f"{r.confidence:.9g}", r.reason])
    return buf.getvalue()


def write_results(out_dir: str | Path, summary_data: dict, records: list[EpisodeRecord]) -> tuple[Path, Path]:
    """Write summary.json and episodes.csv into ``out_dir`` (each atomically)."""
    out_dir = Path(out_dir)
    s_path, e_path = out_dir / "summary.json", out_dir / "episodes.csv"
    atomic_write_text(e_path, episodes_csv(records))
    atomic_write_text(s_path, json.dumps(summary_data, indent=2) + "\n")
    return s_path, e_path


def format_table(records: list[EpisodeRecord], summary_data: dict, max_rows: int = 40) -> str:
    """The summary table printed after a run (long runs show the first and last rows)."""
    head = f"{'mode':<5} {'epoch':>5} {'ep':>4} {'object':<12} {'steps':>7} {'stored':>9} {'confidence':>10}  ended"
    lines = [head, "-" * len(head)]
    shown = records if len(records) <= max_rows else records[: max_rows // 2] + [None] + records[-max_rows // 2:]
    for r in shown:
        if r is None:
            lines.append(f"... {len(records) - max_rows} more episodes ...")
            continue
        conf = f"{r.confidence:10.6f}" if r.mode == "eval" else f"{'-':>10}"
        lines.append(f"{r.mode:<5} {r.epoch:>5} {r.episode:>4} {r.object[:12]:<12} {r.steps:>7} {r.stored:>9} {conf}  "
                     f"{r.reason.replace('_', ' ')}")
    s = summary_data
    fc = "-" if s["final_confidence"] is None else f"{s['final_confidence']:.6f}"
    lines.append("")
    lines.append(f"{s['experiment']}: {s['n_train_episodes']} training / {s['n_eval_episodes']} evaluation episodes, "
                 f"{s['stored_observations']} stored observations ({s['bytes_per_observation']} B each), "
                 f"final confidence {fc}, {s['eval_done']} done early; "
                 f"run {s['run_s'] * 1e3:.2f} ms ({s['path']}, {s['kernel_calls']} kernel calls)")
    return "\n".join(lines)
