"""Peak memory and time of converting a mixture-of-experts checkpoint whose largest tensor is >= 1.5 GB.

    python bench/make_checkpoint.py /work/bench-data/moe --family qwen3_moe --dtype bf16 --layers 1 \
        --hidden 2048 --heads 16 --kv-heads 4 --experts 64 --moe-ffn 3072 --vocab 32000
    python bench/bench_moe.py [--data /work/bench-data/moe] [--cases cp,f16,q4_k_m] [--repeats 1] [--json OUT]

The checkpoint (mcore Qwen3-MoE names, bf16) has one layer whose ``mlp.experts.weight1`` is [64*2048, 2*3072]
(1.61 GB, four 512 MiB records) and ``weight2`` 0.81 GB; every expert tensor is reshaped, split and transposed on
the way (gate/up ``[E, F, H]``, down ``[E, H, F]``), so nothing is raw-copied. Cases:

  cp      cp of the checkpoint to the output directory (then sync)
  f16     ms2gguf --outtype f16 (bf16 -> f16 of every weight, through the expert transforms)
  q4_k_m  ms2gguf --outtype q4_k_m (llama-quantize's mix: Q4_K / Q6_K experts, quantized in numpy)

Peak RSS from GNU time (bench_convert.run_measured); the target is < 600 MB whatever the largest tensor.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from bench_convert import run_measured, settle
from benchutil import machine_info

REPO = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("/work/bench-data/moe"))
    p.add_argument("--cases", default="cp,f16,q4_k_m")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    ckpt = a.data / "model.ckpt"
    out_dir = a.data.parent / "out"
    out_dir.mkdir(exist_ok=True)
    results = {"machine": machine_info(str(a.data)), "checkpoint": str(ckpt), "bytes": ckpt.stat().st_size,
               "runs": []}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(a.repeats):
        for case in a.cases.split(","):
            settle(out_dir, ckpt, cold=False)
            if case == "cp":
                cmd = ["sh", "-c", f"cp {ckpt} {out_dir}/cp.ckpt && sync {out_dir}/cp.ckpt"]
            else:
                cmd = [sys.executable, "-m", "gguf_out.cli", str(ckpt), "qwen3_moe", str(out_dir / f"{case}.gguf"),
                       "--outtype", case, "--force", "-q"]
            run = run_measured(cmd, env=env)
            run["case"] = case
            results["runs"].append(run)
            print(f"{case:8s} {run['wall_s']:7.1f} s  peak RSS {run['maxrss_mb']:7.1f} MB  "
                  f"(user {run['user_s']:.1f} s, sys {run['sys_s']:.1f} s, other CPU {run['other_cpu_s']:.1f} s)",
                  flush=True)
    for f in out_dir.iterdir():
        if f.is_file():
            f.unlink()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
