"""Generate the distributed (sharded) checkpoint fixtures under ``tests/fixtures/dist_llama/``.

Needs real MindSpore (developed against mindspore 2.10.0 CPU, numpy 1.26.4). Not run by the test suite; the
tests only read its committed output. From the repository root:

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_dist_fixtures.py

For every case the script takes tensors of the tiny MindFormers Llama checkpoint
``tests/fixtures/llama/bf16/model.ckpt`` (2-D weights BFloat16, norms Float32), and

1. writes a hand-built strategy with MindSpore's own protobuf classes (``mindspore.train.node_strategy_pb2``):
   a real strategy file cannot be produced on CPU (ckpt-format.md §11.3);
2. cuts every rank's shard with MindSpore's own layout code (``_construct_tensor_layout_for_opt_shard`` +
   ``_load_tensor``, the functions its loaders use to slice a full tensor for a rank), so the shards do not
   depend on ms2gguf's merge algorithm, and saves them with ``mindspore.save_checkpoint``;
3. merges the shards back with ``mindspore.transform_checkpoints(src, dst, prefix, strategy, None)``, checks that
   the result equals the source tensors bit for bit, and records MindSpore's merged tensors in
   ``<case>/expected.json`` as {name: {dtype, shape, sha256 of the C-order element bytes}} (hashes rather than
   a merged copy keep the fixtures small; a test compares ms2gguf's merge with them bit for bit).

Cases (all ranks also hold ``global_step`` and ``learning_rate``, which are not in the strategy):

* ``tp2x2``: the whole model on 4 ranks, dev_matrix [dp=2, mp=2]: embedding split on both axes, Q/K/V/W1/W3/
  lm_head split on rows by mp and optimizer-sharded over dp (step 2, size 2 or -1), wo split on columns and
  replicated over dp, w2 split on columns + optimizer-sharded, norms replicated, norm_out fully
  optimizer-sharded (step 1, size 4), plus one optimizer state (adam_m) with its own layout. Converting it must
  give the same GGUF as converting ``llama/bf16/model.ckpt``.
* ``opt8``: layer-0 tensors on 8 ranks with several optimizer-shard step/size combinations (1/8, 4/2, 4/-1,
  2/2 with 4 replicas, 2/2 over a replicated middle dim, 1/-1, 1/4). Also written as ``opt8_strategy.json``
  (the JSON strategy variant, flat maps only); MindSpore's merge with the JSON file must give the same result.
* ``layout``: layer-1 tensors on 8 ranks, dev_matrix [2, 2, 2], Layout-style tensor maps (one TensorMap per
  axis listing several device dims; an empty entry after a 1-D map), one of them optimizer-sharded.
* ``pipeline``: two pipeline stages of 2 devices each, in MindFormers' directory layout
  (``checkpoint/rank_N/llama_rank_N-1_<step>.ckpt``, ``strategy/ckpt_strategy_rank_N.ckpt``, one file per rank,
  each with its stage's layouts); two saved steps (2 and 4; step 2 holds the weights x0.5). MindSpore merges
  them after ``mindspore.merge_pipeline_strategys`` (its output is kept as ``merged_strategy.ckpt``);
  ``expected.json`` has the newest step, ``expected_step2.json`` the older one.

Output is deterministic: rerunning rewrites every file byte for byte.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import numpy as np  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore.parallel._tensor import _construct_tensor_layout_for_opt_shard, _get_tensor_strategy, \
    _load_tensor  # noqa: E402
from mindspore.train import node_strategy_pb2 as pb  # noqa: E402

TESTS = Path(__file__).resolve().parent
SOURCE = TESTS / "fixtures" / "llama" / "bf16" / "model.ckpt"
OUT = TESTS / "fixtures" / "dist_llama"

L0, L1 = "model.layers.0.", "model.layers.1."
EXTRAS = ("global_step", "learning_rate")      # same on every rank, not in the strategy


def layer_names(prefix):
    return [prefix + n for n in ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                                 "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
                                 "feed_forward.w3.weight", "attention_norm.weight", "ffn_norm.weight")]


def tp2x2_layouts():
    dp_mp = [2, 2]       # rank r: dp = r // 2, mp = r % 2; map value 0 = mp dim, 1 = dp dim
    lay = {"model.tok_embeddings.embedding_weight": (dp_mp, [1, 0], 0, 0)}
    for p in (L0, L1):
        for n in ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "feed_forward.w1.weight",
                  "feed_forward.w3.weight"):
            lay[p + n] = (dp_mp, [0, -1], 2, 2)
        lay[p + "attention.wo.weight"] = (dp_mp, [-1, 0], 0, 0)          # replicated over dp
        lay[p + "feed_forward.w2.weight"] = (dp_mp, [-1, 0], 2, 2)
        lay[p + "attention_norm.weight"] = (dp_mp, [-1], 0, 0)           # 4 replicas
        lay[p + "ffn_norm.weight"] = (dp_mp, [-1], 0, 0)
    lay["model.norm_out.weight"] = (dp_mp, [-1], 1, 4)
    lay["lm_head.weight"] = (dp_mp, [0, -1], 2, -1)
    lay["adam_m." + L0 + "attention.wq.weight"] = (dp_mp, [0, -1], 2, 2)
    return lay


def opt8_layouts():
    return {
        L0 + "attention.wq.weight": ([2, 4], [-1, 0], 4, 2),
        L0 + "attention.wk.weight": ([2, 4], [0, -1], 4, 2),
        L0 + "attention.wv.weight": ([2, 4], [-1, -1], 1, 8),
        L0 + "attention.wo.weight": ([2, 4], [0, -1], 4, -1),
        L0 + "feed_forward.w1.weight": ([4, 2], [-1, 0], 2, 2),        # 4 replicas, sharded only 2-way
        L0 + "feed_forward.w2.weight": ([2, 2, 2], [2, 0], 2, 2),      # shard over the replicated middle dim
        L0 + "feed_forward.w3.weight": ([8], [0, -1], 0, 0),
        L0 + "attention_norm.weight": ([2, 4], [-1], 1, -1),
        L0 + "ffn_norm.weight": ([2, 4], [-1], 1, 4),
    }


def layout_layouts():
    d = [2, 2, 2]
    return {
        L1 + "attention.wq.weight": (d, [[2, 1], [-1]], 0, 0),
        L1 + "attention.wk.weight": (d, [[-1], [1, 0]], 0, 0),
        L1 + "feed_forward.w1.weight": (d, [[1, 0], [2]], 0, 0),
        L1 + "feed_forward.w3.weight": (d, [[2], [-1]], 1, 2),         # Layout style + optimizer shard
        L1 + "feed_forward.w2.weight": (d, [[0, 2], [1]], 0, 0),
        L1 + "ffn_norm.weight": (d, [[2, 0]], 0, 0),
    }


def pipeline_stages():
    """[(stage, {name: layout})]: 2 devices per stage."""
    stage0 = {L0 + "attention.wq.weight": ([2], [0, -1], 0, 0), L0 + "attention.wk.weight": ([2], [-1, 0], 0, 0),
              L0 + "attention.wv.weight": ([2], [-1, -1], 1, 2), L0 + "attention_norm.weight": ([2], [-1], 0, 0)}
    stage1 = {L1 + "attention.wq.weight": ([2], [-1, 0], 0, 0), L1 + "attention.wk.weight": ([2], [0, -1], 0, 0),
              L1 + "attention.wo.weight": ([2], [0, -1], 0, 0), L1 + "attention_norm.weight": ([2], [-1], 1, 2),
              "model.norm_out.weight": ([2], [0], 0, 0)}
    return [(0, stage0), (1, stage1)]


# ------------------------------------------------------------------------------------------------------------

def load_source():
    params = ms.load_checkpoint(str(SOURCE))
    arrays = {name: p.asnumpy() for name, p in params.items()}
    dtypes = {name: p.dtype for name, p in params.items()}
    return arrays, dtypes


def extras(step):
    return {"global_step": (np.array([step], np.int32), ms.int32),
            "learning_rate": (np.array(0.001, np.float32), ms.float32)}


def shard_for_rank(full, layout, rank):
    """The shard MindSpore's loaders would give ``rank`` (model-parallel slice, then optimizer piece)."""
    dev, tmap, step, size = layout
    strategy = _get_tensor_strategy(dev, tmap)
    if size == -1:
        opt = int(np.prod(dev)) // int(np.prod(strategy))
    else:
        opt = size if size > 0 else 1
    shape = [a // p for a, p in zip(full.shape, strategy)]
    shape[0] //= opt
    # MindSpore resolves size -1 before building the layout (_extract_layout_item)
    dev2, map2, full2 = _construct_tensor_layout_for_opt_shard(list(dev), list(tmap), step,
                                                               opt if size else 0, list(full.shape))
    piece = _load_tensor(ms.Tensor(full.reshape(full2)), dev2, map2, full2, rank)
    return np.ascontiguousarray(piece.reshape(shape))


def layout_proto(layout):
    dev, tmap, step, size = layout
    out = pb.ParallelLayouts()
    out.dev_matrix.add().dim.extend(dev)
    if any(isinstance(m, list) for m in tmap):
        for axis in tmap:                       # Layout style: one TensorMap per axis
            out.tensor_map.add().dim.extend(axis)
        if len(tmap) == 1:
            out.tensor_map.add()                # MindSpore appends an empty entry for 1-D tensors
    else:
        out.tensor_map.add().dim.extend(tmap)
    out.param_split_shape.add()
    out.indices_offset.add()
    out.field = 0
    out.opt_weight_shard_step = step
    out.opt_weight_shard_size = size
    return out


def write_strategy(path, layouts, stage=0):
    smap = pb.ParallelStrategyMap()
    smap.current_stage = stage
    item = smap.parallel_strategy_item.add()
    item.node_name = "Default/network-LlamaForCausalLM/MatMul-op0"
    item.parallel_strategys.stage = stage
    item.parallel_strategys.parallel_strategy.add().dim.extend([1, 1])
    for name, layout in layouts.items():
        entry = smap.parallel_layout_item.add()
        entry.param_name = name
        entry.parallel_layouts.CopyFrom(layout_proto(layout))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(smap.SerializeToString())


def write_json_strategy(path, layouts, arrays):
    items = {}
    for name, (dev, tmap, step, size) in layouts.items():
        items[name] = {"dev_matrix": dev, "tensor_map": tmap, "tensor_shape": list(arrays[name].shape),
                       "field": 0, "opt_weight_shard_step": step, "opt_weight_shard_size": size}
    data = {"current_stage": 0,
            "parallel_strategy_item": {"Default/network-LlamaForCausalLM/MatMul-op0":
                                       {"stage": 0, "parallel_strategy": [[1, 1]]}},
            "parallel_layout_item": items}
    path.write_text(json.dumps(data, indent=1) + "\n")


def save_ranks(rank_dirs, file_names, layouts, arrays, dtypes, stage_of, devices, step, scale=1.0):
    """Save every rank's shards; ``stage_of[name]`` gives the stage whose ranks hold a parameter."""
    for rank, (folder, fname) in enumerate(zip(rank_dirs, file_names)):
        stage, local = divmod(rank, devices)
        entries = []
        for name in arrays:                 # the source file's order, as the network would save them
            layout = layouts.get(name)
            if layout is None or stage_of.get(name, 0) != stage:
                continue
            full = arrays[name] * np.array(scale, arrays[name].dtype) if scale != 1.0 else arrays[name]
            entries.append({"name": name, "data": ms.Tensor(shard_for_rank(full, layout, local), dtypes[name])})
        for name, (value, dtype) in extras(step).items():
            entries.append({"name": name, "data": ms.Tensor(value, dtype)})
        folder.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(entries, str(folder / fname))


def mindspore_merge(src_dir, strategy, work, tag):
    dst = work / f"merged_{tag}"
    if dst.exists():
        shutil.rmtree(dst)
    ms.transform_checkpoints(str(src_dir), str(dst), "merged", str(strategy), None)
    files = sorted(dst.glob("rank_0/*.ckpt"))
    assert len(files) == 1, files
    return ms.load_checkpoint(str(files[0]))


def describe(merged):
    out = {}
    for name in sorted(merged):
        value = merged[name].asnumpy()
        out[name] = {"dtype": str(merged[name].dtype), "shape": list(value.shape),
                     "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    return out


def check_equal(merged, arrays, names, scale=1.0, step=10):
    for name in names:
        want = arrays[name] * np.array(scale, arrays[name].dtype) if scale != 1.0 else arrays[name]
        got = merged[name].asnumpy()
        if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
            raise SystemExit(f"MindSpore's merge of {name} differs from the source tensor")
    for name, (value, _) in extras(step).items():
        if merged[name].asnumpy().tobytes() != value.tobytes():
            raise SystemExit(f"MindSpore's merge lost {name}")


def write_expected(path, merged, note):
    """{"made_by", "note", "tensors": {name: {dtype, shape, sha256}}}, one line per tensor."""
    head = {"made_by": "mindspore.transform_checkpoints " + ms.__version__, "note": note}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    rows = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in describe(merged).items()]
    path.write_text("{\n" + "\n".join(lines) + '\n "tensors": {\n' + ",\n".join(rows) + "\n }\n}\n")


def simple_case(case, layouts, arrays, dtypes, work, note, step=10):
    folder = OUT / case
    names = list(layouts)
    devices = int(np.prod(layouts[names[0]][0]))
    rank_dirs = [folder / f"rank_{r}" for r in range(devices)]
    save_ranks(rank_dirs, [f"llama_rank_{r}-1_{step}.ckpt" for r in range(devices)], layouts, arrays, dtypes,
               {}, devices, step)
    write_strategy(folder / "strategy.ckpt", layouts)
    merged = mindspore_merge(folder, folder / "strategy.ckpt", work, case)
    check_equal(merged, arrays, names, step=step)
    write_expected(folder / "expected.json", merged, note)
    return merged


def pipeline_case(arrays, dtypes, work):
    folder = OUT / "pipeline"
    stages = pipeline_stages()
    devices = 2
    layouts, stage_of = {}, {}
    for stage, lay in stages:
        layouts.update(lay)
        stage_of.update({name: stage for name in lay})
    ranks = devices * len(stages)
    rank_dirs = [folder / "checkpoint" / f"rank_{r}" for r in range(ranks)]
    for step, scale in ((2, 0.5), (4, 1.0)):
        save_ranks(rank_dirs, [f"llama_rank_{r}-1_{step}.ckpt" for r in range(ranks)], layouts, arrays, dtypes,
                   stage_of, devices, step, scale)
    strategy_dir = folder / "strategy"
    for rank in range(ranks):
        stage = rank // devices
        write_strategy(strategy_dir / f"ckpt_strategy_rank_{rank}.ckpt", dict(stages[stage][1]), stage)
    merged_strategy = folder / "merged_strategy.ckpt"
    ms.merge_pipeline_strategys(str(strategy_dir), str(merged_strategy))
    note = "two pipeline stages (2 devices each); newest step (4)"
    merged = mindspore_merge(folder / "checkpoint", merged_strategy, work, "pipeline")
    check_equal(merged, arrays, layouts, step=4)
    write_expected(folder / "expected.json", merged, note)
    # the older step alone: MindSpore takes the last file per rank in sorted order, so give it only step 2
    old = work / "pipeline_step2"
    for rank in range(ranks):
        (old / f"rank_{rank}").mkdir(parents=True)
        shutil.copy(rank_dirs[rank] / f"llama_rank_{rank}-1_2.ckpt", old / f"rank_{rank}")
    merged_old = mindspore_merge(old, merged_strategy, work, "pipeline_old")
    check_equal(merged_old, arrays, layouts, scale=0.5, step=2)
    write_expected(folder / "expected_step2.json", merged_old, "pipeline case, step 2 (weights x0.5)")


README = """# Distributed (sharded) tiny-Llama checkpoints

Written by `tests/gen_dist_fixtures.py` with real MindSpore 2.10 (do not edit by hand; its docstring describes
every case). Shards of `../llama/bf16/model.ckpt` cut per hand-built strategies with MindSpore's own layout code;
`expected.json` = sha256 of every tensor `mindspore.transform_checkpoints` merged back (equal to the source
tensors bit for bit).

| case | ranks | what |
|---|---|---|
| `tp2x2/` | 4 | whole model, dp 2 x mp 2: replicas, 2-D split, optimizer sharding (2/2, 2/-1, 1/4), one adam_m |
| `opt8/` (+ `opt8_strategy.json`) | 8 | layer 0, optimizer-shard step/size combinations; JSON strategy variant |
| `layout/` | 8 | layer 1, Layout-style (nested) tensor maps, one optimizer-sharded |
| `pipeline/` | 2 stages x 2 | MindFormers layout `checkpoint/rank_N/`, `strategy/ckpt_strategy_rank_N.ckpt`; steps 2 and 4 |
"""


def main():
    arrays, dtypes = load_source()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gen_dist_fixtures_") as tmp:
        work = Path(tmp)
        tp = tp2x2_layouts()
        missing = set(arrays) - set(tp)
        assert not missing, f"tp2x2 must cover the whole model: {missing}"
        arrays["adam_m." + L0 + "attention.wq.weight"] = (arrays[L0 + "attention.wq.weight"]
                                                         .astype(np.float32) * np.float32(0.25))
        dtypes["adam_m." + L0 + "attention.wq.weight"] = ms.float32
        simple_case("tp2x2", tp, arrays, dtypes, work,
                    "whole bf16 Llama on 4 ranks: dp 2 x mp 2 with replicas and optimizer sharding")
        opt = opt8_layouts()
        merged = simple_case("opt8", opt, arrays, dtypes, work,
                                "layer 0 on 8 ranks: optimizer sharding with several step/size combinations")
        write_json_strategy(OUT / "opt8_strategy.json", opt, arrays)
        merged_json = mindspore_merge(OUT / "opt8", OUT / "opt8_strategy.json", work, "opt8_json")
        if describe(merged_json) != describe(merged):
            raise SystemExit("MindSpore's merge with the JSON strategy differs from the protobuf one")
        simple_case("layout", layout_layouts(), arrays, dtypes, work,
                    "layer 1 on 8 ranks: Layout-style (nested) tensor maps")
        pipeline_case(arrays, dtypes, work)
    (OUT / "README.md").write_text(README)
    total = 0
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            print(f"  {f.relative_to(OUT)}  {f.stat().st_size} B  "
                  f"sha256:{hashlib.sha256(f.read_bytes()).hexdigest()[:16]}")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
