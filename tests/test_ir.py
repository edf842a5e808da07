"""``kernels.ir``: each vector-IR helper run in a small intrinsic, against NumPy."""

import numpy as np
import pytest
from llvmlite import ir as llir
from numba import njit, types
from numba.extending import intrinsic

from kernels import ir

L = ir.LANES
I8 = llir.IntType(8)
_F = types.Array(types.float32, 1, "C")
_I = types.Array(types.int64, 1, "C")
_B = types.Array(types.boolean, 1, "C")


def _arrays(context, builder, signature, args):
    return [context.make_array(t)(context, builder, v) if isinstance(t, types.Array) else v
            for t, v in zip(signature.args, args)]


def _load(builder, a, elem):
    """The first LANES elements of a C-contiguous array, as one vector."""
    return builder.load(ir.lane_row(builder, a.data, llir.Constant(ir.I64, 0), elem), align=4)


def _mask(builder, a):
    """A bool (LANES,) array as an i1 vector."""
    return builder.icmp_unsigned("!=", _load(builder, a, I8), llir.Constant(ir.vec(I8), [0] * L))


def _store(builder, value, a):
    builder.store(value, ir.lane_row(builder, a.data, llir.Constant(ir.I64, 0), value.type.element), align=4)


@intrinsic
def _splat_ir(typingctx, x, out):
    def codegen(context, builder, signature, args):
        _store(builder, ir.splat(builder, args[0]), _arrays(context, builder, signature, args)[1])
        return context.get_dummy_value()
    return types.void(types.float32, _F), codegen


@intrinsic
def _lane_row_ir(typingctx, a, row, out):
    def codegen(context, builder, signature, args):
        arr, row, out = _arrays(context, builder, signature, args)
        _store(builder, builder.load(ir.lane_row(builder, arr.data, row, ir.F32), align=4), out)
        return context.get_dummy_value()
    return types.void(types.Array(types.float32, 2, "C"), types.int64, _F), codegen


@intrinsic
def _vector_pointers_ir(typingctx, a, offsets, out):
    def codegen(context, builder, signature, args):
        arr, offs, out = _arrays(context, builder, signature, args)
        ptrs = ir.vector_pointers(builder, arr.data, _load(builder, offs, ir.I64), ir.F32)
        base = ir.splat(builder, builder.ptrtoint(arr.data, ir.I64))
        _store(builder, builder.sub(builder.ptrtoint(ptrs, ir.vec(ir.I64)), base), out)
        return context.get_dummy_value()
    return types.void(_F, _I, _I), codegen


@intrinsic
def _gather_ir(typingctx, a, idx, mask, out):
    def codegen(context, builder, signature, args):
        arr, idx, mask, out = _arrays(context, builder, signature, args)
        offs = builder.mul(_load(builder, idx, ir.I64), ir.splat(builder, llir.Constant(ir.I64, 4)))
        _store(builder, ir.gather(builder, arr.data, offs, _mask(builder, mask), ir.F32), out)
        return context.get_dummy_value()
    return types.void(_F, _I, _B, _F), codegen


@intrinsic
def _scatter_ir(typingctx, a, idx, values, mask):
    def codegen(context, builder, signature, args):
        arr, idx, values, mask = _arrays(context, builder, signature, args)
        offs = builder.mul(_load(builder, idx, ir.I64), ir.splat(builder, llir.Constant(ir.I64, 4)))
        ir.scatter(builder, arr.data, offs, _load(builder, values, ir.F32), _mask(builder, mask), ir.F32)
        return context.get_dummy_value()
    return types.void(_F, _I, _F, _B), codegen


@intrinsic
def _masked_load_ir(typingctx, a, start, mask, out):
    def codegen(context, builder, signature, args):
        arr, start, mask, out = _arrays(context, builder, signature, args)
        v = ir.masked_load(builder, builder.gep(arr.data, [start]), _mask(builder, mask), ir.F32)
        _store(builder, v, out)
        return context.get_dummy_value()
    return types.void(_F, types.int64, _B, _F), codegen


@intrinsic
def _masked_store_ir(typingctx, values, a, start, mask):
    def codegen(context, builder, signature, args):
        values, arr, start, mask = _arrays(context, builder, signature, args)
        ir.masked_store(builder, _load(builder, values, ir.F32), builder.gep(arr.data, [start]),
                        _mask(builder, mask))
        return context.get_dummy_value()
    return types.void(_F, _F, types.int64, _B), codegen


@intrinsic
def _compress_store_ir(typingctx, values, mask, out):
    """Compress-store ``values`` to ``out``; returns the mask's count (``mask_count``)."""
    def codegen(context, builder, signature, args):
        values, mask, out = _arrays(context, builder, signature, args)
        m = _mask(builder, mask)
        ir.compress_store(builder, _load(builder, values, ir.F32), out.data, m)
        return ir.mask_count(builder, m)
    return types.int64(_F, _B, _F), codegen


@intrinsic
def _block_loop_ir(typingctx, start, stop):
    """``(sum of i0, number of blocks)`` over ``range(start, stop, LANES)``."""
    def codegen(context, builder, signature, args):
        one = llir.Constant(ir.I64, 1)
        total, count = ir.block_loop(builder, args[0], args[1], [llir.Constant(ir.I64, 0)] * 2,
                                     lambda b, i0, v: [b.add(v[0], i0), b.add(v[1], one)], "test")
        return context.make_tuple(builder, signature.return_type, [total, count])
    return types.UniTuple(types.int64, 2)(types.int64, types.int64), codegen


@njit
def _splat(x, out):
    _splat_ir(x, out)


@njit
def _lane_row(a, row, out):
    _lane_row_ir(a, row, out)


@njit
def _vector_pointers(a, offsets, out):
    _vector_pointers_ir(a, offsets, out)


@njit
def _gather(a, idx, mask, out):
    _gather_ir(a, idx, mask, out)


@njit
def _scatter(a, idx, values, mask):
    _scatter_ir(a, idx, values, mask)


@njit
def _masked_load(a, start, mask, out):
    _masked_load_ir(a, start, mask, out)


@njit
def _masked_store(values, a, start, mask):
    _masked_store_ir(values, a, start, mask)


@njit
def _compress_store(values, mask, out):
    return _compress_store_ir(values, mask, out)


@njit
def _block_loop(start, stop):
    return _block_loop_ir(start, stop)


def _masks():
    rng = np.random.default_rng(3)
    return [np.zeros(L, bool), np.ones(L, bool), np.arange(L) % 3 == 0] + [rng.random(L) < 0.5 for _ in range(4)]


def test_types_and_vec():
    assert ir.LANES == 16 and ir.F32 == llir.FloatType() and ir.I1 == llir.IntType(1)
    assert ir.I32 == llir.IntType(32) and ir.I64 == llir.IntType(64)
    assert ir.vec(ir.F32) == llir.VectorType(llir.FloatType(), L)


def test_pointer_suffix_names_a_pointer():
    s = ir.pointer_suffix(ir.F32)
    assert s == "p0" or s == "p0f32"
    assert ir.pointer_suffix(ir.vec(ir.I32)) in ("p0", "p0v16i32")


def test_is_c_array():
    f32 = types.float32
    assert ir.is_c_array(types.Array(f32, 2, "C"), 2, f32)
    assert not ir.is_c_array(types.Array(f32, 2, "A"), 2, f32)
    assert not ir.is_c_array(types.Array(f32, 1, "C"), 2, f32)
    assert not ir.is_c_array(types.Array(types.float64, 2, "C"), 2, f32)
    assert not ir.is_c_array(f32, 0, f32)


def test_splat():
    out = np.zeros(L, np.float32)
    _splat(np.float32(-2.5), out)
    np.testing.assert_array_equal(out, np.full(L, -2.5, np.float32))


@pytest.mark.parametrize("row", [0, 1, 4])
def test_lane_row_is_the_row_as_a_vector(row):
    a = np.arange(5 * L, dtype=np.float32).reshape(5, L)
    out = np.zeros(L, np.float32)
    _lane_row(a, np.int64(row), out)
    np.testing.assert_array_equal(out, a[row])


def test_vector_pointers_add_byte_offsets():
    offs = np.arange(L, dtype=np.int64) * 12 - 8
    out = np.zeros(L, np.int64)
    _vector_pointers(np.zeros(4, np.float32), offs, out)
    np.testing.assert_array_equal(out, offs)


@pytest.mark.parametrize("mask", _masks())
def test_gather_reads_the_masked_lanes_only(mask):
    a = np.arange(100, dtype=np.float32) * np.float32(0.5) + 1
    idx = np.random.default_rng(1).integers(0, 100, L)
    idx[~mask] = -1  # masked-off lanes must not read (and give 0)
    out = np.full(L, 9.0, np.float32)
    _gather(a, idx, mask, out)
    want = np.where(mask, a[np.where(mask, idx, 0)], 0).astype(np.float32)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("mask", _masks())
def test_scatter_writes_the_masked_lanes_only(mask):
    a = np.full(64, -1.0, np.float32)
    idx = np.random.default_rng(2).permutation(64)[:L].astype(np.int64)
    values = np.arange(L, dtype=np.float32) + 10
    _scatter(a, idx, values, mask)
    want = np.full(64, -1.0, np.float32)
    want[idx[mask]] = values[mask]
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("mask", _masks())
@pytest.mark.parametrize("start", [0, 5])
def test_masked_load(mask, start):
    a = np.arange(L + start, dtype=np.float32) * 3
    out = np.full(L, 7.0, np.float32)
    _masked_load(a, np.int64(start), mask, out)
    np.testing.assert_array_equal(out, np.where(mask, a[start:start + L], 0).astype(np.float32))


def test_masked_load_past_the_end_reads_nothing_there():
    a = np.arange(40, dtype=np.float32)
    mask = np.arange(L) < 4  # lanes 4.. would be past the end of a
    out = np.full(L, 7.0, np.float32)
    _masked_load(a, np.int64(36), mask, out)
    np.testing.assert_array_equal(out, np.where(mask, np.arange(36, 36 + L), 0).astype(np.float32))


@pytest.mark.parametrize("mask", _masks())
@pytest.mark.parametrize("start", [0, 3])
def test_masked_store(mask, start):
    a = np.full(L + 8, -1.0, np.float32)
    values = np.arange(L, dtype=np.float32) + 100
    _masked_store(values, a, np.int64(start), mask)
    want = np.full(L + 8, -1.0, np.float32)
    want[start:start + L][mask] = values[mask]
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("mask", _masks())
def test_compress_store_and_mask_count(mask):
    values = np.arange(L, dtype=np.float32) * 2 + 1
    out = np.full(L, -1.0, np.float32)
    n = _compress_store(values, mask, out)
    assert n == int(mask.sum())
    want = np.full(L, -1.0, np.float32)
    want[:n] = values[mask]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("start, stop", [(0, 0), (0, 1), (0, L), (0, L + 1), (5, 100), (40, 3)])
def test_block_loop_steps_by_lanes(start, stop):
    blocks = range(start, stop, L)
    assert _block_loop(np.int64(start), np.int64(stop)) == (sum(blocks), len(blocks))
