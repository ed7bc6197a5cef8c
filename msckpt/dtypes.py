"""MindSpore ``tensor_type`` names and how their bytes are laid out (reference: ckpt-format.md §4)."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str            # canonical MindSpore spelling, e.g. "Float32"
    numpy: str | None    # numpy dtype string for the element bytes; None for str
    itemsize: int
    kind: str            # "float", "int", "bool", "complex", "raw" (no numpy meaning), "str"
    note: str = ""

    @property
    def np_dtype(self):
        return np.dtype(self.numpy)


_TABLE = [
    DType("Float16", "<f2", 2, "float"),
    DType("Float32", "<f4", 4, "float"),
    DType("Float64", "<f8", 8, "float"),
    # bf16 is kept as its raw bits: the upper 16 bits of a float32, exactly GGML's BF16.
    DType("BFloat16", "<u2", 2, "float", "raw bfloat16 bits"),
    DType("Int8", "i1", 1, "int"),
    DType("Int16", "<i2", 2, "int"),
    DType("Int32", "<i4", 4, "int"),
    DType("Int64", "<i8", 8, "int"),
    DType("UInt8", "u1", 1, "int"),
    DType("UInt16", "<u2", 2, "int"),
    DType("UInt32", "<u4", 4, "int"),
    DType("UInt64", "<u8", 8, "int"),
    DType("Bool", "?", 1, "bool"),
    DType("Complex64", "<c8", 8, "complex"),
    DType("Complex128", "<c16", 16, "complex"),
    # dims of an Int4 tensor are the packed byte shape; the nibble order is not defined by the file.
    DType("Int4", "u1", 1, "raw", "qint4x2, two int4 per byte"),
    DType("Float8E4M3FN", "u1", 1, "raw", "float8 e4m3fn bytes"),
    DType("Float8E5M2", "u1", 1, "raw", "float8 e5m2 bytes"),
    DType("HiFloat8", "u1", 1, "raw", "HiFloat8 bytes"),
    DType("str", None, 4, "str", "UTF-32LE text"),
]

DTYPES = {d.name: d for d in _TABLE}
# Files written in 2020 spell the unsigned types "Uint8" ... "Uint64".
_ALIASES = {f"Uint{bits}": DTYPES[f"UInt{bits}"] for bits in (8, 16, 32, 64)}

# MapTensor parts carry numpy dtype names instead (ckpt-format.md §6.5).
_NUMPY_NAMES = {
    "int32": DTYPES["Int32"], "int64": DTYPES["Int64"], "float16": DTYPES["Float16"],
    "float32": DTYPES["Float32"], "float64": DTYPES["Float64"],
}

# safetensors dtype names (MindSpore writes these; ckpt-format.md §9).
SAFETENSORS = {
    "F16": DTYPES["Float16"], "F32": DTYPES["Float32"], "F64": DTYPES["Float64"], "BF16": DTYPES["BFloat16"],
    "I8": DTYPES["Int8"], "I16": DTYPES["Int16"], "I32": DTYPES["Int32"], "I64": DTYPES["Int64"],
    "U8": DTYPES["UInt8"], "U16": DTYPES["UInt16"], "U32": DTYPES["UInt32"], "U64": DTYPES["UInt64"],
    "BOOL": DTYPES["Bool"], "C64": DTYPES["Complex64"],
    "F8_E4M3": DTYPES["Float8E4M3FN"], "F8_E5M2": DTYPES["Float8E5M2"],
}


def lookup(name, maptensor_part=False):
    """The DType for a ``tensor_type`` string, or None if unknown."""
    found = DTYPES.get(name) or _ALIASES.get(name)
    if found is None and maptensor_part:
        found = _NUMPY_NAMES.get(name)
    return found


MAX_TENSOR_BYTES = 1 << 62


def shape_problem(shape, itemsize):
    """Why a declared shape cannot be a real tensor, or None (guards numpy against absurd dims)."""
    if len(shape) > 32:
        return f"{len(shape)} dimensions (at most 32 are supported)"
    size = itemsize
    for dim in shape:
        size *= dim or 1
        if size >= MAX_TENSOR_BYTES:
            return f"shape {list(shape)} is implausibly large"
    return None
