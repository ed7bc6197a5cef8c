"""Benchmark merging a distributed (rank_N/ sharded) checkpoint while converting it.

    python bench/bench_distributed.py /work/bench-data/dist4 --make        # write the shards (~1.2 GB), then run
    python bench/bench_distributed.py /work/bench-data/dist4 [--json OUT]  # run on existing shards

``--make`` writes a Llama-shaped BFloat16 model (hidden 2048, 16/4 heads, 10 layers, vocab 32000 by default)
as 4 ranks in MindFormers' layout, with the same kind of strategy as the ``tp2x2`` test fixture (dp 2 x mp 2:
embedding split on both axes, Q/K/V/W1/W3/lm_head split on rows by mp and optimizer-sharded over dp, wo split on
columns and replicated, w2 split on columns + optimizer-sharded, norms replicated, norm_out optimizer-sharded
4 ways)::

    DIR/checkpoint/rank_N/llama_rank_N-1_1.ckpt     (written with this script's own record writer)
    DIR/strategy/ckpt_strategy_rank_N.ckpt          (ParallelStrategyMap, built from the vendored schema)
    DIR/config.yaml, DIR/tokenizer.model

Shard contents are random; replicas of a block get identical bytes (each block's values come from a generator
seeded by the parameter and the block), as real replicas would.

Each measurement runs in a fresh subprocess: ``merge`` opens the directory and builds every merged tensor once with
``array()`` (one full tensor alive at a time); ``convert`` runs ``ms2gguf DIR/checkpoint llama2 OUT.gguf`` in-process.
``convert-single`` converts ``DIR/single/model.ckpt``, the same model merged into one plain file (written by
``--make`` through msckpt's merge), as the unsharded baseline; both GGUFs must be byte-identical.
Reported: wall time, VmHWM (peak resident set, which also counts the shards' memory-mapped file pages the
process touched) and the peak anonymous RSS sampled every 20 ms (``RssAnon``: what the process allocates
itself), next to the sum of the shard sizes.
"""

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from math import prod
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from make_checkpoint import record_header, tensor_list, write_config  # noqa: E402

from msckpt.schema import message_class  # noqa: E402
from msckpt.strategy import Layout  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "llama" / "tokenizer" / "tokenizer.model"
DP_MP = (2, 2)


def layout_for(name, shape):
    """(tensor_map, opt step, opt size) as in the tp2x2 fixture; map value 0 = the mp dim, 1 = the dp dim."""
    if name == "model.tok_embeddings.embedding_weight":
        return [1, 0], 0, 0
    if name == "lm_head.weight":
        return [0, -1], 2, -1
    if name == "model.norm_out.weight":
        return [-1], 1, 4
    if len(shape) == 1:
        return [-1], 0, 0
    if name.endswith("attention.wo.weight"):
        return [-1, 0], 0, 0
    if name.endswith("feed_forward.w2.weight"):
        return [-1, 0], 2, 2
    return [0, -1], 2, 2


def layouts_of(tensors):
    out = {}
    for name, shape, is_norm in tensors:
        tmap, step, size = layout_for(name, shape)
        out[name] = (Layout(name, DP_MP, tuple(() if m == -1 else (m,) for m in tmap), step, size), tmap, shape,
                     is_norm)
    return out


def shard_block(layout, shape, rank):
    """(block key, shard shape) of the shard ``rank`` holds; replicas share the key."""
    parts, size = layout.parts, layout.opt_size
    shard = [n // p for n, p in zip(shape, parts)]
    shard[0] //= size
    return (layout.slice_index(rank), layout.opt_piece(rank)), tuple(shard)


def block_bytes(seed, index, key, n, is_norm):
    rng = np.random.Generator(np.random.PCG64([seed, index, hash(key) & 0xFFFFFFFF]))
    values = rng.standard_normal(n, dtype=np.float32)
    if is_norm:
        return (values * 0.05 + 1.0).astype("<f4").tobytes()
    values *= 0.02
    bits = values.view(np.uint32)
    bits += 0x7FFF + ((bits >> 16) & 1)                  # round to nearest even bf16
    return (bits >> 16).astype("<u2").tobytes()


def make(folder, a):
    tensors, _ = tensor_list(a, a.layers)
    layouts = layouts_of(tensors)
    ranks = prod(DP_MP)
    started = time.perf_counter()
    for rank in range(ranks):
        path = folder / "checkpoint" / f"rank_{rank}" / f"llama_rank_{rank}-1_1.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for index, (name, (layout, _, shape, is_norm)) in enumerate(layouts.items()):
                key, shard = shard_block(layout, shape, rank)
                data = block_bytes(a.seed, index, key, prod(shard), is_norm)
                f.write(record_header(name, shard, "Float32" if is_norm else "BFloat16", len(data)))
                f.write(data)
        print(f"  {path}  {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
    smap = message_class("node_strategy", "mindspore.straspb.ParallelStrategyMap")()
    smap.current_stage = 0
    for name, (layout, tmap, _, _) in layouts.items():
        item = smap.parallel_layout_item.add()
        item.param_name = name
        pl = item.parallel_layouts
        pl.dev_matrix.add().dim.extend(DP_MP)
        pl.tensor_map.add().dim.extend(tmap)
        pl.param_split_shape.add()
        pl.indices_offset.add()
        pl.field = 0
        pl.opt_weight_shard_step = layout.opt_shard_step
        pl.opt_weight_shard_size = layout.opt_shard_size
    (folder / "strategy").mkdir(exist_ok=True)
    for rank in range(ranks):
        (folder / "strategy" / f"ckpt_strategy_rank_{rank}.ckpt").write_bytes(smap.SerializeToString())
    a.dtype = "bf16"
    write_config(folder / "config.yaml", a, a.layers)
    (folder / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    print(f"wrote {ranks} ranks in {time.perf_counter() - started:.1f} s", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- worker side

def vm_hwm():
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class AnonPeak:
    """Samples RssAnon of this process every 20 ms (VmHWM also counts touched file-mapped pages)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self):
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def _run(self):
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak


def worker(mode, folder, out, outtype):
    import msckpt
    from gguf_out.cli import main

    sampler = AnonPeak()
    started = time.perf_counter()
    result = {"mode": mode}
    if mode == "baseline":
        pass
    elif mode == "merge":
        with msckpt.open_checkpoint(folder / "checkpoint") as ckpt:
            biggest = 0
            for t in ckpt:
                a = t.array()
                biggest = max(biggest, a.nbytes)
                del a
            result.update(tensors=len(ckpt), largest_tensor_bytes=biggest,
                          tensor_bytes=sum(t.nbytes for t in ckpt))
    elif mode in ("convert", "convert-single"):
        source = folder / "checkpoint" if mode == "convert" else folder / "single" / "model.ckpt"
        status = main([str(source), "llama2", str(out), "--config", str(folder / "config.yaml"),
                       "--tokenizer", str(folder / "tokenizer.model"), "--force", "-q", "--name", "bench",
                       "--outtype", outtype])
        if status != 0:
            raise SystemExit(f"convert failed with status {status}")
        result["gguf_bytes"] = out.stat().st_size
        result["gguf_sha256"] = sha256_of(out)
    result.update(seconds=time.perf_counter() - started, peak_anon_bytes=sampler.stop(), maxrss_bytes=vm_hwm())
    return result


def sha256_of(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_single(folder):
    """The merged model as one plain .ckpt (our merge, one tensor at a time): the unsharded baseline."""
    import msckpt

    path = folder / "single" / "model.ckpt"
    path.parent.mkdir(exist_ok=True)
    with msckpt.open_checkpoint(folder / "checkpoint") as ckpt, open(path, "wb") as f:
        for t in ckpt:
            data = t.array()
            f.write(record_header(t.name, t.shape, t.dtype.name, data.nbytes))
            f.write(memoryview(data).cast("B"))
    print(f"  {path}  {path.stat().st_size / 1e6:.1f} MB (unsharded baseline)", file=sys.stderr)


def run_worker(mode, folder, out, outtype):
    proc = subprocess.run([sys.executable, __file__, str(folder), "--worker", mode, "--out", str(out),
                           "--outtype", outtype],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--make", action="store_true", help="write the sharded checkpoint first")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--multiple-of", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="GGUF output (default: FOLDER/out.gguf)")
    p.add_argument("--outtype", default="f16", help="converter --outtype (default: %(default)s; bf16 copies "
                   "the unsharded file's bytes straight through)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.ffn_dim_multiplier = None
    out = a.out or a.folder / "out.gguf"
    if a.worker:
        print(json.dumps(worker(a.worker, a.folder, out, a.outtype)))
        return 0
    if a.make:
        make(a.folder, a)
        write_single(a.folder)
    shards = sorted((a.folder / "checkpoint").glob("rank_*/*.ckpt"))
    shard_bytes = sum(f.stat().st_size for f in shards)
    for f in shards + [a.folder / "single" / "model.ckpt"]:     # warm the page cache: every mode reads memory
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass
    results = {"shards": len(shards), "shard_bytes": shard_bytes, "outtype": a.outtype,
               "runs": [run_worker(mode, a.folder, out, a.outtype)
                        for mode in ("baseline", "merge", "convert", "convert-single")]}
    convert, single = results["runs"][2], results["runs"][3]
    results["same_gguf"] = convert["gguf_sha256"] == single["gguf_sha256"]
    mb = 1e6
    print(f"{len(shards)} shards, {shard_bytes / mb:,.0f} MB total; --outtype {a.outtype}")
    for r in results["runs"]:
        extra = ""
        if "largest_tensor_bytes" in r:
            extra = f"  (largest merged tensor {r['largest_tensor_bytes'] / mb:.0f} MB)"
        if "gguf_bytes" in r:
            extra = f"  (GGUF {r['gguf_bytes'] / mb:,.0f} MB)"
        print(f"  {r['mode']:<14} {r['seconds']:6.1f} s   peak RssAnon {r['peak_anon_bytes'] / mb:5.0f} MB "
              f"({r['peak_anon_bytes'] / shard_bytes:5.1%} of shards)   VmHWM {r['maxrss_bytes'] / mb:5.0f} MB{extra}")
    print(f"  sharded and unsharded conversions give {'the same' if results['same_gguf'] else 'DIFFERENT'} GGUF bytes")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    if out.exists():
        out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
