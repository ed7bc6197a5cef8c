"""--imatrix quantization: ms2gguf against llama-quantize.

    python bench/bench_imatrix.py kernels [--rows 1024] [--cols 11008] [--types Q4_K,Q6_K,Q4_0] [--reps 2]
    python bench/bench_imatrix.py convert CKPT_DIR [--preset q4_k_m] [--reps 2] [--lcpp-python PY]

``kernels``: one float32 matrix (default 1024 rows of Llama-2-7B's ffn_down length 11008 = 43 * 256) with
heavy-tailed random importances, quantized single-threaded by ggml (``ggml_quantize_chunk`` with ``quant_weights``,
what llama-quantize --imatrix runs, from the xllamacpp wheel), by gguf_out.quant's compiled kernels (what the
conversion uses) and by the NumPy reference gguf_out/weighted.py; runs alternate, the best of ``--reps`` is kept;
the bytes must be identical.

``convert``: a checkpoint from bench/make_checkpoint.py, to PRESET with an importance matrix, both ways, on all
cores: (a) ``ms2gguf CKPT llama2 OUT --outtype PRESET --imatrix M`` in one pass; (b) what a user does without
it: ``ms2gguf ... --outtype f16`` then llama-quantize (the real ``llama_model_quantize`` of llama-cpp-python, run
by tests/gen_quant_tables.py with llama-quantize's imatrix loading, 2 threads).  The matrix is random
(tests/gen_imatrix_fixtures.py's ``imatrix_entries`` on the f16 file).  Wall times per step; every tensor of (a)
and (b) must have the same bytes.
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
sys.path.insert(0, str(ROOT / "bench"))

from gguf import GGMLQuantizationType as T  # noqa: E402

from gguf_out import weighted  # noqa: E402
import benchutil  # noqa: E402
import llamacpp  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--rows", type=int, default=1024)
    k.add_argument("--cols", type=int, default=11008, help="row length, a multiple of 256")
    k.add_argument("--types", default="Q4_K,Q6_K,Q4_0")
    k.add_argument("--reps", type=int, default=2)
    k.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("convert")
    c.add_argument("ckpt_dir")
    c.add_argument("--preset", default="q4_k_m")
    c.add_argument("--reps", type=int, default=2)
    c.add_argument("--lcpp-python", default="/work/venvs/lcpp/bin/python")
    c.add_argument("--work", default="/work/bench-data/imatrix-out")
    args = ap.parse_args(argv)
    return kernels(args) if args.command == "kernels" else convert(args)


def kernels(args):
    from gguf_out import quant


    rng = np.random.default_rng(args.seed)
    data = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * np.float32(0.02)
    qw = (rng.random(args.cols, dtype=np.float32) ** 6 * 1e3).astype(np.float32)
    n = data.size
    print(f"matrix {args.rows} x {args.cols} float32 ({n / 1e6:.1f} M elements), heavy-tailed importances, best of "
          f"{args.reps}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}\n")
    print("| type (with imatrix, 1 thread) | ggml (M elem/s) | gguf_out.quant (M elem/s) | NumPy reference "
          "(M elem/s) |")
    print("|---|---|---|---|")
    for name in args.types.split(","):
        qtype = T[name.strip()]
        quant.quantize(data[:2], qtype, quant_weights=qw)          # compile (or load the cache) first
        best = {"ggml": float("inf"), "quant": float("inf"), "numpy": float("inf")}
        for _ in range(args.reps):
            t, ref = benchutil.timed(lambda: llamacpp.quantize_chunk(qtype, data, qw))
            best["ggml"] = min(best["ggml"], t)
            t, got = benchutil.timed(lambda: quant.quantize(data, qtype, quant_weights=qw))
            best["quant"] = min(best["quant"], t)
            if got.tobytes() != ref:
                raise SystemExit(f"{qtype.name}: gguf_out.quant's bytes differ from ggml")
            t, got = benchutil.timed(lambda: weighted.quantize(data, qtype, qw))
            best["numpy"] = min(best["numpy"], t)
            if got.tobytes() != ref:
                raise SystemExit(f"{qtype.name}: the NumPy reference's bytes differ from ggml")
        print(f"| {qtype.name} | {n / best['ggml'] / 1e6:.1f} | {n / best['quant'] / 1e6:.1f} | "
              f"{n / best['numpy'] / 1e6:.1f} |")
    return 0


def tensor_hashes(path):
    import hashlib

    from gguf import GGUFReader
    return {t.name: hashlib.sha256(t.data.tobytes()).hexdigest() for t in GGUFReader(path).tensors}


def run(cmd, **kw):
    import subprocess
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def convert(args):
    import shutil

    from gen_imatrix_fixtures import imatrix_entries, lent_packages, write_gguf_imatrix

    src = Path(args.ckpt_dir) / "model.ckpt"
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = [sys.executable, "-m", "gguf_out.cli", str(src), "llama2"]
    f16 = work / "f16.gguf"
    run(cli + [str(f16), "-q", "--force"], cwd=ROOT)
    imx = work / "imatrix.gguf"
    write_gguf_imatrix(imx, imatrix_entries(f16, 0))
    print(f"{src}: {src.stat().st_size / 1e9:.2f} GB; {args.preset} with a {imx.stat().st_size / 1e6:.1f} MB imatrix; "
          f"{os.cpu_count()} CPUs\n")
    env = lent_packages(work)
    times = {"a": [], "b_f16": [], "b_quantize": []}
    for rep in range(args.reps):
        order = ["a", "b"] if rep % 2 == 0 else ["b", "a"]
        for case in order:
            if case == "a":
                times["a"].append(run(cli + [str(work / "a.gguf"), "-q", "--force", "--outtype", args.preset,
                                             "--imatrix", str(imx)], cwd=ROOT))
            else:
                times["b_f16"].append(run(cli + [str(f16), "-q", "--force"], cwd=ROOT))
                times["b_quantize"].append(run([args.lcpp_python, str(ROOT / "tests" / "gen_quant_tables.py"), str(f16),
                                                "--presets", args.preset, "--imatrix", str(imx), "--out",
                                                str(work / "b.json"), "--keep", str(work / "b"), "--threads", "2"],
                                               env=env))
    a, b = tensor_hashes(work / "a.gguf"), tensor_hashes(work / "b" / f"{args.preset}.gguf")
    if a != b:
        raise SystemExit(f"bytes differ in {sum(a[k] != b.get(k) for k in a)} tensors")
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print("| path | wall (s), median of %d | all runs |" % args.reps)
    print("|---|---|---|")
    print(f"| (a) ms2gguf --outtype {args.preset} --imatrix | {med['a']:.1f} | "
          f"{', '.join(f'{t:.1f}' for t in times['a'])} |")
    print(f"| (b) ms2gguf --outtype f16 | {med['b_f16']:.1f} | {', '.join(f'{t:.1f}' for t in times['b_f16'])} |")
    print(f"| (b) then llama-quantize --imatrix {args.preset.upper()} | {med['b_quantize']:.1f} | "
          f"{', '.join(f'{t:.1f}' for t in times['b_quantize'])} |")
    print(f"| (b) total | {med['b_f16'] + med['b_quantize']:.1f} | |")
    print(f"\nidentical tensor bytes: {len(a)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
