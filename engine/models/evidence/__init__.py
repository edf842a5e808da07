"""The evidence model: graph memory, the model and its settings, the run and its results."""
