"""Generate the tiny Qwen2, Llama 3.1 and Qwen3 fixtures in tests/fixtures/{qwen2,llama3,qwen3}/.

Like tests/gen_llama_fixtures.py (read its docstring first), but for the families with byte-level BPE tokenizers.
What truth each fixture carries:

* qwen2/<v>  - the real MindFormers 2.1.0 legacy ``LlamaForCausalLM`` with ``qkv_has_bias`` (how research/qwen2
  and research/qwen2_5 build Qwen2 / 2.5), run on CPU: its logits at every position. Checkpoint by
  ``mindspore.save_checkpoint`` of that network.
* llama3/<v> - the same class with ``extend_method: LLAMA3`` (Llama 3.1 rope scaling), real MindFormers logits.
* qwen3/<v>  - mcore ``TrainingQwen3ForCausalLM`` cannot run on CPU, so the logits come from HF ``transformers``
  ``Qwen3ForCausalLM`` with the same weights. The checkpoints are built by MindFormers' own HF -> MindFormers code
  from the 2.1.0 wheel, never by our reading of the layout: the ``WeightTemplate`` that ``load_hf_checkpoint``
  uses, ``TrainingQwen3ForCausalLM.convert_weight_dict`` (which honours the layout flags), and the offline
  converter ``convert_hf_safetensors_multiprocess`` (a directory of safetensors shards + param_name_map.json).
  The converted weights are loaded into a real ``TrainingQwen3ForCausalLM`` and saved with
  ``mindspore.save_checkpoint``, so names and dtypes are the network's.

Every legacy variant is also run through the matching HF ``transformers`` class (Qwen2ForCausalLM,
LlamaForCausalLM with rope_scaling llama3) as a cross-check; the generator fails if they disagree.

Two environments (shared/reference/fixture-env.md): this script runs in the MindSpore + MindFormers venv and calls
itself in a torch + transformers venv for the HF parts (``--hf-worker``; torch==2.13.0 CPU, transformers,
safetensors, numpy):

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_qwen_fixtures.py [--hf-python /work/venv-hf/bin/python]

Deterministic: fixed seeds, tokenizers trained single-pass on the corpus of gen_llama_fixtures.py.
"""

from __future__ import annotations

import argparse
import hashlib
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

# Pre-tokenizer regexes of the originals: Qwen2's splits digits one by one, Llama 3's keeps up to three together.
QWEN2_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+")
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
                   "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
                   "{% endif %}")

# Legacy variants (MindFormers LlamaForCausalLM runs them). H hidden, nh/nkv heads, F ffn, rows = vocab rows.
LEGACY = {
    "qwen2/tied": dict(seed=2001, tokenizer="qwen", H=64, nh=8, nkv=2, F=160, layers=2, rows=448, bias=True,
                       tie=True, concat=False, theta=1000000.0, eps=1e-6, max_pos=4096),
    "qwen2/fused": dict(seed=2002, tokenizer="qwen", H=64, nh=4, nkv=2, F=128, layers=2, rows=403, bias=True,
                        tie=False, concat=True, theta=1000000.0, eps=1e-6, max_pos=4096),
    "llama3/rope_scaled": dict(seed=2003, tokenizer="llama3", H=64, nh=4, nkv=2, F=192, layers=2, rows=576,
                               bias=False, tie=False, concat=False, theta=500000.0, eps=1e-5, max_pos=128,
                               rope=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=64)),
}
# mcore Qwen3 variants (HF logits; MindFormers conversion). hd != H / nh on purpose.
MCORE = {
    "qwen3/tied": dict(seed=3001, tokenizer="qwen", H=64, nh=4, nkv=2, hd=24, F=96, layers=2, rows=448, tie=True,
                       theta=1000000.0, eps=1e-6, max_pos=128, contiguous_attention=False, interleaved_mlp=True,
                       shards=True),
    "qwen3/contiguous": dict(seed=3002, tokenizer="qwen", H=64, nh=8, nkv=2, hd=16, F=128, layers=2, rows=403,
                             tie=False, theta=1000000.0, eps=1e-6, max_pos=128, contiguous_attention=True,
                             interleaved_mlp=False, shards=False),
}


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers (tokenizers package, in the MindSpore venv)
# ---------------------------------------------------------------------------------------------------------------

def train_tokenizer(kind: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from gen_llama_fixtures import CORPUS

    tok = Tokenizer(models.BPE())
    if kind == "qwen":
        tok.normalizer = normalizers.NFC()
    pattern = QWEN2_PAT if kind == "qwen" else LLAMA3_PAT
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    base = 400 if kind == "qwen" else 320
    trainer = trainers.BpeTrainer(vocab_size=base, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    assert tok.get_vocab_size() == base
    specials = QWEN_SPECIALS if kind == "qwen" else LLAMA3_SPECIALS
    tok.add_special_tokens(specials)
    if kind == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                                           special_tokens=[("<|begin_of_text|>", bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def tokenizer_config(kind: str, tok) -> dict:
    added = {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": True}
             for t in (QWEN_SPECIALS if kind == "qwen" else LLAMA3_SPECIALS)}
    if kind == "qwen":      # as Qwen2.5 base models ship it
        return {"add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
                "chat_template": CHATML_TEMPLATE, "clean_up_tokenization_spaces": False,
                "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 4096,
                "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer"}
    return {"added_tokens_decoder": added, "bos_token": "<|begin_of_text|>", "chat_template": LLAMA3_TEMPLATE,
            "clean_up_tokenization_spaces": True, "eos_token": "<|end_of_text|>",
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast"}


def write_tokenizer(kind: str, folder: Path):
    tok = train_tokenizer(kind)
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(tok.to_str())
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(kind, tok), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return tok


# ---------------------------------------------------------------------------------------------------------------
# Weights (HF names and layout, numpy float32)
# ---------------------------------------------------------------------------------------------------------------

def hf_weights(v: dict, qk_norm: bool) -> dict[str, np.ndarray]:
    rs = np.random.RandomState(v["seed"])
    H, nh, nkv, F, V = v["H"], v["nh"], v["nkv"], v["F"], v["rows"]
    hd = v.get("hd", H // nh)

    def lin(out_dim, in_dim, gain=0.8):
        return rs.normal(0.0, gain / np.sqrt(in_dim), size=(out_dim, in_dim))

    def norm(dim):
        return 1.0 + 0.2 * rs.standard_normal(dim)

    w = {"model.embed_tokens.weight": (0.5 if v["tie"] else 1.0) * rs.standard_normal((V, H))}
    for i in range(v["layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        if v.get("bias"):       # large enough that a lost or misplaced bias changes the logits visibly
            for name, n in (("q", nh), ("k", nkv), ("v", nkv)):
                w[p + f"self_attn.{name}_proj.bias"] = 0.5 * rs.standard_normal(n * hd)
        if qk_norm:
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(F, H)
        w[p + "mlp.up_proj.weight"] = lin(F, H)
        w[p + "mlp.down_proj.weight"] = lin(H, F)
    w["model.norm.weight"] = norm(H)
    if not v["tie"]:
        w["lm_head.weight"] = rs.normal(0.0, 2.0 / np.sqrt(H), size=(V, H))
    return {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in w.items()}


def legacy_params(v: dict, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF weights -> MindFormers 2.1.0 legacy LlamaForCausalLM names; fused tensors in the 2.1.0 layout
    (per-KV-group w_qkv and its bias, row-interleaved w_gate_hidden; mindformers-layouts.md §4.1, verified by the
    logits check below)."""
    H, nh, nkv = v["H"], v["nh"], v["nkv"]
    hd, r = H // nh, nh // nkv
    out = {"model.tok_embeddings.embedding_weight": w["model.embed_tokens.weight"]}
    for i in range(v["layers"]):
        s, m = f"model.layers.{i}.", f"model.layers.{i}."
        out[m + "attention_norm.weight"] = w[s + "input_layernorm.weight"]
        out[m + "ffn_norm.weight"] = w[s + "post_attention_layernorm.weight"]
        q, k, val = (w[s + f"self_attn.{n}_proj.weight"] for n in "qkv")
        if v["concat"]:
            out[m + "attention.w_qkv.weight"] = np.concatenate(
                [q.reshape(nkv, r * hd, H), k.reshape(nkv, hd, H), val.reshape(nkv, hd, H)], axis=1).reshape(-1, H)
            if v["bias"]:
                qb, kb, vb = (w[s + f"self_attn.{n}_proj.bias"] for n in "qkv")
                out[m + "attention.w_qkv.bias"] = np.concatenate(
                    [qb.reshape(nkv, r * hd), kb.reshape(nkv, hd), vb.reshape(nkv, hd)], axis=1).reshape(-1)
            out[m + "feed_forward.w_gate_hidden.weight"] = np.stack(
                [w[s + "mlp.gate_proj.weight"], w[s + "mlp.up_proj.weight"]], axis=1).reshape(-1, H)
        else:
            for n, a in zip("qkv", (q, k, val)):
                out[m + f"attention.w{n}.weight"] = a
                if v["bias"]:
                    out[m + f"attention.w{n}.bias"] = w[s + f"self_attn.{n}_proj.bias"]
            out[m + "feed_forward.w1.weight"] = w[s + "mlp.gate_proj.weight"]
            out[m + "feed_forward.w3.weight"] = w[s + "mlp.up_proj.weight"]
        out[m + "attention.wo.weight"] = w[s + "self_attn.o_proj.weight"]
        out[m + "feed_forward.w2.weight"] = w[s + "mlp.down_proj.weight"]
    out["model.norm_out.weight"] = w["model.norm.weight"]
    if not v["tie"]:
        out["lm_head.weight"] = w["lm_head.weight"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}


def hf_config(v: dict, arch: str, pad_id: int, bos_id: int | None, eos_id: int) -> dict:
    """The config.json an HF release of this model would carry (classic spelling: rope_theta, rope_scaling)."""
    hd = v.get("hd", v["H"] // v["nh"])
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch, "hidden_size": v["H"], "intermediate_size": v["F"], "num_hidden_layers": v["layers"],
        "num_attention_heads": v["nh"], "num_key_value_heads": v["nkv"], "head_dim": hd, "hidden_act": "silu",
        "max_position_embeddings": v["max_pos"], "rms_norm_eps": v["eps"], "rope_theta": v["theta"],
        "tie_word_embeddings": v["tie"], "vocab_size": v["rows"], "bos_token_id": bos_id, "eos_token_id": eos_id,
        "pad_token_id": pad_id, "attention_dropout": 0.0, "torch_dtype": "float32",
    }
    if arch == "qwen2":
        config.update(use_sliding_window=False, sliding_window=v["max_pos"], max_window_layers=v["layers"])
    if arch == "qwen3":
        config.update(attention_bias=False, use_sliding_window=False, sliding_window=None,
                      max_window_layers=v["layers"])
    if arch == "llama":
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        if "rope" in v:
            config["rope_scaling"] = {"rope_type": "llama3", **v["rope"]}
    return config


def legacy_model_config(v: dict, pad_id: int, bos_id: int, eos_id: int) -> dict:
    """LlamaConfig arguments (also what config.yaml records)."""
    kw = dict(type="LlamaConfig", batch_size=1, seq_length=SEQ_LENGTH, hidden_size=v["H"], num_layers=v["layers"],
              num_heads=v["nh"], n_kv_heads=v["nkv"], vocab_size=v["rows"], intermediate_size=v["F"],
              rms_norm_eps=v["eps"], theta=v["theta"], max_position_embedding=v["max_pos"], bos_token_id=bos_id,
              eos_token_id=eos_id, pad_token_id=pad_id, ignore_token_id=-100, qkv_concat=v["concat"],
              qkv_has_bias=v["bias"], tie_word_embeddings=v["tie"])
    if "rope" in v:
        kw.update(extend_method="LLAMA3", scaling_factor=dict(v["rope"]))
    else:
        kw.update(extend_method="None", scaling_factor=1.0)
    kw.update(use_past=False, use_flash_attention=False, fused_rms_norm=False, use_rope_slice=True,
              compute_dtype="float32", layernorm_compute_type="float32", softmax_compute_type="float32",
              rotary_dtype="float32", param_init_type="float32", checkpoint_name_or_path="")
    return kw


def write_yaml(path: Path, doc: dict, header: str) -> None:
    import yaml

    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), encoding="utf-8")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# MindFormers (MindSpore venv)
# ---------------------------------------------------------------------------------------------------------------

def legacy_logits(kw: dict, params: dict, ids: list[int], pad_id: int):
    import mindspore as ms
    from gen_llama_fixtures import build_net, load_params

    net = build_net(kw)
    load_params(net, params)
    padded = np.full((1, SEQ_LENGTH), pad_id, dtype=np.int32)   # the mask hides pad keys; rows < n are causal
    padded[0, :len(ids)] = ids
    out = net(ms.Tensor(padded, ms.int32))
    if not np.array_equal(out[1].asnumpy(), padded):
        raise RuntimeError("LlamaForCausalLM altered the input ids (training mode?)")
    logits = out[0].asnumpy().astype(np.float32).reshape(SEQ_LENGTH, -1)
    return logits[:len(ids)], net


def qwen3_net(v: dict, pad_id: int):
    from mindformers.models.qwen3.configuration_qwen3 import Qwen3Config
    from mindformers.models.qwen3.modeling_qwen3_train import TrainingQwen3ForCausalLM

    config = Qwen3Config(**qwen3_mf_kwargs(v, pad_id))
    return TrainingQwen3ForCausalLM(config), config


def qwen3_mf_kwargs(v: dict, pad_id: int) -> dict:
    return dict(vocab_size=v["rows"], hidden_size=v["H"], intermediate_size=v["F"], num_hidden_layers=v["layers"],
                num_attention_heads=v["nh"], num_key_value_heads=v["nkv"], head_dim=v["hd"],
                max_position_embeddings=v["max_pos"], rms_norm_eps=v["eps"], rope_theta=v["theta"],
                tie_word_embeddings=v["tie"], seq_length=SEQ_LENGTH, pad_token_id=pad_id, qkv_concat=True,
                use_contiguous_weight_layout_attention=v["contiguous_attention"],
                use_interleaved_weight_layout_mlp=v["interleaved_mlp"], params_dtype="float32",
                compute_dtype="float32", layernorm_compute_dtype="float32")


def net_arrays(net) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def set_net(net, params: dict) -> None:
    import mindspore as ms

    names = {p.name for p in net.get_parameters()}
    if names != set(params):
        raise RuntimeError(f"net-only {sorted(names - set(params))}, ours-only {sorted(set(params) - names)}")
    for p in net.get_parameters():
        a = np.asarray(params[p.name].asnumpy() if hasattr(params[p.name], "asnumpy") else params[p.name])
        if tuple(p.shape) != a.shape:
            raise RuntimeError(f"{p.name}: net {tuple(p.shape)} vs converted {a.shape}")
        p.set_data(ms.Tensor(a, dtype=p.dtype))


def save_net(net, dest: Path, work: Path) -> list:
    from gen_llama_fixtures import read_ckpt, save_ckpt

    save_ckpt(net, dest, work)
    back = read_ckpt(dest)
    want = net_arrays(net)
    assert list(back) == list(want), (list(back), list(want))
    for name, (dtype, value) in back.items():
        assert dtype == "Float32" and np.array_equal(value, want[name]), name
    return [(k, list(np.shape(val))) for k, (_, val) in back.items()]


# ---------------------------------------------------------------------------------------------------------------
# HF worker (torch venv)
# ---------------------------------------------------------------------------------------------------------------

def hf_worker(job_path: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    job = json.loads(job_path.read_text())
    for task in job["tasks"]:
        config = transformers.AutoConfig.for_model(**task["config"])
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        weights = dict(np.load(task["weights"]))
        if config.tie_word_embeddings:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(a) for k, a in weights.items()},
                                                    strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{task['name']}: missing {missing}, unexpected {unexpected}")
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([task["ids"]])).logits[0].to(torch.float32).numpy()
        np.save(task["logits"], logits)
        if task.get("save_dir"):
            model.save_pretrained(task["save_dir"], max_shard_size=task["max_shard_size"])
        print(f"hf {task['name']}: {type(model).__name__}, logits {logits.shape}", flush=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


def run_hf(tasks: list[dict], work: Path, hf_python: str) -> None:
    job = work / "hf_job.json"
    job.write_text(json.dumps({"tasks": tasks}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOG_MF", "LOCAL_DEFAULT"))}
    subprocess.run([hf_python, str(Path(__file__).resolve()), "--hf-worker", str(job)], check=True, env=env,
                   cwd=work)


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------

def check_logits(name: str, got: np.ndarray, ref: np.ndarray, ids: list[int]) -> dict:
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    if not diff < 1e-4 * max(1.0, scale):
        raise RuntimeError(f"{name}: max |diff| {diff:.3g} (max |logit| {scale:.3g})")
    std = float(np.mean(np.std(ref, axis=-1)))
    argmax = np.argmax(ref, axis=-1)
    if not (std > 1.0 and len(set(argmax.tolist())) >= len(ids) // 2):
        raise RuntimeError(f"{name}: logits too flat (std {std:.3g}, argmax {argmax.tolist()})")
    return dict(max_abs_diff=diff, max_abs_logit=scale, mean_logit_std=std, distinct_argmax=len(set(argmax.tolist())))


def generate(out: Path, work: Path, hf_python: str) -> dict:
    import mindspore as ms

    from gen_llama_fixtures import TEXT

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(0)
    report = {}

    toks = {"qwen": write_tokenizer("qwen", out / "qwen2" / "tokenizer"),
            "llama3": write_tokenizer("llama3", out / "llama3" / "tokenizer")}
    ids = {kind: tok.encode(TEXT).ids for kind, tok in toks.items()}
    assert toks["qwen"].decode(ids["qwen"]) == TEXT and ids["llama3"][0] == toks["llama3"].token_to_id(
        "<|begin_of_text|>")
    special = {
        "qwen": dict(pad=toks["qwen"].token_to_id("<|endoftext|>"), bos=None,
                     eos=toks["qwen"].token_to_id("<|endoftext|>")),
        "llama3": dict(pad=toks["llama3"].token_to_id("<|reserved_special_token_0|>"),
                       bos=toks["llama3"].token_to_id("<|begin_of_text|>"),
                       eos=toks["llama3"].token_to_id("<|end_of_text|>")),
    }
    for kind in toks:
        assert special[kind]["pad"] not in ids[kind], "the pad id is masked out by MindFormers"
        report[f"tokenizer {kind}"] = dict(size=toks[kind].get_vocab_size(), ids=ids[kind],
                                           tokens=toks[kind].encode(TEXT).tokens)

    hf_tasks, pending = [], []

    # Legacy Qwen2 / Llama 3.1: real MindFormers logits ------------------------------------------------------------
    for name, v in LEGACY.items():
        kind = v["tokenizer"]
        vdir = out / name
        vdir.mkdir(parents=True, exist_ok=True)
        arch = "llama" if kind == "llama3" else "qwen2"
        sp = special[kind]
        w = hf_weights(v, qk_norm=False)
        params = legacy_params(v, w)
        kw = legacy_model_config(v, sp["pad"], sp["bos"] if sp["bos"] is not None else sp["eos"], sp["eos"])
        logits, net = legacy_logits(kw, params, ids[kind], sp["pad"])
        np.save(vdir / "logits.npy", logits)
        write_json(vdir / "tokens.json", {"text": TEXT, "ids": ids[kind]})
        params_written = save_net(net, vdir / "model.ckpt", work)
        assert [n for n, _ in params_written] == [p.name for p in net.get_parameters()]
        doc = {"seed": 0, "run_mode": "predict", "use_parallel": False, "load_checkpoint": "model.ckpt",
               "model": {"model_config": kw, "arch": {"type": "LlamaForCausalLM"}},
               "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1}}
        write_yaml(vdir / "config.yaml", doc,
                   f"# ms2gguf test fixture '{name}' - written by tests/gen_qwen_fixtures.py; do not edit by hand.\n"
                   "# model_config: exactly the LlamaConfig arguments the checkpoint's network was built with.\n")
        config = hf_config(v, arch, sp["pad"], sp["bos"], sp["eos"])
        if arch == "llama":
            write_json(vdir / "hf_config.json", config)     # the same model described the HF way (rope_scaling)
        np.savez(work / f"{name.replace('/', '_')}.npz", **w)
        hf_tasks.append(dict(name=name, config=config, weights=str(work / f"{name.replace('/', '_')}.npz"),
                             ids=ids[kind], logits=str(work / f"{name.replace('/', '_')}_hf.npy")))
        pending.append((name, logits, ids[kind]))
        report[name] = dict(params=params_written)

    # Qwen3: HF weights (and HF shards for the directory variant) ---------------------------------------------------
    for name, v in MCORE.items():
        w = hf_weights(v, qk_norm=True)
        sp = special["qwen"]
        config = hf_config(v, "qwen3", sp["pad"], sp["bos"], sp["eos"])
        stem = name.replace("/", "_")
        np.savez(work / f"{stem}.npz", **w)
        task = dict(name=name, config=config, weights=str(work / f"{stem}.npz"), ids=ids["qwen"],
                    logits=str(work / f"{stem}_hf.npy"))
        if v["shards"]:
            task.update(save_dir=str(work / f"{stem}_hf"), max_shard_size="250KB")
        hf_tasks.append(task)

    run_hf(hf_tasks, work, hf_python)

    for name, logits, tok_ids in pending:
        hf = np.load(work / f"{name.replace('/', '_')}_hf.npy")
        report[name].update(check_logits(name, logits, hf.astype(np.float64), tok_ids))

    ms_report = generate_qwen3(out, work, special["qwen"], ids["qwen"])
    report.update(ms_report)
    return report


def generate_qwen3(out: Path, work: Path, sp: dict, ids: list[int]) -> dict:
    """mcore checkpoints made by MindFormers' own conversion code, and HF logits."""
    import threading

    from mindformers.core.context.build_context import build_context
    from mindformers.utils.safetensors.convert_safetensors import convert_hf_safetensors_multiprocess

    from gen_llama_fixtures import TEXT

    build_context({"context": {"mode": 0, "device_target": "CPU"}, "use_legacy": False, "run_mode": "train",
                   "parallel": {}})
    report = {}
    for name, v in MCORE.items():
        stem = name.replace("/", "_")
        vdir = out / name
        if vdir.exists():
            shutil.rmtree(vdir)
        vdir.mkdir(parents=True)
        w = dict(np.load(work / f"{stem}.npz"))
        logits = np.load(work / f"{stem}_hf.npy")
        net, mf_config = qwen3_net(v, sp["pad"])
        entry = {}

        # 1. TrainingQwen3ForCausalLM.convert_weight_dict: the path that honours both layout flags
        converted = net.convert_weight_dict(dict(w), model_config=mf_config, qkv_dict={},
                                            condition=threading.Condition())
        # 2. WeightTemplate.get_mf_state_dict: the path of load_hf_checkpoint (2.1.0)
        template = {k: p.asnumpy() for k, p in net.template.get_mf_state_dict(dict(w)).items()}
        assert set(template) == set(converted), (sorted(template), sorted(converted))
        entry["template_equals_convert_weight_dict"] = {
            k: bool(np.array_equal(template[k], converted[k])) for k in sorted(converted) if "linear_" in k
            and k.startswith("decoder.layers.0.")}
        if not v["contiguous_attention"]:
            assert all(np.array_equal(template[k], converted[k]) for k in converted)
        set_net(net, converted)
        entry["params"] = save_net(net, vdir / "model.ckpt", work)
        np.save(vdir / "logits.npy", logits)
        write_json(vdir / "tokens.json", {"text": TEXT, "ids": ids})
        config = hf_config(v, "qwen3", sp["pad"], sp["bos"], sp["eos"])
        write_json(vdir / "config.json", config)
        if v["contiguous_attention"] or not v["interleaved_mlp"]:
            # an mcore training yaml carries only layout / runtime settings; the architecture is config.json's
            mc = {"qkv_concat": True, "use_contiguous_weight_layout_attention": v["contiguous_attention"],
                  "use_interleaved_weight_layout_mlp": v["interleaved_mlp"], "params_dtype": "float32",
                  "compute_dtype": "bfloat16", "layernorm_compute_dtype": "float32", "rotary_dtype": "float32"}
            doc = {"seed": 42, "run_mode": "finetune", "use_legacy": False, "pretrained_model_dir": ".",
                   "load_checkpoint": "model.ckpt", "trainer": {"type": "CausalLanguageModelingTrainer",
                                                                "model_name": "Qwen3"},
                   "model": {"model_config": mc},
                   "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1}}
            write_yaml(vdir / "config.yaml", doc,
                       f"# ms2gguf test fixture '{name}' - written by tests/gen_qwen_fixtures.py; do not edit.\n"
                       "# As MindFormers' mcore finetune_qwen3.yaml: layout flags here, architecture in "
                       "config.json (pretrained_model_dir).\n")

        if v["shards"]:
            # 3. the offline converter: HF shards -> MindFormers shards + param_name_map.json
            hf_dir = work / f"{stem}_hf"
            shards = vdir / "shards"
            convert_hf_safetensors_multiprocess(str(hf_dir), str(shards), net, mf_config)
            from safetensors.numpy import load_file
            got = {}
            for f in sorted(shards.glob("*.safetensors")):
                got.update(load_file(str(f)))
            assert set(got) == set(converted), (sorted(got), sorted(converted))
            assert all(np.array_equal(got[k], converted[k]) for k in got)
            write_json(shards / "config.json", config)
            for f in shards.iterdir():
                f.chmod(0o644)          # MindFormers writes them 0600 / 0640
            entry["shards"] = {f.name: f.stat().st_size for f in sorted(shards.iterdir())}
            entry["hf_shards"] = sorted(p.name for p in hf_dir.iterdir())
        entry.update(dict(max_abs_logit=float(np.abs(logits).max()),
                          mean_logit_std=float(np.mean(np.std(logits, axis=-1))),
                          distinct_argmax=len(set(np.argmax(logits, axis=-1).tolist()))))
        report[name] = entry
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=FIXTURES, help="fixtures root (default: %(default)s)")
    ap.add_argument("--hf-python", default="/work/venv-hf/bin/python",
                    help="python of a venv with torch==2.13.0, transformers, safetensors (default: %(default)s)")
    ap.add_argument("--hf-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, help="also write a JSON report")
    args = ap.parse_args(argv)
    if args.hf_worker:
        hf_worker(args.hf_worker)
        return 0
    from gen_llama_fixtures import setup_environment

    out = args.out.resolve()
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_qwen_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            report = generate(out, work, args.hf_python)
        finally:
            os.chdir(cwd)
    print(json.dumps({k: {kk: vv for kk, vv in e.items() if kk != "params"} for k, e in report.items()}, indent=1,
                     default=str))
    for family in ("qwen2", "llama3", "qwen3"):
        for f in sorted((out / family).rglob("*")):
            if f.is_file():
                print(f"  {f.relative_to(out)}  {f.stat().st_size} B  "
                      f"sha256:{hashlib.sha256(f.read_bytes()).hexdigest()[:16]}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
