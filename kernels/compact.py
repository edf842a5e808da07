"""Compact (float16) storage with float32 compute.

Numba has no float16 type on the CPU, so a float16 store holds the IEEE
half-precision *bit patterns* in a ``uint16`` array (``store.view(np.float16)``
shows the values). Kernels read every stored value through ``as_f32`` and
write through ``from_f32``: for a float32 store these are the identity, for a
uint16 (float16-bits) store they are LLVM's ``fpext half`` / ``fptrunc`` (one
``vcvtph2ps`` / ``vcvtps2ph`` instruction per 8 or 16 values on x86 with F16C),
so the same kernel source serves both storages and vectorises for both.

Accuracy: float16 keeps 11 significant bits (relative error <= 2^-11, about
4.9e-4, for normal values; values below 6.1e-5 lose precision, above 65504
become infinity). ``to_float16_bits`` rejects values that would overflow.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

FLOAT16_MAX = 65504.0


@intrinsic
def _half_bits_to_f32(typingctx, bits):
    if bits != types.uint16:
        return None
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], ir.HalfType())
        return builder.fpext(half, ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_to_half_bits(typingctx, value):
    if value != types.float32:
        return None
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        half = builder.fptrunc(args[0], ir.HalfType())
        return builder.bitcast(half, ir.IntType(16))

    return sig, codegen


def as_f32(value):
    """A stored value as float32 (float32: itself; uint16: float16 bits widened).

    This Python body runs only with NUMBA_DISABLE_JIT=1; compiled code uses the overload.
    """
    if isinstance(value, np.uint16):
        return np.array(value, np.uint16).view(np.float16).astype(np.float32)[()]
    return np.float32(value)


@overload(as_f32, inline="always")
def _as_f32(value):
    if value == types.uint16:
        return lambda value: _half_bits_to_f32(value)
    if value == types.float32:
        return lambda value: value
    return None


def from_f32(value, like):
    """A float32 value in the storage type of ``like`` (a store array).

    This Python body runs only with NUMBA_DISABLE_JIT=1; compiled code uses the overload.
    """
    if like.dtype == np.uint16:
        return np.array(value, np.float32).astype(np.float16).view(np.uint16)[()]
    return np.float32(value)


@overload(from_f32, inline="always")
def _from_f32(value, like):
    if isinstance(like, types.Array) and like.dtype == types.uint16:
        return lambda value, like: _f32_to_half_bits(np.float32(value))
    if isinstance(like, types.Array) and like.dtype == types.float32:
        return lambda value, like: np.float32(value)
    return None


@njit(cache=True)
def _widen(bits, out):
    flat_in = bits.ravel()
    flat_out = out.ravel()
    for i in range(flat_in.shape[0]):
        flat_out[i] = _half_bits_to_f32(flat_in[i])


def to_float16_bits(a):
    """float32 array -> uint16 array of float16 bit patterns (same shape).

    Raises ValueError for values whose magnitude exceeds float16's range
    (65504) instead of silently storing infinity.
    """
    a = np.asarray(a, dtype=np.float32)
    if a.size and float(np.max(np.abs(a))) > FLOAT16_MAX:
        raise ValueError(f"values up to {float(np.max(np.abs(a))):g} exceed float16's range (+-{FLOAT16_MAX:g})")
    return np.ascontiguousarray(a.astype(np.float16).view(np.uint16))


def from_float16_bits(bits):
    """uint16 array of float16 bit patterns -> float32 array (same shape), in a kernel."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    _widen(bits, out)
    return out
