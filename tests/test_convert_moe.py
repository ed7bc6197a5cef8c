"""End to end for the mixture-of-experts families: Qwen3-MoE (mcore) and Mixtral (legacy Llama with experts).

Fixtures (tests/fixtures/{qwen3_moe,mixtral}, made by tests/gen_moe_fixtures.py from real MindFormers 2.1.0
networks): qwen3_moe/train and qwen3_moe/infer (the training network's 2-D experts, and a save of the inference
network: 3-D experts and contiguous QKV), logits from transformers' Qwen3MoeForCausalLM; mixtral/bmm_scaled
(MoEV2, routed_scaling_factor 1.5) with the real MindFormers logits, mixtral/gmm (MoEV3) with transformers'.
llama.cpp's logits of the converted GGUF must match at every position; the negative controls (gate and up
swapped, experts not transposed, no Q/K permutation, the inference save split as grouped QKV, the routing scale
dropped) must not.
"""

import json
import shutil

import numpy as np
import pytest
from conftest import (BOUNDS, FIXTURES, TOKENIZER, convert, gguf_value, llama_logits, llama_logits_isolated,
                      relative_error, write_ckpt)
from gguf import GGUFReader

from gguf_out.check import check_file
from gguf_out.cli import main
from gguf_out.maps import maps_dir

QWEN_TOKENIZER = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"
VARIANTS = {
    "qwen3_moe/train": ("qwen3_moe", QWEN_TOKENIZER),
    "qwen3_moe/infer": ("qwen3_moe", QWEN_TOKENIZER),
    "mixtral/bmm_scaled": ("mixtral", TOKENIZER),
    "mixtral/gmm": ("mixtral", TOKENIZER),
}


def ckpt_of(variant):
    return FIXTURES / variant / "model.ckpt"


def reference(variant):
    folder = FIXTURES / variant
    return json.loads((folder / "tokens.json").read_text())["ids"], np.load(folder / "logits.npy")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moe")
    cache = {}

    def get(variant, outtype="f32", *options, map_name=None):
        default_map, tokenizer = VARIANTS[variant]
        key = (variant, outtype, options, str(map_name))
        if key not in cache:
            out = folder / f"{variant.replace('/', '_')}-{outtype}-{len(cache)}.gguf"
            status = convert(ckpt_of(variant), out, "--outtype", outtype, "--name", "m", *options,
                             map_name=str(map_name or default_map), tokenizer=tokenizer)
            assert status == 0
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_at_every_position(converted, variant, outtype):
    ids, ref = reference(variant)
    got = llama_logits(converted(variant, outtype), ids)
    bound, agree = BOUNDS[outtype]
    assert relative_error(got, ref) < bound
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= agree


def test_metadata_llama_cpp_needs(converted):
    reader = GGUFReader(converted("qwen3_moe/train"))
    assert gguf_value(reader, "general.architecture") == "qwen3moe"
    assert gguf_value(reader, "qwen3moe.expert_count") == 8
    assert gguf_value(reader, "qwen3moe.expert_used_count") == 2
    assert gguf_value(reader, "qwen3moe.expert_feed_forward_length") == 24
    assert reader.fields["qwen3moe.expert_count"].types[0].name == "UINT32"
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (8, 24, 64)
    assert shapes["blk.0.ffn_down_exps.weight"] == (8, 64, 24)
    assert shapes["blk.0.ffn_gate_inp.weight"] == (8, 64)
    reader = GGUFReader(converted("mixtral/gmm"))
    assert gguf_value(reader, "general.architecture") == "llama"
    assert (gguf_value(reader, "llama.expert_count"), gguf_value(reader, "llama.expert_used_count")) == (4, 2)
    assert gguf_value(reader, "llama.feed_forward_length") == 40


def test_mixtral_chat_template_defaults_to_mistral_instruct(tmp_path):
    """Without a tokenizer_config.json template, the map's built-in format is written."""
    shutil.copy(TOKENIZER, tmp_path / "tokenizer.model")
    out = tmp_path / "m.gguf"
    assert convert(ckpt_of("mixtral/gmm"), out, map_name="mixtral", tokenizer=tmp_path / "tokenizer.model") == 0
    template = gguf_value(GGUFReader(out), "tokenizer.chat_template")
    assert "[INST]" in template and "<<SYS>>" not in template     # not llama2-chat


def test_both_qwen3_moe_saves_give_the_same_tensors_for_the_same_weights(tmp_path):
    """The training save (2-D experts, grouped QKV) and the inference save (3-D experts, contiguous QKV) of one
    model are different bytes on disk but must become the same GGUF tensors: checked on the inference fixture by
    rewriting it in the training layout with our own writer of MindSpore records."""
    from gguf import GGUFReader as R

    ref = R(convert_once(tmp_path, "qwen3_moe/infer", "bf16"))
    train_like = tmp_path / "train_like.ckpt"
    write_training_layout(ckpt_of("qwen3_moe/infer"), train_like)
    out = tmp_path / "t.gguf"
    assert convert(train_like, out, "--outtype", "bf16", "--config", FIXTURES / "qwen3_moe/infer/config.json",
                   map_name="qwen3_moe", tokenizer=QWEN_TOKENIZER) == 0
    got = {t.name: t.data.tobytes() for t in R(out).tensors}
    want = {t.name: t.data.tobytes() for t in ref.tensors}
    assert got == want


def convert_once(tmp_path, variant, outtype):
    out = tmp_path / f"{variant.replace('/', '_')}.gguf"
    assert convert(ckpt_of(variant), out, "--outtype", outtype, map_name=VARIANTS[variant][0],
                   tokenizer=VARIANTS[variant][1]) == 0
    return out


def write_training_layout(src, dest):
    """The inference save's tensors as the training network lays them out: experts [E*H, 2F] / [E*F, H] (a plain
    reshape: the same element order) and QKV regrouped per KV head (MindFormers' concat_qkv_weight_megatron)."""
    import msckpt

    nh, nkv, hd, H = 4, 2, 24, 64
    records = []
    with msckpt.open_checkpoint(src) as ckpt:
        for t in ckpt:
            a = np.array(t.array())
            if t.name.endswith("experts.weight1") or t.name.endswith("experts.weight2"):
                a = a.reshape(-1, a.shape[-1])
            elif t.name.endswith("linear_qkv.weight"):
                q, k, v = np.split(a, [nh * hd, nh * hd + nkv * hd])
                r = nh // nkv
                a = np.concatenate([q.reshape(nkv, r * hd, H), k.reshape(nkv, hd, H), v.reshape(nkv, hd, H)],
                                   axis=1).reshape(-1, H)
            records.append((t.name, t.dtype.name, a))
    write_ckpt(dest, records)


# --- negative controls ---------------------------------------------------------------------------------------------

def changed_map(tmp_path, name, change):
    data = json.loads((maps_dir() / f"{name}.json").read_text())
    change(data)
    path = tmp_path / f"{name}-changed.json"
    path.write_text(json.dumps(data))
    return path


def expert_rules(data, source_end):
    return [r for r in data["tensors"] if r["from"].endswith(source_end)]


def test_control_gate_and_up_swapped(converted, tmp_path):
    def swap(data):
        for rule in expert_rules(data, "experts.weight1") + expert_rules(data, "ffn.w1"):
            rule["to"] = rule["to"][::-1]
    for variant, name in (("qwen3_moe/train", "qwen3_moe"), ("mixtral/gmm", "mixtral")):
        ids, ref = reference(variant)
        wrong = converted(variant, "f32", map_name=changed_map(tmp_path, name, swap))
        assert relative_error(llama_logits(wrong, ids), ref) > 0.05


def test_control_experts_not_transposed(converted, tmp_path, capsys):
    """Without the transpose the shapes are wrong and the converter refuses; read in the wrong order instead (a
    reshape to the right shape), the logits are wrong."""
    def drop_transpose(data):
        for rule in expert_rules(data, "experts.weight1") + expert_rules(data, "experts.weight2"):
            rule["steps"] = [s for s in rule["steps"] if "transpose" not in s]
    path = changed_map(tmp_path, "qwen3_moe", drop_transpose)
    status = main([str(ckpt_of("qwen3_moe/train")), str(path), str(tmp_path / "x.gguf"), "--tokenizer",
                   str(QWEN_TOKENIZER), "-q"])
    assert status == 1 and "but the config says [8, 24, 64]" in capsys.readouterr().err

    def reshape_instead(data):
        for rule in expert_rules(data, "experts.weight1") + expert_rules(data, "experts.weight2"):
            shape = ["n_expert", "expert_ffn_size", "hidden_size"] if rule["from"].endswith("weight1") else \
                ["n_expert", "hidden_size", "expert_ffn_size"]
            rule["steps"] = [{"reshape": shape} if "transpose" in s else s for s in rule["steps"]]
    ids, ref = reference("qwen3_moe/train")
    wrong = converted("qwen3_moe/train", "f32", map_name=changed_map(tmp_path, "qwen3_moe", reshape_instead))
    assert relative_error(llama_logits(wrong, ids), ref) > 0.05


def test_control_mixtral_without_the_qk_permutation(converted):
    ids, ref = reference("mixtral/bmm_scaled")
    wrong = converted("mixtral/bmm_scaled", "f32", "--rope-layout", "meta")
    assert relative_error(llama_logits(wrong, ids), ref) > 0.05


def test_control_inference_save_split_as_grouped_qkv(converted):
    ids, ref = reference("qwen3_moe/infer")
    wrong = converted("qwen3_moe/infer", "f32", "--fused-layout", "interleaved")
    assert relative_error(llama_logits(wrong, ids), ref) > 0.05


def test_control_routing_scale_dropped(converted, tmp_path):
    def no_fold(data):
        for rule in data["tensors"]:
            if "steps" in rule:
                rule["steps"] = [s for s in rule["steps"] if "scale" not in s]
                if not rule["steps"]:
                    del rule["steps"]
    ids, ref = reference("mixtral/bmm_scaled")
    wrong = converted("mixtral/bmm_scaled", "f32", map_name=changed_map(tmp_path, "mixtral", no_fold))
    assert relative_error(llama_logits(wrong, ids), ref) > 0.05


# --- routing llama.cpp cannot represent ----------------------------------------------------------------------------

def with_config(tmp_path, variant, **changes):
    config = json.loads((FIXTURES / variant / "config.json").read_text())
    config.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_no_renormalisation_is_an_error_unless_allowed(tmp_path, capsys):
    config = with_config(tmp_path, "qwen3_moe/train", norm_topk_prob=False)
    args = [str(ckpt_of("qwen3_moe/train")), "qwen3_moe", str(tmp_path / "x.gguf"), "--config", str(config),
            "--tokenizer", str(QWEN_TOKENIZER), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "norm_topk_prob is false" in err and "always renormalises" in err and "--allow-inexact" in err
    assert err.count("\n") == 1 and not (tmp_path / "x.gguf").exists()
    assert main([a for a in args if a != "-q"] + ["--allow-inexact"]) == 0      # -q would silence the warning
    assert "warning:" in capsys.readouterr().err and (tmp_path / "x.gguf").exists()


def test_missing_norm_topk_prob_means_mindformers_default(tmp_path, capsys):
    """Qwen3MoeConfig defaults norm_topk_prob to False: a config without it is the unrepresentable case."""
    config = json.loads((FIXTURES / "qwen3_moe/train/config.json").read_text())
    del config["norm_topk_prob"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main([str(ckpt_of("qwen3_moe/train")), "qwen3_moe", str(tmp_path / "x.gguf"), "--config", str(path),
                 "--tokenizer", str(QWEN_TOKENIZER), "-q"]) == 1
    assert "not set, the family's default" in capsys.readouterr().err


def test_scale_with_renormalisation_is_folded_exactly(tmp_path):
    """routed_scaling_factor under renormalisation: the GGUF's ffn_down_exps are the checkpoint's times the
    factor (bit for bit in f32), and nothing else changes."""
    from gguf import GGUFReader as R

    plain = tmp_path / "plain.gguf"
    assert convert(ckpt_of("qwen3_moe/train"), plain, "--outtype", "f32", map_name="qwen3_moe",
                   tokenizer=QWEN_TOKENIZER) == 0
    scaled = tmp_path / "scaled.gguf"
    config = with_config(tmp_path, "qwen3_moe/train", routed_scaling_factor=2.5)
    assert convert(ckpt_of("qwen3_moe/train"), scaled, "--outtype", "f32", "--config", config,
                   map_name="qwen3_moe", tokenizer=QWEN_TOKENIZER) == 0
    a = {t.name: np.array(t.data) for t in R(plain).tensors}
    b = {t.name: np.array(t.data) for t in R(scaled).tensors}
    for name in a:
        if "ffn_down_exps" in name:
            assert np.array_equal(b[name], a[name] * np.float32(2.5)), name
        else:
            assert np.array_equal(a[name], b[name]), name


def test_mixtral_sigmoid_gating_is_an_error(tmp_path, capsys):
    import yaml

    doc = yaml.safe_load((FIXTURES / "mixtral/gmm/config.yaml").read_text())
    doc["moe_config"]["use_gating_sigmoid"] = True
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main([str(ckpt_of("mixtral/gmm")), "mixtral", str(tmp_path / "x.gguf"), "--config", str(path),
                 "--tokenizer", str(TOKENIZER), "-q"]) == 1
    assert "sigmoid scores" in capsys.readouterr().err


def test_ignored_layer_settings_are_warned_about(tmp_path, capsys):
    config = with_config(tmp_path, "qwen3_moe/train", mlp_only_layers=[1], decoder_sparse_step=2)
    assert convert(ckpt_of("qwen3_moe/train"), tmp_path / "x.gguf", "--config", config, map_name="qwen3_moe",
                   tokenizer=QWEN_TOKENIZER, quiet=False) == 0
    err = capsys.readouterr().err
    assert "mlp_only_layers is [1], but MindFormers ignores it" in err and "decoder_sparse_step is 2" in err


# --- shapes and tensors that are not this family -------------------------------------------------------------------

def test_shared_experts_in_qwen3_moe_are_an_error(tmp_path, capsys):
    import msckpt

    path = tmp_path / "model.ckpt"
    with msckpt.open_checkpoint(ckpt_of("qwen3_moe/train")) as ckpt:
        records = [(t.name, t.dtype.name, np.array(t.array())) for t in ckpt]
    records.append(("decoder.layers.0.mlp.shared_experts.linear_fc1.weight", "Float32",
                    np.zeros((48, 64), np.float32)))
    write_ckpt(path, records)
    assert main([str(path), "qwen3_moe", str(tmp_path / "x.gguf"), "--config",
                 str(FIXTURES / "qwen3_moe/train/config.json"), "--tokenizer", str(QWEN_TOKENIZER), "-q"]) == 1
    assert "Qwen2-MoE" in capsys.readouterr().err


def test_expert_count_contradicting_the_config_is_an_error(tmp_path, capsys):
    config = with_config(tmp_path, "qwen3_moe/train", num_experts=16)
    assert main([str(ckpt_of("qwen3_moe/train")), "qwen3_moe", str(tmp_path / "x.gguf"), "--config", str(config),
                 "--tokenizer", str(QWEN_TOKENIZER), "-q"]) == 1
    err = capsys.readouterr().err
    assert "num_experts says n_expert = 16" in err and "router.weight" in err


def test_dry_run_shows_the_expert_transforms(capsys):
    assert main([str(ckpt_of("qwen3_moe/train")), "qwen3_moe", "x.gguf", "--tokenizer", str(QWEN_TOKENIZER),
                 "--dry-run", "--outtype", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "blk.0.ffn_gate_exps.weight" in out and "reshape [512, 48] -> [8, 64, 48]" in out
    assert "part 1/2 of axis 2, transpose [0, 2, 1]" in out


# --- check knows the MoE keys --------------------------------------------------------------------------------------

def without_key(src, dest, key):
    from gguf import GGUFReader as R, GGUFWriter

    reader = R(src)
    arch = gguf_value(reader, "general.architecture")
    writer = GGUFWriter(dest, arch)
    for field in reader.fields.values():
        if field.name == key or field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype.name == "ARRAY":
            writer.add_array(field.name, value)
        else:
            writer.add_key_value(field.name, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


@pytest.mark.parametrize("variant,key", [("qwen3_moe/train", "qwen3moe.expert_count"),
                                         ("qwen3_moe/train", "qwen3moe.expert_used_count"),
                                         ("mixtral/gmm", "llama.expert_count")])
def test_check_finds_the_missing_key_that_aborts_llama_cpp(converted, tmp_path, variant, key):
    broken = without_key(converted(variant, "f32"), tmp_path / "broken.gguf", key)
    report = check_file(broken)
    assert any(p.kind == "missing-key" and key in p.text and "aborts" in p.text for p in report.errors)
    ids, _ = reference(variant)
    with pytest.raises(RuntimeError, match="status"):     # and real llama.cpp does abort (in a child process)
        llama_logits_isolated(broken, ids)


def test_check_accepts_the_converted_files(converted):
    for variant in VARIANTS:
        report = check_file(converted(variant, "q8_0"))
        assert report.errors == [], (variant, report.errors)


# --- auto -----------------------------------------------------------------------------------------------------------

AUTO_FIXTURES = {
    "llama/mha": ("llama2", TOKENIZER), "llama/gqa_fused": ("llama2", TOKENIZER),
    "qwen2/tied": ("qwen2", QWEN_TOKENIZER), "qwen2/fused": ("qwen2", QWEN_TOKENIZER),
    "llama3/rope_scaled": ("llama3", FIXTURES / "llama3" / "tokenizer" / "tokenizer.json"),
    "qwen3/tied": ("qwen3", QWEN_TOKENIZER), "qwen3/contiguous": ("qwen3", QWEN_TOKENIZER),
    "qwen3_moe/train": ("qwen3_moe", QWEN_TOKENIZER), "qwen3_moe/infer": ("qwen3_moe", QWEN_TOKENIZER),
    "mixtral/bmm_scaled": ("mixtral", TOKENIZER), "mixtral/gmm": ("mixtral", TOKENIZER),
}


@pytest.mark.parametrize("variant", list(AUTO_FIXTURES))
def test_auto_picks_exactly_its_own_map(tmp_path, variant, capsys):
    family, tokenizer = AUTO_FIXTURES[variant]
    assert main([str(ckpt_of(variant)), "auto", str(tmp_path / "x.gguf"), "--tokenizer", str(tokenizer),
                 "--dry-run"]) == 0
    assert f"map: {family} (" in capsys.readouterr().err


# --- expert tensors quantized in bands -----------------------------------------------------------------------------

def synthetic_qwen3_moe(folder, E=4, H=256, F=256, nh=4, nkv=2, hd=64, V=512, seed=3):
    """A one-layer mcore Qwen3-MoE checkpoint with K-quant-sized rows (our own record writer: only the bytes and
    shapes matter here) and its config.json."""
    rng = np.random.default_rng(seed)
    p = "decoder.layers.0."
    shapes = {"embedding.word_embeddings.weight": (V, H), "decoder.final_layernorm.weight": (H,),
              "output_layer.weight": (V, H), p + "input_layernorm.weight": (H,), p + "pre_mlp_layernorm.weight": (H,),
              p + "self_attention.linear_qkv.weight": ((nh + 2 * nkv) * hd, H),
              p + "self_attention.q_layernorm.weight": (hd,), p + "self_attention.k_layernorm.weight": (hd,),
              p + "self_attention.linear_proj.weight": (H, nh * hd), p + "mlp.router.weight": (E, H),
              p + "mlp.experts.weight1": (E * H, 2 * F), p + "mlp.experts.weight2": (E * F, H)}
    folder.mkdir(parents=True, exist_ok=True)
    # outliers and an all-zero expert row band, so the quantizers' edge cases are on expert tensors too
    records = []
    for name, shape in shapes.items():
        a = rng.standard_normal(shape).astype(np.float32) * 0.05
        if name.endswith("weight1"):
            a[3 * H:3 * H + 7] = 0.0
            a[5, 9] = 40.0
        records.append((name, "BFloat16", (a.view(np.uint32) >> 16).astype(np.uint16)))
    write_ckpt(folder / "model.ckpt", records)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3MoeForCausalLM"], "hidden_size": H, "num_hidden_layers": 1,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": hd, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "vocab_size": V, "moe_intermediate_size": F, "num_experts": E,
        "num_experts_per_tok": 2, "norm_topk_prob": True, "routed_scaling_factor": 1.25}))
    return folder / "model.ckpt"


@pytest.mark.parametrize("band_bytes", [32 << 20, 40_000])
def test_expert_tensors_quantize_like_ggml(tmp_path, monkeypatch, band_bytes):
    """Every tensor of a q4_k_m file (K-quants, fallbacks, F32) equals ggml_quantize_chunk of the f32 file's values,
    also when bands are small enough to cut experts into pieces (band_bytes 40 kB: a few rows of one expert)."""
    import gguf_out.encode
    from gguf import GGUFReader as R
    from llamacpp import quantize_chunk

    ckpt = synthetic_qwen3_moe(tmp_path / "m")
    monkeypatch.setattr(gguf_out.encode, "_CHUNK_BYTES", band_bytes)
    paths = {}
    for outtype in ("f32", "q4_k_m"):
        paths[outtype] = tmp_path / f"{outtype}.gguf"
        assert convert(ckpt, paths[outtype], "--outtype", outtype, "--threads", "2", map_name="qwen3_moe",
                       tokenizer=QWEN_TOKENIZER) == 0
    values = {t.name: np.array(t.data) for t in R(paths["f32"]).tensors}
    seen = set()
    for t in R(paths["q4_k_m"]).tensors:
        ref = values[t.name]
        if t.tensor_type.name in ("F32", "F16"):
            want = ref.astype(np.float32 if t.tensor_type.name == "F32" else np.float16).tobytes()
        else:
            want = quantize_chunk(t.tensor_type, ref.reshape(-1, ref.shape[-1]))
        assert t.data.tobytes() == want, t.name
        seen.add(t.tensor_type.name)
    assert {"Q4_K", "Q6_K"} <= seen


def test_config_spellings_give_the_same_file(tmp_path):
    """transformers 5 writes num_local_experts and rope_parameters; MindFormers' TransformerConfig names them
    num_moe_experts / moe_router_topk / moe_ffn_hidden_size: all must give the same GGUF as the classic keys."""
    classic = json.loads((FIXTURES / "qwen3_moe/train/config.json").read_text())
    new = dict(classic)
    new["num_local_experts"] = new.pop("num_experts")
    new["rope_parameters"] = {"rope_type": "default", "rope_theta": new.pop("rope_theta")}
    megatron = dict(classic)
    for old, key in (("num_experts", "num_moe_experts"), ("num_experts_per_tok", "moe_router_topk"),
                     ("moe_intermediate_size", "moe_ffn_hidden_size")):
        megatron[key] = megatron.pop(old)
    outputs = []
    for k, config in enumerate((classic, new, megatron)):
        path = tmp_path / f"config{k}.json"
        path.write_text(json.dumps(config))
        outputs.append(tmp_path / f"m{k}.gguf")
        assert convert(ckpt_of("qwen3_moe/train"), outputs[-1], "--config", path, map_name="qwen3_moe",
                       tokenizer=QWEN_TOKENIZER) == 0
    assert outputs[0].read_bytes() == outputs[1].read_bytes() == outputs[2].read_bytes()
