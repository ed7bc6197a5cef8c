"""K-quant presets end to end: llama-quantize's per-tensor mixing, ggml-identical bytes, llama.cpp runs them."""

import json

import numpy as np
import pytest
from conftest import LLAMA, convert
from gguf import GGMLQuantizationType as T, GGUFReader, LlamaFileType

import msckpt
from llamacpp import LlamaModel, quantize_chunk

K256 = LLAMA / "k256"       # hidden 256, FFN 512: every weight row fits a 256-element K block


def logits_and_reference(path, variant):
    tokens = json.loads((LLAMA / variant / "tokens.json").read_text())
    ref = np.load(LLAMA / variant / "logits.npy")
    with LlamaModel(path) as model:
        return model.logits(tokens["ids"]), ref


@pytest.fixture(scope="module")
def k256(tmp_path_factory):
    """k256 converted once to several presets in a single run (one read of the checkpoint)."""
    folder = tmp_path_factory.mktemp("kq")
    assert convert(K256 / "model.ckpt", folder / "m-{ftype}.gguf", "--outtype", "q4_k_m,q6_k,q2_k,q8_0") == 0
    return lambda name: folder / f"m-{name}.gguf"


# Measured on k256 (49 positions): Q6_K 49/49 and 1.5e-2, Q4_K_M 49/49 and 4.9e-2, Q2_K 48/49 and 0.19.
# The error bounds matter as much as the argmax: k256's top token is decided by its embedding/head, so only
# the logit error sees its layers (dropping them entirely moves the logits by 0.31).
@pytest.mark.parametrize("preset,min_agree,max_error", [("Q6_K", 0.95, 3e-2), ("Q4_K_M", 0.9, 0.1),
                                                        ("Q2_K", 0.8, 0.3)])
def test_k_quants_run_in_llama_cpp(k256, preset, min_agree, max_error):
    got, ref = logits_and_reference(k256(preset), "k256")
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    error = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"{preset}: argmax agreement {agree:.0%}, relative logit error {error:.3f}")
    assert agree >= min_agree
    assert error <= max_error


def test_q4_k_m_mixes_types_like_llama_quantize(k256):
    reader = GGUFReader(k256("Q4_K_M"))
    types = {t.name: T(t.tensor_type) for t in reader.tensors}
    # Q4_K_M: output Q6_K; attn_v and ffn_down take Q6_K in the layers use_more_bits picks: with 2 layers
    # i < 2/8 = 0 is never true, i >= 7*2/8 = 1 holds for layer 1, (i - 0) % 3 == 2 never: layer 1 only
    assert types["output.weight"] == T.Q6_K
    assert types["token_embd.weight"] == T.Q4_K
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == T.Q4_K
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == T.Q6_K
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == T.Q4_K
    assert types["blk.0.attn_norm.weight"] == T.F32
    field = reader.fields["general.file_type"]
    assert field.contents() == LlamaFileType.MOSTLY_Q4_K_M
    assert reader.fields["general.quantization_version"].contents() == 2


@pytest.mark.parametrize("preset,name,source,ggml_type", [
    ("Q4_K_M", "blk.1.ffn_up.weight", "model.layers.1.feed_forward.w3.weight", T.Q4_K),
    ("Q6_K", "blk.0.attn_output.weight", "model.layers.0.attention.wo.weight", T.Q6_K),
    ("Q2_K", "blk.0.ffn_gate.weight", "model.layers.0.feed_forward.w1.weight", T.Q2_K),
])
def test_k_quant_bytes_equal_ggml(k256, preset, name, source, ggml_type):
    """The bytes in the file are what ggml's own quantizer makes of the checkpoint's rows."""
    tensor = {t.name: t for t in GGUFReader(k256(preset)).tensors}[name]
    assert T(tensor.tensor_type) == ggml_type
    with msckpt.open_checkpoint(K256 / "model.ckpt") as ckpt:
        rows = np.asarray(ckpt[source].array(), dtype=np.float32)
    assert tensor.data.tobytes() == quantize_chunk(ggml_type, rows)


def test_several_outtypes_equal_separate_runs(k256, tmp_path):
    for preset in ("q6_k", "q8_0"):
        single = tmp_path / f"{preset}.gguf"
        assert convert(K256 / "model.ckpt", single, "--outtype", preset) == 0
        assert single.read_bytes() == k256(preset.upper()).read_bytes()


def test_thread_count_does_not_change_bytes(tmp_path):
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    assert convert(K256 / "model.ckpt", one, "--outtype", "q4_k_s", "--threads", "1") == 0
    assert convert(K256 / "model.ckpt", two, "--outtype", "q4_k_s", "--threads", "2") == 0
    assert one.read_bytes() == two.read_bytes()


def test_rows_not_a_multiple_of_256_fall_back(tmp_path, capsys):
    """The 64-wide mha fixture: no K type fits, llama-quantize's fallbacks apply, and the file still runs."""
    out = tmp_path / "mha.gguf"
    assert convert(LLAMA / "mha" / "model.ckpt", out, "--outtype", "q4_k_m") == 0
    types = {t.name: T(t.tensor_type) for t in GGUFReader(out).tensors}
    assert not {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K} & set(types.values())
    assert types["output.weight"] == T.Q8_0          # Q6_K does not fit: Q8_0
    assert types["blk.0.attn_q.weight"] == T.Q5_0    # Q4_K -> Q5_0 (gguf-targets §9.6)
    got, ref = logits_and_reference(out, "mha")
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.75


def test_several_outtypes_need_ftype_in_out(tmp_path, capsys):
    assert convert(K256 / "model.ckpt", tmp_path / "m.gguf", "--outtype", "q4_k_m,q8_0") == 1
    assert "need {ftype} in OUT" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_dry_run_shows_each_tensors_type(capsys, tmp_path):
    assert convert(K256 / "model.ckpt", tmp_path / "m-{ftype}.gguf", "--outtype", "Q4_K_M,q6_k", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "blk.0.attn_v.weight" in printed and "Q6_K/Q6_K" in printed and "Q4_K/Q6_K" in printed
    assert list(tmp_path.iterdir()) == []
