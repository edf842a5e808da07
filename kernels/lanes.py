"""Vector primitives for searching many queries' candidate lists at once, one lane per query.

The evidence step's nearest-node search (``kernels.evidence``) walks, for each
hypothesis, a short list of candidate nodes and keeps the k nearest. Each candidate is
one int32, its code (:data:`CODE_BITS`): its node row and its lower-bound distance to
the cell centre in whole steps of ``cand_unit[0]``. One query
at a time that walk is a chain of unpredictable branches and dependent loads
(~150 ns per query on the development machine, see ``profiling/README.md``).
``lock_step`` advances ``LANES`` queries by one candidate each, with vector
gathers, compares and selects and no branch per candidate; ``lock_steps``
repeats it until enough lanes have ended, with the lane state in registers for
k up to ``K_REGISTERS``. ``search_lanes`` runs a whole list of queries that way in
one loop: when enough lanes have ended it writes their results with masked
scatters and refills them from the list with an expand-load and gathers, so no
lane state goes through memory (for larger k, ``drive_lock_steps`` refills the
lanes of ``lock_steps`` one by one in scalar code).

Numba does not vectorise such code written as loops over the lanes (the gathered
reads and the lane-state writes may alias), so ``lock_step`` is written as LLVM
IR with ``llvm.masked.gather``. LLVM lowers that to the target's gather
instruction (AVX2, AVX-512) or to scalar loads elsewhere, so it is portable. On
the development machine (AVX-512) a call costs ~36 ns for 16 lanes with the data
in the caches (~2.2 ns per lane and candidate, against ~12 ns for the one-query
search's candidate with its mispredicted branches); 32 and 64 lanes measured the
same in the evidence step.

Lane state, all C-contiguous scratch arrays owned by the caller (L = ``LANES``):

- ``lane_i`` int32 (2, L): row 0 the next candidate row of each lane, row 1 the end
  of its list (a lane with ``next >= end`` is idle or finished);
- ``lane_f`` float32 (4, L): row 0 the stop offset (see ``lock_step``), rows 1-3
  the query point x, y, z;
- ``best_d2`` float32 (k, L), ``best_j`` int32 (k, L): each lane's k best squared
  distances, ascending, and their node rows. Start a lane at ``r2`` / -1 to keep
  only nodes strictly closer than ``sqrt(r2)``.

The IR is built from the helpers of ``kernels.ir`` (gathers, scatters, masked
loads and stores, ``LANES``, re-exported here).

``popcount`` and ``lowest_bit`` are LLVM's ``ctpop`` and ``cttz`` on int64 lane masks,
``prefetch`` LLVM's ``prefetch`` (a software prefetch; the evidence step's driver measured faster without).
"""

from collections import namedtuple

import numpy as np
from llvmlite import binding as _llvm, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .ir import F32, I1, I32, I64, LANES, gather, is_c_array, lane_row, scatter, splat, vec

#: A candidate is one int32, its *code*: ``node_row << CODE_BITS | steps``, ``steps`` its
#: distance to the cell centre in whole distance units, rounded down (a lower bound, as
#: the stop test needs). One gather per candidate instead of two (a row and a float
#: distance), and half the bytes: the lists of a model of ten objects are megabytes,
#: read from the last-level cache, and the search measured ~20 % faster so.
CODE_BITS = 10
CODE_MASK = (1 << CODE_BITS) - 1
#: Node rows must stay below this (the code is a non-negative int32).
MAX_CODED_ROWS = 1 << (31 - CODE_BITS)


@njit(cache=True, inline="always")
def candidate_bound(code, unit):
    """The lower-bound distance (float32) of a candidate's ``code`` for distance step ``unit``."""
    return np.float32(code & CODE_MASK) * unit


def _candidate(builder, a_unit, a_code, a_np, nxt, end, off, q, worst):
    """IR of one candidate per lane: ``(nxt2, cn, x)``, the lanes' next rows, the candidate's
    node rows and its squared distance to the query (+inf in lanes that took none).

    ``a_unit`` is ``cand_unit`` (its first value the distance step), ``a_code`` ``cand_code``
    (see :data:`CODE_BITS`).

    ``nxt``/``end`` int32 vectors, ``off`` and ``q`` (x, y, z) float32 vectors, ``worst``
    the current k-th best squared distances (the stop test's bound).
    """
    live = builder.icmp_signed("<", nxt, end)
    (cn_stride,) = cgutils.unpack_tuple(builder, a_code.strides, 1)
    row = builder.sext(nxt, vec(I64))
    # one gather per candidate: its code holds the node row and its lower-bound distance
    code = gather(builder, a_code.data, builder.mul(row, splat(builder, cn_stride)), live, I32)
    cn = builder.ashr(code, ir.Constant(vec(I32), [CODE_BITS] * LANES))
    steps = builder.and_(code, ir.Constant(vec(I32), [CODE_MASK] * LANES))
    cd = builder.fmul(builder.sitofp(steps, vec(F32)), splat(builder, builder.load(a_unit.data)))

    # stop test against the current k-th best (r2 until k nodes are in)
    gap = builder.fsub(cd, off)
    beyond = builder.and_(builder.fcmp_ordered(">", gap, ir.Constant(vec(F32), [0.0] * LANES)),
                          builder.fcmp_ordered(">=", builder.fmul(gap, gap), worst))
    take = builder.and_(live, builder.not_(beyond))
    nxt2 = builder.select(take, builder.add(nxt, ir.Constant(vec(I32), [1] * LANES)), end)

    # squared distance from the query to node cn (node_pos by its strides)
    s0, s1 = cgutils.unpack_tuple(builder, a_np.strides, 2)
    at = builder.mul(builder.sext(cn, vec(I64)), splat(builder, s0))
    coords = []
    for col in range(3):
        p = gather(builder, a_np.data, builder.add(at, splat(builder, builder.mul(s1, ir.Constant(I64, col)))),
                    take, F32)
        coords.append(builder.fsub(p, q[col]))
    dx, dy, dz = coords
    d2 = builder.fadd(builder.fadd(builder.fmul(dx, dx), builder.fmul(dy, dy)), builder.fmul(dz, dz))
    return nxt2, cn, builder.select(take, d2, ir.Constant(vec(F32), [float("inf")] * LANES))


def _inserted(builder, x, cn, b, b_prev, j, j_prev):
    """Entry p of a sorted best list after inserting ``x`` (node ``cn``): the candidate where it
    is the first entry ``x`` is strictly below (``x < b`` but not ``x < b_prev``), the old
    entry p - 1 after that, unchanged before. Every entry is computed from old values, so the
    k stages do not depend on each other (a compare-exchange chain would, and would reorder
    equal entries). ``b_prev``/``j_prev`` None for entry 0."""
    here = builder.fcmp_ordered("<", x, b)
    if b_prev is None:
        return builder.select(here, x, b), builder.select(here, cn, j)
    above = builder.fcmp_ordered("<", x, b_prev)
    return (builder.select(here, builder.select(above, b_prev, x), b),
            builder.select(here, builder.select(above, j_prev, cn), j))


def _done_mask(builder, nxt, end):
    done = builder.icmp_signed(">=", nxt, end)
    return builder.zext(builder.bitcast(done, ir.IntType(LANES)), I64)


def _memory_step(builder, arrays, k64):
    """IR of one ``lock_step`` with the lane state in memory (any k); returns the int64 done mask."""
    a_unit, a_code, a_np, a_li, a_lf, a_bd, a_bj = arrays
    zero = ir.Constant(I64, 0)
    one = ir.Constant(I64, 1)
    nxt = builder.load(lane_row(builder, a_li.data, zero, I32), align=4)
    end = builder.load(lane_row(builder, a_li.data, one, I32), align=4)
    off = builder.load(lane_row(builder, a_lf.data, zero, F32), align=4)
    q = [builder.load(lane_row(builder, a_lf.data, ir.Constant(I64, col + 1), F32), align=4) for col in range(3)]
    worst = builder.load(lane_row(builder, a_bd.data, builder.sub(k64, one), F32), align=4)
    nxt2, cn, x = _candidate(builder, a_unit, a_code, a_np, nxt, end, off, q, worst)
    builder.store(nxt2, lane_row(builder, a_li.data, zero, I32), align=4)
    # from the last entry down, so that every entry reads old values
    with cgutils.for_range(builder, builder.sub(k64, one)) as loop:
        p = builder.sub(builder.sub(k64, one), loop.index)  # k - 1 .. 1
        pm1 = builder.sub(p, one)
        bp = lane_row(builder, a_bd.data, p, F32)
        jp = lane_row(builder, a_bj.data, p, I32)
        b2, j2 = _inserted(builder, x, cn, builder.load(bp, align=4),
                           builder.load(lane_row(builder, a_bd.data, pm1, F32), align=4),
                           builder.load(jp, align=4), builder.load(lane_row(builder, a_bj.data, pm1, I32), align=4))
        builder.store(b2, bp, align=4)
        builder.store(j2, jp, align=4)
    b0p = lane_row(builder, a_bd.data, zero, F32)
    j0p = lane_row(builder, a_bj.data, zero, I32)
    b2, j2 = _inserted(builder, x, cn, builder.load(b0p, align=4), None, builder.load(j0p, align=4), None)
    builder.store(b2, b0p, align=4)
    builder.store(j2, j0p, align=4)
    return _done_mask(builder, nxt2, end)


def _lane_types_ok(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
    return (isinstance(cand_unit, types.Array) and cand_unit.ndim == 1 and cand_unit.dtype == types.float32
            and isinstance(cand_code, types.Array) and cand_code.ndim == 1 and cand_code.dtype == types.int32
            and isinstance(node_pos, types.Array) and node_pos.ndim == 2 and node_pos.dtype == types.float32
            and is_c_array(lane_i, 2, types.int32) and is_c_array(lane_f, 2, types.float32)
            and is_c_array(best_d2, 2, types.float32) and is_c_array(best_j, 2, types.int32)
            and isinstance(k, types.Integer))


@intrinsic
def _lock_step_ir(typingctx, cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
    """``lock_step`` in compiled code: LLVM IR over ``LANES``-wide vectors."""
    if not _lane_types_ok(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
        return None
    sig = types.int64(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:7], args[:7])]
        k64 = context.cast(builder, args[7], signature.args[7], types.int64)
        return _memory_step(builder, arrays, k64)

    return sig, codegen


def lock_step(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
    """Advance every lane by one candidate; returns the int64 mask of lanes that are now done.

    For each lane with ``next < end``: ``i = next``; if ``b - off > 0``, ``b`` the
    candidate's lower-bound distance (``candidate_bound(cand_code[i], cand_unit[0])``),
    and its square is ``>= best_d2[k - 1]`` the lane stops (its list is sorted by a
    lower bound of the distance, so no later candidate can enter the best k) and
    ``next = end``; otherwise node ``j = cand_code[i] >> CODE_BITS`` is inserted into the lane's
    sorted best list when its squared distance to the query is strictly below an
    entry (so of equal distances the one met first stays ahead), and ``next = i + 1``.

    cand_unit : float32 (>= 1,), the distance step;  cand_code : int32 (C,), each candidate's
    node row and distance (:data:`CODE_BITS`);  node_pos : float32 (N, 3),
    any strides;  the lane state as in the module docstring;  k : int64 >= 1.
    Bit l of the result is set when lane l has ``next >= end`` after the step.
    """
    # Plain Python, lane by lane: runs only with NUMBA_DISABLE_JIT=1 (line profiling);
    # compiled code uses the overload below.
    k = int(k)
    done = 0
    for lane in range(LANES):
        nxt, end = int(lane_i[0, lane]), int(lane_i[1, lane])
        if nxt < end:
            gap = np.float32(candidate_bound(cand_code[nxt], cand_unit[0]) - lane_f[0, lane])
            if gap > 0 and np.float32(gap * gap) >= best_d2[k - 1, lane]:
                lane_i[0, lane] = nxt = end
            else:
                lane_i[0, lane] = nxt = nxt + 1
                j = int(cand_code[nxt - 1]) >> CODE_BITS
                e = (node_pos[j] - lane_f[1:, lane]).astype(np.float32)
                d2 = np.float32(np.float32(e[0] * e[0] + e[1] * e[1]) + e[2] * e[2])
                for p in range(k):
                    if d2 < best_d2[p, lane]:
                        best_d2[p + 1:k, lane] = best_d2[p:k - 1, lane].copy()
                        best_j[p + 1:k, lane] = best_j[p:k - 1, lane].copy()
                        best_d2[p, lane] = d2
                        best_j[p, lane] = j
                        break
        if nxt >= end:
            done |= 1 << lane
    return np.int64(done)


@overload(lock_step, inline="always")
def _ol_lock_step(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
    def impl(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k):
        return _lock_step_ir(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k)
    return impl


# lock_steps keeps the lane state in registers for k up to this (2k + 6 vectors: k = 10 fits
# AVX-512's 32 registers); larger k steps with the state in memory, as lock_step does.
K_REGISTERS = 10


def _stop(builder, done, busy, stop_at):
    """Whether ``lock_steps`` returns: every busy lane done, or at least ``stop_at`` of them."""
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64]), "llvm.ctpop.i64")
    return builder.or_(builder.icmp_signed("==", done, busy),
                       builder.icmp_signed(">=", builder.call(ctpop, [done]), stop_at))


def _register_loop(builder, arrays, k, busy, stop_at):
    """IR of ``lock_steps`` for a fixed ``k``: the lane state loaded once, carried in SSA values
    (registers) from step to step, stored once; returns the done mask."""
    a_unit, a_code, a_np, a_li, a_lf, a_bd, a_bj = arrays

    def row(ary, r, elem):
        return lane_row(builder, ary.data, ir.Constant(I64, r), elem)

    nxt0 = builder.load(row(a_li, 0, I32), align=4)
    end = builder.load(row(a_li, 1, I32), align=4)
    off = builder.load(row(a_lf, 0, F32), align=4)
    q = [builder.load(row(a_lf, col + 1, F32), align=4) for col in range(3)]
    bd0 = [builder.load(row(a_bd, p, F32), align=4) for p in range(k)]
    bj0 = [builder.load(row(a_bj, p, I32), align=4) for p in range(k)]
    pre = builder.block
    loop = builder.append_basic_block("lanes.k%d.loop" % k)
    out = builder.append_basic_block("lanes.k%d.out" % k)
    builder.branch(loop)
    builder.position_at_end(loop)
    nxt = builder.phi(nxt0.type)
    bd = [builder.phi(v.type) for v in bd0]
    bj = [builder.phi(v.type) for v in bj0]
    nxt2, cn, x = _candidate(builder, a_unit, a_code, a_np, nxt, end, off, q, bd[k - 1])
    new = [_inserted(builder, x, cn, bd[p], bd[p - 1] if p else None, bj[p], bj[p - 1] if p else None)
           for p in range(k)]
    bd2 = [b for b, _ in new]
    bj2 = [j for _, j in new]
    done = builder.and_(_done_mask(builder, nxt2, end), busy)
    back = builder.block
    for phi, first, again in zip([nxt] + bd + bj, [nxt0] + bd0 + bj0, [nxt2] + bd2 + bj2):
        phi.add_incoming(first, pre)
        phi.add_incoming(again, back)
    builder.cbranch(_stop(builder, done, busy, stop_at), out, loop)
    builder.position_at_end(out)
    builder.store(nxt2, row(a_li, 0, I32), align=4)
    for p in range(k):
        builder.store(bd2[p], row(a_bd, p, F32), align=4)
        builder.store(bj2[p], row(a_bj, p, I32), align=4)
    return done


@intrinsic
def _lock_steps_ir(typingctx, cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at):
    """``lock_steps`` in compiled code: a register loop per k up to ``K_REGISTERS``, else memory steps."""
    if not (_lane_types_ok(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k)
            and isinstance(busy, types.Integer) and isinstance(stop_at, types.Integer)):
        return None
    sig = types.int64(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:7], args[:7])]
        k64, busy64, stop64 = (context.cast(builder, v, t, types.int64) for v, t in zip(args[7:], signature.args[7:]))
        merge = builder.append_basic_block("lanes.merge")
        memory = builder.append_basic_block("lanes.memory")
        switch = builder.switch(k64, memory)
        results = []
        for kk in range(1, K_REGISTERS + 1):
            block = builder.append_basic_block("lanes.k%d" % kk)
            switch.add_case(ir.Constant(I64, kk), block)
            builder.position_at_end(block)
            results.append((_register_loop(builder, arrays, kk, busy64, stop64), builder.block))
            builder.branch(merge)
        builder.position_at_end(memory)
        loop = builder.append_basic_block("lanes.memory.loop")
        out = builder.append_basic_block("lanes.memory.out")
        builder.branch(loop)
        builder.position_at_end(loop)
        done = builder.and_(_memory_step(builder, arrays, k64), busy64)
        builder.cbranch(_stop(builder, done, busy64, stop64), out, loop)
        builder.position_at_end(out)
        results.append((done, out))
        builder.branch(merge)
        builder.position_at_end(merge)
        phi = builder.phi(I64)
        for value, block in results:
            phi.add_incoming(value, block)
        return phi

    return sig, codegen


def lock_steps(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at):
    """``lock_step`` repeated until the lanes of ``busy`` (an int64 lane mask) are all done, or
    at least ``stop_at`` of them; returns the mask of the busy lanes that are done (at least
    one step is taken).

    The same results as calling ``lock_step`` in a loop; for k up to ``K_REGISTERS`` the
    compiled code keeps the lane state in registers between the steps instead of storing
    and reloading it every step. Arguments as ``lock_step``.
    """
    # Plain Python (NUMBA_DISABLE_JIT=1); compiled code uses the overload below.
    while True:
        done = lock_step(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k) & np.int64(busy)
        if done == busy or popcount(done) >= stop_at:
            return np.int64(done)


@overload(lock_steps, inline="always")
def _ol_lock_steps(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at):
    def impl(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at):
        return _lock_steps_ir(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at)
    return impl


# ---------------------------------------------------------------------------------------------
# The whole search in IR: lanes refilled from the query list and harvested with vector ops


_MASK_T = ir.IntType(LANES)


def _bits_to_mask(builder, bits):
    return builder.bitcast(builder.trunc(bits, _MASK_T), vec(I1))


def _search_k(builder, A, K, n_search, r2, stop_at):
    """IR of ``search_lanes`` for a fixed ``k``: one loop that steps the lanes (state in registers) and,
    once enough lanes have ended, writes their results with masked scatters and refills them from
    the query list (expand-load, then gathers of each new query's list and point)."""
    a_unit, a_code, a_np, a_sp, a_so, a_hq, a_se, a_oj, a_om = A
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64]), "llvm.ctpop.i64")
    ctlz = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64, I1]), "llvm.ctlz.i64")
    vi32 = vec(I32); vf = vec(F32); vi64 = vec(I64)
    r2v = splat(builder, r2)
    zero_i = ir.Constant(vi32, [0] * LANES)
    zero_f = ir.Constant(vf, [0.0] * LANES)
    init = {"nxt": zero_i, "end": zero_i, "off": zero_f, "qx": zero_f, "qy": zero_f, "qz": zero_f, "lq": zero_i,
            "busy": ir.Constant(I64, 0), "pos": ir.Constant(I64, 0), "done": ir.Constant(I64, (1 << LANES) - 1)}
    for p in range(K):
        init["bd%d" % p] = r2v
        init["bj%d" % p] = ir.Constant(vi32, [-1] * LANES)
    names = list(init)
    entry = builder.block
    refill = builder.append_basic_block("s.k%d.refill" % K)
    trim_head = builder.append_basic_block("s.k%d.trim" % K)
    trim_body = builder.append_basic_block("s.k%d.trimb" % K)
    trim_end = builder.append_basic_block("s.k%d.trime" % K)
    loop = builder.append_basic_block("s.k%d.loop" % K)
    out = builder.append_basic_block("s.k%d.out" % K)
    builder.branch(refill)

    # refill: harvest the done lanes, give them the next queries
    builder.position_at_end(refill)
    rp = {n: builder.phi(init[n].type, name="r_" + n) for n in names}
    for n in names:
        rp[n].add_incoming(init[n], entry)
    S = dict(rp)
    done = S["done"]
    dmask = _bits_to_mask(builder, builder.and_(done, S["busy"]))  # (the first time round: no lane is busy)
    lq64 = builder.sext(S["lq"], vi64)
    mcount = ir.Constant(vi64, [0] * LANES)
    oj_s0 = cgutils.unpack_tuple(builder, a_oj.strides, 2)[0]
    for p in range(K):
        off_b = builder.add(builder.mul(lq64, splat(builder, ir.Constant(I64, 4))),
                            splat(builder, builder.mul(oj_s0, ir.Constant(I64, p))))
        scatter(builder, a_oj.data, off_b, S["bj%d" % p], dmask, I32, 4)
        mcount = builder.add(mcount, builder.zext(builder.fcmp_ordered("<", S["bd%d" % p], r2v), vi64))
    scatter(builder, a_om.data, builder.mul(lq64, splat(builder, ir.Constant(I64, 8))), mcount, dmask, I64, 8)
    left = builder.sub(n_search, S["pos"])
    have = builder.call(ctpop, [done])
    avail = builder.select(builder.icmp_signed("<", have, left), have, left)
    excess = builder.sub(have, avail)
    pre_trim = builder.block
    builder.branch(trim_head)
    builder.position_at_end(trim_head)
    cur = builder.phi(I64)
    ex = builder.phi(I64)
    cur.add_incoming(done, pre_trim)
    ex.add_incoming(excess, pre_trim)
    builder.cbranch(builder.icmp_signed(">", ex, ir.Constant(I64, 0)), trim_body, trim_end)
    builder.position_at_end(trim_body)
    hb = builder.sub(ir.Constant(I64, 63), builder.call(ctlz, [cur, ir.Constant(I1, 0)]))
    cur2 = builder.and_(cur, builder.not_(builder.shl(ir.Constant(I64, 1), hb)))
    cur.add_incoming(cur2, trim_body)
    ex.add_incoming(builder.sub(ex, ir.Constant(I64, 1)), trim_body)
    builder.branch(trim_head)
    builder.position_at_end(trim_end)
    fill = cur
    fmask = _bits_to_mask(builder, fill)
    exp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi64, [I64.as_pointer(), vec(I1), vi64]),
                                         "llvm.masked.expandload.v%di64" % LANES)
    sptr = builder.gep(a_se.data, [S["pos"]])
    qn = builder.trunc(builder.call(exp, [sptr, fmask, ir.Constant(vi64, [0] * LANES)]), vi32)
    qn64 = builder.sext(qn, vi64)
    sp_s0 = cgutils.unpack_tuple(builder, a_sp.strides, 2)[0]
    hq_s0 = cgutils.unpack_tuple(builder, a_hq.strides, 2)[0]
    b4 = builder.mul(qn64, splat(builder, ir.Constant(I64, 4)))
    s0 = gather(builder, a_sp.data, b4, fmask, I32, 4)
    s1 = gather(builder, a_sp.data, builder.add(b4, splat(builder, sp_s0)), fmask, I32, 4)
    so = gather(builder, a_so.data, b4, fmask, F32, 4)
    qs = [gather(builder, a_hq.data, builder.add(b4, splat(builder, builder.mul(hq_s0, ir.Constant(I64, c)))),
                    fmask, F32, 4) for c in range(3)]
    N = {}
    N["nxt"] = builder.select(fmask, s0, S["nxt"])
    N["end"] = builder.select(fmask, s1, S["end"])
    N["off"] = builder.select(fmask, so, S["off"])
    for c, n in enumerate(("qx", "qy", "qz")):
        N[n] = builder.select(fmask, qs[c], S[n])
    N["lq"] = builder.select(fmask, qn, S["lq"])
    for p in range(K):
        N["bd%d" % p] = builder.select(fmask, r2v, S["bd%d" % p])
        N["bj%d" % p] = builder.select(fmask, ir.Constant(vi32, [-1] * LANES), S["bj%d" % p])
    N["busy"] = builder.or_(builder.and_(S["busy"], builder.not_(done)), fill)
    N["pos"] = builder.add(S["pos"], avail)
    N["done"] = ir.Constant(I64, 0)
    refill_end = builder.block
    builder.cbranch(builder.icmp_signed("==", N["busy"], ir.Constant(I64, 0)), out, loop)

    # the lock-step loop
    builder.position_at_end(loop)
    lp = {n: builder.phi(N[n].type, name="l_" + n) for n in names}
    for n in names:
        lp[n].add_incoming(N[n], refill_end)
    L = dict(lp)
    q = [L["qx"], L["qy"], L["qz"]]
    bd = [L["bd%d" % p] for p in range(K)]
    bj = [L["bj%d" % p] for p in range(K)]
    nxt2, cn, x = _candidate(builder, a_unit, a_code, a_np, L["nxt"], L["end"], L["off"], q, bd[K - 1])
    new = [_inserted(builder, x, cn, bd[p], bd[p - 1] if p else None, bj[p], bj[p - 1] if p else None) for p in range(K)]
    d2 = _done_mask(builder, nxt2, L["end"])
    dn = builder.and_(d2, L["busy"])
    T = dict(L)
    T["nxt"] = nxt2
    for p in range(K):
        T["bd%d" % p], T["bj%d" % p] = new[p]
    T["done"] = dn
    back = builder.block
    for n in names:
        lp[n].add_incoming(T[n], back)
        rp[n].add_incoming(T[n], back)
    builder.cbranch(_stop(builder, dn, L["busy"], stop_at), refill, loop)
    builder.position_at_end(out)




@intrinsic
def _search_lanes_ir(typingctx, cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j,
                     out_m, stop_at):
    """``search_lanes`` in compiled code: a loop per k up to ``K_REGISTERS`` (other k: nothing)."""
    if not (isinstance(cand_unit, types.Array) and cand_unit.ndim == 1 and cand_unit.dtype == types.float32
            and isinstance(cand_code, types.Array) and cand_code.ndim == 1 and cand_code.dtype == types.int32
            and isinstance(node_pos, types.Array) and node_pos.ndim == 2 and node_pos.dtype == types.float32
            and isinstance(k, types.Integer) and is_c_array(span, 2, types.int32) and is_c_array(span_off, 1, types.float32) and is_c_array(qpos, 2, types.float32)
            and is_c_array(search, 1, types.int64) and isinstance(n_search, types.Integer) and r2 == types.float32
            and is_c_array(out_j, 2, types.int32) and is_c_array(out_m, 1, types.int64) and isinstance(stop_at, types.Integer)):
        return None
    sig = types.void(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                     stop_at)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 2, 3, 4, 5, 6, 10, 11)]
        n_search64 = context.cast(builder, args[7], signature.args[7], types.int64)
        k64 = context.cast(builder, args[9], signature.args[9], types.int64)
        stop64 = context.cast(builder, args[12], signature.args[12], types.int64)
        merge = builder.append_basic_block("search.merge")
        switch = builder.switch(k64, merge)
        for kk in range(1, K_REGISTERS + 1):
            block = builder.append_basic_block("search.k%d" % kk)
            switch.add_case(ir.Constant(I64, kk), block)
            builder.position_at_end(block)
            _search_k(builder, arrays, kk, n_search64, args[8], stop64)
            builder.branch(merge)
        builder.position_at_end(merge)
        return context.get_dummy_value()

    return sig, codegen


def search_lanes(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                 stop_at):
    """The k nearest candidates of every query of ``search[:n_search]``, ``LANES`` at a time.

    Query ``i`` walks candidate rows ``span[0, i]:span[1, i]`` (a non-empty list) with stop
    offset ``span_off[i]`` from the point ``qpos[:, i]``, exactly as ``lock_step`` walks a
    lane; when it ends, ``out_j[:k, i]`` receives its best node rows (nearest first, -1 past
    the found ones) and ``out_m[i]`` how many were strictly closer than ``sqrt(r2)``. Lanes
    are harvested and refilled once ``stop_at`` of them (or all busy ones) have ended.

    For 1 <= k <= ``K_REGISTERS`` only (other k: nothing is written; use ``lock_steps``).
    span int32 (2, n), span_off float32 (n,), qpos float32 (>= 3, n), search int64
    (>= n_search,), out_j int32 (>= k, n), out_m int64 (n,): all C-contiguous; r2 float32.
    """
    # Plain Python (NUMBA_DISABLE_JIT=1): the same walk with lock_steps; compiled code uses
    # the overload below.
    if 1 <= int(k) <= K_REGISTERS:
        drive_lock_steps(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, int(k), out_j,
                         out_m, stop_at)


@njit(cache=True, inline="always")
def _start_lane(l, i, span, span_off, qpos, r2, k, lane_i, lane_f, best_d2, best_j):
    """Put query ``i`` (candidate rows ``span[:, i]``, offset ``span_off[i]``, point
    ``qpos[:3, i]``) on lane ``l``."""
    lane_i[0, l] = span[0, i]
    lane_i[1, l] = span[1, i]
    lane_f[0, l] = span_off[i]
    lane_f[1, l] = qpos[0, i]
    lane_f[2, l] = qpos[1, i]
    lane_f[3, l] = qpos[2, i]
    for p in range(k):
        best_d2[p, l] = r2
        best_j[p, l] = -1


#: Candidate lists of a lane search: ``unit`` float32 (>= 1,) (the distance step,
#: first value), ``code`` int32 (C,) (each candidate's node row and lower-bound
#: distance, :data:`CODE_BITS`), ``node_pos`` float32 (N, 3) (node positions, any
#: strides).
Candidates = namedtuple("Candidates", ["unit", "code", "node_pos"])

#: The queries of a lane search: ``span`` int32 (2, n) (query i walks candidate rows
#: ``span[0, i]:span[1, i]``), ``span_off`` float32 (n,) (its stop offset), ``qpos``
#: float32 (>= 3, n) (its point), ``search`` int64 (>= n_search,) (the queries to run,
#: in order) and ``n_search`` int.
LaneQueries = namedtuple("LaneQueries", ["span", "span_off", "qpos", "search", "n_search"])


def drive_lock_steps(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                     stop_at):
    """``search_lanes``' walk for any ``k >= 1`` (same arguments, same results), driving
    ``lock_steps`` and refilling the ended lanes one by one in scalar code: the evidence
    step's search for k above ``K_REGISTERS``, and ``search_lanes``' plain-Python body.

    ``drive_lanes(Candidates(cand_unit, cand_code, node_pos), LaneQueries(span, span_off,
    qpos, search, n_search), r2, k, out_j, out_m, stop_at)``; callable from Python and,
    by the same name and arguments, from ``@njit`` code (the overload below).
    """
    drive_lanes(Candidates(cand_unit, cand_code, node_pos), LaneQueries(span, span_off, qpos, search, n_search),
                r2, k, out_j, out_m, stop_at)


@overload(drive_lock_steps, inline="always")
def _ol_drive_lock_steps(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j,
                         out_m, stop_at):
    def impl(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m, stop_at):
        drive_lanes(Candidates(cand_unit, cand_code, node_pos), LaneQueries(span, span_off, qpos, search, n_search),
                    r2, k, out_j, out_m, stop_at)
    return impl


@njit(cache=True, inline="always")
def drive_lanes(cands, queries, r2, k, out_j, out_m, stop_at):
    """``drive_lock_steps`` with grouped arguments: the k nearest candidates of every query
    of ``queries.search[:queries.n_search]`` (``LaneQueries``) among their lists
    (``Candidates``), ``LANES`` at a time, ended lanes refilled one by one.

    r2 : float32 (only nodes strictly closer than ``sqrt(r2)`` count in ``out_m``);
    k : int >= 1;  out_j : int32 (>= k, n), written: column i the best node rows of
    query i, nearest first, -1 past the found ones;  out_m : int64 (n,), written: how
    many were strictly closer than ``sqrt(r2)``;  stop_at : int, lanes that must have
    ended before ``lock_steps`` returns (see ``lock_steps``).
    """
    cand_unit, cand_code, node_pos = cands
    span, span_off, qpos, search, n_search = queries
    lane_i = np.zeros((2, LANES), np.int32)
    lane_f = np.zeros((4, LANES), np.float32)
    best_d2 = np.empty((k, LANES), np.float32)
    best_j = np.empty((k, LANES), np.int32)
    lane_q = np.zeros(LANES, np.int64)
    nxt = 0
    busy = np.int64(0)
    for l in range(min(LANES, n_search)):
        lane_q[l] = search[nxt]
        _start_lane(l, search[nxt], span, span_off, qpos, r2, k, lane_i, lane_f, best_d2, best_j)
        nxt += 1
        busy |= np.int64(1) << l
    while busy != 0:
        done = lock_steps(cand_unit, cand_code, node_pos, lane_i, lane_f, best_d2, best_j, k, busy, stop_at)
        while done != 0:
            l = lowest_bit(done)
            done &= done - 1
            i = lane_q[l]
            m = 0
            for p in range(k):
                out_j[p, i] = best_j[p, l]
                m += best_d2[p, l] < r2
            out_m[i] = m
            if nxt < n_search:
                lane_q[l] = search[nxt]
                _start_lane(l, search[nxt], span, span_off, qpos, r2, k, lane_i, lane_f, best_d2, best_j)
                nxt += 1
            else:
                busy &= ~(np.int64(1) << l)


@overload(search_lanes, inline="always")
def _ol_search_lanes(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                     stop_at):
    def impl(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m, stop_at):
        _search_lanes_ir(cand_unit, cand_code, node_pos, span, span_off, qpos, search, n_search, r2, k, out_j, out_m,
                         stop_at)
    return impl


@intrinsic
def _popcount_ir(typingctx, mask):
    if mask != types.int64:
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.int64(types.int64), codegen


@intrinsic
def _lowest_bit_ir(typingctx, mask):
    if mask != types.int64:
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64, I1]), "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(I1, 0)])

    return types.int64(types.int64), codegen


@intrinsic
def _prefetch_ir(typingctx, a, i):
    if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        (stride,) = cgutils.unpack_tuple(builder, ary.strides, 1)
        idx = context.cast(builder, args[1], signature.args[1], types.int64)
        base = builder.ptrtoint(ary.data, I64)
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.inttoptr(builder.add(base, builder.mul(idx, stride)), i8p)
        suffix = "p0" if _llvm.llvm_version_info[0] >= 17 else i8p.intrinsic_name
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]),
                                            "llvm.prefetch." + suffix)
        # read, high temporal locality, data cache
        builder.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return types.void(a, i), codegen


# Public names: plain Python for NUMBA_DISABLE_JIT=1, the intrinsics in compiled code.


def popcount(mask):
    """Number of set bits of an int64 (its 64-bit two's complement pattern)."""
    return np.int64(bin(int(mask) & 0xFFFF_FFFF_FFFF_FFFF).count("1"))


def lowest_bit(mask):
    """Index of the lowest set bit of an int64 (64 for zero)."""
    u = int(mask) & 0xFFFF_FFFF_FFFF_FFFF
    return np.int64((u & -u).bit_length() - 1 if u else 64)


def prefetch(a, i):
    """Ask the CPU to bring ``a[i]`` (a 1-D array, any stride) into the caches; no effect on results.

    ``i`` must be a valid index (the address is computed, never checked).
    """


@overload(popcount, inline="always")
def _ol_popcount(mask):
    return lambda mask: _popcount_ir(mask)


@overload(lowest_bit, inline="always")
def _ol_lowest_bit(mask):
    return lambda mask: _lowest_bit_ir(mask)


@overload(prefetch, inline="always")
def _ol_prefetch(a, i):
    return lambda a, i: _prefetch_ir(a, i)
