"""Benchmark merging a LoRA fine-tune: ms2gguf's streamed merge against MindFormers 2.1.0's own merge tool.

    python bench/bench_lora.py --make /work/bench-data/lora      # write the input (~1 GB), once
    python bench/bench_lora.py --data /work/bench-data/lora --mf-python /work/venvs/mf/bin/python [--repeats 2]

Input: a Llama-shaped MindFormers legacy checkpoint (hidden 2048, 16 / 4 heads, ffn 5632, 8 layers, vocab 32000,
Float16 weights, Float32 norms) with mindpet LoRA pairs (``*.mindpet_delta_lora_a`` [16, in] / ``_b`` [out, 16],
Float32) on all seven projections of every layer, in one ``.safetensors`` file (MindFormers' merge tool reads
safetensors), plus config.yaml (pet_config rank 16, alpha 32) and the tokenizer fixture.

Cases, each a fresh process under GNU time (peak RSS), warm page cache:

  base       ms2gguf --lora skip (the base weights only: the conversion without any merging)
  merge      ms2gguf (merges by default) -> f16 GGUF of the fine-tune
  adapter    ms2gguf --lora adapter -> F32 adapter GGUF
  mf_merge   python -m mindformers.tools.transform_safetensors_lora (merge_lora: every tensor loaded, merged in
             float32, saved as one safetensors file), then
  mf_convert ms2gguf of that merged file -> f16 GGUF; the two GGUFs' tensors are compared.
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_convert import PY, run_measured  # noqa: E402
from benchutil import machine_info  # noqa: E402

SHAPE = dict(hidden=2048, heads=16, kv_heads=4, ffn=5632, layers=8, vocab=32000, rank=16, alpha=32)
TOKENIZER = HERE.parent / "tests" / "fixtures" / "llama" / "tokenizer" / "tokenizer.model"


def tensors(a):
    """(name, shape, dtype) in MindFormers' legacy Llama order, LoRA pairs after their weight."""
    H, hd = a["hidden"], a["hidden"] // a["heads"]
    kv, F, r = a["kv_heads"] * hd, a["ffn"], a["rank"]
    out = [("model.tok_embeddings.embedding_weight", (a["vocab"], H), "F16")]
    for i in range(a["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "attention_norm.weight", (H,), "F32"), (p + "ffn_norm.weight", (H,), "F32")]
        for cell, shape in (("attention.wq", (H, H)), ("attention.wk", (kv, H)), ("attention.wv", (kv, H)),
                            ("attention.wo", (H, H)), ("feed_forward.w1", (F, H)), ("feed_forward.w3", (F, H)),
                            ("feed_forward.w2", (H, F))):
            out += [(p + cell + ".weight", shape, "F16"),
                    (p + cell + ".mindpet_delta_lora_a", (r, shape[1]), "F32"),
                    (p + cell + ".mindpet_delta_lora_b", (shape[0], r), "F32")]
    out += [("model.norm_out.weight", (H,), "F32"), ("lm_head.weight", (a["vocab"], H), "F16")]
    return out


def make(folder, a):
    """One safetensors file written tensor by tensor (header first), config.yaml, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = tensors(a)
    header, offset = {}, 0
    for name, shape, dtype in specs:
        n = int(np.prod(shape)) * (2 if dtype == "F16" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape, dtype in specs:
            if name.endswith("norm.weight") or name.endswith("norm_out.weight"):
                data = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            elif dtype == "F16":
                data = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
            else:
                data = (0.01 * rng.standard_normal(shape, dtype=np.float32))
            f.write(data.tobytes())
    H = a["hidden"]
    (folder / "config.yaml").write_text(
        "model:\n  arch: {type: LlamaForCausalLM}\n  model_config:\n    type: LlamaConfig\n"
        f"    hidden_size: {H}\n    num_layers: {a['layers']}\n    num_heads: {a['heads']}\n"
        f"    n_kv_heads: {a['kv_heads']}\n    intermediate_size: {a['ffn']}\n    vocab_size: {a['vocab']}\n"
        "    seq_length: 4096\n    rms_norm_eps: 1.0e-05\n    theta: 10000.0\n"
        f"    pet_config: {{pet_type: lora, lora_rank: {a['rank']}, lora_alpha: {a['alpha']}, lora_dropout: 0.0,\n"
        "                 target_modules: '.*wq|.*wk|.*wv|.*wo|.*w1|.*w2|.*w3'}\n", encoding="utf-8")
    shutil.copyfile(TOKENIZER, folder / "tokenizer.model")
    print(f"wrote {folder / 'model.safetensors'}: {(folder / 'model.safetensors').stat().st_size / 1e6:.0f} MB, "
          f"{len(specs)} tensors")


def ms2gguf(src, out, *options, config=None):
    cmd = [PY, "-m", "gguf_out.cli", str(src), "llama2", str(out), "--force", "-q", *options]
    return cmd + (["--config", str(config)] if config else [])


def compare(a_path, b_path):
    from gguf import GGUFReader
    a = {t.name: np.array(t.data) for t in GGUFReader(a_path).tensors}
    b = {t.name: np.array(t.data) for t in GGUFReader(b_path).tensors}
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:4]
    same = sum(np.array_equal(a[n], b[n]) for n in a)
    worst = max(float(np.max(np.abs(a[n].astype(np.float32) - b[n].astype(np.float32)))) for n in a)
    return {"tensors": len(a), "bit_identical": int(same), "max_abs_diff": worst}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--make", type=Path, metavar="DIR")
    p.add_argument("--data", type=Path, default=Path("/work/bench-data/lora"))
    p.add_argument("--mf-python", default="/work/venvs/mf/bin/python")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.make:
        make(args.make, SHAPE)
        return 0
    src, out = args.data / "model.safetensors", args.data / "out"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, GLOG_v="3", LOG_MF_PATH=str(out / "mf_log"), LOCAL_DEFAULT_PATH=str(out / "mf_out"))
    cases = {
        "base": ms2gguf(src, out / "base.gguf", "--lora", "skip"),
        "merge": ms2gguf(src, out / "merge.gguf"),
        "adapter": ms2gguf(src, out / "adapter.gguf", "--lora", "adapter"),
        "mf_merge": [args.mf_python, "-m", "mindformers.tools.transform_safetensors_lora", "--src_ckpt_path",
                     str(src), "--dst_ckpt_path", str(out / "mf_merged.safetensors"), "--lora_alpha",
                     str(SHAPE["alpha"])],
        "mf_convert": ms2gguf(out / "mf_merged.safetensors", out / "mf.gguf", "--tokenizer",
                              args.data / "tokenizer.model", config=args.data / "config.yaml"),
    }
    src.read_bytes()        # warm
    results = {name: [] for name in cases}
    for rep in range(args.repeats):
        for name in (cases if rep % 2 == 0 else reversed(list(cases))):
            if name == "mf_convert" and not (out / "mf_merged.safetensors").exists():
                continue
            results[name].append(run_measured(cases[name], cwd=str(HERE.parent), env=env))
        if rep % 2:         # the reversed order ran mf_convert before mf_merge: run it again after
            results["mf_convert"].append(run_measured(cases["mf_convert"], cwd=str(HERE.parent), env=env))
    summary = {name: {"wall_s": statistics.median(r["wall_s"] for r in rs), "wall_min_s": min(r["wall_s"] for r in rs),
                      "wall_max_s": max(r["wall_s"] for r in rs), "maxrss_mb": max(r["maxrss_mb"] for r in rs),
                      "runs": len(rs), "other_cpu_s": max(r["other_cpu_s"] for r in rs)}
               for name, rs in results.items() if rs}
    summary["equal"] = compare(out / "merge.gguf", out / "mf.gguf")
    summary["input_mb"] = src.stat().st_size / 1e6
    summary["machine"] = machine_info(str(args.data))
    print(json.dumps(summary, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
