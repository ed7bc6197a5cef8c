"""End to end for the GLM families (maps chatglm, glm4, glm4_moe) and Qwen2 in mcore naming (map qwen2).

Fixtures (tests/fixtures/{chatglm,glm4,glm4_moe,qwen2/mcore*}, made by tests/gen_glm_fixtures.py): chatglm and
glm4/legacy logits come from the real MindFormers 2.1.0 ChatGLM2ForConditionalGeneration on CPU (which agrees with
transformers' GlmForCausalLM / Glm4ForCausalLM), the mcore ones from transformers (Glm4ForCausalLM,
Glm4MoeForCausalLM, Qwen2ForCausalLM) with the checkpoints written by MindFormers' own networks and converters. Each test converts a checkpoint and compares
llama.cpp's logits at every position (bounds: conftest.BOUNDS). The negative controls show that each thing the maps
get right is visible in the logits: rope on half of each head, [gate; up] order, the sandwich norms, undoing
use_rearrange_rope, rope_ratio, the fused layouts, and for GLM-4-MoE the routing (sigmoid, score correction bias,
scale) and the experts' gate/up order. Files llama.cpp might abort on are run in a child process.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import (BOUNDS, FIXTURES, convert, gguf_value, llama_logits, llama_logits_isolated, relative_error,
                      write_ckpt)
from gguf import GGUFReader

CHATGLM, GLM4, QWEN2 = FIXTURES / "chatglm", FIXTURES / "glm4", FIXTURES / "qwen2"
CHATGLM3_TOKENIZER = CHATGLM / "tokenizer" / "tokenizer.model"               # SentencePiece (ChatGLM3)
GLM4_TOKENIZER_JSON = FIXTURES / "bpe" / "glm4" / "hf" / "tokenizer.json"       # GLM-4-9B-chat-hf, GLM-4-0414
GLM4_TIKTOKEN = FIXTURES / "bpe" / "glm4" / "tiktoken" / "tokenizer.model"      # GLM-4-9B-chat (ChatGLM4Tokenizer)
QWEN_TOKENIZER = QWEN2 / "tokenizer" / "tokenizer.json"

# variant -> (checkpoint, map, tokenizer)
VARIANTS = {
    "chatglm/fused": (CHATGLM / "fused" / "model.ckpt", "chatglm", CHATGLM3_TOKENIZER),
    "chatglm/split": (CHATGLM / "split" / "model.ckpt", "chatglm", GLM4_TIKTOKEN),
    "chatglm/rearranged": (CHATGLM / "rearranged" / "model.ckpt", "chatglm", GLM4_TOKENIZER_JSON),
    "glm4/mcore": (GLM4 / "mcore" / "model.ckpt", "glm4", GLM4_TOKENIZER_JSON),
    "glm4/legacy": (GLM4 / "legacy" / "model.ckpt", "glm4", GLM4_TIKTOKEN),
    "glm4_moe/mcore": (FIXTURES / "glm4_moe" / "mcore" / "model.ckpt", "glm4_moe", GLM4_TOKENIZER_JSON),
    "qwen2/mcore": (QWEN2 / "mcore" / "model.ckpt", "qwen2", QWEN_TOKENIZER),
    "qwen2/mcore_interleaved": (QWEN2 / "mcore_interleaved" / "model.ckpt", "qwen2", QWEN_TOKENIZER),
}


def reference(variant):
    folder = FIXTURES / variant
    return json.loads((folder / "tokens.json").read_text())["ids"], np.load(folder / "logits.npy")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Converted GGUF paths, made once per (variant, outtype, options)."""
    folder = tmp_path_factory.mktemp("gguf")
    cache = {}

    def get(variant, outtype="f32", *options, map_name=None):
        ckpt, default_map, tokenizer = VARIANTS[variant]
        key = (variant, outtype, options, map_name)
        if key not in cache:
            out = folder / f"{variant.replace('/', '_')}-{outtype}-{len(cache)}.gguf"
            assert convert(ckpt, out, "--outtype", outtype, "--name", "m", *options,
                           map_name=map_name or default_map, tokenizer=tokenizer) == 0
            cache[key] = out
        return cache[key]

    return get


def error_of(path, variant, isolated=False):
    ids, ref = reference(variant)
    return relative_error((llama_logits_isolated if isolated else llama_logits)(path, ids), ref)


def fails_reference(path, variant, isolated=False):
    return error_of(path, variant, isolated) > 10 * BOUNDS["f32"][0]


@pytest.mark.parametrize("outtype", list(BOUNDS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_reference(converted, variant, outtype):
    ids, ref = reference(variant)
    got = llama_logits(converted(variant, outtype), ids)
    assert got.shape == ref.shape
    bound, argmax_share = BOUNDS[outtype]
    error = relative_error(got, ref)
    assert error <= bound, f"{variant} {outtype}: relative logit error {error:.2e} > {bound}"
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= argmax_share, f"{variant} {outtype}: argmax agrees at {agree:.0%} of positions"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_gives_the_same_gguf(converted, variant):
    assert converted(variant, "f16", map_name="auto").read_bytes() == converted(variant, "f16").read_bytes()


# --- negative controls -------------------------------------------------------------------------------------------

def edited_config(tmp_path, variant, change):
    """The variant's config with ``change(model_config)`` applied (yaml: model.model_config; json: the object)."""
    folder = FIXTURES / variant
    if (folder / "config.yaml").is_file() and not (folder / "config.json").is_file():
        doc = yaml.safe_load((folder / "config.yaml").read_text())
        change(doc["model"]["model_config"])
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path
    data = json.loads((folder / "config.json").read_text())
    change(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("variant", ["chatglm/fused", "glm4/mcore", "glm4/legacy", "glm4_moe/mcore"])
def test_rope_on_the_whole_head_is_wrong(converted, tmp_path, variant):
    """GLM rotates only the first half of each head (partial_rotary_factor 0.5 by default)."""
    config = edited_config(tmp_path, variant, lambda c: c.update(partial_rotary_factor=1.0))
    out = converted(variant, "f32", "--config", str(config))
    reader = GGUFReader(out)
    arch = gguf_value(reader, "general.architecture")
    assert gguf_value(reader, f"{arch}.rope.dimension_count") == gguf_value(reader, f"{arch}.attention.key_length")
    assert fails_reference(out, variant, isolated=True)


def swap_rows(path, tensor, first):
    """Swap the first ``first`` rows of a GGUF tensor with the rest, in place (F32 file)."""
    reader = GGUFReader(path, "r+")
    data = {t.name: t for t in reader.tensors}[tensor].data
    rows = np.array(data)
    data[:] = np.concatenate([rows[first:], rows[:first]])
    del reader


def copy_of(path, tmp_path, name="edited.gguf"):
    shutil.copyfile(path, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("variant", ["chatglm/fused", "chatglm/split", "glm4/mcore", "glm4/legacy"])
def test_gate_and_up_swapped_is_wrong(converted, tmp_path, variant):
    """llama.cpp's fused ffn_up is [gate; up]; the other order (an interleaved or swapped regroup) is visible."""
    out = copy_of(converted(variant, "f32"), tmp_path)
    reader = GGUFReader(out)
    ffn = gguf_value(reader, f"{gguf_value(reader, 'general.architecture')}.feed_forward_length")
    del reader
    for layer in range(2):
        swap_rows(out, f"blk.{layer}.ffn_up.weight", ffn)
    assert fails_reference(out, variant)
    assert error_of(converted(variant, "f32"), variant) <= BOUNDS["f32"][0]


def set_tensor(path, tensor, value):
    reader = GGUFReader(path, "r+")
    data = {t.name: t for t in reader.tensors}[tensor].data
    data[:] = value(np.array(data))
    del reader


@pytest.mark.parametrize("variant", ["glm4/mcore", "glm4/legacy"])
def test_sandwich_norms_dropped_or_confused_are_wrong(converted, tmp_path, variant):
    """GLM-4-0414 normalises the attention and MLP outputs (post_self_attn_layernorm, post_mlp_layernorm): without
    them (norm weights of one) the logits are wrong, and so they are with HF's post_attention_layernorm (the pre-MLP
    norm, GGUF ffn_norm) taken for the post-attention one."""
    dropped = copy_of(converted(variant, "f32"), tmp_path, "dropped.gguf")
    for layer in range(2):
        for name in ("post_attention_norm", "post_ffw_norm"):
            set_tensor(dropped, f"blk.{layer}.{name}.weight", np.ones_like)
    assert fails_reference(dropped, variant)

    confused = copy_of(converted(variant, "f32"), tmp_path, "confused.gguf")
    reader = GGUFReader(confused)
    norms = {t.name: np.array(t.data) for t in reader.tensors if t.name.endswith(("ffn_norm.weight",
                                                                                   "post_attention_norm.weight"))}
    del reader
    for layer in range(2):
        set_tensor(confused, f"blk.{layer}.ffn_norm.weight", lambda _: norms[f"blk.{layer}.post_attention_norm.weight"])
        set_tensor(confused, f"blk.{layer}.post_attention_norm.weight", lambda _: norms[f"blk.{layer}.ffn_norm.weight"])
    assert fails_reference(confused, variant)


def test_a_map_without_the_sandwich_norms_refuses(tmp_path, capsys):
    """Nothing is dropped silently: a glm4 checkpoint under a map that has no rule for the post norms is an error."""
    from gguf_out.maps import maps_dir

    data = json.loads((maps_dir() / "glm4.json").read_text())
    data["tensors"] = [r for r in data["tensors"] if "post_self_attn" not in r["from"]]
    data["required"] = [t for t in data["required"] if "post_attention_norm" not in t]
    (tmp_path / "glm4_no_sandwich.json").write_text(json.dumps(data))
    ckpt, _, tokenizer = VARIANTS["glm4/mcore"]
    assert convert(ckpt, tmp_path / "o.gguf", map_name=str(tmp_path / "glm4_no_sandwich.json"),
                   tokenizer=tokenizer) == 1
    assert "unmapped tensor 'decoder.layers.0.post_self_attn_layernorm.weight'" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists()


def test_rearranged_rope_must_be_undone(converted, tmp_path):
    """use_rearrange_rope checkpoints store each Q/K head as [even dims; odd dims]; without the flag in the config the
    rows are taken as they are and the logits are wrong."""
    config = edited_config(tmp_path, "chatglm/rearranged", lambda c: c.update(use_rearrange_rope=False))
    assert fails_reference(converted("chatglm/rearranged", "f32", "--config", str(config)), "chatglm/rearranged")


def test_rope_ratio_is_the_rope_base(converted, tmp_path):
    """chatglm/split was trained with rope_ratio 2 (ChatGLM's rope base 10000 x rope_ratio): with 1, wrong."""
    reader = GGUFReader(converted("chatglm/split", "f32"))
    assert gguf_value(reader, "chatglm.rope.freq_base") == pytest.approx(20000.0)
    config = edited_config(tmp_path, "chatglm/split", lambda c: c.update(rope_ratio=1.0))
    assert fails_reference(converted("chatglm/split", "f32", "--config", str(config)), "chatglm/split")


def test_rearranged_permutation_is_not_applied_to_ordinary_checkpoints(converted, tmp_path):
    config = edited_config(tmp_path, "chatglm/fused", lambda c: c.update(use_rearrange_rope=True))
    assert fails_reference(converted("chatglm/fused", "f32", "--config", str(config)), "chatglm/fused")


@pytest.mark.parametrize("variant,layout", [("qwen2/mcore", "interleaved"), ("qwen2/mcore_interleaved", "contiguous"),
                                            ("glm4/mcore", "interleaved")])
def test_wrong_fused_layout_is_wrong(converted, variant, layout):
    assert fails_reference(converted(variant, "f32", "--fused-layout", layout), variant)


def test_qwen2_mcore_layout_comes_from_the_yaml(converted):
    """qwen2/mcore_interleaved's yaml says use_contiguous_weight_layout_attention: False (training layout); with
    config.json alone, the inference network's contiguous layout is assumed, which is wrong for it."""
    config = QWEN2 / "mcore_interleaved" / "config.json"
    assert fails_reference(converted("qwen2/mcore_interleaved", "f32", "--config", str(config)),
                           "qwen2/mcore_interleaved")


# --- what the GGUF says ------------------------------------------------------------------------------------------

def test_chatglm3_metadata(converted):
    reader = GGUFReader(converted("chatglm/fused", "f16"))
    assert gguf_value(reader, "general.architecture") == "chatglm"
    assert gguf_value(reader, "chatglm.rope.dimension_count") == 8          # half of head_dim 16
    assert gguf_value(reader, "chatglm.rope.freq_base") == pytest.approx(10000.0)
    assert gguf_value(reader, "chatglm.attention.head_count_kv") == 2      # multi_query_group_num
    assert gguf_value(reader, "tokenizer.ggml.model") == "llama"
    assert gguf_value(reader, "tokenizer.ggml.pre") == "chatglm-spm"
    assert gguf_value(reader, "tokenizer.ggml.add_bos_token") is False
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 512 and tokens[480:489] == ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>",
                                                      "<|user|>", "<|assistant|>", "<|observation|>"]
    assert tokens[gguf_value(reader, "tokenizer.ggml.eot_token_id")] == "<|user|>"
    assert tokens[gguf_value(reader, "tokenizer.ggml.eos_token_id")] == "</s>"
    assert gguf_value(reader, "tokenizer.chat_template").startswith("{% for message in messages %}{% if loop.first")
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_qkv.weight", "blk.0.attn_qkv.bias", "blk.0.ffn_up.weight"} <= names
    assert not any("attn_q." in n or "ffn_gate" in n for n in names)


def test_glm4_metadata(converted):
    reader = GGUFReader(converted("glm4/mcore", "f16"))
    assert gguf_value(reader, "general.architecture") == "glm4"
    assert gguf_value(reader, "glm4.attention.key_length") == 32            # head_dim 32 != 64 / 4 heads
    assert gguf_value(reader, "glm4.rope.dimension_count") == 16
    assert gguf_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert gguf_value(reader, "tokenizer.ggml.pre") == "glm4"
    assert gguf_value(reader, "tokenizer.ggml.add_bos_token") is False
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    for role, text in (("bos", "[gMASK]"), ("eos", "<|endoftext|>"), ("eot", "<|user|>"), ("padding", "<|endoftext|>")):
        assert tokens[gguf_value(reader, f"tokenizer.ggml.{role}_token_id")] == text
    ffn = {t.name: t for t in reader.tensors}["blk.0.ffn_up.weight"]
    assert list(ffn.shape) == [64, 192]                                      # GGUF order: [hidden, 2 x ffn]
    names = {t.name for t in reader.tensors}
    assert {"blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight", "blk.1.attn_q.bias"} <= names


def test_hf_config_describes_the_same_chatglm(converted, tmp_path):
    """The MindFormers yaml (ChatGLM2Config: kv_channels, multi_query_group_num, rope_ratio, ...) and transformers'
    GlmForCausalLM config.json give the same tensors and hyperparameters (the context length aside: the yaml's
    seq_length is a training setting)."""
    ours = GGUFReader(converted("chatglm/rearranged", "f32"))
    config = json.loads((CHATGLM / "rearranged" / "hf_config.json").read_text())
    config["use_rearrange_rope"] = True        # not an HF setting: the layout of this MindFormers checkpoint
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = GGUFReader(converted("chatglm/rearranged", "f32", "--config", str(tmp_path / "config.json")))
    for key in ours.fields:
        if key != "chatglm.context_length":
            assert gguf_value(hf, key) == gguf_value(ours, key), key
    assert [(t.name, np.array(t.data).tobytes()) for t in hf.tensors] == \
        [(t.name, np.array(t.data).tobytes()) for t in ours.tensors]


def test_transformers5_spelling_of_partial_rotary(converted, tmp_path):
    config = json.loads((GLM4 / "mcore" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config.pop("rope_theta"),
                                 "partial_rotary_factor": config.pop("partial_rotary_factor")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    new = converted("glm4/mcore", "f32", "--config", str(tmp_path / "config.json"))
    assert new.read_bytes() == converted("glm4/mcore", "f32", "--config", str(GLM4 / "mcore" / "config.json")).read_bytes()


def test_inv_freq_and_kv_caches_are_skipped(converted, capsys, tmp_path):
    """convert_weight.py keeps THUDM's rotary_pos_emb.inv_freq; the network saves its paged-attention KV caches."""
    ckpt, _, tokenizer = VARIANTS["chatglm/rearranged"]
    assert convert(ckpt, tmp_path / "o.gguf", "-v", "--dry-run", map_name="chatglm", tokenizer=tokenizer) == 0
    out = capsys.readouterr()
    skipped = [line for line in (out.out + out.err).splitlines() if line.startswith("skip")]
    assert any("transformer.rotary_pos_emb.inv_freq" in line for line in skipped)
    assert sum("paged_attention_mgr" in line for line in skipped) == 4


def test_kv_heads_from_the_shapes_when_the_config_is_silent(converted, tmp_path):
    """A ChatGLM yaml without multi_query_group_num: the fused QKV rows tell the KV head count."""
    config = edited_config(tmp_path, "chatglm/fused", lambda c: c.pop("multi_query_group_num"))
    out = converted("chatglm/fused", "f32", "--config", str(config))
    assert out.read_bytes() == converted("chatglm/fused", "f32").read_bytes()


def test_chatglm_whose_query_width_is_not_the_hidden_size_is_refused(tmp_path, capsys):
    """llama.cpp's chatglm takes the query width for the hidden size (its attn_qkv is [H + 2 x KV width, H]): a model
    with num_attention_heads x kv_channels != hidden_size would not load, so it is an error naming both."""
    H, nh, nkv, hd, F, V = 64, 4, 2, 32, 96, 512
    p = "transformer.encoder.layers.0."
    shapes = {"transformer.embedding.embedding_weight": (V, H), p + "input_layernorm.weight": (H,),
              p + "self_attention.query_key_value.weight": ((nh + 2 * nkv) * hd, H),
              p + "self_attention.query_key_value.bias": ((nh + 2 * nkv) * hd,),
              p + "self_attention.dense.weight": (H, nh * hd), p + "post_attention_layernorm.weight": (H,),
              p + "mlp.dense_h_to_4h.weight": (2 * F, H), p + "mlp.dense_4h_to_h.weight": (H, F),
              "transformer.encoder.final_layernorm.weight": (H,), "transformer.output_layer.weight": (V, H)}
    write_ckpt(tmp_path / "model.ckpt", [(n, "Float32", np.zeros(s, np.float32)) for n, s in shapes.items()])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"model_config": dict(
        type="ChatGLM2Config", num_layers=1, padded_vocab_size=V, hidden_size=H, ffn_hidden_size=F, kv_channels=hd,
        num_attention_heads=nh, multi_query_group_num=nkv, seq_length=64)}}))
    assert convert(tmp_path / "model.ckpt", tmp_path / "o.gguf", map_name="chatglm", tokenizer=CHATGLM3_TOKENIZER) == 1
    err = capsys.readouterr().err
    assert "q_width = 128 but hidden_size = 64; llama.cpp's chatglm needs" in err and "Traceback" not in err
    assert not (tmp_path / "o.gguf").exists()


# --- GLM-4-MoE ---------------------------------------------------------------------------------------------------

MOE = "glm4_moe/mcore"


def test_glm4_moe_metadata(converted):
    reader = GGUFReader(converted(MOE, "f16"))
    expected = {"expert_count": 8, "expert_used_count": 2, "expert_feed_forward_length": 32, "expert_shared_count": 1,
                "leading_dense_block_count": 1, "expert_gating_func": 2, "expert_weights_norm": True,
                "expert_weights_scale": 2.5, "nextn_predict_layers": 0, "block_count": 3, "feed_forward_length": 96,
                "rope.dimension_count": 16}
    for key, value in expected.items():
        assert gguf_value(reader, f"glm4moe.{key}") == pytest.approx(value), key
    names = {t.name for t in reader.tensors}
    assert {"blk.0.ffn_gate.weight", "blk.0.post_attention_norm.weight", "blk.1.exp_probs_b.bias",
            "blk.1.ffn_gate_exps.weight", "blk.2.ffn_up_shexp.weight"} <= names
    assert not any(".ffn_norm." in n for n in names) and "blk.1.ffn_gate.weight" not in names


def test_glm4_moe_pre_mlp_norm_cannot_be_named_ffn_norm(tmp_path, capsys):
    """The trap: GLM-4 calls the pre-MLP norm ffn_norm, GLM-4-MoE post_attention_norm (both HF
    post_attention_layernorm); llama.cpp's glm4moe has no ffn_norm, and a map that writes one is refused when it is
    loaded (gguf-py's tensor list for the arch), before any conversion."""
    from gguf_out.maps import maps_dir

    data = json.loads((maps_dir() / "glm4_moe.json").read_text())
    for rule in data["tensors"]:
        if rule["from"] == "decoder.layers.{i}.pre_mlp_layernorm.weight":
            rule["to"] = "blk.{i}.ffn_norm.weight"
    path = tmp_path / "glm4_moe_ffn_norm.json"
    path.write_text(json.dumps(data))
    ckpt, _, tokenizer = VARIANTS[MOE]
    assert convert(ckpt, tmp_path / "o.gguf", map_name=str(path), tokenizer=tokenizer) == 1
    assert "'blk.{i}.ffn_norm.weight' is not a tensor of GGUF architecture 'glm4moe'" in capsys.readouterr().err


@pytest.mark.parametrize("change,why", [
    (lambda c: c.update(scoring_func="softmax"), "softmax instead of sigmoid routing"),
    (lambda c: c.update(routed_scaling_factor=1.0), "the routing scale"),
    (lambda c: c.update(norm_topk_prob=False), "top-k weights not renormalised"),
])
def test_glm4_moe_routing_settings_matter(converted, tmp_path, change, why):
    config = edited_config(tmp_path, MOE, change)
    assert fails_reference(converted(MOE, "f32", "--config", str(config)), MOE, isolated=True), why


def test_glm4_moe_score_correction_bias_matters(converted, tmp_path):
    out = copy_of(converted(MOE, "f32"), tmp_path)
    for layer in (1, 2):
        set_tensor(out, f"blk.{layer}.exp_probs_b.bias", np.zeros_like)
    assert fails_reference(out, MOE, isolated=True)


def test_glm4_moe_expert_gate_and_up_swapped_is_wrong(converted, tmp_path):
    out = copy_of(converted(MOE, "f32"), tmp_path)
    reader = GGUFReader(out)
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    del reader
    for layer in (1, 2):
        gate, up = tensors[f"blk.{layer}.ffn_gate_exps.weight"], tensors[f"blk.{layer}.ffn_up_exps.weight"]
        set_tensor(out, f"blk.{layer}.ffn_gate_exps.weight", lambda _: up)
        set_tensor(out, f"blk.{layer}.ffn_up_exps.weight", lambda _: gate)
    assert fails_reference(out, MOE, isolated=True)
