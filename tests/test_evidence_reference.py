"""Sanity tests of the spec-literal references in ``tests/evidence_reference.py``.

These check the references against hand-computed facts (not against the kernels),
so that the references themselves can be trusted when the kernels are tested.
"""

import math

import numpy as np
import pytest

import evidence_reference as er


def rot_z(deg):
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg):
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 2] = -q[:, 2]
    return q


def random_pose(rng):
    """A right-handed pose matrix: rows n, c1, c2 = n x c1."""
    return random_rotation(rng)


# ----------------------------------------------------------------------------- log_sign


def test_log_sign_values_and_odd_symmetry():
    k = np.array([-100.0, -1.0, 0.0, 1.0, math.e - 1.0, 50.0])
    got = er.log_sign(k)
    expected = [-math.log(101), -math.log(2), 0, math.log(2), 1.0, math.log(51)]
    np.testing.assert_allclose(got, expected)
    np.testing.assert_array_equal(er.log_sign(-k), -got)
    assert er.log_sign(0.0) == 0.0


# ----------------------------------------------------------------------- frames / init


def test_candidate_frames_defined():
    S = random_pose(np.random.default_rng(0))
    F = er.candidate_frames(S, True)
    assert F.shape == (2, 3, 3)
    np.testing.assert_array_equal(F[0], S)
    np.testing.assert_array_equal(F[1][0], S[0])
    np.testing.assert_array_equal(F[1][1:], -S[1:])
    # 180 degree turn about the normal: still a proper rotation
    assert np.linalg.det(F[1]) == pytest.approx(1.0)


def test_candidate_frames_umbilical():
    S = random_pose(np.random.default_rng(1))
    F = er.candidate_frames(S, False, umbilical_num_poses=8)
    assert F.shape == (8, 3, 3)
    np.testing.assert_allclose(F[0], S, atol=1e-12)  # alpha = 0 reproduces S (c2 = n x c1)
    np.testing.assert_allclose(F[4][1:], -S[1:], atol=1e-12)  # alpha = 180 deg
    np.testing.assert_allclose(F[2][1], S[2], atol=1e-12)  # alpha = 90 deg: c1 -> c2
    for f in F:
        np.testing.assert_allclose(f @ f.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(f) == pytest.approx(1.0)
        np.testing.assert_array_equal(f[0], S[0])
    # consecutive frames differ by 45 degrees about the normal
    assert math.degrees(er.rotation_angle(F[0], F[1])) == pytest.approx(45.0)


def test_informed_rotation_maps_sensed_rows_onto_stored_rows():
    rng = np.random.default_rng(2)
    N = 6
    node_pos = rng.normal(size=(N, 3))
    node_pose = np.stack([random_pose(rng) for _ in range(N)])
    S = random_pose(rng)
    nodes = np.array([4, 1, 3])
    frames = er.candidate_frames(S, True)
    loc, rot = er.informed_hypotheses(node_pos, node_pose, nodes, frames)
    assert loc.shape == (6, 3) and rot.shape == (6, 3, 3)
    for ri in range(2):
        for j, n in enumerate(nodes):
            h = ri * len(nodes) + j  # rotation-major
            np.testing.assert_array_equal(loc[h], node_pos[n])
            R = rot[h]
            for row in range(3):
                np.testing.assert_allclose(R @ frames[ri][row], node_pose[n][row], atol=1e-12)
    # frame 0 is S itself: R ŝn = n̂, R ŝc1 = ĉ1
    np.testing.assert_allclose(rot[0] @ S[0], node_pose[4][0], atol=1e-12)
    np.testing.assert_allclose(rot[0] @ S[1], node_pose[4][1], atol=1e-12)


# --------------------------------------------------------------------- feature evidence

TOL = [0.1, 0.2, 0.2, 1.0, 1.0]
W = [2.0, 0.5, 0.5, 1.0, 1.0]
CIRC = [True, False, False, False, False]


def test_feature_evidence_hue_wraparound():
    # single hue column: 0.95 vs 0.02 -> circular distance 0.07 -> (0.1-0.07)/0.1 = 0.3
    phi = er.feature_evidence([[0.95]], [0.02], [0.1], [1.0], [True])
    assert phi[0] == pytest.approx(0.3)
    phi = er.feature_evidence([[0.02]], [0.95], [0.1], [1.0], [True])
    assert phi[0] == pytest.approx(0.3)
    # a non-circular column does not wrap
    phi = er.feature_evidence([[0.95]], [0.02], [0.1], [1.0], [False])
    assert phi[0] == 0.0


def test_feature_evidence_ycb_weights():
    obs = np.array([0.5, 0.5, 0.5, 1.0, -1.0])
    nodes = np.array([
        obs,                                  # perfect -> 1
        [0.55, 0.6, 0.5, 1.5, -1.0],          # hue 0.5, s 0.5, v 1, pc1 0.5, pc2 1
        [0.0, 0.0, 0.0, 5.0, 5.0],            # nothing matches -> 0
    ])
    phi = er.feature_evidence(nodes, obs, TOL, W, CIRC, increment=1.0)
    expected1 = (2 * 0.5 + 0.5 * 0.5 + 0.5 * 1 + 1 * 0.5 + 1 * 1) / 5.0
    np.testing.assert_allclose(phi, [1.0, expected1, 0.0], atol=1e-12)
    phi2 = er.feature_evidence(nodes, obs, TOL, W, CIRC, increment=2.0)
    np.testing.assert_allclose(phi2, 2 * phi)


# ---------------------------------------------------------------------------- burst


def test_burst_nodes_counts():
    phi = np.linspace(0, 1, 2000)
    k, hpn, sel, thr = er.burst_nodes(phi, 2000, True)
    assert (k, hpn) == (400, 2)
    np.testing.assert_array_equal(sel, np.arange(1600, 2000))
    assert thr == phi[1600]
    k, hpn, sel, _ = er.burst_nodes(phi, 2000, False)
    assert (k, hpn) == (100, 8)
    # count = round(0.4*N) reduced to a multiple of h_per_node
    k, hpn, _, _ = er.burst_nodes(np.zeros(13), 13, True)  # round(5.2)=5 -> 4 -> 2 nodes
    assert k == 2
    k, _, _, _ = er.burst_nodes(np.zeros(13), 13, False)  # 5 -> 0
    assert k == 0
    # classic mode: multiplier = h_per_node -> every node
    k, _, sel, _ = er.burst_nodes(np.zeros(7), 7, True, sampling_multiplier=2)
    assert k == 7 and list(sel) == list(range(7))


def test_burst_nodes_ties_are_reported_by_threshold():
    phi = np.array([0.2, 0.9, 0.5, 0.5, 0.5, 0.1, 0.9, 0.0, 0.3, 0.4])
    k, _, sel, thr = er.burst_nodes(phi, 10, True, sampling_multiplier=0.8)  # 8 -> 4 nodes
    assert k == 4 and thr == 0.5
    assert {1, 6} <= set(sel.tolist())
    assert er.is_valid_burst_selection(phi, sel, k)
    assert er.is_valid_burst_selection(phi, [1, 6, 2, 4], k)  # another tie-break
    assert not er.is_valid_burst_selection(phi, [1, 6, 2, 8], k)


# --------------------------------------------------------------- displacement / evidence


def test_displace():
    loc = np.array([[1.0, 2.0, 3.0]])
    rot = rot_z(90)[None]
    out = er.displace(loc, rot, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out, [[1.0, 3.0, 3.0]], atol=1e-12)


# pose with normal +z, c1 +x, c2 = n x c1 = +y
NZ = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _toy_object(rng, N=20):
    node_pos = rng.uniform(-0.05, 0.05, size=(N, 3))
    node_pose = np.stack([random_pose(rng) for _ in range(N)])
    node_pfd = np.ones(N)
    return node_pos, node_pose, node_pfd


def test_evidence_delta_perfect_hypothesis_is_two():
    rng = np.random.default_rng(3)
    node_pos, node_pose, node_pfd = _toy_object(rng)
    phi = np.ones(len(node_pos))
    S = random_pose(rng)
    frames = er.candidate_frames(S, True)
    loc, rot = er.informed_hypotheses(node_pos, node_pose, np.arange(len(node_pos)), frames)
    dE = er.evidence_delta(node_pos, node_pose, node_pfd, phi, loc, rot, S, True, kappa=1.0)
    # both frames align the normal exactly and ĉ1 up to sign -> pose 1, plus phi 1
    np.testing.assert_allclose(dE, 2.0, atol=1e-6)
    # undefined sensed pose: only the normal term (0.5) counts
    dE = er.evidence_delta(node_pos, node_pose, node_pfd, phi, loc, rot, S, False, kappa=1.0)
    np.testing.assert_allclose(dE, 1.5, atol=1e-6)
    # node not pose-fully-defined: curvature term is 0
    dE = er.evidence_delta(node_pos, node_pose, np.zeros(len(node_pos)), phi, loc, rot, S, True,
                           kappa=1.0)
    np.testing.assert_allclose(dE, 1.5, atol=1e-6)


def test_evidence_delta_far_hypothesis_is_minus_one():
    rng = np.random.default_rng(4)
    node_pos, node_pose, node_pfd = _toy_object(rng)
    S = random_pose(rng)
    loc = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.5]])
    rot = np.stack([np.eye(3), rot_x(30)])
    dE = er.evidence_delta(node_pos, node_pose, node_pfd, np.ones(len(node_pos)), loc, rot, S, True,
                           kappa=2.0)
    np.testing.assert_array_equal(dE, [-1.0, -1.0])


def test_evidence_delta_hand_computed_single_node():
    # one node at the origin, normal +z, c1 +x; sensor pose identity
    node_pos = np.zeros((1, 3))
    node_pose = NZ[None]
    S = NZ
    phi = np.array([0.25])
    # tilted hypothesis: rotation 60 deg about x moves the normal by 60 deg, c1 unchanged
    R = rot_x(60)
    dE = er.evidence_delta(node_pos, node_pose, [1.0], phi, np.zeros((1, 3)), R[None], S, True,
                           kappa=0.0)
    e_n = 0.5 - math.sin(math.radians(30))
    assert dE[0] == pytest.approx(e_n + 0.5 + 0.25)
    # 90 deg about z: normal aligned, c1 orthogonal -> e_c = 0.5 - 1
    dE = er.evidence_delta(node_pos, node_pose, [1.0], phi, np.zeros((1, 3)), rot_z(90)[None], S,
                           True, kappa=0.0)
    assert dE[0] == pytest.approx(0.5 - 0.5 + 0.25)
    # 180 deg about z: c1 anti-parallel counts as aligned
    dE = er.evidence_delta(node_pos, node_pose, [1.0], phi, np.zeros((1, 3)), rot_z(180)[None], S,
                           True, kappa=0.0)
    assert dE[0] == pytest.approx(1.25)
    # w_n / w_c weights
    dE = er.evidence_delta(node_pos, node_pose, [1.0], phi, np.zeros((1, 3)), R[None], S, True,
                           kappa=0.0, w_n=2.0, w_c=0.0)
    assert dE[0] == pytest.approx(2 * e_n + 0.25)


def test_evidence_delta_custom_distance_radius():
    # node offset along the (rotated) sensed normal is penalised; tangent offset is not
    node_pose = NZ[None]
    S = NZ
    hyp = np.zeros((1, 3))
    rot = np.eye(3)[None]
    kappa = 1.5  # 1/(|κ|+0.5) = 0.5
    # tangent offset 0.009 -> D = 0.009 < 0.01 -> in radius
    dE = er.evidence_delta([[0.009, 0, 0]], node_pose, [1], [0.0], hyp, rot, S, True, kappa)
    assert dE[0] == pytest.approx(1.0)
    # normal offset 0.007 -> D = 0.007 + 0.0035 = 0.0105 -> out
    dE = er.evidence_delta([[0, 0, 0.007]], node_pose, [1], [0.0], hyp, rot, S, True, kappa)
    assert dE[0] == -1.0
    # normal offset 0.006 -> D = 0.009 -> in
    dE = er.evidence_delta([[0, 0, 0.006]], node_pose, [1], [0.0], hyp, rot, S, True, kappa)
    assert dE[0] == pytest.approx(1.0)
    # flatter surface (κ = 0): 0.006 + 0.012 -> out
    dE = er.evidence_delta([[0, 0, 0.006]], node_pose, [1], [0.0], hyp, rot, S, True, 0.0)
    assert dE[0] == -1.0


def test_evidence_delta_only_k_nearest_count():
    # the good node is the 3rd nearest; with k=2 it is not considered
    node_pos = np.array([[0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0]])
    bad = np.array([[0, 0, -1.0], [-1.0, 0, 0], [0, 1.0, 0]])  # normal flipped -> e_n = -0.5
    node_pose = np.stack([bad, bad, NZ])
    S = NZ
    args = (node_pos, node_pose, np.ones(3), np.zeros(3), np.zeros((1, 3)), np.eye(3)[None], S,
            True, 10.0)
    assert er.evidence_delta(*args, k=3)[0] == pytest.approx(1.0)
    assert er.evidence_delta(*args, k=2)[0] == pytest.approx(-0.5 + 0.5)
    assert er.evidence_delta(*args, k=50)[0] == pytest.approx(1.0)  # K = min(k, N)


def test_evidence_delta_agrees_with_trig_free_identities():
    rng = np.random.default_rng(5)
    node_pos, node_pose, node_pfd = _toy_object(rng, N=30)
    node_pfd[::3] = 0
    phi = rng.uniform(size=30)
    H = 40
    loc = rng.uniform(-0.05, 0.05, size=(H, 3))
    rot = np.stack([random_rotation(rng) for _ in range(H)])
    S = random_pose(rng)
    kappa, mmd, K = 0.7, 0.03, 4
    got = er.evidence_delta(node_pos, node_pose, node_pfd, phi, loc, rot, S, True, kappa,
                            max_match_distance=mmd, k=K)
    # independent vectorised route with the identities of §4.6
    d = np.linalg.norm(loc[:, None, :] - node_pos[None], axis=2)
    nn = np.argsort(d, axis=1, kind="stable")[:, :K]
    q = np.einsum("hij,j->hi", rot, S[0])
    c = np.einsum("hij,j->hi", rot, S[1])
    delta = node_pos[nn] - loc[:, None, :]
    D = np.linalg.norm(delta, axis=2) + np.abs(np.einsum("hkj,hj->hk", delta, q)) / (kappa + 0.5)
    g = np.clip(np.einsum("hkj,hj->hk", node_pose[nn, 0], q), -1, 1)
    g2 = np.clip(np.einsum("hkj,hj->hk", node_pose[nn, 1], c), -1, 1)
    pose = (0.5 - np.sqrt((1 - g) / 2)) + (0.5 - np.sqrt(1 - g2 ** 2)) * node_pfd[nn]
    ev = np.where(D < mmd, pose + phi[nn], -1.0)
    np.testing.assert_allclose(got, ev.max(axis=1), atol=1e-9)
    assert (got > -1).any() and (got == -1).any()


# ----------------------------------------------------------------------------- slope


def test_slope_telescoping_for_contiguous_suffix():
    rng = np.random.default_rng(6)
    Wn = 10
    buf = np.full((Wn + 1, Wn), np.nan)
    for m in range(Wn + 1):
        if m:
            buf[m, Wn - m:] = np.cumsum(rng.normal(size=m))
    s = er.slope(buf, age=np.arange(Wn + 1))
    assert np.isnan(s[0]) and np.isnan(s[1])
    for m in range(2, Wn + 1):
        assert s[m] == pytest.approx((buf[m, -1] - buf[m, Wn - m]) / (m - 1))


def test_slope_nan_ignoring_mean_and_channels():
    buf = np.array([[np.nan, 1.0, np.nan, 2.0, 4.0]])
    # only the difference 4-2 is valid
    assert er.slope(buf, None, window=5)[0] == pytest.approx(2.0)
    buf = np.array([[0.0, 2.0, 6.0]])
    assert er.slope(buf, None, window=3, chan=[1, 2, 2])[0] == pytest.approx((1.0 + 2.0) / 2)
    # window takes the last columns
    buf = np.array([[100.0, 0.0, 1.0, 2.0]])
    assert er.slope(buf, None, window=3)[0] == pytest.approx(1.0)


def test_retain_mask():
    keep = er.retain_mask([0.6, 0.4, np.nan, 0.4, 0.5], [9, 9, 1, 4, 5])
    np.testing.assert_array_equal(keep, [True, False, True, True, True])


# --------------------------------------------------------------------- possible objects


def test_possible_objects_spread_out():
    # std > 0.1, M = 10 -> t = 8; strict >
    got = er.possible_objects([10.0, 8.0, 9.0, 2.0], 20)
    np.testing.assert_array_equal(got, [True, False, True, False])


def test_possible_objects_all_negative():
    got = er.possible_objects([-1.0, -1.05, -3.0], 20)
    np.testing.assert_array_equal(got, [False, False, False])
    # M < 0 with small std still uses the first branch -> nothing possible
    got = er.possible_objects([-0.5, -0.5], 20)
    np.testing.assert_array_equal(got, [False, False])


def test_possible_objects_single_object():
    np.testing.assert_array_equal(er.possible_objects([0.0]), [True])
    np.testing.assert_array_equal(er.possible_objects([0.5]), [True])
    np.testing.assert_array_equal(er.possible_objects([-0.5]), [False])


def test_possible_objects_all_about_equal_and_empty():
    np.testing.assert_array_equal(er.possible_objects([1.0, 1.05, 0.95]), [True, True, True])
    # M = 0.1 > 0 but std small: everyone with hypotheses is possible, empty ones never
    np.testing.assert_array_equal(er.possible_objects([0.1, np.nan, 0.1]), [True, False, True])
    # empty ones do not enter the std
    np.testing.assert_array_equal(er.possible_objects([5.0, np.nan, 4.0], 20),
                                  [True, False, False])
    np.testing.assert_array_equal(er.possible_objects([np.nan, np.nan]), [False, False])


# ---------------------------------------------------------------- pose candidates / unique


def test_pose_candidates():
    ev = np.array([10.0, 8.0, 8.5, 5.0])
    np.testing.assert_array_equal(er.pose_candidates(ev, 20), [True, False, True, False])
    np.testing.assert_array_equal(er.pose_candidates([1.0, 0.9], 20), [False, False])
    np.testing.assert_array_equal(er.pose_candidates([1.01, 0.9], 20), [True, True])


def test_poses_unique():
    rot = np.stack([np.eye(3), rot_z(15), rot_z(25), rot_x(10)])
    loc = np.array([[0, 0, 0], [0.05, 0, 0], [0, 0, 0], [0.3, 0, 0]], dtype=float)
    assert er.poses_unique(rot, loc, [True, True, False, False], 0)
    assert not er.poses_unique(rot, loc, [True, False, True, False], 0)  # 25 deg > 0.35 rad
    assert er.poses_unique(rot, loc, [True, False, True, False], 0, pose_similarity_threshold=0.5)
    assert not er.poses_unique(rot, loc, [0, 3], 0)  # 0.15 m from centre
    assert er.poses_unique(rot, loc, [0, 3], 0, path_similarity_threshold=0.2)
    assert not er.poses_unique(rot, loc, np.zeros(4, bool), 0)


# --------------------------------------------------------------------------- symmetry


def test_symmetry_counter_rules():
    # previous empty: untouched, not symmetric (even with a high counter)
    assert er.symmetry_step([], [1, 2, 3], 7) == (7, False)
    # overlap 10/10 -> +1
    assert er.symmetry_step(list(range(10)), list(range(10)), 3) == (4, False)
    assert er.symmetry_step(list(range(10)), list(range(10)), 4) == (5, True)
    # exactly 90 % is not > 0.9 -> reset
    assert er.symmetry_step(list(range(10)), list(range(1, 11)), 4) == (0, False)
    # ratio uses |P_now|: 10 of 10 current were previous, even though prev is larger
    assert er.symmetry_step(list(range(20)), list(range(10)), 0) == (1, False)
    assert er.symmetry_step(list(range(20)), list(range(10)), 0, denominator="prev") == (0, False)
    # masks work too
    m = np.zeros(5, bool)
    m[[1, 2]] = True
    assert er.symmetry_step(m, m, 0) == (1, False)
    # no new observation: counter kept
    assert er.symmetry_step([1], [2], 5, new_observation=False) == (5, True)


# ----------------------------------------------------------------------- rotation error


def test_rotation_error():
    assert er.rotation_error_deg(rot_z(30), np.eye(3)) == pytest.approx(30.0)
    assert er.rotation_error_deg(rot_z(30) @ rot_x(20), rot_z(30) @ rot_x(20)) == pytest.approx(
        0.0, abs=1e-5)
    assert er.rotation_error_deg(rot_z(180), np.eye(3)) == pytest.approx(180.0)
    assert er.rotation_error_deg(rot_x(-40), rot_x(10)) == pytest.approx(50.0)
