"""Byte-level BPE vocabularies (gguf_out/vocab_bpe.py) against the real tokenizers, through real llama.cpp.

Truth: tests/fixtures/bpe/<family>/ made by tests/gen_bpe_fixtures.py with the `tokenizers` package (and `tiktoken`
for the rank files), which stores each tokenizer in every on-disk form plus its encodings of a set of test strings.
Each form is turned into a GGUF vocabulary, written into a tiny random llama model, and llama.cpp's tokenization of
every string must equal the stored encoding. Negative controls show the comparison notices a wrong pre-tokenizer or
wrong merges.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, LLAMA, TOKENIZER, convert
from gguf import GGMLQuantizationType, Keys, TokenType

from gguf_out.errors import ConvertError
from gguf_out.maps import FamilyMap, maps_dir
from gguf_out.metadata import tokenizer_kvs
from gguf_out.vocab import find_tokenizer, load_tokenizer, pad_to
from gguf_out.vocab_bpe import BYTE_CHARS, _map_specials, byte_text, merges_from_ranks
from gguf_out.writer import KV, GGUFWriter, TensorInfo

HAVE_LLAMACPP = importlib.util.find_spec("xllamacpp") is not None
needs_llamacpp = pytest.mark.skipif(not HAVE_LLAMACPP, reason="xllamacpp (test extra) is not installed")

BPE = FIXTURES / "bpe"
FAMILIES = ("llama3", "qwen2", "glm4", "deepseek3")
TIKTOKEN = {"llama3": "tiktoken/tokenizer.model", "qwen2": "tiktoken/qwen.tiktoken", "glm4": "tiktoken/tokenizer.model"}

# the families' tokenizer entries as a map writes them (the Llama 3 list in its compact range form)
MAP_TOKENIZER = {
    "llama3": {"tokenizer_pre": "llama-bpe", "tokenizer_specials": {
        "tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
                   ["<|reserved_special_token_{}|>", 5, 251]],
        "bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "eot": "<|eot_id|>", "add_bos": True}},
    "qwen2": {"tokenizer_pre": "qwen2", "tokenizer_specials": {
        "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                   "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                   "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
                   {"content": "<tool_call>", "special": False}, {"content": "</tool_call>", "special": False},
                   {"content": "<|fim_prefix|>", "special": False}, {"content": "<|fim_middle|>", "special": False},
                   {"content": "<|fim_suffix|>", "special": False}, {"content": "<|fim_pad|>", "special": False},
                   {"content": "<|repo_name|>", "special": False}, {"content": "<|file_sep|>", "special": False}],
        "bos": "<|endoftext|>", "eos": "<|im_end|>", "eot": "<|im_end|>", "pad": "<|endoftext|>",
        "add_bos": False}},
    "glm4": {"tokenizer_pre": "chatglm-bpe", "tokenizer_specials": {
        "tokens": ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                   "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                   "<|begin_of_video|>", "<|end_of_video|>"],
        "bos": "[gMASK]", "eos": "<|endoftext|>", "eot": "<|user|>", "pad": "<|endoftext|>", "add_bos": False,
        "prefix": ["[gMASK]", "<sop>"]}},
    "deepseek3": {"tokenizer_pre": "deepseek-v3", "tokenizer_specials": {
        "bos": "<｜begin▁of▁sentence｜>", "eos": "<｜end▁of▁sentence｜>", "pad": "<｜▁pad▁｜>", "add_bos": True}},
}


def expected(family):
    return json.loads((BPE / family / "expected.json").read_text(encoding="utf-8"))


def family_map(family, **changes):
    data = {"family": f"{family}-test", "arch": "llama", "tokenizer": "bpe", "tensors": [],
            **MAP_TOKENIZER[family]}
    data.update(changes)
    return FamilyMap(data, f"test-map-{family}")


def string_merges_copy(family, tmp_path):
    """The tokenizer.json with merges in the older "a b" string form (tokenizers < 0.20)."""
    folder = tmp_path / "hf_strings"
    shutil.copytree(BPE / family / "hf", folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert isinstance(data["model"]["merges"][0], list)
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder / "tokenizer.json"


FORMS = {
    "tokenizer.json": lambda family, tmp: BPE / family / "hf" / "tokenizer.json",
    "tokenizer.json-string-merges": string_merges_copy,
    "vocab.json+merges.txt": lambda family, tmp: BPE / family / "vocab" / "vocab.json",
    "tiktoken": lambda family, tmp: BPE / family / TIKTOKEN[family],
    "directory": lambda family, tmp: BPE / family / "hf",
}


# ---------------------------------------------------------------------------------------------------------------
# a tiny llama model around a vocabulary

N_EMBD, N_FF, N_HEAD = 32, 64, 2


def write_tiny_gguf(path, vocab, rows=None):
    rows = rows or len(vocab.tokens)
    pad_to(vocab, rows)
    kvs = [
        (Keys.General.ARCHITECTURE, KV.str("llama")), (Keys.General.NAME, KV.str("bpe-vocab-test")),
        ("llama.context_length", KV.u32(256)), ("llama.embedding_length", KV.u32(N_EMBD)),
        ("llama.block_count", KV.u32(1)), ("llama.feed_forward_length", KV.u32(N_FF)),
        ("llama.attention.head_count", KV.u32(N_HEAD)), ("llama.attention.head_count_kv", KV.u32(N_HEAD)),
        ("llama.attention.layer_norm_rms_epsilon", KV.f32(1e-5)), ("llama.rope.dimension_count",
                                                                    KV.u32(N_EMBD // N_HEAD)),
    ] + tokenizer_kvs(vocab)
    shapes = {"token_embd.weight": (rows, N_EMBD), "output_norm.weight": (N_EMBD,), "output.weight": (rows, N_EMBD),
              "blk.0.attn_norm.weight": (N_EMBD,), "blk.0.attn_q.weight": (N_EMBD, N_EMBD),
              "blk.0.attn_k.weight": (N_EMBD, N_EMBD), "blk.0.attn_v.weight": (N_EMBD, N_EMBD),
              "blk.0.attn_output.weight": (N_EMBD, N_EMBD), "blk.0.ffn_norm.weight": (N_EMBD,),
              "blk.0.ffn_gate.weight": (N_FF, N_EMBD), "blk.0.ffn_up.weight": (N_FF, N_EMBD),
              "blk.0.ffn_down.weight": (N_EMBD, N_FF)}
    infos = [TensorInfo(name, shape, GGMLQuantizationType.F32) for name, shape in shapes.items()]
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        writer = GGUFWriter(f)
        writer.write_header(kvs, infos)
        for info in infos:
            writer.begin_tensor(info.name)
            writer.write(rng.standard_normal(info.shape).astype(np.float32) * 0.1)
            writer.end_tensor()
        writer.finish()
    return path


def llama_tokens(path, strings):
    from llamacpp import LlamaModel
    with LlamaModel(path, n_ctx=64) as model:
        return [model.tokenize(s, add_special=True, parse_special=True) for s in strings]


def mismatches(got, want, strings):
    return [(s, g, w) for s, g, w in zip(strings, got, want) if g != w]


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp tokenizes like the original tokenizer, for every family and on-disk form


@needs_llamacpp
@pytest.mark.parametrize("family,form", [(f, form) for f in FAMILIES for form in FORMS
                                         if form != "tiktoken" or f in TIKTOKEN])     # DeepSeek: tokenizer.json
def test_llamacpp_tokenizes_like_tokenizers(family, form, tmp_path):
    exp = expected(family)
    vocab = load_tokenizer(FORMS[form](family, tmp_path), family_map(family))
    assert vocab.warnings == []
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", vocab, rows=exp["n_tokens"] + 3)
    truth = exp["tiktoken"] if form == "tiktoken" else exp["tokenizers"]
    got = llama_tokens(gguf_path, exp["strings"])
    assert mismatches(got, truth, exp["strings"]) == []


@needs_llamacpp
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_metadata_as_llamacpp_reads_it(family, tmp_path):
    exp = expected(family)
    vocab = load_tokenizer(BPE / family / TIKTOKEN.get(family, "hf/tokenizer.json"), family_map(family))
    path = write_tiny_gguf(tmp_path / "tiny.gguf", vocab, rows=exp["n_tokens"] + 5)
    from llamacpp import LlamaModel
    specials = MAP_TOKENIZER[family]["tokenizer_specials"]
    index = {text: i for i, text, _ in exp["specials"]}
    with LlamaModel(path, n_ctx=64) as model:
        assert model.n_vocab == exp["n_tokens"] + 5
        assert model.meta("tokenizer.ggml.model") == "gpt2"
        assert model.meta("tokenizer.ggml.pre") == exp["pre"]
        assert model.meta("tokenizer.ggml.add_bos_token") == str(exp["add_bos"]).lower()
        for role in ("bos", "eos", "eot") if family != "deepseek3" else ("bos", "eos", "padding"):
            assert model.meta(f"tokenizer.ggml.{role}_token_id") == str(index[specials[role[:3]]])
        # special tokens render as their text, byte-level tokens as their bytes
        assert model.token_to_piece(exp["specials"][0][0]) == exp["specials"][0][1].encode()
        last = exp["base_vocab"] - 1
        assert model.token_to_piece(last) == bytes(BYTE_CHARS.index(c) for c in vocab.tokens[last])


# ---------------------------------------------------------------------------------------------------------------
# negative controls: the comparison above can fail


@needs_llamacpp
def test_wrong_pre_tokenizer_changes_tokenization(tmp_path):
    """Llama 3 splits digits in threes, Qwen2 one by one: the pre value must come from the family."""
    exp = expected("llama3")
    vocab = load_tokenizer(BPE / "llama3" / "hf", family_map("llama3", tokenizer_pre="qwen2"))
    got = llama_tokens(write_tiny_gguf(tmp_path / "wrong_pre.gguf", vocab), exp["strings"])
    wrong = {s for s, _, _ in mismatches(got, exp["tokenizers"], exp["strings"])}
    assert "1234567890" in wrong


@needs_llamacpp
def test_deepseek3_needs_its_own_pre_tokenizer(tmp_path):
    """DeepSeek-V3 splits CJK runs and digit groups apart from words; read with Qwen2's pre-tokenizer they differ."""
    exp = expected("deepseek3")
    vocab = load_tokenizer(BPE / "deepseek3" / "hf", family_map("deepseek3", tokenizer_pre="qwen2"))
    got = llama_tokens(write_tiny_gguf(tmp_path / "wrong_pre.gguf", vocab), exp["strings"])
    wrong = {s for s, _, _ in mismatches(got, exp["tokenizers"], exp["strings"])}
    assert {"1234567890", "日本語のテキストと中文混合 123456 ＡＢＣ"} & wrong


@needs_llamacpp
@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_merge_order_changes_tokenization(family, tmp_path):
    exp = expected(family)
    vocab = load_tokenizer(BPE / family / "vocab" / "vocab.json", family_map(family))
    vocab.merges = vocab.merges[::-1]
    got = llama_tokens(write_tiny_gguf(tmp_path / "reversed.gguf", vocab), exp["strings"])
    assert len(mismatches(got, exp["tokenizers"], exp["strings"])) > len(exp["strings"]) // 3


# ---------------------------------------------------------------------------------------------------------------
# end to end through the CLI: a Llama fixture checkpoint with a BPE map, tokenizer given as a directory


@needs_llamacpp
def test_convert_with_bpe_map_and_tokenizer_directory(tmp_path):
    exp = expected("qwen2")
    data = json.loads((maps_dir() / "llama2.json").read_text())
    data.update(tokenizer="bpe", **MAP_TOKENIZER["qwen2"])
    custom = tmp_path / "llama_with_qwen2_tokenizer.json"
    custom.write_text(json.dumps(data))
    out = tmp_path / "out.gguf"
    assert convert(LLAMA / "padded_vocab" / "model.ckpt", out, map_name=str(custom),
                   tokenizer=BPE / "qwen2" / "vocab") == 0
    got = llama_tokens(out, exp["strings"])
    assert mismatches(got, exp["tokenizers"], exp["strings"]) == []


def test_find_tokenizer_prefers_the_kind_of_the_map(tmp_path):
    for name in ("tokenizer.model", "tokenizer.json", "vocab.json", "qwen.tiktoken"):
        (tmp_path / name).write_text("x")
    ckpt = tmp_path / "model.ckpt"
    assert find_tokenizer(ckpt, "sentencepiece").name == "tokenizer.model"
    assert find_tokenizer(ckpt, "bpe").name == "tokenizer.json"
    (tmp_path / "tokenizer.json").unlink()
    assert find_tokenizer(ckpt, "bpe").name == "vocab.json"
    (tmp_path / "vocab.json").unlink()
    assert find_tokenizer(ckpt, "bpe").name == "qwen.tiktoken"
    assert find_tokenizer(ckpt).name == "tokenizer.model"


# ---------------------------------------------------------------------------------------------------------------
# merges from tiktoken ranks


@pytest.mark.parametrize("family", TIKTOKEN)
def test_merges_from_ranks_equal_the_trained_merges(family):
    """The merges derived from the rank file are exactly the trainer's, in order."""
    trained = json.loads((BPE / family / "hf" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    vocab = load_tokenizer(BPE / family / TIKTOKEN[family], family_map(family))
    assert vocab.merges == [" ".join(pair) for pair in trained]
    assert len(vocab.merges) == expected(family)["n_merges"]


def test_merges_from_ranks_small_cases():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    # "abc": with ranks below 5, "ab" (3) merges before "bc" (4), leaving ab + c
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    assert merges_from_ranks(ranks)[-1] == (b"a", b"bc")
    # a token BPE cannot reach by merging (no two-piece split below its rank) gets no merge
    assert merges_from_ranks({b"a": 0, b"b": 1, b"c": 2, b"abc": 3}) == []


def test_byte_text_is_gpt2_byte_level():
    assert byte_text(b" hello\n") == "Ġhello" + "Ċ"
    assert len(set(BYTE_CHARS)) == 256 and BYTE_CHARS[ord("A")] == "A" and BYTE_CHARS[0] == "Ā"


# ---------------------------------------------------------------------------------------------------------------
# vocabulary contents: types, special ids, add_bos, padding


def test_token_types_and_special_ids():
    exp = expected("qwen2")
    vocab = load_tokenizer(BPE / "qwen2" / "vocab", family_map("qwen2"))
    ids = {text: i for i, text, _ in exp["specials"]}
    assert vocab.model == "gpt2" and vocab.pre == "qwen2" and len(vocab.tokens) == exp["n_tokens"]
    assert vocab.types[0] == TokenType.NORMAL and vocab.types[exp["base_vocab"] - 1] == TokenType.NORMAL
    assert vocab.types[ids["<|im_start|>"]] == TokenType.CONTROL
    assert vocab.types[ids["<tool_call>"]] == TokenType.USER_DEFINED
    assert vocab.types[ids["<|fim_prefix|>"]] == TokenType.CONTROL      # not flagged special, but looks it
    # eos and pad from tokenizer_config.json, bos and eot from the map
    assert vocab.special == {"eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"], "bos": ids["<|endoftext|>"],
                             "eot": ids["<|im_end|>"]}
    assert vocab.add_bos is False and "<|im_start|>" in vocab.chat_template


def test_add_bos_sources(tmp_path):
    # Llama 3's tokenizer.json adds <|begin_of_text|> through its post-processor; the map says nothing here
    specials = dict(MAP_TOKENIZER["llama3"]["tokenizer_specials"])
    del specials["add_bos"]
    vocab = load_tokenizer(BPE / "llama3" / "hf", family_map("llama3", tokenizer_specials=specials))
    assert vocab.add_bos is True and vocab.special["bos"] == expected("llama3")["roles"]["bos"]
    # tokenizer_config.json's add_bos_token wins over the post-processor
    folder = tmp_path / "hf"
    shutil.copytree(BPE / "llama3" / "hf", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, add_bos_token=False)))
    assert load_tokenizer(folder, family_map("llama3")).add_bos is False
    # no file and no map says it: written as false, explicitly
    vocab = load_tokenizer(BPE / "qwen2" / "hf", family_map("qwen2", tokenizer_specials={}))
    assert vocab.add_bos is False and "bos" not in vocab.special


def test_config_json_supplies_ids(tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(BPE / "qwen2" / "hf", folder)
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 551, "eos_token_id": [1, 2]}))
    vocab = load_tokenizer(folder, family_map("qwen2"))
    assert vocab.special["bos"] == 551                  # config.json before the map
    assert vocab.special["eos"] == 552                  # tokenizer_config.json first; a list is ignored


def test_map_specials_and_tokenizer_config_beside_tiktoken(tmp_path):
    exp = expected("llama3")
    assert [list(t) for t in _map_specials(MAP_TOKENIZER["llama3"]["tokenizer_specials"], 1000, "m")] \
        == exp["specials"]
    # a tokenizer_config.json beside the rank file replaces the map's list
    shutil.copy(BPE / "llama3" / TIKTOKEN["llama3"], tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        "1000": {"content": "<|start|>", "special": True}, "1002": {"content": "<|stop|>", "special": True}},
        "bos_token": "<|start|>", "eos_token": "<|stop|>"}))
    vocab = load_tokenizer(tmp_path / "tokenizer.model", family_map("llama3", tokenizer_specials={}))
    assert vocab.tokens[1000:] == ["<|start|>", "[PAD1001]", "<|stop|>"]
    assert vocab.types[1001] == TokenType.UNUSED
    assert vocab.special == {"bos": 1000, "eos": 1002}


def test_padding_to_embedding_rows():
    vocab = load_tokenizer(BPE / "qwen2" / "vocab", family_map("qwen2"))
    n = len(vocab.tokens)
    pad_to(vocab, n + 4)
    assert vocab.tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 4)]
    assert vocab.types[n:] == [TokenType.UNUSED] * 4 and len(vocab.scores) == n + 4
    with pytest.raises(ConvertError, match="has 576 tokens but the embedding has only 575 rows"):
        pad_to(vocab, 575)


# llama.cpp reads GLM-4's pre-tokenizer under either name (both its CHATGLM4 type); its converter writes "glm4" for
# GLM-4-0414 (arch glm4)
PRE_NAMES = {"glm4": {"chatglm-bpe": "chatglm-bpe", "glm4": "glm4"}}


@pytest.mark.parametrize("name,family", [("llama3", "llama3"), ("qwen2", "qwen2"), ("qwen3", "qwen2"),
                                         ("chatglm", "glm4"), ("glm4", "glm4"), ("deepseek3", "deepseek3")])
def test_bundled_map_matches_the_family(name, family):
    """When the bundled family map exists, its tokenizer entries agree with the family's real special tokens."""
    path = maps_dir() / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no bundled map {name}.json yet")
    data = json.loads(path.read_text())
    exp = expected(family)
    assert data.get("tokenizer") == "bpe"
    assert data.get("tokenizer_pre") == PRE_NAMES.get(family, {}).get(name, exp["pre"])
    specials = data.get("tokenizer_specials", {})
    if "tokens" in specials:        # Qwen's files always list their added tokens; Meta's tiktoken file does not
        listed = _map_specials(specials, exp["base_vocab"], path.name)
        assert [list(t) for t in listed[:len(exp["specials"])]] == exp["specials"]
    texts = {text for _, text, _ in exp["specials"]}
    assert all(specials[role] in texts for role in ("bos", "eos", "eot", "pad", "unk") if role in specials)
    assert specials.get("add_bos") == exp["add_bos"]
    assert [index_of(exp, t) for t in specials.get("prefix", [])] == exp.get("prefix", [])


def index_of(exp, text):
    return next(i for i, t, _ in exp["specials"] if t == text)


# ---------------------------------------------------------------------------------------------------------------
# bad input: one-line ConvertErrors naming the file


def bad_copy(tmp_path, family, sub):
    folder = tmp_path / sub
    shutil.copytree(BPE / family / sub, folder)
    return folder


def test_duplicate_tokens_are_errors(tmp_path):
    folder = bad_copy(tmp_path, "qwen2", "vocab")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["added_tokens_decoder"]["550"]["content"] = "hello" if "hello" in vocab else next(iter(vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match=r"vocab\.json: token .* has two ids"):
        load_tokenizer(folder, family_map("qwen2"))
    vocab["another"] = 5
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ConvertError, match=r"vocab\.json: tokens .* share the id 5"):
        load_tokenizer(folder, family_map("qwen2"))


def test_an_id_with_two_texts_is_an_error(tmp_path):
    folder = bad_copy(tmp_path, "qwen2", "hf")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"][0]["id"] = 7
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ConvertError, match=r"tokenizer\.json: id 7 is both"):
        load_tokenizer(folder, family_map("qwen2"))


def edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change,words", [
    (lambda d: d["model"].update(type="WordPiece"), "model.type is 'WordPiece'"),
    (lambda d: d.update(pre_tokenizer={"type": "Metaspace"}, decoder=None), "without byte-level"),
    (lambda d: d["model"].update(merges=[["a", "b", "c"]]), "model.merges[0] is not a pair"),
    (lambda d: d["model"].pop("merges"), "model.merges is missing"),
    (lambda d: d["added_tokens"][0].pop("id"), "added_tokens[0] needs an integer 'id'"),
    (lambda d: d.pop("model"), "no model.vocab object"),
])
def test_malformed_tokenizer_json(tmp_path, change, words):
    folder = bad_copy(tmp_path, "qwen2", "hf")
    edit_json(folder / "tokenizer.json", change)
    with pytest.raises(ConvertError) as err:
        load_tokenizer(folder / "tokenizer.json", family_map("qwen2"))
    assert str(err.value).startswith(str(folder / "tokenizer.json")) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_vocab_and_merges(tmp_path):
    folder = bad_copy(tmp_path, "qwen2", "vocab")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    (folder / "merges.txt").write_text("\n".join(lines[:5] + ["a b c"] + lines[5:]), encoding="utf-8")
    with pytest.raises(ConvertError, match=r"merges\.txt: line 6: expected two space-separated tokens"):
        load_tokenizer(folder, family_map("qwen2"))
    (folder / "merges.txt").unlink()
    with pytest.raises(ConvertError, match="merges.txt is missing"):
        load_tokenizer(folder / "vocab.json", family_map("qwen2"))
    (folder / "vocab.json").write_text("{not json")
    with pytest.raises(ConvertError, match=r"vocab\.json: not valid JSON"):
        load_tokenizer(folder / "vocab.json", family_map("qwen2"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x": {}}}))
    (folder / "vocab.json").write_text(json.dumps({"a": 0}))
    (folder / "merges.txt").write_text("")
    with pytest.raises(ConvertError, match="added_tokens_decoder id 'x' is not an integer"):
        load_tokenizer(folder / "vocab.json", family_map("qwen2"))


def test_malformed_tiktoken(tmp_path):
    lines = (BPE / "qwen2" / TIKTOKEN["qwen2"]).read_text().splitlines()
    path = tmp_path / "qwen.tiktoken"
    for bad, words in ((["!!notbase64 3"], "line 4: expected 'base64-token rank'"),
                       (["YWJj"], "line 4: expected"),
                       ([lines[0].split()[0] + " 999"], "line 4: a repeated token"),
                       (["eHl6enk= 1"], "line 4: a bad or repeated rank")):
        path.write_text("\n".join(lines[:3] + bad + lines[3:]) + "\n")
        with pytest.raises(ConvertError) as err:
            load_tokenizer(path, family_map("qwen2"))
        assert str(err.value).startswith(str(path)) and words in str(err.value), err.value


def test_wrong_kind_of_tokenizer_for_the_map(tmp_path):
    with pytest.raises(ConvertError, match="not a byte-level BPE tokenizer .*SentencePiece"):
        load_tokenizer(TOKENIZER, family_map("llama3"))
    spm_map = FamilyMap({"family": "llama2", "arch": "llama", "tokenizer": "sentencepiece", "tensors": []}, "m")
    for path in (BPE / "llama3" / TIKTOKEN["llama3"], BPE / "llama3" / "hf" / "tokenizer.json"):
        with pytest.raises(ConvertError, match="byte-level BPE tokenizer, but the map 'llama2' expects"):
            load_tokenizer(path, spm_map)
    with pytest.raises(ConvertError, match="no tokenizer file in it"):
        load_tokenizer(tmp_path, family_map("llama3"))


def test_bad_map_entries():
    with pytest.raises(ConvertError, match="bad tokenizer_specials token entry"):
        load_tokenizer(BPE / "llama3" / TIKTOKEN["llama3"],
                       family_map("llama3", tokenizer_specials={"tokens": [["<|x{}|>", 1]]}))
    with pytest.raises(ConvertError, match="'tokenizer_pre' must be a string"):
        family_map("llama3", tokenizer_pre=["llama-bpe"])


def test_missing_pre_and_role_tokens_warn():
    vocab = load_tokenizer(BPE / "qwen2" / TIKTOKEN["qwen2"],
                           family_map("qwen2", tokenizer_pre=None,
                                      tokenizer_specials={"tokens": ["<|endoftext|>"], "eos": "<|nope|>"}))
    assert vocab.pre is None and len(vocab.warnings) == 2
    assert any("names no tokenizer_pre" in w for w in vocab.warnings)
    assert any("'<|nope|>' is not in the vocabulary" in w for w in vocab.warnings)
    assert "eos" not in vocab.special


def test_cli_error_is_one_line(tmp_path, capsys):
    data = json.loads((maps_dir() / "llama2.json").read_text())
    data.update(tokenizer="bpe", **MAP_TOKENIZER["qwen2"])
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps(data))
    folder = bad_copy(tmp_path, "qwen2", "vocab")
    (folder / "merges.txt").write_text("a b c\n")
    out = tmp_path / "out.gguf"
    assert convert(LLAMA / "padded_vocab" / "model.ckpt", out, map_name=str(custom), tokenizer=folder) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ms2gguf: error: ") and "\n" not in err and "merges.txt: line 1" in err
    assert not out.exists()
