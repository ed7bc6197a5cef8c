"""Generate the fixtures under ``tests/fixtures/mf_saves/``: checkpoints written by MindFormers 2.1.0's own save code.

Needs the MindSpore 2.10 + MindFormers 2.1.0 venv (shared/reference/fixture-env.md). Not run by the test suite; the
tests read only its committed output. From the repository root:

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_mfsave_fixtures.py

What is real: MindFormers' ``CheckpointMonitor`` (``_save_megatron_ckpt_file_format`` for Checkpoint 2.0 ->
``mindformers.checkpoint.save_checkpoint`` -> ``save_metadata`` / ``BalancedSaveStrategy`` /
``save_balanced_metadata``; ``save_checkpoint`` + ``remove_redundancy`` for the legacy rank layout, which calls
MindSpore's ``get_parameter_redundancy`` / ``remove_param_redundancy``), MindSpore's ``save_checkpoint`` (the
safetensors files), MindSpore's ``_NetStrategyInfo`` (strategy records -> ``ms.Layout``, optimizer-shard folding
included) and MindSpore's slicers (``_expand_layout`` + ``_load_tensor``; ``_construct_tensor_layout_for_opt_shard``
for the legacy layout, via gen_dist_fixtures.shard_for_rank), which cut each rank's data without MindFormers.
Every case is read back by the real loaders - MindFormers' ``load_checkpoint`` for Checkpoint 2.0 (into a fresh
single-card network and AdamW optimizer), MindSpore's ``unified_safetensors`` for the legacy rank trees (it
understands de-duplicated saves) - and the generator fails unless they return the source tensors bit for bit.
``expected*.json`` records {name: dtype, shape, sha256 of the C-order element bytes} of what they returned, so the
tests compare ms2gguf's merge with MindFormers' / MindSpore's own without storing merged copies.

What is simulated (no cluster on CPU): ranks are threads; ``get_real_rank``, ``get_real_group_size``,
``barrier_world``, ``all_gather_object``, ``gather_object``, ``scatter_object_list``, ``synchronize`` and
MindSpore's ``get_group_size`` / ``get_rank`` are replaced by thread versions; the compiler's
``get_strategy_metadata`` is fed hand-given strategy records (``tensor_type`` "bfloat16"), and the legacy
network's ``parameter_layout_dict`` is hand-given the way the compiler fills it. Parameters of the rank's own
pipeline stage are marked ``sliced`` (and initialised), the others not, which makes ``ms.save_checkpoint`` skip
them as it does in a graph-mode pipeline run.

Cases (tiny models, bf16):

* ``qwen3/``: the unsharded reference - the tiny mcore Qwen3 (``TrainingQwen3ForCausalLM``, H 16, 2 layers, untied
  output layer) as one ``mindspore.save_checkpoint`` file, plus its HF config.json. Every Qwen3 case below holds
  these weights, so converting any of them must give the same GGUF bytes as converting ``qwen3/model.ckpt``.
* ``ckpt2_single/``: one card, CheckpointMonitor with ``use_legacy_format=False``, saves at steps 5 (weights x0.5)
  and 10, with the optimizer: ``iteration_00000005/``, ``iteration_00000010/``, tracker "10", no metadata.json.
* ``ckpt2_tp2pp2dp2/``: 8 ranks, pipeline 2 x data parallel 2 x tensor parallel 2, optimizer parallelism over dp
  (weights and AdamW states folded into the layouts by MindSpore), normal save with the optimizer.
* ``ckpt2_tp2pp2dp2_dedup/``: the same job saved with ``remove_redundancy=True``.
* ``legacy_qwen3_tp2dp2/``: the legacy layout of the same Qwen3 on 4 ranks (dp 2 x tp 2, optimizer-sharded),
  safetensors (what mcore models write by default): ``checkpoint/rank_N/qwen3_rank_N-1_10.safetensors`` +
  ``meta.json``, ``strategy/ckpt_strategy_rank_N.ckpt``.
* ``legacy_qwen3_rank0/``: the legacy layout of a single-card run (``checkpoint/rank_0/`` only, steps 5 and 10).
* ``legacy_llama_dedup/``: the tiny legacy Llama of ``llama/bf16/model.ckpt`` on 8 ranks (pipeline 2 x dp 2 x
  mp 2, optimizer-sharded), saved with ``remove_redundancy=True``; ``expected.json`` also records which ranks
  MindSpore's rule (``remove_param_redundancy``) chose for each parameter, and the generator checks the files
  hold exactly that. Converting it must give the bytes of converting ``llama/bf16/model.ckpt``.

Deterministic: fixed seeds; rerunning rewrites every file with the same content - byte for byte except that the
safetensors library writes the keys of a file's ``__metadata__`` in hash order, which varies between runs. Files
are written 0400 by MindSpore and MindFormers; they are copied out 0644.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TESTS = Path(__file__).resolve().parent
OUT = TESTS / "fixtures" / "mf_saves"
LLAMA_SOURCE = TESTS / "fixtures" / "llama" / "bf16" / "model.ckpt"
sys.path.insert(0, str(TESTS))

QWEN3 = dict(vocab_size=448, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
             tie_word_embeddings=False, seq_length=32, pad_token_id=400, qkv_concat=True, params_dtype="bfloat16",
             compute_dtype="bfloat16", layernorm_compute_dtype="float32")
STEP, EPOCH, LOSS_SCALE = 10, 1, 1024.0
OPTIMIZER_SCALARS = ("global_step", "learning_rate")


# ---------------------------------------------------------------------------------------------------------------
# Simulated ranks
# ---------------------------------------------------------------------------------------------------------------

class Ranks:
    """Ranks as threads: each thread has its rank; collectives meet at a barrier and exchange through slots."""

    def __init__(self):
        self.world = 1
        self.local = threading.local()
        self.barrier = None
        self.slots = []
        self.shared = None
        self.groups = {}              # legacy optimizer-shard group name -> size

    def rank(self, group=None):
        return getattr(self.local, "rank", 0)

    def size(self, group=None):
        return self.groups[group] if group in self.groups else self.world

    def wait(self, *_args, **_kwargs):
        if self.world > 1:
            self.barrier.wait()

    def all_gather_object(self, out, obj, group=None):
        self.slots[self.rank()] = obj
        self.wait()
        out[:] = list(self.slots)
        self.wait()

    def gather_object(self, obj, out=None, dst=0, group=None):
        self.slots[self.rank()] = obj
        self.wait()
        if self.rank() == dst:
            out[:] = list(self.slots)
        self.wait()

    def scatter_object_list(self, out, inputs, src=0, group=None):
        if self.rank() == src:
            self.shared = list(inputs)
        self.wait()
        out[0] = self.shared[self.rank()]
        self.wait()

    def as_rank(self, rank, world):
        """Run setup code (building a rank's network, its callback) as ``rank`` of ``world`` in this thread."""
        self.local.rank, self.world = rank, world

    def run(self, world, fn):
        """fn(rank) on ``world`` threads; the first failure is raised."""
        self.world, self.barrier, self.slots = world, threading.Barrier(world), [None] * world
        errors = []

        def body(rank):
            self.local.rank = rank
            try:
                fn(rank)
            except BaseException as err:          # noqa: BLE001 - reported below, other ranks released
                errors.append((rank, err))
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.as_rank(0, 1)
        if errors:
            rank, err = errors[0]
            raise RuntimeError(f"rank {rank} failed") from err


RANKS = Ranks()


def install_rank_stubs():
    """Point every name MindFormers (and MindSpore's redundancy helpers) use for ranks and collectives at RANKS."""
    import mindformers.tools.utils as tu
    import mindformers.utils.parallel_utils as pu
    import mindspore.communication.management as cm
    import mindspore.mint.distributed as md
    import mindspore.runtime as rt

    stubs = {tu.get_real_rank: RANKS.rank, tu.get_real_group_size: RANKS.size, pu.barrier_world: RANKS.wait,
             md.all_gather_object: RANKS.all_gather_object, md.gather_object: RANKS.gather_object,
             md.scatter_object_list: RANKS.scatter_object_list, rt.synchronize: lambda *a, **k: None,
             cm.get_group_size: RANKS.size, cm.get_rank: RANKS.rank}
    for name, module in list(sys.modules.items()):
        if module is None or not (name.startswith("mindformers") or name == "mindspore.train._utils"):
            continue
        for attr, value in list(vars(module).items()):
            try:
                stub = stubs.get(value)
            except TypeError:                     # unhashable module attribute
                continue
            if stub is not None:
                setattr(module, attr, stub)


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def describe(arrays):
    """{name: {dtype, shape, sha256}} of {name: MindSpore Parameter/Tensor}."""
    return {name: {"dtype": str(value.dtype), "shape": list(value.shape), "sha256": sha(value.asnumpy())}
            for name, value in sorted(arrays.items())}


def write_expected(path, made_by, note, tensors, **extra):
    head = {"made_by": made_by, "note": note, **extra}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    rows = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in tensors.items()]
    path.write_text("{\n" + "\n".join(lines) + '\n "tensors": {\n' + ",\n".join(rows) + "\n }\n}\n")


def copy_out(src, dest):
    """Copy a tree MindSpore/MindFormers wrote (files 0400, dirs 0750) into the repository, files 0644."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def same(got, want, what):
    if str(got.dtype) != str(want.dtype) or got.shape != want.shape or \
            got.asnumpy().tobytes() != want.asnumpy().tobytes():
        raise SystemExit(f"{what}: the real loader's result differs from the source tensor")


# ---------------------------------------------------------------------------------------------------------------
# The tiny mcore Qwen3 and its weights
# ---------------------------------------------------------------------------------------------------------------

def qwen3_train_net():
    """(network, AdamW optimizer) as a MindFormers training job builds them."""
    from mindformers.core.optim.adamw import AdamW
    from mindformers.models.qwen3.configuration_qwen3 import Qwen3Config
    from mindformers.models.qwen3.modeling_qwen3_train import TrainingQwen3ForCausalLM

    net = TrainingQwen3ForCausalLM(Qwen3Config(**QWEN3))
    return net, AdamW(net.trainable_params(), learning_rate=1e-3)


def qwen3_weights(scale=1.0):
    """{name: float32 array}: every network parameter and AdamW state (values exact in bf16 / f32)."""
    net, opt = qwen3_train_net()
    rs = np.random.RandomState(1301)
    out = {}
    for p in opt.get_parameters():
        if p.name in OPTIMIZER_SCALARS:
            continue
        gain = 0.02 if p.name.startswith("adam_v.") else 0.5
        values = (gain * rs.standard_normal(p.shape)).astype(np.float32)
        if p.name.endswith("layernorm.weight"):
            values += 1.0
        out[p.name] = values * np.float32(scale)
    return out


def load_weights(net, opt, weights):
    import mindspore as ms

    for p in opt.get_parameters():
        if p.name in weights:
            p.set_data(ms.Tensor(weights[p.name], dtype=p.dtype))
    opt.global_step.set_data(ms.Tensor([STEP], ms.int32))


def base_name(name):
    return name.split(".", 1)[1] if name.startswith(("adam_m.", "adam_v.")) else name


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint 2.0
# ---------------------------------------------------------------------------------------------------------------

DP, TP, PP = 2, 2, 2


def qwen3_stage(name):
    return 0 if name.startswith("embedding.") or ".layers.0." in name else 1


def qwen3_records(names, shapes):
    """{rank: {name: strategy record}} as the compiler reports them: device matrix [dp, tp] per stage (map value
    0 = tp, 1 = dp), vocab- and row-parallel weights, optimizer parallelism over dp (size 2; -1 = every replica
    for the final norm; none for q_layernorm), stage 0 = embedding + layer 0, stage 1 = the rest."""
    def record(name):
        if name.endswith(("linear_qkv.weight", "linear_fc1.weight", "output_layer.weight", "word_embeddings.weight")):
            tensor_map, opt = [[0], [-1]], 2
        elif name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            tensor_map, opt = [[-1], [0]], 2
        elif name.endswith("final_layernorm.weight"):
            tensor_map, opt = [[-1]], -1
        elif "q_layernorm" in name:
            tensor_map, opt = [[-1]], 0
        else:
            tensor_map, opt = [[-1]], 2
        stage = qwen3_stage(name)
        return SimpleNamespace(dev_matrix=[DP, TP], tensor_map=tensor_map, opt_weight_shard_size=opt,
                               rank_list=list(range(stage * DP * TP, (stage + 1) * DP * TP)),
                               tensor_type="bfloat16", tensor_shape=list(shapes[name]))
    per_stage = DP * TP
    return {r: {n: record(n) for n in names if qwen3_stage(n) == r // per_stage} for r in range(per_stage * PP)}


class _Compiled:
    compile_phase = "train"


def strategy_metadata(records):
    """What MindSpore's get_strategy_metadata returns for these records (its own _NetStrategyInfo does the work)."""
    from mindspore.parallel.strategy import _NetStrategyInfo

    def get(network, rank_id=None):
        return _NetStrategyInfo(_Compiled, global_layout={"train": records},
                                local_layout={"train": {}}).get_rank_layout(rank_id)
    return get


def slice_by_layout(full, layout, rank):
    """``rank``'s block of ``full`` under an ms.Layout, cut by MindSpore's own slicer (nested maps expanded)."""
    from mindspore import Tensor
    from mindspore.parallel._tensor import _expand_layout, _load_tensor

    info = layout.to_dict()
    dev = list(info["device_matrix"])
    tensor_map = [list(t) if isinstance(t, (list, tuple)) else t for t in info["tensor_map"]]
    dev, flat_map, flat_shape = _expand_layout(dev, tensor_map, list(full.shape))
    piece = _load_tensor(Tensor(full.reshape(flat_shape)), dev, flat_map, flat_shape,
                         info["rank_list"].index(rank))
    local = list(full.shape)
    for axis, entry in enumerate(tensor_map):
        for d in entry if isinstance(entry, list) else [entry]:
            if d != -1:
                local[axis] //= dev[len(dev) - 1 - d]
    return np.ascontiguousarray(piece.reshape(local))


def set_rank_data(opt, rank, world, weights, layouts):
    """Give a rank's parameters (the optimizer holds the network's too) that rank's blocks of ``weights``."""
    import mindspore as ms

    stage = rank // (DP * TP) if world > 1 else 0
    for p in opt.get_parameters():
        if p.name in OPTIMIZER_SCALARS:
            p.sliced = True
            continue
        name = base_name(p.name)
        if world > 1 and qwen3_stage(name) != stage:
            p.sliced = False                      # another stage's: graph-mode save skips it
            continue
        data = weights[p.name] if world == 1 else slice_by_layout(weights[p.name], layouts[name], rank)
        p.set_data(ms.Tensor(data, dtype=p.dtype), slice_shape=True)
        p.sliced = True
        p.param_info.is_param_init = True


def ckpt2_save(root, world, steps, dedup=False, records=None, save_optimizer=True):
    """Save ``steps`` ({step: weights}) through CheckpointMonitor._save_megatron_ckpt_file_format on ``world``
    simulated ranks (one network, optimizer and callback per rank, as in a job) into ``root``."""
    import mindspore as ms
    import mindformers.checkpoint.layout_adapter as layout_adapter
    from mindformers.core.callback.callback import CheckpointMonitor

    layouts = {}
    if records is not None:
        layout_adapter.get_strategy_metadata = strategy_metadata(records)
        for per_rank in strategy_metadata(records)(None).values():
            for name, (layout, _, _) in per_rank.items():
                layouts.setdefault(name, layout)
    ranks = []
    for rank in range(world):
        RANKS.as_rank(rank, world)
        net, opt = qwen3_train_net()
        monitor = CheckpointMonitor(prefix="qwen3", directory=str(root), use_legacy_format=False,
                                    save_optimizer=save_optimizer, remove_redundancy=dedup, global_batch_size=8,
                                    keep_checkpoint_max=5)
        ranks.append((net, opt, monitor))
    for step, weights in steps.items():
        cb_params = []
        for rank, (net, opt, _) in enumerate(ranks):
            set_rank_data(opt, rank, world, weights, layouts)
            opt.global_step.set_data(ms.Tensor([step], ms.int32))
            outputs = (ms.Tensor(2.5, ms.float32), ms.Tensor(False), ms.Tensor(LOSS_SCALE, ms.float32))
            cb_params.append(SimpleNamespace(cur_step_num=step, cur_epoch_num=EPOCH, batch_num=STEP,
                                             network=SimpleNamespace(network=net, optimizer=opt),
                                             net_outputs=outputs))
        RANKS.as_rank(0, 1)
        RANKS.run(world, lambda r: ranks[r][2]._save_megatron_ckpt_file_format(cb_params[r]))


def mindformers_load(root, weights, step=STEP, optimizer=True):
    """MindFormers' own load_checkpoint of ``root`` into a fresh single-card network (+ optimizer); checked against
    the source weights; returns {name: Parameter} of every model tensor (and optimizer state)."""
    from mindformers.checkpoint.checkpoint import load_checkpoint

    RANKS.as_rank(0, 1)
    net, opt = qwen3_train_net()
    load_checkpoint(str(root), net, opt if optimizer else None)
    cell = opt if optimizer else net
    params = {p.name: p for p in cell.get_parameters() if p.name in weights}
    want_net, want_opt = qwen3_train_net()
    load_weights(want_net, want_opt, weights)
    for p in (want_opt if optimizer else want_net).get_parameters():
        if p.name in weights:
            same(params[p.name], p, f"{root}: {p.name}")
    if optimizer and int(opt.global_step.asnumpy()[0]) != step:
        raise SystemExit(f"{root}: MindFormers restored global_step {opt.global_step.asnumpy()}")
    return params


def ckpt2_cases(work, weights):
    half = {name: a * np.float32(0.5) for name, a in weights.items()}
    names = [p.name for p in qwen3_train_net()[0].get_parameters()]
    shapes = {name: weights[name].shape for name in names}
    made_by = "mindformers.checkpoint.checkpoint.load_checkpoint (MindFormers 2.1.0)"

    root = work / "ckpt2_single"
    ckpt2_save(root, 1, {5: half, STEP: weights})
    expected = describe(mindformers_load(root, weights))
    for name in ("latest_checkpointed_iteration.txt",):
        assert (root / name).read_text() == str(STEP)
    # iteration 5 alone (MindFormers loads the tracker's iteration; point it at a copy holding only step 5)
    old = work / "ckpt2_single_5"
    shutil.copytree(root / "iteration_00000005", old / "iteration_00000005")
    (old / "latest_checkpointed_iteration.txt").write_text("5")
    expected_5 = describe(mindformers_load(old, half, step=5))
    copy_out(root, OUT / "ckpt2_single")
    write_expected(OUT / "ckpt2_single" / "expected.json", made_by, "single card, iteration 10 (the tracker's)",
                   expected)
    write_expected(OUT / "ckpt2_single" / "expected_5.json", made_by, "single card, iteration 5 (weights x0.5)",
                   expected_5)

    records = qwen3_records(names, shapes)
    for case, dedup in (("ckpt2_tp2pp2dp2", False), ("ckpt2_tp2pp2dp2_dedup", True)):
        root = work / case
        # the de-duplicated job saves no optimizer (keeps the fixture small; the normal one has it)
        ckpt2_save(root, DP * TP * PP, {STEP: weights}, dedup=dedup, records=records, save_optimizer=not dedup)
        expected = describe(mindformers_load(root, weights, optimizer=not dedup))
        copy_out(root, OUT / case)
        note = ("8 ranks: pipeline 2 x dp 2 x tp 2, optimizer parallel over dp, "
                + ("remove_redundancy=True, no optimizer saved" if dedup else "normal save with the optimizer"))
        write_expected(OUT / case / "expected.json", made_by, note, expected)
    return expected


def qwen3_reference(work, weights):
    """The unsharded reference: the weights in a fresh network, mindspore.save_checkpoint'ed; HF config.json."""
    from gen_llama_fixtures import save_ckpt

    net, opt = qwen3_train_net()
    load_weights(net, opt, weights)
    folder = OUT / "qwen3"
    folder.mkdir(parents=True, exist_ok=True)
    save_ckpt(net, folder / "model.ckpt", work)
    q = QWEN3
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": q["hidden_size"],
              "intermediate_size": q["intermediate_size"], "num_hidden_layers": q["num_hidden_layers"],
              "num_attention_heads": q["num_attention_heads"], "num_key_value_heads": q["num_key_value_heads"],
              "head_dim": q["head_dim"], "hidden_act": "silu", "max_position_embeddings": q["max_position_embeddings"],
              "rms_norm_eps": q["rms_norm_eps"], "rope_theta": q["rope_theta"], "tie_word_embeddings": False,
              "vocab_size": q["vocab_size"], "bos_token_id": None, "eos_token_id": 400, "pad_token_id": 400,
              "attention_bias": False, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Legacy rank layout (rank_N/ + strategy)
# ---------------------------------------------------------------------------------------------------------------

def legacy_save(root, world, stages, arrays, dtypes, layouts, stage_of, dedup, steps, prefix, build):
    """Save through CheckpointMonitor.save_checkpoint (the legacy path) on ``world`` simulated ranks.

    ``layouts``: {name: (dev, tensor_map, opt_step, opt_size)} as gen_dist_fixtures takes them; each rank's
    network gets the matching ``parameter_layout_dict`` and its own shards."""
    import mindspore as ms
    from gen_dist_fixtures import shard_for_rank
    from mindformers.core.callback.callback import CheckpointMonitor

    per_stage = world // stages
    nets = [None] * world
    monitors = []
    for step, scale in steps.items():
        cb_params = []
        for rank in range(world):
            RANKS.as_rank(rank, world)
            net = nets[rank] = nets[rank] or build()
            stage, local = divmod(rank, per_stage)
            layout_dict = {}
            for p in net.get_parameters():
                full = arrays[p.name] * np.array(scale, arrays[p.name].dtype)
                if p.name in layouts and stage_of.get(p.name, 0) != stage:
                    p.sliced = False
                    continue
                if p.name in layouts:
                    dev, tensor_map, opt_step, opt_size = layouts[p.name]
                    data = shard_for_rank(full, layouts[p.name], local)
                    group = ""
                    if opt_size:
                        group = f"opt_{p.name}"
                        replicas = int(np.prod(dev)) // int(np.prod([dev[len(dev) - 1 - d] for d in tensor_map
                                                                     if d != -1] or [1]))
                        RANKS.groups[group] = replicas if opt_size == -1 else opt_size
                    layout_dict[p.name] = [list(dev), list(tensor_map), list(data.shape), 0, True, group]
                else:
                    data = full
                p.set_data(ms.Tensor(data, dtype=dtypes[p.name]), slice_shape=True)
                p.sliced = True
                p.param_info.is_param_init = world > 1
            net.parameter_layout_dict = layout_dict
        # the parallel context is what makes the callback de-duplicate (networks are built before: mcore models
        # would initialise communication under it)
        ms.set_auto_parallel_context(parallel_mode="semi_auto_parallel" if world > 1 else "stand_alone",
                                     pipeline_stages=stages)
        for rank, net in enumerate(nets):
            RANKS.as_rank(rank, world)
            if len(monitors) == rank:              # one callback per rank for the whole run, as in a job
                monitors.append(CheckpointMonitor(prefix=prefix, directory=str(root), remove_redundancy=dedup,
                                                  checkpoint_format="safetensors", saved_network=net,
                                                  keep_checkpoint_max=5, global_batch_size=8))
            optimizer = SimpleNamespace(global_step=ms.Tensor([step], ms.int32))
            cb_params.append(SimpleNamespace(cur_step_num=step, cur_epoch_num=EPOCH, batch_num=STEP,
                                             optimizer=optimizer, train_network=net, network=net,
                                             net_outputs=(ms.Tensor(2.5), ms.Tensor(False),
                                                          ms.Tensor(LOSS_SCALE, ms.float32))))
        RANKS.as_rank(0, 1)
        try:
            RANKS.run(world, lambda r: monitors[r]._save_ckpt(cb_params[r], force_to_save=True))
        finally:
            ms.set_auto_parallel_context(parallel_mode="stand_alone", pipeline_stages=1)


def legacy_strategies(folder, world, stages, layouts, stage_of):
    """ckpt_strategy_rank_N.ckpt per rank, each with its stage's layouts (gen_dist_fixtures.write_strategy)."""
    from gen_dist_fixtures import write_strategy

    per_stage = world // stages
    for rank in range(world):
        stage = rank // per_stage
        write_strategy(folder / f"ckpt_strategy_rank_{rank}.ckpt",
                       {n: lay for n, lay in layouts.items() if stage_of.get(n, 0) == stage}, stage)


def mindspore_unified(checkpoint_dir, strategy_dir, work, tag, dedup, stages, suffix):
    """MindSpore's own merge of a legacy safetensors rank tree (unified_safetensors), as {name: Tensor}."""
    import mindspore as ms

    strategy = strategy_dir / "ckpt_strategy_rank_0.ckpt"
    if stages > 1:
        strategy = work / f"{tag}_merged_strategy.ckpt"
        ms.merge_pipeline_strategys(str(strategy_dir), str(strategy))
    dst = work / f"{tag}_unified"
    if dst.exists():
        shutil.rmtree(dst)
    ms.parallel.unified_safetensors(str(checkpoint_dir), str(strategy), str(dst), merge_with_redundancy=not dedup,
                                    file_suffix=suffix, max_process_num=1)
    out = {}
    for f in sorted(dst.rglob("*.safetensors")):
        out.update(ms.load_checkpoint(str(f), format="safetensors"))
    return out


def redundancy_rule(layouts, stage_of, world, stages):
    """{name: sorted ranks} that MindSpore's rule picks to save each parameter in a remove_redundancy legacy save:
    get_parameter_redundancy on the network's layouts (replica groups; optimizer-sharded groups split
    ``group[i::size]``) and remove_param_redundancy (each group's parameters, in name order, dealt round-robin)."""
    from mindspore.train._utils import get_parameter_redundancy, remove_param_redundancy

    per_stage = world // stages
    holders = {}
    for stage in range(stages):
        layout_dict = {}
        for name, (dev, tensor_map, _, opt_size) in layouts.items():
            if stage_of.get(name, 0) == stage:
                group = f"opt_{name}" if opt_size else ""
                layout_dict[name] = [list(dev), list(tensor_map), [], 0, True, group]
        chosen = remove_param_redundancy(get_parameter_redundancy(layout_dict, stage * per_stage))
        for rank, names in chosen.items():
            for name in names:
                holders.setdefault(name, []).append(rank)
    return {name: sorted(ranks) for name, ranks in sorted(holders.items())}


def legacy_cases(work, weights):
    import mindspore as ms

    from gen_dist_fixtures import tp2x2_layouts
    from gen_qwen_fixtures import net_arrays

    made_by = f"mindspore.parallel.unified_safetensors (MindSpore {ms.__version__})"

    # Qwen3 on 4 ranks (dp 2 x tp 2) and on one card ----------------------------------------------------------------
    net, opt = qwen3_train_net()
    load_weights(net, opt, weights)
    arrays = {n: np.asarray(weights[n], np.float32) for n in net_arrays(net)}
    dtypes = {p.name: p.dtype for p in net.get_parameters()}
    dp_tp = [2, 2]

    def qwen3_layout(name):
        if name.endswith(("linear_qkv.weight", "linear_fc1.weight", "output_layer.weight", "word_embeddings.weight")):
            return (dp_tp, [0, -1], 2, 2)
        if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
            return (dp_tp, [-1, 0], 2, 2)
        if name.endswith("final_layernorm.weight"):
            return (dp_tp, [-1], 1, 4)
        return (dp_tp, [-1], 0, 0)
    layouts = {name: qwen3_layout(name) for name in arrays}
    root = work / "legacy_qwen3_tp2dp2" / "output"
    legacy_save(root, 4, 1, arrays, dtypes, layouts, {}, False, {STEP: 1.0}, "qwen3", lambda: qwen3_train_net()[0])
    legacy_strategies(root / "strategy", 4, 1, layouts, {})
    merged = mindspore_unified(root / "checkpoint", root / "strategy", work, "legacy_qwen3", False, 1, None)
    check_merged(merged, arrays, dtypes, "legacy_qwen3_tp2dp2")
    copy_out(root, OUT / "legacy_qwen3_tp2dp2")
    write_expected(OUT / "legacy_qwen3_tp2dp2" / "expected.json", made_by,
                   "mcore Qwen3, legacy layout, 4 ranks (dp 2 x tp 2, optimizer-sharded), safetensors",
                   describe({n: merged[n] for n in arrays}))

    root = work / "legacy_qwen3_rank0" / "output"
    legacy_save(root, 1, 1, arrays, dtypes, {}, {}, False, {5: 0.5, STEP: 1.0}, "qwen3", lambda: qwen3_train_net()[0])
    copy_out(root, OUT / "legacy_qwen3_rank0")

    # Llama on 8 ranks, de-duplicated ------------------------------------------------------------------------------
    params = ms.load_checkpoint(str(LLAMA_SOURCE))
    arrays = {n: p.asnumpy() for n, p in params.items()}
    dtypes = {n: p.dtype for n, p in params.items()}
    layouts = tp2x2_layouts()
    layouts = {n: lay for n, lay in layouts.items() if n in arrays}
    stage_of = {n: 0 if n.startswith("model.tok_embeddings") or ".layers.0." in n else 1 for n in layouts}
    root = work / "legacy_llama_dedup" / "output"
    legacy_save(root, 8, 2, arrays, dtypes, layouts, stage_of, True, {STEP: 1.0}, "llama", llama_net)
    legacy_strategies(root / "strategy", 8, 2, layouts, stage_of)
    merged = mindspore_unified(root / "checkpoint", root / "strategy", work, "legacy_llama", True, 2, None)
    check_merged(merged, arrays, dtypes, "legacy_llama_dedup")
    holders = redundancy_rule(layouts, stage_of, 8, 2)
    check_holders(root / "checkpoint", holders, 8)
    copy_out(root, OUT / "legacy_llama_dedup")
    write_expected(OUT / "legacy_llama_dedup" / "expected.json", made_by,
                   "legacy Llama (llama/bf16), 8 ranks: pipeline 2 x dp 2 x mp 2, remove_redundancy=True",
                   describe({n: merged[n] for n in arrays}), holders=holders)


def llama_net():
    """The legacy LlamaForCausalLM of llama/bf16 (built with MindFormers' context switched to legacy models)."""
    import yaml
    from gen_llama_fixtures import build_net
    from mindformers.core.context.build_context import MFContextOperator

    config = yaml.safe_load((LLAMA_SOURCE.parent / "config.yaml").read_text())
    context = MFContextOperator.get_mf_ctx_instance()
    context.use_legacy = True
    try:
        return build_net(config["model"]["model_config"])
    finally:
        context.use_legacy = False


def check_merged(merged, arrays, dtypes, what):
    import mindspore as ms

    for name, full in arrays.items():
        if name not in merged:
            raise SystemExit(f"{what}: MindSpore's merge lost {name}")
        same(merged[name], ms.Tensor(full, dtype=dtypes[name]), f"{what}: {name}")


def check_holders(checkpoint_dir, holders, world):
    """The files of a de-duplicated save hold exactly what the rule says (and every rank the unsharded extras)."""
    from safetensors import safe_open

    held = {}
    for rank in range(world):
        for f in (checkpoint_dir / f"rank_{rank}").glob("*.safetensors"):
            with safe_open(str(f), framework="np") as st:
                for name in st.keys():
                    held.setdefault(name, []).append(rank)
    for name, ranks in holders.items():
        if sorted(held.get(name, [])) != ranks:
            raise SystemExit(f"remove_redundancy rule predicts {name} on ranks {ranks}, files hold it on "
                             f"{sorted(held.get(name, []))}")


# ---------------------------------------------------------------------------------------------------------------

README = """# Checkpoints written by MindFormers 2.1.0's own save code

Made by `tests/gen_mfsave_fixtures.py` (do not edit by hand; its docstring describes how, and what is real and what
is simulated). `expected*.json` = sha256 of every tensor the real loader (MindFormers' `load_checkpoint` for
Checkpoint 2.0, MindSpore's `unified_safetensors` for the legacy rank trees) returned; the generator checked them
equal to the source tensors.

| case | layout | what |
|---|---|---|
| `qwen3/` | one file | the unsharded tiny mcore Qwen3 (bf16) every Qwen3 case holds, + config.json |
| `ckpt2_single/` | Checkpoint 2.0 | single card, iterations 5 (weights x0.5) and 10, optimizer, no metadata.json |
| `ckpt2_tp2pp2dp2/` | Checkpoint 2.0 | 8 ranks: pp 2 x dp 2 x tp 2, optimizer parallel, normal save |
| `ckpt2_tp2pp2dp2_dedup/` | Checkpoint 2.0 | the same job, `remove_redundancy=True` |
| `legacy_qwen3_tp2dp2/` | rank_N/ + strategy | Qwen3 on 4 ranks (dp 2 x tp 2), safetensors |
| `legacy_qwen3_rank0/` | rank_0/ only | single card, steps 5 and 10, no strategy |
| `legacy_llama_dedup/` | rank_N/ + strategy | `llama/bf16` on 8 ranks (pp 2 x dp 2 x mp 2), `remove_redundancy=True` |
"""


def main():
    from gen_llama_fixtures import setup_environment

    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_mfsave_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            from mindformers.core.context.build_context import build_context

            build_context({"context": {"mode": 0, "device_target": "CPU"}, "use_legacy": False,
                           "run_mode": "train", "parallel": {}})
            install_rank_stubs()
            if OUT.exists():
                shutil.rmtree(OUT)
            OUT.mkdir(parents=True)
            weights = qwen3_weights()
            qwen3_reference(work, weights)
            ckpt2_cases(work, weights)
            legacy_cases(work, weights)
        finally:
            os.chdir(cwd)
    (OUT / "README.md").write_text(README)
    total = 0
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            total += f.stat().st_size
            digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            print(f"  {f.relative_to(OUT)}  {f.stat().st_size} B  sha256:{digest}")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
