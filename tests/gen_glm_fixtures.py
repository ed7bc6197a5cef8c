"""Generate the GLM fixtures (tests/fixtures/{chatglm,glm4,glm4_moe}) and Qwen2 in mcore naming (tests/fixtures/qwen2/
mcore*).

Like tests/gen_qwen_fixtures.py (read its docstring first): this script runs in the MindSpore + MindFormers venv and
calls itself in a torch + transformers venv for the HF parts (``--hf-worker``):

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_glm_fixtures.py [--hf-python /work/venv-hf/bin/python]

It needs the GLM-4 BPE tokenizer fixture (tests/gen_bpe_fixtures.py glm4) and the Qwen tokenizer fixture
(tests/gen_qwen_fixtures.py) first. What truth each fixture carries:

* chatglm/<v>: the legacy ``ChatGLM2ForConditionalGeneration`` (MindFormers 2.1.0 ``models/glm2``: ChatGLM2/3,
  GLM-4-9B). Weights are made in transformers' ``GlmForCausalLM`` (the HF form of GLM-4-9B, which llama.cpp's
  converter maps to arch ``chatglm``); its logits at every position are the truth. MindFormers' own HF -> MindFormers
  code writes the checkpoint: ``ChatGLM2ForConditionalGeneration.convert_weight_dict`` (fused ``query_key_value`` /
  ``dense_h_to_4h`` or, with ``qkv_concat: False``, ``wq/wk/wv`` + ``dense_left/dense_right``) or, for
  ``use_rearrange_rope: True``, ``convert_weight.attn_split`` (the only code that rearranges the Q/K rows) on the
  THUDM-named tensors. The converted weights are loaded into the real network, which is run on CPU as the second
  truth (it must agree with transformers at every position) and saved with ``mindspore.save_checkpoint``.
* glm4/mcore: mcore ``InferenceGlm4ForCausalLM`` (GLM-4-0414, inference only in 2.1.0) loads the HF safetensors of a
  transformers ``Glm4ForCausalLM`` with its own ``load_weights`` and is saved; logits from transformers.
* glm4/legacy: GLM-4-0414 trained with the legacy network: ``ChatGLM2ForConditionalGeneration`` with
  ``post_self_attn_layernorm`` / ``post_mlp_layernorm`` (sandwich norms), weights converted from ``Glm4ForCausalLM`` by
  ``convert_weight_dict``; both truths as for chatglm.
* glm4_moe/mcore: mcore ``InferenceGlm4MoeForCausalLM`` (GLM-4.5 style) loads a transformers ``Glm4MoeForCausalLM``;
  logits from transformers. Without q/k norms: MindFormers 2.1.0's loader does not map ``q_norm``/``k_norm``.
* qwen2/mcore: mcore ``InferenceQwen2ForCausalLM`` (``add_qkv_bias: True``, as configs/qwen2/predict_qwen2.yaml) loads a
  transformers ``Qwen2ForCausalLM``: contiguous ``[Q;K;V]`` / ``[gate;up]``. qwen2/mcore_interleaved: the same weights
  through the mcore training-layout converter (``TrainingQwen3ForCausalLM.convert_weight_dict``, per-KV-group QKV and
  row-interleaved gate/up, as the yaml's layout flags say), saved as the converter's tensors in the training network's
  shapes and dtypes (the converter returns the QKV bias as [rows, 1]). Logits from transformers.

MindFormers on CPU needs two stand-ins, neither of which changes the arithmetic: ChatGLM2's RMSNorm uses its own
square/mean/rsqrt path (the fused RmsNorm kernel is not registered on CPU), and the network is given an explicit float
causal mask. Its default mask (``use_past: False``, no ``attention_mask``) is uint8, and ``CoreAttention`` computes
``mask * -10000`` in uint8, which wraps to +240: every position attends to the (padded) future, and with two layers
even the last position is wrong. The generator checks that the default path gives exactly what the same causal mask
passed as uint8 gives; the float mask gives transformers' logits.

Deterministic: fixed seeds; weights drawn in the torch venv from numpy RandomState, rounded to the stored dtype. For
GLM-4-MoE the weights come from the one of 64 seeds whose routing is the most decisive (the largest gap between the
k-th and the next expert's choice score), so that quantization noise does not flip experts.
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
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
sys.path.insert(0, str(HERE))

SEQ_LENGTH = 64
TEXT = "Thomas baked 12 €, 你好! Every morning he walked to the river."
TEXT_MOE = "Thomas baked 12 €, 你好!"      # fewer tokens: fewer near-ties in the expert choice

# The SentencePiece tokenizer of ChatGLM2/3: a BPE model, with GLM's special tokens appended after its pieces
# (MindFormers glm3_tokenizer.py SPTokenizer; ids from the end of the SentencePiece vocabulary).
CHATGLM3_SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                     "<|observation|>"]
# THUDM/chatglm3-6b tokenizer_config.json chat_template
CHATGLM3_TEMPLATE = ("{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n "
                     "{{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
                     "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPM_STRINGS = ["Hello world", " Hello", "Thomas baked 12 €, 你好!", "a   b    c", "line1\nline2\n\nline4",
               "Привет, мир!", "naïve café", "12345 and 3.14", "  leading", "tabs\tand\ttabs", ""]

# chatglm: H hidden, nh heads, nkv = multi_query_group_num, hd = kv_channels, F = ffn_hidden_size, rows = padded vocab
CHATGLM = {
    # ChatGLM3-6B-like: SentencePiece tokenizer, fused query_key_value and dense_h_to_4h (the 2.1.0 default)
    "chatglm/fused": dict(seed=4001, tokenizer="chatglm3", H=64, nh=4, nkv=2, hd=16, F=96, layers=2, rows=512,
                          rope_ratio=1.0, eps=1e-5, concat=True, rearrange=False, dtype="float16"),
    # GLM-4-9B-like: tiktoken BPE tokenizer, rope_ratio != 1, qkv_concat False: wq/wk/wv and dense_left/dense_right
    "chatglm/split": dict(seed=4002, tokenizer="glm4", H=64, nh=4, nkv=2, hd=16, F=128, layers=2, rows=448,
                          rope_ratio=2.0, eps=1.5625e-07, concat=False, rearrange=False, dtype="bfloat16"),
    # use_rearrange_rope (YiZhao-12B): Q/K rows rearranged per head for a rotate_half rope
    "chatglm/rearranged": dict(seed=4003, tokenizer="glm4", H=64, nh=4, nkv=2, hd=16, F=96, layers=2, rows=448,
                               rope_ratio=1.0, eps=1e-5, concat=True, rearrange=True, dtype="bfloat16"),
}
GLM4 = {
    # GLM-4-0414 in mcore naming: head_dim 32 with 4 heads on H=64 (q width != hidden)
    "glm4/mcore": dict(seed=4101, tokenizer="glm4", H=64, nh=4, nkv=2, hd=32, F=96, layers=2, rows=448,
                       theta=10000.0, eps=1e-5, dtype="bfloat16"),
    # GLM-4-0414 trained with the legacy ChatGLM2 network (sandwich norms)
    "glm4/legacy": dict(seed=4102, tokenizer="glm4", H=64, nh=4, nkv=2, hd=16, F=96, layers=2, rows=448,
                        rope_ratio=1.0, eps=1e-5, concat=True, rearrange=False, dtype="float16"),
}
GLM4_MOE = {
    "glm4_moe/mcore": dict(seed=4201, tokenizer="glm4", H=64, nh=4, nkv=2, hd=32, F=96, Fm=32, E=8, k=2, shared=1,
                           dense=1, layers=3, scale=2.5, rows=448, theta=10000.0, eps=1e-5, dtype="bfloat16",
                           candidates=64, text=TEXT_MOE),
}
QWEN2_MCORE = {
    "qwen2/mcore": dict(seed=2101, tokenizer="qwen", H=64, nh=4, nkv=2, F=96, layers=2, rows=448, theta=1000000.0,
                        eps=1e-6, tie=False, layout="inference", dtype="bfloat16"),
    "qwen2/mcore_interleaved": dict(seed=2102, tokenizer="qwen", H=64, nh=8, nkv=2, F=128, layers=2, rows=448,
                                    theta=1000000.0, eps=1e-6, tie=False, layout="training", dtype="bfloat16"),
}


# ---------------------------------------------------------------------------------------------------------------
# HF configs (classic spellings: rope_theta at the top level, partial_rotary_factor)
# ---------------------------------------------------------------------------------------------------------------

def hf_config(name: str, v: dict, pad_id: int, eos_id: int) -> dict:
    common = dict(hidden_size=v["H"], num_hidden_layers=v["layers"], num_attention_heads=v["nh"],
                  num_key_value_heads=v["nkv"], vocab_size=v["rows"], rms_norm_eps=v["eps"],
                  max_position_embeddings=SEQ_LENGTH * 4, tie_word_embeddings=v.get("tie", False),
                  pad_token_id=pad_id, eos_token_id=eos_id, attention_dropout=0.0, hidden_act="silu",
                  torch_dtype="float32")
    family = name.split("/")[0]
    if family == "qwen2":
        return dict(common, architectures=["Qwen2ForCausalLM"], model_type="qwen2", intermediate_size=v["F"],
                    rope_theta=v["theta"], use_sliding_window=False, max_window_layers=v["layers"],
                    bos_token_id=None)
    theta = v.get("theta") or 10000.0 * v["rope_ratio"]
    glm = dict(common, head_dim=v["hd"], intermediate_size=v["F"], attention_bias=True, partial_rotary_factor=0.5,
               rope_theta=theta)
    if family == "chatglm":
        return dict(glm, architectures=["GlmForCausalLM"], model_type="glm")
    if family == "glm4":
        return dict(glm, architectures=["Glm4ForCausalLM"], model_type="glm4")
    return dict(glm, architectures=["Glm4MoeForCausalLM"], model_type="glm4_moe", moe_intermediate_size=v["Fm"],
                n_routed_experts=v["E"], num_experts_per_tok=v["k"], n_shared_experts=v["shared"],
                first_k_dense_replace=v["dense"], routed_scaling_factor=v["scale"], norm_topk_prob=True,
                n_group=1, topk_group=1, use_qk_norm=False, num_nextn_predict_layers=0)


# ---------------------------------------------------------------------------------------------------------------
# HF worker (torch venv): weights, logits, save_pretrained
# ---------------------------------------------------------------------------------------------------------------

def draw(name: str, shape: tuple, rs, hidden: int) -> np.ndarray:
    """Weights that give decisive attention, routing and logits: norms ~ 1 + N(0, 0.2), biases ~ N(0, 0.5) (large
    enough that a lost bias shows), embeddings ~ N(0, 1), lm_head ~ N(0, 2/sqrt(H)), other matrices (incl. 3-D experts,
    last axis = fan-in) ~ N(0, 0.8/sqrt(fan_in))."""
    if name.endswith("norm.weight"):
        return 1.0 + 0.2 * rs.standard_normal(shape)
    if name.endswith("e_score_correction_bias"):        # GLM-4.5's routing bias: added to sigmoid scores in (0, 1)
        return 0.1 * rs.standard_normal(shape)
    if name.endswith("bias"):
        return 0.5 * rs.standard_normal(shape)
    if name.endswith("embed_tokens.weight"):
        return rs.standard_normal(shape)
    if name == "lm_head.weight":
        return rs.normal(0.0, 2.0 / np.sqrt(hidden), size=shape)
    return rs.normal(0.0, 0.8 / np.sqrt(shape[-1]), size=shape)


def hf_worker(job_path: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    job = json.loads(job_path.read_text())
    for task in job["tasks"]:
        config = transformers.AutoConfig.for_model(**task["config"])
        config._attn_implementation = "eager"
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        model.eval()
        # MoE: of `candidates` seeds, the one whose routing is the most decisive (quantization noise must not flip a
        # token's experts)
        seeds = [task["seed"] + 97 * c for c in range(task.get("candidates", 1))]
        scored = [(routing_margin(model, weights, task["ids"]) if len(seeds) > 1 else 0.0, seed, weights)
                  for seed in seeds for weights in [hf_weights(model, config, seed, dtypes[task["dtype"]])]]
        margin, seed, weights = max(scored, key=lambda item: item[0])
        model.load_state_dict(weights, strict=True)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([task["ids"]])).logits[0].to(torch.float32).numpy()
        if len(seeds) > 1:
            Path(task["logits"]).with_suffix(".routing.json").write_text(json.dumps({"seed": seed, "margin": margin}))
        np.save(task["logits"], logits)
        np.savez(task["weights"], **{k: w.numpy() for k, w in weights.items()})
        if task.get("save_dir"):
            model.to(dtypes[task["dtype"]]).save_pretrained(task["save_dir"])
        print(f"hf {task['name']}: {type(model).__name__}, logits {logits.shape}", flush=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")


def hf_weights(model, config, seed, dtype):
    import torch

    rs = np.random.RandomState(seed)
    weights = {}
    for key, tensor in model.state_dict().items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue
        a = torch.from_numpy(draw(key, tuple(tensor.shape), rs, config.hidden_size).astype(np.float32))
        weights[key] = a.to(dtype).to(torch.float32)      # rounded to the stored dtype
    if config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def routing_margin(model, weights, ids):
    """The smallest gap, over tokens and MoE layers, between the k-th and (k+1)-th expert choice score (GLM-4.5:
    sigmoid(router logits) + correction bias), in units of the scores' spread."""
    import torch

    model.load_state_dict(weights, strict=True)
    margins = []

    def hook(module, args, _output):
        x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float32)
        choice = torch.sigmoid(torch.nn.functional.linear(x, module.weight)) + module.e_score_correction_bias
        top = torch.sort(choice, dim=-1, descending=True).values
        k = model.config.num_experts_per_tok
        margins.append(float(((top[:, k - 1] - top[:, k]) / choice.std()).min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if hasattr(m, "e_score_correction_bias")]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return min(margins)


def run_hf(tasks: list[dict], work: Path, hf_python: str) -> None:
    job = work / "hf_job.json"
    job.write_text(json.dumps({"tasks": tasks}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOG_MF", "LOCAL_DEFAULT", "RUN_MODE"))}
    subprocess.run([hf_python, str(Path(__file__).resolve()), "--hf-worker", str(job)], check=True, env=env, cwd=work)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------------

def write_chatglm3_tokenizer(folder: Path) -> dict:
    """A tiny ChatGLM3-style SentencePiece model, its tokenizer_config.json (as THUDM/chatglm3-6b ships it) and
    expected.json: MindFormers' own ChatGLM3Tokenizer's encodings of test strings and of a chat."""
    import gen_llama_fixtures
    from mindformers.models.glm2.glm3_tokenizer import ChatGLM3Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    # Llama's tokenizer recipe (gen_llama_fixtures.train_tokenizer) on its corpus, but without "people": its "eop"
    # would become a piece with the text of one of GLM's appended special tokens, and llama.cpp needs unique texts
    corpus = gen_llama_fixtures.CORPUS
    gen_llama_fixtures.CORPUS = corpus.replace("people", "folk")
    try:
        (folder / "tokenizer.model").write_bytes(gen_llama_fixtures.train_tokenizer())
    finally:
        gen_llama_fixtures.CORPUS = corpus
    config = {"added_tokens_decoder": {}, "chat_template": CHATGLM3_TEMPLATE, "clean_up_tokenization_spaces": False,
              "do_lower_case": False, "eos_token": "</s>", "model_max_length": 1000000000000, "pad_token": "<unk>",
              "padding_side": "left", "remove_space": False, "tokenizer_class": "ChatGLMTokenizer",
              "unk_token": "<unk>"}
    write_json(folder / "tokenizer_config.json", config)
    tok = ChatGLM3Tokenizer(str(folder / "tokenizer.model"))
    n = tok.tokenizer.sp_model.vocab_size()
    pieces = {tok.tokenizer.sp_model.id_to_piece(i) for i in range(n)}
    assert not pieces & set(CHATGLM3_SPECIALS), pieces & set(CHATGLM3_SPECIALS)
    specials = [[tok.get_command(t), t] for t in CHATGLM3_SPECIALS]
    assert [i for i, _ in specials] == list(range(n, n + len(specials)))
    # a conversation as MindFormers builds it (build_chat_input: [gMASK]sop, then role token + "\n" + content per
    # message, then <|assistant|>)
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"},
               {"role": "assistant", "content": "Hi!"}]
    chat = tok.build_chat_input("Name 3 colours.", history=history)["input_ids"][0].tolist()
    assert chat[:2] == tok.get_prefix_tokens() and chat[2] == tok.get_command("<|system|>"), chat
    expected = {"family": "chatglm3", "pieces": n, "specials": specials, "prefix": tok.get_prefix_tokens(),
                "strings": SPM_STRINGS, "ids": [tok.tokenizer.encode(s) for s in SPM_STRINGS],
                "chat": {"history": history, "query": "Name 3 colours.", "ids": chat},
                "generator": "tests/gen_glm_fixtures.py (MindFormers 2.1.0 ChatGLM3Tokenizer)"}
    body = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in expected.items())
    (folder / "expected.json").write_text("{\n" + body + "\n}\n", encoding="utf-8")
    return {"encode": lambda text: tok(text)["input_ids"], "pad": tok.pad_token_id, "eos": 2, "n": n + len(specials)}


def glm4_tokenizer() -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURES / "bpe" / "glm4" / "hf" / "tokenizer.json"))
    end = tok.token_to_id("<|endoftext|>")
    return {"encode": lambda text: tok.encode(text).ids, "pad": end, "eos": end, "n": tok.get_vocab_size()}


def qwen_tokenizer() -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"))
    end = tok.token_to_id("<|endoftext|>")
    return {"encode": lambda text: tok.encode(text).ids, "pad": end, "eos": end, "n": tok.get_vocab_size()}


# ---------------------------------------------------------------------------------------------------------------
# Legacy ChatGLM2ForConditionalGeneration (MindSpore venv)
# ---------------------------------------------------------------------------------------------------------------

def patch_for_cpu() -> None:
    """ChatGLM2RMSNorm picks the fused RmsNorm kernel (not on CPU) unless check_rmsnorm_big_kernel_valid() is false;
    its own path then needs the cast op it only creates for the kernel path."""
    import mindspore
    import mindspore.ops.operations as P
    import mindformers.models.glm2.glm2_modules as modules

    modules.check_rmsnorm_big_kernel_valid = lambda: False
    init = modules.ChatGLM2RMSNorm.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.cast = P.Cast()

    modules.ChatGLM2RMSNorm.__init__ = patched

    # use_rearrange_rope: CPU BatchMatMul cannot broadcast the [hd, hd] rotate_half swap mask against
    # [bs, seq, heads, hd]; ops.matmul computes the same product with broadcasting
    class BroadcastMatMul(mindspore.nn.Cell):
        def construct(self, x, y):
            return mindspore.ops.matmul(x, y)

    rope_init = modules.ChatGLM2RotaryEmbedding.__init__

    def rope_patched(self, *args, **kwargs):
        rope_init(self, *args, **kwargs)
        self.bmm_swap, self.k_bmm_swap = BroadcastMatMul(), BroadcastMatMul()

    modules.ChatGLM2RotaryEmbedding.__init__ = rope_patched
    modules.ChatGLM2RotaryEmbedding.shard = lambda self, *args, **kwargs: None     # shard strategies: unused here


def glm2_config_kwargs(name: str, v: dict, pad_id: int, eos_id: int, dtype: str) -> dict:
    """ChatGLM2Config arguments (what config.yaml records; configs/glm4/finetune_glm4_9b.yaml's keys)."""
    sandwich = name.startswith("glm4/")
    return dict(type="ChatGLM2Config", batch_size=1, num_layers=v["layers"], padded_vocab_size=v["rows"],
                hidden_size=v["H"], ffn_hidden_size=v["F"], kv_channels=v["hd"], num_attention_heads=v["nh"],
                seq_length=SEQ_LENGTH, hidden_dropout=0.0, attention_dropout=0.0, layernorm_epsilon=v["eps"],
                rope_ratio=v["rope_ratio"], rmsnorm=True, apply_residual_connection_post_layernorm=False,
                post_layer_norm=True, add_bias_linear=False, add_qkv_bias=True, multi_query_attention=True,
                multi_query_group_num=v["nkv"], apply_query_key_layer_scaling=True, attention_softmax_in_fp32=True,
                qkv_concat=v["concat"], mlp_concat=v["concat"], use_rearrange_rope=v["rearrange"],
                post_self_attn_layernorm=sandwich, post_mlp_layernorm=sandwich, use_past=False,
                use_flash_attention=False, block_size=16, num_blocks=1, eos_token_id=eos_id, pad_token_id=pad_id,
                param_init_type=dtype, compute_dtype="float32", layernorm_compute_type="float32",
                residual_dtype="float32", rotary_dtype="float32", checkpoint_name_or_path="")


def glm2_net(kw: dict):
    from mindformers.models.glm2 import ChatGLM2Config, ChatGLM2ForConditionalGeneration

    config = ChatGLM2Config(**{k: a for k, a in kw.items() if k != "type"})
    net = ChatGLM2ForConditionalGeneration(config)
    net.set_train(False)
    return net, config


def glm2_convert(v: dict, hf: dict, config) -> dict:
    """HF weights -> MindFormers names and layouts, by MindFormers' own code."""
    import multiprocessing

    from mindformers.models.glm2 import ChatGLM2ForConditionalGeneration

    if not v["rearrange"]:
        converted = ChatGLM2ForConditionalGeneration.convert_weight_dict(
            dict(hf), model_config=config, qkv_dict=multiprocessing.Manager().dict(),
            condition=multiprocessing.Condition())
        return {k: (a.asnumpy() if hasattr(a, "asnumpy") else np.asarray(a)) for k, a in converted.items()}
    return glm2_convert_rearranged(hf, config)


class _TorchLike:
    """What convert_weight.attn_split reads of a torch tensor (dtype, numpy()), for float32 numpy data."""

    def __init__(self, array):
        self.array, self.dtype = array, "float32"

    def numpy(self):
        return self.array


def glm2_convert_rearranged(hf: dict, config) -> dict:
    """use_rearrange_rope: MindFormers' convert_weight.py (convert_pt_to_ms) on THUDM ChatGLM names. It imports torch
    and transformers at module level for the HF model loading we do not use; stub them (the venv has neither)."""
    import mindspore as ms

    for module in ("torch", "transformers"):
        stub = types.ModuleType(module)
        stub.bfloat16, stub.float32, stub.AutoModel = "bfloat16", "float32", None
        sys.modules.setdefault(module, stub)
    from mindformers.models.glm2 import convert_weight

    thudm = {"transformer.embedding.embedding_weight": hf["model.embed_tokens.weight"],
             "transformer.encoder.final_layernorm.weight": hf["model.norm.weight"],
             "transformer.output_layer.weight": hf["lm_head.weight"]}
    for i in range(config.num_layers):
        s, m = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            thudm[m + f"self_attention.query_key_value.{kind}"] = np.concatenate(
                [hf[s + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
        thudm[m + "self_attention.dense.weight"] = hf[s + "self_attn.o_proj.weight"]
        thudm[m + "mlp.dense_h_to_4h.weight"] = hf[s + "mlp.gate_up_proj.weight"]
        thudm[m + "mlp.dense_4h_to_h.weight"] = hf[s + "mlp.down_proj.weight"]
        thudm[m + "input_layernorm.weight"] = hf[s + "input_layernorm.weight"]
        thudm[m + "post_attention_layernorm.weight"] = hf[s + "post_attention_layernorm.weight"]
    params = [{"name": k, "data": _TorchLike(a) if "query_key_value" in k else a} for k, a in thudm.items()]
    convert_weight.attn_split(params, config, ms.float32)
    out = {}
    for item in params:
        data = item["data"]
        out[item["name"]] = data.asnumpy() if hasattr(data, "asnumpy") else np.asarray(data)
    return out


def glm2_logits(net, ids: list[int], pad_id: int, rows: int) -> tuple[np.ndarray, float]:
    """Logits at every position with an explicit float causal mask, and how far the network's default path is from
    the same mask given as uint8 (0 when its default mask is that uint8 mask)."""
    import mindspore as ms

    padded = np.full((1, SEQ_LENGTH), pad_id, dtype=np.int32)
    padded[0, :len(ids)] = ids
    mask = np.triu(np.ones((SEQ_LENGTH, SEQ_LENGTH), np.float32), 1)[None, None]     # 1 = masked

    def run(**kwargs):
        return net(ms.Tensor(padded), **kwargs)[0].asnumpy().reshape(SEQ_LENGTH, rows)

    logits = run(attention_mask=ms.Tensor(mask))
    default_vs_uint8 = float(np.max(np.abs(run() - run(attention_mask=ms.Tensor(mask.astype(np.uint8))))))
    return logits[:len(ids)].astype(np.float32), default_vs_uint8


def generate_glm2(name: str, v: dict, tok: dict, ids: list[int], work: Path, out: Path) -> dict:
    import mindspore as ms

    vdir = out / name
    hf = dict(np.load(work / f"{stem(name)}.npz"))
    ref = np.load(work / f"{stem(name)}_hf.npy")
    kw32 = glm2_config_kwargs(name, v, tok["pad"], tok["eos"], "float32")
    net, config = glm2_net(kw32)
    converted = glm2_convert(v, hf, config)
    set_net(net, converted)
    logits, default_vs_uint8 = glm2_logits(net, ids, tok["pad"], v["rows"])
    entry = check_logits(name, logits, ref, ids)
    assert default_vs_uint8 == 0.0, f"{name}: the default mask is not the uint8 causal mask ({default_vs_uint8})"
    entry["default_mask_is_uint8"] = True

    kw = glm2_config_kwargs(name, v, tok["pad"], tok["eos"], v["dtype"])
    store, _ = glm2_net(kw)
    set_net(store, converted)
    append = None
    if v["rearrange"]:
        # convert_weight.py keeps THUDM's rotary_pos_emb.inv_freq buffer in its output; a checkpoint converted that
        # way and never re-saved by the network still has it
        inv_freq = 1.0 / (10000 * v["rope_ratio"]) ** (np.arange(0, v["hd"] // 2, 2, dtype=np.float32) / (v["hd"] // 2))
        append = {"transformer.rotary_pos_emb.inv_freq": ms.Tensor(inv_freq.astype(np.float32))}
    entry["params"] = save_net(store, vdir / "model.ckpt", work, append)
    np.save(vdir / "logits.npy", logits)
    write_json(vdir / "tokens.json", {"text": TEXT, "ids": ids})
    doc = {"seed": 0, "run_mode": "finetune", "use_parallel": False, "load_checkpoint": "model.ckpt",
           "model": {"model_config": kw, "arch": {"type": "ChatGLM2ForConditionalGeneration"}},
           "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1}}
    write_yaml(vdir / "config.yaml", doc,
               f"# ms2gguf test fixture '{name}' - written by tests/gen_glm_fixtures.py; do not edit by hand.\n"
               "# model_config: exactly the ChatGLM2Config arguments the checkpoint's network was built with.\n")
    return entry


# ---------------------------------------------------------------------------------------------------------------
# mcore (MindSpore venv): inference networks that load HF weights; the training-layout converter
# ---------------------------------------------------------------------------------------------------------------

def mcore_net(name: str, config_json: dict, dtype: str):
    family = name.split("/")[0]
    kw = {k: a for k, a in config_json.items() if k not in ("architectures", "model_type", "torch_dtype")}
    kw.update(params_dtype=dtype, compute_dtype=dtype, layernorm_compute_dtype="float32", seq_length=SEQ_LENGTH)
    if family == "qwen2":
        from mindformers.models.qwen2.configuration_qwen2 import Qwen2Config as Config
        from mindformers.models.qwen2.modeling_qwen2_infer import InferenceQwen2ForCausalLM as Net
        kw["add_qkv_bias"] = True       # as configs/qwen2/predict_qwen2.yaml: Qwen2's config.json does not say
    elif family == "glm4":
        from mindformers.models.glm4.configuration_glm4 import Glm4Config as Config
        from mindformers.models.glm4.modeling_glm4_infer import InferenceGlm4ForCausalLM as Net
    else:
        from mindformers.models.glm4_moe.configuration_glm4_moe import Glm4MoeConfig as Config
        from mindformers.models.glm4_moe.modeling_glm4_moe_infer import InferenceGlm4MoeForCausalLM as Net
    return Net(Config(**kw))


def generate_mcore(name: str, v: dict, ids: list[int], config_json: dict, work: Path, out: Path) -> dict:
    import mindspore as ms

    vdir = out / name
    ref = np.load(work / f"{stem(name)}_hf.npy")
    hf = dict(np.load(work / f"{stem(name)}.npz"))
    if v.get("layout") == "training":
        params, dtypes = qwen2_training_layout(v, hf, config_json)
        entry = {"params": save_dict(params, dtypes, vdir / "model.ckpt", work)}
    else:
        net = mcore_net(name, config_json, v["dtype"])
        names = [p.name for p in net.get_parameters()]
        net.load_weights(str(work / f"{stem(name)}_hf"))
        loaded = {p.name: p.astype(ms.float32).asnumpy() for p in net.get_parameters()}
        check_mcore_load(name, v, hf, loaded)
        entry = {"params": save_net(net, vdir / "model.ckpt", work)}
        assert [n for n, _ in entry["params"]] == names
    np.save(vdir / "logits.npy", ref)
    write_json(vdir / "tokens.json", {"text": v.get("text", TEXT), "ids": ids})
    write_json(vdir / "config.json", config_json)
    if v.get("layout") == "training":
        mc = {"qkv_concat": True, "use_contiguous_weight_layout_attention": False,
              "use_interleaved_weight_layout_mlp": True, "params_dtype": v["dtype"], "compute_dtype": "bfloat16"}
        header = "# As an mcore finetune yaml: layout flags here, architecture in config.json (pretrained_model_dir).\n"
        doc = {"seed": 42, "run_mode": "finetune", "use_legacy": False, "pretrained_model_dir": ".",
               "load_checkpoint": "model.ckpt", "model": {"model_config": mc}}
    else:
        mc = {"compute_dtype": v["dtype"], "layernorm_compute_dtype": "float32", "softmax_compute_dtype": "float32",
              "rotary_dtype": v["dtype"], "params_dtype": v["dtype"]}
        if name.startswith("qwen2"):
            mc["add_qkv_bias"] = True
        header = "# As MindFormers' configs/*/predict_*.yaml: the network loads pretrained_model_dir's HF weights.\n"
        doc = {"seed": 0, "run_mode": "predict", "use_legacy": False, "load_ckpt_format": "ckpt",
               "pretrained_model_dir": ".", "load_checkpoint": "model.ckpt", "model": {"model_config": mc}}
    write_yaml(vdir / "config.yaml", doc, f"# ms2gguf test fixture '{name}' - written by tests/gen_glm_fixtures.py; "
               "do not edit by hand.\n" + header)
    routing = work / f"{stem(name)}_hf.routing.json"
    if routing.exists():
        entry["routing"] = json.loads(routing.read_text())
    entry.update(max_abs_logit=float(np.abs(ref).max()), mean_logit_std=float(np.mean(np.std(ref, axis=-1))),
                 distinct_argmax=len(set(np.argmax(ref, axis=-1).tolist())))
    return entry


def check_mcore_load(name: str, v: dict, hf: dict, loaded: dict) -> None:
    """The inference networks' fused tensors, as load_weights builds them at TP=1: contiguous [Q;K;V] (+ bias) and
    [gate;up] (GLM-4: HF's gate_up_proj as it is); routed experts [E, H, 2Fm] = per expert [gate | up] transposed."""
    s, m = "model.layers.0.", "decoder.layers.0."
    qkv = np.concatenate([hf[s + f"self_attn.{n}_proj.weight"] for n in "qkv"])
    assert np.array_equal(loaded[m + "self_attention.linear_qkv.weight"], qkv.astype(np.float32)), name
    bias = np.concatenate([hf[s + f"self_attn.{n}_proj.bias"] for n in "qkv"])
    assert np.array_equal(loaded[m + "self_attention.linear_qkv.bias"], bias), name
    fc1 = hf.get(s + "mlp.gate_up_proj.weight")
    if fc1 is None:
        fc1 = np.concatenate([hf[s + "mlp.gate_proj.weight"], hf[s + "mlp.up_proj.weight"]])
    assert np.array_equal(loaded[m + "mlp.linear_fc1.weight"], fc1), name
    if name.startswith("glm4_moe"):
        layer = v["dense"]
        gate_up = hf[f"model.layers.{layer}.mlp.experts.gate_up_proj"]        # [E, 2Fm, H] (transformers 5)
        w1 = loaded[f"decoder.layers.{layer}.mlp.experts.weight1"]            # [E, H, 2Fm]
        assert np.array_equal(w1, gate_up.transpose(0, 2, 1)), name


def qwen2_training_layout(v: dict, hf: dict, config_json: dict) -> dict:
    """Qwen2 weights in the mcore training layout, by MindFormers' own training converter (the Qwen3 one: 2.1.0 has no
    Qwen2 training network), with the layout flags of the fixture's yaml."""
    import threading

    from mindformers.models.qwen3.configuration_qwen3 import Qwen3Config
    from mindformers.models.qwen3.modeling_qwen3_train import TrainingQwen3ForCausalLM

    config = Qwen3Config(vocab_size=v["rows"], hidden_size=v["H"], intermediate_size=v["F"],
                         num_hidden_layers=v["layers"], num_attention_heads=v["nh"], num_key_value_heads=v["nkv"],
                         head_dim=v["H"] // v["nh"], max_position_embeddings=config_json["max_position_embeddings"],
                         rms_norm_eps=v["eps"], rope_theta=v["theta"], tie_word_embeddings=v["tie"],
                         seq_length=SEQ_LENGTH, attention_bias=True, qkv_concat=True,
                         use_contiguous_weight_layout_attention=False, use_interleaved_weight_layout_mlp=True,
                         params_dtype=v["dtype"], compute_dtype="float32", layernorm_compute_dtype="float32")
    net = TrainingQwen3ForCausalLM(config)
    converted = net.convert_weight_dict(dict(hf), model_config=config, qkv_dict={}, condition=threading.Condition())
    order = [p.name for p in net.get_parameters()]
    assert set(converted) <= set(order), sorted(set(converted) - set(order))
    assert not [k for k in converted if "layernorm" in k and ("q_" in k or "k_" in k)]
    net_params = {p.name: p for p in net.get_parameters()}
    params = {}
    for k in order:
        if k in converted:
            a = np.asarray(converted[k].asnumpy() if hasattr(converted[k], "asnumpy") else converted[k])
            # MindFormers 2.1.0 returns the fused QKV bias as [rows, 1] (the network's parameter is [rows]; its
            # WeightTemplate path drops the bias altogether): keep the values, in the network's shape
            assert a.size == int(np.prod(net_params[k].shape)), (k, a.shape, net_params[k].shape)
            params[k] = a.reshape(net_params[k].shape)
    return params, {k: net_params[k].dtype for k in params}


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def stem(name: str) -> str:
    return name.replace("/", "_")


def set_net(net, params: dict) -> None:
    """Set every network parameter from numpy; only the paged-attention KV caches may be missing (they stay zero)."""
    import mindspore as ms

    names = {p.name for p in net.get_parameters()}
    extra = sorted(set(params) - names)
    missing = sorted(n for n in names - set(params) if "paged_attention_mgr" not in n)
    if extra or missing:
        raise RuntimeError(f"net-only {missing}, converted-only {extra}")
    for p in net.get_parameters():
        if p.name in params:
            a = np.asarray(params[p.name], dtype=np.float32)
            if tuple(p.shape) != a.shape:
                raise RuntimeError(f"{p.name}: net {tuple(p.shape)} vs converted {a.shape}")
            p.set_data(ms.Tensor(a, dtype=p.dtype))


def save_net(net, dest: Path, work: Path, append=None) -> list:
    from gen_llama_fixtures import read_ckpt, save_ckpt

    save_ckpt(net, dest, work, append_dict=append)
    back = read_ckpt(dest)
    want = {p.name: p for p in net.get_parameters()}
    assert list(back)[:len(want)] == list(want), (list(back), list(want))
    for name, (dtype, value) in back.items():
        if name in want:
            assert dtype == str(want[name].dtype), (name, dtype, want[name].dtype)
    return [(k, list(np.shape(val))) for k, (_, val) in back.items()]


def save_dict(params: dict, dtypes: dict, dest: Path, work: Path) -> list:
    """Converted tensors in the network's own parameter dtypes, saved as a list (what the converter writes)."""
    import mindspore as ms

    from gen_llama_fixtures import read_ckpt, save_ckpt

    items = [{"name": k, "data": ms.Tensor(a, dtype=dtypes[k])} for k, a in params.items()]
    save_ckpt(items, dest, work)
    return [(k, list(np.shape(val))) for k, (_, val) in read_ckpt(dest).items()]


def check_logits(name: str, got: np.ndarray, ref: np.ndarray, ids: list[int]) -> dict:
    diff = float(np.max(np.abs(got.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    if not diff < 1e-4 * max(1.0, scale):
        raise RuntimeError(f"{name}: MindFormers vs transformers max |diff| {diff:.3g} (max |logit| {scale:.3g})")
    std = float(np.mean(np.std(ref, axis=-1)))
    argmax = np.argmax(ref, axis=-1)
    if not (std > 1.0 and len(set(argmax.tolist())) >= len(ids) // 3):
        raise RuntimeError(f"{name}: logits too flat (std {std:.3g}, argmax {argmax.tolist()})")
    return dict(max_abs_diff_mindformers_vs_transformers=diff, max_abs_logit=scale, mean_logit_std=std,
                distinct_argmax=len(set(argmax.tolist())))


def write_yaml(path: Path, doc: dict, header: str) -> None:
    import yaml

    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), encoding="utf-8")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------

def generate(out: Path, work: Path, hf_python: str) -> dict:
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(0)
    patch_for_cpu()
    toks = {"chatglm3": write_chatglm3_tokenizer(out / "chatglm" / "tokenizer"), "glm4": glm4_tokenizer(),
            "qwen": qwen_tokenizer()}
    legacy = {**CHATGLM, "glm4/legacy": GLM4["glm4/legacy"]}
    mcore = {"glm4/mcore": GLM4["glm4/mcore"], **GLM4_MOE, **QWEN2_MCORE}
    tasks, configs, ids = [], {}, {}
    for name, v in {**legacy, **mcore}.items():
        tok = toks[v["tokenizer"]]
        ids[name] = tok["encode"](v.get("text", TEXT))
        assert len(ids[name]) <= SEQ_LENGTH and tok["pad"] not in ids[name] and tok["n"] <= v["rows"]
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        configs[name] = hf_config(name, v, tok["pad"], tok["eos"])
        task = dict(name=name, config=configs[name], seed=v["seed"], dtype=v["dtype"], ids=ids[name],
                    logits=str(work / f"{stem(name)}_hf.npy"), weights=str(work / f"{stem(name)}.npz"),
                    candidates=v.get("candidates", 1))
        if name in mcore and v.get("layout") != "training":
            task["save_dir"] = str(work / f"{stem(name)}_hf")
        tasks.append(task)
    run_hf(tasks, work, hf_python)

    report = {}
    for name, v in legacy.items():
        report[name] = generate_glm2(name, v, toks[v["tokenizer"]], ids[name], work, out)
        if name.startswith("chatglm/"):
            write_json(out / name / "hf_config.json", configs[name])      # the same model described the HF way
    from mindformers.core.context.build_context import build_context

    os.environ["RUN_MODE"] = "predict"      # the mcore GLM-4 / Qwen2 networks exist for inference only
    build_context({"use_legacy": False, "context": {"mode": 1, "device_target": "CPU"}, "parallel": {},
                   "parallel_config": {}})
    for name, v in mcore.items():
        report[name] = generate_mcore(name, v, ids[name], configs[name], work, out)
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
    with tempfile.TemporaryDirectory(prefix="gen_glm_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            report = generate(out, work, args.hf_python)
        finally:
            os.chdir(cwd)
    print(json.dumps({k: {kk: vv for kk, vv in e.items() if kk != "params"} for k, e in report.items()}, indent=1,
                     default=str))
    for family in ("chatglm", "glm4", "glm4_moe", "qwen2/mcore", "qwen2/mcore_interleaved"):
        for f in sorted((out / family).rglob("*")):
            if f.is_file():
                print(f"  {f.relative_to(out)}  {f.stat().st_size} B  "
                      f"sha256:{hashlib.sha256(f.read_bytes()).hexdigest()[:16]}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
