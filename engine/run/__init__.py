"""The experiment lifecycle around any model: registry, results, runtime facts, profiling."""
