"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (32-element blocks), compiled: ggml's quantize_row_*_ref, and the *_impl variants
with importance weights (the algorithms are ggml's, MIT License, Copyright (c) 2023-2026 The ggml authors).

Kernel signature: ``kernel(x, qw, has_qw, out)`` with x float32 ``[rows, n]``, qw float32 ``[n]`` (one weight per
column, the same for every row, as ggml_quantize_chunk's ``imatrix``), out uint8 ``[rows, row bytes]``.
"""

import numpy as np
from numba import njit

from ._fit import make_qkx_lanes, make_qx_lanes
from ._numeric import F32, JIT, I, as_int8, fp16_round, put_u16, round_away, trunc_int

QK = 32
LANES = 8          # blocks fitted at once on the importance-weighted paths


@njit(**JIT)
def q8_0(x, qw, has_qw, out):           # Q8_0 has no weighted variant: ggml ignores the weights
    rows, n = x.shape
    for r in range(rows):
        xr = x[r]
        o = out[r]
        for b in range(n // QK):
            at = b * QK
            ob = b * 34
            amax = F32(0.0)
            for j in range(QK):
                v = abs(xr[at + j])
                amax = amax if amax > v else v
            d = amax / F32(127.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(o, ob, h)
            for j in range(QK):
                o[ob + 2 + j] = trunc_int(round_away(xr[at + j] * iv)) & 0xFF


@njit(inline="always", **JIT)
def _absmax_signed(xr, at):
    amax = F32(0.0)
    mx = F32(0.0)
    for j in range(QK):
        v = abs(xr[at + j])
        if amax < v:
            amax = v
            mx = xr[at + j]
    return mx


@njit(inline="always", **JIT)
def _min_max(xr, at):
    mn = F32(3.4028234663852886e38)
    mx = F32(-3.4028234663852886e38)
    for j in range(QK):
        v = xr[at + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


@njit(**JIT)
def _row_sigma2(xr):
    s = F32(0.0)
    for j in range(xr.shape[0]):
        s += xr[j] * xr[j]
    return s / F32(xr.shape[0])


@njit(inline="always", **JIT)
def _pack_q5h(L, o, qs_at, qh_at):
    qh = 0
    for j in range(16):
        a = L[j]
        b = L[j + 16]
        o[qs_at + j] = (a & 0x0F) | ((b & 0x0F) << 4)
        qh |= ((a & 0x10) >> 4) << j
        qh |= ((b & 0x10) >> 4) << (j + 16)
    for k in range(4):
        o[qh_at + k] = (qh >> (8 * k)) & 0xFF


@njit(**JIT)
def _fill_lanes(xr, qw, sigma2, g0, S, Xt, W):
    """Blocks g0 .. g0+S-1 of a row as the columns of Xt (unused columns zero) and their importance weights
    qw * sqrt(sigma2 + x*x) in W."""
    for i in range(QK):
        for s in range(Xt.shape[1]):
            if s < S:
                e = (g0 + s) * QK + i
                x = xr[e]
                Xt[i, s] = x
                W[i, s] = qw[e] * np.sqrt(sigma2 + x * x)
            else:
                Xt[i, s] = F32(0.0)
                W[i, s] = F32(0.0)


@njit(**JIT)
def _symmetric_w(x, qw, out, nmax, block_bytes):
    """Q4_0 / Q5_0 with importance weights (quantize_row_q4_0_impl / q5_0_impl): make_qx_quants per block, run on
    8 blocks at a time."""
    rows, n = x.shape
    nb = n // QK
    Xt = np.empty((QK, LANES), np.float32)
    W = np.empty((QK, LANES), np.float32)
    Lt = np.empty((QK, LANES), np.int8)
    scales = np.empty(LANES, np.float32)
    wk = np.empty((8, LANES), np.float32)
    Lq = np.empty(QK, np.int64)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        sigma2 = _row_sigma2(xr)
        for g0 in range(0, nb, LANES):
            S = min(LANES, nb - g0)
            _fill_lanes(xr, qw, sigma2, g0, S, Xt, W)
            make_qx_lanes(Xt, W, nmax, Lt, scales, wk)
            for s in range(S):
                ob = (g0 + s) * block_bytes
                h, _ = fp16_round(scales[s])
                put_u16(orow, ob, h)
                if nmax == 8:
                    for j in range(16):
                        orow[ob + 2 + j] = (I(Lt[j, s]) | (I(Lt[j + 16, s]) << 4)) & 0xFF
                else:
                    for j in range(QK):
                        Lq[j] = I(Lt[j, s]) & 0xFF
                    _pack_q5h(Lq, orow, ob + 6, ob + 2)


@njit(**JIT)
def _asymmetric_w(x, qw, out, nmax, block_bytes):
    """Q4_1 / Q5_1 with importance weights (quantize_row_q4_1_impl / q5_1_impl): make_qkx3_quants per block, run
    on 8 blocks at a time."""
    rows, n = x.shape
    nb = n // QK
    Xt = np.empty((QK, LANES), np.float32)
    W = np.empty((QK, LANES), np.float32)
    Lt = np.empty((QK, LANES), np.uint8)
    Laux = np.empty((QK, LANES), np.uint8)
    scales = np.empty(LANES, np.float32)
    mins = np.empty(LANES, np.float32)
    wk = np.empty((16, LANES), np.float32)
    Lq = np.empty(QK, np.int64)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        sigma2 = _row_sigma2(xr)
        for g0 in range(0, nb, LANES):
            S = min(LANES, nb - g0)
            _fill_lanes(xr, qw, sigma2, g0, S, Xt, W)
            make_qkx_lanes(Xt, W, nmax, F32(-0.9), F32(0.05), 36, False, Lt, Laux, scales, mins, wk)
            for s in range(S):
                ob = (g0 + s) * block_bytes
                h, _ = fp16_round(scales[s])
                put_u16(orow, ob, h)
                h, _ = fp16_round(-mins[s])
                put_u16(orow, ob + 2, h)
                if nmax == 15:
                    for j in range(16):
                        orow[ob + 4 + j] = (I(Lt[j, s]) | (I(Lt[j + 16, s]) << 4)) & 0xFF
                else:
                    for j in range(QK):
                        Lq[j] = I(Lt[j, s])
                    _pack_q5h(Lq, orow, ob + 8, ob + 4)


@njit(**JIT)
def q4_0(x, qw, has_qw, out):
    if has_qw:
        _symmetric_w(x, qw, out, 8, 18)
        return
    rows, n = x.shape
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(n // QK):
            at = b * QK
            ob = b * 18
            d = _absmax_signed(xr, at) / F32(-8.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(orow, ob, h)
            for j in range(16):
                a = min(15, as_int8(trunc_int(xr[at + j] * iv + F32(8.5))))
                c = min(15, as_int8(trunc_int(xr[at + j + 16] * iv + F32(8.5))))
                orow[ob + 2 + j] = (a & 0xFF) | ((c << 4) & 0xFF)


@njit(**JIT)
def q4_1(x, qw, has_qw, out):
    if has_qw:
        _asymmetric_w(x, qw, out, 15, 20)
        return
    rows, n = x.shape
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(n // QK):
            at = b * QK
            ob = b * 20
            mn, mx = _min_max(xr, at)
            d = (mx - mn) / F32(15.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(orow, ob, h)
            h, _ = fp16_round(mn)
            put_u16(orow, ob + 2, h)
            for j in range(16):
                a = min(15, as_int8(trunc_int((xr[at + j] - mn) * iv + F32(0.5))))
                c = min(15, as_int8(trunc_int((xr[at + j + 16] - mn) * iv + F32(0.5))))
                orow[ob + 4 + j] = (a & 0xFF) | ((c << 4) & 0xFF)


@njit(**JIT)
def q5_0(x, qw, has_qw, out):
    if has_qw:
        _symmetric_w(x, qw, out, 16, 22)
        return
    rows, n = x.shape
    Lq = np.empty(QK, np.int64)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(n // QK):
            at = b * QK
            d = _absmax_signed(xr, at) / F32(-16.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            for j in range(QK):
                Lq[j] = min(31, as_int8(trunc_int(xr[at + j] * iv + F32(16.5)))) & 0xFF
            ob = b * 22
            h, _ = fp16_round(d)
            put_u16(orow, ob, h)
            _pack_q5h(Lq, orow, ob + 6, ob + 2)


@njit(**JIT)
def q5_1(x, qw, has_qw, out):
    if has_qw:
        _asymmetric_w(x, qw, out, 31, 24)
        return
    rows, n = x.shape
    Lq = np.empty(QK, np.int64)
    for r in range(rows):
        xr = x[r]
        orow = out[r]
        for b in range(n // QK):
            at = b * QK
            m, mx = _min_max(xr, at)
            d = (mx - m) / F32(31.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            for j in range(QK):
                Lq[j] = trunc_int((xr[at + j] - m) * iv + F32(0.5)) & 0xFF
            ob = b * 24
            h, _ = fp16_round(d)
            put_u16(orow, ob, h)
            h, _ = fp16_round(m)
            put_u16(orow, ob + 2, h)
            _pack_q5h(Lq, orow, ob + 8, ob + 4)
