"""References for ``kernels.store``: what a store of n observations holds."""

import numpy as np


def store_contents(store, n_stored):
    """Split a kernel store (3 + F, capacity) into ``(location (n, 3), features (n, F))``."""
    store = np.asarray(store)
    return store[:3, :n_stored].T.copy(), store[3:, :n_stored].T.copy()
