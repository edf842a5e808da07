"""Benchmarks and baselines, imported only by ``python -m engine bench`` (and its tests)."""
