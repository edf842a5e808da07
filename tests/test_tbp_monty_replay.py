"""The pure-Python parts of profiling/tbp_monty_step.py's replay of several modules through
tbp.monty (the replay itself needs tbp.monty and runs in its own venv; these do not)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import voting as kvote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "profiling"))
import tbp_monty_step as tms  # noqa: E402


def _as_matrix(lists, n):
    """tbp.monty's lm_to_lm_vote_matrix (row r: the senders of LM r) as receiver-by-sender 0/1."""
    out = np.zeros((n, n), np.uint8)
    for r, senders in enumerate(lists or []):
        out[r, senders] = 1
    return out


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_all_to_all_vote_matrix_is_our_connectivity(n):
    m = tms.vote_matrix("all", n)
    assert len(m) == n and all(r not in senders for r, senders in enumerate(m))
    assert np.array_equal(_as_matrix(m, n), kvote.connectivity("all", n))


def test_vote_matrix_none_one_module_and_explicit_lists():
    assert tms.vote_matrix(None, 5) is None
    assert not kvote.connectivity(None, 5).any()
    assert tms.vote_matrix("all", 1) is None  # one LM: tbp.monty gets no vote matrix
    spec = [[1], [0, 2], [], [0, 1, 2]]
    m = tms.vote_matrix(spec, 4)
    assert m == spec and m is not spec
    assert np.array_equal(_as_matrix(m, 4), kvote.connectivity(spec, 4))


def test_channel_names_follow_tbp_montys_sensor_ids():
    assert tms.channel_names(1) == ["patch"]
    assert tms.channel_names(5) == ["patch_0", "patch_1", "patch_2", "patch_3", "patch_4"]


def _combine(states, detected, evidence=None, mlh=None, target="mug", k=3):
    n = len(states)
    return tms.combine_lm_results(states, detected, evidence or [0.0] * n, mlh or ["?"] * n, target, k)


def test_enough_matches_name_the_most_named_object_and_its_first_module():
    states = ["time_out", "match", "match", "match", "match"]
    detected = [None, "cup", "mug", "mug", "cup"]
    # 2 cup, 2 mug: the tie goes to the object of the lowest matched module (1: cup)
    assert _combine(states, detected) == ("confused", "cup", 2, 1)
    detected = [None, "cup", "mug", "mug", "mug"]
    assert _combine(states, detected) == ("correct", "mug", 3, 2)


def test_too_few_matches_is_a_time_out_with_the_strongest_module():
    states = ["match", "match", None, "no_match", "time_out"]
    out = _combine(states, ["mug", "mug", None, None, None], evidence=[1.0, 4.0, 4.0, -1.0, 2.0],
                   mlh=["a", "b", "c", "d", "e"])
    assert out == ("time_out", "b", 0, 1)  # modules 1 and 2 tie at 4.0: the lower one


def test_every_module_without_a_match_is_no_match():
    assert _combine(["no_match"] * 5, [None] * 5) == ("no_match", None, 0, None)
    # one module still searching: a time-out, not no_match
    assert _combine(["no_match"] * 4 + [None], [None] * 5, mlh=list("abcde"))[0] == "time_out"


def test_one_module_needs_one_match():
    assert _combine(["match"], ["mug"], k=1) == ("correct", "mug", 1, 0)
