"""Output tensor types and the conversion of a block of rows into GGUF bytes."""

import threading

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

from . import quant, weighted
from .errors import ConvertError

# the checkpoint dtypes whose bytes are already a GGUF type
SAME_BYTES = {"Float32": T.F32, "Float16": T.F16, "BFloat16": T.BF16}
_CHUNK_BYTES = 32 << 20      # rows are converted in blocks of about this many float32 bytes
_MIN_ROWS_PER_THREAD = 16
_WIDEN_ELEMENTS = 1 << 16    # bf16 / f16 -> f32 -> f16 / f32 in pieces of this many values (stay in the CPU cache)
_NP = {T.F32: np.float32, T.F16: np.float16}


def to_float32(block, dtype_name, out=None):
    """Values of ``block`` as float32, into ``out`` (a float32 array of the block's size) when given."""
    if dtype_name == "Float32":
        return block
    if out is None:
        if dtype_name == "BFloat16":
            return (block.astype(np.uint32) << 16).view(np.float32)
        return block.astype(np.float32)
    out = out.reshape(block.shape)
    if dtype_name == "BFloat16":
        np.left_shift(block, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, block, casting="unsafe")
    return out


def encode_rows(block, dtype_name, ggml_type, threads=1, weights=None):
    """Bytes of ``block`` (rows in the checkpoint's dtype) as ``ggml_type``, on up to ``threads`` cores.
    ``weights``: per-column importances (an imatrix entry) for the types that use them (weighted.WEIGHTED_TYPES,
    quantized by gguf_out.quant's compiled kernels; Q8_0 and the float types ignore them, as ggml does).

    Rows are independent: a 2-D block is cut into one band of rows per thread, each converted straight into its
    slice of the output (numpy's casts and the compiled quantizers of gguf_out.quant release the GIL). The output
    and the per-thread float32 widening space are work buffers kept from block to block (fresh tens of MB per block
    cost a page fault per page); the result is a view of the output buffer, valid until the next call for the same
    type — the writer consumes it first.
    """
    if SAME_BYTES.get(dtype_name) == ggml_type:
        return np.ascontiguousarray(block)
    ggml_type = T(int(ggml_type))
    if ggml_type not in weighted.WEIGHTED_TYPES:
        weights = None
    if block.ndim != 2 or (ggml_type not in _NP and ggml_type not in quant.TYPES):
        return _encode_small(block, dtype_name, ggml_type, weights)
    rows, width = block.shape
    out = _shared_buffer(ggml_type, rows * quant.row_bytes(ggml_type, width)).reshape(rows, -1)
    parts = min(threads, rows // _MIN_ROWS_PER_THREAD)
    if parts <= 1:
        _encode_into(block, dtype_name, ggml_type, out, weights)
        return out
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    list(quant.pool(parts).map(lambda i: _encode_into(block[bounds[i]:bounds[i + 1]], dtype_name, ggml_type,
                                                      out[bounds[i]:bounds[i + 1]], weights), range(parts)))
    return out


def _encode_into(block, dtype_name, ggml_type, out, weights=None):
    """Rows of ``block`` as ``ggml_type`` into ``out`` (uint8 [rows, row bytes]), with importances ``weights``."""
    if ggml_type in _NP:
        target = out.view(_NP[ggml_type]).reshape(block.shape)
        if ggml_type == T.F16 and quant.to_f16_into(block, dtype_name, target):
            return
        if ggml_type == T.F32 and quant.to_f32_into(block, dtype_name, target):
            return
        if dtype_name in ("Float32", "Float16"):          # one exact or correctly rounded cast
            np.copyto(target, block, casting="unsafe")
            return
        flat_in, flat_out = block.reshape(-1), target.reshape(-1)
        wide = _thread_buffer(min(flat_in.size, _WIDEN_ELEMENTS))
        for lo in range(0, flat_in.size, _WIDEN_ELEMENTS):
            piece = flat_in[lo:lo + _WIDEN_ELEMENTS]
            np.copyto(flat_out[lo:lo + piece.size], to_float32(piece, dtype_name, wide[:piece.size]),
                      casting="unsafe")
        return
    if dtype_name == "Float32":
        values = block
    else:
        values = _thread_buffer(block.size).reshape(block.shape)
        if not quant.to_f32_into(block, dtype_name, values):
            values = to_float32(block, dtype_name, values)
    quant.quantize_into(values, ggml_type, out, quant_weights=weights)


def _encode_small(block, dtype_name, ggml_type, weights=None):
    """Whole small tensors (norms, biases: below 2-D) and types without a compiled path, in fresh arrays."""
    values = to_float32(block, dtype_name)
    if ggml_type == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if ggml_type == T.F16:
        return values.astype(np.float16)
    if ggml_type in quant.TYPES:
        return quant.quantize(values.reshape(-1, values.shape[-1]), ggml_type, quant_weights=weights)
    return quants.quantize(np.ascontiguousarray(values), ggml_type)


_SHARED = {}
_LOCAL = threading.local()


def _shared_buffer(key, nbytes):
    """The output work buffer for ``key``, grown when needed (one per output type: several types of one band are
    encoded one after the other, each written before the next band)."""
    buf = _SHARED.get(key)
    if buf is None or buf.nbytes < nbytes:
        buf = _SHARED[key] = np.empty(nbytes, np.uint8)
    return buf[:nbytes]


def _thread_buffer(n):
    """This thread's float32 widening buffer of at least ``n`` values."""
    buf = getattr(_LOCAL, "wide", None)
    if buf is None or buf.size < n:
        buf = _LOCAL.wide = np.empty(n, np.float32)
    return buf[:n]


def rows_per_chunk(row_length):
    """How many rows of ``row_length`` values make a band of about _CHUNK_BYTES as float32."""
    return max(1, _CHUNK_BYTES // max(4 * int(row_length), 1))


def check_float(tensor):
    if tensor.dtype is None or tensor.dtype.name not in ("Float16", "Float32", "Float64", "BFloat16"):
        kind = tensor.dtype.name if tensor.dtype else "MapTensor"
        raise ConvertError(f"tensor '{tensor.name}' has dtype {kind}; model weights must be Float16, BFloat16, "
                           "Float32 or Float64")
