"""Throughput of the f16 path's dtype conversions (gguf_out.encode.encode_rows) against a copy of the same bytes.

    python bench/bench_f16.py [--rows 2048] [--cols 4096] [--bands 16] [--reps 5] [--threads 1,2] [--json FILE]

Converts ``--bands`` bands of ``rows x cols`` values (default 2048 x 4096: the converter's 32 MB float32 band) from
Float32 and BFloat16 to F16 (and BFloat16 / Float16 to F32), as the converter does band by band, with
``encode_rows`` on 1 and N threads, and compares with the plain numpy expression of the old path (widen to a fresh
float32 array, ``astype``) and with ``np.copyto`` of the input bytes (a memory copy: the floor). Best of ``--reps``;
the bytes are checked against numpy's ``astype``. Reports M elements/s and M elements/s per core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gguf import GGMLQuantizationType as T  # noqa: E402

import benchutil  # noqa: E402
from gguf_out import encode  # noqa: E402


def best_of(reps, fn):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--bands", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * np.float32(0.02)
    sources = {"Float32": f32, "BFloat16": (f32.view(np.uint32) >> 16).astype(np.uint16),
               "Float16": f32.astype(np.float16)}
    cases = [("Float32", T.F16), ("BFloat16", T.F16), ("BFloat16", T.F32), ("Float16", T.F32)]
    n = f32.size * args.bands
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    waited, busy = benchutil.wait_quiet()
    print(f"{args.bands} bands of {args.rows} x {args.cols} ({n / 1e6:.0f} M values), best of {args.reps}; commit "
          f"{commit}; waited {waited:.0f} s for a quiet machine ({busy:.0%} busy)\n")
    print("| conversion | copy of the input bytes (M/s) | old path: widen + astype, 1 thr (M/s) | "
          + " | ".join(f"encode_rows {t} thr (M/s)" for t in threads) + " | per core at "
          + f"{max(threads)} thr (M/s) |")
    print("|---|---|---|" + "---|" * len(threads) + "---|")
    results = []
    for dtype_name, ggml_type in cases:
        src = sources[dtype_name]
        want = encode.to_float32(src, dtype_name).astype(np.float16 if ggml_type == T.F16 else np.float32)
        dst = np.empty_like(src)
        t_copy = best_of(args.reps, lambda: [np.copyto(dst, src) for _ in range(args.bands)])
        t_old = best_of(args.reps, lambda: [encode.to_float32(src, dtype_name).astype(want.dtype)
                                            for _ in range(args.bands)])
        t_new = {}
        for t in threads:
            got = np.asarray(encode.encode_rows(src, dtype_name, ggml_type, t)).view(want.dtype).reshape(want.shape)
            if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
                raise SystemExit(f"{dtype_name} -> {ggml_type.name}: bytes differ with {t} threads")
            t_new[t] = best_of(args.reps, lambda: [encode.encode_rows(src, dtype_name, ggml_type, t)
                                                   for _ in range(args.bands)])
        top = max(threads)
        print(f"| {dtype_name} -> {ggml_type.name} | {n / t_copy / 1e6:.0f} | {n / t_old / 1e6:.0f} | "
              + " | ".join(f"{n / t_new[t] / 1e6:.0f}" for t in threads) + f" | {n / t_new[top] / 1e6 / top:.0f} |",
              flush=True)
        results.append({"case": f"{dtype_name}->{ggml_type.name}", "copy_mps": n / t_copy / 1e6,
                        "old_mps": n / t_old / 1e6, "encode_mps": {str(t): n / v / 1e6 for t, v in t_new.items()}})
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "rows": args.rows, "cols": args.cols, "bands": args.bands,
                                         "machine": benchutil.machine_info(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
