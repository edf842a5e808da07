"""The evidence suite's ``policy`` rows: each policy (the replayed walk, the curvature-informed
surface policy, the curvature policy with hypothesis-testing jumps) on the bundled
``configs/shapes_10_noise.yaml`` and ``configs/similar_10.yaml`` (the same objects, rotations,
noise and step budget for every policy; one training per config, shared).

Per row: ``accuracy``, ``accuracy_incl_mlh``, ``mean_steps``, ``matching_step_s`` (kernel time
per matching step, the policy included), ``policy_step_s`` (of that, moving the sensor and
making its observation, measured inside the kernel) and ``mean_jumps``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

log = logging.getLogger(__name__)

POLICY_CONFIGS = ("shapes_10_noise.yaml", "similar_10.yaml")
POLICIES = (("walk", False), ("curvature", False), ("curvature", True))


def policy_label(kind: str, jumps: bool) -> str:
    return kind + ("+jumps" if jumps else "")


def run_policy_rows(configs=POLICY_CONFIGS, policies=POLICIES, data_overrides: dict | None = None,
                    suite: str = "evidence") -> list[dict]:
    """One row per (config, policy): ``case`` "policy", ``implementation`` "engine-POLICY"."""
    from engine.config import read_yaml, validate
    from engine.models.evidence.model import EvidenceExperiment
    from engine.run import registry

    root = Path(__file__).resolve().parents[2] / "configs"
    rows = []
    for name in configs:
        path = Path(name) if Path(name).is_file() else root / name
        raw = read_yaml(path)
        raw.pop("output_dir", None)
        if data_overrides:
            raw["data"] = {**raw["data"], **data_overrides}
        base = None
        for kind, jumps in policies:
            doc = copy.deepcopy(raw)
            doc["policy"] = {**(doc.get("policy") or {}), "type": kind, "hypothesis_testing": jumps}
            cfg = validate(doc, str(path))
            if base is None:
                base = registry.for_config(cfg).build(cfg)
                ex = base
            else:  # the same data and surfaces; training is the same for every policy
                ex = EvidenceExperiment(cfg, base.dataset, data_s=base.data_s, data_compile_s=base.data_compile_s)
                ex._surfaces = base._surfaces  # None: built when first needed
            result = ex.run()
            s = ex.report(result).summary
            rows.append({
                "suite": suite, "case": "policy", "implementation": f"engine-{policy_label(kind, jumps)}",
                "config": path.name, "policy": policy_label(kind, jumps), "n_objects": s["n_objects"],
                "n_eval_episodes": s["n_eval_episodes"], "eval_steps": cfg.data.params["eval_steps"],
                "accuracy": s["accuracy"], "accuracy_incl_mlh": s["accuracy_incl_mlh"], "mean_steps": s["mean_steps"],
                "matching_step_s": s["matching_step_s"], "policy_step_s": s["policy_step_s"],
                "mean_jumps": s["mean_jumps"], "mean_jumps_on_object": s["mean_jumps_on_object"],
                "train_s": s["train_s"],
            })
            log.info("policy rows: %s %s: accuracy %.3f, mean steps %.1f", path.name, policy_label(kind, jumps),
                     s["accuracy"] or 0.0, s["mean_steps"] or 0.0)
    return rows


def format_policy(rows) -> list[str]:
    """The lines the table gives the ``policy`` rows (none without such rows)."""
    rows = [r for r in rows if r.get("case") == "policy"]
    if not rows:
        return []
    head = (f"{'config':<22} {'policy':<16} {'accuracy':>8} {'incl MLH':>8} {'steps':>6} {'ms/step':>8} "
            f"{'policy ms':>9} {'share':>6} {'jumps':>6}")
    lines = ["", "Policies (the sensor in the loop; the same objects, rotations and step budget per config):", head,
             "-" * len(head)]
    for r in rows:
        share = (r["policy_step_s"] / r["matching_step_s"]) if r.get("policy_step_s") and r["matching_step_s"] else 0
        lines.append(f"{r['config']:<22} {r['policy']:<16} {r['accuracy']:>8.3f} {r['accuracy_incl_mlh']:>8.3f} "
                     f"{r['mean_steps']:>6.1f} {r['matching_step_s'] * 1e3:>8.3f} "
                     f"{(r['policy_step_s'] or 0) * 1e3:>9.4f} {share:>6.1%} {r['mean_jumps']:>6.2f}")
    return lines
