"""Throughput of ms2gguf's compiled quantizers (gguf_out.quant) against ggml's, in one process.

    python bench/bench_quant.py [--rows 1024] [--cols 11008] [--types all] [--reps 3] [--threads 1,2]
                                [--weighted] [--json FILE]

Quantizes one float32 matrix (default 1024 x 11008: rows of Llama-2-7B's ffn_down; 11008 = 43 * 256) with
``ggml_quantize_chunk`` from the xllamacpp wheel (tests/llamacpp.py; one C call, single-threaded: the oracle) and with
``gguf_out.quant.quantize`` (1 thread) / ``quantize_parallel`` (N threads). The cases alternate and the best of
``--reps`` is kept for each, which damps the noise of a shared machine; the bytes must be identical every time.
``--weighted`` passes importance weights (ggml's imatrix path) to both. Prints a markdown table of M weights/s, the
ratio to ggml and the scaling from 1 to N threads; ``--json`` also writes every timing and the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from gguf import GGMLQuantizationType as T  # noqa: E402

import benchutil  # noqa: E402
import llamacpp  # noqa: E402
from gguf_out import quant  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=11008, help="row length, a multiple of 256")
    ap.add_argument("--types", default="all", help="comma-separated type names, or all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts for gguf_out.quant")
    ap.add_argument("--weighted", action="store_true", help="with importance weights (ggml's imatrix path)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * np.float32(0.02)
    qw = (rng.random(args.cols, dtype=np.float32) * 4 + np.float32(0.1)) if args.weighted else None
    n = data.size
    threads = [int(t) for t in args.threads.split(",")]
    types = quant.TYPES if args.types == "all" else [T[name.strip().upper()] for name in args.types.split(",")]
    for qtype in types:                                  # compile / load the cache outside the timings
        quant.quantize(data[:2], qtype, qw)

    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    waited, busy = benchutil.wait_quiet()
    print(f"matrix {args.rows} x {args.cols} float32 ({n / 1e6:.1f} M weights){', weighted' if qw is not None else ''}"
          f", best of {args.reps}; commit {commit}; waited {waited:.0f} s for a quiet machine ({busy:.0%} busy)\n")
    header = "| type | ggml 1 thread (M/s) | " + " | ".join(f"ms2gguf {t} thr (M/s)" for t in threads)
    header += " | ms2gguf 1 thr / ggml | " + " | ".join(f"{t} thr / 1 thr" for t in threads if t != 1)
    header += " | CPU s used by other processes meanwhile |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    results = []
    for qtype in types:
        waited, busy = benchutil.wait_quiet(max_wait=60)      # the 2-thread figure needs both cores free
        others0 = benchutil.cpu_busy()
        own0 = sum(os.times()[:2])
        best_ggml = float("inf")
        best = {t: float("inf") for t in threads}
        runs = []
        for _ in range(args.reps):
            dt, ref = benchutil.timed(lambda: llamacpp.quantize_chunk(qtype, data, qw))
            best_ggml = min(best_ggml, dt)
            runs.append({"case": "ggml", "seconds": dt})
            for t in threads:
                if t == 1:
                    dt, got = benchutil.timed(lambda: quant.quantize(data, qtype, qw))
                else:
                    dt, got = benchutil.timed(lambda: quant.quantize_parallel(data, qtype, t, quant_weights=qw))
                best[t] = min(best[t], dt)
                runs.append({"case": f"ms2gguf-{t}", "seconds": dt})
                if got.tobytes() != ref:
                    raise SystemExit(f"{qtype.name}: bytes differ from ggml with {t} thread(s)")
                del got
            del ref
        others = benchutil.cpu_busy() - others0 - (sum(os.times()[:2]) - own0)
        rate = {t: n / best[t] / 1e6 for t in threads}
        line = f"| {qtype.name} | {n / best_ggml / 1e6:.1f} | " + " | ".join(f"{rate[t]:.1f}" for t in threads)
        line += f" | {best_ggml / best[1]:.2f} | " if 1 in threads else " | - | "
        line += " | ".join(f"{best[1] / best[t]:.2f}" for t in threads if t != 1 and 1 in threads)
        line += f" | {max(0.0, others):.1f} |"
        print(line, flush=True)
        results.append({"type": qtype.name, "ggml_mps": n / best_ggml / 1e6, "quiet_wait_s": waited,
                        "other_cpu_s": max(0.0, others),
                        "ms2gguf_mps": {str(t): r for t, r in rate.items()}, "runs": runs})
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "rows": args.rows, "cols": args.cols,
                                         "weighted": qw is not None, "reps": args.reps, "threads": threads,
                                         "machine": benchutil.machine_info(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
