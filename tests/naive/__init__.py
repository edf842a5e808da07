"""Slow, obviously-correct references of the kernels, one module per kernel module.

Written for clarity, not speed: plain Python loops and NumPy, mostly in float64
(``naive.kdtree`` keeps the kernels' float32 distance arithmetic on purpose: it
must agree with the tree exactly, ties included). Each function is the
definition its kernel must agree with. Nothing here imports ``kernels`` or
``engine``, so a reference can never inherit a mistake of the code it checks
(``tests/test_kernels.py`` holds that rule).
"""
