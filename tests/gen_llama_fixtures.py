"""Generate the tiny MindFormers Llama fixtures in tests/fixtures/llama/.

The fixtures let the tests compare llama.cpp's logits on a converted GGUF with logits computed by the *real*
MindFormers model. This script needs MindSpore and MindFormers; the tests that use its output do not.

Environment (see shared/reference/fixture-env.md): Python 3.11, ``mindspore==2.10.0`` (CPU wheel),
``mindformers==2.1.0`` installed with ``pip install --no-deps -r fixture-env/requirements-mf.txt``,
``numpy==1.26.4`` (MindSpore's bfloat16 support breaks with numpy 2.x), ``sentencepiece``, ``PyYAML``.

Regenerate (from the repository root; takes well under a minute on CPU):

    GLOG_v=3 /work/venv-mf/bin/python tests/gen_llama_fixtures.py

``--out DIR`` writes somewhere else (default: tests/fixtures/llama next to this file). The script runs MindFormers
from a temporary working directory and points its logs there, so nothing lands in the repository except the
fixtures.

Everything is deterministic: the tokenizer is trained single-threaded on a corpus embedded below, and every weight
comes from ``numpy.random.RandomState`` with a fixed per-variant seed and is loaded into the network explicitly
(MindSpore's initialisers are never relied on). Re-running produces byte-identical files.

What it writes, per variant ``<v>`` (see ``VARIANTS``):

* ``<v>/model.ckpt``   - ``mindspore.save_checkpoint`` of a ``LlamaForCausalLM`` built with the variant's
  ``param_init_type``, so names, layouts and per-tensor dtypes are exactly what MindFormers 2.1.0 writes
  (norms stay float32 in bf16/f16 checkpoints);
* ``<v>/config.yaml``  - a MindFormers-style yaml with the values the model was built with;
* ``<v>/tokens.json``  - ``{"text", "ids"}``: the tokenizer's encoding (with BOS) of ``TEXT`` (k256: ``TEXT_LONG``);
* ``<v>/logits.npy``   - float32 ``[n_tokens, vocab_rows]``: MindFormers' logits at every input position;
* ``mha/model_train.ckpt`` - the mha weights plus optimizer / training entries (``adam_m.*``, ``global_step``, ...);
* ``tokenizer/tokenizer.model`` + ``tokenizer/tokenizer_config.json``.

How the logits are obtained: ``LlamaForCausalLM.construct`` only drops the last token (``input_ids[:, :-1]``) and
returns a loss in *training* mode. In eval mode (``net.set_train(False)``, ``use_past=False``, no
``batch_valid_length``, ``RUN_MODE`` unset) it feeds ``input_ids`` unchanged and returns ``(logits, tokens,
input_mask)`` with logits for every position. The input must be exactly ``(1, seq_length)``, because the causal
mask is built for ``seq_length``; the ids are therefore right-padded with ``pad_token_id`` (0 = ``<unk>``), whose
key positions the mask also hides, and only the first ``n_tokens`` rows are kept. Causality makes those rows
independent of the padding. Every variant's logits are checked against an independent float64 NumPy forward pass
(HF ``rotate_half`` rope, RMSNorm, SwiGLU, GQA) of the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "fixtures" / "llama"

# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

# Small corpus: mostly English, plus a few lines in other scripts so the vocabulary holds some non-Latin pieces.
# Characters below the coverage threshold (and any character not in the corpus, e.g. "€") go to byte fallback.
CORPUS_EN = """\
Once upon a time, in a small village by the river, there lived an old baker named Thomas.
Every morning he woke up before the sun and baked bread for the whole village.
The children loved his sweet rolls, and the farmers bought his heavy brown loaves.
One winter the river froze, and the mill could not grind any flour.
Thomas walked 12 miles through the snow to the next town to buy flour for his neighbours.
When he came back, the people of the village cheered and thanked him.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
In 2024 the village had 345 people, 78 cows and 9 horses.
Hello world! How are you today? I am fine, thank you very much.
"""
CORPUS_OTHER = """\
Привет, мир! Как дела сегодня? Это маленький тест.
Γειά σου κόσμε! Καλημέρα σε όλους.
你好，世界！今天天气很好。我们一起去公园吧。
こんにちは世界。ありがとうございます。
مرحبا بالعالم
"""
CORPUS = CORPUS_EN * 3 + CORPUS_OTHER * 2

TOKENIZER_VOCAB = 480

# The test sentence: merged English pieces, split digits, CJK pieces, and "€" (absent from the corpus, so it is
# encoded as the three byte-fallback pieces <0xE2><0x82><0xAC>).
TEXT = "Thomas baked 12 €, 你好!"
# k256's longer text (49 ids with BOS): TEXT plus an English sentence with digits and a Cyrillic one, so that argmax
# agreement of quantized models is measured over enough positions to mean something.
TEXT_LONG = TEXT + " Every morning he walked 345 miles to the river. Привет, мир!"

# Hugging Face Llama-2-chat template (meta-llama/Llama-2-7b-chat-hf tokenizer_config.json).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


def train_tokenizer() -> bytes:
    """Train a Llama-like SentencePiece BPE model; return the serialized model."""
    import sentencepiece as spm

    model = io.BytesIO()
    # Llama's own settings where they matter for llama.cpp (fixture-env.md): llama.cpp ignores the SP normalizer,
    # so use "identity" and keep whitespace as is; byte fallback and split digits as in Llama.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=TOKENIZER_VOCAB,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        max_sentence_length=4192,
        minloglevel=2,
    )
    return model.getvalue()


def tokenizer_config() -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 4096,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": LLAMA2_CHAT_TEMPLATE,
    }


# ----------------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------------

SEQ_LENGTH = 32  # network input length (unless a variant sets seq_length); the token ids are right-padded to it

# k256's lm_head = scale * E[successor] + noise * N(0, 1) (see make_weights).
BIGRAM_SCALE, BIGRAM_NOISE = 0.04, 0.08

# vocab_size "tok" = tokenizer size; "padded" = rounded up to a multiple of 64, plus 64.
# Exactly one of intermediate_size / multiple_of(+ffn_dim_multiplier) describes the FFN size.
VARIANTS: dict[str, dict] = {
    "mha": dict(
        seed=1001, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=None, qkv_concat=False,
        multiple_of=32, ffn_dim_multiplier=None, intermediate_size=None,
        rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=2048, vocab="tok", param_init_type="float32",
    ),
    "gqa_fused": dict(
        seed=1002, hidden_size=64, num_layers=2, num_heads=8, n_kv_heads=2, qkv_concat=True,
        intermediate_size=160, embed_std=0.002,
        rms_norm_eps=1e-6, theta=500000.0, max_position_embedding=4096, vocab="tok", param_init_type="float32",
    ),
    "padded_vocab": dict(
        seed=1003, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2, qkv_concat=False,
        multiple_of=16, ffn_dim_multiplier=0.75, intermediate_size=None,
        rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=2048, vocab="padded", param_init_type="float32",
    ),
    "bf16": dict(
        seed=1004, hidden_size=64, num_layers=2, num_heads=8, n_kv_heads=4, qkv_concat=False,
        intermediate_size=128,
        rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=2048, vocab="tok", param_init_type="bfloat16",
    ),
    "k256": dict(
        seed=1005, hidden_size=256, num_layers=2, num_heads=4, n_kv_heads=2, qkv_concat=False,
        intermediate_size=512,
        rms_norm_eps=1e-5, theta=10000.0, max_position_embedding=4096, vocab="tok", param_init_type="float16",
        text=TEXT_LONG, seq_length=64, bigram=(BIGRAM_SCALE, BIGRAM_NOISE),
    ),
}


def ffn_size(v: dict) -> int:
    """MindFormers LlamaFeedForward's FFN size (llama_layer.py; mindformers-layouts.md section 7.2)."""
    if v.get("intermediate_size") is not None:
        return v["intermediate_size"]
    hidden_dim = 4 * v["hidden_size"]
    if v.get("ffn_dim_multiplier") is not None:
        hidden_dim = int((v["ffn_dim_multiplier"] + 0.01) * hidden_dim)
    hidden_dim = int(2 * hidden_dim / 3)
    m = v["multiple_of"]
    return m * ((hidden_dim + m - 1) // m)


def vocab_rows(v: dict, n_pieces: int) -> int:
    if v["vocab"] == "tok":
        return n_pieces
    return -(-n_pieces // 64) * 64 + 64


def model_config_kwargs(v: dict, vocab_size: int, param_init_type: str) -> dict:
    """LlamaConfig keyword arguments (also what config.yaml records)."""
    kw = dict(
        type="LlamaConfig",
        batch_size=1,
        seq_length=v.get("seq_length", SEQ_LENGTH),
        hidden_size=v["hidden_size"],
        num_layers=v["num_layers"],
        num_heads=v["num_heads"],
        n_kv_heads=v["n_kv_heads"],
        vocab_size=vocab_size,
    )
    if v.get("intermediate_size") is not None:
        kw["intermediate_size"] = v["intermediate_size"]
    else:
        kw["multiple_of"] = v["multiple_of"]
        kw["ffn_dim_multiplier"] = v["ffn_dim_multiplier"]
    kw.update(
        rms_norm_eps=v["rms_norm_eps"],
        theta=v["theta"],
        max_position_embedding=v["max_position_embedding"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        ignore_token_id=-100,
        qkv_concat=v["qkv_concat"],
        qkv_has_bias=False,
        tie_word_embeddings=False,
        extend_method="None",
        scaling_factor=1.0,
        use_past=False,
        use_flash_attention=False,
        # CPU workarounds, both numerically the same operation as the defaults: the fused RmsNorm kernel is not
        # registered on CPU, and CPU BatchMatMul cannot broadcast the [hd, hd] rotate_half swap mask against
        # [bs, heads, seq, hd], so use MindFormers' slice-based rotate_half instead.
        fused_rms_norm=False,
        use_rope_slice=True,
        compute_dtype="float32",
        layernorm_compute_type="float32",
        softmax_compute_type="float32",
        rotary_dtype="float32",
        param_init_type=param_init_type,
        checkpoint_name_or_path="",
    )
    return kw


# ----------------------------------------------------------------------------------------------------------------
# Weights (HF layout, numpy)
# ----------------------------------------------------------------------------------------------------------------

def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 / float16 value (ties to even), returned as float32."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        u = a.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    raise ValueError(dtype)


def make_weights(v: dict, V: int) -> dict[str, np.ndarray]:
    """Random weights in HF layout (separate q/k/v and gate/up; rope rows in rotate_half order), float32.

    Scales are chosen so that attention is neither uniform nor one-hot and the logits have a std of about 2:
    projections ~ N(0, 0.8/sqrt(fan_in)), embeddings ~ N(0, embed_std = 1), lm_head ~ N(0, 2/sqrt(H)),
    norms ~ 1 + N(0, 0.2). A variant may set a tiny embed_std so that mean(x^2) at the first RMSNorm is of the
    order of rms_norm_eps: then a wrong epsilon in the GGUF changes the logits visibly, not just the metadata.

    A variant with ``bigram=(scale, noise)`` gets peaky logits like a trained model's instead of random ones, so that
    quantization noise does not flip the argmax at random: lm_head = scale * E[succ] + noise * N(0, 1), with E the
    token embedding and succ a fixed permutation of the vocabulary. Since the layers add only about a quarter of
    the embedding's norm to the residual stream, logit j is large when the current token is succ[j] - a bigram
    model - while attention and FFN still move the logits (by about a third of max |logit| if they are removed).
    """
    rs = np.random.RandomState(v["seed"])
    H, nh = v["hidden_size"], v["num_heads"]
    nkv = v["n_kv_heads"] or nh
    hd = H // nh
    F = ffn_size(v)

    def lin(out_dim, in_dim, gain=0.8):
        return rs.normal(0.0, gain / np.sqrt(in_dim), size=(out_dim, in_dim))

    def norm(dim):
        return 1.0 + 0.2 * rs.standard_normal(dim)

    w = {"tok_embeddings": v.get("embed_std", 1.0) * rs.standard_normal((V, H))}
    for i in range(v["num_layers"]):
        p = f"layers.{i}."
        w[p + "attention_norm"] = norm(H)
        w[p + "wq"] = lin(nh * hd, H)
        w[p + "wk"] = lin(nkv * hd, H)
        w[p + "wv"] = lin(nkv * hd, H)
        w[p + "wo"] = lin(H, nh * hd)
        w[p + "ffn_norm"] = norm(H)
        w[p + "w1"] = lin(F, H)
        w[p + "w3"] = lin(F, H)
        w[p + "w2"] = lin(H, F)
    w["norm_out"] = norm(H)
    w["lm_head"] = rs.normal(0.0, 2.0 / np.sqrt(H), size=(V, H))
    if v.get("bigram"):
        scale, noise = v["bigram"]
        succ = rs.permutation(V)
        w["lm_head"] = scale * w["tok_embeddings"][succ] + noise * rs.standard_normal((V, H))

    # The stored dtype applies to 2-D weights only; norms stay float32 as in real MindFormers checkpoints.
    return {k: (round_to(a, v["param_init_type"]) if a.ndim == 2 else a.astype(np.float32)) for k, a in w.items()}


def mindformers_params(v: dict, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-layout weights -> MindFormers 2.1.0 legacy LlamaForCausalLM parameter names and layouts."""
    nh = v["num_heads"]
    nkv = v["n_kv_heads"] or nh
    hd = v["hidden_size"] // nh
    r = nh // nkv
    out = {"model.tok_embeddings.embedding_weight": w["tok_embeddings"]}
    for i in range(v["num_layers"]):
        p, m = f"layers.{i}.", f"model.layers.{i}."
        out[m + "attention_norm.weight"] = w[p + "attention_norm"]
        out[m + "ffn_norm.weight"] = w[p + "ffn_norm"]
        if v["qkv_concat"]:
            # MF >= 1.4.0-beta2 (incl. 2.1.0): per-KV-group [q (r*hd); k (hd); v (hd)]
            # (llama_transformer.py splits a (n_kv_head, (n_rep+2)*head_dim) view; mindformers-layouts.md 4.1).
            H = v["hidden_size"]
            q = w[p + "wq"].reshape(nkv, r * hd, H)
            k = w[p + "wk"].reshape(nkv, hd, H)
            vv = w[p + "wv"].reshape(nkv, hd, H)
            out[m + "attention.w_qkv.weight"] = np.concatenate([q, k, vv], axis=1).reshape(-1, H)
            # Row-interleaved [g0, u0, g1, u1, ...] (llama_layer.py splits an (F, 2) view: gate = [..., 0]).
            out[m + "feed_forward.w_gate_hidden.weight"] = np.stack([w[p + "w1"], w[p + "w3"]], axis=1).reshape(-1, H)
        else:
            out[m + "attention.wq.weight"] = w[p + "wq"]
            out[m + "attention.wk.weight"] = w[p + "wk"]
            out[m + "attention.wv.weight"] = w[p + "wv"]
            out[m + "feed_forward.w1.weight"] = w[p + "w1"]
            out[m + "feed_forward.w3.weight"] = w[p + "w3"]
        out[m + "attention.wo.weight"] = w[p + "wo"]
        out[m + "feed_forward.w2.weight"] = w[p + "w2"]
    out["model.norm_out.weight"] = w["norm_out"]
    out["lm_head.weight"] = w["lm_head"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Independent reference forward pass (float64 NumPy, HF Llama semantics)
# ----------------------------------------------------------------------------------------------------------------

def numpy_forward(v: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    w = {k: a.astype(np.float64) for k, a in w.items()}
    H, nh = v["hidden_size"], v["num_heads"]
    nkv = v["n_kv_heads"] or nh
    hd, r, eps = H // nh, nh // nkv, v["rms_norm_eps"]
    n = len(ids)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g

    inv_freq = 1.0 / (v["theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(np.arange(n, dtype=np.float64), inv_freq)
    cos = np.cos(np.concatenate([ang, ang], -1))[None]
    sin = np.sin(np.concatenate([ang, ang], -1))[None]

    def rope(x):  # x: [heads, n, hd]; HF rotate_half
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return x * cos + rot * sin

    causal = np.triu(np.full((n, n), -np.inf), 1)
    h = w["tok_embeddings"][ids]
    for i in range(v["num_layers"]):
        p = f"layers.{i}."
        x = rms(h, w[p + "attention_norm"])
        q = rope((x @ w[p + "wq"].T).reshape(n, nh, hd).transpose(1, 0, 2))
        k = rope((x @ w[p + "wk"].T).reshape(n, nkv, hd).transpose(1, 0, 2))
        val = (x @ w[p + "wv"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        k, val = np.repeat(k, r, axis=0), np.repeat(val, r, axis=0)  # query head j uses kv head j // r
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ val).transpose(1, 0, 2).reshape(n, nh * hd)
        h = h + ctx @ w[p + "wo"].T
        x = rms(h, w[p + "ffn_norm"])
        g = x @ w[p + "w1"].T
        h = h + ((g / (1.0 + np.exp(-g))) * (x @ w[p + "w3"].T)) @ w[p + "w2"].T
    return rms(h, w["norm_out"]) @ w["lm_head"].T


# ----------------------------------------------------------------------------------------------------------------
# MindFormers
# ----------------------------------------------------------------------------------------------------------------

def build_net(kwargs: dict):
    from mindformers.models.llama import LlamaConfig, LlamaForCausalLM

    kw = {k: a for k, a in kwargs.items() if k != "type"}
    net = LlamaForCausalLM(LlamaConfig(**kw))
    net.set_train(False)
    return net


def load_params(net, params: dict[str, np.ndarray]) -> None:
    """Set every network parameter from numpy (in the parameter's own dtype); fail on any mismatch."""
    import mindspore as ms

    names = {p.name for p in net.get_parameters()}
    if names != set(params):
        raise RuntimeError(f"parameter names differ: net-only {sorted(names - set(params))}, "
                           f"ours-only {sorted(set(params) - names)}")
    for p in net.get_parameters():
        a = params[p.name]
        if tuple(p.shape) != a.shape:
            raise RuntimeError(f"{p.name}: net shape {tuple(p.shape)} != {a.shape}")
        p.set_data(ms.Tensor(a, dtype=p.dtype))


def mindformers_logits(net, ids: list[int], V: int, seq_length: int) -> np.ndarray:
    import mindspore as ms

    n = len(ids)
    padded = np.zeros((1, seq_length), dtype=np.int32)  # pad_token_id = 0
    padded[0, :n] = ids
    out = net(ms.Tensor(padded, ms.int32))
    # Eval mode returns (logits, tokens, input_mask); tokens must be the unshifted input.
    logits, tokens = out[0], out[1]
    if not np.array_equal(tokens.asnumpy(), padded):
        raise RuntimeError("LlamaForCausalLM shifted or altered the input ids (training mode?)")
    logits = logits.asnumpy().astype(np.float32).reshape(-1, V)
    if logits.shape[0] != seq_length:
        raise RuntimeError(f"expected logits for {seq_length} positions, got {logits.shape}")
    return logits[:n]


def read_ckpt(path: Path) -> dict[str, tuple[str, np.ndarray | object]]:
    """name -> (dtype name, value as float32 numpy for tensors / python value) via mindspore.load_checkpoint."""
    import mindspore as ms

    out = {}
    for name, p in ms.load_checkpoint(str(path)).items():
        if isinstance(p, (ms.Parameter, ms.Tensor)):
            dt = str(p.dtype)
            val = p.astype(ms.float32).asnumpy() if dt in ("BFloat16", "Float16") else p.asnumpy()
            out[name] = (dt, val)
        else:
            out[name] = (type(p).__name__, p)
    return out


def save_ckpt(save_obj, dest: Path, tmp: Path, append_dict=None) -> None:
    """mindspore.save_checkpoint into a temp dir (it chmods its files 0400), then copy into place."""
    import mindspore as ms

    tmp_file = tmp / dest.name
    if tmp_file.exists():
        tmp_file.chmod(0o600)
        tmp_file.unlink()
    ms.save_checkpoint(save_obj, str(tmp_file), append_dict=append_dict)
    if dest.exists():
        dest.chmod(0o644)
        dest.unlink()
    shutil.copyfile(tmp_file, dest)
    dest.chmod(0o644)


# ----------------------------------------------------------------------------------------------------------------
# config.yaml
# ----------------------------------------------------------------------------------------------------------------

def write_config_yaml(path: Path, name: str, v: dict, model_kw: dict) -> None:
    import yaml

    doc = {
        "seed": 0,
        "run_mode": "predict",
        "use_parallel": False,
        "load_checkpoint": "model.ckpt",
        "model": {
            "model_config": dict(model_kw),
            "arch": {"type": "LlamaForCausalLM"},
        },
        "parallel_config": {"data_parallel": 1, "model_parallel": 1, "pipeline_stage": 1},
        "processor": {
            "return_tensors": "ms",
            "tokenizer": {
                "unk_token": "<unk>",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<unk>",
                "type": "LlamaTokenizer",
                "vocab_file": "../tokenizer/tokenizer.model",
            },
            "type": "LlamaProcessor",
        },
    }
    header = (
        f"# ms2gguf test fixture '{name}' - written by tests/gen_llama_fixtures.py; do not edit by hand.\n"
        "# model_config holds exactly the LlamaConfig arguments the checkpoint's network was built with.\n"
        "# Logits were computed with the same config and all dtypes float32 (weights already rounded to\n"
        "# param_init_type); MindFormers 2.1.0 layout (qkv_concat => per-KV-group w_qkv, row-interleaved\n"
        "# w_gate_hidden).\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------

def setup_environment(work: Path) -> None:
    """Quiet MindSpore, keep MindFormers' logs and ./output out of the repository, and force eval semantics."""
    os.environ.setdefault("GLOG_v", "3")
    os.environ["LOG_MF_PATH"] = str(work / "mf_log")
    os.environ["LOCAL_DEFAULT_PATH"] = str(work / "mf_output")
    os.environ.pop("RUN_MODE", None)  # RUN_MODE=predict would make the model return reshaped logits only
    os.chdir(work)


def generate(out_dir: Path, work: Path) -> dict:
    import mindspore as ms
    import sentencepiece as spm

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(0)

    report = {}

    # Tokenizer ---------------------------------------------------------------------------------------------------
    tok_dir = out_dir / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    sp_bytes = train_tokenizer()
    (tok_dir / "tokenizer.model").write_bytes(sp_bytes)
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    n_pieces = sp.get_piece_size()
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)

    def encode(text: str) -> list[int]:
        ids = [sp.bos_id()] + sp.encode(text)
        assert 0 not in ids, "id 0 is the pad id MindFormers' causal mask hides"
        assert sp.decode(ids[1:]) == text
        return ids

    ids = encode(TEXT)
    assert 12 <= len(ids) <= 16, (len(ids), sp.encode(TEXT, out_type=str))
    report["tokenizer"] = dict(pieces=n_pieces, ids=ids, tokens=[sp.id_to_piece(i) for i in ids])

    # Models ------------------------------------------------------------------------------------------------------
    for name, v in VARIANTS.items():
        vdir = out_dir / name
        vdir.mkdir(parents=True, exist_ok=True)
        text = v.get("text", TEXT)
        ids = encode(text)
        seq_length = v.get("seq_length", SEQ_LENGTH)
        assert len(ids) <= seq_length, (name, len(ids), seq_length)
        V = vocab_rows(v, n_pieces)
        w = make_weights(v, V)
        params = mindformers_params(v, w)

        # Logits: everything float32, weights already rounded to the stored dtype.
        net = build_net(model_config_kwargs(v, V, "float32"))
        load_params(net, params)
        mf = mindformers_logits(net, ids, V, seq_length)
        ref = numpy_forward(v, w, ids)
        diff = float(np.max(np.abs(mf.astype(np.float64) - ref)))
        scale = float(np.max(np.abs(ref)))
        if not diff < 1e-4 * max(1.0, scale):
            raise RuntimeError(f"{name}: MindFormers vs NumPy max |diff| {diff:.3g} (max |logit| {scale:.3g})")
        std = float(np.mean(np.std(ref, axis=-1)))
        argmax = np.argmax(ref, axis=-1)
        if not (std > 1.0 and len(set(argmax.tolist())) >= len(ids) // 2):
            raise RuntimeError(f"{name}: logits too flat (std {std:.3g}, argmax {argmax.tolist()})")
        top2 = np.sort(ref, axis=-1)[:, -2:]
        gap = float(np.median(top2[:, 1] - top2[:, 0]))
        if v.get("bigram"):
            # Peaky, but not just a lookup table: removing the layers' output must move the logits clearly.
            bare = numpy_forward(v, {**w, **{k: 0 * a for k, a in w.items() if k.endswith(("wo", "w2"))}}, ids)
            layers_effect = float(np.max(np.abs(bare - ref))) / scale
            if not (gap > 2.0 and layers_effect > 0.2):
                raise RuntimeError(f"{name}: median top-1/top-2 gap {gap:.3g}, layers move the logits by only "
                                   f"{layers_effect:.3g} of max |logit|")
        np.save(vdir / "logits.npy", mf)
        stale = vdir / "logits_numpy.npy"
        if stale.exists():
            stale.unlink()
        (vdir / "tokens.json").write_text(
            json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n", encoding="utf-8")

        # Checkpoint: a network built with the variant's param_init_type, so the file has MindFormers' own
        # per-tensor dtypes (2-D weights in param_init_type, norms float32).
        store_kw = model_config_kwargs(v, V, v["param_init_type"])
        store = net if v["param_init_type"] == "float32" else build_net(store_kw)
        if store is not net:
            load_params(store, params)
        save_ckpt(store, vdir / "model.ckpt", work)
        write_config_yaml(vdir / "config.yaml", name, v, store_kw)

        # Read back and compare with what we meant to write.
        back = read_ckpt(vdir / "model.ckpt")
        want_dt = {"float32": "Float32", "float16": "Float16", "bfloat16": "BFloat16"}[v["param_init_type"]]
        assert list(back) == [p.name for p in store.get_parameters()]
        for pname, (dt, val) in back.items():
            assert dt == (want_dt if params[pname].ndim == 2 else "Float32"), (pname, dt)
            assert np.array_equal(val, params[pname]), pname

        entry = dict(
            vocab_rows=V, ffn=ffn_size(v), head_dim=v["hidden_size"] // v["num_heads"],
            max_abs_diff=diff, max_abs_logit=scale, mean_logit_std=std, median_top_gap=gap, argmax=argmax.tolist(),
            params=[(k, back[k][0], list(back[k][1].shape)) for k in back],
        )

        if name == "mha":
            entry["train_ckpt"] = write_train_ckpt(store, params, vdir / "model_train.ckpt", work)
        report[name] = entry
    return report


def write_train_ckpt(net, params: dict[str, np.ndarray], dest: Path, work: Path) -> list:
    """The mha weights followed by the entries a MindFormers training checkpoint carries (mindformers-layouts.md
    section 10): loss-scale / optimizer scalars, Adam moments (for three parameters only, to keep it small) and
    CheckpointMonitor's append_info."""
    import mindspore as ms

    rs = np.random.RandomState(7)
    some = ["model.layers.0.attention.wq.weight", "model.layers.1.feed_forward.w2.weight", "model.norm_out.weight"]
    extra = {
        "scale_sense": ms.Tensor(np.float32(1024.0)),
        "global_step": ms.Tensor(np.int64(10)),
        "learning_rate": ms.Tensor(np.float32(1e-4)),
    }
    for kind, scale in (("adam_m", 1e-3), ("adam_v", 1e-6)):
        for pname in some:
            extra[f"{kind}.{pname}"] = ms.Tensor(np.abs(rs.standard_normal(params[pname].shape)).astype(np.float32)
                                                 * np.float32(scale))
    extra.update(epoch_num=1, step_num=10, loss_scale=1024.0)
    save_ckpt(net, dest, work, append_dict=extra)
    back = read_ckpt(dest)
    names = [p.name for p in net.get_parameters()]
    assert list(back) == names + list(extra), list(back)
    for pname in names:
        assert np.array_equal(back[pname][1], params[pname]), pname
    return [(k, dt, list(np.shape(val))) for k, (dt, val) in back.items() if k not in params]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--report", type=Path, help="also write a JSON report of what was generated")
    args = ap.parse_args(argv)
    out_dir = args.out.resolve()
    report_path = args.report.resolve() if args.report else None
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gen_llama_fixtures_") as tmp:
        work = Path(tmp)
        setup_environment(work)
        try:
            report = generate(out_dir, work)
        finally:
            os.chdir(cwd)
    for name, e in report.items():
        if name == "tokenizer":
            print(f"tokenizer: {e['pieces']} pieces; ids {e['ids']}")
            continue
        print(f"{name:13s} vocab_rows={e['vocab_rows']} ffn={e['ffn']} max|MF-numpy|={e['max_abs_diff']:.2e} "
              f"(max|logit| {e['max_abs_logit']:.2f}, std {e['mean_logit_std']:.2f}, "
              f"median top-1/top-2 gap {e['median_top_gap']:.2f})")
    for f in sorted(out_dir.rglob("*")):
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            print(f"  {f.relative_to(out_dir)}  {f.stat().st_size} B  sha256:{digest}")
    if report_path:
        report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
