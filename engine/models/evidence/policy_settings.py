"""Settings of the sensor's policy (the ``policy`` config section): one dataclass, its
defaults (tbp.monty's ``surface_curvature_informed_goal1`` motor policy and its
``EvidenceGoalGenerator``'s settings in ``evidence_1lm_nn10_dod0025``), what each means.

Kept apart from the kernels so that reading a config does not import numba.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POLICY_DOCS", "PolicySettings"]


@dataclass(frozen=True)
class PolicySettings:
    """How the sensor moves over a simulated object while evaluating."""

    type: str = "walk"
    hypothesis_testing: bool = False
    step_size: float = 0.01
    alpha: float = 0.1
    pc_alpha: float = 0.5
    max_pc_bias_steps: int = 32
    min_general_steps: int = 8
    min_heading_steps: int = 12
    x_percent_scale_factor: float = 0.75
    min_post_goal_success_steps: int = 5
    elapsed_steps_factor: int = 10
    wait_growth_multiplier: int = 2
    desired_object_distance: float = 0.025
    jump_ray_radius: float = 0.002
    reverse_mismatch: bool = False

    @property
    def in_loop(self) -> bool:
        """True when the sensor is simulated inside the episode (anything but today's walk
        replayed from the dataset)."""
        return self.type != "walk" or self.hypothesis_testing


POLICY_DOCS = {
    "type": "walk: the surface walk of the dataset (a random, slowly turning heading); curvature: tbp.monty's "
            "curvature-informed surface policy (follows principal curvature directions, simulated in the episode)",
    "hypothesis_testing": "tbp.monty's goal-state generator: jump the sensor to where the two most likely "
                          "hypotheses differ most (simulated in the episode; shapes data only)",
    "step_size": "length of a policy move (m; the walk's step; tbp.monty's surface agent moves 0.004)",
    "alpha": "curvature: momentum of a step where no curvature direction is followed (0 same heading, 1 random)",
    "pc_alpha": "curvature: weight of the previous direction in the moving average of the followed direction",
    "max_pc_bias_steps": "curvature: steps along the minimal (then maximal) curvature direction before switching",
    "min_general_steps": "curvature: steps without curvature guidance before it is followed again",
    "min_heading_steps": "curvature: steps on a heading before it is checked against revisiting locations",
    "x_percent_scale_factor": "jumps: scale of x_percent_threshold below which one object counts as most likely "
                              "and the jump tests its pose",
    "min_post_goal_success_steps": "jumps: matching steps after a jump before the next can be considered",
    "elapsed_steps_factor": "jumps: without another reason, jump after this many steps (times a growing wait)",
    "wait_growth_multiplier": "jumps: growth of that wait after each such jump",
    "desired_object_distance": "jumps: the jumped sensor looks at the target from 1.5x this distance (m)",
    "jump_ray_radius": "jumps: a surface sample this close to the sensor's line of sight is what it sees (m)",
    "reverse_mismatch": "jumps: when the most likely object's graph lies within the match radius of the second's "
                        "(a part of it), test where the second differs instead, through the second hypothesis "
                        "(tbp.monty's TODO; not in tbp.monty)",
}

#: bounds of the integer settings (at least 1, except min_post_goal_success_steps >= 0)
POLICY_INT_MIN = {"min_post_goal_success_steps": 0, "min_general_steps": 0, "min_heading_steps": 0}
