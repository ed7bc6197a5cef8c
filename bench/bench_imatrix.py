"""Throughput of ms2gguf's importance-weighted quantizers (gguf_out/weighted.py, NumPy) against ggml's C ones
(``ggml_quantize_chunk`` with ``quant_weights``, what llama-quantize --imatrix runs), in one process.

    python bench/bench_imatrix.py [--rows 1024] [--cols 11008] [--types Q4_K,Q6_K,Q4_0] [--reps 2]

Quantizes one float32 matrix (default 1024 rows of Llama-2-7B's ffn_down length 11008 = 43 * 256) with heavy-tailed
random importances, both ways, single-threaded; ggml and NumPy runs alternate and the best of ``--reps`` is kept
for each.  Checks that the bytes are identical and prints a markdown table of elements/s and the time ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gguf import GGMLQuantizationType as T  # noqa: E402

from gguf_out import weighted  # noqa: E402
import llamacpp  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=11008, help="row length, a multiple of 256")
    ap.add_argument("--types", default="Q4_K,Q6_K,Q4_0")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * np.float32(0.02)
    qw = (rng.random(args.cols, dtype=np.float32) ** 6 * 1e3).astype(np.float32)
    n = data.size
    print(f"matrix {args.rows} x {args.cols} float32 ({n / 1e6:.1f} M elements), heavy-tailed importances, best of "
          f"{args.reps}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}\n")
    print("| type | ggml with imatrix, 1 thread (M elem/s) | NumPy with imatrix, 1 thread (M elem/s) | "
          "time NumPy / ggml |")
    print("|---|---|---|---|")
    for name in args.types.split(","):
        qtype = T[name.strip()]
        best_ggml = best_np = float("inf")
        for _ in range(args.reps):
            t, ref = timed(lambda: llamacpp.quantize_chunk(qtype, data, qw))
            best_ggml = min(best_ggml, t)
            t, got = timed(lambda: weighted.quantize(data, qtype, qw))
            best_np = min(best_np, t)
            if got.tobytes() != ref:
                raise SystemExit(f"{qtype.name}: bytes differ from ggml")
        print(f"| {qtype.name} | {n / best_ggml / 1e6:.1f} | {n / best_np / 1e6:.2f} | {best_np / best_ggml:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
