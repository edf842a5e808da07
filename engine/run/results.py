"""Run results of any model type: ``summary.json`` and ``episodes.csv`` from one report shape.

Files are written to a temporary name in the output folder and renamed into
place, so an interrupted run never leaves a half-written result file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from engine.files import atomic_write_text


@dataclass
class RunReport:
    """One result shape for every model type: what a run prints and writes.

    ``summary``: the content of ``summary.json`` (plain data; each model documents its
    keys); ``columns``: the header of ``episodes.csv``; ``rows``: one list of values per
    episode (already formatted where the model wants a fixed format); ``table``: the
    text printed after the run.
    """

    summary: dict
    columns: tuple[str, ...]
    rows: list[list]
    table: str


def episodes_csv(columns, rows) -> str:
    """episodes.csv's text: the header ``columns``, then one line per row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def write_report(out_dir: str | Path, report: RunReport) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``episodes.csv`` into ``out_dir`` (each atomically);
    returns their paths."""
    out_dir = Path(out_dir)
    s_path, e_path = out_dir / "summary.json", out_dir / "episodes.csv"
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no folder
    atomic_write_text(e_path, episodes_csv(report.columns, report.rows))
    atomic_write_text(s_path, json.dumps(report.summary, indent=2) + "\n")
    return s_path, e_path


def shown_rows(rows: list, max_rows: int) -> list:
    """The rows a summary table shows: all, or the first and last ``max_rows // 2`` with
    None standing for the ones left out."""
    return rows if len(rows) <= max_rows else rows[: max_rows // 2] + [None] + rows[-max_rows // 2:]
