"""Generate tiny byte-level BPE tokenizer fixtures (tests/fixtures/bpe/<family>/) with the real `tokenizers` package.

Run with the fixture venv, which has `tokenizers` and `tiktoken` (not needed by the tests):

    /work/venv-mf/bin/python tests/gen_bpe_fixtures.py

For each family (Llama 3: pre-tokenizer ``llama-bpe``; Qwen2/2.5/3: ``qwen2``; GLM-4: ``chatglm-bpe``) a tokenizer
is trained with that family's split regex, byte-level alphabet and BPE options (Llama 3 ``ignore_merges``, Qwen2 NFC
normalizer), its special tokens are added after the base vocabulary as the real tokenizers number them, and it is
written in each on-disk form ms2gguf reads:

* ``hf/tokenizer.json`` (+ a tokenizer_config.json with bos/eos/chat template, as HF repos ship it);
* ``vocab/vocab.json`` + ``vocab/merges.txt`` + ``vocab/tokenizer_config.json`` (added tokens in
  ``added_tokens_decoder``, as Qwen2 ships them);
* ``tiktoken/tokenizer.model`` (Llama 3's Meta format, GLM-4-9B's ``ChatGLM4Tokenizer`` file) or
  ``tiktoken/qwen.tiktoken``: ``base64(bytes) rank`` lines, rank = token id, with no special tokens (they come from the
  family map).

GLM-4's tokenizers put two tokens, ``[gMASK]<sop>``, before every text (``tokenizer.json``'s TemplateProcessing,
``ChatGLM4Tokenizer.get_prefix_tokens``); llama.cpp cannot add a two-token prefix, it gets it from the chat template,
so GLM-4's expected encodings are without it (``prefix`` holds its ids) and the generator checks the prefixed form
separately. The GLM-4 rank file is also read by MindFormers' own ``ChatGLM4Tokenizer`` (MindFormers 2.1.0), whose
encodings of the plain strings must equal tiktoken's.

``expected.json`` holds the test strings with their encodings by `tokenizers` (special tokens added as the family
does) and by `tiktoken` over the rank file (the truth for the tiktoken form; the generator checks both agree), the
special tokens, and the role ids. The training corpus is a few standard-library modules of the fixture venv's Python
plus a fixed multilingual text, so a regeneration with the same venv gives the same files. The Qwen2
tokenizer is kept under 576 tokens so that tests can convert the Llama fixture checkpoint ``padded_vocab`` with it.
"""

import base64
import json
import shutil
import sysconfig
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "bpe"

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

# DeepSeek-V3's tokenizer.json: three Split pre-tokenizers (numbers in threes, CJK runs, then words / punctuation /
# spaces), as llama.cpp's "deepseek-v3" pre-tokenizer (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_DEEPSEEK3_LLM)
DEEPSEEK3_SPLITS = [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"
                    r" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"]
# DeepSeek-V3's special tokens: bos / eos / pad first (ids 0-2, before the BPE vocabulary), the chat and tool markers
# after it (its tokenizer.json keeps 800 place holders between; a tiny vocabulary leaves them out)
DEEPSEEK3_LEAD = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"]
DEEPSEEK3_SPECIALS = [(t, True) for t in (
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>")] + [(t, False) for t in (
    "<｜User｜>", "<｜Assistant｜>")] + [(t, True) for t in (
    "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>")]

# Meta's Llama 3 special tokens (llama3 tokenizer.py, MindFormers research/llama3/llama3_tokenizer.py): ids from 128000
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
# Qwen2.5's added tokens (tokenizer_config.json added_tokens_decoder, ids from 151643); False = not special
QWEN2_SPECIALS = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")]

# GLM-4's added tokens (ChatGLM4Tokenizer.special_tokens, MindFormers models/glm2/glm4_tokenizer.py; ids from 151329)
GLM4_SPECIALS = [(t, True) for t in (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_CHAT = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# DeepSeek-V3's published chat template (its tokenizer_config.json), as MindFormers r1.8.0 ships it in
# research/deepseek3/deepseek3_671b/predict_deepseek3_671b.yaml (processor.tokenizer.chat_template)
DEEPSEEK3_CHAT = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
GLM4_CHAT = ("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

FAMILIES = {
    "llama3": dict(pre="llama-bpe", split=LLAMA3_SPLIT, ignore_merges=True, nfc=False, vocab_size=1000,
                   specials=[(t, True) for t in LLAMA3_SPECIALS], bos="<|begin_of_text|>", eos="<|end_of_text|>",
                   eot="<|eot_id|>", pad=None, add_bos=True, tiktoken_name="tokenizer.model", chat=LLAMA3_CHAT),
    "qwen2": dict(pre="qwen2", split=QWEN2_SPLIT, ignore_merges=False, nfc=True, vocab_size=550,
                  specials=QWEN2_SPECIALS, bos=None, eos="<|im_end|>", eot="<|im_end|>", pad="<|endoftext|>",
                  add_bos=False, tiktoken_name="qwen.tiktoken", chat=CHATML),
    # GLM-4-9B / GLM-4-0414: GLM's split regex is Llama 3's, but merges are not ignored; [gMASK]<sop> prefix
    "glm4": dict(pre="chatglm-bpe", split=LLAMA3_SPLIT, ignore_merges=False, nfc=False, vocab_size=420,
                 specials=GLM4_SPECIALS, bos="[gMASK]", eos="<|endoftext|>", eot="<|user|>", pad="<|endoftext|>",
                 add_bos=False, prefix=("[gMASK]", "<sop>"), config_bos=None, tiktoken_name="tokenizer.model",
                 chat=GLM4_CHAT),
    # DeepSeek-V3: bos/eos/pad before the vocabulary, <｜User｜> / <｜Assistant｜> not special (as its tokenizer.json)
    "deepseek3": dict(pre="deepseek-v3", splits=DEEPSEEK3_SPLITS, ignore_merges=False, nfc=False, vocab_size=480,
                      lead=DEEPSEEK3_LEAD, specials=DEEPSEEK3_SPECIALS, bos="<｜begin▁of▁sentence｜>",
                      eos="<｜end▁of▁sentence｜>", eot=None, pad="<｜▁pad▁｜>", add_bos=True, tiktoken_name=None,
                      chat=DEEPSEEK3_CHAT),
}

MULTILINGUAL = """
Привет, мир! Как дела? Сегодня хорошая погода, и мы пишем конвертер моделей.
你好，世界。今天天气很好，我们正在转换模型。模型的权重和分词器。
こんにちは世界。トークナイザーのテストです。カタカナとひらがな。
مرحبا بالعالم. هذا اختبار للمحلل.
Γειά σου κόσμε. Ελληνικά γράμματα.
naïve café résumé über straße façade
emoji: 👋🌍🚀😀🎉 👨‍👩‍👧 ❤️ ✅
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159 65536 1234567890
123 456 789 123456789 1234567890 12 34 56 78 90 2023 2024 2025 365 24 60 1000000 456789 7890
don't won't I'm you're we've they'll she'd It's DON'T WE'LL
"""

STRINGS = [
    "Hello world",
    " Hello",
    "HeLLo WoRLD, hello WORLD!",
    "don't I'm we'll they've she's I'D YOU'RE",
    "1234567890",
    "3.14159 and 42 and 1000000 and 2024-05-01",
    "x=12345678901234567890;",
    "a   b    c",
    "  leading and trailing  ",
    "tabs\tand\t\ttabs",
    "line1\nline2\n\nline4\r\nline5",
    "\n\n\n",
    "    indented code\n        more indented\n",
    "def f(x):\n    return x ** 2  # square\n",
    "Привет, мир! Как дела?",
    "你好，世界。今天天气很好。",
    "こんにちは世界",
    "مرحبا بالعالم",
    "emoji 👋🌍🚀 and 👨‍👩‍👧 family ❤️",
    "naïve café résumé",
    "mixed: abc123def 456ghi ÀÉÎ",
    "",
    " ",
    "<|not_a_token|> <unk>",
]
SPECIAL_STRINGS = {
    "llama3": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>",
        "<|reserved_special_token_200|>x<|end_of_text|>",
    ],
    "qwen2": [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
        "text<|endoftext|>",
    ],
    "deepseek3": [
        "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi there!<｜Assistant｜>Hello.<｜end▁of▁sentence｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜>",
        "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>",
        "日本語のテキストと中文混合 123456 ＡＢＣ",
    ],
    "glm4": [
        "[gMASK]<sop><|system|>\nYou are helpful.<|user|>\nHi there!<|assistant|>\n",
        "<|observation|>x<|endoftext|>[MASK]<eop>",
    ],
}


def corpus():
    """A few standard-library modules of the fixture venv's Python (English prose and code) plus MULTILINGUAL."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [MULTILINGUAL] * 30
    for name in ("argparse.py", "textwrap.py", "difflib.py", "inspect.py", "json/decoder.py", "json/encoder.py"):
        texts.append((stdlib / name).read_text(encoding="utf-8"))
    return texts


def train(spec):
    tok = Tokenizer(models.BPE(ignore_merges=spec["ignore_merges"]))
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        *(pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False)
          for split in spec.get("splits", [spec.get("split")])),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    lead = [AddedToken(text, special=True, normalized=False) for text in spec.get("lead", [])]
    trainer = trainers.BpeTrainer(vocab_size=spec["vocab_size"], min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=lead)
    tok.train_from_iterator(corpus(), trainer)
    base = tok.get_vocab_size()
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in spec["specials"]])
    if spec.get("prefix"):
        first, second = spec["prefix"]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{first} {second} $A", pair=f"{first} {second} $A $B:1",
                                          special_tokens=[(t, tok.token_to_id(t)) for t in spec["prefix"]])])
    elif spec["add_bos"]:
        bos_id = tok.token_to_id(spec["bos"])
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B:1",
                                          special_tokens=[(spec["bos"], bos_id)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, base


def gpt2_byte_table():
    """GPT-2's bytes_to_unicode, inverted: char -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    return table


def write_family(name, spec):
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("hf", "vocab") + (("tiktoken",) if spec["tiktoken_name"] else ()):
        (folder / sub).mkdir(parents=True)
    tok, base = train(spec)
    model = json.loads(tok.to_str())
    assert model["model"]["ignore_merges"] == spec["ignore_merges"]
    specials = [(base + i, text, special) for i, (text, special) in enumerate(spec["specials"])]
    for token_id, text, _ in specials:
        assert tok.token_to_id(text) == token_id, (text, token_id)
    lead = [(k, text, True) for k, text in enumerate(spec.get("lead", []))]     # before the vocabulary
    for token_id, text, _ in lead:
        assert tok.token_to_id(text) == token_id, (text, token_id)

    short_config = {"bos_token": spec.get("config_bos", spec["bos"]), "eos_token": spec["eos"], "chat_template": spec["chat"],
                    "tokenizer_class": "PreTrainedTokenizerFast"}
    if spec["pad"]:
        short_config["pad_token"] = spec["pad"]
    (folder / "hf" / "tokenizer.json").write_text(json.dumps(model, ensure_ascii=False), encoding="utf-8")
    (folder / "hf" / "tokenizer_config.json").write_text(json.dumps(short_config, indent=1), encoding="utf-8")

    tok.model.save(str(folder / "vocab"))
    full_config = dict(short_config, add_bos_token=spec["add_bos"], added_tokens_decoder={
        str(token_id): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": special} for token_id, text, special in lead + specials})
    (folder / "vocab" / "tokenizer_config.json").write_text(json.dumps(full_config, ensure_ascii=False),
                                                            encoding="utf-8")

    strings = STRINGS + SPECIAL_STRINGS[name]
    if not spec["tiktoken_name"]:    # shipped as tokenizer.json only (several split regexes: no tiktoken form)
        by_tokenizers = [tok.encode(s).ids for s in strings]
        write_expected(folder, name, spec, tok, model, base, lead + specials, strings, by_tokenizers, None, [])
        return
    to_byte = gpt2_byte_table()
    ranks = {bytes(to_byte[c] for c in text): token_id for text, token_id in tok.get_vocab(False).items()}
    assert len(ranks) == base
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=lambda x: x[1])]
    (folder / "tiktoken" / spec["tiktoken_name"]).write_text("\n".join(lines) + "\n", encoding="ascii")

    # tiktoken has no NFC step; the test strings are NFC already, so both tokenizers see the same text
    encoding = tiktoken.Encoding(name, pat_str=spec["split"], mergeable_ranks=ranks,
                                 special_tokens={text: token_id for token_id, text, _ in specials})
    prefix = [tok.token_to_id(t) for t in spec.get("prefix", ())]
    by_tokenizers = [tok.encode(s, add_special_tokens=not prefix).ids for s in strings]
    if prefix:      # what the tokenizer adds itself, which llama.cpp leaves to the chat template
        assert all(tok.encode(s).ids == prefix + ids for s, ids in zip(strings, by_tokenizers))
    bos = [tok.token_to_id(spec["bos"])] if spec["add_bos"] else []
    by_tiktoken = [bos + encoding.encode(s, allowed_special="all") for s in strings]
    differ = [s for s, a, b in zip(strings, by_tokenizers, by_tiktoken) if a != b]
    assert not differ, f"{name}: tokenizers and tiktoken disagree on {differ}"
    if name == "glm4":
        check_with_mindformers(folder / "tiktoken" / spec["tiktoken_name"], STRINGS, by_tiktoken[:len(STRINGS)])
    write_expected(folder, name, spec, tok, model, base, specials, strings, by_tokenizers, by_tiktoken, prefix)


def write_expected(folder, name, spec, tok, model, base, specials, strings, by_tokenizers, by_tiktoken, prefix):
    roles = {role: spec[role] for role in ("bos", "eos", "eot", "pad") if spec[role]}
    after = sum(1 for token_id, _, _ in specials if token_id >= base)
    expected = {
        "family": name, "pre": spec["pre"], "base_vocab": base, "n_tokens": base + after,
        "n_merges": len(model["model"]["merges"]), "add_bos": spec["add_bos"],
        **({"prefix": prefix} if prefix else {}),
        "roles": {role: tok.token_to_id(text) for role, text in roles.items()},
        "specials": [[token_id, text, special] for token_id, text, special in specials],
        "strings": strings, "tokenizers": by_tokenizers, "tiktoken": by_tiktoken,
        "generator": "tests/gen_bpe_fixtures.py (tokenizers" + (" + tiktoken)" if by_tiktoken else ")"),
    }
    body = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in expected.items())
    (folder / "expected.json").write_text("{\n" + body + "\n}\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{name}: {base} base tokens + {len(specials)} specials, {expected['n_merges']} merges, "
          f"{len(strings)} strings, {size / 1024:.0f} KiB")


def check_with_mindformers(rank_file, strings, want):
    """MindFormers 2.1.0's own ChatGLM4Tokenizer reads the rank file and encodes the plain strings like tiktoken."""
    import os
    import tempfile

    scratch = tempfile.mkdtemp(prefix="gen_bpe_mindformers_")     # MindFormers' logs and ./output go here
    os.environ.setdefault("LOG_MF_PATH", scratch)
    os.environ.setdefault("LOCAL_DEFAULT_PATH", scratch)
    from mindformers.models.glm2.glm4_tokenizer import ChatGLM4Tokenizer

    mf = ChatGLM4Tokenizer(str(rank_file))
    got = [mf.tokenizer.encode(s, disallowed_special=()) for s in strings]
    differ = [s for s, a, b in zip(strings, got, want) if a != b]
    assert not differ, f"MindFormers' ChatGLM4Tokenizer disagrees with tiktoken on {differ}"


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", help=f"families to write: {', '.join(FAMILIES)} (default: all)")
    names = ap.parse_args(argv).families or list(FAMILIES)
    unknown = set(names) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}")
    for name in names:
        write_family(name, FAMILIES[name])


if __name__ == "__main__":
    main()
