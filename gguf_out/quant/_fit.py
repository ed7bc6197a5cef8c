"""ggml's shared fitting routines (make_qx_quants, make_q3_quants, make_qkx2/qkx3_quants, make_qp_quants), compiled.

Each works on one sub-block ``x`` (a 1-D float32 view) and writes the chosen levels into ``L``. The arithmetic is
ggml's, operation by operation, in float32 (the algorithms are ggml's, MIT License, Copyright (c) 2023-2026 The ggml
authors; gguf-targets.md §8.4 describes them).
"""

from numba import njit

from ._numeric import F32, JIT, nearest_int

EPS = F32(1e-15)        # GROUP_MAX_EPS


@njit(**JIT)
def make_qx(x, L, nmax, qw, has_qw):
    """make_qx_quants with rmse_type 1: symmetric scale, L (int8) = level + nmax in [0, 2*nmax-1].
    Weights: qw if has_qw else x*x."""
    n = x.shape[0]
    mx = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    fn = F32(nmax)
    iscale = F32(-nmax) / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        w = qw[i] if has_qw else x[i] * x[i]
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != 0 else F32(0.0)
    best = scale * sumlx
    for s in range(-9, 10):
        if s == 0:
            continue
        iscale = -(fn + F32(0.1) * F32(s)) / mx
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = qw[i] if has_qw else x[i] * x[i]
            fl = F32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(**JIT)
def make_qp(x, L, nmax, qw):
    """make_qp_quants: non-negative values (scales, mins) to L (uint8) in [0, nmax] with weights qw."""
    n = x.shape[0]
    mx = F32(0.0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    fn = F32(nmax)
    iscale = fn / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = F32(1.0) / iscale
    best = F32(0.0)
    for i in range(n):
        diff = x[i] - scale * F32(L[i])
        best += qw[i] * diff * diff
    for s in range(-4, 5):
        if s == 0:
            continue
        iscale_s = (F32(0.1) * F32(s) + fn) / mx
        scale_s = F32(1.0) / iscale_s
        mse = F32(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_s * x[i]))
            diff = x[i] - scale_s * F32(l)
            mse += qw[i] * diff * diff
        if mse < best:
            best = mse
            iscale = iscale_s
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        fl = F32(l)
        sumlx += qw[i] * x[i] * fl
        suml2 += qw[i] * fl * fl
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = qw[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            sl2 = suml2 - w * li * li
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    fl = F32(new_l)
                    slx += w * x[i] * fl
                    sl2 += w * fl * fl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F32(0.0)


# ---------------------------------------------------------------------------------------------------------------
# The same fits for all sub-blocks of a super-block at once: Xt, W are (n, S) = (element, sub-block), so every
# loop over the elements of a sub-block runs across the S sub-blocks in its inner loop (which the compiler
# vectorises) while each sub-block's sums still add its elements in ggml's order. Per-sub-block decisions are kept
# as the parameters of the best candidate (as the NumPy port does); the levels are recomputed from them once.


@njit(**JIT)
def make_qx_lanes(Xt, W, nmax, Lt, scale, wk):
    """make_qx_quants (rmse_type 1, weights W) on every column of Xt: scale[s], Lt (int8) = level + nmax."""
    n, S = Xt.shape
    amax, mx, isc, sumlx, suml2, best, bisc = wk[0], wk[1], wk[2], wk[3], wk[4], wk[5], wk[6]
    fn = F32(nmax)
    for s in range(S):
        amax[s] = F32(0.0)
        mx[s] = F32(0.0)
    for i in range(n):
        for s in range(S):
            ax = abs(Xt[i, s])
            if ax > amax[s]:
                amax[s] = ax
                mx[s] = Xt[i, s]
    for s in range(S):
        isc[s] = F32(-nmax) / mx[s]
        sumlx[s] = F32(0.0)
        suml2[s] = F32(0.0)
    for i in range(n):
        for s in range(S):
            fl = F32(max(-nmax, min(nmax - 1, nearest_int(isc[s] * Xt[i, s]))))
            w = W[i, s]
            sumlx[s] += w * Xt[i, s] * fl
            suml2[s] += w * fl * fl
    for s in range(S):
        scale[s] = sumlx[s] / suml2[s] if suml2[s] != 0 else F32(0.0)
        best[s] = scale[s] * sumlx[s]
        bisc[s] = isc[s]
    for k in range(-9, 10):
        if k == 0:
            continue
        for s in range(S):
            isc[s] = -(fn + F32(0.1) * F32(k)) / mx[s]
            sumlx[s] = F32(0.0)
            suml2[s] = F32(0.0)
        for i in range(n):
            for s in range(S):
                fl = F32(max(-nmax, min(nmax - 1, nearest_int(isc[s] * Xt[i, s]))))
                w = W[i, s]
                sumlx[s] += w * Xt[i, s] * fl
                suml2[s] += w * fl * fl
        for s in range(S):
            if suml2[s] > 0 and sumlx[s] * sumlx[s] > best[s] * suml2[s]:
                scale[s] = sumlx[s] / suml2[s]
                best[s] = scale[s] * sumlx[s]
                bisc[s] = isc[s]
    for i in range(n):
        for s in range(S):
            Lt[i, s] = nmax + max(-nmax, min(nmax - 1, nearest_int(bisc[s] * Xt[i, s])))
    for s in range(S):
        if amax[s] < EPS:
            scale[s] = F32(0.0)
            for i in range(n):
                Lt[i, s] = 0


@njit(**JIT)
def make_q3_lanes(Xt, nmax, Lt, scale, wk, col):
    """make_q3_quants (do_rmse) on every column of Xt: the first fit across the columns, then each column's
    coordinate descent on its own, as ggml (it stops when a pass changes nothing). ``col`` is (3, n) scratch."""
    n, S = Xt.shape
    amax, mx, isc, sumlx, suml2 = wk[0], wk[1], wk[2], wk[3], wk[4]
    for s in range(S):
        amax[s] = F32(0.0)
        mx[s] = F32(0.0)
    for i in range(n):
        for s in range(S):
            ax = abs(Xt[i, s])
            if ax > amax[s]:
                amax[s] = ax
                mx[s] = Xt[i, s]
    for s in range(S):
        isc[s] = F32(-nmax) / mx[s]
        sumlx[s] = F32(0.0)
        suml2[s] = F32(0.0)
    for i in range(n):
        for s in range(S):
            x = Xt[i, s]
            l = max(-nmax, min(nmax - 1, nearest_int(isc[s] * x)))
            Lt[i, s] = l
            w = x * x
            fl = F32(l)
            sumlx[s] += w * x * fl
            suml2[s] += w * fl * fl
    xc, wc, wxc = col[0], col[1], col[2]
    for s in range(S):
        if amax[s] < EPS:
            continue
        for i in range(n):
            x = Xt[i, s]
            xc[i] = x
            wc[i] = x * x
            wxc[i] = wc[i] * x       # ggml's w*x[i]*L[i] is (w*x)*L: the same product, once
        a_lx = sumlx[s]
        a_l2 = suml2[s]
        for _ in range(5):
            changed = False
            for i in range(n):
                li = F32(Lt[i, s])
                slx = a_lx - wxc[i] * li
                if slx > 0:
                    sl2 = a_l2 - wc[i] * li * li
                    new_l = max(-nmax, min(nmax - 1, nearest_int(xc[i] * sl2 / slx)))
                    if new_l != Lt[i, s]:
                        fl = F32(new_l)
                        slx += wxc[i] * fl
                        sl2 += wc[i] * fl * fl
                        if sl2 > 0 and slx * slx * a_l2 > a_lx * a_lx * sl2:
                            Lt[i, s] = new_l
                            a_lx = slx
                            a_l2 = sl2
                            changed = True
            if not changed:
                break
        sumlx[s] = a_lx
        suml2[s] = a_l2
    for s in range(S):
        scale[s] = sumlx[s] / suml2[s] if suml2[s] > 0 else F32(0.0)
        zero = amax[s] < EPS
        if zero:
            scale[s] = F32(0.0)
        for i in range(n):
            Lt[i, s] = 0 if zero else Lt[i, s] + nmax


@njit(**JIT)
def make_qkx_lanes(Xt, W, nmax, rmin, rdelta, nstep, use_mad, Lt, Laux, scale, the_min, wk):
    """make_qkx2_quants / make_qkx3_quants (nstep >= 1) on every column of Xt: scale[s], the_min[s], Lt (uint8)."""
    n, S = Xt.shape
    mn, mx, sw, sx, isc, best, bisc, boff = wk[0], wk[1], wk[2], wk[3], wk[4], wk[5], wk[6], wk[7]
    sl, sl2, sxl, err, ts, tm, dd, flat = wk[8], wk[9], wk[10], wk[11], wk[12], wk[13], wk[14], wk[15]
    fn = F32(nmax)
    for s in range(S):
        x0 = Xt[0, s]
        mn[s] = x0
        mx[s] = x0
        sw[s] = W[0, s]
        sx[s] = W[0, s] * x0
    for i in range(1, n):
        for s in range(S):
            xi = Xt[i, s]
            if xi < mn[s]:
                mn[s] = xi
            if xi > mx[s]:
                mx[s] = xi
            sw[s] += W[i, s]
            sx[s] += W[i, s] * xi
    for s in range(S):
        if mn[s] > 0:
            mn[s] = F32(0.0)
        flat[s] = F32(1.0) if mx[s] == mn[s] else F32(0.0)
        isc[s] = fn / (mx[s] - mn[s])
        scale[s] = F32(1.0) / isc[s]
        bisc[s] = isc[s]
        boff[s] = mn[s]
        best[s] = F32(0.0)
    for i in range(n):
        for s in range(S):
            fl = F32(max(0, min(nmax, nearest_int(isc[s] * (Xt[i, s] - mn[s])))))
            diff = scale[s] * fl + mn[s] - Xt[i, s]
            diff = abs(diff) if use_mad else diff * diff
            best[s] += W[i, s] * diff
    for k in range(nstep + 1):
        for s in range(S):
            isc[s] = (rmin + rdelta * F32(k) + fn) / (mx[s] - mn[s])
            sl[s] = F32(0.0)
            sl2[s] = F32(0.0)
            sxl[s] = F32(0.0)
        for i in range(n):
            for s in range(S):
                l = max(0, min(nmax, nearest_int(isc[s] * (Xt[i, s] - mn[s]))))
                Laux[i, s] = l
                fl = F32(l)
                wl = W[i, s] * fl
                sl[s] += wl
                sl2[s] += wl * fl
                sxl[s] += wl * Xt[i, s]
        for s in range(S):
            D = sw[s] * sl2[s] - sl[s] * sl[s]
            a = (sw[s] * sxl[s] - sx[s] * sl[s]) / D
            b = (sl2[s] * sx[s] - sl[s] * sxl[s]) / D
            if b > 0:
                b = F32(0.0)
                a = sxl[s] / sl2[s]
            ts[s] = a
            tm[s] = b
            dd[s] = D
            err[s] = F32(0.0)
        for i in range(n):
            for s in range(S):
                diff = ts[s] * F32(Laux[i, s]) + tm[s] - Xt[i, s]
                diff = abs(diff) if use_mad else diff * diff
                err[s] += W[i, s] * diff
        for s in range(S):
            if dd[s] > 0 and err[s] < best[s] and flat[s] == 0:
                best[s] = err[s]
                scale[s] = ts[s]
                bisc[s] = isc[s]
                boff[s] = mn[s]
                mn[s] = tm[s]
    for i in range(n):
        for s in range(S):
            Lt[i, s] = max(0, min(nmax, nearest_int(bisc[s] * (Xt[i, s] - boff[s]))))
    for s in range(S):
        the_min[s] = -mn[s]
        if flat[s] != 0:
            scale[s] = F32(0.0)
            for i in range(n):
                Lt[i, s] = 0
