"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (32-element blocks), compiled: ggml's quantize_row_*_ref, and the *_impl variants
with importance weights (the algorithms are ggml's, MIT License, Copyright (c) 2023-2026 The ggml authors).

Kernel signature: ``kernel(x, qw, has_qw, out)`` with x float32 ``[rows, n]``, qw float32 ``[n]`` (one weight per
column, the same for every row, as ggml_quantize_chunk's ``imatrix``), out uint8 ``[rows, row bytes]``.
"""

import numpy as np
from numba import njit

from ._fit import make_qkx, make_qx
from ._numeric import F32, JIT, I, as_int8, fp16_round, put_u16, round_away, trunc_int

QK = 32


@njit(**JIT)
def q8_0(x, qw, has_qw, out):           # Q8_0 has no weighted variant: ggml ignores the weights
    rows, n = x.shape
    for r in range(rows):
        for b in range(n // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 34:(b + 1) * 34]
            amax = F32(0.0)
            for j in range(QK):
                v = abs(xb[j])
                amax = amax if amax > v else v
            d = amax / F32(127.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(o, 0, h)
            for j in range(QK):
                o[2 + j] = trunc_int(round_away(xb[j] * iv)) & 0xFF


@njit(**JIT)
def _absmax_signed(xb):
    amax = F32(0.0)
    mx = F32(0.0)
    for j in range(xb.shape[0]):
        v = abs(xb[j])
        if amax < v:
            amax = v
            mx = xb[j]
    return mx


@njit(**JIT)
def _min_max(xb):
    mn = F32(3.4028234663852886e38)
    mx = F32(-3.4028234663852886e38)
    for j in range(xb.shape[0]):
        v = xb[j]
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


@njit(**JIT)
def _weights(xb, qw, sigma2, weight):
    for j in range(xb.shape[0]):
        weight[j] = qw[j] * np.sqrt(sigma2 + xb[j] * xb[j])


@njit(**JIT)
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
def q4_0(x, qw, has_qw, out):
    rows, n = x.shape
    Li = np.empty(QK, np.int8)
    weight = np.empty(QK, np.float32)
    for r in range(rows):
        sigma2 = _row_sigma2(x[r]) if has_qw else F32(0.0)
        for b in range(n // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 18:(b + 1) * 18]
            if has_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
                d = make_qx(xb, Li, 8, weight, True)
                h, _ = fp16_round(d)
                put_u16(o, 0, h)
                for j in range(16):
                    o[2 + j] = (I(Li[j]) | (I(Li[j + 16]) << 4)) & 0xFF
                continue
            d = _absmax_signed(xb) / F32(-8.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(o, 0, h)
            for j in range(16):
                a = min(15, as_int8(trunc_int(xb[j] * iv + F32(8.5))))
                c = min(15, as_int8(trunc_int(xb[j + 16] * iv + F32(8.5))))
                o[2 + j] = (a & 0xFF) | ((c << 4) & 0xFF)


@njit(**JIT)
def q4_1(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK, np.uint8)
    Laux = np.empty(QK, np.uint8)
    weight = np.empty(QK, np.float32)
    for r in range(rows):
        sigma2 = _row_sigma2(x[r]) if has_qw else F32(0.0)
        for b in range(n // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 20:(b + 1) * 20]
            if has_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
                d, the_min = make_qkx(xb, weight, L, Laux, 15, F32(-0.9), F32(0.05), 36, False)
                h, _ = fp16_round(d)
                put_u16(o, 0, h)
                h, _ = fp16_round(-the_min)
                put_u16(o, 2, h)
                for j in range(16):
                    o[4 + j] = (I(L[j]) | (I(L[j + 16]) << 4)) & 0xFF
                continue
            mn, mx = _min_max(xb)
            d = (mx - mn) / F32(15.0)
            iv = F32(1.0) / d if d != 0 else F32(0.0)
            h, _ = fp16_round(d)
            put_u16(o, 0, h)
            h, _ = fp16_round(mn)
            put_u16(o, 2, h)
            for j in range(16):
                a = min(15, as_int8(trunc_int((xb[j] - mn) * iv + F32(0.5))))
                c = min(15, as_int8(trunc_int((xb[j + 16] - mn) * iv + F32(0.5))))
                o[4 + j] = (a & 0xFF) | ((c << 4) & 0xFF)


@njit(**JIT)
def q5_0(x, qw, has_qw, out):
    rows, n = x.shape
    Li = np.empty(QK, np.int8)
    Lq = np.empty(QK, np.int64)
    weight = np.empty(QK, np.float32)
    for r in range(rows):
        sigma2 = _row_sigma2(x[r]) if has_qw else F32(0.0)
        for b in range(n // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 22:(b + 1) * 22]
            if has_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
                d = make_qx(xb, Li, 16, weight, True)
                for j in range(QK):
                    Lq[j] = I(Li[j]) & 0xFF
            else:
                d = _absmax_signed(xb) / F32(-16.0)
                iv = F32(1.0) / d if d != 0 else F32(0.0)
                for j in range(QK):
                    Lq[j] = min(31, as_int8(trunc_int(xb[j] * iv + F32(16.5)))) & 0xFF
            h, _ = fp16_round(d)
            put_u16(o, 0, h)
            _pack_q5h(Lq, o, 6, 2)


@njit(**JIT)
def q5_1(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK, np.uint8)
    Laux = np.empty(QK, np.uint8)
    Lq = np.empty(QK, np.int64)
    weight = np.empty(QK, np.float32)
    for r in range(rows):
        sigma2 = _row_sigma2(x[r]) if has_qw else F32(0.0)
        for b in range(n // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * 24:(b + 1) * 24]
            if has_qw:
                _weights(xb, qw[b * QK:(b + 1) * QK], sigma2, weight)
                d, the_min = make_qkx(xb, weight, L, Laux, 31, F32(-0.9), F32(0.05), 36, False)
                m = -the_min
                for j in range(QK):
                    Lq[j] = I(L[j])
            else:
                m, mx = _min_max(xb)
                d = (mx - m) / F32(31.0)
                iv = F32(1.0) / d if d != 0 else F32(0.0)
                for j in range(QK):
                    Lq[j] = trunc_int((xb[j] - m) * iv + F32(0.5)) & 0xFF
            h, _ = fp16_round(d)
            put_u16(o, 0, h)
            h, _ = fp16_round(m)
            put_u16(o, 2, h)
            _pack_q5h(Lq, o, 8, 4)
