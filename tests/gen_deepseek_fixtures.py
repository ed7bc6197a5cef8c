"""Generate the tiny DeepSeek-V3 fixtures in tests/fixtures/deepseek3/.

Like tests/gen_moe_fixtures.py (read its docstring first; this script reuses its HF worker):

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_deepseek_fixtures.py [--hf-python /work/venv-hf/bin/python]

Truth: transformers' ``DeepseekV3ForCausalLM`` (MLA with q- and kv-LoRA, a leading dense layer, routed experts with
a shared expert, sigmoid routing with ``e_score_correction_bias``, group-limited top-k, routing scale, YaRN), whose
logits at every position are the reference. The mcore checkpoints are MindFormers 2.1.0's
``TrainingDeepseekV3ForCausalLM`` (the MoE and MLA do not run on CPU), filled the way MindFormers converts HF weights
(moe-families.md §4.4: the model's ``convert_name`` renames, ``ExpertsConvertOp`` for the experts, ``ConcatConvertOp``
with the model config for the dense and shared ``linear_fc1``; the wheel has no complete HF -> MindFormers converter
for this network), its multi-token-prediction parameters filled randomly (they exist only on the MindFormers side),
and saved by ``mindspore.save_checkpoint``.

* deepseek3/train     - q-LoRA, shipped-yaml layout (mla_qkv_concat False, interleaved linear_fc1), 2 expert groups
* deepseek3/concat    - mla_qkv_concat True (linear_qkv / linear_qb / linear_kvb / k_layernorm), contiguous fc1
* deepseek3/noq       - no q-LoRA (linear_q_proj), no expert groups
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

from gen_moe_fixtures import QWEN_TOKENIZER, WeightMaker, run_hf, write_hf_dir  # noqa: E402

SEQ_LENGTH = 32
CANDIDATES = 40
YARN = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
BASE = dict(H=64, nh=4, ql=48, kvl=32, rope=8, nope=16, v=24, E=8, k=2, F=24, dense_F=96, shared=1, dense=1,
            layers=3, rows=512, groups=2, topk_group=1, scale=2.5, theta=10000.0, eps=1e-6, max_pos=256, mtp=1)
VARIANTS = {
    "deepseek3/train": dict(BASE, seed=5001, concat=False, interleaved=True),
    "deepseek3/concat": dict(BASE, seed=5002, concat=True, interleaved=False),
    "deepseek3/noq": dict(BASE, seed=5003, concat=False, interleaved=True, ql=None, groups=1, topk_group=1,
                          layers=2),
}


def hf_weights(v, seed_offset=0):
    m, w = WeightMaker(v["seed"] + 97 * seed_offset), {}
    H, nh, ql, kvl, rope, nope, vd = v["H"], v["nh"], v["ql"], v["kvl"], v["rope"], v["nope"], v["v"]
    for i in range(v["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = m.norm(H)
        if ql:
            w[p + "self_attn.q_a_proj.weight"] = m.lin(ql, H)
            w[p + "self_attn.q_a_layernorm.weight"] = m.norm(ql)
            w[p + "self_attn.q_b_proj.weight"] = m.lin(nh * (nope + rope), ql)
        else:
            w[p + "self_attn.q_proj.weight"] = m.lin(nh * (nope + rope), H)
        w[p + "self_attn.kv_a_proj_with_mqa.weight"] = m.lin(kvl + rope, H)
        w[p + "self_attn.kv_a_layernorm.weight"] = m.norm(kvl)
        w[p + "self_attn.kv_b_proj.weight"] = m.lin(nh * (nope + vd), kvl)
        w[p + "self_attn.o_proj.weight"] = m.lin(H, nh * vd)
        w[p + "post_attention_layernorm.weight"] = m.norm(H)
        if i < v["dense"]:
            for name, (o, n) in (("gate_proj", (v["dense_F"], H)), ("up_proj", (v["dense_F"], H)),
                                 ("down_proj", (H, v["dense_F"]))):
                w[p + f"mlp.{name}.weight"] = m.lin(o, n)
            continue
        m.experts(w, p + "mlp.gate.weight", p + "mlp.experts.{e}.{name}.weight", v["E"], v["F"], H,
                  ("gate_proj", "up_proj", "down_proj"))
        w[p + "mlp.gate.e_score_correction_bias"] = 0.05 * m.rs.standard_normal(v["E"])
        Fs = v["shared"] * v["F"]
        for name, (o, n) in (("gate_proj", (Fs, H)), ("up_proj", (Fs, H)), ("down_proj", (H, Fs))):
            w[p + f"mlp.shared_experts.{name}.weight"] = m.lin(o, n)
    return m.ends(w, v["rows"], H)


def hf_config(v):
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": v["rows"],
        "hidden_size": v["H"], "intermediate_size": v["dense_F"], "moe_intermediate_size": v["F"],
        "num_hidden_layers": v["layers"], "num_nextn_predict_layers": v["mtp"], "num_attention_heads": v["nh"],
        "num_key_value_heads": v["nh"], "n_shared_experts": v["shared"], "n_routed_experts": v["E"],
        "routed_scaling_factor": v["scale"], "kv_lora_rank": v["kvl"], "q_lora_rank": v["ql"],
        "qk_rope_head_dim": v["rope"], "v_head_dim": v["v"], "qk_nope_head_dim": v["nope"],
        "topk_method": "noaux_tc", "n_group": v["groups"], "topk_group": v["topk_group"],
        "num_experts_per_tok": v["k"], "first_k_dense_replace": v["dense"], "norm_topk_prob": True,
        "hidden_act": "silu", "max_position_embeddings": v["max_pos"], "rms_norm_eps": v["eps"],
        "rope_theta": v["theta"], "rope_scaling": dict(YARN), "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32",
    }


def mf_config(v):
    from mindformers.models.deepseek3.configuration_deepseek_v3 import DeepseekV3Config

    hf = hf_config(v)
    keep = {k: a for k, a in hf.items() if k not in ("architectures", "model_type", "torch_dtype", "topk_method")}
    return DeepseekV3Config(**keep, seq_length=SEQ_LENGTH, moe_grouped_gemm=True, mla_qkv_concat=v["concat"],
                            qk_layernorm=True, use_interleaved_weight_layout_mlp=v["interleaved"],
                            params_dtype="float32", compute_dtype="float32", layernorm_compute_dtype="float32")


def mf_params(net, config, w, v, rng):
    """HF weights -> the network's parameters with MindFormers' own conversion pieces."""
    from mindformers.checkpoint.converter.convert_op import ConcatConvertOp, ExpertsConvertOp

    tc = config.convert_to_transformer_config()
    out = {}
    for i in range(v["layers"]):
        p = f"model.layers.{i}."
        if v["concat"]:
            q_a = w[p + "self_attn.q_a_proj.weight"] if v["ql"] else w[p + "self_attn.q_proj.weight"]
            out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = np.concatenate(
                [q_a, w[p + "self_attn.kv_a_proj_with_mqa.weight"]])
        for stem in (("mlp.", "decoder.layers.{i}.mlp.linear_fc1.weight"),
                     ("mlp.shared_experts.", "decoder.layers.{i}.mlp.shared_experts.linear_fc1.weight")):
            if p + stem[0] + "gate_proj.weight" in w:
                op = ConcatConvertOp(hf_names=[p + stem[0] + "gate_proj.weight", p + stem[0] + "up_proj.weight"],
                                     mf_names=[stem[1].format(i=i)], dim=0)
                op.set_model_config(tc)
                out[stem[1].format(i=i)] = op._hf_to_mf([w[p + stem[0] + "gate_proj.weight"],
                                                         w[p + stem[0] + "up_proj.weight"]])[0]
        if i >= v["dense"]:
            ops = (ExpertsConvertOp(hf_names=["gate", "up"], mf_names=[f"decoder.layers.{i}.mlp.experts.weight1"]),
                   ExpertsConvertOp(hf_names=["down"], mf_names=[f"decoder.layers.{i}.mlp.experts.weight2"]))
            for op, names in zip(ops, (("gate_proj", "up_proj"), ("down_proj",))):
                op.set_model_config(tc)
                op.optimizer_parallel_size = 1
                op.expert_parallel_size = 1
                stacked = [np.stack([w[p + f"mlp.experts.{e}.{n}.weight"] for e in range(v["E"])]) for n in names]
                out[op.mf_names[0]] = op._hf_to_mf(stacked)[0]
    for name, a in w.items():
        if ".mlp.experts." in name or name.endswith(("gate_proj.weight", "up_proj.weight")) and ".mlp." in name:
            continue
        if v["concat"] and (".q_a_proj." in name or ".kv_a_proj_with_mqa." in name or ".q_proj." in name):
            continue
        mf = net.convert_name(name)
        if v["concat"]:
            mf = (mf.replace(".linear_q_up_proj.", ".linear_qb.").replace(".linear_kv_up_proj.", ".linear_kvb.")
                  .replace(".kv_layernorm.", ".k_layernorm."))
        if not v["ql"] and ".self_attn.q_proj." in name:
            mf = f"decoder.layers.{name.split('.')[2]}.self_attention.linear_q_proj.weight"
        out[mf] = a
    last = f"decoder.layers.{v['layers'] - 1}."
    for prm in net.get_parameters():       # MTP layers and router statistics: MindFormers-only parameters
        if prm.name not in out:
            if not (prm.name.startswith("mtp.") or prm.name.endswith(("router.fi_accu", "router.expert_load"))):
                raise RuntimeError(f"no value for {prm.name}")
            # an MTP transformer layer of the same magnitude as the model's own layers, so that running it by
            # mistake shows (tests/test_convert_deepseek.py's MTP control)
            twin = out.get(prm.name.replace("mtp.layers.0.transformer_layer.", last))
            if twin is not None and twin.shape == tuple(prm.shape):
                out[prm.name] = (twin + rng.normal(0.0, float(np.std(twin)) + 1e-3, twin.shape)).astype(np.float32)
            else:
                out[prm.name] = (0.05 * rng.standard_normal(prm.shape)).astype(np.float32)
    return out


def generate(out: Path, work: Path, hf_python: str) -> dict:
    from tokenizers import Tokenizer

    from gen_llama_fixtures import TEXT

    ids = [0] + Tokenizer.from_file(str(QWEN_TOKENIZER)).encode(TEXT).ids     # any ids below the vocabulary
    tasks = []
    for name, v in VARIANTS.items():
        for seed in range(CANDIDATES):
            stem = f"{name.replace('/', '_')}_{seed}"
            w = hf_weights(v, seed)
            np.savez(work / f"{stem}.npz", **w)
            write_hf_dir(work / f"{stem}_hf", hf_config(v), w)
            tasks.append(dict(name=f"{name} seed {seed}", dir=str(work / f"{stem}_hf"), ids=ids, k=v["k"],
                              logits=str(work / f"{stem}.npy")))
    run_hf(tasks, work, hf_python)
    chosen = {}
    for name in VARIANTS:
        stems = [f"{name.replace('/', '_')}_{seed}" for seed in range(CANDIDATES)]
        best = max(stems, key=lambda st: float((work / f"{st}.margin").read_text()))
        chosen[name] = dict(stem=best, margin=float((work / f"{best}.margin").read_text()))
    job = {"out": str(out), "ids": ids, "text": TEXT, "chosen": chosen}
    (work / "mf_job.json").write_text(json.dumps(job))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mf-part", "deepseek3", "--work", str(work)],
                   check=True, cwd=work)
    return json.loads((work / "deepseek3_report.json").read_text())


def mf_part(work: Path) -> None:
    import mindspore as ms

    from gen_moe_fixtures import mcore_context
    from gen_qwen_fixtures import save_net, set_net, write_json
    from mindformers.models.deepseek3.modeling_deepseek_v3 import DeepseekV3ForCausalLM

    job = json.loads((work / "mf_job.json").read_text())
    out, report = Path(job["out"]), {}
    mcore_context("train")
    ms.set_seed(0)
    for name, v in VARIANTS.items():
        stem = job["chosen"][name]["stem"]
        vdir = out / name
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        config = mf_config(v)
        net = DeepseekV3ForCausalLM(config)
        w = dict(np.load(work / f"{stem}.npz"))
        set_net(net, mf_params(net, config, w, v, np.random.default_rng(v["seed"])))
        params = save_net(net, vdir / "model.ckpt", work)
        logits = np.load(work / f"{stem}.npy")
        np.save(vdir / "logits.npy", logits)
        write_json(vdir / "tokens.json", {"text": job["text"], "ids": job["ids"]})
        write_json(vdir / "config.json", hf_config(v))
        if v["concat"] or not v["interleaved"]:
            import yaml
            mc = {"mla_qkv_concat": v["concat"], "qk_layernorm": True, "moe_grouped_gemm": True,
                  "use_interleaved_weight_layout_mlp": v["interleaved"]}
            doc = {"use_legacy": False, "pretrained_model_dir": ".", "load_checkpoint": "model.ckpt",
                   "model": {"model_config": mc}}
            (vdir / "config.yaml").write_text(
                f"# ms2gguf test fixture '{name}' - written by tests/gen_deepseek_fixtures.py; do not edit.\n"
                "# As MindFormers' mcore finetune yamls: layout flags here, architecture in config.json.\n"
                + yaml.safe_dump(doc, sort_keys=False))
        report[name] = dict(params=params, routing_margin=job["chosen"][name],
                            max_abs_logit=float(np.abs(logits).max()),
                            mean_logit_std=float(np.mean(np.std(logits, -1))),
                            distinct_argmax=len(set(np.argmax(logits, axis=-1).tolist())))
    (work / "deepseek3_report.json").write_text(json.dumps(report, default=str))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--hf-python", default="/work/venv-hf/bin/python")
    ap.add_argument("--mf-part", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args(argv)
    from gen_llama_fixtures import setup_environment

    if args.mf_part:
        setup_environment(args.work)
        mf_part(args.work)
        return 0
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_deepseek_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            report = generate(args.out.resolve(), work, args.hf_python)
        finally:
            os.chdir(cwd)
    print(json.dumps({k: {kk: vv for kk, vv in e.items() if kk != "params"} for k, e in report.items()}, indent=1))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
