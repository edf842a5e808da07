"""The config loading the evidence profiling scripts share: CONFIG with ``--set`` overrides,
checked to be an evidence config, errors printed for the command line (no traceback)."""

import sys

from engine.config import load_config
from engine.errors import UserError


def load_evidence_config(path, overrides):
    """The validated config, or None after printing why not (the caller exits with 2)."""
    try:
        cfg = load_config(path, overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if cfg.model.type != "evidence":
        print(f"error: {path}: not an evidence config (model.type {cfg.model.type!r})", file=sys.stderr)
        return None
    return cfg
