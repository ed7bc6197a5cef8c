"""Benchmark merging a sharded MindFormers Checkpoint 2.0 save (iteration_*/ + metadata.json) while reading it.

    python bench/bench_checkpoint2.py /work/bench-data/ckpt2 --make     # write the save (~1.3 GB), then run
    python bench/bench_checkpoint2.py /work/bench-data/ckpt2 [--cold] [--repeats 3] [--json OUT]

``--make`` writes, with this script's own safetensors/metadata writer, what MindFormers 2.1.0 writes for an mcore
Qwen3-shaped BFloat16 model (hidden 2048, 16/8 heads, ffn 6144, 8 layers, vocab 65536, untied) trained on 8 ranks
as the test fixture ``tests/fixtures/mf_saves/ckpt2_tp2pp2dp2`` was (pipeline 2 x dp 2 x tp 2, optimizer
parallelism folded into the layouts, so the weights are split 4 ways and the norms 2 ways or kept whole):
``ROOT/latest_checkpointed_iteration.txt``, ``ROOT/iteration_00000010/qwen3-model-000000R-0000008.safetensors``
(one per rank), ``metadata.json`` in MindFormers' schema (layout, chunks by slice index, storage_data with every
holder), ``common.json``, plus an HF ``config.json`` and the test tokenizer for converting. No optimizer files (they
are never opened for converting). Block contents are random, replicas identical.

Each measurement runs in a fresh subprocess under GNU time: ``cat`` of the model files (the same bytes read once),
``baseline`` (the worker importing msckpt and exiting: the fixed cost in every mode below), ``index`` (open:
metadata.json, every header, the checks), ``merge`` (open, then every tensor streamed in the converter's row bands,
``TiledTensor.rows``), ``array`` (every tensor assembled whole, one at a time) and ``convert`` (``ms2gguf ROOT qwen3
OUT --outtype bf16``). Warm = the files read once just before; ``--cold`` adds runs after dropping the page cache
(root). Reported: wall time (median of the repeats), peak RSS (GNU time ``%M``) and MB/s of model-file bytes.
"""

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from math import prod
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_distributed import block_bytes  # noqa: E402
from benchutil import drop_caches, machine_info, wait_quiet  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "qwen2" / "tokenizer" / "tokenizer.json"
ITER = "iteration_00000010"
DP, TP, PP = 2, 2, 2


def model_tensors(a):
    """[(name, shape)] of an mcore Qwen3 (MindFormers' TrainingQwen3ForCausalLM names), stage 0 first."""
    hd, q, kv = a.head_dim, a.heads * a.head_dim, a.kv_heads * a.head_dim
    out = [("embedding.word_embeddings.weight", (a.vocab, a.hidden))]
    for i in range(a.layers):
        p = f"decoder.layers.{i}."
        out += [(p + "input_layernorm.weight", (a.hidden,)),
                (p + "self_attention.linear_proj.weight", (a.hidden, q)),
                (p + "self_attention.linear_qkv.weight", (q + 2 * kv, a.hidden)),
                (p + "self_attention.q_layernorm.weight", (hd,)),
                (p + "self_attention.k_layernorm.weight", (hd,)),
                (p + "pre_mlp_layernorm.weight", (a.hidden,)),
                (p + "mlp.linear_fc1.weight", (2 * a.ffn, a.hidden)),
                (p + "mlp.linear_fc2.weight", (a.hidden, a.ffn))]
    return out + [("decoder.final_layernorm.weight", (a.hidden,)), ("output_layer.weight", (a.vocab, a.hidden))]


def layout(name, stage_of):
    """The ms.Layout dict MindSpore folds these strategies into (as in the ckpt2_tp2pp2dp2 fixture)."""
    if name.endswith(("linear_qkv.weight", "linear_fc1.weight", "output_layer.weight", "word_embeddings.weight")):
        tensor_map = [[0, 1], -1]
    elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        tensor_map = [1, 0]
    elif name.endswith("final_layernorm.weight"):
        tensor_map = [[1, 0]]
    elif "q_layernorm" in name:
        tensor_map = [-1]
    else:
        tensor_map = [0]
    stage = stage_of(name)
    return {"device_matrix": [DP, TP], "tensor_map": tensor_map, "interleaved_parallel": False,
            "alias_name": ["a", "b"], "rank_list": list(range(stage * DP * TP, (stage + 1) * DP * TP))}


def make(root, a):
    from msckpt.iteration import _layout_areas

    tensors = model_tensors(a)
    half = a.layers // 2

    def stage_of(name):
        return 0 if name.startswith("embedding.") or (".layers." in name and int(name.split(".")[2]) < half) else 1

    folder = root / ITER
    folder.mkdir(parents=True, exist_ok=True)
    world = DP * TP * PP
    per_rank = {r: [] for r in range(world)}              # rank -> [(name, block shape, seed key)]
    state, storage = {}, {}
    for index, (name, shape) in enumerate(tensors):
        lay = layout(name, stage_of)
        dev = lay["device_matrix"]
        frags = [prod(dev[len(dev) - 1 - d] for d in (t if isinstance(t, list) else [t]) if d != -1)
                 for t in lay["tensor_map"]]
        local = [n // f for n, f in zip(shape, frags)]
        areas = _layout_areas(Path("bench"), name, lay, list(shape), frags)
        holders = {}
        for rank, block in areas.items():
            slice_index = int(np.ravel_multi_index([b // n for b, n in zip(block, local)], frags))
            holders.setdefault(slice_index, []).append(rank)
            per_rank[rank].append((name, tuple(local), (index, slice_index)))
        state[name] = {"properties": {"dtype": "bfloat16", "replica_id": [0] * len(areas),
                                      "allow_shape_mismatch": False, "allow_to_save": True},
                       "global_shape": list(shape), "axis_fragmentations": frags, "layout": lay,
                       "chunk": [{"global_offset": [s], "local_shape": local} for s in holders]}
        for s, ranks in holders.items():
            storage[str((name, (s,)))] = [{"file_name": f"qwen3-model-{r:07d}-{world:07d}.safetensors",
                                           "storage_rank": r, "rank_group": ranks} for r in ranks]
    started = time.perf_counter()
    for rank, entries in per_rank.items():
        write_safetensors(folder / f"qwen3-model-{rank:07d}-{world:07d}.safetensors", entries, a.seed)
    (folder / "metadata.json").write_text(json.dumps({"state_dict_metadata": state, "storage_data": storage},
                                                     separators=(",", ":")))
    (folder / "common.json").write_text(json.dumps({"epoch_num": 1, "step_num": 10, "global_step": 10,
                                                    "loss_scale": None, "global_batch_size": 8,
                                                    "consumed_samples": None, "ckpt_status": None}, indent=4))
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": a.hidden,
              "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
              "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim, "hidden_act": "silu",
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": False, "vocab_size": a.vocab, "eos_token_id": 400, "pad_token_id": 400}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "tokenizer.json").write_bytes(TOKENIZER.read_bytes())
    print(f"wrote {world} model files, {model_bytes(root) / 1e6:,.0f} MB, in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)


def write_safetensors(path, entries, seed):
    """A safetensors file of BFloat16 blocks (header space-padded to 8 bytes, data in header order)."""
    header, pos = {"__metadata__": {"format": "ms"}}, 0
    for name, shape, _ in entries:
        n = prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape, key in entries:
            is_norm = len(shape) == 1
            total, done, step = prod(shape), 0, 8 << 20
            while done < total:                              # replicas of a block get the same bytes
                n = min(step, total - done)
                data = block_bytes(seed, key[0], (key[1], done), n, False)
                if is_norm:
                    data = np.full(n, 0x3F80, "<u2").tobytes()   # 1.0: norms stay sane
                f.write(data)
                done += n


def model_files(root):
    return sorted((root / ITER).glob("*-model-*.safetensors"))


def model_bytes(root):
    return sum(f.stat().st_size for f in model_files(root))


# ----------------------------------------------------------------------------------------------- worker side

def worker(mode, root, out):
    import msckpt
    from gguf_out.encode import rows_per_chunk

    started = time.perf_counter()
    result = {"mode": mode}
    if mode == "baseline":
        pass                                  # Python, numpy and msckpt imported: the fixed cost of every mode
    elif mode == "index":
        with msckpt.open_checkpoint(root) as ckpt:
            result["tensors"] = len(ckpt)
    elif mode == "merge":
        with msckpt.open_checkpoint(root) as ckpt:
            result["index_seconds"] = time.perf_counter() - started
            total = 0
            for t in ckpt:
                step = rows_per_chunk(t.shape)
                for start in range(0, t.shape[0], step):
                    total += t.rows(start, start + step).nbytes
            result["tensor_bytes"] = total
    elif mode == "array":
        with msckpt.open_checkpoint(root) as ckpt:
            largest = 0
            for t in ckpt:
                largest = max(largest, t.array().nbytes)
            result["largest_tensor_bytes"] = largest
    elif mode == "convert":
        from gguf_out.cli import main
        status = main([str(root), "qwen3", str(out), "--config", str(root / "config.json"), "--tokenizer",
                       str(root / "tokenizer.json"), "--outtype", "bf16", "--force", "-q", "--name", "bench"])
        if status:
            raise SystemExit(f"convert failed with status {status}")
        result["gguf_bytes"] = out.stat().st_size
    result["seconds"] = time.perf_counter() - started
    return result


def timed(cmd):
    """(wall seconds, peak RSS bytes, stdout) of a command under GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name] + cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:3])} failed: {proc.stderr[-500:]}")
        return wall, int(t.read().split()[-1]) * 1024, proc.stdout


def run(mode, root, out):
    if mode == "cat":
        wall, rss, _ = timed(["sh", "-c", "cat \"$@\" > /dev/null", "cat"] + [str(f) for f in model_files(root)])
        return {"mode": mode, "wall": wall, "maxrss": rss}
    wall, rss, stdout = timed([sys.executable, __file__, str(root), "--worker", mode, "--out", str(out)])
    return dict(json.loads(stdout.strip().splitlines()[-1]), wall=wall, maxrss=rss)


def warm(root):
    for f in model_files(root):
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--make", action="store_true", help="write the save first")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn", type=int, default=6144)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="cat,baseline,index,merge,array,convert")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="also measure with the page cache dropped before each run")
    p.add_argument("--out", type=Path, help="GGUF output (default: ROOT/../ckpt2-out.gguf)")
    p.add_argument("--json", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    out = a.out or a.root.parent / "ckpt2-out.gguf"
    if a.worker:
        print(json.dumps(worker(a.worker, a.root, out)))
        return 0
    if a.make:
        make(a.root, a)
    size = model_bytes(a.root)
    modes = [m for m in a.modes.split(",") if m]
    states = ["warm"] + (["cold"] if a.cold else [])
    runs = []
    for repeat in range(a.repeats):
        for state in states:
            for mode in (modes if repeat % 2 == 0 else modes[::-1]):
                if state == "cold":
                    problem = drop_caches()
                    if problem:
                        raise SystemExit(f"--cold: cannot drop the page cache ({problem})")
                else:
                    warm(a.root)
                waited, busy = wait_quiet()
                r = run(mode, a.root, out)
                r.update(state=state, repeat=repeat, others_busy_before=busy)
                runs.append(r)
                print(f"  {state} {mode:<8} {r['wall']:6.2f} s  peak RSS {r['maxrss'] / 1e6:6.0f} MB", file=sys.stderr)
                if out.exists():
                    out.unlink()
    summary = {}
    for state in states:
        for mode in modes:
            walls = [r["wall"] for r in runs if r["state"] == state and r["mode"] == mode]
            rss = [r["maxrss"] for r in runs if r["state"] == state and r["mode"] == mode]
            summary[f"{state} {mode}"] = {"median_wall": statistics.median(walls), "min_wall": min(walls),
                                          "max_wall": max(walls), "peak_rss": max(rss),
                                          "MB_per_s": size / 1e6 / statistics.median(walls)}
    print(f"{len(model_files(a.root))} model files, {size / 1e6:,.0f} MB")
    for key, s in summary.items():
        print(f"  {key:<14} median {s['median_wall']:6.2f} s (min {s['min_wall']:.2f})  "
              f"{s['MB_per_s']:7,.0f} MB/s   peak RSS {s['peak_rss'] / 1e6:6.0f} MB")
    if a.json:
        a.json.write_text(json.dumps({"machine": machine_info(), "model_file_bytes": size, "runs": runs,
                                      "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
