"""Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256-element super-blocks), compiled: ggml's quantize_row_*_K_ref and, with
importance weights, quantize_row_*_K_impl (the algorithms are ggml's, MIT License, Copyright (c) 2023-2026 The ggml
authors; gguf-targets.md §8.5 describes the reference path).

Kernel signature: ``kernel(x, qw, has_qw, out)`` with x float32 ``[rows, n]``, qw float32 ``[n]`` (one weight per
column, as ggml_quantize_chunk's ``imatrix``), out uint8 ``[rows, row bytes]``.
"""

import numpy as np
from numba import njit

from ._fit import EPS, make_q3, make_qkx, make_qp, make_qx
from ._numeric import F32, JIT, I, as_int8, fp16_round, nearest_int, put_u16

QK_K = 256


@njit(**JIT)
def _pack_2bit(L, o, at):
    for h in range(2):
        for l in range(32):
            e = 128 * h + l
            o[at + 32 * h + l] = (I(L[e]) | (I(L[e + 32]) << 2) | (I(L[e + 64]) << 4) | (I(L[e + 96]) << 6)) & 0xFF


@njit(**JIT)
def _block_sum_x2(xb):
    s = F32(0.0)
    for j in range(QK_K):
        s += xb[j] * xb[j]
    return s


@njit(**JIT)
def q2_k(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(16, np.uint8)
    weight = np.empty(16, np.float32)
    scales = np.empty(16, np.float32)
    mins = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.uint8)
    Lm = np.empty(16, np.uint8)
    for r in range(rows):
        for b in range(n // QK_K):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * 84:(b + 1) * 84]
            if has_qw:
                sigma2 = _block_sum_x2(xb) / F32(QK_K)
                for j in range(16):
                    q = qw[b * QK_K + 16 * j:b * QK_K + 16 * j + 16]
                    for l in range(16):
                        v = xb[16 * j + l]
                        weight[l] = q[l] * np.sqrt(sigma2 + v * v)
                    s = F32(0.0)
                    for l in range(16):
                        s += weight[l]
                    sw[j] = s
                    scales[j], mins[j] = make_qkx(xb[16 * j:16 * j + 16], weight, L[16 * j:16 * j + 16], Laux, 3,
                                                  F32(-0.9), F32(0.05), 36, False)
                dm = make_qp(scales, Ls, 15, sw)
                mm = make_qp(mins, Lm, 15, sw)
                hd, dval = fp16_round(dm)
                hm, mval = fp16_round(mm)
                for j in range(16):
                    o[j] = (I(Ls[j]) | (I(Lm[j]) << 4)) & 0xFF
            else:
                max_scale = F32(0.0)
                max_min = F32(0.0)
                for j in range(16):
                    for l in range(16):
                        weight[l] = abs(xb[16 * j + l])
                    scales[j], mins[j] = make_qkx(xb[16 * j:16 * j + 16], weight, L[16 * j:16 * j + 16], Laux, 3,
                                                  F32(-0.5), F32(0.1), 15, True)
                    if scales[j] > max_scale:
                        max_scale = scales[j]
                    if mins[j] > max_min:
                        max_min = mins[j]
                if max_scale > 0:
                    iscale = F32(15.0) / max_scale
                    for j in range(16):
                        o[j] = nearest_int(iscale * scales[j]) & 0xFF
                    hd, dval = fp16_round(max_scale / F32(15.0))
                else:
                    for j in range(16):
                        o[j] = 0
                    hd, dval = fp16_round(F32(0.0))
                if max_min > 0:
                    iscale = F32(15.0) / max_min
                    for j in range(16):
                        o[j] = (I(o[j]) | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
                    hm, mval = fp16_round(max_min / F32(15.0))
                else:
                    hm, mval = fp16_round(F32(0.0))
            put_u16(o, 80, hd)
            put_u16(o, 82, hm)
            for j in range(16):
                d = dval * F32(I(o[j]) & 0xF)
                if d == 0:
                    continue
                m = mval * F32(I(o[j]) >> 4)
                for i in range(16):
                    L[16 * j + i] = max(0, min(3, nearest_int((xb[16 * j + i] + m) / d)))
            _pack_2bit(L, o, 16)


@njit(**JIT)
def q3_k(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    weight = np.empty(16, np.float32)
    sw = np.empty(16, np.float32)
    Ls = np.empty(16, np.int8)
    for r in range(rows):
        for b in range(n // QK_K):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * 110:(b + 1) * 110]
            for k in range(96, 108):
                o[k] = 0
            if has_qw:
                sigma2 = F32(2.0) * _block_sum_x2(xb) / F32(QK_K)
                for j in range(16):
                    q = qw[b * QK_K + 16 * j:b * QK_K + 16 * j + 16]
                    for l in range(16):
                        v = xb[16 * j + l]
                        weight[l] = q[l] * np.sqrt(sigma2 + v * v)
                    s = F32(0.0)
                    for l in range(16):
                        s += weight[l]
                    sw[j] = s
                    scales[j] = make_qx(xb[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 4, weight, True)
                d_block = make_qx(scales, Ls, 32, sw, True)
                for j in range(16):
                    l = I(Ls[j])
                    if j < 8:
                        o[96 + j] = l & 0xF
                    else:
                        o[96 + j - 8] = (I(o[96 + j - 8]) | ((l & 0xF) << 4)) & 0xFF
                    l >>= 4
                    o[96 + 8 + j % 4] = (I(o[96 + 8 + j % 4]) | (l << (2 * (j // 4)))) & 0xFF
                hd, dval = fp16_round(d_block)
            else:
                max_scale = F32(0.0)
                amax = F32(0.0)
                for j in range(16):
                    scales[j] = make_q3(xb[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 4)
                    s = abs(scales[j])
                    if s > amax:
                        amax = s
                        max_scale = scales[j]
                if max_scale != 0:
                    iscale = F32(-32.0) / max_scale
                    for j in range(16):
                        l = max(-32, min(31, as_int8(nearest_int(iscale * scales[j])))) + 32
                        if j < 8:
                            o[96 + j] = l & 0xF
                        else:
                            o[96 + j - 8] = (I(o[96 + j - 8]) | ((l & 0xF) << 4)) & 0xFF
                        l >>= 4
                        o[96 + 8 + j % 4] = (I(o[96 + 8 + j % 4]) | (l << (2 * (j // 4)))) & 0xFF
                    hd, dval = fp16_round(F32(1.0) / iscale)
                else:
                    hd, dval = fp16_round(F32(0.0))
            put_u16(o, 108, hd)
            for j in range(16):
                sc = (I(o[96 + j]) & 0xF) if j < 8 else (I(o[96 + j - 8]) >> 4)
                sc = (sc | (((I(o[96 + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
                d = dval * F32(sc)
                if d == 0:
                    continue
                for i in range(16):
                    L[16 * j + i] = max(-4, min(3, nearest_int(xb[16 * j + i] / d))) + 4
            for k in range(32):
                o[k] = 0
            for j in range(QK_K):
                if L[j] > 3:
                    o[j % 32] = I(o[j % 32]) | (1 << (j // 32))
                    L[j] -= 4
            _pack_2bit(L, o, 32)


@njit(**JIT)
def _pack_scale_min(ls, lm, o, at):
    for j in range(8):
        a = I(ls[j])
        c = I(lm[j])
        if j < 4:
            o[at + j] = a
            o[at + j + 4] = c
        else:
            o[at + j + 4] = (a & 0xF) | ((c & 0xF) << 4)
            o[at + j - 4] = (I(o[at + j - 4]) | ((a >> 4) << 6)) & 0xFF
            o[at + j] = (I(o[at + j]) | ((c >> 4) << 6)) & 0xFF


@njit(**JIT)
def _scale_min(o, at, j):
    if j < 4:
        return I(o[at + j]) & 63, I(o[at + j + 4]) & 63
    return ((I(o[at + j + 4]) & 0xF) | ((I(o[at + j - 4]) >> 6) << 4),
            (I(o[at + j + 4]) >> 4) | ((I(o[at + j]) >> 6) << 4))


@njit(**JIT)
def _q45_k_block(xb, qw, has_qw, o, nmax, rmin, nstep, L, Laux, weight, scales, mins, sw, Ls, Lm):
    """The shared part of Q4_K and Q5_K: fits, 6-bit scales and mins, d, dmin, requantized L (0..nmax)."""
    sigma2 = F32(2.0) * _block_sum_x2(xb) / F32(QK_K) if has_qw else F32(0.0)
    for j in range(8):
        x32 = xb[32 * j:32 * j + 32]
        if has_qw:
            q = qw[32 * j:32 * j + 32]
            for l in range(32):
                weight[l] = q[l] * np.sqrt(sigma2 + x32[l] * x32[l])
            s = F32(0.0)
            for l in range(32):
                s += weight[l]
            sw[j] = s
            scales[j], mins[j] = make_qkx(x32, weight, L[32 * j:32 * j + 32], Laux, nmax, F32(-0.9), F32(0.05), 36,
                                          False)
        else:
            s = F32(0.0)
            for l in range(32):
                s += x32[l] * x32[l]
            av = np.sqrt(s / F32(32.0))
            for l in range(32):
                weight[l] = av + abs(x32[l])
            scales[j], mins[j] = make_qkx(x32, weight, L[32 * j:32 * j + 32], Laux, nmax, rmin, F32(0.1), nstep,
                                          False)
    if has_qw:
        d_block = make_qp(scales, Ls, 63, sw)
        m_block = make_qp(mins, Lm, 63, sw)
        for j in range(8):      # MIN(63, ...): a no-op after make_qp's own clamp, kept as in ggml's Q5_K
            Ls[j] = min(63, I(Ls[j]))
            Lm[j] = min(63, I(Lm[j]))
    else:
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(8):
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = F32(63.0) / max_scale if max_scale > 0 else F32(0.0)
        inv_min = F32(63.0) / max_min if max_min > 0 else F32(0.0)
        for j in range(8):
            Ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            Lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        d_block = max_scale / F32(63.0)
        m_block = max_min / F32(63.0)
    _pack_scale_min(Ls, Lm, o, 4)
    hd, dval = fp16_round(d_block)
    hm, mval = fp16_round(m_block)
    put_u16(o, 0, hd)
    put_u16(o, 2, hm)
    for j in range(8):
        sc, m = _scale_min(o, 4, j)
        d = dval * F32(sc)
        if d == 0:
            continue
        dm = mval * F32(m)
        for i in range(32):
            L[32 * j + i] = max(0, min(nmax, nearest_int((xb[32 * j + i] + dm) / d)))


@njit(**JIT)
def q4_k(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(32, np.uint8)
    weight = np.empty(32, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    sw = np.empty(8, np.float32)
    Ls = np.empty(8, np.uint8)
    Lm = np.empty(8, np.uint8)
    for r in range(rows):
        for b in range(n // QK_K):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * 144:(b + 1) * 144]
            _q45_k_block(xb, qw[b * QK_K:(b + 1) * QK_K], has_qw, o, 15, F32(-1.0), 20, L, Laux, weight, scales,
                         mins, sw, Ls, Lm)
            for k in range(4):
                for l in range(32):
                    o[16 + 32 * k + l] = I(L[64 * k + l]) | (I(L[64 * k + 32 + l]) << 4)


@njit(**JIT)
def q5_k(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK_K, np.uint8)
    Laux = np.empty(32, np.uint8)
    weight = np.empty(32, np.float32)
    scales = np.empty(8, np.float32)
    mins = np.empty(8, np.float32)
    sw = np.empty(8, np.float32)
    Ls = np.empty(8, np.uint8)
    Lm = np.empty(8, np.uint8)
    for r in range(rows):
        for b in range(n // QK_K):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * 176:(b + 1) * 176]
            _q45_k_block(xb, qw[b * QK_K:(b + 1) * QK_K], has_qw, o, 31, F32(-0.5), 15, L, Laux, weight, scales,
                         mins, sw, Ls, Lm)
            for l in range(32):
                o[16 + l] = 0
            for k in range(4):
                for l in range(32):
                    a = I(L[64 * k + l])
                    c = I(L[64 * k + 32 + l])
                    if a > 15:
                        a -= 16
                        o[16 + l] = I(o[16 + l]) | (1 << (2 * k))
                    if c > 15:
                        c -= 16
                        o[16 + l] = I(o[16 + l]) | (2 << (2 * k))
                    o[48 + 32 * k + l] = a | (c << 4)


@njit(**JIT)
def q6_k(x, qw, has_qw, out):
    rows, n = x.shape
    L = np.empty(QK_K, np.int8)
    scales = np.empty(16, np.float32)
    for r in range(rows):
        for b in range(n // QK_K):
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            o = out[r, b * 210:(b + 1) * 210]
            max_scale = F32(0.0)
            max_abs = F32(0.0)
            for j in range(16):
                s = make_qx(xb[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 32,
                            qw[b * QK_K + 16 * j:b * QK_K + 16 * j + 16], has_qw)
                scales[j] = s
                if abs(s) > max_abs:
                    max_abs = abs(s)
                    max_scale = s
            if max_abs < EPS:
                for k in range(210):
                    o[k] = 0
                continue
            iscale = F32(-128.0) / max_scale
            hd, dval = fp16_round(F32(1.0) / iscale)
            put_u16(o, 208, hd)
            for j in range(16):
                o[192 + j] = min(127, nearest_int(iscale * scales[j])) & 0xFF
            for j in range(16):
                d = dval * F32(as_int8(I(o[192 + j])))
                if d == 0:
                    continue
                for i in range(16):
                    L[16 * j + i] = max(-32, min(31, nearest_int(xb[16 * j + i] / d))) + 32
            for h in range(2):
                for l in range(32):
                    e = 128 * h + l
                    q1 = I(L[e])
                    q2 = I(L[e + 32])
                    q3 = I(L[e + 64])
                    q4 = I(L[e + 96])
                    o[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                    o[64 * h + 32 + l] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                    o[128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
