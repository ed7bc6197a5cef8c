"""Generate the tiny mixture-of-experts fixtures in tests/fixtures/{qwen3_moe,mixtral}/.

Like tests/gen_qwen_fixtures.py (read its docstring first): this script runs in the MindSpore + MindFormers venv
and calls itself in a torch + transformers venv for the HF parts (``--hf-worker``):

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_moe_fixtures.py [--hf-python /work/venv-hf/bin/python]

What truth each fixture carries:

* qwen3_moe/train - MindFormers 2.1.0's mcore ``TrainingQwen3MoeForCausalLM`` (2-D experts ``weight1 [E*H, 2F]``,
  ``weight2 [E*F, H]``, grouped QKV), filled by MindFormers' own HF -> MindFormers code
  (``convert_weight_dict``) from the HF per-expert weights and saved by ``mindspore.save_checkpoint``. The mcore
  MoE does not run on CPU (no GroupedMatmul / Swiglu kernels), so the logits are transformers'
  ``Qwen3MoeForCausalLM`` with the same weights.
* qwen3_moe/infer - ``InferenceQwen3MoeForCausalLM`` (RUN_MODE=predict), which loads the HF safetensors directory
  itself (``load_weights``) and keeps 3-D experts ``[E, H, 2F]`` / ``[E, F, H]`` and a contiguous ``[Q; K; V]``,
  saved in bfloat16 (as the shipped predict yaml's params_dtype). Logits: transformers on the same bf16 weights.
* mixtral/bmm_scaled - the legacy ``LlamaForCausalLM`` with a ``moe_config`` (MoEV2, bmm: ``ffn.w1/w2/w3.weight``
  ``[E, out, in]``, ``router.dense.weight``), ``routed_scaling_factor 1.5``, run on CPU by MindFormers itself: its
  logits are the truth (the expert BatchMatMul is given its weight with a leading batch axis: the CPU kernel does
  not broadcast). ``capacity_factor`` = the expert count, so no token is dropped. Cross-check: transformers'
  ``MixtralForCausalLM`` with the down projections scaled by 1.5 (what the routing scale means) agrees.
* mixtral/gmm - the legacy ``LlamaForCausalLM`` with ``use_gmm: True`` (MoEV3: ``ffn.w1 [E, H, 2F]``,
  ``ffn.w2 [E, F, H]`` without ``.weight``, ``router_dense.weight``; built with its communication-group calls
  stubbed, it cannot run on CPU); parameters filled as MoEV3 reads them (``x @ w1[e]`` then Swiglu on the last
  axis: ``[gate^T | up^T]``; moev3.py), logits from transformers' ``MixtralForCausalLM``.

Deterministic: fixed seeds; tokenizers: the Qwen BPE tokenizer of tests/fixtures/qwen2/tokenizer (qwen3_moe) and
the SentencePiece tokenizer of tests/fixtures/llama/tokenizer (mixtral), both made by the earlier generators.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
sys.path.insert(0, str(HERE))

SEQ_LENGTH = 32
CANDIDATES = 24          # seeds tried per fixture (the most decisive routing wins)
QWEN_TOKENIZER = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"
LLAMA_TOKENIZER = FIXTURES / "llama" / "tokenizer" / "tokenizer.model"

# H hidden, nh/nkv heads, hd head dim, E experts, k per token, F expert ffn, rows = vocab rows
QWEN3_MOE = dict(seed=4001, H=64, nh=4, nkv=2, hd=24, E=8, k=2, F=24, layers=2, rows=448, theta=1000000.0,
                 eps=1e-6, max_pos=128)
MIXTRAL = {
    "mixtral/bmm_scaled": dict(seed=4101, H=64, nh=4, nkv=2, E=4, k=2, F=48, layers=2, rows=480, theta=10000.0,
                               eps=1e-5, max_pos=128, gmm=False, scale=1.5),
    "mixtral/gmm": dict(seed=4102, H=64, nh=4, nkv=2, E=4, k=2, F=40, layers=2, rows=480, theta=1000000.0,
                        eps=1e-5, max_pos=128, gmm=True, scale=1.0),
}


# ---------------------------------------------------------------------------------------------------------------
# weights (HF "classic" per-expert names, as save_pretrained writes them and MindFormers' converters read them)
# ---------------------------------------------------------------------------------------------------------------

class WeightMaker:
    """Random weights with the gains that give trained-like logits (std about 2) and decisive routing."""

    def __init__(self, seed):
        self.rs = np.random.RandomState(seed)

    def lin(self, o, i, gain=0.9):
        return self.rs.normal(0.0, gain / np.sqrt(i), size=(o, i))

    def norm(self, d):
        return 1.0 + 0.2 * self.rs.standard_normal(d)

    def attention(self, w, p, H, nh, nkv, hd):
        w[p + "input_layernorm.weight"] = self.norm(H)
        w[p + "self_attn.q_proj.weight"] = self.lin(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = self.lin(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = self.lin(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = self.lin(H, nh * hd)
        w[p + "post_attention_layernorm.weight"] = self.norm(H)

    def experts(self, w, router, expert, E, F, H, names):
        w[router] = self.lin(E, H, 3.0)
        for e in range(E):
            for name, (o, i) in zip(names, ((F, H), (F, H), (H, F))):
                w[expert.format(e=e, name=name)] = self.lin(o, i, 1.2)

    def ends(self, w, V, H):
        w["model.embed_tokens.weight"] = self.rs.standard_normal((V, H))
        w["model.norm.weight"] = self.norm(H)
        w["lm_head.weight"] = self.rs.normal(0.0, 2.0 / np.sqrt(H), size=(V, H))
        return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in w.items()}


def qwen3_moe_weights(v, seed_offset=0):
    m, w = WeightMaker(v["seed"] + 97 * seed_offset), {}
    H, hd = v["H"], v["hd"]
    for i in range(v["layers"]):
        p = f"model.layers.{i}."
        m.attention(w, p, H, v["nh"], v["nkv"], hd)
        w[p + "self_attn.q_norm.weight"] = m.norm(hd)
        w[p + "self_attn.k_norm.weight"] = m.norm(hd)
        m.experts(w, p + "mlp.gate.weight", p + "mlp.experts.{e}.{name}.weight", v["E"], v["F"], H,
                  ("gate_proj", "up_proj", "down_proj"))
    return m.ends(w, v["rows"], H)


def mixtral_weights(v, seed_offset=0):
    m, w = WeightMaker(v["seed"] + 97 * seed_offset), {}
    H = v["H"]
    for i in range(v["layers"]):
        p = f"model.layers.{i}."
        m.attention(w, p, H, v["nh"], v["nkv"], H // v["nh"])
        m.experts(w, p + "block_sparse_moe.gate.weight", p + "block_sparse_moe.experts.{e}.{name}.weight", v["E"],
                  v["F"], H, ("w1", "w3", "w2"))
    return m.ends(w, v["rows"], H)


def round_bf16(w):
    """float32 values exactly representable in bfloat16 (round to nearest even), so a bf16 save loses nothing."""
    out = {}
    for k, a in w.items():
        bits = a.view(np.uint32).astype(np.uint64)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
        out[k] = bits.view(np.float32)
    return out


# ---------------------------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------------------------

def qwen3_moe_hf_config(v, pad, eos):
    return {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": v["H"],
        "intermediate_size": 3 * v["F"], "num_hidden_layers": v["layers"], "num_attention_heads": v["nh"],
        "num_key_value_heads": v["nkv"], "head_dim": v["hd"], "hidden_act": "silu",
        "max_position_embeddings": v["max_pos"], "rms_norm_eps": v["eps"], "rope_theta": v["theta"],
        "tie_word_embeddings": False, "vocab_size": v["rows"], "moe_intermediate_size": v["F"],
        "num_experts": v["E"], "num_experts_per_tok": v["k"], "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
        "bos_token_id": None, "eos_token_id": eos, "pad_token_id": pad, "attention_dropout": 0.0,
        "router_aux_loss_coef": 0.001, "output_router_logits": False, "torch_dtype": "float32",
    }


def qwen3_moe_mf_kwargs(v, pad, dtype="float32"):
    return dict(vocab_size=v["rows"], hidden_size=v["H"], intermediate_size=3 * v["F"],
                num_hidden_layers=v["layers"], num_attention_heads=v["nh"], num_key_value_heads=v["nkv"],
                head_dim=v["hd"], max_position_embeddings=v["max_pos"], rms_norm_eps=v["eps"],
                rope_theta=v["theta"], tie_word_embeddings=False, seq_length=SEQ_LENGTH, pad_token_id=pad,
                moe_intermediate_size=v["F"], num_experts=v["E"], num_experts_per_tok=v["k"],
                norm_topk_prob=True, moe_grouped_gemm=True, params_dtype=dtype, compute_dtype=dtype,
                layernorm_compute_dtype="float32")


def mixtral_hf_config(v, scale_down=False):
    return {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": v["H"],
        "intermediate_size": v["F"], "num_hidden_layers": v["layers"], "num_attention_heads": v["nh"],
        "num_key_value_heads": v["nkv"], "hidden_act": "silu", "max_position_embeddings": v["max_pos"],
        "rms_norm_eps": v["eps"], "rope_theta": v["theta"], "tie_word_embeddings": False, "vocab_size": v["rows"],
        "num_local_experts": v["E"], "num_experts_per_tok": v["k"], "router_jitter_noise": 0.0,
        "sliding_window": None, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32",
    }


def mixtral_mf_kwargs(v):
    return dict(type="LlamaConfig", batch_size=1, seq_length=SEQ_LENGTH, hidden_size=v["H"], num_layers=v["layers"],
                num_heads=v["nh"], n_kv_heads=v["nkv"], vocab_size=v["rows"], intermediate_size=v["F"],
                rms_norm_eps=v["eps"], theta=v["theta"], max_position_embedding=v["max_pos"], bos_token_id=1,
                eos_token_id=2, pad_token_id=0, ignore_token_id=-100, qkv_concat=False, use_past=False,
                use_flash_attention=False, fused_rms_norm=False, use_rope_slice=True, compute_dtype="float32",
                layernorm_compute_type="float32", softmax_compute_type="float32", rotary_dtype="float32",
                param_init_type="float32", checkpoint_name_or_path="")


def mixtral_moe_config(v):
    return dict(expert_num=v["E"], num_experts_chosen=v["k"], routing_policy="TopkRouterV2",
                capacity_factor=float(v["E"]), norm_topk_prob=True, routed_scaling_factor=v["scale"],
                use_gmm=v["gmm"], router_dense_type="float32")


# ---------------------------------------------------------------------------------------------------------------
# HF worker (torch venv): logits of a saved HF directory
# ---------------------------------------------------------------------------------------------------------------

def hf_worker(job_path: Path) -> None:
    import torch
    import transformers

    job = json.loads(job_path.read_text())
    for task in job["tasks"]:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            task["dir"], dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        bad = {k: v for k, v in info.items() if v and k != "error_msgs" or (k == "error_msgs" and v)}
        if bad:
            raise RuntimeError(f"{task['name']}: loading {task['dir']}: {bad}")
        model.eval()
        margins = []

        def margin(module, args, _output):
            # how far each token is from choosing other experts: the gap between its k-th and (k+1)-th router
            # score, in units of the scores' spread (routing flips under quantization noise when this is small);
            # DeepSeek-style routers choose by sigmoid score plus a correction bias
            scores = torch.nn.functional.linear(args[0].reshape(-1, args[0].shape[-1]).float(), module.weight.float())
            if hasattr(module, "e_score_correction_bias"):
                scores = scores.sigmoid() + module.e_score_correction_bias
            k, spread = task["k"], scores.std()
            groups = getattr(module, "num_group", 1) or 1
            if groups > 1:      # group-limited: the chosen groups must win clearly too (top-2 sum per group)
                per_group = scores.view(len(scores), groups, -1)
                group_scores = per_group.topk(2, dim=-1).values.sum(-1)
                top_groups = torch.sort(group_scores, dim=-1, descending=True).values
                used = module.topk_group
                margins.append(float(((top_groups[:, used - 1] - top_groups[:, used]) / spread).min()))
                mask = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(used, dim=-1).indices, 1)
                scores = scores.masked_fill(~mask.bool().repeat_interleave(per_group.shape[-1], dim=-1), -1e9)
            top = torch.sort(scores, dim=-1, descending=True).values
            margins.append(float(((top[:, k - 1] - top[:, k]) / spread).min()))

        for module in model.modules():
            if type(module).__name__.lower().endswith("topkrouter"):
                module.register_forward_hook(margin)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([task["ids"]])).logits[0].to(torch.float32).numpy()
        np.save(task["logits"], logits)
        Path(task["logits"]).with_suffix(".margin").write_text(str(min(margins)))
        print(f"hf {task['name']}: {type(model).__name__}, logits {logits.shape}, routing margin {min(margins):.3f}",
              flush=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


def run_hf(tasks, work, hf_python):
    job = work / "hf_job.json"
    job.write_text(json.dumps({"tasks": tasks}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOG_MF", "LOCAL_DEFAULT", "RUN_MODE"))}
    subprocess.run([hf_python, str(Path(__file__).resolve()), "--hf-worker", str(job)], check=True, env=env,
                   cwd=work)


def write_hf_dir(folder: Path, config: dict, weights: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# MindFormers (MindSpore venv)
# ---------------------------------------------------------------------------------------------------------------

def mcore_context(run_mode):
    import mindspore as ms
    from mindformers.core.context.build_context import build_context

    build_context({"context": {"mode": 0, "device_target": "CPU"}, "use_legacy": False, "run_mode": run_mode,
                   "parallel": {}, "parallel_config": {}})
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")


def qwen3_moe_train(v, w, pad, dest, work):
    """TrainingQwen3MoeForCausalLM filled by its own convert_weight_dict, saved by mindspore.save_checkpoint."""
    import threading

    from gen_qwen_fixtures import save_net, set_net
    from mindformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
    from mindformers.models.qwen3_moe.modeling_qwen3_moe_train import TrainingQwen3MoeForCausalLM

    config = Qwen3MoeConfig(**qwen3_moe_mf_kwargs(v, pad))
    net = TrainingQwen3MoeForCausalLM(config)
    converted = net.convert_weight_dict(dict(w), model_config=config, qkv_dict={}, condition=threading.Condition())
    converted = {k: (a.asnumpy() if hasattr(a, "asnumpy") else np.asarray(a)) for k, a in converted.items()}
    # the router's aux-loss statistic is a network buffer, not an HF weight
    for p in net.get_parameters():
        if p.name not in converted:
            if not p.name.endswith("mlp.router.fi_accu"):
                raise RuntimeError(f"convert_weight_dict gave no {p.name}")
            converted[p.name] = np.zeros(p.shape, np.float32)
    set_net(net, converted)
    return save_net(net, dest, work)


def qwen3_moe_infer(v, hf_dir, pad, dest, work):
    """InferenceQwen3MoeForCausalLM loading the HF directory itself, saved in bfloat16."""
    from gen_llama_fixtures import save_ckpt
    from mindformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig
    from mindformers.models.qwen3_moe.modeling_qwen3_moe_infer import InferenceQwen3MoeForCausalLM

    net = InferenceQwen3MoeForCausalLM(Qwen3MoeConfig(**qwen3_moe_mf_kwargs(v, pad, "bfloat16")))
    net.load_weights(str(hf_dir))
    save_ckpt(net, dest, work)
    return [(p.name, list(p.shape), str(p.dtype)) for p in net.get_parameters()]


def patch_expert_bmm(net):
    """MoEV2's expert Linear multiplies x [1, E, N, H] by its weight [E, out, H]; the CPU BatchMatMul does not
    broadcast, so give it the weight with the leading batch axis (the same product)."""
    from mindspore import ops
    from mindformers.modules.layers import Linear

    class BroadcastBMM:
        def __init__(self, transpose_b):
            self.op = ops.BatchMatMul(transpose_b=transpose_b)

        def __call__(self, x, w):
            return self.op(x, w.expand_dims(0) if x.ndim == w.ndim + 1 else w)

    patched = 0
    for _, cell in net.cells_and_names():
        if isinstance(cell, Linear) and cell.expert_flag and not cell.use_gmm:
            cell.matmul = BroadcastBMM(cell.transpose_b)
            patched += 1
    return patched


def mixtral_net(v):
    import mindformers.modules.transformer.moev3 as moev3
    from mindformers.models.llama import LlamaConfig, LlamaForCausalLM
    from mindformers.modules.transformer.moe import MoEConfig

    if v["gmm"]:     # MoEV3 asks for expert-parallel communication groups even on one device
        moev3.get_rank = lambda *a, **k: 0
        moev3.create_group = lambda *a, **k: None
    kw = {k: a for k, a in mixtral_mf_kwargs(v).items() if k != "type"}
    net = LlamaForCausalLM(LlamaConfig(**kw, moe_config=MoEConfig(**mixtral_moe_config(v))))
    net.set_train(False)
    return net


def mixtral_params(v, w):
    """HF Mixtral -> MindFormers legacy names (research/mixtral/convert_weight.py's renames; experts stacked in
    expert order), and for MoEV3 the [gate^T | up^T] / down^T layout it multiplies with."""
    E = v["E"]
    out = {"model.tok_embeddings.embedding_weight": w["model.embed_tokens.weight"],
           "model.norm_out.weight": w["model.norm.weight"], "lm_head.weight": w["lm_head.weight"]}
    for i in range(v["layers"]):
        s, m = f"model.layers.{i}.", f"model.layers.{i}."
        out[m + "attention_norm.weight"] = w[s + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = w[s + "post_attention_layernorm.weight"]
        for a, b in zip("qkvo", "qkvo"):
            out[m + f"attention.w{a}.weight"] = w[s + f"self_attn.{b}_proj.weight"]
        gate = np.stack([w[s + f"block_sparse_moe.experts.{e}.w1.weight"] for e in range(E)])
        up = np.stack([w[s + f"block_sparse_moe.experts.{e}.w3.weight"] for e in range(E)])
        down = np.stack([w[s + f"block_sparse_moe.experts.{e}.w2.weight"] for e in range(E)])
        router = w[s + "block_sparse_moe.gate.weight"]
        if v["gmm"]:
            out[m + "feed_forward.ffn.w1"] = np.concatenate([gate.transpose(0, 2, 1), up.transpose(0, 2, 1)], axis=2)
            out[m + "feed_forward.ffn.w2"] = down.transpose(0, 2, 1)
            out[m + "feed_forward.router_dense.weight"] = router
        else:
            out[m + "feed_forward.ffn.w1.weight"] = gate
            out[m + "feed_forward.ffn.w3.weight"] = up
            out[m + "feed_forward.ffn.w2.weight"] = down
            out[m + "feed_forward.router.dense.weight"] = router
    return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in out.items()}


def mixtral_mf_logits(net, ids):
    import mindspore as ms

    if patch_expert_bmm(net) != 3 * len([1 for p in net.get_parameters() if p.name.endswith("ffn.w1.weight")]):
        raise RuntimeError("expected three expert Linear cells per MoE layer")
    padded = np.zeros((1, SEQ_LENGTH), dtype=np.int32)       # pad_token_id 0 (<unk>), masked out
    padded[0, :len(ids)] = ids
    out = net(ms.Tensor(padded, ms.int32))
    if not np.array_equal(out[1].asnumpy(), padded):
        raise RuntimeError("LlamaForCausalLM altered the input ids (training mode?)")
    return out[0].asnumpy().astype(np.float32).reshape(SEQ_LENGTH, -1)[:len(ids)]


# ---------------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------------

def generate(out: Path, work: Path, hf_python: str) -> dict:
    """HF directories and logits first (torch venv), then one MindSpore process per network family: the legacy
    (PyNative) and mcore training / inference (graph mode, RUN_MODE) contexts do not mix in one process."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from gen_llama_fixtures import TEXT

    qtok = Tokenizer.from_file(str(QWEN_TOKENIZER))
    qids = qtok.encode(TEXT).ids
    qpad = qtok.token_to_id("<|endoftext|>")
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA_TOKENIZER))
    mids = [1] + sp.encode(TEXT)

    # Each fixture's weights come from the seed (of CANDIDATES tried) whose routing is the most decisive, so that
    # the quantized conversions do not flip a token's top-k experts (which changes its logits wholesale).
    v = QWEN3_MOE
    hf_cfg = qwen3_moe_hf_config(v, qpad, qpad)
    makers = {"qwen3_moe/train": (lambda seed: qwen3_moe_weights(v, seed), hf_cfg, qids, v["k"]),
              "qwen3_moe/infer": (lambda seed: round_bf16(qwen3_moe_weights(v, seed)), hf_cfg, qids, v["k"])}
    for name, mv in MIXTRAL.items():
        makers[name] = (lambda seed, mv=mv: mixtral_weights(mv, seed), mixtral_hf_config(mv), mids, mv["k"])
    tasks = []
    for name, (make, config, ids, k) in makers.items():
        for seed in range(CANDIDATES):
            stem = f"{name.replace('/', '_')}_{seed}"
            w = make(seed)
            np.savez(work / f"{stem}.npz", **w)
            scale = MIXTRAL.get(name, {}).get("scale", 1.0)
            if scale != 1.0:   # the routing scale multiplies every expert's output: the same as scaling w2
                w = {key: a * np.float32(scale) if key.endswith(".w2.weight") else a for key, a in w.items()}
            write_hf_dir(work / f"{stem}_hf", config, w)
            tasks.append(dict(name=f"{name} seed {seed}", dir=str(work / f"{stem}_hf"), ids=ids, k=k,
                              logits=str(work / f"{stem}.npy")))
    run_hf(tasks, work, hf_python)
    chosen = {}
    for name in makers:
        stems = [f"{name.replace('/', '_')}_{seed}" for seed in range(CANDIDATES)]
        best = max(stems, key=lambda st: float((work / f"{st}.margin").read_text()))
        chosen[name] = dict(stem=best, margin=float((work / f"{best}.margin").read_text()))
        for suffix in (".npz", ".npy"):
            shutil.copyfile(work / f"{best}{suffix}", work / f"{name.replace('/', '_')}{suffix}")
        shutil.copytree(work / f"{best}_hf", work / f"{name.replace('/', '_')}_hf")

    job = {"out": str(out), "qids": qids, "qpad": qpad, "mids": mids, "text": TEXT, "hf_config": hf_cfg,
           "chosen": chosen}
    (work / "mf_job.json").write_text(json.dumps(job))
    report = {}
    for part in ("mixtral", "qwen3_moe_train", "qwen3_moe_infer"):
        env = {k: a for k, a in os.environ.items() if k != "RUN_MODE"}
        if part == "qwen3_moe_infer":
            env["RUN_MODE"] = "predict"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mf-part", part, "--work", str(work)],
                       check=True, env=env, cwd=work)
        report.update(json.loads((work / f"{part}_report.json").read_text()))
    for name, entry in chosen.items():
        report[name]["routing_margin"] = entry
    return report


def mf_part(part: str, work: Path) -> None:
    from gen_llama_fixtures import load_params
    from gen_qwen_fixtures import check_logits, save_net, write_json, write_yaml

    job = json.loads((work / "mf_job.json").read_text())
    out, report = Path(job["out"]), {}

    def fresh(name):
        vdir = out / name
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        return vdir

    def summary(logits):
        return dict(max_abs_logit=float(np.abs(logits).max()), mean_logit_std=float(np.mean(np.std(logits, -1))),
                    distinct_argmax=len(set(np.argmax(logits, axis=-1).tolist())))

    if part == "mixtral":
        import mindspore as ms

        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
        ms.set_seed(0)
        for name, mv in MIXTRAL.items():
            vdir, stem = fresh(name), name.replace("/", "_")
            hf_logits = np.load(work / f"{stem}.npy")
            net = mixtral_net(mv)
            load_params(net, mixtral_params(mv, dict(np.load(work / f"{stem}.npz"))))
            entry = {"truth": "transformers" if mv["gmm"] else "MindFormers"}
            if mv["gmm"]:
                logits = hf_logits
            else:
                logits = mixtral_mf_logits(net, job["mids"])
                entry["mindformers_vs_transformers"] = check_logits(name, logits, hf_logits.astype(np.float64),
                                                                    job["mids"])
            entry["params"] = save_net(net, vdir / "model.ckpt", work)
            np.save(vdir / "logits.npy", logits)
            write_json(vdir / "tokens.json", {"text": job["text"], "ids": job["mids"]})
            doc = {"seed": 0, "run_mode": "predict", "use_parallel": False, "load_checkpoint": "model.ckpt",
                   "model": {"model_config": mixtral_mf_kwargs(mv), "arch": {"type": "LlamaForCausalLM"}},
                   "moe_config": mixtral_moe_config(mv),
                   "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1}}
            write_yaml(vdir / "config.yaml", doc,
                       f"# ms2gguf test fixture '{name}' - written by tests/gen_moe_fixtures.py; do not edit.\n"
                       "# model_config and moe_config: the arguments the checkpoint's network was built with.\n")
            entry.update(summary(logits))
            report[name] = entry
    else:
        variant = part.rsplit("_", 1)[1]
        name = f"qwen3_moe/{variant}"
        vdir = fresh(name)
        logits = np.load(work / f"qwen3_moe_{variant}.npy")
        if variant == "train":
            mcore_context("train")
            from safetensors.numpy import load_file
            w = load_file(str(work / "qwen3_moe_train_hf" / "model.safetensors"))
            params = qwen3_moe_train(QWEN3_MOE, w, job["qpad"], vdir / "model.ckpt", work)
        else:
            mcore_context("predict")
            params = qwen3_moe_infer(QWEN3_MOE, work / "qwen3_moe_infer_hf", job["qpad"], vdir / "model.ckpt", work)
        np.save(vdir / "logits.npy", logits)
        write_json(vdir / "tokens.json", {"text": job["text"], "ids": job["qids"]})
        write_json(vdir / "config.json", job["hf_config"])
        report[name] = dict(params=params, **summary(logits))
    (work / f"{part}_report.json").write_text(json.dumps(report, default=str))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FIXTURES, help="fixtures root (default: %(default)s)")
    ap.add_argument("--hf-python", default="/work/venv-hf/bin/python",
                    help="python of a venv with torch==2.13.0, transformers, safetensors (default: %(default)s)")
    ap.add_argument("--hf-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mf-part", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help="also write a JSON report")
    args = ap.parse_args(argv)
    if args.hf_worker:
        hf_worker(args.hf_worker)
        return 0
    if args.mf_part:
        from gen_llama_fixtures import setup_environment
        setup_environment(args.work)
        mf_part(args.mf_part, args.work)
        return 0
    from gen_llama_fixtures import setup_environment

    out = args.out.resolve()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_moe_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            report = generate(out, work, args.hf_python)
        finally:
            os.chdir(cwd)
    print(json.dumps({k: {kk: vv for kk, vv in e.items() if kk != "params"} for k, e in report.items()}, indent=1,
                     default=str))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
