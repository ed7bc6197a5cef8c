"""GLM tokenizers through real llama.cpp: ChatGLM3's SentencePiece model with the special tokens ChatGLM3's tokenizer
appends, and GLM-4's byte-level BPE with the [gMASK]<sop> prefix that llama.cpp takes from the chat template.

Truth: tests/fixtures/chatglm/tokenizer/expected.json, MindFormers 2.1.0's own ChatGLM3Tokenizer's encodings of test
strings and of a chat (build_chat_input), recorded by tests/gen_glm_fixtures.py; for GLM-4 the BPE fixture of
tests/gen_bpe_fixtures.py (its test strings include a GLM-4 chat prompt; test_bpe_vocab.py compares them all).
"""

import json

import pytest
from conftest import FIXTURES
from gguf import TokenType
from test_bpe_vocab import llama_tokens, needs_llamacpp, write_tiny_gguf

from gguf_out import templates
from gguf_out.maps import load_map
from gguf_out.vocab import load_tokenizer

SPM = FIXTURES / "chatglm" / "tokenizer"
GLM4 = FIXTURES / "bpe" / "glm4"


def spm_expected():
    return json.loads((SPM / "expected.json").read_text(encoding="utf-8"))


def chatglm3_vocab():
    return load_tokenizer(SPM / "tokenizer.model", load_map("chatglm"))


def test_chatglm3_vocabulary():
    """The SentencePiece pieces, then ChatGLM3's nine special tokens (CONTROL) at the ids its tokenizer gives them."""
    exp = spm_expected()
    vocab = chatglm3_vocab()
    assert vocab.model == "llama" and vocab.pre == "chatglm-spm" and vocab.add_bos is False
    assert [[i, vocab.tokens[i]] for i, _ in exp["specials"]] == exp["specials"]
    assert all(vocab.types[i] == TokenType.CONTROL for i, _ in exp["specials"])
    assert len(vocab.tokens) == exp["pieces"] + len(exp["specials"])
    assert vocab.tokens[vocab.special["eot"]] == "<|user|>" and vocab.tokens[vocab.special["eos"]] == "</s>"
    assert vocab.warnings == []


@needs_llamacpp
def test_chatglm3_tokenizes_like_mindformers(tmp_path):
    exp = spm_expected()
    path = write_tiny_gguf(tmp_path / "chatglm3.gguf", chatglm3_vocab(), rows=512)
    assert llama_tokens(path, exp["strings"]) == exp["ids"]


@needs_llamacpp
def test_chatglm3_chat_prompt_tokenizes_like_mindformers_build_chat_input(tmp_path):
    """The chatglm3 chat template rendered and tokenized by llama.cpp (special tokens parsed, no BOS added) gives the
    ids of MindFormers' ChatGLM3Tokenizer.build_chat_input: [gMASK]sop once, role tokens, "\\n" + content."""
    exp = spm_expected()
    messages = exp["chat"]["history"] + [{"role": "user", "content": exp["chat"]["query"]}]
    jinja2 = pytest.importorskip("jinja2")
    prompt = jinja2.Environment().from_string(templates.CHATGLM3.jinja).render(messages=messages,
                                                                                add_generation_prompt=True)
    path = write_tiny_gguf(tmp_path / "chatglm3.gguf", chatglm3_vocab(), rows=512)
    assert llama_tokens(path, [prompt]) == [exp["chat"]["ids"]]
    # negative control: the same prompt without its leading "sop" is not what ChatGLM3 was trained on
    assert llama_tokens(path, [prompt.replace("[gMASK]sop", "[gMASK]", 1)]) != [exp["chat"]["ids"]]


@needs_llamacpp
def test_glm4_prefix_comes_from_the_chat_template_once(tmp_path):
    """GLM-4's tokenizers put [gMASK]<sop> before every text; in llama.cpp the chat template does (add_bos false), so
    a rendered chat starts with the prefix exactly once and plain text gets none."""
    exp = json.loads((GLM4 / "expected.json").read_text(encoding="utf-8"))
    vocab = load_tokenizer(GLM4 / "hf", load_map("glm4"))
    assert vocab.warnings == [] and vocab.add_bos is False
    path = write_tiny_gguf(tmp_path / "glm4.gguf", vocab, rows=448)
    jinja2 = pytest.importorskip("jinja2")
    prompt = jinja2.Environment().from_string(templates.GLM4.jinja).render(
        messages=[{"role": "user", "content": "Hello world"}], add_generation_prompt=True)
    [ids] = llama_tokens(path, [prompt])
    specials = {text: i for i, text, _ in exp["specials"]}
    assert ids[:3] == exp["prefix"] + [specials["<|user|>"]] and ids.count(specials["[gMASK]"]) == 1
    assert ids[-1] == specials["<|assistant|>"]
    assert llama_tokens(path, ["Hello world"]) == [exp["tokenizers"][exp["strings"].index("Hello world")]]


@needs_llamacpp
def test_glm4_and_chatglm_bpe_pre_names_tokenize_alike(tmp_path):
    """The glm4 map writes llama.cpp's converter's name for GLM-4-0414 ("glm4"), the chatglm map "chatglm-bpe": the
    same pre-tokenizer in llama.cpp."""
    exp = json.loads((GLM4 / "expected.json").read_text(encoding="utf-8"))
    got = {}
    for name in ("chatglm", "glm4"):
        vocab = load_tokenizer(GLM4 / "tiktoken" / "tokenizer.model", load_map(name))
        got[vocab.pre] = llama_tokens(write_tiny_gguf(tmp_path / f"{name}.gguf", vocab, rows=448), exp["strings"])
    assert set(got) == {"chatglm-bpe", "glm4"}
    assert got["glm4"] == got["chatglm-bpe"] == exp["tiktoken"]


def test_a_two_token_prefix_the_map_does_not_know_is_a_warning():
    """A tokenizer.json that adds a multi-token prefix llama.cpp cannot add, under a map that does not expect it."""
    data = json.loads((GLM4 / "hf" / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["post_processor"]["processors"][1]["single"][1]["SpecialToken"]["id"] == "<sop>"
    from gguf_out.vocab_bpe import load_bpe

    specials = dict(load_map("glm4").tokenizer_specials)
    specials.pop("prefix")
    vocab = load_bpe(GLM4 / "hf" / "tokenizer.json", "glm4", specials, "a test map")
    assert any("puts [gMASK]<sop> before every text" in w for w in vocab.warnings)
