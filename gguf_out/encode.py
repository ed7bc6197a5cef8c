"""Output tensor types and the conversion of a block of rows into GGUF bytes."""

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

from . import quant, weighted
from .errors import ConvertError

# the checkpoint dtypes whose bytes are already a GGUF type
SAME_BYTES = {"Float32": T.F32, "Float16": T.F16, "BFloat16": T.BF16}
_CHUNK_BYTES = 32 << 20      # rows are converted in blocks of about this many float32 bytes
_MIN_ROWS_PER_THREAD = 16


def to_float32(block, dtype_name):
    if dtype_name == "Float32":
        return block
    if dtype_name == "BFloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32)


def encode_rows(block, dtype_name, ggml_type, threads=1, weights=None):
    """Bytes of ``block`` (rows in the checkpoint's dtype) as ``ggml_type``, on up to ``threads`` cores.
    ``weights``: per-column importances (an imatrix entry) for the types that use them (weighted.WEIGHTED_TYPES,
    quantized by gguf_out.quant's compiled kernels; Q8_0 and the float types ignore them, as ggml does).

    Rows are independent, so a block is cut into row ranges encoded in parallel (numpy and the compiled
    quantizers of gguf_out.quant release the GIL) and joined in order.
    """
    if SAME_BYTES.get(dtype_name) == ggml_type:
        return np.ascontiguousarray(block)
    if ggml_type not in weighted.WEIGHTED_TYPES:
        weights = None
    parts = min(threads, len(block) // _MIN_ROWS_PER_THREAD) if block.ndim > 1 else 1
    if parts <= 1:
        return _encode(block, dtype_name, ggml_type, weights)
    bounds = np.linspace(0, len(block), parts + 1).astype(int)
    pieces = _pool(threads).map(lambda i: _encode(block[bounds[i]:bounds[i + 1]], dtype_name, ggml_type, weights),
                                range(parts))
    return np.concatenate(list(pieces))


def _encode(block, dtype_name, ggml_type, weights=None):
    values = to_float32(block, dtype_name)
    if ggml_type == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if ggml_type == T.F16:
        return values.astype(np.float16)
    if ggml_type in quant.TYPES:
        return quant.quantize(values.reshape(-1, values.shape[-1]), ggml_type, quant_weights=weights)
    return quants.quantize(np.ascontiguousarray(values), ggml_type)


@lru_cache(maxsize=None)
def _pool(threads):
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ms2gguf-encode")


def rows_per_chunk(row_length):
    """How many rows of ``row_length`` values make a band of about _CHUNK_BYTES as float32."""
    return max(1, _CHUNK_BYTES // max(4 * int(row_length), 1))


def check_float(tensor):
    if tensor.dtype is None or tensor.dtype.name not in ("Float16", "Float32", "Float64", "BFloat16"):
        kind = tensor.dtype.name if tensor.dtype else "MapTensor"
        raise ConvertError(f"tensor '{tensor.name}' has dtype {kind}; model weights must be Float16, BFloat16, "
                           "Float32 or Float64")
