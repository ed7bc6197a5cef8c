"""End to end for the BPE families: Qwen2 (legacy), Llama 3.1 (legacy, rope scaling) and Qwen3 (mcore).

Fixtures (tests/fixtures/{qwen2,llama3,qwen3}, made by tests/gen_qwen_fixtures.py): qwen2 and llama3 logits come
from the real MindFormers 2.1.0 LlamaForCausalLM on CPU; qwen3 logits from HF transformers' Qwen3ForCausalLM, with
the mcore checkpoints written by MindFormers' own HF -> MindFormers conversion code. Each test converts a
checkpoint and compares llama.cpp's logits at every position (bounds as in test_convert_llama.py).
"""

import json
import shutil

import numpy as np
import pytest
from conftest import BOUNDS, FIXTURES, LLAMA, TOKENIZER, convert, gguf_value, llama_logits, relative_error
from gguf import GGUFReader

QWEN2, LLAMA3, QWEN3 = FIXTURES / "qwen2", FIXTURES / "llama3", FIXTURES / "qwen3"
QWEN_TOKENIZER = QWEN2 / "tokenizer" / "tokenizer.json"
LLAMA3_TOKENIZER = LLAMA3 / "tokenizer" / "tokenizer.json"

# variant -> (checkpoint, map, tokenizer)
VARIANTS = {
    "qwen2/tied": (QWEN2 / "tied" / "model.ckpt", "qwen2", QWEN_TOKENIZER),
    "qwen2/fused": (QWEN2 / "fused" / "model.ckpt", "qwen2", QWEN_TOKENIZER),
    "llama3/rope_scaled": (LLAMA3 / "rope_scaled" / "model.ckpt", "llama3", LLAMA3_TOKENIZER),
    "qwen3/tied": (QWEN3 / "tied" / "model.ckpt", "qwen3", QWEN_TOKENIZER),
    "qwen3/tied-shards": (QWEN3 / "tied" / "shards", "qwen3", QWEN_TOKENIZER),
    "qwen3/contiguous": (QWEN3 / "contiguous" / "model.ckpt", "qwen3", QWEN_TOKENIZER),
}

# The Llama tests' bounds (conftest.BOUNDS) for the types tested here.
BOUNDS = {t: BOUNDS[t] for t in ("f32", "f16", "q8_0")}


def fixture_dir(variant):
    return FIXTURES / variant.split("-")[0]


def reference(variant):
    folder = fixture_dir(variant)
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


def fails_reference(path, variant):
    ids, ref = reference(variant)
    return relative_error(llama_logits(path, ids), ref) > 10 * BOUNDS["f32"][0]


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


# --- negative controls: each shows that a wrong choice is visible in the logits ----------------------------------

def test_llama3_without_permutation_is_wrong(converted):
    assert fails_reference(converted("llama3/rope_scaled", "f32", "--rope-layout", "meta"), "llama3/rope_scaled")


def test_llama3_without_rope_scaling_is_wrong(converted, tmp_path):
    """The same checkpoint with extend_method None: no rope_freqs tensor, and the logits no longer match."""
    config = tmp_path / "config.yaml"
    text = (LLAMA3 / "rope_scaled" / "config.yaml").read_text()
    config.write_text(text.replace("extend_method: LLAMA3", "extend_method: None"))
    out = converted("llama3/rope_scaled", "f32", "--config", str(config))
    assert "rope_freqs.weight" not in {t.name for t in GGUFReader(out).tensors}
    assert fails_reference(out, "llama3/rope_scaled")


def permuting_qwen2_map(tmp_path):
    """qwen2.json with the llama Q/K permutation switched on, as a converter that treats Qwen2 like Llama would."""
    from gguf_out.maps import maps_dir

    data = json.loads((maps_dir() / "qwen2.json").read_text())
    data["rope_permute"] = True
    for rule in data["tensors"]:
        targets = rule["to"] if isinstance(rule["to"], list) else [rule["to"]]
        kinds = ["q" if ".attn_q." in t else "k" if ".attn_k." in t else None for t in targets]
        rule["permute"] = kinds if isinstance(rule["to"], list) else kinds[0]
    path = tmp_path / "qwen2_permuted.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("variant", ["qwen2/tied", "qwen2/fused"])
def test_qwen2_permuted_by_mistake_is_wrong(converted, tmp_path, variant):
    out = converted(variant, "f32", map_name=str(permuting_qwen2_map(tmp_path)))
    assert fails_reference(out, variant)


@pytest.mark.parametrize("variant,layout", [("qwen2/fused", "contiguous"), ("qwen3/tied", "contiguous"),
                                            ("qwen3/contiguous", "interleaved")])
def test_wrong_fused_layout_is_wrong(converted, variant, layout):
    assert fails_reference(converted(variant, "f32", "--fused-layout", layout), variant)


def test_qwen3_layout_flags_come_from_the_yaml(converted):
    """qwen3/contiguous's yaml sets use_contiguous_weight_layout_attention / use_interleaved_weight_layout_mlp;
    converting with config.json alone (mcore defaults: interleaved) must therefore fail."""
    config = QWEN3 / "contiguous" / "config.json"
    assert fails_reference(converted("qwen3/contiguous", "f32", "--config", str(config)), "qwen3/contiguous")


def test_qwen3_r16_layout_flag(converted, tmp_path):
    """MindFormers 1.6's single use_contiguous_weight_layout: True meant contiguous QKV and gate/up."""
    text = (QWEN3 / "contiguous" / "config.yaml").read_text()
    text = text.replace("use_contiguous_weight_layout_attention: true", "use_contiguous_weight_layout: true")
    text = text.replace("    use_interleaved_weight_layout_mlp: false\n", "")
    assert "use_contiguous_weight_layout: true" in text and "_mlp" not in text
    (tmp_path / "config.yaml").write_text(text)
    shutil.copyfile(QWEN3 / "contiguous" / "config.json", tmp_path / "config.json")
    ids, ref = reference("qwen3/contiguous")
    got = llama_logits(converted("qwen3/contiguous", "f32", "--config", str(tmp_path / "config.yaml")), ids)
    assert relative_error(got, ref) <= BOUNDS["f32"][0]


# --- what the GGUF says ------------------------------------------------------------------------------------------

def test_qwen3_metadata(converted):
    reader = GGUFReader(converted("qwen3/tied", "f16"))
    assert gguf_value(reader, "general.architecture") == "qwen3"
    assert gguf_value(reader, "qwen3.attention.head_count") == 4
    assert gguf_value(reader, "qwen3.attention.head_count_kv") == 2
    # head_dim 24 != hidden 64 / 4 heads: llama.cpp needs the key/value lengths
    assert gguf_value(reader, "qwen3.attention.key_length") == 24
    assert gguf_value(reader, "qwen3.attention.value_length") == 24
    assert gguf_value(reader, "qwen3.rope.freq_base") == pytest.approx(1e6)
    assert gguf_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert gguf_value(reader, "tokenizer.ggml.pre") == "qwen2"
    assert len(gguf_value(reader, "tokenizer.ggml.tokens")) == 448          # 403 tokens padded to the embedding rows
    names = {t.name for t in reader.tensors}
    assert "blk.1.attn_q_norm.weight" in names and "blk.1.attn_k_norm.weight" in names
    assert "output.weight" not in names                                 # tied: llama.cpp reuses token_embd


def test_qwen2_metadata(converted):
    reader = GGUFReader(converted("qwen2/fused", "f16"))
    assert gguf_value(reader, "general.architecture") == "qwen2"
    assert gguf_value(reader, "qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert gguf_value(reader, "tokenizer.ggml.pre") == "qwen2"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "output.weight"} <= names
    assert "output.weight" not in {t.name for t in GGUFReader(converted("qwen2/tied", "f16")).tensors}


def llama31_rope_divisors(theta, head_dim, factor, low, high, original):
    """Llama 3.1's scaled frequencies as transformers computes them, expressed as divisors of the plain ones."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    scaled = np.where(wavelen > original / low, freqs / factor,
                      np.where(wavelen < original / high, freqs, (1 - smooth) * freqs / factor + smooth * freqs))
    return freqs / scaled


def test_llama3_rope_freqs(converted):
    reader = GGUFReader(converted("llama3/rope_scaled", "f16"))
    rope = {t.name: t for t in reader.tensors}["rope_freqs.weight"]
    expected = llama31_rope_divisors(500000.0, 16, 8.0, 1.0, 4.0, 64)
    assert rope.tensor_type == 0 and np.allclose(np.asarray(rope.data), expected, rtol=1e-6)
    assert len(set(np.round(expected, 4))) == 3         # all three branches: 1, factor and a blend
    assert gguf_value(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert gguf_value(reader, "tokenizer.ggml.add_bos_token") is True


def test_llama3_hf_config_gives_the_same_gguf(converted):
    """config.yaml (extend_method LLAMA3 + scaling_factor) and the HF config.json (rope_scaling llama3) describe the
    same model: the same GGUF bytes."""
    hf = converted("llama3/rope_scaled", "f32", "--config", str(LLAMA3 / "rope_scaled" / "hf_config.json"))
    assert hf.read_bytes() == converted("llama3/rope_scaled", "f32").read_bytes()


def test_transformers5_config_spelling(converted, tmp_path):
    """transformers 5 writes rope_theta and rope scaling as "rope_parameters"; same model, same GGUF."""
    config = json.loads((LLAMA3 / "rope_scaled" / "hf_config.json").read_text())
    config["rope_parameters"] = dict(config.pop("rope_scaling"), rope_theta=config.pop("rope_theta"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    new = converted("llama3/rope_scaled", "f32", "--config", str(tmp_path / "config.json"))
    assert new.read_bytes() == converted("llama3/rope_scaled", "f32").read_bytes()


def test_untied_config_without_output_is_an_error(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text((QWEN2 / "tied" / "config.yaml").read_text().replace("tie_word_embeddings: true",
                                                                             "tie_word_embeddings: false"))
    assert convert(QWEN2 / "tied" / "model.ckpt", tmp_path / "o.gguf", "--config", config, map_name="qwen2",
                   tokenizer=QWEN_TOKENIZER) == 1
    assert "lm_head.weight" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists()


def test_sliding_window_is_ignored_with_a_warning(tmp_path, capsys):
    config = json.loads((QWEN3 / "tied" / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert convert(QWEN3 / "tied" / "model.ckpt", tmp_path / "o.gguf", "--config", tmp_path / "config.json",
                   map_name="qwen3", tokenizer=QWEN_TOKENIZER, quiet=False) == 0
    assert "sliding-window attention (sliding_window 16) is ignored" in capsys.readouterr().err


# --- choosing the map automatically ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_auto_picks_the_map(converted, variant):
    assert converted(variant, "f16", map_name="auto").read_bytes() == converted(variant, "f16").read_bytes()


def test_two_positionals_mean_auto(tmp_path):
    from gguf_out.cli import main

    out = tmp_path / "m.gguf"
    ckpt, _, tokenizer = VARIANTS["qwen3/contiguous"]
    assert main([str(ckpt), str(out), "--tokenizer", str(tokenizer), "-q"]) == 0
    assert GGUFReader(out).fields["general.architecture"].contents() == "qwen3"


def test_auto_on_legacy_llama_uses_the_tokenizer(tmp_path):
    """llama2 and llama3 share the tensor names; a SentencePiece tokenizer.model means llama2."""
    out = tmp_path / "m.gguf"
    assert convert(LLAMA / "mha" / "model.ckpt", out, map_name="auto", tokenizer=TOKENIZER) == 0
    assert GGUFReader(out).fields["tokenizer.ggml.model"].contents() == "llama"


def test_auto_ambiguous_is_an_error(tmp_path, capsys):
    from gguf_out.cli import main

    # no tokenizer beside it and a LlamaConfig yaml without Llama 3 settings: llama2 or llama3?
    status = main([str(LLAMA / "mha" / "model.ckpt"), "auto", str(tmp_path / "m.gguf"), "-q"])
    err = capsys.readouterr().err
    assert status == 1 and "cannot tell which family" in err and "llama2, llama3" in err
    assert "Traceback" not in err and not (tmp_path / "m.gguf").exists()


def test_auto_unknown_is_an_error(tmp_path, capsys):
    ckpt = FIXTURES / "ckpt" / "plain.ckpt"
    status = convert(ckpt, tmp_path / "m.gguf", "--config", QWEN3 / "tied" / "config.json", map_name="auto",
                     tokenizer=QWEN_TOKENIZER)
    err = capsys.readouterr().err
    assert status == 1 and "no bundled map fits" in err
    for name in ("llama2", "llama3", "qwen2", "qwen3"):
        assert f"{name}: " in err


def test_auto_respects_the_config_architecture(tmp_path, capsys):
    config = json.loads((QWEN3 / "tied" / "config.json").read_text())
    config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    (tmp_path / "config.json").write_text(json.dumps(config))
    status = convert(QWEN3 / "tied" / "model.ckpt", tmp_path / "m.gguf", "--config", tmp_path / "config.json",
                     map_name="auto", tokenizer=QWEN_TOKENIZER)
    err = capsys.readouterr().err
    assert status == 1 and "qwen3: the config's architectures is ['Qwen2ForCausalLM']" in err


def test_two_positionals_need_a_gguf_name(tmp_path, capsys):
    from gguf_out.cli import main

    assert main([str(QWEN3 / "tied" / "model.ckpt"), str(tmp_path / "out.bin")]) == 1
    assert "expected CKPT MAP OUT" in capsys.readouterr().err


# --- a directory of safetensors shards ---------------------------------------------------------------------------

def test_shards_give_the_same_gguf_as_the_ckpt(converted):
    """MindFormers' converter wrote qwen3/tied/shards (2 files + param_name_map.json); model.ckpt is the same
    network saved by mindspore.save_checkpoint."""
    assert converted("qwen3/tied-shards", "f16").read_bytes() == converted("qwen3/tied", "f16").read_bytes()


def shard_copy(folder, index=None):
    """qwen3/tied/shards' safetensors files in ``folder``, with an HF-style index or none."""
    folder.mkdir(parents=True)
    for f in (QWEN3 / "tied" / "shards").glob("*.safetensors"):
        shutil.copyfile(f, folder / f.name)
    if index is not None:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return folder


def convert_shards(folder, out):
    return convert(folder, out, "--config", QWEN3 / "tied" / "config.json", "--name", "m", "--outtype", "f16",
                   map_name="qwen3", tokenizer=QWEN_TOKENIZER)


def test_shards_without_index_and_with_hf_index(converted, tmp_path):
    expected = converted("qwen3/tied", "f16").read_bytes()
    assert convert_shards(shard_copy(tmp_path / "bare"), tmp_path / "bare.gguf") == 0
    assert (tmp_path / "bare.gguf").read_bytes() == expected
    index = json.loads((QWEN3 / "tied" / "shards" / "param_name_map.json").read_text())
    assert convert_shards(shard_copy(tmp_path / "indexed", index), tmp_path / "indexed.gguf") == 0
    assert (tmp_path / "indexed.gguf").read_bytes() == expected


def test_shard_index_errors(tmp_path, capsys):
    index = json.loads((QWEN3 / "tied" / "shards" / "param_name_map.json").read_text())
    name = "decoder.final_layernorm.weight"
    wrong = dict(index, **{name: "model-00001-of-00002.safetensors"})
    assert convert_shards(shard_copy(tmp_path / "a", wrong), tmp_path / "o.gguf") == 1
    err = capsys.readouterr().err
    assert f"puts '{name}' in model-00001-of-00002.safetensors, but it is in model-00002-of-00002" in err

    missing = dict(index, **{name: "model-00003-of-00003.safetensors"})
    assert convert_shards(shard_copy(tmp_path / "b", missing), tmp_path / "o.gguf") == 1
    assert "names the file 'model-00003-of-00003.safetensors'" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists()


def test_duplicate_tensor_across_shards_is_an_error(tmp_path, capsys):
    folder = shard_copy(tmp_path / "shards")
    shutil.copyfile(folder / "model-00002-of-00002.safetensors", folder / "model-00003-of-00003.safetensors")
    assert convert_shards(folder, tmp_path / "o.gguf") == 1
    err = capsys.readouterr().err
    assert "model-00003-of-00003.safetensors: holds 'decoder." in err and "which model-00002-of-00002" in err
