"""End to end for DeepSeek-V3 (map deepseek3, GGUF arch deepseek2).

Fixtures (tests/fixtures/deepseek3, made by tests/gen_deepseek_fixtures.py): MindFormers 2.1.0's
TrainingDeepseekV3ForCausalLM filled with MindFormers' own rename tables and convert ops from a transformers
DeepseekV3ForCausalLM (MLA with q- and kv-LoRA, a leading dense layer, 2 MoE layers with a shared expert, sigmoid
routing with a correction bias, group-limited top-k, routing scale 2.5, YaRN), saved by mindspore.save_checkpoint
with its multi-token-prediction layer; logits from transformers at every position. Variants: the shipped yamls'
layout (train), mla_qkv_concat with contiguous linear_fc1 (concat), no q-LoRA (noq). The legacy research/deepseek3
formats (legacy_train: bmm experts; legacy_gmm; legacy_infer), which MindFormers 2.1.0 no longer ships, are the train
fixture's weights written as r1.8.0's convert_weight.py writes them (tests/gen_deepseek_legacy_fixtures.py, from its
source), with their research yamls; the same transformers logits are their truth.
"""

import json

import numpy as np
import pytest
from conftest import BOUNDS_GROUPED_ROUTING as BOUNDS, FIXTURES, convert, gguf_value, llama_logits, relative_error, write_ckpt
from gguf import GGUFReader

from gguf_out.check import check_file
from gguf_out.cli import main
from gguf_out.maps import maps_dir

DS = FIXTURES / "deepseek3"
TOKENIZER = FIXTURES / "bpe" / "deepseek3" / "hf" / "tokenizer.json"   # tests/gen_bpe_fixtures.py deepseek3
VARIANTS = ["deepseek3/train", "deepseek3/concat", "deepseek3/noq", "deepseek3/legacy_train", "deepseek3/legacy_infer"]
LEGACY = ["deepseek3/legacy_train", "deepseek3/legacy_infer"]


def ckpt_of(variant):
    return FIXTURES / variant / "model.ckpt"


def reference(variant):
    folder = FIXTURES / variant
    return json.loads((folder / "tokens.json").read_text())["ids"], np.load(folder / "logits.npy")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepseek")
    cache = {}

    def get(variant, outtype="f32", *options, map_name="deepseek3", ckpt=None):
        key = (variant, outtype, options, str(map_name), str(ckpt))
        if key not in cache:
            out = folder / f"{variant.replace('/', '_')}-{outtype}-{len(cache)}.gguf"
            assert convert(ckpt or ckpt_of(variant), out, "--outtype", outtype, "--name", "m", *options,
                           map_name=str(map_name), tokenizer=TOKENIZER) == 0
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_at_every_position(converted, variant, outtype):
    ids, ref = reference(variant)
    got = llama_logits(converted(variant, outtype), ids)
    bound, agree = BOUNDS[outtype]
    assert relative_error(got, ref) < bound
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= agree


def test_metadata_llama_cpp_needs(converted):
    reader = GGUFReader(converted("deepseek3/train"))
    want = {"general.architecture": "deepseek2", "deepseek2.block_count": 3, "deepseek2.attention.head_count_kv": 1,
            "deepseek2.attention.q_lora_rank": 48, "deepseek2.attention.kv_lora_rank": 32,
            "deepseek2.attention.key_length": 40, "deepseek2.attention.value_length": 32,
            "deepseek2.attention.key_length_mla": 24, "deepseek2.attention.value_length_mla": 24,
            "deepseek2.rope.dimension_count": 8, "deepseek2.leading_dense_block_count": 1,
            "deepseek2.expert_count": 8, "deepseek2.expert_used_count": 2, "deepseek2.expert_shared_count": 1,
            "deepseek2.expert_feed_forward_length": 24, "deepseek2.feed_forward_length": 96,
            "deepseek2.expert_gating_func": 2, "deepseek2.expert_weights_norm": True,
            "deepseek2.expert_group_count": 2, "deepseek2.expert_group_used_count": 1,
            "deepseek2.rope.scaling.type": "yarn", "deepseek2.rope.scaling.original_context_length": 4096}
    assert {k: gguf_value(reader, k) for k in want} == want
    assert gguf_value(reader, "deepseek2.expert_weights_scale") == pytest.approx(2.5)
    assert gguf_value(reader, "deepseek2.rope.scaling.factor") == pytest.approx(40.0)
    assert gguf_value(reader, "deepseek2.rope.scaling.yarn_log_multiplier") == pytest.approx(0.1)
    names = {t.name for t in reader.tensors}
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    assert shapes["blk.0.attn_k_b.weight"] == (4, 32, 16) and shapes["blk.0.attn_v_b.weight"] == (4, 24, 32)
    assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_inp.weight" not in names
    assert {"blk.1.exp_probs_b.bias", "blk.1.ffn_gate_shexp.weight", "blk.2.ffn_down_exps.weight"} <= names
    assert not any(n.startswith("blk.3.") for n in names)
    reader = GGUFReader(converted("deepseek3/noq"))
    assert gguf_value(reader, "deepseek2.attention.q_lora_rank") == 0
    assert "blk.0.attn_q.weight" in {t.name for t in reader.tensors}


def test_mtp_layers_are_skipped_and_listed(capsys):
    assert main([str(ckpt_of("deepseek3/train")), "deepseek3", "x.gguf", "--tokenizer", str(TOKENIZER),
                 "--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skip") and "mtp." in line]
    assert len(skipped) > 15 and all("multi-token prediction" in line for line in skipped)
    assert "mtp.layers.0.eh_proj.weight" in out and "mtp.layers.0.eh_proj.weight" not in \
        "".join(line for line in out.splitlines() if line.startswith("tensor"))


# --- negative controls ---------------------------------------------------------------------------------------------

def changed_map(tmp_path, change):
    data = json.loads((maps_dir() / "deepseek3.json").read_text())
    change(data)
    path = tmp_path / "deepseek3-changed.json"
    path.write_text(json.dumps(data))
    return path


def wrong(converted, variant, path):
    ids, ref = reference(variant)
    return relative_error(llama_logits(converted(variant, "f32", map_name=path), ids), ref)


def test_control_kv_b_split_on_the_wrong_axis(converted, tmp_path):
    """kv_b read as [nope + v, heads, kv_lora] (heads inner) instead of [heads, nope + v, kv_lora]: right shapes,
    wrong values."""
    def heads_inner(data):
        for rule in data["tensors"]:
            if str(rule["from"]).endswith(("linear_kv_up_proj.weight", "linear_kvb.weight")):
                rule["steps"] = [{"reshape": ["qk_nope_head_dim+v_head_dim", "num_heads", "kv_lora_rank"]},
                                 {"split": {"axis": 0, "sizes": ["qk_nope_head_dim", "v_head_dim"]}},
                                 {"each": [[{"transpose": [1, 2, 0]}], [{"transpose": [1, 0, 2]}]]}]
    assert wrong(converted, "deepseek3/train", changed_map(tmp_path, heads_inner)) > 0.05


def test_control_expert_bias_dropped(converted, tmp_path):
    def drop(data):
        data["tensors"] = [r for r in data["tensors"] if not str(r["from"]).endswith("router.expert_bias")]
        data["skip"]["names"].append("*.mlp.router.expert_bias")
    assert wrong(converted, "deepseek3/train", changed_map(tmp_path, drop)) > 0.02


def test_control_mtp_layer_run_as_a_fourth_layer(converted, tmp_path):
    """What writing the MTP layer would do: its transformer layer as blk.3 (block_count 4) changes the logits."""
    import msckpt

    records = []
    with msckpt.open_checkpoint(ckpt_of("deepseek3/train")) as ckpt:
        for t in ckpt:
            name = t.name.replace("mtp.layers.0.transformer_layer.", "decoder.layers.3.")
            if not name.startswith("mtp."):
                records.append((name, t.dtype.name, np.array(t.array())))
    path = tmp_path / "with_mtp.ckpt"
    write_ckpt(path, records)
    config = json.loads((DS / "train" / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids, ref = reference("deepseek3/train")
    got = llama_logits(converted("deepseek3/train", "f32", "--config", tmp_path / "config.json", ckpt=path), ids)
    assert relative_error(got, ref) > 0.05


# --- settings llama.cpp cannot represent ---------------------------------------------------------------------------

def with_config(tmp_path, variant="deepseek3/train", **changes):
    config = json.loads((FIXTURES / variant / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def run(tmp_path, config, *options, variant="deepseek3/train", quiet=True):
    return main([str(ckpt_of(variant)), "deepseek3", str(tmp_path / "x.gguf"), "--config", str(config),
                 "--tokenizer", str(TOKENIZER), *(["-q"] if quiet else []), *options])


def test_no_rope_scaling_is_refused(tmp_path, capsys):
    assert run(tmp_path, with_config(tmp_path, rope_scaling=None)) == 1
    err = capsys.readouterr().err
    assert "no rope_scaling" in err and "YaRN defaults" in err and not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("change,words", [
    ({"beta_fast": 16.0}, "beta_fast / beta_slow are 16 / 1"),
    ({"mscale": 0.707}, "mscale (0.707) differs from mscale_all_dim (1)"),
])
def test_yarn_llama_cpp_cannot_follow_is_an_error_unless_allowed(tmp_path, capsys, change, words):
    config = json.loads((DS / "train" / "config.json").read_text())
    config["rope_scaling"].update(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run(tmp_path, path) == 1
    assert words in capsys.readouterr().err
    assert run(tmp_path, path, "--allow-inexact", quiet=False) == 0     # -q would silence the warning
    assert words in capsys.readouterr().err


def test_group_scoring_llama_cpp_cannot_follow(tmp_path, capsys):
    """MindFormers scores a group by its top (k // topk_group) experts; llama.cpp by its top 2."""
    config = with_config(tmp_path, num_experts_per_tok=4, topk_group=1)
    assert run(tmp_path, config) == 1
    assert "top 4 experts" in capsys.readouterr().err


def test_missing_mla_norms_are_explained(tmp_path, capsys):
    import msckpt

    with msckpt.open_checkpoint(ckpt_of("deepseek3/train")) as ckpt:
        records = [(t.name, t.dtype.name, np.array(t.array())) for t in ckpt if "layernorm" not in t.name
                   or "input_layernorm" in t.name or "pre_mlp" in t.name or "final" in t.name]
    path = tmp_path / "model.ckpt"
    write_ckpt(path, records)
    assert main([str(path), "deepseek3", str(tmp_path / "x.gguf"), "--config", str(DS / "train" / "config.json"),
                 "--tokenizer", str(TOKENIZER), "-q"]) == 1
    assert "qk_layernorm is False" in capsys.readouterr().err


def test_first_k_dense_replace_contradicting_the_tensors(tmp_path, capsys):
    assert run(tmp_path, with_config(tmp_path, first_k_dense_replace=2)) == 1
    assert "says 2 leading dense layers, but the checkpoint's first 1 layers are dense" in capsys.readouterr().err


def test_check_accepts_the_converted_files(converted):
    for variant in VARIANTS:
        report = check_file(converted(variant, "q8_0"))
        assert report.errors == [], (variant, report.errors)


def test_auto_picks_deepseek3(tmp_path, capsys):
    assert main([str(ckpt_of("deepseek3/concat")), str(tmp_path / "x.gguf"), "--tokenizer", str(TOKENIZER),
                 "--dry-run"]) == 0
    assert "map: deepseek3 (" in capsys.readouterr().err


# --- legacy research/deepseek3 formats ------------------------------------------------------------------------------

def test_legacy_gmm_gives_the_bmm_tensors_without_group_limit(converted):
    """The gmm experts ([E, H, 2F] gateT | upT) become the same GGUF tensors as the bmm ones; MindFormers' MoEV3 has
    no group-limited routing, so no expert_group keys are written (the bmm TopkRouterV2 with noaux_tc has them)."""
    bmm, gmm = GGUFReader(converted("deepseek3/legacy_train")), GGUFReader(converted("deepseek3/legacy_gmm"))
    a, b = ({t.name: np.array(t.data) for t in r.tensors} for r in (bmm, gmm))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert gguf_value(bmm, "deepseek2.expert_group_count") == 2
    assert "deepseek2.expert_group_count" not in gmm.fields
    assert "deepseek2.expert_group_used_count" not in gmm.fields


@pytest.mark.parametrize("variant", LEGACY)
def test_legacy_metadata_from_the_research_yaml(converted, variant):
    reader = GGUFReader(converted(variant))
    want = {"deepseek2.block_count": 3, "deepseek2.attention.q_lora_rank": 48, "deepseek2.expert_gating_func": 2,
            "deepseek2.leading_dense_block_count": 1, "deepseek2.expert_shared_count": 1,
            "deepseek2.expert_group_count": 2, "deepseek2.expert_group_used_count": 1,
            "deepseek2.rope.scaling.type": "yarn", "deepseek2.rope.scaling.original_context_length": 4096}
    assert {k: gguf_value(reader, k) for k in want} == want
    assert gguf_value(reader, "deepseek2.expert_weights_scale") == pytest.approx(2.5)
    assert gguf_value(reader, "deepseek2.rope.scaling.factor") == pytest.approx(40.0)


@pytest.mark.parametrize("variant", LEGACY)
def test_legacy_mtp_layer_is_skipped_and_listed(capsys, variant):
    assert main([str(ckpt_of(variant)), "deepseek3", "x.gguf", "--tokenizer", str(TOKENIZER), "--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skip")]
    mtp = [line for line in skipped if "model.layers.3." in line or "model.mtp_" in line]
    assert len(mtp) > 15 and all("multi-token prediction" in line for line in mtp)
    assert not any("model.layers.3." in line for line in out.splitlines() if line.startswith("tensor"))


@pytest.mark.parametrize("variant", LEGACY)
def test_control_rope_rows_not_reinterleaved(converted, tmp_path, variant):
    """The legacy formats store the q and k rope rows evens-then-odds; read as they are, the logits are wrong."""
    def keep_deinterleaved(data):
        def strip(steps):
            out = []
            for step in steps:
                if "reinterleave" in step:
                    continue
                if "each" in step:
                    step = {"each": [strip(part) for part in step["each"]]}
                out.append(step)
            return out
        for rule in data["tensors"]:
            if "steps" in rule:
                rule["steps"] = strip(rule["steps"])
    assert wrong(converted, variant, changed_map(tmp_path, keep_deinterleaved)) > 0.05


def legacy_yaml(tmp_path, variant="deepseek3/legacy_train", **moe):
    import yaml

    doc = yaml.safe_load((FIXTURES / variant / "config.yaml").read_text())
    for key, value in moe.items():
        if value is None:
            doc["moe_config"].pop(key, None)
        else:
            doc["moe_config"][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def convert_with(tmp_path, config, *options, variant="deepseek3/legacy_train"):
    out = tmp_path / "x.gguf"
    code = main([str(ckpt_of(variant)), "deepseek3", str(out), "--config", str(config), "--tokenizer",
                 str(TOKENIZER), "-q", "--force", *options])
    return code, out


def test_legacy_router_settings(tmp_path, capsys):
    """moe_config.use_gating_sigmoid False is softmax routing; TopkRouterV2 without topk_method (greedy) has no
    group limit; group_limited_greedy scores groups by their best expert, which llama.cpp cannot do."""
    code, out = convert_with(tmp_path, legacy_yaml(tmp_path, use_gating_sigmoid=False))
    assert code == 0 and gguf_value(GGUFReader(out), "deepseek2.expert_gating_func") == 1
    code, out = convert_with(tmp_path, legacy_yaml(tmp_path, use_gating_sigmoid=None))  # MoEConfig's default
    assert code == 0 and gguf_value(GGUFReader(out), "deepseek2.expert_gating_func") == 1
    code, out = convert_with(tmp_path, legacy_yaml(tmp_path, topk_method=None))
    assert code == 0 and "deepseek2.expert_group_count" not in GGUFReader(out).fields
    capsys.readouterr()
    config = legacy_yaml(tmp_path, topk_method="group_limited_greedy")
    assert convert_with(tmp_path, config)[0] == 1
    assert "group_limited_greedy" in capsys.readouterr().err
    assert convert_with(tmp_path, config, "--allow-inexact")[0] == 0


def test_legacy_without_yarn_needs_no_rope_scaling(tmp_path):
    """The research network applies YaRN's attention scale only with extend_method YARN (unlike the mcore MLA), so
    extend_method None is plain rope: no scaling keys."""
    import yaml

    doc = yaml.safe_load((DS / "legacy_train" / "config.yaml").read_text())
    doc["model"]["model_config"]["extend_method"] = "None"
    del doc["model"]["model_config"]["scaling_factor"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out = convert_with(tmp_path, path)
    assert code == 0 and "deepseek2.rope.scaling.type" not in GGUFReader(out).fields


def test_auto_picks_deepseek3_for_the_legacy_names(capsys):
    assert main([str(ckpt_of("deepseek3/legacy_infer")), "x.gguf", "--tokenizer", str(TOKENIZER), "--dry-run"]) == 0
    assert "map: deepseek3 (" in capsys.readouterr().err


# --- chat template and Modelfile -----------------------------------------------------------------------------------

def test_published_template_kept_and_modelfile_has_the_deepseek3_format(tmp_path):
    """tokenizer_config.json's template (DeepSeek-V3's published one) goes into the GGUF as it is; the Modelfile gets
    the built-in deepseek3 format it is recognised as."""
    import shutil

    from test_modelfile import read_modelfile, values

    from gguf_out.templates import DEEPSEEK3

    out = tmp_path / "ds.gguf"
    assert main([str(ckpt_of("deepseek3/train")), "deepseek3", str(out), "--tokenizer", str(TOKENIZER), "-q",
                 "--modelfile"]) == 0
    published = json.loads((TOKENIZER.parent / "tokenizer_config.json").read_text())["chat_template"]
    assert gguf_value(GGUFReader(out), "tokenizer.chat_template") == published
    commands = read_modelfile(tmp_path / "ds.Modelfile")
    assert values(commands, "template") == [DEEPSEEK3.go]
    assert values(commands, "parameter stop") == ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    # without a tokenizer_config.json the map's default is the built-in deepseek3 template
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(TOKENIZER, bare / "tokenizer.json")
    out = tmp_path / "bare.gguf"
    assert main([str(ckpt_of("deepseek3/train")), "deepseek3", str(out), "--tokenizer", str(bare / "tokenizer.json"),
                 "-q"]) == 0
    assert gguf_value(GGUFReader(out), "tokenizer.chat_template") == DEEPSEEK3.jinja


def test_llama_cpp_tokenizes_a_chat_prompt_like_tokenizers(converted):
    """The rendered prompt's role markers are single tokens in llama.cpp as in tokenizers."""
    from llamacpp import LlamaModel
    from test_templates import WITH_SYSTEM, hf_render

    from gguf_out.templates import DEEPSEEK3

    prompt = hf_render(DEEPSEEK3.jinja, WITH_SYSTEM, "deepseek3")
    exp = json.loads((FIXTURES / "bpe" / "deepseek3" / "expected.json").read_text())
    ids = {text: i for i, text, _ in exp["specials"]}
    with LlamaModel(converted("deepseek3/train"), n_ctx=128) as model:
        got = model.tokenize(prompt, add_special=False, parse_special=True)
    assert got[0] == ids["<｜begin▁of▁sentence｜>"] and got.count(ids["<｜User｜>"]) == 2
    assert got.count(ids["<｜Assistant｜>"]) == 2 and ids["<｜end▁of▁sentence｜>"] in got
