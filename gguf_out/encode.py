"""Output tensor types and the conversion of a block of rows into GGUF bytes."""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, LlamaFileType as FT
from gguf import quants

from .errors import ConvertError

# --outtype -> (ggml type of 2-D weights, general.file_type)
OUTTYPES = {
    "f32": (T.F32, FT.ALL_F32),
    "f16": (T.F16, FT.MOSTLY_F16),
    "bf16": (T.BF16, FT.MOSTLY_BF16),
    "q8_0": (T.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (T.Q4_0, FT.MOSTLY_Q4_0),
    "q4_1": (T.Q4_1, FT.MOSTLY_Q4_1),
    "q5_0": (T.Q5_0, FT.MOSTLY_Q5_0),
    "q5_1": (T.Q5_1, FT.MOSTLY_Q5_1),
}
QUANTIZED = {T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}
# the checkpoint dtypes whose bytes are already a GGUF type
SAME_BYTES = {"Float32": T.F32, "Float16": T.F16, "BFloat16": T.BF16}
_CHUNK_BYTES = 32 << 20      # rows are converted in blocks of about this many float32 bytes


def choose_type(shape, outtype):
    """The ggml type of one tensor: 1-D (norms, biases) stay F32; weights take the outtype (gguf-targets §5.4).

    Returns (type, note) where note explains a fallback.
    """
    wanted = OUTTYPES[outtype][0]
    if len(shape) < 2:
        return T.F32, None
    block = GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        return T.F16, f"row length {shape[-1]} is not a multiple of {block}: F16 instead of {wanted.name}"
    return wanted, None


def to_float32(block, dtype_name):
    if dtype_name == "Float32":
        return block
    if dtype_name == "BFloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32)


def encode_rows(block, dtype_name, ggml_type):
    """Bytes of ``block`` (rows in the checkpoint's dtype) as ``ggml_type``."""
    if SAME_BYTES.get(dtype_name) == ggml_type:
        return np.ascontiguousarray(block)
    values = to_float32(block, dtype_name)
    if ggml_type == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if ggml_type == T.F16:
        return values.astype(np.float16)
    return quants.quantize(np.ascontiguousarray(values), ggml_type)


def rows_per_chunk(shape):
    row = int(np.prod(shape[1:], dtype=np.int64)) * 4 if len(shape) > 1 else 4
    return max(1, _CHUNK_BYTES // max(row, 1))


def check_float(tensor):
    if tensor.dtype is None or tensor.dtype.name not in ("Float16", "Float32", "Float64", "BFloat16"):
        kind = tensor.dtype.name if tensor.dtype else "MapTensor"
        raise ConvertError(f"tensor '{tensor.name}' has dtype {kind}; model weights must be Float16, BFloat16, "
                           "Float32 or Float64")
