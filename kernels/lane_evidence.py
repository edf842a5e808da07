"""The evidence of many hypotheses' nearest nodes at once, one vector lane per hypothesis.

After the nearest-node search (``kernels.lanes``), the evidence step scores each
hypothesis against its up to k nearest nodes (``docs/evidence-matching.md``,
sections 4.5 to 4.8): a surface-aware distance decides whether a node is in
radius, and the best of the in-radius nodes' pose plus feature evidence is the
hypothesis' evidence change. One hypothesis at a time that is a loop of
gathered loads, three square roots and two unpredictable branches per node
(~57 ns per hypothesis on the development machine, ~41 written branch-free).
``evidence_max`` scores ``LANES`` hypotheses at once with vector gathers,
square roots and selects. Like ``lock_step`` it is LLVM IR, because numba does
not vectorise the gathers of such a loop itself (runtime alias checks).

The per-hypothesis inputs are C-contiguous scratch arrays with one column per
hypothesis (P columns, a multiple of ``LANES`` at least ``i0 + LANES``):

- ``nbr`` int32 (K, P): row p the (p+1)-th nearest node of each hypothesis;
- ``n_nbr`` int64 (P,): how many rows of ``nbr`` hold a node for it (0 <= m <= K);
- ``hq`` float32 (9, P): rows 0-2 the hypothesis' location ``l``, 3-5 the sensed
  normal ``q`` and 6-8 the sensed first curvature direction ``c``, both rotated
  into the hypothesis' frame;
- ``par`` float32 (N_PAR,), slots ``kernels.evidence_layout.EP_*``: ``inv_kappa = 1 /
  (|kappa| + 0.5)`` (``EP_INV_KAPPA``), the match radius ``mmd`` (``EP_MMD``), the
  weights ``w_n`` and ``w_c`` (``EP_W_NORMAL``, ``EP_W_CURV``), and 1 when the sensed
  curvature directions are defined (else 0: no curvature term; ``EP_POSE_DEFINED``).
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .ir import F32, I32, I64, LANES, gather, is_c_array, splat, vec

from .evidence_layout import EP_INV_KAPPA, EP_MMD, EP_POSE_DEFINED, EP_W_CURV, EP_W_NORMAL, N_EV_PAR

N_PAR = N_EV_PAR  # the name the lane tests know


def _vector_intrinsic(builder, name, vty, n_args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * n_args),
                                        "llvm.%s.v%d%s" % (name, LANES, vty.element.intrinsic_name))
    return fn


def _row(builder, ary, row, row_len, col, elem):
    """Pointer to ``ary[row, col:col + LANES]`` of a C-contiguous 2-D (or, with row 0, 1-D) array, as one vector."""
    p = builder.gep(ary.data, [builder.add(builder.mul(row, row_len), col)])
    return builder.bitcast(p, vec(elem).as_pointer())


def _f32_vec(value):
    return ir.Constant(vec(F32), [value] * LANES)


@intrinsic
def _evidence_max_ir(typingctx, node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out):
    """``evidence_max`` in compiled code: LLVM IR over ``LANES``-wide vectors."""
    f32_1d = (node_pfd, phi)
    if not (isinstance(node_pos, types.Array) and node_pos.ndim == 2 and node_pos.dtype == types.float32
            and isinstance(node_pose, types.Array) and node_pose.ndim == 2 and node_pose.dtype == types.float32
            and all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 for a in f32_1d)
            and is_c_array(nbr, 2, types.int32) and is_c_array(n_nbr, 1, types.int64) and is_c_array(hq, 2, types.float32)
            and isinstance(i0, types.Integer) and is_c_array(par, 1, types.float32) and is_c_array(out, 1, types.float32)):
        return None
    sig = types.void(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out)

    def codegen(context, builder, signature, args):
        arys = [context.make_array(t)(context, builder, v) if isinstance(t, types.Array) else None
                for t, v in zip(signature.args, args)]
        a_pos, a_pose, a_pfd, a_phi, a_nbr, a_m, a_hq, _, a_par, a_out = arys
        i0v = context.cast(builder, args[7], signature.args[7], types.int64)
        zero = ir.Constant(I64, 0)
        vf = vec(F32)

        k_rows, n_cols = cgutils.unpack_tuple(builder, a_nbr.shape, 2)
        _, hq_cols = cgutils.unpack_tuple(builder, a_hq.shape, 2)
        m = builder.load(_row(builder, a_m, zero, zero, i0v, I64), align=8)
        l_q_c = [builder.load(_row(builder, a_hq, ir.Constant(I64, r), hq_cols, i0v, F32), align=4)
                 for r in range(9)]
        lx, ly, lz, qx, qy, qz, cx, cy, cz = l_q_c
        par_v = [builder.load(builder.gep(a_par.data, [ir.Constant(I64, r)])) for r in range(N_PAR)]
        inv_kappa, mmd, w_n, w_c = (splat(builder, par_v[r]) for r in (EP_INV_KAPPA, EP_MMD, EP_W_NORMAL, EP_W_CURV))
        pd = splat(builder, builder.fcmp_unordered("!=", par_v[EP_POSE_DEFINED], ir.Constant(F32, 0.0)))

        sqrt = _vector_intrinsic(builder, "sqrt", vf, 1)
        fabs = _vector_intrinsic(builder, "fabs", vf, 1)
        vmin = _vector_intrinsic(builder, "minnum", vf, 2)
        vmax = _vector_intrinsic(builder, "maxnum", vf, 2)
        smax = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [vec(I64)]),
                                              "llvm.vector.reduce.smax.v%di64" % LANES)
        # rows of nbr worth visiting: up to the largest m of these lanes
        m_top = builder.call(smax, [m])
        n_iter = builder.select(builder.icmp_signed("<", m_top, k_rows), m_top, k_rows)

        def dot(ax, ay, az, bx, by, bz):
            return builder.fadd(builder.fadd(builder.fmul(ax, bx), builder.fmul(ay, by)), builder.fmul(az, bz))

        def clamp1(g):
            return builder.call(vmin, [builder.call(vmax, [g, _f32_vec(-1.0)]), _f32_vec(1.0)])

        def column_gather(ary, at, col, mask):
            s1 = cgutils.unpack_tuple(builder, ary.strides, 2)[1]
            return gather(builder, ary.data, builder.add(at, splat(builder, builder.mul(s1, ir.Constant(I64, col)))),
                           mask, F32)

        best_slot = cgutils.alloca_once_value(builder, _f32_vec(-1.0))
        (pfd_stride,) = cgutils.unpack_tuple(builder, a_pfd.strides, 1)
        (phi_stride,) = cgutils.unpack_tuple(builder, a_phi.strides, 1)
        pos_s0 = cgutils.unpack_tuple(builder, a_pos.strides, 2)[0]
        pose_s0 = cgutils.unpack_tuple(builder, a_pose.strides, 2)[0]
        with cgutils.for_range(builder, builder.select(builder.icmp_signed(">", n_iter, zero), n_iter, zero)) as loop:
            p = loop.index
            act = builder.icmp_signed("<", splat(builder, p), m)
            j = builder.sext(builder.load(_row(builder, a_nbr, p, n_cols, i0v, I32), align=4), vec(I64))
            at = builder.mul(j, splat(builder, pos_s0))
            ex = builder.fsub(column_gather(a_pos, at, 0, act), lx)
            ey = builder.fsub(column_gather(a_pos, at, 1, act), ly)
            ez = builder.fsub(column_gather(a_pos, at, 2, act), lz)
            dist = builder.fadd(builder.call(sqrt, [dot(ex, ey, ez, ex, ey, ez)]),
                                builder.fmul(builder.call(fabs, [dot(ex, ey, ez, qx, qy, qz)]), inv_kappa))
            valid = builder.and_(act, builder.fcmp_ordered("<", dist, mmd))

            # pose evidence (4.6): normal, then (when defined) the curvature direction
            at = builder.mul(j, splat(builder, pose_s0))
            g = clamp1(dot(column_gather(a_pose, at, 0, act), column_gather(a_pose, at, 1, act),
                           column_gather(a_pose, at, 2, act), qx, qy, qz))
            half = _f32_vec(0.5)
            one = _f32_vec(1.0)
            ev = builder.fmul(w_n, builder.fsub(half, builder.call(sqrt, [builder.fmul(builder.fsub(one, g), half)])))
            curv = builder.and_(act, pd)
            g2 = clamp1(dot(column_gather(a_pose, at, 3, curv), column_gather(a_pose, at, 4, curv),
                            column_gather(a_pose, at, 5, curv), cx, cy, cz))
            pfd = gather(builder, a_pfd.data, builder.mul(j, splat(builder, pfd_stride)), curv, F32)
            term = builder.fmul(builder.fmul(w_c, builder.fsub(half, builder.call(
                sqrt, [builder.fsub(one, builder.fmul(g2, g2))]))), pfd)
            ev = builder.fadd(ev, term)  # 0 where pd is off: its gathers read 0 there
            ev = builder.fadd(ev, gather(builder, a_phi.data, builder.mul(j, splat(builder, phi_stride)), act,
                                          F32))
            best = builder.load(best_slot)
            take = builder.and_(valid, builder.fcmp_ordered(">", ev, best))
            builder.store(builder.select(take, ev, best), best_slot)
        builder.store(builder.load(best_slot), _row(builder, a_out, zero, zero, i0v, F32), align=4)
        return context.get_dummy_value()

    return sig, codegen


def evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out):
    """Evidence change of hypotheses (columns) ``i0 .. i0 + LANES - 1``: writes ``out[i0:i0 + LANES]``.

    For hypothesis i with ``m = n_nbr[i]`` and nodes ``j = nbr[p, i]``, ``p < m``
    (the scratch layout of the module docstring): ``e = node_pos[j] - l``; node j is
    in radius when ``|e| + |e . q| * inv_kappa < mmd``; its evidence is
    ``w_n (1/2 - sqrt((1 - g) / 2)) + [w_c (1/2 - sqrt(1 - g2^2)) node_pfd[j]] + phi[j]``
    with ``g = clip(node_pose[j, 0:3] . q, -1, 1)``, ``g2 = clip(node_pose[j, 3:6] . c,
    -1, 1)`` and the bracketed term only where ``par[EP_POSE_DEFINED]`` is set. ``out[i]`` is the
    largest evidence of an in-radius node, or -1 when none is (or when every
    evidence is below -1).

    node_pos float32 (N, 3), node_pose float32 (N, >= 6), node_pfd and phi float32 (N,),
    any strides; the scratch arrays C-contiguous with at least ``i0 + LANES`` columns.
    All float32 arithmetic.
    """
    # Plain Python, lane by lane: runs only with NUMBA_DISABLE_JIT=1 (line profiling);
    # compiled code uses the overload below.
    f = np.float32
    inv_kappa, mmd, w_n, w_c, pdef = (f(par[r]) for r in (EP_INV_KAPPA, EP_MMD, EP_W_NORMAL, EP_W_CURV,
                                                           EP_POSE_DEFINED))
    for i in range(int(i0), int(i0) + LANES):
        l, q, c = hq[0:3, i], hq[3:6, i], hq[6:9, i]
        best = f(-1.0)
        for p in range(min(int(n_nbr[i]), nbr.shape[0])):
            j = int(nbr[p, i])
            e = (node_pos[j] - l).astype(f)
            dist = f(np.sqrt(f(f(e[0] * e[0] + e[1] * e[1]) + e[2] * e[2]))
                     + f(abs(f(f(e[0] * q[0] + e[1] * q[1]) + e[2] * q[2])) * inv_kappa))
            if not dist < mmd:
                continue
            n = node_pose[j]
            g = min(max(f(f(n[0] * q[0] + n[1] * q[1]) + n[2] * q[2]), f(-1.0)), f(1.0))
            ev = f(w_n * f(f(0.5) - np.sqrt(f(f(1.0 - g) * f(0.5)))))
            if pdef != 0:
                g2 = min(max(f(f(n[3] * c[0] + n[4] * c[1]) + n[5] * c[2]), f(-1.0)), f(1.0))
                ev = f(ev + f(f(w_c * f(f(0.5) - np.sqrt(f(1.0 - f(g2 * g2))))) * node_pfd[j]))
            ev = f(ev + phi[j])
            if ev > best:
                best = ev
        out[i] = best


@overload(evidence_max, inline="always")
def _ol_evidence_max(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out):
    def impl(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out):
        _evidence_max_ir(node_pos, node_pose, node_pfd, phi, nbr, n_nbr, hq, i0, par, out)
    return impl
