"""Where observations come from: the dataset format, synthetic sources, shapes and meshes,
the sensor simulation and ``make-dataset``. Knows no model."""
