"""Make tests/fixtures/quant_tables/*.json: llama-quantize's tensor types per K-quant preset, from the real tool.

ms2gguf's --outtype q4_k_m etc. must choose, for every tensor, the type llama-quantize would (gguf_out/
quant_policy.py). The rules depend only on tensor names, shapes and a few hyperparameters (layers, heads, KV
heads, experts), so the truth is produced once on small synthetic models with realistic names and shapes:

* dense   - MindFormers legacy Llama, 8 layers, GQA 4 (attn_v rules, the use_more_bits pattern)
* mixtral - legacy Llama with 8 experts (llama.cpp's n_expert == 8 rules)
* qwen3moe - mcore Qwen3-MoE with 16 experts (expert tensors, n_expert != 8)
* deepseek2 - mcore DeepSeek-V3 with MLA (attn_k_b / attn_v_b), a leading dense layer, 8 experts and a shared one
  (tests/gen_quant_tables.py needs the gguf package in the llama-cpp-python venv too)

Each is written as a MindSpore checkpoint by our own record writer (values do not matter), converted to F16 by
ms2gguf, then quantized by llama.cpp's ``llama_model_quantize`` for every preset (tests/gen_quant_tables.py, in a
venv with llama-cpp-python built from its sdist: run it with --lcpp-python). A table holds the tensors (name,
numpy shape), the hyperparameters and {preset: {tensor: type}}; tests/test_quant_policy.py compares.

    python tests/gen_policy_tables.py [--lcpp-python /work/venv-lcpp/bin/python] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "quant_tables"
PRESETS = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]
sys.path.insert(0, str(HERE))

MODELS = {
    "dense": dict(family="llama2", layers=8, H=256, nh=8, nkv=2, F=512, V=480, E=0),
    "mixtral": dict(family="mixtral", layers=8, H=256, nh=8, nkv=2, F=256, V=480, E=8, k=2),
    "qwen3moe": dict(family="qwen3_moe", layers=8, H=256, nh=4, nkv=2, hd=64, F=256, V=512, E=16, k=4),
    # MLA dims of DeepSeek-V3 scaled down (attn_k_b rows of 128: a K-quant fallback, as in the 671B model)
    "deepseek2": dict(family="deepseek3", layers=4, dense=1, H=256, nh=2, nkv=2, ql=256, kvl=256, rope=64,
                      nope=128, v=128, F=256, dense_F=512, V=512, E=8, k=2),
}


def legacy_llama(m):
    H, hd = m["H"], m["H"] // m["nh"]
    t = {"model.tok_embeddings.embedding_weight": (m["V"], H), "model.norm_out.weight": (H,),
         "lm_head.weight": (m["V"], H)}
    for i in range(m["layers"]):
        p = f"model.layers.{i}."
        t.update({p + "attention_norm.weight": (H,), p + "ffn_norm.weight": (H,),
                  p + "attention.wq.weight": (m["nh"] * hd, H), p + "attention.wk.weight": (m["nkv"] * hd, H),
                  p + "attention.wv.weight": (m["nkv"] * hd, H), p + "attention.wo.weight": (H, m["nh"] * hd)})
        if m["E"]:
            t.update({p + "feed_forward.router.dense.weight": (m["E"], H),
                      p + "feed_forward.ffn.w1.weight": (m["E"], m["F"], H),
                      p + "feed_forward.ffn.w3.weight": (m["E"], m["F"], H),
                      p + "feed_forward.ffn.w2.weight": (m["E"], H, m["F"])})
        else:
            t.update({p + "feed_forward.w1.weight": (m["F"], H), p + "feed_forward.w3.weight": (m["F"], H),
                      p + "feed_forward.w2.weight": (H, m["F"])})
    return t


def mcore_qwen3_moe(m):
    H, hd, E, F = m["H"], m["hd"], m["E"], m["F"]
    t = {"embedding.word_embeddings.weight": (m["V"], H), "decoder.final_layernorm.weight": (H,),
         "output_layer.weight": (m["V"], H)}
    for i in range(m["layers"]):
        p = f"decoder.layers.{i}."
        t.update({p + "input_layernorm.weight": (H,), p + "pre_mlp_layernorm.weight": (H,),
                  p + "self_attention.linear_qkv.weight": ((m["nh"] + 2 * m["nkv"]) * hd, H),
                  p + "self_attention.q_layernorm.weight": (hd,), p + "self_attention.k_layernorm.weight": (hd,),
                  p + "self_attention.linear_proj.weight": (H, m["nh"] * hd),
                  p + "mlp.router.weight": (E, H), p + "mlp.experts.weight1": (E * H, 2 * F),
                  p + "mlp.experts.weight2": (E * F, H)})
    return t


def mcore_deepseek3(m):
    H, nh, E, F = m["H"], m["nh"], m["E"], m["F"]
    t = {"embedding.word_embeddings.weight": (m["V"], H), "decoder.final_layernorm.weight": (H,),
         "output_layer.weight": (m["V"], H)}
    for i in range(m["layers"]):
        p = f"decoder.layers.{i}.self_attention."
        t.update({f"decoder.layers.{i}.input_layernorm.weight": (H,),
                  f"decoder.layers.{i}.pre_mlp_layernorm.weight": (H,),
                  p + "linear_q_down_proj.weight": (m["ql"], H), p + "q_layernorm.weight": (m["ql"],),
                  p + "linear_q_up_proj.weight": (nh * (m["nope"] + m["rope"]), m["ql"]),
                  p + "linear_kv_down_proj.weight": (m["kvl"] + m["rope"], H), p + "kv_layernorm.weight": (m["kvl"],),
                  p + "linear_kv_up_proj.weight": (nh * (m["nope"] + m["v"]), m["kvl"]),
                  p + "linear_proj.weight": (H, nh * m["v"])})
        p = f"decoder.layers.{i}.mlp."
        if i < m["dense"]:
            t.update({p + "linear_fc1.weight": (2 * m["dense_F"], H), p + "linear_fc2.weight": (H, m["dense_F"])})
        else:
            t.update({p + "router.weight": (E, H), p + "router.expert_bias": (E,),
                      p + "experts.weight1": (E * H, 2 * F), p + "experts.weight2": (E * F, H),
                      p + "shared_experts.linear_fc1.weight": (2 * F, H), p + "shared_experts.linear_fc2.weight": (H, F)})
    return t


def config_of(name, m):
    if m["family"] == "deepseek3":
        return "config.json", json.dumps({
            "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": m["H"], "intermediate_size": m["dense_F"],
            "moe_intermediate_size": m["F"], "num_hidden_layers": m["layers"], "num_attention_heads": m["nh"],
            "n_shared_experts": 1, "n_routed_experts": m["E"], "kv_lora_rank": m["kvl"], "q_lora_rank": m["ql"],
            "qk_rope_head_dim": m["rope"], "v_head_dim": m["v"], "qk_nope_head_dim": m["nope"], "n_group": 1,
            "topk_group": 1, "num_experts_per_tok": m["k"], "first_k_dense_replace": m["dense"],
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "vocab_size": m["V"],
            "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                             "mscale": 1.0, "mscale_all_dim": 1.0}})
    if m["family"] == "qwen3_moe":
        return "config.json", json.dumps({
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": m["H"],
            "num_hidden_layers": m["layers"], "num_attention_heads": m["nh"], "num_key_value_heads": m["nkv"],
            "head_dim": m["hd"], "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
            "vocab_size": m["V"], "moe_intermediate_size": m["F"], "num_experts": m["E"],
            "num_experts_per_tok": m["k"], "norm_topk_prob": True, "tie_word_embeddings": False})
    import yaml
    doc = {"model": {"model_config": {"type": "LlamaConfig", "hidden_size": m["H"], "num_layers": m["layers"],
                                      "num_heads": m["nh"], "n_kv_heads": m["nkv"], "vocab_size": m["V"],
                                      "intermediate_size": m["F"], "seq_length": 256}}}
    if m["E"]:
        doc["moe_config"] = {"expert_num": m["E"], "num_experts_chosen": m["k"]}
    return "config.yaml", yaml.safe_dump(doc)


def build(name, m, work):
    from conftest import FIXTURES, write_ckpt

    from gguf_out.cli import main as ms2gguf

    shapes = {"qwen3_moe": mcore_qwen3_moe, "deepseek3": mcore_deepseek3}.get(m["family"], legacy_llama)(m)
    rng = np.random.default_rng(0)
    folder = work / name
    folder.mkdir()
    write_ckpt(folder / "model.ckpt", [(k, "Float16", (0.02 * rng.standard_normal(s)).astype(np.float16))
                                       for k, s in shapes.items()])
    config_name, text = config_of(name, m)
    (folder / config_name).write_text(text)
    tokenizer = {"llama2": FIXTURES / "llama" / "tokenizer" / "tokenizer.model",
                 "mixtral": FIXTURES / "llama" / "tokenizer" / "tokenizer.model",
                 "deepseek3": FIXTURES / "bpe" / "deepseek3" / "hf" / "tokenizer.json"}.get(
        m["family"], FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json")
    gguf = folder / "model-f16.gguf"
    assert ms2gguf([str(folder / "model.ckpt"), m["family"], str(gguf), "--tokenizer", str(tokenizer), "-q"]) == 0
    return gguf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lcpp-python", default="/work/venv-lcpp/bin/python",
                    help="python of a venv with llama-cpp-python (default: %(default)s)")
    ap.add_argument("models", nargs="*", help=f"tables to write: {', '.join(MODELS)} (default: all)")
    args = ap.parse_args(argv)
    from gguf import GGUFReader

    unknown = set(args.models) - set(MODELS)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}")

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, m in MODELS.items():
            if args.models and name not in args.models:
                continue
            gguf = build(name, m, work)
            table = work / f"{name}.json"
            subprocess.run([args.lcpp_python, str(HERE / "gen_quant_tables.py"), str(gguf), "--presets",
                            ",".join(PRESETS), "--out", str(table)], check=True)
            tensors = [[t.name, [int(d) for d in reversed(t.shape)]] for t in GGUFReader(gguf).tensors]
            hparams = {k: m[k] for k in ("layers", "nh", "nkv", "E")}
            result = {"model": name, "made_by": "tests/gen_policy_tables.py: llama_model_quantize of "
                      "llama-cpp-python 0.3.36 (llama.cpp 0c1e57098; src/llama-quant.cpp identical to the "
                      "xllamacpp 2026.10.11549 test wheel's)", "hparams": hparams, "tensors": tensors,
                      "types": json.loads(table.read_text())}
            (OUT / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"{name}: {len(tensors)} tensors, {len(PRESETS)} presets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
