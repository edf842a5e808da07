"""Deletion and path integration of many hypotheses at once: the first pass of the evidence update.

Each step, every live hypothesis row (``kernels.evidence``) is first tested for
deletion (burst sampling, ``docs/evidence-matching.md`` section 4.10: old enough
and its evidence no longer growing), and a surviving one moves by the sensor's
displacement rotated into its frame (section 4.3). The survivors become the
queries of the nearest-node search and the scoring pass, one column each: their
new locations and the sensed normal and curvature direction rotated into their
frames go to ``hq`` (the layout ``lane_evidence.evidence_max`` reads), their rows
to ``rows`` and their objects to ``qobj`` (what ``lane_cells.cell_spans`` reads).

Row by row that loop cost ~13 ns per hypothesis on the development machine (two
unpredictable branches, twelve loads and fifteen scattered stores per row);
``integrate_rows`` does ``LANES`` consecutive rows at a time: masked loads of the
row state, gathers of the locations and rotations, a masked scatter of the new
locations, and compress-stores of the survivors' columns. LLVM IR, like
``kernels.lanes``, because numba does not vectorise these gathers itself.

Arrays (all C-contiguous; ``cap`` hypothesis rows, ``P`` query columns):
``hyp_obj`` int32 (cap,), ``hyp_loc`` float32 (cap, 3), ``hyp_rot`` float32
(cap, 9), ``hyp_slope`` float32 (cap,), ``hyp_age`` int32 (cap,),
``hyp_possible`` uint8 (cap,); ``par`` float32 (N_PATH_PAR,), slots
``kernels.evidence_layout.PP_*``: the displacement ``dx, dy, dz`` (``PP_DISP``), the
sensed normal (``PP_NORMAL``), the sensed curvature direction (``PP_DIR1``), then
``deleting`` (1 or 0, ``PP_DELETING``), ``min_age`` (``PP_MIN_AGE``) and ``slope_min``
(``PP_SLOPE_MIN``); ``rows`` int64 (>= P,),
``qobj`` int32 (>= P,), ``hq`` float32 (9, P).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .ir import (F32, I1, I32, I64, LANES, block_loop, compress_store, gather, is_c_array, mask_count,
                 masked_load, masked_store, scatter, splat, vec)

from .evidence_layout import N_PATH_PAR, PP_DELETING, PP_DIR1, PP_DISP, PP_MIN_AGE, PP_NORMAL, PP_SLOPE_MIN

_I8 = ir.IntType(8)


def _mul_add(builder, a, b, c):
    """``a * b + c`` as a multiply and an add: the scalar loop this replaces compiles to unfused
    ones too, so the step's evidence stays the same bit for bit (checked over whole episodes)."""
    return builder.fadd(builder.fmul(a, b), c)


def _rows_block(builder, A, par, h0, hi, n_q, dead):
    """IR of ``integrate_rows`` for rows ``h0 .. h0 + LANES - 1`` (those below ``hi``); returns the new
    ``(n_q, dead)``."""
    a_ob, a_lc, a_rt, a_sl, a_ag, a_po, a_rw, a_qo, a_hq = A
    vi32 = vec(I32)
    vi64 = vec(I64)
    iota = ir.Constant(vi64, list(range(LANES)))
    h = builder.add(splat(builder, h0), iota)
    tail = builder.icmp_signed("<", h, splat(builder, hi))
    obj = masked_load(builder, builder.gep(a_ob.data, [h0]), tail, I32)
    age = masked_load(builder, builder.gep(a_ag.data, [h0]), tail, I32)
    slope = masked_load(builder, builder.gep(a_sl.data, [h0]), tail, F32)
    live = builder.and_(tail, builder.icmp_signed(">=", obj, ir.Constant(vi32, [0] * LANES)))
    p = [builder.load(builder.gep(par.data, [ir.Constant(I64, i)])) for i in range(N_PATH_PAR)]
    deleting = builder.fcmp_ordered("!=", p[PP_DELETING], ir.Constant(F32, 0.0))
    old = builder.icmp_signed(">=", age, splat(builder, builder.fptosi(p[PP_MIN_AGE], I32)))
    growing = builder.fcmp_ordered(">=", slope, splat(builder, p[PP_SLOPE_MIN]))  # NaN: not growing
    gone = builder.and_(builder.and_(live, old), builder.not_(growing))
    gone = builder.select(deleting, gone, ir.Constant(vec(I1), [0] * LANES))
    masked_store(builder, ir.Constant(vi32, [-1] * LANES), builder.gep(a_ob.data, [h0]), gone)
    masked_store(builder, ir.Constant(vec(_I8), [0] * LANES), builder.gep(a_po.data, [h0]), gone, align=1)
    surv = builder.and_(live, builder.not_(gone))
    # the rows' locations and rotations: 3 and 9 floats per row
    loc_base = builder.gep(a_lc.data, [builder.mul(h0, ir.Constant(I64, 3))])
    rot_base = builder.gep(a_rt.data, [builder.mul(h0, ir.Constant(I64, 9))])
    loc_b = builder.mul(iota, splat(builder, ir.Constant(I64, 12)))
    rot_b = builder.mul(iota, splat(builder, ir.Constant(I64, 36)))
    loc = [gather(builder, loc_base, builder.add(loc_b, splat(builder, ir.Constant(I64, 4 * c))), surv, F32)
           for c in range(3)]
    rot = [gather(builder, rot_base, builder.add(rot_b, splat(builder, ir.Constant(I64, 4 * c))), surv, F32)
           for c in range(9)]
    d = [splat(builder, p[PP_DISP + c]) for c in range(3)]
    sn = [splat(builder, p[PP_NORMAL + c]) for c in range(3)]
    sc = [splat(builder, p[PP_DIR1 + c]) for c in range(3)]
    cols = []
    for a in range(3):  # l_a = loc_a + R[a, 0] dx + R[a, 1] dy + R[a, 2] dz, summed left to right
        r = rot[3 * a:3 * a + 3]
        cols.append(_mul_add(builder, r[2], d[2], _mul_add(builder, r[1], d[1], _mul_add(builder, r[0], d[0], loc[a]))))
    for a in range(3):
        scatter(builder, loc_base, builder.add(loc_b, splat(builder, ir.Constant(I64, 4 * a))), cols[a], surv, F32)
    for v in (sn, sc):  # R v, summed left to right
        for a in range(3):
            r = rot[3 * a:3 * a + 3]
            cols.append(_mul_add(builder, r[2], v[2], _mul_add(builder, r[1], v[1], builder.fmul(r[0], v[0]))))
    p_len = cgutils.unpack_tuple(builder, a_hq.shape, 2)[1]
    for c in range(9):
        compress_store(builder, cols[c], builder.gep(a_hq.data, [builder.add(builder.mul(ir.Constant(I64, c), p_len),
                                                                               n_q)]), surv)
    compress_store(builder, h, builder.gep(a_rw.data, [n_q]), surv)
    compress_store(builder, obj, builder.gep(a_qo.data, [n_q]), surv)
    return builder.add(n_q, mask_count(builder, surv)), builder.add(dead, mask_count(builder, gone))


@intrinsic
def _integrate_rows_ir(typingctx, hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows,
                       qobj, hq):
    """``integrate_rows`` in compiled code: a loop over blocks of ``LANES`` rows."""
    if not (is_c_array(hyp_obj, 1, types.int32) and is_c_array(hyp_loc, 2, types.float32) and is_c_array(hyp_rot, 2, types.float32)
            and is_c_array(hyp_slope, 1, types.float32) and is_c_array(hyp_age, 1, types.int32)
            and is_c_array(hyp_possible, 1, types.uint8) and isinstance(lo, types.Integer) and isinstance(hi, types.Integer)
            and is_c_array(par, 1, types.float32) and is_c_array(rows, 1, types.int64) and is_c_array(qobj, 1, types.int32)
            and is_c_array(hq, 2, types.float32)):
        return None
    ret = types.UniTuple(types.int64, 2)
    sig = ret(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 2, 3, 4, 5, 9, 10, 11)]
        par_a = context.make_array(signature.args[8])(context, builder, args[8])
        lo64 = context.cast(builder, args[6], signature.args[6], types.int64)
        hi64 = context.cast(builder, args[7], signature.args[7], types.int64)
        zero = ir.Constant(I64, 0)
        nq, dead = block_loop(builder, lo64, hi64, [zero, zero],
                               lambda b, h0, v: _rows_block(b, arrays, par_a, h0, hi64, v[0], v[1]), "paths")
        return context.make_tuple(builder, ret, [nq, dead])

    return sig, codegen


def integrate_rows(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq):
    """Deletion test and path integration of the hypothesis rows ``lo .. hi``.

    A live row (``hyp_obj >= 0``) is deleted when ``par[PP_DELETING]`` is nonzero, its
    age is at least ``par[PP_MIN_AGE]`` and its slope is not ``>= par[PP_SLOPE_MIN]``
    (NaN included): ``hyp_obj`` becomes -1 and ``hyp_possible`` 0. Every other live row
    ``h`` moves: ``hyp_loc[h] += R d`` (``R = hyp_rot[h]`` as a row-major 3 x 3, ``d``
    the 3 slots from ``PP_DISP``), and becomes query column ``i`` (in row order from 0):
    ``rows[i] = h``, ``qobj[i] = hyp_obj[h]``, ``hq[0:3, i]`` its new location,
    ``hq[3:6, i] = R n`` and ``hq[6:9, i] = R c`` (``n``, ``c`` the 3 slots from
    ``PP_NORMAL``, ``PP_DIR1``). Columns past the
    survivors are not written. Returns ``(n_q, dead)``: the survivors and the rows
    deleted now (int64).
    """
    # Plain Python (NUMBA_DISABLE_JIT=1): row by row; compiled code uses the overload below.
    dx, dy, dz = par[PP_DISP], par[PP_DISP + 1], par[PP_DISP + 2]
    n0, n1, n2 = par[PP_NORMAL], par[PP_NORMAL + 1], par[PP_NORMAL + 2]
    c0, c1, c2 = par[PP_DIR1], par[PP_DIR1 + 1], par[PP_DIR1 + 2]
    n_q = 0
    dead = 0
    for h in range(lo, hi):
        if hyp_obj[h] < 0:
            continue
        if par[PP_DELETING] != 0 and hyp_age[h] >= int(par[PP_MIN_AGE]) and not (hyp_slope[h] >= par[PP_SLOPE_MIN]):
            hyp_obj[h] = -1
            hyp_possible[h] = 0
            dead += 1
            continue
        R = hyp_rot[h]
        for a in range(3):
            hyp_loc[h, a] = hyp_loc[h, a] + R[3 * a] * dx + R[3 * a + 1] * dy + R[3 * a + 2] * dz
            hq[a, n_q] = hyp_loc[h, a]
            hq[3 + a, n_q] = R[3 * a] * n0 + R[3 * a + 1] * n1 + R[3 * a + 2] * n2
            hq[6 + a, n_q] = R[3 * a] * c0 + R[3 * a + 1] * c1 + R[3 * a + 2] * c2
        rows[n_q] = h
        qobj[n_q] = hyp_obj[h]
        n_q += 1
    return n_q, dead


@overload(integrate_rows, inline="always")
def _ol_integrate_rows(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq):
    def impl(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows, qobj, hq):
        return _integrate_rows_ir(hyp_obj, hyp_loc, hyp_rot, hyp_slope, hyp_age, hyp_possible, lo, hi, par, rows,
                                  qobj, hq)
    return impl
