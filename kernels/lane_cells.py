"""The grid cell of many queries at once: the first step of the nearest-node search.

``kernels.evidence.build_node_grid`` gives each object a uniform grid and, per
cell, a list of candidate nodes. Before the search walks those lists
(``kernels.lanes.search_lanes``), each query needs its cell's list and its
distance to the cell centre. ``cell_span`` does that for one query. One query at
a time, with the query's point and object read through the hypothesis rows, it
cost ~19 ns per query on the development machine (18% of the search, 2026-12-03);
``cell_spans`` does ``LANES`` queries at a time with vector loads, gathers of the
objects' grid rows and of the cell table, and a compress-store of the queries
whose list is not empty. It is LLVM IR for the same reason as ``kernels.lanes``
(numba does not vectorise these gathers itself).

Arrays (all C-contiguous):

- ``grid_origin`` float32 (O, 3), ``grid_index`` int64 (O, 4), ``cand_start``
  int64 (cells + 1,): from ``build_node_grid``;
- ``qobj`` int32 (>= n,): each query's object; ``qpos`` float32 (>= 3, >= n):
  rows 0-2 its point (one column per query, the layout the step's ``hq`` has);
- ``span`` int32 (2, >= n), ``span_off`` float32 (>= n,), ``search`` int64
  (>= n,): written, see ``cell_spans``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._flags import FASTMATH
from .ir import (F32, I32, I64, LANES, block_loop, compress_store, gather, is_c_array, mask_count, masked_load,
                 masked_store, splat, vec)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def cell_span(grid_origin, grid_index, cand_start, o, inv_cell, cell, qx, qy, qz):
    """The candidate list of the cell of object ``o``'s grid that holds ``q``.

    Returns ``(c0, c1, off)``: candidate rows ``c0:c1`` (``build_node_grid``) and
    ``off = |q - cell centre|`` (float32), or ``(0, 0, 0)`` when ``q`` is outside the
    padded grid or NaN (no node within the radius).
    """
    ox = grid_origin[o, 0]
    oy = grid_origin[o, 1]
    oz = grid_origin[o, 2]
    nx = grid_index[o, 0]
    ny = grid_index[o, 1]
    nz = grid_index[o, 2]
    fx = (qx - ox) * inv_cell
    fy = (qy - oy) * inv_cell
    fz = (qz - oz) * inv_cell
    # compared as floats: no integer overflow far away; NaN fails every compare
    if not (fx >= 0 and fy >= 0 and fz >= 0 and fx < nx and fy < ny and fz < nz):
        return 0, 0, np.float32(0.0)
    cx = int(fx)
    cy = int(fy)
    cz = int(fz)
    cid = grid_index[o, 3] + cx + nx * (cy + ny * cz)
    half = np.float32(0.5)
    ex = qx - (ox + (np.float32(cx) + half) * cell)
    ey = qy - (oy + (np.float32(cy) + half) * cell)
    ez = qz - (oz + (np.float32(cz) + half) * cell)
    return cand_start[cid], cand_start[cid + 1], np.sqrt(ex * ex + ey * ey + ez * ez)


def _spans_block(builder, A, i0, n, inv_cell, cell, n_search):
    """IR of ``cell_spans`` for the queries ``i0 .. i0 + LANES - 1`` (those below ``n``); returns the new
    ``n_search``."""
    a_go, a_gi, a_cs, a_qo, a_qp, a_sp, a_so, a_se = A
    vf = vec(F32)
    vi64 = vec(I64)
    lane = builder.add(splat(builder, i0), ir.Constant(vi64, list(range(LANES))))
    tail = builder.icmp_signed("<", lane, splat(builder, n))
    qp_row = cgutils.unpack_tuple(builder, a_qp.shape, 2)[1]
    sp_row = cgutils.unpack_tuple(builder, a_sp.shape, 2)[1]
    o = builder.sext(masked_load(builder, builder.gep(a_qo.data, [i0]), tail, I32), vi64)
    q = [masked_load(builder, builder.gep(a_qp.data, [builder.add(builder.mul(ir.Constant(I64, c), qp_row), i0)]),
                      tail, F32) for c in range(3)]
    go_off = builder.mul(o, splat(builder, ir.Constant(I64, 12)))
    gi_off = builder.mul(o, splat(builder, ir.Constant(I64, 32)))
    org = [gather(builder, a_go.data, builder.add(go_off, splat(builder, ir.Constant(I64, 4 * c))), tail, F32)
           for c in range(3)]
    dims = [gather(builder, a_gi.data, builder.add(gi_off, splat(builder, ir.Constant(I64, 8 * c))), tail, I64, 8)
            for c in range(4)]
    zero = ir.Constant(vf, [0.0] * LANES)
    ivc = splat(builder, inv_cell)
    f = [builder.fmul(builder.fsub(q[c], org[c]), ivc) for c in range(3)]
    inside = tail
    for c in range(3):
        # exact: the grid's cell counts are far below 2**24
        inside = builder.and_(inside, builder.fcmp_ordered(">=", f[c], zero))
        inside = builder.and_(inside, builder.fcmp_ordered("<", f[c], builder.sitofp(dims[c], vf)))
    # truncation is the floor here (f >= 0); lanes outside are zeroed first (fptosi of NaN is poison)
    ci = [builder.fptosi(builder.select(inside, f[c], zero), vi64) for c in range(3)]
    cid = builder.add(dims[3], builder.add(ci[0], builder.mul(dims[0], builder.add(ci[1], builder.mul(dims[1], ci[2])))))
    cid8 = builder.mul(cid, splat(builder, ir.Constant(I64, 8)))
    c0 = gather(builder, a_cs.data, cid8, inside, I64, 8)
    c1 = gather(builder, a_cs.data, builder.add(cid8, splat(builder, ir.Constant(I64, 8))), inside, I64, 8)
    half = ir.Constant(vf, [0.5] * LANES)
    cellv = splat(builder, cell)
    d2 = None
    for c in range(3):
        # plain multiplies and adds: ``cell_span`` compiles to unfused ones too (tests hold the two bit for bit)
        centre = builder.fadd(org[c], builder.fmul(builder.fadd(builder.sitofp(ci[c], vf), half), cellv))
        e = builder.fsub(q[c], centre)
        d2 = builder.fmul(e, e) if d2 is None else builder.fadd(d2, builder.fmul(e, e))
    sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf]), "llvm.sqrt.v%df32" % LANES)
    off = builder.select(inside, builder.call(sqrt, [d2]), zero)
    masked_store(builder, builder.trunc(c0, vec(I32)), builder.gep(a_sp.data, [i0]), tail)
    masked_store(builder, builder.trunc(c1, vec(I32)), builder.gep(a_sp.data, [builder.add(sp_row, i0)]), tail)
    masked_store(builder, off, builder.gep(a_so.data, [i0]), tail)
    found = builder.and_(inside, builder.icmp_signed("<", c0, c1))
    compress_store(builder, lane, builder.gep(a_se.data, [n_search]), found)
    return builder.add(n_search, mask_count(builder, found))


@intrinsic
def _cell_spans_ir(typingctx, grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off,
                   search):
    """``cell_spans`` in compiled code: a loop over blocks of ``LANES`` queries."""
    if not (is_c_array(grid_origin, 2, types.float32) and is_c_array(grid_index, 2, types.int64)
            and is_c_array(cand_start, 1, types.int64) and is_c_array(qobj, 1, types.int32) and is_c_array(qpos, 2, types.float32)
            and isinstance(n, types.Integer) and inv_cell == types.float32 and cell == types.float32
            and is_c_array(span, 2, types.int32) and is_c_array(span_off, 1, types.float32) and is_c_array(search, 1, types.int64)):
        return None
    sig = types.int64(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off, search)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 2, 3, 4, 8, 9, 10)]
        n64 = context.cast(builder, args[5], signature.args[5], types.int64)
        (ns,) = block_loop(builder, ir.Constant(I64, 0), n64, [ir.Constant(I64, 0)],
                            lambda b, i0, v: [_spans_block(b, arrays, i0, n64, args[6], args[7], v[0])], "spans")
        return ns

    return sig, codegen


def cell_spans(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off, search):
    """``cell_span`` of the queries ``i < n``: object ``qobj[i]``, point ``qpos[:3, i]``.

    Writes ``span[0, i]``, ``span[1, i]`` (the candidate rows c0, c1 as int32),
    ``span_off[i]`` (float32 distance to the cell centre; 0, 0, 0 outside the grid
    or for a NaN point) and, in ascending order, the queries whose list is not
    empty into ``search``; returns how many (int64). ``inv_cell`` and ``cell``
    are float32. Every array C-contiguous, with the dtypes of the module note.
    """
    # Plain Python (NUMBA_DISABLE_JIT=1): query by query; compiled code uses the overload below.
    ns = 0
    for i in range(int(n)):
        c0, c1, off = cell_span(grid_origin, grid_index, cand_start, qobj[i], inv_cell, cell,
                                qpos[0, i], qpos[1, i], qpos[2, i])
        span[0, i] = c0
        span[1, i] = c1
        span_off[i] = off
        if c1 > c0:
            search[ns] = i
            ns += 1
    return ns


@overload(cell_spans, inline="always")
def _ol_cell_spans(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off, search):
    def impl(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off, search):
        return _cell_spans_ir(grid_origin, grid_index, cand_start, qobj, qpos, n, inv_cell, cell, span, span_off,
                              search)
    return impl
