"""float32 / bfloat16 -> IEEE half, and half / bfloat16 -> float32, in one compiled pass (the f16 / f32 outputs).

LLVM's fptrunc to half rounds to nearest even, as numpy's ``astype(np.float16)``; on x86 with F16C and on ARMv8 it
is one vector instruction per 8-16 values, so the conversion runs at memory speed instead of numpy's scalar loop.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._numeric import JIT, f32_bits, fp16_value


@intrinsic
def _half_bits(typingctx, x):
    """IEEE half bits (uint16) of the float32 ``x``, rounded to nearest even."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _bf16_value(typingctx, b):
    """The float32 whose upper 16 bits are the uint16 ``b`` (bfloat16 -> float32, exact)."""
    if b != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _half_value(typingctx, h):
    """The float32 value of the IEEE half bits ``h`` (uint16), exact (NaN payloads kept, as numpy)."""
    if h != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@njit(inline="always", **JIT)
def _to_half(v):
    """numpy's float32 -> float16: the hardware rounding, and numpy's rule for NaN (the top 10 payload bits kept,
    so a signalling NaN stays signalling; at least one bit set)."""
    h = np.int64(_half_bits(v))
    if v != v:
        bits = np.int64(f32_bits(v)) & 0xFFFFFFFF
        nan = 0x7C00 + ((bits & 0x7FFFFF) >> 13)
        nan = nan + 1 if nan == 0x7C00 else nan
        h = ((bits >> 16) & 0x8000) | nan
    return h


@njit(**JIT)
def f32_to_f16(src, dst):
    """dst (uint16) = half bits of src (float32), both 1-D of the same length."""
    for i in range(src.shape[0]):
        dst[i] = _to_half(src[i])


@njit(**JIT)
def bf16_to_f16(src, dst):
    """dst (uint16) = half bits of the bfloat16 values src (uint16)."""
    for i in range(src.shape[0]):
        dst[i] = _to_half(_bf16_value(src[i]))


@njit(**JIT)
def f16_to_f32(src, dst):
    """dst (float32) = the values of the half bits src (uint16)."""
    for i in range(src.shape[0]):
        v = _half_value(src[i])
        dst[i] = fp16_value(np.int64(src[i])) if v != v else v     # NaN: payload kept as is (numpy), not quietened


@njit(**JIT)
def bf16_to_f32(src, dst):
    """dst (float32) = the values of the bfloat16 bits src (uint16)."""
    for i in range(src.shape[0]):
        dst[i] = _bf16_value(src[i])
