"""Compiled quantizers, byte-identical to ggml's ``ggml_quantize_chunk`` (with or without importance weights).

    quantize(rows, qtype, quant_weights=None) -> uint8 [rows, row bytes]
    quantize_parallel(rows, qtype, threads=None, quant_weights=None)

``rows`` is a 2-D float array ``[nrows, n_per_row]``; ``qtype`` one of :data:`TYPES` (a GGMLQuantizationType or its
int); ``quant_weights`` None (ggml's reference path, what llama-quantize writes without ``--imatrix``) or float32
``[n_per_row]``, one importance weight per column applied to every row — ggml's ``imatrix`` argument, which selects its
``quantize_row_*_impl`` variants (Q8_0 ignores it, as ggml does).

The kernels are numba-compiled loops (``gguf_out/quant/_*.py``) that release the GIL, so ``quantize_parallel`` runs
one band of rows per thread on as many cores. Compiled code is cached next to the modules (``__pycache__``) or, when
that directory is read-only, in numba's per-user cache (``NUMBA_CACHE_DIR`` overrides both); the first call after
installing compiles (a few seconds per type), later processes load the cache.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

__all__ = ["TYPES", "quantize", "quantize_parallel", "quantize_into", "row_bytes", "block_size"]

TYPES = (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)
_MIN_ROWS_PER_THREAD = 4
_NO_WEIGHTS = np.empty(0, np.float32)


@lru_cache(maxsize=None)
def _kernel(qtype):
    from . import _kquants, _legacy      # imported on first use: numba loads only when something is quantized
    return {T.Q8_0: _legacy.q8_0, T.Q4_0: _legacy.q4_0, T.Q4_1: _legacy.q4_1, T.Q5_0: _legacy.q5_0,
            T.Q5_1: _legacy.q5_1, T.Q2_K: _kquants.q2_k, T.Q3_K: _kquants.q3_k, T.Q4_K: _kquants.q4_k,
            T.Q5_K: _kquants.q5_k, T.Q6_K: _kquants.q6_k}[qtype]


def block_size(qtype) -> int:
    return GGML_QUANT_SIZES[T(int(qtype))][0]


def row_bytes(qtype, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[T(int(qtype))]
    return n_per_row // block * size


def _check(data, qtype, quant_weights):
    qtype = T(int(qtype))
    if qtype not in TYPES:
        raise ValueError(f"{qtype.name} is not a type these quantizers write (expected one of "
                         f"{', '.join(t.name for t in TYPES)})")
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D [rows, n_per_row] array, got shape {data.shape}")
    n = data.shape[1]
    block = block_size(qtype)
    if n % block:
        raise ValueError(f"row length {n} is not a multiple of {block}, which {qtype.name} requires")
    if quant_weights is None:
        qw = _NO_WEIGHTS
    else:
        qw = np.ascontiguousarray(quant_weights, dtype=np.float32).reshape(-1)
        if qw.size != n:
            raise ValueError(f"quant_weights has {qw.size} values, expected one per column ({n})")
    return qtype, np.ascontiguousarray(data, dtype=np.float32), qw


def quantize_into(data, qtype, out, quant_weights=None) -> None:
    """Quantize float32 rows into ``out`` (uint8 ``[rows, row bytes]``, C-contiguous), one thread."""
    qtype, data, qw = _check(data, qtype, quant_weights)
    if data.shape[0]:
        _kernel(qtype)(data, qw, qw.size > 0, out)


def quantize(data, qtype, quant_weights=None) -> np.ndarray:
    """Quantize float rows ``[rows, n_per_row]`` to ``qtype`` on the calling thread; uint8 ``[rows, row bytes]``."""
    qtype, data, qw = _check(data, qtype, quant_weights)
    out = np.empty((data.shape[0], row_bytes(qtype, data.shape[1])), np.uint8)
    if data.shape[0]:
        _kernel(qtype)(data, qw, qw.size > 0, out)
    return out


def quantize_parallel(data, qtype, threads: int | None = None, quant_weights=None) -> np.ndarray:
    """As :func:`quantize`, with the rows cut into ``threads`` bands (default: CPU count) quantized at once.
    The bytes are the same whatever the number of threads."""
    qtype, data, qw = _check(data, qtype, quant_weights)
    rows = data.shape[0]
    out = np.empty((rows, row_bytes(qtype, data.shape[1])), np.uint8)
    parts = min(threads or os.cpu_count() or 1, rows // _MIN_ROWS_PER_THREAD)
    kernel = _kernel(qtype)
    if parts <= 1:
        if rows:
            kernel(data, qw, qw.size > 0, out)
        return out
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    list(pool(parts).map(lambda i: kernel(data[bounds[i]:bounds[i + 1]], qw, qw.size > 0,
                                          out[bounds[i]:bounds[i + 1]]), range(parts)))
    return out


@lru_cache(maxsize=None)
def pool(threads: int) -> ThreadPoolExecutor:
    """A shared pool of ``threads`` worker threads (kept for the process: conversions call it per band)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ms2gguf-quant")
