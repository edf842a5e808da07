"""Settings of the evidence model: one dataclass, its defaults, and what each setting means.

Kept apart from ``engine.models.evidence.model`` so that reading a config does not import numba.
Defaults are tbp.monty's 10-object benchmark values (docs/evidence-matching.md, section 8),
except where a comment says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EvidenceSettings", "SETTING_DOCS"]


@dataclass(frozen=True)
class EvidenceSettings:
    """Parameters of the evidence model, with tbp.monty's 10-object benchmark defaults.

    See the README's config reference (section ``evidence``) for each one.
    """

    updater: str = "burst"
    max_match_distance: float = 0.01
    max_nneighbors: int = 5
    x_percent_threshold: float = 20.0
    object_evidence_threshold: float = 1.0
    path_similarity_threshold: float = 0.1
    pose_similarity_threshold: float = 0.35
    required_symmetry_evidence: int = 5
    min_eval_steps: int = 20
    past_weight: float = 1.0
    present_weight: float = 1.0
    feature_evidence_increment: float = 1.0
    normal_weight: float = 1.0
    curvature_direction_weight: float = 1.0
    curvature_weight: float = 1.0
    curvature_tolerance: float = 1.0
    hue_weight: float = 2.0
    hue_tolerance: float = 0.1
    feature_weight: float = 1.0
    feature_tolerance: float = 1.0
    sampling_multiplier: float = 0.4
    deletion_trigger_slope: float = 0.5
    sampling_burst_duration: int = 5
    burst_trigger_slope: float = 1.0
    min_age: int = 5
    umbilical_num_poses: int = 8
    graph: str = "grid"
    graph_distance: float = 0.01
    graph_normal_angle: float = float(np.pi / 8)
    graph_curvature_threshold: float = 1.0
    graph_hue_threshold: float = 0.1
    max_graph_size: float = 0.3
    voxels_per_dim: int = 100
    max_nodes: int = 2000
    # several learning modules (one per sensor patch) and their votes (section 6)
    n_modules: int = 1
    voting: object = "all"
    vote_weight: float = 1.0
    vote_evidence_threshold: float = 0.8
    min_lms_match: int = 1
    vote_transform: str = "transpose"



SETTING_DOCS = {
    "updater": "burst: tbp.monty's burst sampling with slope-based deletion (its default); "
               "classic: every node x candidate rotation from the first step on",
    "max_match_distance": "match radius (m): a node farther than this (surface-aware distance) gives -1",
    "max_nneighbors": "nearest nodes compared per hypothesis and step (5 clean, 10 with noise in tbp.monty)",
    "x_percent_threshold": "objects (and poses) within this percent of the best evidence stay possible",
    "object_evidence_threshold": "the best evidence must exceed this before a pose can be decided",
    "path_similarity_threshold": "pose uniqueness: possible locations within this (m) of their mean",
    "pose_similarity_threshold": "pose uniqueness: possible rotations within this (rad) of the most likely",
    "required_symmetry_evidence": "checks with a stable pose set before the object counts as symmetric",
    "min_eval_steps": "no match is declared before this many matching steps (a no_match can end earlier)",
    "past_weight": "evidence update: E <- past_weight E + present_weight dE",
    "present_weight": "see past_weight",
    "feature_evidence_increment": "scale of the feature evidence of a node (0 to this)",
    "normal_weight": "weight of the surface-normal agreement",
    "curvature_direction_weight": "weight of the curvature-direction agreement (when the sensed pose is defined)",
    "curvature_weight": "feature weight of each log principal curvature",
    "curvature_tolerance": "difference of log curvature at which its feature evidence reaches 0",
    "hue_weight": "feature weight of a `hue` feature column (circular)",
    "hue_tolerance": "hue difference at which its feature evidence reaches 0",
    "feature_weight": "feature weight of any other feature column",
    "feature_tolerance": "difference at which another feature column's evidence reaches 0",
    "sampling_multiplier": "burst: hypotheses sampled per step and object, as a fraction of its nodes",
    "deletion_trigger_slope": "burst: hypotheses older than min_age whose evidence grows slower than this "
                              "per step are deleted",
    "sampling_burst_duration": "burst: steps of sampling after a trigger",
    "burst_trigger_slope": "burst: a new burst starts when no hypothesis grows faster than this per step",
    "min_age": "burst: steps before a hypothesis can be deleted",
    "umbilical_num_poses": "rotations tried about the normal where the curvature directions are undefined",
    "graph": "graph: thinned observations (graph_* thresholds); grid: tbp.monty's voxel grid model "
             "(max_graph_size, voxels_per_dim, max_nodes)",
    "graph_distance": "graph: an observation closer than this (m) to a stored node with similar features "
                      "is not stored",
    "graph_normal_angle": "graph: normals within this angle (rad) count as similar",
    "graph_curvature_threshold": "graph: log curvatures within this count as similar",
    "graph_hue_threshold": "graph: hues within this count as similar",
    "max_graph_size": "grid: side of the model's grid (m)",
    "voxels_per_dim": "grid: voxels along each side",
    "max_nodes": "grid: at most this many nodes (the fullest voxels)",
    "n_modules": "learning modules, one per sensor patch (shapes: the patches simulated; a recorded "
                 "dataset must hold this many sensors)",
    "voting": "which modules receive whose votes: 'all' (every other module), null (no voting), or one "
              "list of sender module indices per module (tbp.monty's lm_to_lm_vote_matrix)",
    "vote_weight": "a received vote adds vote_weight times its confidence to a hypothesis' evidence",
    "vote_evidence_threshold": "a hypothesis votes when its evidence, scaled to [-1, 1] over the module, "
                               "is above this",
    "min_lms_match": "the episode ends with a match when at least this many modules matched "
                     "(tbp.monty's 5-module benchmarks: 3)",
    "vote_transform": "transpose: a vote moves by R^T dp into the receiver's position, as tbp.monty's code "
                      "does; rotate: by R dp, as its path integration moves hypotheses",
}


def check_voting(value, n_modules: int, where: str) -> str | None:
    """What is wrong with an ``evidence.voting`` value for ``n_modules`` modules (None: fine)."""
    if value is None or value == "all":
        return None
    if isinstance(value, tuple):  # (the config's tuples shown as the lists they were written as)
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    if not isinstance(value, (list, tuple)) or len(value) != n_modules:
        return (f"{where}: expected 'all', null or a list of {n_modules} lists (one per module, its senders), "
                f"got {value!r}"[:300])
    for r, senders in enumerate(value):
        if not isinstance(senders, (list, tuple)):
            return f"{where}[{r}]: expected a list of module indices, got {senders!r}"[:300]
        for i in senders:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_modules:
                return f"{where}[{r}]: module index {i!r} is not in 0..{n_modules - 1}"[:300]
    return None
