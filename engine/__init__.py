"""A Numba-compiled sensorimotor learning engine: the Monty core loop as fused kernels.

The orchestrator (this package) loads a YAML config, builds the observations,
runs the experiment lifecycle (train epochs, then evaluation epochs, episode by
episode) and writes results. The hot paths are the kernels of the sibling
package ``kernels``.
"""

__version__ = "0.1.0"
