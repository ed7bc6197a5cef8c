"""End to end: MindFormers Llama checkpoints -> GGUF -> llama.cpp logits == MindFormers logits.

The fixtures (tests/fixtures/llama, made by tests/gen_llama_fixtures.py with real MindSpore 2.10 and
MindFormers 2.1.0) carry the logits the real LlamaForCausalLM computed for a token sequence. Each test
converts a checkpoint and runs the GGUF in llama.cpp (xllamacpp, F32 KV cache, flash attention off).
"""

import json

import numpy as np
import pytest
from conftest import BOUNDS, LLAMA, TOKENIZER, convert, gguf_value, llama_logits, relative_error
from gguf import GGMLQuantizationType as T, GGUFReader, LlamaFileType

from llamacpp import LlamaModel

VARIANTS = ["mha", "gqa_fused", "padded_vocab", "bf16", "k256"]



def reference(variant):
    tokens = json.loads((LLAMA / variant / "tokens.json").read_text())
    return tokens, np.load(LLAMA / variant / "logits.npy")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Converted GGUF paths, made once per (variant, outtype, extra options)."""
    folder = tmp_path_factory.mktemp("gguf")
    cache = {}

    def get(variant, outtype="f32", *options):
        key = (variant, outtype, options)
        if key not in cache:
            out = folder / f"{variant}-{outtype}-{len(cache)}.gguf"
            assert convert(LLAMA / variant / "model.ckpt", out, "--outtype", outtype, *options) == 0
            cache[key] = out
        return cache[key]

    return get


@pytest.mark.parametrize("outtype", list(BOUNDS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_mindformers(converted, variant, outtype):
    tokens, ref = reference(variant)
    got = llama_logits(converted(variant, outtype), tokens["ids"])
    assert got.shape == ref.shape
    bound, argmax_share = BOUNDS[outtype]
    error = relative_error(got, ref)
    assert error <= bound, f"{variant} {outtype}: relative logit error {error:.2e} > {bound}"
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= argmax_share, f"{variant} {outtype}: argmax agrees at {agree:.0%} of positions"


@pytest.mark.parametrize("variant", ["mha", "gqa_fused", "bf16", "k256"])
def test_without_permutation_logits_are_wrong(converted, variant):
    """Negative control: the same test with the Q/K permutation off must fail."""
    tokens, ref = reference(variant)
    got = llama_logits(converted(variant, "f32", "--rope-layout", "meta"), tokens["ids"])
    assert relative_error(got, ref) > 10 * BOUNDS["f32"][0]


def test_wrong_fused_layout_logits_are_wrong(converted):
    """Negative control: splitting MindFormers 2.x fused tensors as if contiguous (<= 1.3) must fail."""
    tokens, ref = reference("gqa_fused")
    got = llama_logits(converted("gqa_fused", "f32", "--fused-layout", "contiguous"), tokens["ids"])
    assert relative_error(got, ref) > 10 * BOUNDS["f32"][0]


TEXTS = [
    "Thomas baked 12 €, 你好!",
    "Hello world",
    " leading space and  double  spaces",
    "line one\nline two\n\n",
    "digits 1234567890 and 3.14159",
    "tabs\tand\ttabs",
    "emoji 🙂 and ünïcödé",
    "你好，世界",
    "",
]


def test_tokenization_matches_sentencepiece(converted):
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(TOKENIZER))
    with LlamaModel(converted("mha", "f16")) as model:
        for text in TEXTS:
            assert model.tokenize(text) == [sp.bos_id()] + sp.encode(text), repr(text)


@pytest.mark.parametrize("outtype,file_type,weight_type", [
    ("f32", LlamaFileType.ALL_F32, T.F32), ("f16", LlamaFileType.MOSTLY_F16, T.F16),
    ("bf16", LlamaFileType.MOSTLY_BF16, T.BF16), ("q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    ("q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0), ("q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
])
def test_types_and_metadata(converted, outtype, file_type, weight_type):
    reader = GGUFReader(converted("k256", outtype))
    field = reader.fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == file_type
    quantized = "general.quantization_version" in reader.fields
    assert quantized == (weight_type in (T.Q8_0, T.Q4_0, T.Q5_1))
    for tensor in reader.tensors:
        expected = T.F32 if len(tensor.shape) == 1 else weight_type
        assert tensor.tensor_type == expected, tensor.name


def test_hparams_and_vocab_metadata(converted):
    reader = GGUFReader(converted("gqa_fused", "f16"))
    assert gguf_value(reader, "general.architecture") == "llama"
    assert gguf_value(reader, "llama.block_count") == 2
    assert gguf_value(reader, "llama.embedding_length") == 64
    assert gguf_value(reader, "llama.feed_forward_length") == 160
    assert gguf_value(reader, "llama.attention.head_count") == 8
    assert gguf_value(reader, "llama.attention.head_count_kv") == 2
    assert gguf_value(reader, "llama.context_length") == 4096
    assert gguf_value(reader, "llama.rope.freq_base") == pytest.approx(500000.0)
    assert gguf_value(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert gguf_value(reader, "llama.rope.dimension_count") == 8
    assert gguf_value(reader, "tokenizer.ggml.model") == "llama"
    assert gguf_value(reader, "tokenizer.ggml.bos_token_id") == 1
    assert gguf_value(reader, "tokenizer.ggml.eos_token_id") == 2
    assert gguf_value(reader, "tokenizer.ggml.add_bos_token") is True
    assert "[INST]" in gguf_value(reader, "tokenizer.chat_template")
    assert len(gguf_value(reader, "tokenizer.ggml.tokens")) == 480


def test_padded_vocabulary(converted):
    """The token list is padded to the embedding rows with unique unused tokens."""
    reader = GGUFReader(converted("padded_vocab", "f16"))
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    types = gguf_value(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 576 == len(set(tokens))
    assert tokens[480] == "[PAD480]" and set(types[480:]) == {5}     # UNUSED


def test_bf16_weights_are_copied_bit_for_bit(converted):
    """bf16 checkpoint -> bf16 GGUF: untransformed weights are the checkpoint's bytes."""
    import msckpt

    reader = GGUFReader(converted("bf16", "bf16"))
    tensors = {t.name: t for t in reader.tensors}
    with msckpt.open_checkpoint(LLAMA / "bf16" / "model.ckpt") as ckpt:
        for src, dst in (("model.layers.1.attention.wv.weight", "blk.1.attn_v.weight"),
                         ("model.tok_embeddings.embedding_weight", "token_embd.weight")):
            assert bytes(tensors[dst].data.tobytes()) == bytes(ckpt[src].raw())


def test_training_checkpoint_skips_optimizer_state(tmp_path):
    """Optimizer state and training scalars are skipped; the weights give the same GGUF bytes."""
    plain, train = tmp_path / "plain.gguf", tmp_path / "train.gguf"
    config = LLAMA / "mha" / "config.yaml"
    assert convert(LLAMA / "mha" / "model.ckpt", plain, "--name", "m") == 0
    assert convert(LLAMA / "mha" / "model_train.ckpt", train, "--name", "m", "--config", config) == 0
    assert plain.read_bytes() == train.read_bytes()


def test_verbose_lists_skipped_entries(tmp_path, capsys):
    out = tmp_path / "o.gguf"
    from gguf_out.cli import main
    assert main([str(LLAMA / "mha" / "model_train.ckpt"), "llama2", str(out), "--tokenizer", str(TOKENIZER),
                 "-v"]) == 0
    err = capsys.readouterr().err
    assert "skip   adam_m." in err and "(optimizer state)" in err
    assert "skip   global_step  (training scalars)" in err
    assert "wrote" in err and "21 tensors" in err


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert convert(LLAMA / "gqa_fused" / "model.ckpt", out, "--dry-run", "--outtype", "q8_0") == 0
    printed = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in printed and "Q8_0" in printed and "split interleaved QKV" in printed
    assert not out.exists()


def test_bundled_map_by_path_equals_by_name(tmp_path):
    from gguf_out.maps import maps_dir
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert convert(LLAMA / "mha" / "model.ckpt", a, "--name", "x") == 0
    assert convert(LLAMA / "mha" / "model.ckpt", b, "--name", "x", map_name=str(maps_dir() / "llama2.json")) == 0
    assert a.read_bytes() == b.read_bytes()
