"""Per-tensor types of the --outtype presets against llama-quantize's rules (gguf-targets.md §9).

llama-quantize is not exported by the xllamacpp wheel (§11.1), so the expected types below are written out by hand
from the §9.4/§9.5 tables and llama.cpp's src/llama-quant.cpp (2026), not computed by gguf_out.quant_policy.
"""

import random

import pytest
from gguf import GGMLQuantizationType as T, LlamaFileType as FT

from gguf_out.quant_policy import PRESETS, assign_types, preset

K_PRESETS = ["q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]

# use_more_bits(i, n) by hand: first n/8 layers, last n/8, and every third layer in between starting at n/8 + 2
MORE_BITS_32 = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
MORE_BITS_24 = {0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23}
MORE_BITS_80 = set(range(10)) | set(range(12, 70, 3)) | set(range(70, 80))


def llama_tensors(n_layer, n_embd, n_ff, n_vocab, kv_width, tied=False, biases=False):
    """(name, numpy shape) in convert_hf_to_gguf.py's write order: token_embd, the blocks, output_norm, output."""
    out = [("token_embd.weight", (n_vocab, n_embd))]
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (n_embd,)),
                (b + "attn_q.weight", (n_embd, n_embd)),
                (b + "attn_k.weight", (kv_width, n_embd)),
                (b + "attn_v.weight", (kv_width, n_embd))]
        if biases:
            out += [(b + "attn_q.bias", (n_embd,)), (b + "attn_k.bias", (kv_width,)), (b + "attn_v.bias", (kv_width,))]
        out += [(b + "attn_output.weight", (n_embd, n_embd)),
                (b + "ffn_norm.weight", (n_embd,)),
                (b + "ffn_gate.weight", (n_ff, n_embd)),
                (b + "ffn_up.weight", (n_ff, n_embd)),
                (b + "ffn_down.weight", (n_embd, n_ff))]
    out.append(("output_norm.weight", (n_embd,)))
    if not tied:
        out.append(("output.weight", (n_vocab, n_embd)))
    return out


def kind(name):
    """Column of the §9.5 tables a tensor belongs to."""
    if name in ("output.weight", "token_embd.weight"):
        return name.split(".")[0]
    part = name.split(".")[2]
    return {"attn_q": "qkgu", "attn_k": "qkgu", "ffn_gate": "qkgu", "ffn_up": "qkgu"}.get(part, part)


def layer(name):
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def table(tensors, rules):
    """Expected types from a rules dict: kind -> type, or kind -> function(layer) -> type; 1-D tensors F32."""
    expected = []
    for name, shape in tensors:
        if len(shape) == 1:
            expected.append(T.F32)
            continue
        rule = rules[kind(name)]
        expected.append(rule(layer(name)) if callable(rule) else rule)
    return expected


def types(tensors, name, **model):
    return [t for t, _ in assign_types(tensors, preset(name), **model)]


def check(tensors, preset_name, rules, **model):
    got = types(tensors, preset_name, **model)
    want = table(tensors, rules)
    bad = [(n, g.name, w.name) for (n, _), g, w in zip(tensors, got, want) if g != w]
    assert not bad, f"{preset_name}: {len(bad)} tensors differ, e.g. {bad[:5]}"


# ---------------------------------------------------------------------------------------------------------------
# Llama-2-7B: 32 layers, MHA, n_embd 4096, n_ff 11008 (= 43 * 256, so no fallbacks), vocab 32000 (§9.5)

LLAMA2_7B = llama_tensors(32, 4096, 11008, 32000, 4096)
LLAMA2_MODEL = dict(n_head=32, n_head_kv=32, n_layer=32)


def more_bits_32(hi, lo):
    return lambda i: hi if i in MORE_BITS_32 else lo


LLAMA2_RULES = {
    "q2_k": dict(output=T.Q6_K, token_embd=T.Q2_K, qkgu=T.Q2_K, attn_output=T.Q3_K, attn_v=T.Q3_K, ffn_down=T.Q3_K),
    "q3_k_s": dict(output=T.Q6_K, token_embd=T.Q3_K, qkgu=T.Q3_K, attn_output=T.Q3_K, attn_v=T.Q3_K,
                   ffn_down=T.Q3_K),
    "q3_k_m": dict(output=T.Q6_K, token_embd=T.Q3_K, qkgu=T.Q3_K, attn_output=T.Q4_K,
                   attn_v=lambda i: T.Q5_K if i < 2 else T.Q4_K,
                   ffn_down=lambda i: T.Q5_K if i < 2 else T.Q4_K),       # i < n/16 = 2
    "q3_k_l": dict(output=T.Q6_K, token_embd=T.Q3_K, qkgu=T.Q3_K, attn_output=T.Q5_K, attn_v=T.Q5_K,
                   ffn_down=T.Q5_K),
    "q4_k_s": dict(output=T.Q6_K, token_embd=T.Q4_K, qkgu=T.Q4_K, attn_output=T.Q4_K,
                   attn_v=lambda i: T.Q5_K if i < 4 else T.Q4_K,
                   ffn_down=lambda i: T.Q5_K if i < 4 else T.Q4_K),       # i < n/8 = 4
    "q4_k_m": dict(output=T.Q6_K, token_embd=T.Q4_K, qkgu=T.Q4_K, attn_output=T.Q4_K,
                   attn_v=more_bits_32(T.Q6_K, T.Q4_K), ffn_down=more_bits_32(T.Q6_K, T.Q4_K)),
    "q5_k_s": dict(output=T.Q6_K, token_embd=T.Q5_K, qkgu=T.Q5_K, attn_output=T.Q5_K, attn_v=T.Q5_K,
                   ffn_down=T.Q5_K),
    "q5_k_m": dict(output=T.Q6_K, token_embd=T.Q5_K, qkgu=T.Q5_K, attn_output=T.Q5_K,
                   attn_v=more_bits_32(T.Q6_K, T.Q5_K), ffn_down=more_bits_32(T.Q6_K, T.Q5_K)),
    "q6_k": dict(output=T.Q6_K, token_embd=T.Q6_K, qkgu=T.Q6_K, attn_output=T.Q6_K, attn_v=T.Q6_K,
                 ffn_down=T.Q6_K),
}


@pytest.mark.parametrize("name", K_PRESETS)
def test_llama2_7b_tables(name):
    check(LLAMA2_7B, name, LLAMA2_RULES[name], **LLAMA2_MODEL)


def test_q4_k_m_upgraded_layers_llama2():
    """The headline case spelled out: Q6_K attn_v and ffn_down exactly in layers 0-3, 6, 9, ..., 24, 27-31."""
    got = dict(zip([n for n, _ in LLAMA2_7B], types(LLAMA2_7B, "q4_k_m", **LLAMA2_MODEL)))
    six = sorted(i for i in range(32) if got[f"blk.{i}.attn_v.weight"] == T.Q6_K)
    assert six == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert six == sorted(i for i in range(32) if got[f"blk.{i}.ffn_down.weight"] == T.Q6_K)


# ---------------------------------------------------------------------------------------------------------------
# Llama-3-8B-like GQA: n_head 32, n_head_kv 8 (n_gqa = 4), kv width 1024, n_ff 14336, vocab 128256

LLAMA3_8B = llama_tensors(32, 4096, 14336, 128256, 1024)
LLAMA3_MODEL = dict(n_head=32, n_head_kv=8, n_layer=32)


@pytest.mark.parametrize("name", K_PRESETS)
def test_llama3_8b_gqa_tables(name):
    rules = dict(LLAMA2_RULES[name])
    if name == "q2_k":
        rules["attn_v"] = T.Q4_K              # n_gqa >= 4
    check(LLAMA3_8B, name, rules, **LLAMA3_MODEL)


def test_qwen2_7b_differences():
    """§9.5's Qwen2-7B paragraph: 28 layers, GQA 28/4, n_embd 3584, n_ff 18944 (all multiples of 256)."""
    tensors = llama_tensors(28, 3584, 18944, 152064, 512, biases=True)
    model = dict(n_head=28, n_head_kv=4, n_layer=28, arch="qwen2")
    more_bits_28 = [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]

    def by_layer(name, part, qtype):
        got = dict(zip([n for n, _ in tensors], types(tensors, name, **model)))
        return [i for i in range(28) if got[f"blk.{i}.{part}.weight"] == qtype]

    assert by_layer("q2_k", "attn_v", T.Q4_K) == list(range(28))
    assert by_layer("q3_k_m", "ffn_down", T.Q5_K) == [0]
    assert by_layer("q3_k_m", "attn_v", T.Q5_K) == [0, 1]
    assert by_layer("q4_k_s", "ffn_down", T.Q5_K) == [0, 1, 2]
    assert by_layer("q4_k_s", "attn_v", T.Q5_K) == [0, 1, 2, 3]
    for name in ("q4_k_m", "q5_k_m"):
        assert by_layer(name, "ffn_down", T.Q6_K) == more_bits_28
        assert by_layer(name, "attn_v", T.Q6_K) == more_bits_28


def test_gqa_below_4_keeps_q3_k_attn_v():
    tensors = llama_tensors(4, 512, 1024, 1000, 256)
    got = dict(zip([n for n, _ in tensors], types(tensors, "q2_k", n_head=8, n_head_kv=4, n_layer=4)))
    assert got["blk.0.attn_v.weight"] == T.Q3_K          # n_gqa = 2


# ---------------------------------------------------------------------------------------------------------------
# tied embeddings: no output.weight, so token_embd is treated as the output tensor


@pytest.mark.parametrize("name", K_PRESETS)
def test_tied_embeddings_token_embd_is_output(name):
    tensors = llama_tensors(32, 4096, 11008, 32000, 4096, tied=True)
    rules = dict(LLAMA2_RULES[name], token_embd=T.Q6_K)
    check(tensors, name, rules, **LLAMA2_MODEL)


# ---------------------------------------------------------------------------------------------------------------
# fallbacks (§9.6): Qwen2-0.5B-like, n_embd 896 (= 3.5 * 256), 24 layers, n_head 14 / n_head_kv 2 (n_gqa 7),
# n_ff 4864 (= 19 * 256), tied embeddings, q/k/v biases.  Rows of 896 take the 32-block fallbacks; ffn_down
# (rows of 4864) keeps K-quants; the tied token_embd's Q6_K becomes Q8_0 (its rows do not fit the base block).

QWEN_05B = llama_tensors(24, 896, 4864, 151936, 128, tied=True, biases=True)
QWEN_MODEL = dict(n_head=14, n_head_kv=2, n_layer=24, arch="qwen2")
K_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def more_bits_24(hi, lo):
    return lambda i: hi if i in MORE_BITS_24 else lo


QWEN_RULES = {
    "q2_k": dict(token_embd=T.Q8_0, qkgu=T.Q4_0, attn_output=T.Q4_0, attn_v=T.Q5_0, ffn_down=T.Q3_K),
    "q3_k_s": dict(token_embd=T.Q8_0, qkgu=T.Q4_0, attn_output=T.Q4_0, attn_v=T.Q4_0, ffn_down=T.Q3_K),
    "q3_k_m": dict(token_embd=T.Q8_0, qkgu=T.Q4_0, attn_output=T.Q5_0,
                   attn_v=lambda i: T.Q5_1 if i < 2 else T.Q5_0,
                   ffn_down=lambda i: T.Q5_K if i < 1 else T.Q4_K),      # i < 24/16 = 1
    "q3_k_l": dict(token_embd=T.Q8_0, qkgu=T.Q4_0, attn_output=T.Q5_1, attn_v=T.Q5_1, ffn_down=T.Q5_K),
    "q4_k_s": dict(token_embd=T.Q8_0, qkgu=T.Q5_0, attn_output=T.Q5_0,
                   attn_v=lambda i: T.Q5_1 if i < 4 else T.Q5_0,
                   ffn_down=lambda i: T.Q5_K if i < 3 else T.Q4_K),      # i < 24/8 = 3
    "q4_k_m": dict(token_embd=T.Q8_0, qkgu=T.Q5_0, attn_output=T.Q5_0,
                   attn_v=more_bits_24(T.Q8_0, T.Q5_0), ffn_down=more_bits_24(T.Q6_K, T.Q4_K)),
    "q5_k_s": dict(token_embd=T.Q8_0, qkgu=T.Q5_1, attn_output=T.Q5_1, attn_v=T.Q5_1, ffn_down=T.Q5_K),
    "q5_k_m": dict(token_embd=T.Q8_0, qkgu=T.Q5_1, attn_output=T.Q5_1,
                   attn_v=more_bits_24(T.Q8_0, T.Q5_1), ffn_down=more_bits_24(T.Q6_K, T.Q5_K)),
    "q6_k": dict(token_embd=T.Q8_0, qkgu=T.Q8_0, attn_output=T.Q8_0, attn_v=T.Q8_0, ffn_down=T.Q6_K),
}


@pytest.mark.parametrize("name", K_PRESETS)
def test_row_length_fallbacks_qwen2_0_5b(name):
    check(QWEN_05B, name, QWEN_RULES[name], **QWEN_MODEL)


def test_fallback_notes_explain_the_change():
    result = dict(zip([n for n, _ in QWEN_05B], assign_types(QWEN_05B, preset("q4_k_m"), **QWEN_MODEL)))
    qtype, note = result["blk.3.attn_q.weight"]
    assert qtype == T.Q5_0 and "896" in note and "Q4_K" in note
    assert result["blk.0.ffn_down.weight"] == (T.Q6_K, None)
    assert result["blk.0.attn_q.bias"] == (T.F32, None)


def test_fallback_to_f16_when_32_does_not_divide_either():
    """Row length 11000: not a multiple of 256 nor of 32 -> F16 (llama-quantize: 'must use F16')."""
    tensors = llama_tensors(8, 4096, 11000, 32000, 4096)
    got = dict(zip([n for n, _ in tensors], assign_types(tensors, preset("q4_k_m"), n_head=32, n_head_kv=32,
                                                          n_layer=8)))
    assert got["blk.1.ffn_down.weight"][0] == T.F16
    assert got["blk.1.ffn_up.weight"][0] == T.Q4_K        # rows of 4096
    assert got["blk.0.ffn_down.weight"][0] == T.F16       # would be Q6_K (use_more_bits) -> Q8_0 -> F16


def test_output_with_odd_row_length():
    """output rows of 1000: Q6_K's block does not fit -> Q8_0, whose 32-block does not fit either -> F16 (where
    llama-quantize itself stops: there is no fallback from Q8_0)."""
    tensors = llama_tensors(2, 1000, 256, 500, 1000)
    got = dict(zip([n for n, _ in tensors], assign_types(tensors, preset("q4_k_m"), n_head=8, n_head_kv=8,
                                                          n_layer=2)))
    qtype, note = got["output.weight"]
    assert qtype == T.F16 and "no fallback" in note


# ---------------------------------------------------------------------------------------------------------------
# 70B-class, experts, visiting order


def test_70b_bumps_attn_v():
    """Llama-2-70B: 80 layers, GQA 64/8.  attn_v Q3_K/Q4_K become Q5_K; Q6_K (use_more_bits) stays."""
    tensors = llama_tensors(80, 8192, 28672, 32000, 1024)
    model = dict(n_head=64, n_head_kv=8, n_layer=80)
    got = dict(zip([n for n, _ in tensors], types(tensors, "q4_k_m", **model)))
    for i in range(80):
        assert got[f"blk.{i}.attn_v.weight"] == (T.Q6_K if i in MORE_BITS_80 else T.Q5_K), i
        assert got[f"blk.{i}.ffn_down.weight"] == (T.Q6_K if i in MORE_BITS_80 else T.Q4_K), i
    got = dict(zip([n for n, _ in tensors], types(tensors, "q3_k_s", **model)))
    assert got["blk.40.attn_v.weight"] == T.Q5_K and got["blk.40.attn_q.weight"] == T.Q3_K
    # the 65B (80 layers, MHA) is not a 70B
    got = dict(zip([n for n, _ in tensors], types(tensors, "q3_k_s", n_head=64, n_head_kv=64, n_layer=80)))
    assert got["blk.40.attn_v.weight"] == T.Q3_K


def mixtral_tensors(n_layer=32):
    out = [("token_embd.weight", (32000, 4096))]
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (4096,)), (b + "attn_q.weight", (4096, 4096)),
                (b + "attn_k.weight", (1024, 4096)), (b + "attn_v.weight", (1024, 4096)),
                (b + "attn_output.weight", (4096, 4096)), (b + "ffn_norm.weight", (4096,)),
                (b + "ffn_gate_inp.weight", (8, 4096)),
                (b + "ffn_gate_exps.weight", (8, 14336, 4096)), (b + "ffn_up_exps.weight", (8, 14336, 4096)),
                (b + "ffn_down_exps.weight", (8, 4096, 14336))]
    return out + [("output_norm.weight", (4096,)), ("output.weight", (32000, 4096))]


def test_8_experts():
    """Mixtral-8x7B Q4_K_M: attn_v and attn_k Q8_0, attn_output Q5_K, router F32, expert ffn_down by layer."""
    tensors = mixtral_tensors()
    got = dict(zip([n for n, _ in tensors], types(tensors, "q4_k_m", n_head=32, n_head_kv=8, n_layer=32,
                                                  n_expert=8)))
    for i in range(32):
        b = f"blk.{i}."
        assert got[b + "attn_v.weight"] == T.Q8_0
        assert got[b + "attn_k.weight"] == T.Q8_0
        assert got[b + "attn_q.weight"] == T.Q4_K
        assert got[b + "attn_output.weight"] == T.Q5_K
        assert got[b + "ffn_gate_inp.weight"] == T.F32
        assert got[b + "ffn_gate_exps.weight"] == T.Q4_K
        assert got[b + "ffn_down_exps.weight"] == (T.Q6_K if i in MORE_BITS_32 else T.Q4_K)
    assert got["output.weight"] == T.Q6_K and got["token_embd.weight"] == T.Q4_K
    got = dict(zip([n for n, _ in tensors], types(tensors, "q2_k", n_head=32, n_head_kv=8, n_layer=32,
                                                  n_expert=8)))
    assert got["blk.5.attn_output.weight"] == T.Q5_K and got["blk.5.ffn_down_exps.weight"] == T.Q3_K


@pytest.mark.parametrize("name", ["q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m"])
def test_write_order_does_not_matter(name):
    """Counters follow llama.cpp's loader order (layer number, then name), not the order the caller writes.
    Shuffling puts e.g. blk.10 before blk.2, which a counter in call order would get wrong."""
    baseline = dict(zip([n for n, _ in LLAMA2_7B], types(LLAMA2_7B, name, **LLAMA2_MODEL)))
    shuffled = list(LLAMA2_7B)
    random.Random(1).shuffle(shuffled)
    got = dict(zip([n for n, _ in shuffled], types(shuffled, name, **LLAMA2_MODEL)))
    assert got == baseline


def test_fused_qkv_follows_attn_v_rule():
    """2026 code: attn_qkv is counted and typed like attn_v (Q4_K_M: Q6_K in the use_more_bits layers)."""
    tensors = [("token_embd.weight", (1000, 512)), ("output.weight", (1000, 512))]
    for i in range(8):
        tensors += [(f"blk.{i}.attn_qkv.weight", (1536, 512)), (f"blk.{i}.attn_output.weight", (512, 512))]
    got = dict(zip([n for n, _ in tensors], types(tensors, "q4_k_m", n_head=8, n_head_kv=8, n_layer=8)))
    # use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2 -> 0, 3, 6, 7
    assert [i for i in range(8) if got[f"blk.{i}.attn_qkv.weight"] == T.Q6_K] == [0, 3, 6, 7]


# ---------------------------------------------------------------------------------------------------------------
# legacy presets and metadata


@pytest.mark.parametrize("name,qtype", [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0),
                                        ("q4_0", T.Q4_0), ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)])
def test_legacy_presets_use_one_type(name, qtype):
    got = dict(zip([n for n, _ in LLAMA2_7B], types(LLAMA2_7B, name, **LLAMA2_MODEL)))
    assert got["output.weight"] == qtype and got["token_embd.weight"] == qtype
    assert got["blk.0.attn_v.weight"] == qtype and got["blk.0.ffn_down.weight"] == qtype
    assert got["blk.0.attn_norm.weight"] == T.F32


@pytest.mark.parametrize("name,base,first", [("q4_0", T.Q4_0, T.Q4_1), ("q5_0", T.Q5_0, T.Q5_1),
                                              ("q4_1", T.Q4_1, T.Q4_1), ("q5_1", T.Q5_1, T.Q5_1)])
def test_legacy_presets_with_imatrix_follow_llama_quantize(name, base, first):
    """With an importance matrix the single-type presets take llama-quantize's choices: output Q6_K, and for
    Q4_0 / Q5_0 the ffn_down of the first 32/8 = 4 layers Q4_1 / Q5_1 (a rule that needs the matrix)."""
    got = dict(zip([n for n, _ in LLAMA2_7B],
                   [t for t, _ in assign_types(LLAMA2_7B, preset(name), **LLAMA2_MODEL, has_imatrix=True)]))
    assert got["output.weight"] == T.Q6_K and got["token_embd.weight"] == base
    assert [got[f"blk.{i}.ffn_down.weight"] for i in (0, 3, 4, 31)] == [first, first, base, base]
    assert got["blk.0.attn_v.weight"] == got["blk.0.attn_q.weight"] == base
    assert got["blk.0.attn_norm.weight"] == T.F32


def test_imatrix_changes_no_k_quant_choice():
    for name in K_PRESETS:
        assert types(LLAMA2_7B, name, **LLAMA2_MODEL) == \
            [t for t, _ in assign_types(LLAMA2_7B, preset(name), **LLAMA2_MODEL, has_imatrix=True)]


def test_float_presets_ignore_imatrix():
    for name in ("f32", "f16", "bf16"):
        assert types(LLAMA2_7B, name, **LLAMA2_MODEL) == \
            [t for t, _ in assign_types(LLAMA2_7B, preset(name), **LLAMA2_MODEL, has_imatrix=True)]


def test_legacy_row_length_fallback_is_f16():
    tensors = [("blk.0.ffn_down.weight", (64, 100)), ("blk.0.ffn_up.weight", (100, 64))]
    got = assign_types(tensors, preset("q8_0"), n_head=1, n_head_kv=1, n_layer=1)
    assert got[0][0] == T.F16 and "100" in got[0][1]
    assert got[1] == (T.Q8_0, None)


def test_never_quantized_tensors():
    tensors = [("token_embd.weight", (256, 256)), ("output.weight", (256, 256)),
               ("blk.0.ffn_gate_inp.weight", (8, 256)), ("blk.0.attn_q_norm.weight", (256, 256)),
               ("position_embd.weight", (512, 256)), ("blk.0.attn_q.bias", (256, 256)),
               ("blk.0.attn_q.weight", (256, 256))]
    for name in ("q4_k_m", "q8_0", "f16"):
        got = [t for t, _ in assign_types(tensors, preset(name), n_head=1, n_head_kv=1, n_layer=1)]
        assert got[2:6] == [T.F32] * 4, name
        assert got[6] != T.F32


@pytest.mark.parametrize("name,ftype", [
    ("f32", FT.ALL_F32), ("f16", FT.MOSTLY_F16), ("bf16", FT.MOSTLY_BF16), ("q8_0", FT.MOSTLY_Q8_0),
    ("q4_0", FT.MOSTLY_Q4_0), ("q4_1", FT.MOSTLY_Q4_1), ("q5_0", FT.MOSTLY_Q5_0), ("q5_1", FT.MOSTLY_Q5_1),
    ("q2_k", 10), ("q3_k_s", 11), ("q3_k_m", 12), ("q3_k_l", 13), ("q4_k_s", 14), ("q4_k_m", 15), ("q5_k_s", 16),
    ("q5_k_m", 17), ("q6_k", 18)])
def test_file_type(name, ftype):
    p = preset(name)
    assert p.file_type == ftype
    assert p.quantization_version == (None if name in ("f32", "f16", "bf16") else 2)


def test_preset_names():
    assert preset("Q4_K_M") is PRESETS["q4_k_m"]
    assert preset("q4_k") is PRESETS["q4_k_m"] and preset("q3_k") is PRESETS["q3_k_m"]
    with pytest.raises(ValueError, match="unknown output type 'q7_k'"):
        preset("q7_k")


# --- against the real llama-quantize --------------------------------------------------------------------------------
# tests/fixtures/quant_tables: llama_model_quantize's choices on small synthetic models that ms2gguf converted
# (tests/gen_policy_tables.py): a dense GQA Llama, a Llama with 8 experts, a Qwen3-MoE with 16.

import json  # noqa: E402
from pathlib import Path  # noqa: E402

TABLES = sorted((Path(__file__).parent / "fixtures" / "quant_tables").glob("*.json"))
ARCHS = {"dense": "llama", "mixtral": "llama", "qwen3moe": "qwen3moe", "deepseek2": "deepseek2"}


def table_case(path):
    table = json.loads(path.read_text())
    return table, [(name, tuple(shape)) for name, shape in table["tensors"]]


@pytest.mark.parametrize("path", TABLES, ids=[p.stem for p in TABLES])
def test_types_equal_llama_quantize(path):
    table, tensors = table_case(path)
    hp = table["hparams"]
    assert set(table["types"]) == set(K_PRESETS)
    for name, want in table["types"].items():
        got = assign_types(tensors, preset(name), n_head=hp["nh"], n_head_kv=hp["nkv"], n_layer=hp["layers"],
                           n_expert=hp["E"], arch=ARCHS[table["model"]])
        assert {n: t.name for (n, _), (t, _) in zip(tensors, got)} == {n: t.upper() for n, t in want.items()}, name


def test_the_plan_passes_the_expert_count():
    """The n_expert == 8 rules (attn_v and attn_k at Q8_0, attn_output at Q5_K) must reach the policy from the
    converter's plan: without n_expert these tensors would get the dense types."""
    from gguf_out.plan import Output, Plan

    table, tensors = table_case(next(p for p in TABLES if p.stem == "mixtral"))
    hp = {"num_heads": table["hparams"]["nh"], "num_kv_heads": table["hparams"]["nkv"], "n_expert": 8}
    plan = Plan([Output(n, None, s) for n, s in tensors], [], hp, table["hparams"]["layers"], arch="llama")
    got = {n: t.name for (n, _), (t, _) in zip(tensors, plan.types("q4_k_m"))}
    assert got == {n: t.upper() for n, t in table["types"]["q4_k_m"].items()}
    assert got["blk.0.attn_v.weight"] == "Q8_0" and got["blk.0.attn_k.weight"] == "Q8_0"


def test_deepseek2_table_through_the_plan():
    """DeepSeek-V3's MLA tensors (attn_k_b rows of 128 fall back, as in the 671B model) and its 8 experts: the plan's
    hyperparameters give llama-quantize's types; without the expert count attn_output would not be bumped."""
    from gguf_out.plan import Output, Plan

    table, tensors = table_case(next(p for p in TABLES if p.stem == "deepseek2"))
    want = {n: t.upper() for n, t in table["types"]["q4_k_m"].items()}
    for n_expert in (8, 0):
        hp = {"num_heads": table["hparams"]["nh"], "num_kv_heads": table["hparams"]["nkv"], "n_expert": n_expert}
        plan = Plan([Output(n, None, s) for n, s in tensors], [], hp, table["hparams"]["layers"], arch="deepseek2")
        got = {n: t.name for (n, _), (t, _) in zip(tensors, plan.types("q4_k_m"))}
        assert (got == want) == (n_expert == 8)
    assert want["blk.1.attn_k_b.weight"] == "Q5_0" and want["blk.1.attn_output.weight"] == "Q5_K"
