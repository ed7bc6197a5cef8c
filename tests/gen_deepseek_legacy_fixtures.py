"""Generate the legacy research/deepseek3 DeepSeek-V3 fixtures in tests/fixtures/deepseek3/legacy_*.

    GLOG_v=3 /work/venvs/mf/bin/python tests/gen_deepseek_legacy_fixtures.py

MindFormers 2.1.0 no longer ships research/deepseek3, so these checkpoints are written the way MindFormers r1.8.0's
``research/deepseek3/convert_weight.py`` writes them, as read from its source (source-verified, not run): the HF
weights are those of the committed mcore fixture ``deepseek3/train`` (read back with ``mindspore.load_checkpoint``
and undone with MindFormers' own layouts: plain MLA renames, interleaved ``linear_fc1``, ``ExpertsConvertOp``
experts), so its transformers logits stay the truth. Saved by the real ``mindspore.save_checkpoint``.

* legacy_train - training format, bmm experts (``--use_grouped_gemm False``, the r1.5 finetune yaml's ``use_gmm:
  False``): ``q2l_proj``, ``l2q_nope_proj`` / ``l2q_pe_proj`` (each head's rope rows evens-then-odds, convert_weight
  ``_mla_pt_to_ms``), ``kv2l_latent_kv`` / ``kv2l_k_pe`` (de-interleaved), ``lkv2kv_k_nope`` / ``lkv2kv_v``,
  ``routed_experts.ffn.w1/w3/w2.weight`` [E, out, in], ``router.dense.weight``, ``router.router.topk_bias``; the MTP
  layer as ``model.layers.{L}.*`` plus ``model.mtp_hidden_fusers.0.*`` / ``model.mtp_norms.0``; a research yaml
  (``extend_method: YARN``, ``moe_config`` with ``topk_method: noaux_tc``, which TopkRouterV2 groups by the top 2).
* legacy_gmm - the converter's default gmm experts: ``routed_experts.ffn.w1`` [E, H, 2F] (gateT | upT),
  ``ffn.w2`` [E, F, H], ``router_dense.weight``, ``routed_experts.topk_bias`` (MoEV3 has no group limit).
* legacy_infer - the inference format (``--infer True``): ``l2q_proj`` and ``kv2l`` with their rope rows
  de-interleaved in place (``infer_trans_rope_weight``), ``lkv2kv_k_nope`` / ``lkv2kv_v``, experts
  ``ffn.w1/w3/w2.weight`` [E, in, out], ``router.dense.weight``, ``router.e_score_correction_bias``; the MTP layer
  under its HF names renamed (``model.layers.{L}.enorm`` ...); a predict yaml.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DS = HERE / "fixtures" / "deepseek3"


def mcore_to_hf(mf, c):
    """The HF state dict the mcore fixture was made from (moe-families.md §4.4, inverted)."""
    H, E, F = c["hidden_size"], c["n_routed_experts"], c["moe_intermediate_size"]
    ren = {"self_attention.linear_q_down_proj": "self_attn.q_a_proj",
           "self_attention.q_layernorm": "self_attn.q_a_layernorm",
           "self_attention.linear_q_up_proj": "self_attn.q_b_proj",
           "self_attention.linear_kv_down_proj": "self_attn.kv_a_proj_with_mqa",
           "self_attention.kv_layernorm": "self_attn.kv_a_layernorm",
           "self_attention.linear_kv_up_proj": "self_attn.kv_b_proj",
           "self_attention.linear_proj": "self_attn.o_proj", "input_layernorm": "input_layernorm",
           "pre_mlp_layernorm": "post_attention_layernorm", "mlp.linear_fc2": "mlp.down_proj",
           "mlp.shared_experts.linear_fc2": "mlp.shared_experts.down_proj", "mlp.router": "mlp.gate"}
    hf = {"model.embed_tokens.weight": mf["embedding.word_embeddings.weight"],
          "model.norm.weight": mf["decoder.final_layernorm.weight"], "lm_head.weight": mf["output_layer.weight"]}
    for name, a in mf.items():
        if not name.startswith("decoder.layers."):
            continue
        i, rest = name.split(".", 3)[2], name.split(".", 3)[3]
        p = f"model.layers.{i}."
        stem, leaf = rest.rsplit(".", 1)
        if stem in ("mlp.linear_fc1", "mlp.shared_experts.linear_fc1"):       # interleaved gate/up rows
            base = "mlp." if stem == "mlp.linear_fc1" else "mlp.shared_experts."
            hf[p + base + "gate_proj.weight"], hf[p + base + "up_proj.weight"] = a[0::2], a[1::2]
        elif stem == "mlp.experts" and leaf == "weight1":
            w = a.reshape(E, H, 2 * F)
            for e in range(E):
                hf[p + f"mlp.experts.{e}.gate_proj.weight"] = np.ascontiguousarray(w[e, :, :F].T)
                hf[p + f"mlp.experts.{e}.up_proj.weight"] = np.ascontiguousarray(w[e, :, F:].T)
        elif stem == "mlp.experts" and leaf == "weight2":
            w = a.reshape(E, F, H)
            for e in range(E):
                hf[p + f"mlp.experts.{e}.down_proj.weight"] = np.ascontiguousarray(w[e].T)
        elif rest == "mlp.router.expert_bias":
            hf[p + "mlp.gate.e_score_correction_bias"] = a
        elif rest.endswith(("router.fi_accu", "router.expert_load")):
            continue
        else:
            hf[p + ren[stem] + "." + leaf] = a
    return hf


def deinterleave(rows):
    """[x0, x1, x2, ...] -> [x0, x2, ...; x1, x3, ...] along the first axis (convert_weight's permute(1, 0, 2))."""
    return np.concatenate([rows[0::2], rows[1::2]], axis=0)


def mla_training(hf, i, c):
    """convert_weight.py _mla_pt_to_ms for one layer."""
    nh, nope, rope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kvl = c["kv_lora_rank"]
    src, dst = f"model.layers.{i}.self_attn.", f"model.layers.{i}.attention."
    out = {}
    q_b = hf[src + "q_b_proj.weight"].reshape(nh, nope + rope, -1)
    out[dst + "l2q_nope_proj.weight"] = q_b[:, :nope].reshape(nh * nope, -1)
    out[dst + "l2q_pe_proj.weight"] = np.concatenate([deinterleave(h) for h in q_b[:, nope:]], axis=0)
    kv_a = hf[src + "kv_a_proj_with_mqa.weight"]
    out[dst + "kv2l_latent_kv.weight"], out[dst + "kv2l_k_pe.weight"] = kv_a[:kvl], deinterleave(kv_a[kvl:])
    kv_b = hf[src + "kv_b_proj.weight"].reshape(nh, nope + vd, -1)
    out[dst + "lkv2kv_k_nope.weight"] = kv_b[:, :nope].reshape(nh * nope, -1)
    out[dst + "lkv2kv_v.weight"] = kv_b[:, nope:].reshape(nh * vd, -1)
    for a, b in (("q_a_proj", "q2l_proj"), ("o_proj", "wo"), ("q_a_layernorm", "lq_norm"),
                 ("kv_a_layernorm", "lkv_norm")):
        out[dst + b + ".weight"] = hf[src + a + ".weight"]
    return out


def mla_inference(hf, i, c):
    """convert_weight.py infer_convert_layer_weight's MLA part (infer_trans_rope_weight on l2q_proj and kv2l)."""
    nh, nope, rope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    src, dst = f"model.layers.{i}.self_attn.", f"model.layers.{i}.attention."
    out = {}
    q_b = hf[src + "q_b_proj.weight"].reshape(nh, nope + rope, -1).copy()
    q_b[:, -rope:] = np.stack([deinterleave(h) for h in q_b[:, -rope:]])
    out[dst + "l2q_proj.weight"] = q_b.reshape(nh * (nope + rope), -1)
    kv_a = hf[src + "kv_a_proj_with_mqa.weight"].copy()
    kv_a[-rope:] = deinterleave(kv_a[-rope:])
    out[dst + "kv2l.weight"] = kv_a
    kv_b = hf[src + "kv_b_proj.weight"].reshape(nh, nope + vd, -1)
    out[dst + "lkv2kv_k_nope.weight"] = kv_b[:, :nope].reshape(nh * nope, -1)
    out[dst + "lkv2kv_v.weight"] = kv_b[:, nope:].reshape(nh * vd, -1)
    for a, b in (("q_a_proj", "q2l_proj"), ("o_proj", "wo"), ("q_a_layernorm", "lq_norm"),
                 ("kv_a_layernorm", "lkv_norm")):
        out[dst + b + ".weight"] = hf[src + a + ".weight"]
    return out


def mlp(hf, i, c, kind):
    """convert_weight.py _mlp_pt_to_ms (kind "bmm" / "gmm") or the infer_process_* functions (kind "infer")."""
    E = c["n_routed_experts"]
    src, dst = f"model.layers.{i}.mlp.", f"model.layers.{i}.feed_forward."
    out = {f"model.layers.{i}.attention_norm.weight": hf[f"model.layers.{i}.input_layernorm.weight"],
           f"model.layers.{i}.ffn_norm.weight": hf[f"model.layers.{i}.post_attention_layernorm.weight"]}
    if i < c["first_k_dense_replace"]:
        for a, b in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            out[dst + b + ".weight"] = hf[src + a + ".weight"]
        return out
    for a, b in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
        out[dst + f"shared_experts.{b}.weight"] = hf[src + f"shared_experts.{a}.weight"]
    stacked = {b: np.stack([hf[src + f"experts.{e}.{a}.weight"] for e in range(E)])
               for a, b in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2"))}
    bias = hf[src + "gate.e_score_correction_bias"]
    if kind == "gmm":
        out[dst + "routed_experts.router_dense.weight"] = hf[src + "gate.weight"]
        out[dst + "routed_experts.topk_bias"] = bias
        out[dst + "routed_experts.ffn.w1"] = np.concatenate([stacked["w1"].transpose(0, 2, 1),
                                                             stacked["w3"].transpose(0, 2, 1)], axis=-1)
        out[dst + "routed_experts.ffn.w2"] = stacked["w2"].transpose(0, 2, 1)
    elif kind == "bmm":
        out[dst + "routed_experts.router.dense.weight"] = hf[src + "gate.weight"]
        out[dst + "routed_experts.router.router.topk_bias"] = bias
        for b in ("w1", "w3", "w2"):
            out[dst + f"routed_experts.ffn.{b}.weight"] = stacked[b]
    else:
        out[dst + "routed_experts.router.dense.weight"] = hf[src + "gate.weight"]
        out[dst + "routed_experts.router.e_score_correction_bias"] = bias
        for b in ("w1", "w3", "w2"):
            out[dst + f"routed_experts.ffn.{b}.weight"] = stacked[b].transpose(0, 2, 1)
    return out


def mtp_hf(mf, c, rng):
    """The MTP layer as DeepSeek's HF checkpoints hold it (model.layers.{L}.*): the mcore fixture's MTP layer."""
    L = c["num_hidden_layers"]
    twin = {k.replace("mtp.layers.0.transformer_layer.", f"decoder.layers.{L}."): v for k, v in mf.items()
            if k.startswith("mtp.layers.0.transformer_layer.")}
    hf = mcore_to_hf({**twin, "embedding.word_embeddings.weight": mf["embedding.word_embeddings.weight"],
                      "decoder.final_layernorm.weight": mf["decoder.final_layernorm.weight"],
                      "output_layer.weight": mf["output_layer.weight"]}, c)
    hf = {k: v for k, v in hf.items() if k.startswith(f"model.layers.{L}.")}
    p = f"model.layers.{L}."
    hf[p + "enorm.weight"], hf[p + "hnorm.weight"] = mf["mtp.layers.0.enorm.weight"], mf["mtp.layers.0.hnorm.weight"]
    hf[p + "eh_proj.weight"] = mf["mtp.layers.0.eh_proj.weight"]
    hf[p + "shared_head.norm.weight"] = mf["mtp.layers.0.final_layernorm.weight"]
    hf[p + "embed_tokens.weight"] = mf["embedding.word_embeddings.weight"]
    hf[p + "shared_head.head.weight"] = mf["output_layer.weight"] + rng.normal(0, 0.01, mf["output_layer.weight"].shape)
    return hf


def legacy(mf, c, kind, rng):
    hf = mcore_to_hf(mf, c)
    hf.update(mtp_hf(mf, c, rng))
    L = c["num_hidden_layers"]
    out = {"model.tok_embeddings.embedding_weight": hf["model.embed_tokens.weight"],
           "model.norm_out.weight": hf["model.norm.weight"], "lm_head.weight": hf["lm_head.weight"]}
    for i in range(L + 1):          # the MTP layer is converted like a layer (layer_id >= num_layers)
        out.update((mla_inference if kind == "infer" else mla_training)(hf, i, c))
        out.update(mlp(hf, i, c, kind))
    p = f"model.layers.{L}."
    if kind == "infer":             # infer_name_replace renames the MTP extras but keeps them under the layer
        for name in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                     "shared_head.head.weight"):
            out[p + name] = hf[p + name]
        out[p + "tok_embeddings.weight"] = hf[p + "embed_tokens.weight"]
    else:                           # _mtp_pt_to_ms (the MTP embedding and head are shared, not saved)
        out["model.mtp_hidden_fusers.0.norm_emb.weight"] = hf[p + "enorm.weight"]
        out["model.mtp_hidden_fusers.0.norm.weight"] = hf[p + "hnorm.weight"]
        out["model.mtp_hidden_fusers.0.dense.weight"] = hf[p + "eh_proj.weight"]
        out["model.mtp_norms.0.weight"] = hf[p + "shared_head.norm.weight"]
    return out


def research_yaml(c, kind):
    rs = c["rope_scaling"]
    mc = {"type": "DeepseekV3Config", "auto_register": "deepseek3_config.DeepseekV3Config", "batch_size": 1,
          "seq_length": 32, "hidden_size": c["hidden_size"], "num_layers": c["num_hidden_layers"],
          "num_heads": c["num_attention_heads"], "max_position_embeddings": c["max_position_embeddings"],
          "intermediate_size": c["intermediate_size"], "kv_lora_rank": c["kv_lora_rank"],
          "n_kv_heads": c["num_attention_heads"], "q_lora_rank": c["q_lora_rank"],
          "qk_rope_head_dim": c["qk_rope_head_dim"], "v_head_dim": c["v_head_dim"],
          "qk_nope_head_dim": c["qk_nope_head_dim"], "vocab_size": c["vocab_size"], "multiple_of": 256,
          "rms_norm_eps": c["rms_norm_eps"], "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
          "compute_dtype": "float32", "param_init_type": "float32", "qkv_concat": False,
          "use_past": kind == "infer", "extend_method": "YARN",
          "scaling_factor": {"beta_fast": rs["beta_fast"], "beta_slow": rs["beta_slow"], "factor": rs["factor"],
                             "mscale": rs["mscale"], "mscale_all_dim": rs["mscale_all_dim"],
                             "original_max_position_embeddings": rs["original_max_position_embeddings"]},
          "theta": c["rope_theta"]}
    if kind != "infer":
        mc["mtp_depth"] = 1
    moe = {"expert_num": c["n_routed_experts"], "num_experts_chosen": c["num_experts_per_tok"],
           "routing_policy": "TopkRouterV2", "shared_expert_num": c["n_shared_experts"],
           "routed_scaling_factor": c["routed_scaling_factor"], "first_k_dense_replace": c["first_k_dense_replace"],
           "moe_intermediate_size": c["moe_intermediate_size"], "topk_group": c["topk_group"], "n_group": c["n_group"]}
    if kind != "infer":
        moe.update(balance_via_topk_bias=True, norm_topk_prob=True, use_gating_sigmoid=True,
                   use_gmm=kind == "gmm", topk_method="noaux_tc")
    return {"model": {"model_config": mc, "arch": {"type": "DeepseekV3ForCausalLM"}}, "moe_config": moe}


def main() -> int:
    import mindspore as ms
    import yaml

    c = json.loads((DS / "train" / "config.json").read_text())
    mf = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(DS / "train" / "model.ckpt")).items()}
    for kind in ("bmm", "gmm", "infer"):
        name = {"bmm": "legacy_train", "gmm": "legacy_gmm", "infer": "legacy_infer"}[kind]
        out = DS / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        params = legacy(mf, c, kind, np.random.default_rng(11))
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(np.ascontiguousarray(v, dtype=np.float32))}
                            for k, v in params.items()], str(out / "model.ckpt"))
        (out / "config.yaml").write_text(
            f"# ms2gguf test fixture 'deepseek3/{name}' - written by tests/gen_deepseek_legacy_fixtures.py; do not "
            "edit.\n# As MindFormers r1.8.0's research/deepseek3 yamls (model.model_config + a top-level "
            "moe_config).\n" + yaml.safe_dump(research_yaml(c, kind), sort_keys=False, allow_unicode=True))
        # the gmm MoE (MoEV3) has no group limit, so transformers' logits (grouped routing) are not its truth
        for f in ("logits.npy", "tokens.json") if kind != "gmm" else ("tokens.json",):
            shutil.copy(DS / "train" / f, out / f)
        print(name, len(params), "tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
