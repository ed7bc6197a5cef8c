"""K-quant quantizers (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) in NumPy, byte-identical to ggml's reference quantizers.

``quantize(data, ggml_type)`` gives the same bytes as ``ggml_quantize_chunk(type, data, ..., imatrix=NULL)``, i.e.
what ``llama-quantize`` writes without an importance matrix (gguf-targets.md §8; the algorithms are ggml's,
MIT License, Copyright (c) 2023-2026 The ggml authors).

How the port stays bit-exact while being vectorised (§8.3):

* every value is float32 and every expression is evaluated in ggml's order, one rounding per operation;
* ggml's sums are sequential loops over the elements of one sub-block.  Data is therefore laid out as
  ``(elements_in_subblock, n_subblocks)`` and summed with ``np.add.reduce(axis=0)``, which NumPy evaluates as a
  sequential accumulation per column (the columns are the sub-blocks) as long as there are at least 2 of them;
* ``nearest_int`` is ggml's magic-number rounding (round half to even for |v| < 2**22, garbage bits beyond).  The fast
  path uses ``np.rint``; each use first checks (on per-sub-block extremes, cheaply) that no value can leave that range
  and otherwise emulates the bit trick exactly;
* the iterative fits keep, per sub-block, the parameters of the best candidate found so far and recompute its levels
  once at the end instead of copying levels on every improvement.

Blocks are processed in chunks that keep the working set in the CPU cache.  Finite input of any magnitude matches
ggml (also where x*x overflows); NaN and inf input are not supported (ggml's bytes are garbage for them too).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

__all__ = ["K_TYPES", "QK_K", "quantize", "quantize_parallel", "row_bytes"]

QK_K = 256
K_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)

F32 = np.float32
_MAGIC = F32(12582912.0)          # 1.5 * 2**23: ggml's nearest_int adds this and reads the low mantissa bits
_SAFE_LIMIT = F32(4194000.0)      # below 2**22: np.rint equals ggml's nearest_int
_EPS = F32(1e-15)                 # GROUP_MAX_EPS

try:  # the clip ufunc itself, without np.clip's Python wrapper (about 2 us per call)
    from numpy._core.umath import clip as _clip
except ImportError:  # pragma: no cover - older NumPy
    _clip = np.clip


def row_bytes(ggml_type, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[T(ggml_type)]
    return n_per_row // block * size


# ---------------------------------------------------------------------------------------------------------------
# numeric helpers


def _seq_sum(a, out=None):
    """Sequential float32 sum over axis 0 (one column per sub-block), started from +0 like ggml's ``sum = 0`` loops."""
    r = np.add.reduce(a, axis=0, out=out)
    r += F32(0.0)   # -0.0 + 0 = +0, as when the C loop starts from 0
    return r


def _exact_round_clip(v, lo, hi):
    """v <- clamp(nearest_int(v), lo, hi) in place, emulating ggml's bit trick for any v (also huge, inf, nan)."""
    np.add(v, _MAGIC, out=v)
    bits = v.view(np.int32)
    np.bitwise_and(bits, 0x7FFFFF, out=bits)
    np.subtract(bits, 0x400000, out=bits)
    _clip(bits, lo, hi, out=bits)
    v[...] = bits.astype(F32)


def _round_clip(v, lo, hi, safe, need_lo=True, need_hi=True):
    """v <- clamp(nearest_int(v), lo, hi) in place.  ``safe``: all |v| < 2**22 are known (then np.rint is exact).
    ``need_lo``/``need_hi`` False: that bound is known not to bind (saves a pass)."""
    if not safe:
        _exact_round_clip(v, lo, hi)
        return
    np.rint(v, out=v)
    if need_lo and need_hi:
        _clip(v, F32(lo), F32(hi), out=v)
    elif need_lo:
        np.maximum(v, F32(lo), out=v)
    elif need_hi:
        np.minimum(v, F32(hi), out=v)


def _bounds(va, vb, lo, hi):
    """(safe, need_lo, need_hi) for values whose extremes per sub-block are va and vb (float32 arrays)."""
    vmax = np.maximum(va, vb).max(initial=-np.inf)   # nan propagates and fails the test below
    vmin = np.minimum(va, vb).min(initial=np.inf)
    if not (vmax < _SAFE_LIMIT and vmin > -_SAFE_LIMIT):
        return False, True, True
    return True, bool(vmin < lo), bool(vmax > hi)


def _blend_mask(cond):
    """int32 mask (-1 where cond) for :func:`_blend`."""
    return np.negative(cond, dtype=np.int32, casting="unsafe")


def _blend(dst, src, mask):
    """dst <- where(mask, src, dst) in place for float32 1-D arrays, with integer ops (np.where and boolean
    assignment are 5-20x slower than arithmetic when the mask is dense and irregular)."""
    d = dst.view(np.int32)
    t = np.bitwise_xor(d, src.view(np.int32))
    np.bitwise_and(t, mask, out=t)
    np.bitwise_xor(d, t, out=d)


def _nearest_int(v):
    """ggml nearest_int of a float32 array (exact for any value), as int32."""
    bits = (v.astype(F32) + _MAGIC).view(np.int32)
    return (bits & 0x7FFFFF) - 0x400000


def _max_from_zero(a):
    """ggml's ``m = 0; for v: if (v > m) m = v`` per row: max(0, a[:, j]...), NaN skipped, never -0.0."""
    m = np.fmax.reduce(a, axis=1, initial=F32(0.0))
    return np.where(m > 0, m, F32(0.0))


def _first_absmax(a, axis):
    """The signed element with the largest |a| along ``axis`` for a 2-D array: ggml's ``amax = 0; if (|v| > amax)``
    scan (first occurrence; NaN skipped; 0 if nothing beats 0).

    The sign is that of the max or of the min unless they tie in magnitude; only tied lanes need an argmax."""
    hi = np.fmax.reduce(a, axis=axis, initial=F32(0.0))
    lo = np.fmin.reduce(a, axis=axis, initial=F32(0.0))
    xm = np.where(hi >= -lo, hi, lo)
    tie = np.flatnonzero((hi == -lo) & (hi != 0))
    if tie.size:
        sub = np.take(a, tie, axis=1 - axis)   # the tied lanes
        mag = np.abs(sub)
        mag[np.isnan(mag)] = -1.0
        idx = np.argmax(mag, axis=axis)
        xm[tie] = np.take_along_axis(sub, np.expand_dims(idx, axis), axis=axis).squeeze(axis)
    return xm


class _Work:
    """Reusable float32 scratch arrays, one set per thread."""

    def __init__(self):
        self._bufs = {}

    def get(self, name, shape):
        size = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = self._bufs[name] = np.empty(size, dtype=F32)
        return buf[:size].reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# fitting routines (§8.4), vectorised over sub-blocks: X, W are (n, S) = (elements, sub-blocks)


def _make_qkx2(X, W, nmax, rmin, rdelta, nstep, use_mad, work):
    """Asymmetric fit x ~ scale*L - m with L in [0, nmax]; returns (scale, the_min, L) as (S,), (S,), (n, S)."""
    n, S = X.shape
    xmin = X.min(axis=0)
    mx = X.max(axis=0)
    sw = np.add.reduce(W, axis=0)                      # C starts from w[0], not 0
    t = work.get("t", X.shape)
    np.multiply(W, X, out=t)
    sx = np.add.reduce(t, axis=0)
    mn = np.where(xmin > 0, F32(0.0), xmin)
    flat = mx == mn
    notflat = ~flat
    zero = np.zeros(S, dtype=F32)
    fnmax = F32(nmax)

    den = mx - mn
    den[flat] = F32(1.0)
    iscale = fnmax / den
    scale = F32(1.0) / iscale

    La = work.get("La", X.shape)
    _levels(X, iscale, mn, xmin, mx, nmax, La)
    # best = sum w * err(scale*L + mn - x)
    best = _fit_error(X, W, La, scale, mn, use_mad, work)

    best_isc = iscale.copy()
    best_off = mn.copy()
    WL = work.get("WL", X.shape)
    for s in range(nstep + 1):
        num = F32(rmin) + F32(rdelta) * F32(s) + fnmax
        den = mx - mn
        den[flat] = F32(1.0)
        isc = num / den
        _levels(X, isc, mn, xmin, mx, nmax, La)
        np.multiply(W, La, out=WL)
        sl = _seq_sum(WL)
        np.multiply(WL, La, out=t)
        sl2 = _seq_sum(t)
        np.multiply(WL, X, out=t)
        sxl = _seq_sum(t)
        D = sw * sl2 - sl * sl
        ts = (sw * sxl - sx * sl) / D
        tm = (sl2 * sx - sl * sxl) / D
        pos = _blend_mask(tm > 0)
        _blend(tm, zero, pos)
        _blend(ts, sxl / sl2, pos)
        e = _fit_error(X, W, La, ts, tm, use_mad, work)
        upd = (D > 0) & (e < best)
        upd &= notflat
        if upd.any():
            m = _blend_mask(upd)
            _blend(best, e, m)
            _blend(scale, ts, m)
            _blend(best_isc, isc, m)
            _blend(best_off, mn, m)
            _blend(mn, tm, m)

    L = work.get("L", X.shape)
    _levels(X, best_isc, best_off, xmin, mx, nmax, L)
    if flat.any():
        scale[flat] = F32(0.0)
        L[:, flat] = F32(0.0)
    return scale, -mn, L


def _levels(X, isc, off, xmin, xmax, nmax, out):
    """out <- clamp(nearest_int(isc * (X - off)), 0, nmax)."""
    va = isc * (xmin - off)
    vb = isc * (xmax - off)
    safe, need_lo, need_hi = _bounds(va, vb, 0, nmax)
    np.subtract(X, off, out=out)
    np.multiply(out, isc, out=out)
    _round_clip(out, 0, nmax, safe, need_lo, need_hi)


def _fit_error(X, W, L, scale, off, use_mad, work):
    """sum_i w_i * err(scale*L_i + off - x_i) per sub-block, err = |d| or d*d."""
    d = work.get("d", X.shape)
    np.multiply(L, scale, out=d)
    np.add(d, off, out=d)
    np.subtract(d, X, out=d)
    if use_mad:
        np.abs(d, out=d)
    else:
        np.square(d, out=d)
    np.multiply(d, W, out=d)
    return _seq_sum(d)


def _make_qx(X, nmax, work):
    """Symmetric fit with rmse_type 1 (Q6_K); returns (scale (S,), L (n, S) in [0, 2*nmax-1])."""
    n, S = X.shape
    xm = _first_absmax(X, 0)
    amax = np.abs(xm)
    zero = amax < _EPS
    xm = np.where(zero, F32(1.0), xm)
    w = work.get("w", X.shape)
    np.multiply(X, X, out=w)
    wx = work.get("wx", X.shape)
    np.multiply(w, X, out=wx)
    l = work.get("l", X.shape)
    t = work.get("t", X.shape)
    fnmax = F32(nmax)

    def fit(isc):
        # |isc * x| <= (nmax + 0.9) |x| / |xm| < 2**22 always: no guard needed
        np.multiply(X, isc, out=l)
        _round_clip(l, -nmax, nmax - 1, True)
        np.multiply(wx, l, out=t)
        slx = _seq_sum(t)
        np.multiply(w, l, out=t)
        np.multiply(t, l, out=t)
        sl2 = _seq_sum(t)
        return slx, sl2

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
            m = _blend_mask(upd)
            _blend(scale, slx / sl2, m)
            _blend(best, scale * slx, m)
            _blend(best_isc, isc, m)
    L = work.get("L", X.shape)
    np.multiply(X, best_isc, out=L)
    _round_clip(L, -nmax, nmax - 1, True)
    L += fnmax
    if zero.any():
        scale[zero] = F32(0.0)
        L[:, zero] = F32(0.0)
    return scale, L


def _make_q3(X, nmax, work):
    """Symmetric fit plus coordinate descent (Q3_K); returns (scale (S,), L (n, S) in [0, 2*nmax-1]).

    The descent visits the elements of a sub-block in order, updating the sums immediately, so it loops over the n
    element positions and is vectorised across sub-blocks.  A pass that changes nothing in a sub-block leaves it in
    the same state, so running further passes on it (ggml stops) changes nothing either."""
    n, S = X.shape
    xm = _first_absmax(X, 0)
    zero = np.abs(xm) < _EPS
    xm = np.where(zero, F32(1.0), xm)
    fnmax = F32(nmax)
    isc = -fnmax / xm
    l = work.get("l", X.shape)
    np.multiply(X, isc, out=l)
    _round_clip(l, -nmax, nmax - 1, True)
    w = X * X
    wx = w * X
    t = wx * l
    slx = _seq_sum(t)
    np.multiply(w, l, out=t)
    np.multiply(t, l, out=t)
    sl2 = _seq_sum(t)
    # pass 1 on all sub-blocks, later passes only on those the previous pass changed (the others are stable)
    active = np.flatnonzero(_q3_descent_pass(X, w, wx, l, slx, sl2, nmax))
    for _ in range(4):
        if not active.size:
            break
        la, slxa, sl2a = l[:, active], slx[active], sl2[active]
        changed = _q3_descent_pass(X[:, active], w[:, active], wx[:, active], la, slxa, sl2a, nmax)
        l[:, active] = la
        slx[active] = slxa
        sl2[active] = sl2a
        active = active[changed]
    scale = np.where(sl2 > 0, slx / sl2, F32(0.0))
    l += fnmax
    if zero.any():
        scale[zero] = F32(0.0)
        l[:, zero] = F32(0.0)
    return scale, l


def _q3_descent_pass(X, w, wx, l, slx, sl2, nmax):
    """One coordinate-descent pass of make_q3_quants over element positions 0..n-1, updating l, slx, sl2 in place.
    Returns which sub-blocks changed.  Only about 2% of the sub-blocks have a candidate level at a position, so the
    acceptance test runs on those alone."""
    changed = np.zeros(X.shape[1], dtype=bool)
    for i in range(X.shape[0]):
        li, wi, wxi = l[i], w[i], wx[i]
        a = slx - wxi * li
        b = sl2 - (wi * li) * li
        v = (X[i] * b) / a
        _exact_round_clip(v, -nmax, nmax - 1)
        cand = np.flatnonzero((a > 0) & (v != li))
        if not cand.size:
            continue
        vc = v[cand]
        a2 = a[cand] + wxi[cand] * vc
        b2 = b[cand] + (wi[cand] * vc) * vc
        slxc = slx[cand]
        ok = (b2 > 0) & ((a2 * a2) * sl2[cand] > (slxc * slxc) * b2)
        sel = cand[ok]
        li[sel] = vc[ok]
        slx[sel] = a2[ok]
        sl2[sel] = b2[ok]
        changed[sel] = True
    return changed


# ---------------------------------------------------------------------------------------------------------------
# per-type block quantizers: x is (B, 256) float32, out is (B, type_size) uint8


def _subblocks(x, n, work, name="X"):
    """(B, 256) -> (n, B*256/n): column s = sub-block s (block s // (256/n))."""
    B = x.shape[0]
    X = work.get(name, (n, B * QK_K // n))
    X[...] = x.reshape(-1, n).T
    return X


def _to_blocks(L, B):
    """(n, S) levels -> (B, 256) uint8 in element order."""
    return L.T.reshape(B, QK_K).astype(np.uint8)


def _pack_2bit(L):
    """Q2_K/Q3_K qs: (B, 256) 2-bit values -> (B, 64)."""
    v = L.reshape(-1, 2, 4, 32)
    return (v[:, :, 0] | (v[:, :, 1] << 2) | (v[:, :, 2] << 4) | (v[:, :, 3] << 6)).reshape(-1, 64)


def _bitplanes(bits):
    """(B, 8, 32) bools -> (B, 32) bytes with bit k from plane k."""
    planes = bits.astype(np.uint8)
    out = planes[:, 0].copy()
    for k in range(1, 8):
        out |= planes[:, k] << k
    return out


def _requant_asym(X, d_sub, dm_sub, L, nmax):
    """Q2_K/Q4_K/Q5_K requantization: L = clamp(nearest_int((x + dm)/dd), 0, nmax) where dd != 0, else keep L."""
    keep = d_sub == 0
    dd = np.where(keep, F32(1.0), d_sub)
    va = (X.min(axis=0) + dm_sub) / dd
    vb = (X.max(axis=0) + dm_sub) / dd
    safe, need_lo, need_hi = _bounds(va[~keep], vb[~keep], 0, nmax)
    q = X + dm_sub
    q /= dd
    _round_clip(q, 0, nmax, safe, need_lo, need_hi)
    if keep.any():
        q[:, keep] = L[:, keep]
    return q


def _requant_sym(X, d_sub, L, nmin, nmax):
    """Q3_K/Q6_K requantization: L = clamp(nearest_int(x/dd), nmin, nmax) - nmin where dd != 0, else keep L."""
    keep = d_sub == 0
    dd = np.where(keep, F32(1.0), d_sub)
    va = X.min(axis=0) / dd
    vb = X.max(axis=0) / dd
    safe, need_lo, need_hi = _bounds(va[~keep], vb[~keep], nmin, nmax)
    q = X / dd
    _round_clip(q, nmin, nmax, safe, need_lo, need_hi)
    q -= F32(nmin)
    if keep.any():
        q[:, keep] = L[:, keep]
    return q


def _q2_k(x, out, work):
    B = x.shape[0]
    X = _subblocks(x, 16, work)
    W = work.get("W", X.shape)
    np.abs(X, out=W)
    scales, mins, L = _make_qkx2(X, W, 3, -0.5, 0.1, 15, True, work)
    scales = scales.reshape(B, 16)
    mins = mins.reshape(B, 16)
    max_s = _max_from_zero(scales)
    max_m = _max_from_zero(mins)
    q4 = F32(15.0)
    has_s = max_s > 0
    iscale = np.where(has_s, q4 / np.where(has_s, max_s, F32(1.0)), F32(0.0))
    sc = np.where(has_s[:, None], _nearest_int(iscale[:, None] * scales), 0).astype(np.uint8)
    d16 = np.where(has_s, max_s / q4, F32(0.0)).astype(np.float16)
    has_m = max_m > 0
    imin = np.where(has_m, q4 / np.where(has_m, max_m, F32(1.0)), F32(0.0))
    mq = np.where(has_m[:, None], _nearest_int(imin[:, None] * mins), 0)
    sc |= (mq << 4).astype(np.uint8)
    dmin16 = np.where(has_m, max_m / q4, F32(0.0)).astype(np.float16)
    d = d16.astype(F32)[:, None] * (sc & 15).astype(F32)
    dm = dmin16.astype(F32)[:, None] * (sc >> 4).astype(F32)
    q = _requant_asym(X, d.reshape(-1), dm.reshape(-1), L, 3)
    qs = _pack_2bit(_to_blocks(q, B))
    out[:, 0:16] = sc
    out[:, 16:80] = qs
    out[:, 80:82] = d16.view(np.uint8).reshape(B, 2)
    out[:, 82:84] = dmin16.view(np.uint8).reshape(B, 2)


def _q3_k(x, out, work):
    B = x.shape[0]
    X = _subblocks(x, 16, work)
    s, L = _make_q3(X, 4, work)
    s = s.reshape(B, 16)
    ms = _first_absmax(s, 1)
    has = ms != 0
    iscale = F32(-32.0) / np.where(has, ms, F32(1.0))
    q = np.clip(_nearest_int(iscale[:, None] * s).astype(np.int8).astype(np.int32), -32, 31) + 32
    q = np.where(has[:, None], q, 32)   # no scales: bytes stay 0, i.e. decoded scale -32 with d = 0
    d16 = np.where(has, F32(1.0) / iscale, F32(0.0)).astype(np.float16)
    q = q.astype(np.uint8)
    sc = np.zeros((B, 12), dtype=np.uint8)
    sc[:, 0:8] = q[:, 0:8] & 15
    sc[:, 0:8] |= (q[:, 8:16] & 15) << 4
    hi = q >> 4                                  # (B, 16): 2 bits each
    for j in range(16):
        sc[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    sc = np.where(has[:, None], sc, 0).astype(np.uint8)
    sc_dec = q.astype(np.int32) - 32
    d = d16.astype(F32)[:, None] * sc_dec.astype(F32)
    d = np.where(has[:, None], d, F32(0.0))
    q3 = _requant_sym(X, d.reshape(-1), L, -4, 3)
    Lb = _to_blocks(q3, B)                       # 0..7
    high = Lb > 3
    hmask = _bitplanes(high.reshape(B, 8, 32))
    Lb = Lb - (high.astype(np.uint8) << 2)
    out[:, 0:32] = hmask
    out[:, 32:96] = _pack_2bit(Lb)
    out[:, 96:108] = sc
    out[:, 108:110] = d16.view(np.uint8).reshape(B, 2)


def _pack_scale_min_k4(ls, lm):
    """Q4_K/Q5_K 12-byte packing of 8 six-bit scales and 8 six-bit mins per block."""
    B = ls.shape[0]
    sc = np.zeros((B, 12), dtype=np.uint8)
    sc[:, 0:4] = ls[:, 0:4]
    sc[:, 4:8] = lm[:, 0:4]
    sc[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    sc[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    sc[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return sc


def _q45_k_scales(x, nmax, rmin, nstep, work):
    """Shared part of Q4_K and Q5_K: fits, 6-bit scales, d/dmin and requantized levels (n=32, S) -> blocks."""
    B = x.shape[0]
    X = _subblocks(x, 32, work)
    W = work.get("W", X.shape)
    np.multiply(X, X, out=W)
    sum_x2 = _seq_sum(W)
    av = np.sqrt(sum_x2 / F32(32.0))
    np.abs(X, out=W)
    W += av
    scales, mins, L = _make_qkx2(X, W, nmax, rmin, 0.1, nstep, False, work)
    scales = scales.reshape(B, 8)
    mins = mins.reshape(B, 8)
    max_s = _max_from_zero(scales)
    max_m = _max_from_zero(mins)
    inv_s = np.where(max_s > 0, F32(63.0) / np.where(max_s > 0, max_s, F32(1.0)), F32(0.0))
    inv_m = np.where(max_m > 0, F32(63.0) / np.where(max_m > 0, max_m, F32(1.0)), F32(0.0))
    ls = np.minimum(_nearest_int(inv_s[:, None] * scales).astype(np.uint8), 63)
    lm = np.minimum(_nearest_int(inv_m[:, None] * mins).astype(np.uint8), 63)
    d16 = (max_s / F32(63.0)).astype(np.float16)
    dmin16 = (max_m / F32(63.0)).astype(np.float16)
    d = d16.astype(F32)[:, None] * ls.astype(F32)
    dm = dmin16.astype(F32)[:, None] * lm.astype(F32)
    q = _requant_asym(X, d.reshape(-1), dm.reshape(-1), L, nmax)
    return _to_blocks(q, B), d16, dmin16, _pack_scale_min_k4(ls, lm)


def _q4_k(x, out, work):
    B = x.shape[0]
    Lb, d16, dmin16, sc = _q45_k_scales(x, 15, -1.0, 20, work)
    v = Lb.reshape(B, 4, 2, 32)
    out[:, 0:2] = d16.view(np.uint8).reshape(B, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(B, 2)
    out[:, 4:16] = sc
    out[:, 16:144] = (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(B, 128)


def _q5_k(x, out, work):
    B = x.shape[0]
    Lb, d16, dmin16, sc = _q45_k_scales(x, 31, -0.5, 15, work)
    high = Lb > 15                                # element 64k + 32t + l -> bit 2k + t of qh[l]
    qh = _bitplanes(high.reshape(B, 8, 32))
    v = (Lb & 15).reshape(B, 4, 2, 32)
    out[:, 0:2] = d16.view(np.uint8).reshape(B, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(B, 2)
    out[:, 4:16] = sc
    out[:, 16:48] = qh
    out[:, 48:176] = (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(B, 128)


def _q6_k(x, out, work):
    B = x.shape[0]
    X = _subblocks(x, 16, work)
    s, L = _make_qx(X, 32, work)
    s = s.reshape(B, 16)
    ms = _first_absmax(s, 1)
    zero = np.abs(ms) < _EPS
    iscale = F32(-128.0) / np.where(zero, F32(1.0), ms)
    d16 = (F32(1.0) / iscale).astype(np.float16)
    sc = np.minimum(_nearest_int(iscale[:, None] * s), 127).astype(np.int8)
    d = d16.astype(F32)[:, None] * sc.astype(F32)
    q = _requant_sym(X, d.reshape(-1), L, -32, 31)
    Lb = _to_blocks(q, B).reshape(B, 2, 4, 32)  # [half, quarter, l]
    low = Lb & 15
    ql = low[:, :, 0:2] | (low[:, :, 2:4] << 4)  # (B, 2, 2, 32)
    hb = Lb >> 4
    qh = hb[:, :, 0] | (hb[:, :, 1] << 2) | (hb[:, :, 2] << 4) | (hb[:, :, 3] << 6)
    out[:, 0:128] = ql.reshape(B, 128)
    out[:, 128:192] = qh.reshape(B, 64)
    out[:, 192:208] = sc.view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(B, 2)
    if zero.any():
        out[zero] = 0


_QUANTIZERS = {T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k}
# elements quantized per step: big enough to amortise NumPy's per-call overhead on the per-sub-block arrays, small
# enough to keep the working set in L2 (measured; Q3_K's descent works on 1/16-size arrays, so it wants more)
CHUNK_ELEMENTS = {T.Q2_K: 1 << 16, T.Q3_K: 1 << 18, T.Q4_K: 1 << 16, T.Q5_K: 1 << 16, T.Q6_K: 1 << 17}


# ---------------------------------------------------------------------------------------------------------------
# public API


def _prepare(data, ggml_type):
    qtype = T(int(ggml_type))
    if qtype not in _QUANTIZERS:
        raise ValueError(f"{qtype.name} is not a K-quant type (expected one of "
                         f"{', '.join(t.name for t in K_TYPES)})")
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D [rows, n_per_row] array, got shape {data.shape}")
    rows, n = data.shape
    if n % QK_K:
        raise ValueError(f"row length {n} is not a multiple of {QK_K}, which {qtype.name} requires")
    return qtype, rows, n


def _quantize_blocks(qtype, blocks, out, work=None):
    """Quantize (nblocks, 256) float32-convertible rows of blocks into out (nblocks, type_size) uint8."""
    fn = _QUANTIZERS[qtype]
    work = work or _Work()
    step = CHUNK_ELEMENTS[qtype] // QK_K
    with np.errstate(all="ignore"):    # C float semantics: overflow to inf, 0/0 in masked lanes, no warnings
        for b0 in range(0, blocks.shape[0], step):
            x = np.ascontiguousarray(blocks[b0:b0 + step], dtype=F32)
            fn(x, out[b0:b0 + step], work)


def quantize(data, ggml_type) -> np.ndarray:
    """Quantize float rows ``[rows, n_per_row]`` (n_per_row a multiple of 256) to a K-quant type.

    Returns uint8 ``[rows, row_bytes]``, byte-identical to ggml's ``ggml_quantize_chunk`` without an importance
    matrix.  Input of another float dtype is converted to float32 chunk by chunk."""
    qtype, rows, n = _prepare(data, ggml_type)
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    out = np.empty((rows, n // QK_K * block_bytes), dtype=np.uint8)
    if rows:
        _quantize_blocks(qtype, np.asarray(data).reshape(-1, QK_K), out.reshape(-1, block_bytes))
    return out


def quantize_parallel(data, ggml_type, threads: int | None = None) -> np.ndarray:
    """As :func:`quantize`, splitting the blocks over ``threads`` threads (default: CPU count).

    NumPy releases the GIL inside its loops, so threads can run the array work in parallel (the Python glue between
    the loops still serialises); each thread reuses its own scratch arrays, so memory stays bounded by the output
    plus a few MiB per thread.  The bytes are the same as :func:`quantize`'s."""
    qtype, rows, n = _prepare(data, ggml_type)
    threads = threads or os.cpu_count() or 1
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    out = np.empty((rows, n // QK_K * block_bytes), dtype=np.uint8)
    if not rows:
        return out
    blocks = np.asarray(data).reshape(-1, QK_K)
    oblocks = out.reshape(-1, block_bytes)
    nblocks = blocks.shape[0]
    step = CHUNK_ELEMENTS[qtype] // QK_K
    if threads <= 1 or nblocks <= step:
        _quantize_blocks(qtype, blocks, oblocks)
        return out
    ranges = [(b, min(b + step, nblocks)) for b in range(0, nblocks, step)]
    local = threading.local()

    def run(r):
        work = getattr(local, "work", None)
        if work is None:
            work = local.work = _Work()
        _quantize_blocks(qtype, blocks[r[0]:r[1]], oblocks[r[0]:r[1]], work)

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(run, ranges):
            pass
    return out
