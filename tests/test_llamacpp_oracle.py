"""Checks of the llama.cpp test helper (tests/llamacpp.py), so that later tests can trust it as an oracle.

A tiny random llama (2 layers, hidden 64, 4 heads / 2 KV heads, FFN 128, SentencePiece-style vocab) is written with
gguf-py, run in llama.cpp through the helper, and compared with an independent float64 NumPy forward pass.
"""

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("xllamacpp") is None:
    pytest.skip("xllamacpp (test extra) is not installed", allow_module_level=True)

import gguf  # noqa: E402

import llamacpp  # noqa: E402
from llamacpp import LlamaModel  # noqa: E402

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 128
N_CTX_TRAIN = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"

# SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then a few pieces forming merge chains.
PIECES = ["▁", "a", "b", "h", "e", "l", "o", "▁a", "▁ab", "▁h", "▁he", "▁hel", "▁hell", "▁hello"]
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + PIECES
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}
N_VOCAB = len(TOKENS)
BYTE0 = 3  # id of <0x00>

PROMPT = "hello ab hé hello a"


# ---------------------------------------------------------------------------------------------------------------
# the tiny model


def make_weights(seed=0):
    rng = np.random.default_rng(seed)

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": rng.standard_normal((N_VOCAB, N_EMBD)).astype(np.float32)}
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(N_EMBD)
        w[b + "attn_q.weight"] = mat(N_HEAD * HEAD_DIM, N_EMBD, 2.0)
        w[b + "attn_k.weight"] = mat(N_HEAD_KV * HEAD_DIM, N_EMBD, 2.0)
        w[b + "attn_v.weight"] = mat(N_HEAD_KV * HEAD_DIM, N_EMBD)
        w[b + "attn_output.weight"] = mat(N_EMBD, N_HEAD * HEAD_DIM)
        w[b + "ffn_norm.weight"] = norm(N_EMBD)
        w[b + "ffn_gate.weight"] = mat(N_FF, N_EMBD)
        w[b + "ffn_up.weight"] = mat(N_FF, N_EMBD)
        w[b + "ffn_down.weight"] = mat(N_EMBD, N_FF)
    w["output_norm.weight"] = norm(N_EMBD)
    w["output.weight"] = mat(N_VOCAB, N_EMBD, 3.0)
    return w


def write_gguf(path, weights):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-oracle-test")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [len(p) - 10.0 for p in PIECES]  # longer merges win
    types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
             + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(PIECES))
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, array in weights.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------------------------------
# independent float64 reference (llama.cpp semantics: NORM rope on adjacent pairs, GQA with consecutive q heads
# sharing a kv head, SwiGLU, untied output.weight)


def rms_norm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * weight


def rope_norm(x, positions):
    """x: [n, heads, HEAD_DIM]; rotates the adjacent pairs (2i, 2i+1) by pos * base^(-2i/HEAD_DIM)."""
    inv_freq = ROPE_BASE ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)
    angle = positions[:, None, None] * inv_freq[None, None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_logits(weights, ids):
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n = len(ids)
    positions = np.arange(n, dtype=np.float64)
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    x = w["token_embd.weight"][ids]
    for i in range(N_LAYER):
        b = f"blk.{i}."
        h = rms_norm(x, w[b + "attn_norm.weight"])
        q = rope_norm((h @ w[b + "attn_q.weight"].T).reshape(n, N_HEAD, HEAD_DIM), positions)
        k = rope_norm((h @ w[b + "attn_k.weight"].T).reshape(n, N_HEAD_KV, HEAD_DIM), positions)
        v = (h @ w[b + "attn_v.weight"].T).reshape(n, N_HEAD_KV, HEAD_DIM)
        group = N_HEAD // N_HEAD_KV
        attn = np.empty((n, N_HEAD, HEAD_DIM))
        for hd in range(N_HEAD):
            kv = hd // group
            scores = q[:, hd] @ k[:, kv].T / np.sqrt(HEAD_DIM) + causal
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            attn[:, hd] = p @ v[:, kv]
        x = x + attn.reshape(n, N_EMBD) @ w[b + "attn_output.weight"].T
        h = rms_norm(x, w[b + "ffn_norm.weight"])
        gate = h @ w[b + "ffn_gate.weight"].T
        up = h @ w[b + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[b + "ffn_down.weight"].T
    return rms_norm(x, w["output_norm.weight"]) @ w["output.weight"].T


def rel_max_diff(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


# ---------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    weights = make_weights()
    path = tmp_path_factory.mktemp("llamacpp") / "tiny-llama-f32.gguf"
    write_gguf(path, weights)
    return path, weights


@pytest.fixture(scope="module")
def exact_model(tiny_model):
    with LlamaModel(tiny_model[0], n_ctx=64, exact=True) as model:
        yield model


# ---------------------------------------------------------------------------------------------------------------
# tests


def test_context_param_offsets_found_by_signature():
    blob = bytes(llamacpp.library().llama_context_default_params().raw)
    offsets = llamacpp._context_field_offsets(blob)
    # documented for xllamacpp 2026.10.11549 on x86-64 (gguf-targets.md §11.2); found by content, not hard-coded
    assert offsets == {"n_ctx": 0, "flash_attn_type": 52, "type_k": 104, "type_v": 108}

    exact = bytes(llamacpp.context_params(128, exact=True).raw)
    default = bytes(llamacpp.context_params(128, exact=False).raw)
    as_int = lambda b, off: int.from_bytes(b[off:off + 4], "little", signed=True)  # noqa: E731
    assert [as_int(exact, offsets[k]) for k in ("n_ctx", "flash_attn_type", "type_k", "type_v")] == [128, 0, 0, 0]
    assert [as_int(default, offsets[k]) for k in ("n_ctx", "flash_attn_type", "type_k", "type_v")] == [128, -1, 1, 1]


def test_load_failure_raises(tmp_path):
    with pytest.raises(RuntimeError, match="failed to load"):
        LlamaModel(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(RuntimeError, match="failed to load"):
        LlamaModel(junk)


def test_metadata_and_vocab(exact_model):
    m = exact_model
    assert m.n_vocab == N_VOCAB
    assert m.n_ctx >= 64  # llama.cpp rounds the context size up (to 256 here)
    assert m.max_tokens == 64
    assert m.meta("general.architecture") == "llama"
    assert m.meta("llama.embedding_length") == str(N_EMBD)
    assert m.meta("general.name") == "tiny-llama-oracle-test"
    assert m.meta("no.such.key") is None
    assert m.chat_template() == CHAT_TEMPLATE
    assert m.token_to_piece(TOKEN_ID["▁hello"]) == b" hello"
    assert m.token_to_piece(BYTE0 + 0x41) == b"A"
    assert m.token_to_piece(BYTE0 + 0xC3) == b"\xc3"
    assert m.token_to_piece(1) == b"<s>"
    assert m.token_to_piece(1, special=False) == b""


def test_tokenize(exact_model):
    m = exact_model
    t = TOKEN_ID
    assert m.tokenize("hello ab") == [1, t["▁hello"], t["▁ab"]]
    assert m.tokenize("hello ab", add_special=False) == [t["▁hello"], t["▁ab"]]
    # "é" is not a piece: byte fallback to its UTF-8 bytes
    assert m.tokenize("hé", add_special=False) == [t["▁h"], BYTE0 + 0xC3, BYTE0 + 0xA9]
    assert m.tokenize("<s>", add_special=False, parse_special=True) == [1]
    assert 1 not in m.tokenize("<s>", add_special=False, parse_special=False)
    assert m.tokenize(" ".join(["hello"] * 40), add_special=False) == [t["▁hello"]] * 40
    assert m.tokenize("a ", add_special=False) == [t["▁a"], t["▁"]]


def test_exact_logits_match_float64_reference(tiny_model, exact_model):
    _, weights = tiny_model
    ids = exact_model.tokenize(PROMPT)
    assert len(ids) >= 8
    got = exact_model.logits(ids)
    assert got.shape == (len(ids), N_VOCAB) and got.dtype == np.float32
    want = reference_logits(weights, ids)
    diff = rel_max_diff(got, want)
    print(f"exact=True: relative max |logit diff| = {diff:.3g} over {len(ids)} positions")
    assert diff < 1e-5  # measured 3.9e-7


def test_logits_are_fresh_per_call(exact_model):
    m = exact_model
    ids = m.tokenize(PROMPT)
    first = m.logits(ids)
    m.logits(m.tokenize("ab ab"))  # something else in between
    again = m.logits(ids)
    prefix = m.logits(ids[:5])
    np.testing.assert_array_equal(first, again)  # KV cache cleared, same batch -> bit-identical
    np.testing.assert_allclose(prefix, first[:5], rtol=0, atol=1e-5 * np.abs(first).max())  # causal


def test_logits_reject_bad_input(exact_model):
    with pytest.raises(ValueError):
        exact_model.logits([])
    with pytest.raises(ValueError):
        exact_model.logits([1, N_VOCAB])
    with pytest.raises(ValueError):
        exact_model.logits([1] * (exact_model.max_tokens + 1))


def test_default_precision_is_close_but_less_exact(tiny_model, exact_model):
    path, weights = tiny_model
    ids = exact_model.tokenize(PROMPT)
    want = reference_logits(weights, ids)
    exact_diff = rel_max_diff(exact_model.logits(ids), want)
    with LlamaModel(path, n_ctx=64, exact=False) as default_model:
        default_diff = rel_max_diff(default_model.logits(ids), want)
    print(f"relative max |logit diff|: exact=True {exact_diff:.3g}, exact=False (F16 KV, flash auto) {default_diff:.3g}")
    assert default_diff < 1e-2  # measured 8.6e-4
    assert default_diff > 10 * exact_diff


def test_close_is_idempotent(tiny_model):
    m = LlamaModel(tiny_model[0], n_ctx=32)
    m.close()
    m.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.logits([1])


# ---------------------------------------------------------------------------------------------------------------
# quantizers


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0,
                                   gguf.GGMLQuantizationType.Q5_1])
def test_quantize_chunk_matches_gguf_py(qtype):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((8, 256)).astype(np.float32)
    data[0, :32] = 0.0  # an all-zero block
    data[1] *= 1000.0
    got = llamacpp.quantize_chunk(qtype, data)
    want = gguf.quants.quantize(data, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    assert llamacpp.row_size(qtype, 256) == 256 // block * type_size == want.shape[1]
    assert len(got) == 8 * llamacpp.row_size(qtype, 256)
    assert got == want.tobytes()
    assert llamacpp.validate_row_data(qtype, got)


def test_validate_row_data_rejects_bad_bytes():
    q8 = gguf.GGMLQuantizationType.Q8_0
    row = bytearray(llamacpp.quantize_chunk(q8, np.ones((1, 32), dtype=np.float32)))
    row[0:2] = np.float16(np.nan).tobytes()  # the block scale
    assert not llamacpp.validate_row_data(q8, bytes(row))
    f32 = np.array([1.0, np.inf], dtype=np.float32).tobytes()
    assert not llamacpp.validate_row_data(gguf.GGMLQuantizationType.F32, f32)


def test_quantize_chunk_rejects_bad_shapes():
    with pytest.raises(ValueError, match="block size"):
        llamacpp.quantize_chunk(gguf.GGMLQuantizationType.Q8_0, np.zeros((2, 33), dtype=np.float32))
    with pytest.raises(ValueError, match="importance matrix"):
        llamacpp.quantize_chunk(gguf.GGMLQuantizationType.IQ2_XXS, np.zeros((1, 256), dtype=np.float32))
