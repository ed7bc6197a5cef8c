"""LoRA fine-tunes end to end: MindFormers 2.1.0 LoRA checkpoints -> merged GGUF, or base GGUF + LoRA adapter GGUF
-> llama.cpp logits == the real MindFormers LoRA network's.

The fixtures (tests/fixtures/lora, tests/gen_lora_fixtures.py) are tiny legacy Llamas wrapped by MindFormers' own
pet LoRA (mindpet LoRADense, rank 4, alpha 16: scale 4) with non-zero B, saved whole (base + LoRA), as the
trainable parameters only (with the adapter_config.json MindFormers writes), and (unfused) the base alone.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import BOUNDS, FIXTURES, TOKENIZER, convert, gguf_value, relative_error
from gguf import GGMLQuantizationType as T, GGUFReader

from llamacpp import LlamaModel

LORA = FIXTURES / "lora"
VARIANTS = ["unfused", "fused"]


def reference(variant, name="logits.npy"):
    return json.loads((LORA / variant / "tokens.json").read_text())["ids"], np.load(LORA / variant / name)


def logits(path, ids, adapter=None):
    with LlamaModel(path, lora=adapter) as model:
        return model.logits(ids)


def assert_close(got, ref, outtype, what):
    bound, share = BOUNDS[outtype]
    error = relative_error(got, ref)
    assert error <= bound, f"{what}: relative logit error {error:.2e} > {bound}"
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= share


def assert_wrong(got, ref, what):
    error = relative_error(got, ref)
    assert error > 10 * BOUNDS["f32"][0], f"{what}: relative logit error only {error:.2e}"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """GGUF paths converted once per (variant, checkpoint, options)."""
    folder = tmp_path_factory.mktemp("lora")
    cache = {}

    def get(variant, ckpt="model.ckpt", *options):
        key = (variant, ckpt, options)
        if key not in cache:
            out = folder / f"{variant}-{len(cache)}.gguf"
            assert convert(LORA / variant / ckpt, out, *options) == 0
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_merged_logits_match_mindformers_lora(made, variant, outtype):
    """The default for a checkpoint with LoRA tensors: merged, W + alpha/r B @ A, before the map's transforms."""
    ids, ref = reference(variant)
    assert_close(logits(made(variant, "model.ckpt", "--outtype", outtype), ids), ref, outtype, f"{variant} merged")


def test_lora_only_checkpoint_merged_into_base(made):
    """--base: a save_trainable_params checkpoint merged into its base (config and tokenizer found beside it)."""
    ids, ref = reference("unfused")
    path = made("unfused", "lora/lora.ckpt", "--base", LORA / "unfused" / "base.ckpt", "--outtype", "f32")
    assert_close(logits(path, ids), ref, "f32", "--base merge")
    whole = made("unfused", "model.ckpt", "--outtype", "f32")
    assert [(t.name, t.data.tobytes()) for t in GGUFReader(path).tensors] == \
        [(t.name, t.data.tobytes()) for t in GGUFReader(whole).tensors]


@pytest.mark.parametrize("outtype", ["f32", "f16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_on_base_matches_mindformers_lora(made, variant, outtype):
    """--lora adapter from the LoRA-only save (hparams from the yaml), loaded on the base GGUF by llama.cpp's
    adapter API at scale 1 (llama.cpp applies adapter.lora.alpha / rank itself)."""
    ids, ref = reference(variant)
    base = made(variant, "model.ckpt", "--lora", "skip", "--outtype", "f32")
    adapter = made(variant, "lora/lora.ckpt", "--lora", "adapter", "--config", LORA / variant / "config.yaml",
                   "--outtype", outtype)
    assert_close(logits(base, ids, adapter), ref, outtype, f"{variant} base + adapter")


def test_adapter_metadata_and_tensors(made):
    path = made("fused", "lora/lora.ckpt", "--lora", "adapter", "--config", LORA / "fused" / "config.yaml")
    reader = GGUFReader(path)
    assert gguf_value(reader, "general.type") == "adapter"
    assert gguf_value(reader, "general.architecture") == "llama"
    assert gguf_value(reader, "adapter.type") == "lora"
    assert gguf_value(reader, "adapter.lora.alpha") == 16.0
    tensors = {t.name: t for t in reader.tensors}
    # the fused w_qkv's B split into Q / K / V rows (permuted for Q and K), one A shared; gate/up likewise
    assert set(tensors) == {f"blk.{i}.{w}.weight.lora_{ab}" for i in range(2) for ab in "ab" for w in
                            ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [64, 4]      # ne: [in, r]
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [4, 64]      # ne: [r, out]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [4, 16]
    assert all(t.tensor_type == T.F32 for t in reader.tensors)               # adapters default to F32
    a = {n: tensors[f"blk.0.{n}.weight.lora_a"].data for n in ("attn_q", "attn_k", "attn_v")}
    assert np.array_equal(a["attn_q"], a["attn_k"]) and np.array_equal(a["attn_q"], a["attn_v"])


def test_adapter_from_whole_save_equals_lora_only(made):
    whole = made("unfused", "model.ckpt", "--lora", "adapter")
    only = made("unfused", "lora/lora.ckpt", "--lora", "adapter", "--config", LORA / "unfused" / "config.yaml")
    assert [(t.name, t.data.tobytes()) for t in GGUFReader(whole).tensors] == \
        [(t.name, t.data.tobytes()) for t in GGUFReader(only).tensors]


def test_adapter_with_base_checks_it(made, tmp_path, capsys):
    """--lora adapter --base: planned on the real base weights (same tensors); a base of another shape is refused."""
    only = made("unfused", "lora/lora.ckpt", "--lora", "adapter", "--config", LORA / "unfused" / "config.yaml")
    with_base = made("unfused", "lora/lora.ckpt", "--lora", "adapter", "--base", LORA / "unfused" / "base.ckpt")
    assert [(t.name, t.data.tobytes()) for t in GGUFReader(only).tensors] == \
        [(t.name, t.data.tobytes()) for t in GGUFReader(with_base).tensors]
    assert convert(LORA / "unfused" / "lora" / "lora.ckpt", tmp_path / "x.gguf", "--lora", "adapter", "--base",
                   FIXTURES / "llama" / "mha" / "model.ckpt", "--config", LORA / "unfused" / "config.yaml") == 1
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# negative controls: each mistake the tests above would catch


def test_lora_dropped_is_the_base_model(made):
    ids, ref = reference("unfused")
    path = made("unfused", "model.ckpt", "--lora", "skip", "--outtype", "f32")
    assert_wrong(logits(path, ids), ref, "--lora skip")
    _, base = reference("unfused", "base_logits.npy")
    assert_close(logits(path, ids), base, "f32", "--lora skip vs the base network")


@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_without_the_scale_is_wrong(tmp_path, variant):
    """alpha = r (scale 1) instead of MindFormers' alpha / r = 4."""
    ids, ref = reference(variant)
    folder = tmp_path / variant
    shutil.copytree(LORA / variant, folder)
    doc = yaml.safe_load((folder / "config.yaml").read_text())
    del doc["model"]["model_config"]["pet_config"]
    (folder / "config.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "unscaled.gguf"
    assert convert(folder / "model.ckpt", out, "--outtype", "f32", "--lora-alpha", "4") == 0
    assert_wrong(logits(out, ids), ref, "merged with scale 1")


def test_merge_with_b_a_transposed_is_wrong(tmp_path, monkeypatch):
    """(B @ A)^T added to the square weights (wq, wo) instead of B @ A."""
    from gguf_out import lora

    original = lora.MergedTensor.read_box

    def transposed(self, box):
        if self.shape[0] != self.shape[1]:
            return original(self, box)
        (r0, r1), (c0, c1) = box
        w = self.base.read_box(box).astype(np.float32)
        delta = (self.pair.b.array() @ self.pair.a.array()).T
        return w + self.scale * delta[r0:r1, c0:c1]

    monkeypatch.setattr(lora.MergedTensor, "read_box", transposed)
    ids, ref = reference("unfused")
    out = tmp_path / "transposed.gguf"
    assert convert(LORA / "unfused" / "model.ckpt", out, "--outtype", "f32") == 0
    assert_wrong(logits(out, ids), ref, "B @ A transposed")


@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_without_the_b_permutation_is_wrong(made, variant):
    """The rope permutation left off lora_b (--rope-layout meta for the adapter only) on a correct base."""
    ids, ref = reference(variant)
    base = made(variant, "model.ckpt", "--lora", "skip", "--outtype", "f32")
    adapter = made(variant, "model.ckpt", "--lora", "adapter", "--rope-layout", "meta")
    assert_wrong(logits(base, ids, adapter), ref, "lora_b not permuted")


# ---------------------------------------------------------------------------------------------------------------
# where alpha comes from, and the errors


def test_alpha_from_adapter_config_json(tmp_path, capsys):
    """No pet_config in the yaml: MindFormers' adapter_config.json beside the LoRA checkpoint gives alpha."""
    ids, ref = reference("unfused")
    folder = tmp_path / "lora"
    shutil.copytree(LORA / "unfused" / "lora", folder)
    doc = yaml.safe_load((LORA / "unfused" / "config.yaml").read_text())
    del doc["model"]["model_config"]["pet_config"]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "m.gguf"
    assert convert(folder / "lora.ckpt", out, "--base", LORA / "unfused" / "base.ckpt", "--config",
                   tmp_path / "base.yaml", "--outtype", "f32") == 0
    assert_close(logits(out, ids), ref, "f32", "alpha from adapter_config.json")


def test_no_alpha_is_an_error(tmp_path, capsys):
    doc = yaml.safe_load((LORA / "unfused" / "config.yaml").read_text())
    del doc["model"]["model_config"]["pet_config"]
    shutil.copy(LORA / "unfused" / "model.ckpt", tmp_path / "model.ckpt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "x.gguf"
    assert convert(tmp_path / "model.ckpt", out) == 1
    err = capsys.readouterr().err
    assert "no lora_alpha" in err and "--lora-alpha" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))


def test_rank_contradicting_the_tensors_is_an_error(tmp_path, capsys):
    doc = yaml.safe_load((LORA / "unfused" / "config.yaml").read_text())
    doc["model"]["model_config"]["pet_config"]["lora_rank"] = 8
    shutil.copy(LORA / "unfused" / "model.ckpt", tmp_path / "model.ckpt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    assert convert(tmp_path / "model.ckpt", tmp_path / "x.gguf") == 1
    assert "rank is 8" in capsys.readouterr().err


def test_alpha_option_contradicting_the_config_is_an_error(tmp_path, capsys):
    assert convert(LORA / "unfused" / "model.ckpt", tmp_path / "x.gguf", "--lora-alpha", "8") == 1
    assert "contradicts" in capsys.readouterr().err


def test_lora_only_checkpoint_without_base_cannot_merge(tmp_path, capsys):
    assert convert(LORA / "unfused" / "lora" / "lora.ckpt", tmp_path / "x.gguf", "--config",
                   LORA / "unfused" / "config.yaml") == 1
    err = capsys.readouterr().err
    assert "no base weight" in err and "--base" in err


@pytest.mark.parametrize("options, message", [
    (["--lora", "adapter", "--modelfile"], "use --lora merge"),
    (["--lora", "adapter", "--outtype", "q4_k_m"], "an adapter is written as one of"),
    (["--lora", "adapter", "--outtype", "f16,f32"], "an adapter is written as one of"),
])
def test_adapter_option_errors(tmp_path, capsys, options, message):
    assert convert(LORA / "unfused" / "model.ckpt", tmp_path / "x.gguf", *options) == 1
    assert message in capsys.readouterr().err


def test_adapter_or_base_without_lora_tensors_is_an_error(tmp_path, capsys):
    plain = LORA / "unfused" / "base.ckpt"
    assert convert(plain, tmp_path / "x.gguf", "--lora", "adapter", "--config", LORA / "unfused" / "config.yaml") == 1
    assert "no LoRA tensors" in capsys.readouterr().err


def test_skip_says_so_and_verbose_lists_merged_entries(tmp_path, capsys):
    from gguf_out.cli import main

    assert main([str(LORA / "unfused" / "model.ckpt"), "llama2", str(tmp_path / "s.gguf"), "--tokenizer",
                 str(TOKENIZER), "--lora", "skip"]) == 0
    assert "--lora skip: 28 LoRA tensors" in capsys.readouterr().err
    assert main([str(LORA / "unfused" / "model.ckpt"), "llama2", str(tmp_path / "m.gguf"), "--tokenizer",
                 str(TOKENIZER), "-v"]) == 0
    err = capsys.readouterr().err
    assert "LoRA merged into 14 weights: W + 4 B @ A (alpha 16" in err
    assert "skip   model.layers.0.attention.wq.mindpet_delta_lora_a  (LoRA, merged into " \
           "model.layers.0.attention.wq.weight)" in err


def test_auto_map_with_lora(tmp_path):
    """auto picks the map from the base weights, the LoRA tensors left aside."""
    out = tmp_path / "auto.gguf"
    assert convert(LORA / "unfused" / "model.ckpt", out, map_name="auto") == 0


def test_auto_map_for_a_lora_only_adapter(tmp_path):
    """Without base weights, auto goes by the names of the weights the pairs adapt (and the tokenizer's kind)."""
    out = tmp_path / "auto.gguf"
    assert convert(LORA / "fused" / "lora" / "lora.ckpt", out, "--lora", "adapter", "--config",
                   LORA / "fused" / "config.yaml", map_name="auto") == 0
    assert gguf_value(GGUFReader(out), "general.architecture") == "llama"


def test_check_validates_adapters(made, tmp_path):
    from gguf_out.check import check_file

    path = made("unfused", "model.ckpt", "--lora", "adapter")
    report = check_file(path)
    assert not report.problems and "LoRA adapter, 14 pairs, rank 4, alpha 16" in report.summary()
    data = bytearray(path.read_bytes())
    at = data.find(b"attn_q.weight.lora_b")
    data[at:at + len(b"attn_q.weight.lora_b")] = b"attn_q.weight.lora_c"
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    texts = [p.text for p in check_file(tmp_path / "bad.gguf").errors]
    assert any("not a LoRA tensor" in t for t in texts) and any("no lora_b partner" in t for t in texts)


# ---------------------------------------------------------------------------------------------------------------
# mcore naming: a real TrainingQwen3ForCausalLM with LoRA (it does not run on CPU, so no MindFormers logits)

MCORE = LORA / "mcore"
QWEN_BPE = FIXTURES / "qwen2" / "tokenizer" / "tokenizer.json"


def mcore(made_path, *options):
    return convert(MCORE / "model.ckpt", made_path, "--outtype", "f32", *options, map_name="qwen3",
                   tokenizer=QWEN_BPE)


@pytest.fixture(scope="module")
def mcore_made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcore")
    out = {}
    for name, options in (("merged", []), ("base", ["--lora", "skip"]), ("adapter", ["--lora", "adapter"]),
                          ("adapter_contiguous", ["--lora", "adapter", "--fused-layout", "contiguous"])):
        out[name] = folder / f"{name}.gguf"
        assert mcore(out[name], *options) == 0
    return out


def test_mcore_merged_equals_the_numpy_merge(mcore_made, tmp_path):
    """linear_qkv / linear_proj / linear_fc1 / linear_fc2 LoRA (alpha from MindFormers' adapter_config.json) merged
    before the grouped QKV and interleaved gate/up splits: the same GGUF as the weights merged in NumPy."""
    import msckpt
    from conftest import write_ckpt

    with msckpt.open_checkpoint(MCORE / "model.ckpt") as ckpt:
        arrays = {t.name: t.array().astype(np.float32) for t in ckpt}
    scale = np.float32(json.loads((MCORE / "adapter_config.json").read_text())["lora_alpha"] / 4)
    entries = []
    for name, array in arrays.items():
        prefix = name[:-len(".weight")]
        if ".lora_" in name:
            continue
        if prefix + ".lora_A.weight" in arrays:
            array = array + scale * (arrays[prefix + ".lora_B.weight"] @ arrays[prefix + ".lora_A.weight"])
        entries.append((name, "Float32", array))
    assert len(arrays) - len(entries) == 16
    folder = tmp_path / "m"
    write_ckpt(folder / "model.ckpt", entries)
    shutil.copy(MCORE / "config.json", folder / "config.json")
    out = tmp_path / "numpy.gguf"
    assert convert(folder / "model.ckpt", out, "--outtype", "f32", map_name="qwen3", tokenizer=QWEN_BPE) == 0
    ours = {t.name: np.array(t.data) for t in GGUFReader(mcore_made["merged"]).tensors}
    theirs = {t.name: np.array(t.data) for t in GGUFReader(out).tensors}
    assert set(ours) == set(theirs)
    for name in ours:
        assert np.allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-6), name


def test_mcore_adapter_on_base_equals_merged(mcore_made):
    ids = json.loads((MCORE / "tokens.json").read_text())["ids"]
    merged = logits(mcore_made["merged"], ids)
    assert_close(logits(mcore_made["base"], ids, mcore_made["adapter"]), merged, "f32", "mcore base + adapter")
    assert_wrong(logits(mcore_made["base"], ids), merged, "mcore LoRA dropped")
    # negative control: B's rows split as contiguous [Q; K; V] / [gate; up] instead of MindFormers' interleaved
    assert_wrong(logits(mcore_made["base"], ids, mcore_made["adapter_contiguous"]), merged, "B split wrongly")


def test_mcore_adapter_tensors(mcore_made):
    reader = GGUFReader(mcore_made["adapter"])
    assert gguf_value(reader, "general.architecture") == "qwen3"
    assert gguf_value(reader, "adapter.lora.alpha") == 16.0
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert len(shapes) == 2 * 7 * 2
    assert shapes["blk.1.attn_q.weight.lora_b"] == [4, 96]         # 4 heads x head_dim 24 of the fused linear_qkv
    assert shapes["blk.1.attn_k.weight.lora_b"] == [4, 48]
    assert shapes["blk.1.ffn_gate.weight.lora_b"] == [4, 96]
    assert shapes["blk.1.attn_output.weight.lora_a"] == [96, 4]


@pytest.mark.parametrize("entries, message", [
    ([("m.wq.mindpet_delta_lora_a", (4, 8))], "has no B half"),
    ([("m.wq.lora_A.weight", (2, 4, 8)), ("m.wq.lora_B.weight", (2, 8, 4))], "not 2-D"),
    ([("m.wq.lora_a", (4, 8)), ("m.wq.lora_b", (8, 2))], "disagree on the rank"),
])
def test_malformed_lora_pairs_are_errors(tmp_path, capsys, entries, message):
    from conftest import write_ckpt

    write_ckpt(tmp_path / "model.ckpt", [("m.wq.weight", "Float32", np.zeros((8, 8), np.float32))] +
               [(n, "Float32", np.zeros(s, np.float32)) for n, s in entries])
    shutil.copy(LORA / "unfused" / "config.yaml", tmp_path / "config.yaml")
    assert convert(tmp_path / "model.ckpt", tmp_path / "x.gguf") == 1
    assert message in capsys.readouterr().err
