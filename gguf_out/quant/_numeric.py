"""Scalar helpers for the compiled quantizers: float32 bit casts, ggml's nearest_int, fp16 conversions.

Everything here is float32 arithmetic, one rounding per operation and no fused multiply-add (numba compiles without
fast-math, so LLVM neither contracts nor reorders), which is what makes the kernels byte-identical to ggml's C
reference quantizers (gguf-targets.md §8.3). The bit casts refuse any argument that is not already float32 / int32,
so an accidental promotion to float64 in a kernel is a compile error instead of different bytes.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

F32 = np.float32
JIT = dict(nogil=True, cache=True, error_model="numpy")   # error_model numpy: x/0 gives inf/nan as in C


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of a float32 as int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, x):
    """The float32 whose IEEE bits are the int32 ``x``."""
    if x != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", **JIT)
def nearest_int(v):
    """ggml's nearest_int: round half to even through the 1.5 * 2**23 trick (also its garbage for huge values)."""
    b = f32_bits(v + F32(12582912.0))
    return (np.int64(b) & 0x7FFFFF) - 0x400000


@njit(inline="always", **JIT)
def fp16_bits(f):
    """float32 -> IEEE half bits, round to nearest even (ggml's GGML_FP32_TO_FP16; NaN -> quiet NaN 0x7E00)."""
    w = np.int64(f32_bits(f)) & 0xFFFFFFFF
    sign = (w >> 16) & 0x8000
    a = w & 0x7FFFFFFF
    if a > 0x7F800000:
        return sign | 0x7E00
    if a >= 0x477FF000:                       # rounds to at least 65520: inf
        return sign | 0x7C00
    if a >= 0x38800000:                       # a normal half: rebias the exponent, round 13 mantissa bits away
        r = a - 0x38000000
        r = r + 0xFFF + ((r >> 13) & 1)
        return sign | (r >> 13)
    # sub-normal half (or zero): |f| * 2**24 is exact and below 1024; round it to an integer, half to even
    return sign | nearest_int(abs(f) * F32(16777216.0))


@njit(inline="always", **JIT)
def fp16_value(h):
    """IEEE half bits -> float32 (exact)."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = F32(m) * F32(5.960464477539063e-08)       # 2**-24
        return -v if h & 0x8000 else v
    if e == 31:
        bits = 0x7F800000 | (m << 13)
    else:
        bits = ((e + 112) << 23) | (m << 13)
    if h & 0x8000:
        bits |= 0x80000000
    return bits_f32(np.int32(np.int64(bits) - (np.int64(1) << 32) if bits & 0x80000000 else bits))


@njit(inline="always", **JIT)
def fp16_round(f):
    """(bits, value) of f rounded to half: what ggml stores and what it reads back."""
    h = fp16_bits(f)
    return h, fp16_value(h)


@njit(inline="always", **JIT)
def put_u16(out, pos, h):
    out[pos] = h & 0xFF
    out[pos + 1] = (h >> 8) & 0xFF


@njit(inline="always", **JIT)
def I(v):  # short on purpose: every byte or level read into integer arithmetic goes through it
    """An array element (uint8 / int8) as int64, so numba's mixed signed/unsigned typing never yields a float."""
    return np.int64(v)


@njit(inline="always", **JIT)
def as_int8(v):
    """The int8 a C conversion to int8_t keeps (low 8 bits, two's complement)."""
    return ((v + 128) & 0xFF) - 128


@njit(inline="always", **JIT)
def trunc_int(v):
    """C's float -> int conversion (toward zero) as x86 compiles it (cvttss2si): out of the int32 range, inf and
    NaN give INT32_MIN, whose low byte is 0."""
    if v >= F32(-2147483648.0) and v < F32(2147483648.0):
        return np.int64(v)
    return np.int64(-2147483648)


@njit(inline="always", **JIT)
def round_away(v):
    """C's roundf (half away from zero), still as a float."""
    if not abs(v) < F32(8388608.0):          # already an integer (or inf / NaN)
        return v
    t = F32(np.int64(v))
    frac = v - t                             # exact
    if frac >= F32(0.5):
        return t + F32(1.0)
    if frac <= F32(-0.5):
        return t - F32(1.0)
    return t
