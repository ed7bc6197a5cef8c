"""End to end for the GLM families (maps chatglm, glm4) and Qwen2 in mcore naming (map qwen2).

Fixtures (tests/fixtures/{chatglm,glm4,qwen2/mcore*}, made by tests/gen_glm_fixtures.py): chatglm and glm4/legacy
logits come from the real MindFormers 2.1.0 ChatGLM2ForConditionalGeneration on CPU (which agrees with transformers'
GlmForCausalLM / Glm4ForCausalLM), the mcore ones from transformers (Glm4ForCausalLM, Qwen2ForCausalLM) with the
checkpoints written by MindFormers' own networks and converters. Each test converts a checkpoint and compares
llama.cpp's logits at every position (bounds: conftest.BOUNDS). The negative controls show that each thing the maps
get right is visible in the logits: rope on half of each head, [gate; up] order, the sandwich norms, undoing
use_rearrange_rope, the fused layouts.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import BOUNDS, FIXTURES, convert, gguf_value, llama_logits, relative_error
from gguf import GGUFReader

CHATGLM, GLM4, QWEN2 = FIXTURES / "chatglm", FIXTURES / "glm4", FIXTURES / "qwen2"
CHATGLM3_TOKENIZER = CHATGLM / "tokenizer" / "tokenizer.model"               # SentencePiece (ChatGLM3)
GLM4_TOKENIZER_JSON = FIXTURES / "bpe" / "glm4" / "hf" / "tokenizer.json"       # GLM-4-9B-chat-hf, GLM-4-0414
GLM4_TIKTOKEN = FIXTURES / "bpe" / "glm4" / "tiktoken" / "tokenizer.model"      # GLM-4-9B-chat (ChatGLM4Tokenizer)
QWEN_TOKENIZER = QWEN2 / "tokenizer" / "tokenizer.json"

# variant -> (checkpoint, map, tokenizer)
VARIANTS = {
    "chatglm/fused": (CHATGLM / "fused" / "model.ckpt", "chatglm", CHATGLM3_TOKENIZER),
    "chatglm/rearranged": (CHATGLM / "rearranged" / "model.ckpt", "chatglm", GLM4_TOKENIZER_JSON),
    "glm4/mcore": (GLM4 / "mcore" / "model.ckpt", "glm4", GLM4_TOKENIZER_JSON),
    "glm4/legacy": (GLM4 / "legacy" / "model.ckpt", "glm4", GLM4_TIKTOKEN),
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


def error_of(path, variant):
    ids, ref = reference(variant)
    return relative_error(llama_logits(path, ids), ref)


def fails_reference(path, variant):
    return error_of(path, variant) > 10 * BOUNDS["f32"][0]


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


@pytest.mark.parametrize("variant", ["chatglm/fused", "glm4/mcore", "glm4/legacy"])
def test_rope_on_the_whole_head_is_wrong(converted, tmp_path, variant):
    """GLM rotates only the first half of each head (partial_rotary_factor 0.5 by default)."""
    config = edited_config(tmp_path, variant, lambda c: c.update(partial_rotary_factor=1.0))
    out = converted(variant, "f32", "--config", str(config))
    reader = GGUFReader(out)
    arch = gguf_value(reader, "general.architecture")
    assert gguf_value(reader, f"{arch}.rope.dimension_count") == gguf_value(reader, f"{arch}.attention.key_length")
    assert fails_reference(out, variant)


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


@pytest.mark.parametrize("variant", ["chatglm/fused", "glm4/mcore", "glm4/legacy"])
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
