"""The vector-IR toolkit: LLVM IR helpers for kernels that work on ``LANES`` values at once.

Numba does not vectorise loops whose gathered reads and lane-state writes may
alias, so the lane kernels (``kernels.lanes``, ``kernels.lane_cells``,
``kernels.lane_paths``, ``kernels.lane_evidence``) are written as LLVM IR in
``numba.extending.intrinsic`` code generators. These are their building blocks:
each takes the ``llvmlite.ir.IRBuilder`` of the intrinsic being generated and
emits a few instructions, or is a typing-time check. Masked operations lower to
LLVM's ``llvm.masked.*`` intrinsics, which LLVM turns into the target's vector
instructions (AVX-512, AVX2) or scalar code elsewhere, so the IR is portable.

Conventions: a vector is ``LANES`` elements of an LLVM type (``vec(F32)``); a
mask is a vector of ``I1``; addresses are an element pointer plus int64 *byte*
offsets per lane; masked-off lanes read and write no memory.

The tests (``tests/test_ir.py``) run every helper in a small intrinsic and
compare it with NumPy.
"""

from llvmlite import binding as _llvm, ir
from numba import types
from numba.core import cgutils

__all__ = [
    "F32", "I1", "I32", "I64", "LANES",
    "block_loop", "compress_store", "gather", "is_c_array", "lane_row", "mask_count", "masked_load",
    "masked_store", "pointer_suffix", "scatter", "splat", "vec", "vector_pointers",
]

#: Lanes per vector (at most 64: lane masks are int64).
LANES = 16

#: LLVM element types: 1-bit (mask lanes), 32- and 64-bit integers, 32-bit float.
I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()


def vec(elem):
    """The LLVM vector type of ``LANES`` elements of type ``elem`` (e.g. ``vec(F32)``)."""
    return ir.VectorType(elem, LANES)


def splat(builder, value):
    """A vector with ``value`` (an IR scalar) in every lane."""
    vty = vec(value.type)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(vec(I32), [0] * LANES))


def lane_row(builder, data, row, elem):
    """Pointer to row ``row`` (an int64 IR value) of a C-contiguous (R, ``LANES``) array of
    ``elem`` whose data pointer is ``data``, as a pointer to one vector (load or store it
    whole)."""
    p = builder.gep(data, [builder.mul(row, ir.Constant(I64, LANES))])
    return builder.bitcast(p, vec(elem).as_pointer())


def pointer_suffix(ty):
    """How an overloaded LLVM intrinsic's name spells a pointer to ``ty`` (an element or a
    vector type): ``p0`` where LLVM has only opaque pointers (17 and later; a typed-pointer
    name there goes through LLVM's auto-upgrade, which crashed on LLVM 22), else ``p0f32``,
    ``p0v16f32``, ..."""
    if _llvm.llvm_version_info[0] >= 17:
        return "p0"
    return ty.as_pointer().intrinsic_name


def vector_pointers(builder, base, byte_offsets, elem):
    """A vector of ``elem`` pointers: ``base`` (an ``elem`` pointer) plus ``byte_offsets``
    (an int64 vector) in each lane."""
    addr = builder.add(splat(builder, builder.ptrtoint(base, I64)), byte_offsets)
    return builder.inttoptr(addr, vec(elem.as_pointer()))


def gather(builder, base, byte_offsets, mask, elem, align=4):
    """``elem`` values at ``base + byte_offsets`` (int64 vector) in the lanes of ``mask``, 0 elsewhere.

    Masked-off lanes read no memory, so their offsets may be anything.
    """
    vty = vec(elem)
    pty = vec(elem.as_pointer())
    name = "llvm.masked.gather.v%d%s.v%d%s" % (LANES, elem.intrinsic_name, LANES, pointer_suffix(elem))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [pty, I32, vec(I1), vty]), name)
    return builder.call(fn, [vector_pointers(builder, base, byte_offsets, elem), ir.Constant(I32, align), mask,
                             ir.Constant(vty, None)])


def scatter(builder, base, byte_offsets, values, mask, elem, align=4):
    """Store ``values`` at ``base + byte_offsets`` (int64 vector) in the lanes of ``mask``
    (the addresses of set lanes must be distinct); other lanes write nothing."""
    pty = vec(elem.as_pointer())
    name = "llvm.masked.scatter.v%d%s.v%d%s" % (LANES, elem.intrinsic_name, LANES, pointer_suffix(elem))
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), [vec(elem), pty, I32, vec(I1)]), name)
    builder.call(fn, [values, vector_pointers(builder, base, byte_offsets, elem), ir.Constant(I32, align), mask])


def masked_load(builder, ptr, mask, elem):
    """``LANES`` consecutive ``elem`` values from ``ptr`` in the lanes of ``mask`` (0 elsewhere;
    masked-off lanes read no memory, so a load may run past the end of an array there)."""
    vty = vec(elem)
    name = "llvm.masked.load.v%d%s.%s" % (LANES, elem.intrinsic_name, pointer_suffix(vty))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty.as_pointer(), I32, vec(I1), vty]),
                                        name)
    return builder.call(fn, [builder.bitcast(ptr, vty.as_pointer()), ir.Constant(I32, 4), mask,
                             ir.Constant(vty, None)])


def masked_store(builder, values, ptr, mask, align=4):
    """Store the vector ``values`` to ``LANES`` consecutive elements at ``ptr`` in the lanes
    of ``mask``; the other elements are left as they are."""
    vty = values.type
    name = "llvm.masked.store.v%d%s.%s" % (LANES, vty.element.intrinsic_name, pointer_suffix(vty))
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), I32, vec(I1)]), name)
    builder.call(fn, [values, builder.bitcast(ptr, vty.as_pointer()), ir.Constant(I32, align), mask])


def compress_store(builder, values, ptr, mask):
    """Store the lanes of ``mask`` of the vector ``values``, in lane order, to consecutive
    elements from ``ptr`` (as many as ``mask_count(mask)``)."""
    vty = values.type
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), [vty, vty.element.as_pointer(), vec(I1)]),
                                        "llvm.masked.compressstore.v%d%s" % (LANES, vty.element.intrinsic_name))
    builder.call(fn, [values, ptr, mask])


def mask_count(builder, mask):
    """How many lanes of the ``LANES`` x i1 ``mask`` are set, as an int64 IR value."""
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(I64, [I64]), "llvm.ctpop.i64")
    return builder.call(ctpop, [builder.zext(builder.bitcast(mask, ir.IntType(LANES)), I64)])


def block_loop(builder, start, stop, carried, body, name):
    """IR of ``for i0 in range(start, stop, LANES)`` carrying int64 values from block to block.

    ``start``, ``stop``: int64 IR values; ``carried``: the int64 IR values the loop starts
    with. ``body(builder, i0, values)`` emits one block's IR and returns the new values;
    returns the values after the last block (``carried`` when there is none). Block names
    start with ``name``.
    """
    entry = builder.block
    head = builder.append_basic_block(name + ".head")
    block = builder.append_basic_block(name + ".body")
    done = builder.append_basic_block(name + ".done")
    builder.branch(head)
    builder.position_at_end(head)
    i0 = builder.phi(I64)
    phis = [builder.phi(I64) for _ in carried]
    i0.add_incoming(start, entry)
    for phi, value in zip(phis, carried):
        phi.add_incoming(value, entry)
    builder.cbranch(builder.icmp_signed("<", i0, stop), block, done)
    builder.position_at_end(block)
    new = body(builder, i0, phis)
    i0.add_incoming(builder.add(i0, ir.Constant(I64, LANES)), builder.block)
    for phi, value in zip(phis, new):
        phi.add_incoming(value, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return phis


def is_c_array(ty, ndim, dtype):
    """Typing-time check: is the numba type ``ty`` a C-contiguous array of ``ndim``
    dimensions and element type ``dtype`` (a numba type such as ``types.float32``)?"""
    return isinstance(ty, types.Array) and ty.ndim == ndim and ty.dtype == dtype and ty.layout == "C"
