"""Throughput of ms2gguf's NumPy K-quants against ggml's C reference quantizers, in one process.

    python bench/bench_kquants.py [--rows 4096] [--cols 11008] [--types Q4_K,Q6_K] [--reps 2] [--threads 1,2]

Quantizes one float32 matrix (default 4096 x 11008 = Llama-2-7B's ffn_down; 11008 = 43 * 256) with
``gguf_out.kquants.quantize`` (or ``quantize_parallel`` for threads > 1) and with ``ggml_quantize_chunk`` from the
xllamacpp wheel (tests/llamacpp.py; single-threaded, it is one C call).  ggml and NumPy runs alternate and the best
of ``--reps`` is kept for each, which damps the noise of a shared machine.  Checks that the bytes are identical and
prints a markdown table of elements/s and the time ratio NumPy / ggml.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from gguf import GGMLQuantizationType as T  # noqa: E402

from gguf_out import kquants  # noqa: E402
import benchutil  # noqa: E402
import llamacpp  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008, help="row length, a multiple of 256")
    ap.add_argument("--types", default="Q4_K,Q6_K")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", default="1", help="comma-separated thread counts for the NumPy side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data = (rng.standard_normal((args.rows, args.cols), dtype=np.float32) * np.float32(0.02))
    n = data.size
    threads = [int(t) for t in args.threads.split(",")]

    print(f"matrix {args.rows} x {args.cols} float32 ({n / 1e6:.1f} M elements), best of {args.reps}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}\n")
    print("| type | ggml 1 thread (M elem/s) | NumPy threads | NumPy (M elem/s) | time NumPy / ggml |")
    print("|---|---|---|---|---|")
    for name in args.types.split(","):
        qtype = T[name.strip()]
        best_ggml = float("inf")
        best_np = {t: float("inf") for t in threads}
        for _ in range(args.reps):
            dt, ref = benchutil.timed(lambda: llamacpp.quantize_chunk(qtype, data))
            best_ggml = min(best_ggml, dt)
            for t in threads:
                if t == 1:
                    dt, got = benchutil.timed(lambda: kquants.quantize(data, qtype))
                else:
                    dt, got = benchutil.timed(lambda: kquants.quantize_parallel(data, qtype, t))
                best_np[t] = min(best_np[t], dt)
                if got.tobytes() != ref:
                    raise SystemExit(f"{name}: NumPy bytes differ from ggml with {t} thread(s)")
                del got
            del ref
        for t in threads:
            print(f"| {qtype.name} | {n / best_ggml / 1e6:.1f} | {t} | {n / best_np[t] / 1e6:.1f} "
                  f"| {best_np[t] / best_ggml:.2f} |")


if __name__ == "__main__":
    main()
