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
def make_q3(x, L, nmax):
    """make_q3_quants with do_rmse: symmetric fit plus up to 5 coordinate-descent passes; L (int8) = level + nmax."""
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
    iscale = F32(-nmax) / mx
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            li = F32(L[i])
            slx = sumlx - w * x[i] * li
            if slx > 0:
                sl2 = suml2 - w * li * li
                new_l = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    fl = F32(new_l)
                    slx += w * x[i] * fl
                    sl2 += w * fl * fl
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F32(0.0)


@njit(**JIT)
def make_qkx(x, w, L, Laux, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants (and make_qkx3_quants, which is the same given weights): x ~ scale*L - the_min with
    L (uint8) in [0, nmax]. Returns (scale, the_min)."""
    n = x.shape[0]
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        sum_w += w[i]
        sum_x += w[i] * xi
    if mn > 0:
        mn = F32(0.0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -mn
    fn = F32(nmax)
    iscale = fn / (mx - mn)
    scale = F32(1.0) / iscale
    best = F32(0.0)
    for i in range(n):
        l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        L[i] = l
        diff = scale * F32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best += w[i] * diff
    if nstep < 1:
        return scale, -mn
    for s in range(nstep + 1):
        iscale = (rmin + rdelta * F32(s) + fn) / (mx - mn)
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            Laux[i] = l
            fl = F32(l)
            wl = w[i] * fl
            sum_l += wl
            sum_l2 += wl * fl
            sum_xl += wl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F32(0.0)
                this_scale = sum_xl / sum_l2
            err = F32(0.0)
            for i in range(n):
                diff = this_scale * F32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                err += w[i] * diff
            if err < best:
                for i in range(n):
                    L[i] = Laux[i]
                best = err
                scale = this_scale
                mn = this_min
    return scale, -mn


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
