"""kernels.store: the store layout and its constructors."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import naive.store
from kernels import store as kstore
from kernel_helpers import N_FEATURES, random_observations


@pytest.mark.parametrize("n_features, bytes_each", [(0, 12), (1, 16), (3, 24)])
def test_store_layout_and_bytes_per_observation(n_features, bytes_each):
    store = kstore.new_store(n_features, 9)
    assert store.shape == (3 + n_features, 9)
    assert store.dtype == np.float32 and store.flags.c_contiguous
    assert not store.any()
    assert kstore.bytes_per_observation(store) == bytes_each


def test_new_store_rejects_negative_sizes():
    with pytest.raises(ValueError):
        kstore.new_store(-1, 5)
    with pytest.raises(ValueError):
        kstore.new_store(1, -5)


@pytest.mark.parametrize("n_features", N_FEATURES)
@pytest.mark.parametrize("n", [0, 1, 6])
def test_store_from_arrays_round_trips(n_features, n):
    rng = np.random.default_rng(28)
    location, features = random_observations(rng, n, n_features)
    store, n_stored = kstore.store_from_arrays(location, features)
    assert n_stored == n and store.shape == (3 + n_features, n)
    assert store.dtype == np.float32 and store.flags.c_contiguous
    got_location, got_features = naive.store.store_contents(store, n_stored)
    assert_array_equal(got_location, location)
    assert_array_equal(got_features, features)


def test_store_from_arrays_rejects_bad_shapes():
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 3)), np.zeros((5, 1)))
    with pytest.raises(ValueError):
        kstore.store_from_arrays(np.zeros((4, 3)), np.zeros(4))
