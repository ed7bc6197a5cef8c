"""Importance-weighted quantizers: ggml's ``quantize_row_*_impl`` paths in NumPy, byte-identical to
``ggml_quantize_chunk(type, data, ..., quant_weights)`` (what llama-quantize runs with ``--imatrix``).

``quantize(data, ggml_type, weights)`` covers Q2_K ... Q6_K and Q4_0 / Q4_1 / Q5_0 / Q5_1; ``weights`` holds one
importance per column of the rows (an imatrix entry, or one expert's slice of it).  Q8_0 has no weighted path in
ggml (it ignores the weights); :func:`quantize` refuses it so a caller cannot think it used them.

The algorithms (ecosystem.md §2c; ggml's, MIT License, Copyright (c) 2023-2026 The ggml authors):

* Q2_K / Q4_K / Q5_K: element weights ``qw * sqrt(sigma2 + x^2)`` (sigma2 = Σx²/256 for Q2_K, 2Σx²/256 for the
  others, per 256-block), ``make_qkx3_quants`` per sub-block, the super-block scales and mins by
  ``make_qp_quants`` weighted with the sub-block weight sums;
* Q3_K: the same element weights, ``make_qx_quants`` per sub-block and for the 16 scales;
* Q6_K: ``make_qx_quants`` with the importances themselves;
* Q4_0 / Q5_0: ``make_qx_quants``, Q4_1 / Q5_1: ``make_qkx3_quants``, with sigma2 = Σx²/n_per_row of the row.

It reuses the vectorised, order-preserving pieces of :mod:`gguf_out.kquants` (sequential float32 sums over axis 0
of (elements, sub-blocks) arrays, ggml's nearest_int); every chunk holds at least two rows, so no sum has a
single column (NumPy would then sum it pairwise).
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from . import kquants as K

__all__ = ["WEIGHTED_TYPES", "quantize"]

F32 = np.float32
QK_K = K.QK_K
WEIGHTED_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1)
_CHUNK_ELEMENTS = 1 << 16


def _cols(a, n):
    """(rows, m) -> contiguous (n, rows*m/n): column s is the s-th run of n consecutive elements."""
    return np.ascontiguousarray(a.reshape(-1, n).T)


def _make_qx(X, W, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=W) per column: (scale (S,), L (n, S) in [0, 2*nmax-1])."""
    xm = K._first_absmax(X, 0)
    zero = np.abs(xm) < K._EPS
    xm = np.where(zero, F32(1.0), xm)
    wx = W * X
    fnmax = F32(nmax)

    def fit(isc):
        lv = X * isc
        K._round_clip(lv, -nmax, nmax - 1, True)    # |isc * x| <= (nmax + 0.9) |x| / |xm|: in range
        return K._seq_sum(wx * lv), K._seq_sum((W * lv) * lv)

    isc = -fnmax / xm
    slx, sl2 = fit(isc)
    scale = np.where(sl2 != 0, slx / sl2, F32(0.0))
    best = scale * slx
    best_isc = isc.copy()
    for s in range(-9, 10):
        if s == 0:
            continue
        isc = -(fnmax + F32(0.1) * F32(s)) / xm
        slx, sl2 = fit(isc)
        upd = (sl2 > 0) & (slx * slx > best * sl2)
        if upd.any():
            scale = np.where(upd, slx / sl2, scale)
            best = np.where(upd, scale * slx, best)
            best_isc = np.where(upd, isc, best_isc)
    L = X * best_isc
    K._round_clip(L, -nmax, nmax - 1, True)
    L += fnmax
    scale[zero] = F32(0.0)
    L[:, zero] = F32(0.0)
    return scale, L


def _make_qkx3(X, W, nmax):
    """make_qkx3_quants(n, nmax, x, W, ..., rmin=-0.9, rdelta=0.05, nstep=36, use_mad=false) per column:
    (scale, the_min, L).  Its only difference from make_qkx2_quants is the flat test (max <= min, the same for
    finite input), so kquants' port serves."""
    scale, the_min, L = K._make_qkx2(X, W, nmax, -0.9, 0.05, 36, False, K._Work())
    return scale, the_min, L


def _make_qp(X, W, nmax):
    """make_qp_quants(n, nmax, x, L, quant_weights=W) per column of X (n, S): (scale (S,), L (n, S) uint8).

    Levels are ints clamped only from above; ggml stores them in uint8, so a negative one wraps, and the
    descent then computes with the wrapped value, as here."""
    n, S = X.shape
    fnmax = F32(nmax)
    mx = K._max_from_zero(X.T)
    zero = mx < K._EPS
    mx = np.where(zero, F32(1.0), mx)
    wx = W * X

    def mse(scale, lv):
        d = X - scale * lv
        return K._seq_sum((W * d) * d)

    iscale = fnmax / mx
    L = (K._nearest_int(iscale * X) & 0xFF).astype(F32)       # first pass: no clamp at all
    best = mse(F32(1.0) / iscale, L)
    for s in range(-4, 5):
        if s == 0:
            continue
        isc = (F32(0.1) * F32(s) + fnmax) / mx
        lv = np.minimum(K._nearest_int(isc * X), nmax).astype(F32)
        e = mse(F32(1.0) / isc, lv)
        upd = e < best
        best = np.where(upd, e, best)
        iscale = np.where(upd, isc, iscale)
    li = np.minimum(K._nearest_int(iscale * X), nmax)
    lf = li.astype(F32)
    sumlx = K._seq_sum(wx * lf)
    suml2 = K._seq_sum((W * lf) * lf)
    L = (li & 0xFF).astype(F32)
    active = np.ones(S, dtype=bool)
    for _ in range(5):
        changed = np.zeros(S, dtype=bool)
        for i in range(n):
            Li, wi, wxi = L[i], W[i], wx[i]
            slx = sumlx - wxi * Li
            sl2 = suml2 - (wi * Li) * Li
            ok = active & (slx > 0) & (sl2 > 0)
            with np.errstate(all="ignore"):
                new = np.minimum(K._nearest_int((X[i] * sl2) / slx), nmax)
            cand = ok & (new != Li.astype(np.int32))
            if not cand.any():
                continue
            nf = new.astype(F32)
            slx2 = slx + wxi * nf
            sl22 = sl2 + (wi * nf) * nf
            acc = cand & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            L[i] = np.where(acc, (new & 0xFF).astype(F32), Li)
            sumlx = np.where(acc, slx2, sumlx)
            suml2 = np.where(acc, sl22, suml2)
            changed |= acc
        active &= changed          # a pass that changes nothing ends that column's descent (ggml breaks)
        if not active.any():
            break
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1.0)), F32(0.0))
    scale[zero] = F32(0.0)
    L[:, zero] = F32(0.0)
    return scale, L.astype(np.uint8)


def _element_weights(x, qw, n, two):
    """Sub-block layout of x and of its element weights qw * sqrt(sigma2 + x^2), sigma2 = (2)Σx²/256 per block;
    also the weight sums per sub-block as (B, 256/n)."""
    B = x.shape[0]
    Xb = _cols(x, QK_K)
    sumx2 = K._seq_sum(Xb * Xb)
    sigma2 = (F32(2.0) * sumx2 if two else sumx2) / F32(QK_K)
    X = _cols(x, n)
    W = _cols(qw, n) * np.sqrt(np.repeat(sigma2, QK_K // n) + X * X)
    return X, W, K._seq_sum(W).reshape(B, QK_K // n)


def _scale_min_k4(sc):
    """get_scale_min_k4 for all 8 sub-blocks: the 6-bit scales and mins decoded from the 12 packed bytes."""
    sc = sc.astype(np.int32)
    d = np.concatenate([sc[:, 0:4] & 63, (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], axis=1)
    return d.astype(F32), m.astype(F32)


def _q2_k(x, qw, out):
    B = x.shape[0]
    X, W, sw = _element_weights(x, qw, 16, False)
    scales, mins, L = _make_qkx3(X, W, 3)
    dm, Ls = _make_qp(np.ascontiguousarray(scales.reshape(B, 16).T), np.ascontiguousarray(sw.T), 15)
    mm, Lm = _make_qp(np.ascontiguousarray(mins.reshape(B, 16).T), np.ascontiguousarray(sw.T), 15)
    sc = (Ls.T | (Lm.T << 4)).astype(np.uint8)
    d16, dmin16 = dm.astype(np.float16), mm.astype(np.float16)
    d = d16.astype(F32)[:, None] * (sc & 15).astype(F32)
    m = dmin16.astype(F32)[:, None] * (sc >> 4).astype(F32)
    q = K._requant_asym(X, d.reshape(-1), m.reshape(-1), L, 3)
    out[:, 0:16] = sc
    out[:, 16:80] = K._pack_2bit(K._to_blocks(q, B))
    out[:, 80:82] = d16.view(np.uint8).reshape(B, 2)
    out[:, 82:84] = dmin16.view(np.uint8).reshape(B, 2)


def _q3_k(x, qw, out):
    B = x.shape[0]
    X, W, sw = _element_weights(x, qw, 16, True)
    scales, L = _make_qx(X, W, 4)
    d_block, Ls = _make_qx(np.ascontiguousarray(scales.reshape(B, 16).T), np.ascontiguousarray(sw.T), 32)
    q = Ls.T.astype(np.uint8)                        # (B, 16) in [0, 63]
    sc = np.zeros((B, 12), dtype=np.uint8)
    sc[:, 0:8] = q[:, 0:8] & 15
    sc[:, 0:8] |= (q[:, 8:16] & 15) << 4
    for j in range(16):
        sc[:, 8 + j % 4] |= (q[:, j] >> 4) << (2 * (j // 4))
    d16 = d_block.astype(np.float16)
    d = d16.astype(F32)[:, None] * (q.astype(np.int32) - 32).astype(F32)
    Lb = K._to_blocks(K._requant_sym(X, d.reshape(-1), L, -4, 3), B)
    high = Lb > 3
    out[:, 0:32] = K._bitplanes(high.reshape(B, 8, 32))
    out[:, 32:96] = K._pack_2bit(Lb - (high.astype(np.uint8) << 2))
    out[:, 96:108] = sc
    out[:, 108:110] = d16.view(np.uint8).reshape(B, 2)


def _q45_k(x, qw, nmax, clamp63):
    B = x.shape[0]
    X, W, sw = _element_weights(x, qw, 32, True)
    scales, mins, L = _make_qkx3(X, W, nmax)
    swT = np.ascontiguousarray(sw.T)
    d_block, Ls = _make_qp(np.ascontiguousarray(scales.reshape(B, 8).T), swT, 63)
    m_block, Lm = _make_qp(np.ascontiguousarray(mins.reshape(B, 8).T), swT, 63)
    Ls, Lm = Ls.T.copy(), Lm.T.copy()
    if clamp63:                                       # Q5_K clamps, Q4_K does not (levels stay <= 63 anyway
        Ls, Lm = np.minimum(Ls, 63), np.minimum(Lm, 63)   # unless a negative one wrapped)
    sc = K._pack_scale_min_k4(Ls, Lm)
    d16, dmin16 = d_block.astype(np.float16), m_block.astype(np.float16)
    s, m = _scale_min_k4(sc)
    d = d16.astype(F32)[:, None] * s
    dm = dmin16.astype(F32)[:, None] * m
    q = K._requant_asym(X, d.reshape(-1), dm.reshape(-1), L, nmax)
    return K._to_blocks(q, B), d16, dmin16, sc


def _q4_k(x, qw, out):
    B = x.shape[0]
    Lb, d16, dmin16, sc = _q45_k(x, qw, 15, False)
    v = Lb.reshape(B, 4, 2, 32)
    out[:, 0:2] = d16.view(np.uint8).reshape(B, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(B, 2)
    out[:, 4:16] = sc
    out[:, 16:144] = (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(B, 128)


def _q5_k(x, qw, out):
    B = x.shape[0]
    Lb, d16, dmin16, sc = _q45_k(x, qw, 31, True)
    qh = K._bitplanes((Lb > 15).reshape(B, 8, 32))
    v = (Lb & 15).reshape(B, 4, 2, 32)
    out[:, 0:2] = d16.view(np.uint8).reshape(B, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(B, 2)
    out[:, 4:16] = sc
    out[:, 16:48] = qh
    out[:, 48:176] = (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(B, 128)


def _q6_k(x, qw, out):
    B = x.shape[0]
    X = _cols(x, 16)
    s, L = _make_qx(X, _cols(qw, 16), 32)
    s = s.reshape(B, 16)
    ms = K._first_absmax(s, 1)
    zero = np.abs(ms) < K._EPS
    iscale = F32(-128.0) / np.where(zero, F32(1.0), ms)
    d16 = (F32(1.0) / iscale).astype(np.float16)
    sc = np.minimum(K._nearest_int(iscale[:, None] * s), 127).astype(np.int8)
    d = d16.astype(F32)[:, None] * sc.astype(F32)
    Lb = K._to_blocks(K._requant_sym(X, d.reshape(-1), L, -32, 31), B).reshape(B, 2, 4, 32)
    low = Lb & 15
    hb = Lb >> 4
    out[:, 0:128] = (low[:, :, 0:2] | (low[:, :, 2:4] << 4)).reshape(B, 128)
    out[:, 128:192] = (hb[:, :, 0] | (hb[:, :, 1] << 2) | (hb[:, :, 2] << 4) | (hb[:, :, 3] << 6)).reshape(B, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(B, 2)
    out[zero] = 0


def _legacy(rows, qw, nmax, asym):
    """Q4_0 / Q5_0 (make_qx_quants) and Q4_1 / Q5_1 (make_qkx3_quants) on 32-blocks, weights from the row's
    sigma2 = Σx²/n_per_row.  Returns (d, m or None, L as (nblocks, 32) uint8)."""
    n = rows.shape[1]
    Xr = np.ascontiguousarray(rows.T)
    sigma2 = K._seq_sum(Xr * Xr) / F32(n)
    X = _cols(rows, 32)
    W = _cols(qw, 32) * np.sqrt(np.repeat(sigma2, n // 32) + X * X)
    if asym:
        d, the_min, L = _make_qkx3(X, W, nmax)
        m = -the_min
    else:
        d, L = _make_qx(X, W, nmax)
        m = None
    return d, m, L.T.astype(np.uint8)


def _nibbles(L):
    return (L[:, 0:16] & 15) | ((L[:, 16:32] & 15) << 4)


def _high_bits(L):
    bits = (L >> 4).astype(np.uint32) & 1
    qh = (bits[:, 0:16] << np.arange(16, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    qh |= (bits[:, 16:32] << np.arange(16, 32, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return qh.astype("<u4").view(np.uint8).reshape(-1, 4)


def _f16_bytes(v):
    return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _q4_0(rows, qw, out):
    d, _, L = _legacy(rows, qw, 8, False)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:18] = _nibbles(L)


def _q4_1(rows, qw, out):
    d, m, L = _legacy(rows, qw, 15, True)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:4] = _f16_bytes(m)
    out[:, 4:20] = _nibbles(L)


def _q5_0(rows, qw, out):
    d, _, L = _legacy(rows, qw, 16, False)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:6] = _high_bits(L)
    out[:, 6:22] = _nibbles(L)


def _q5_1(rows, qw, out):
    d, m, L = _legacy(rows, qw, 31, True)
    out[:, 0:2] = _f16_bytes(d)
    out[:, 2:4] = _f16_bytes(m)
    out[:, 4:8] = _high_bits(L)
    out[:, 8:24] = _nibbles(L)


_K = {T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k}
_LEGACY = {T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1}


def quantize(data, ggml_type, weights) -> np.ndarray:
    """Quantize float rows ``[rows, n_per_row]`` to ``ggml_type`` with per-column importances ``weights``
    (``n_per_row`` float32).  Returns uint8 ``[rows, row_bytes]``, byte-identical to ggml's
    ``ggml_quantize_chunk(type, data, ..., quant_weights=weights)``."""
    qtype = T(int(ggml_type))
    if qtype not in WEIGHTED_TYPES:
        raise ValueError(f"{qtype.name} has no importance-weighted quantizer (expected one of "
                         f"{', '.join(t.name for t in WEIGHTED_TYPES)})")
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D [rows, n_per_row] array, got shape {data.shape}")
    rows, n = data.shape
    block, size = GGML_QUANT_SIZES[qtype]
    if n % block:
        raise ValueError(f"row length {n} is not a multiple of {block}, which {qtype.name} requires")
    qw = np.ascontiguousarray(weights, dtype=F32).reshape(-1)
    if qw.size != n:
        raise ValueError(f"{qw.size} importance weights for rows of {n}")
    out = np.empty((rows, n // block * size), dtype=np.uint8)
    step = max(2, _CHUNK_ELEMENTS // n)
    with np.errstate(all="ignore"):     # C float semantics, as in kquants
        for r0 in range(0, rows, step):
            chunk = np.asarray(data[r0:r0 + step], dtype=F32)
            r = chunk.shape[0]
            if r < 2:                   # at least two columns in every sum (see the module docstring)
                chunk = np.concatenate([chunk, chunk])
            res = np.empty((chunk.shape[0], out.shape[1]), dtype=np.uint8)
            if qtype in _K:
                x = np.ascontiguousarray(chunk).reshape(-1, QK_K)
                wt = np.tile(qw.reshape(-1, QK_K), (chunk.shape[0], 1))
                _K[qtype](x, wt, res.reshape(-1, size))
            else:
                wt = np.tile(qw, chunk.shape[0])
                _LEGACY[qtype](np.ascontiguousarray(chunk), wt, res.reshape(-1, size))
            out[r0:r0 + r] = res[:r]
    return out
