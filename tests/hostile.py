"""A catalogue of hostile inputs for every file ms2gguf reads (issue 18), built from the committed fixtures.

Each case is a function ``build(d)`` that copies a working conversion (or inspect / check) into the empty directory
``d``, damages one input, and returns a ``Case``: the command line, the file the one error line must name, and the
mode ("error": exit 1 with exactly one ``ms2gguf: error: <file>: ...`` line on stderr; "check": ``ms2gguf check``
exits 1 and prints only ``<file>: error|warning: ...`` lines). tests/test_hostile.py runs each under resource limits.

    python tests/hostile.py DIR        # write every case into DIR/<id>/ (to try them by hand)
"""

import base64
import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from test_reader_errors import ld, varint  # the .ckpt wire-format byte helpers

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
LLAMA = FIX / "llama" / "gqa_fused"
SPM = FIX / "llama" / "tokenizer"
QWEN = FIX / "qwen2" / "fused"
QWEN_TOK = FIX / "qwen2" / "tokenizer"
BPE = FIX / "bpe" / "qwen2"
CKPT2 = FIX / "mf_saves" / "ckpt2_tp2pp2dp2"
LEGACY = FIX / "mf_saves" / "legacy_qwen3_tp2dp2"
ST = FIX / "ckpt" / "direct.safetensors"


@dataclass
class Case:
    argv: list
    culprit: Path                   # the file the error must name
    mode: str = "error"             # "error" or "check"
    out: Path | None = None         # nothing may be left here
    contains: tuple = ()            # words the error line must hold (beyond the culprit's name)
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# bases: working inputs copied into the case directory


def llama(d, **argv_extra):
    """The tiny Llama (SentencePiece) conversion; returns the paths."""
    for name in ("model.ckpt", "config.yaml"):
        shutil.copy(LLAMA / name, d / name)
    (d / "tok").mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(SPM / name, d / "tok" / name)
    return {"ckpt": d / "model.ckpt", "config": d / "config.yaml", "tok": d / "tok" / "tokenizer.model",
            "tok_config": d / "tok" / "tokenizer_config.json", "out": d / "out.gguf"}


def convert_argv(p, family="llama2", *more):
    return [str(p["ckpt"]), family, str(p["out"]), "--config", str(p["config"]), "--tokenizer", str(p["tok"]),
            "-q", *more]


def llama_case(d, culprit_key, mutate, *more, contains=()):
    p = llama(d)
    mutate(p)
    return Case(convert_argv(p, "llama2", *more), p[culprit_key], out=p["out"], contains=contains)


def qwen(d, tokenizer="hf"):
    """The tiny Qwen2 (byte-level BPE); ``tokenizer``: "hf" (tokenizer.json), "vocab" (vocab.json + merges.txt)
    or "tiktoken"."""
    for name in ("model.ckpt", "config.yaml"):
        shutil.copy(QWEN / name, d / name)
    source = {"hf": QWEN_TOK, "vocab": BPE / "vocab", "tiktoken": BPE / "tiktoken"}[tokenizer]
    shutil.copytree(source, d / "tok")
    main = {"hf": "tokenizer.json", "vocab": "vocab.json", "tiktoken": "qwen.tiktoken"}[tokenizer]
    return {"ckpt": d / "model.ckpt", "config": d / "config.yaml", "tok": d / "tok" / main,
            "tok_config": d / "tok" / "tokenizer_config.json", "out": d / "out.gguf"}


def qwen_case(d, tokenizer, culprit_key, mutate, contains=()):
    p = qwen(d, tokenizer)
    mutate(p)
    return Case(convert_argv(p, "qwen2"), p[culprit_key], out=p["out"], contains=contains)


# ---------------------------------------------------------------------------------------------------------------
# byte helpers


def record(tag, dims, ttype, content):
    body = b"".join(varint(1 << 3) + varint(x) for x in dims) + ld(2, ttype) + ld(3, content)
    return ld(1, ld(1, tag) + ld(2, body))


def safetensors_bytes(header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def tensor_location(ckpt, name):
    """(offset, length) of a tensor's bytes in a fixture checkpoint."""
    sys.path.insert(0, str(ROOT))
    from msckpt import open_checkpoint
    with open_checkpoint(ckpt) as c:
        t = next(t for t in c if t.name == name)
        return t.byte_ranges()[0], t.dtype.name


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def fifo(path):
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)


def symlink_loop(path):
    if path.exists() or path.is_symlink():
        path.unlink()
    other = path.with_name(path.name + ".loop")
    os.symlink(other, path)
    os.symlink(path, other)


def make_dir(path):
    if path.exists() or path.is_symlink():
        path.unlink()
    path.mkdir()


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def yaml_config(p, **changes):
    """Rewrite the yaml's model_config with some values changed (text edit: keeps everything else)."""
    lines = p["config"].read_text().splitlines()
    out = []
    for line in lines:
        key = line.strip().split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and key in changes:
            out.append(f"    {key}: {changes.pop(key)}")
        else:
            out.append(line)
    out = out[:out.index("  model_config:") + 1] + [f"    {k}: {v}" for k, v in changes.items()] + \
        out[out.index("  model_config:") + 1:]
    p["config"].write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# the catalogue

CASES = {}


def case(name):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


def variants(prefix, items):
    """Register one case per (suffix, build) pair."""
    for suffix, fn in items:
        case(f"{prefix}-{suffix}")(fn)


# --- the checkpoint file: .ckpt --------------------------------------------------------------------------------

def _ckpt_truncated(fraction):
    def build(d):
        def cut(p):
            data = p["ckpt"].read_bytes()
            p["ckpt"].write_bytes(data[:int(len(data) * fraction)])
        return llama_case(d, "ckpt", cut)
    return build


variants("ckpt-truncated", [(f"{int(f * 1000)}", _ckpt_truncated(f)) for f in (0.001, 0.01, 0.25, 0.5, 0.999)])


def _ckpt_written(data):
    def build(d):
        return llama_case(d, "ckpt", lambda p: p["ckpt"].write_bytes(data))
    return build


F4 = np.zeros(4, np.float32).tobytes()
variants("ckpt-crafted", [
    ("huge-record-length", _ckpt_written(varint(1 << 3 | 2) + varint(1 << 62) + b"\x0a\x01w")),
    ("huge-content-length", _ckpt_written(ld(1, ld(1, b"w") + varint(2 << 3 | 2) + varint(60)
                                             + varint(3 << 3 | 2) + varint(1 << 40)))),
    ("varint-11-bytes", _ckpt_written(b"\x0a" + b"\xff" * 11)),
    ("varint-overflow", _ckpt_written(b"\x0a" + b"\xff" * 9 + b"\x7f")),
    ("negative-dim", _ckpt_written(record(b"w", [(1 << 64) - 2], b"Float32", F4))),
    ("overflowing-shape", _ckpt_written(record(b"w", [1 << 40, 1 << 40, 1 << 40], b"Float32", F4))),
    ("shape-content-mismatch", _ckpt_written(record(b"w", [3], b"Float32", F4))),
    ("unknown-dtype", _ckpt_written(record(b"w", [4], b"Float99", F4 * 4))),
    ("dtype-not-ascii", _ckpt_written(record(b"w", [4], b"Flo\xffat32", F4 * 4))),
    ("name-not-utf8", _ckpt_written(record(b"w\xff\xfe", [1], b"Float32", F4[:4]))),
    ("many-dims", _ckpt_written(record(b"w", [1] * 40, b"Float32", F4[:4]))),
    ("wire-type-group", _ckpt_written(b"\x0a\x03" + b"\x0b\x0c\x00")),
    ("random-bytes", _ckpt_written(np.random.default_rng(1).bytes(4096))),
    ("strategy-not-ckpt", _ckpt_written(b"\x08\x01\x12\x00")),
    ("empty", _ckpt_written(b"")),
])


def _ckpt_special(kind):
    def build(d):
        return llama_case(d, "ckpt", {"fifo": lambda p: fifo(p["ckpt"]),
                                      "symlink-loop": lambda p: symlink_loop(p["ckpt"]),
                                      "dev-zero": lambda p: (p["ckpt"].unlink(), os.symlink("/dev/zero", p["ckpt"])),
                                      "missing": lambda p: p["ckpt"].unlink()}[kind])
    return build


variants("ckpt-special", [(k, _ckpt_special(k)) for k in ("fifo", "symlink-loop", "dev-zero", "missing")])


@case("ckpt-missing-before-config")
def _(d):
    p = llama(d)
    p["ckpt"].unlink()
    p["config"].unlink()
    return Case([str(p["ckpt"]), "llama2", str(p["out"]), "-q", "--tokenizer", str(p["tok"])], p["ckpt"],
                out=p["out"], contains=("not found",))


@case("ckpt-directory-named-ckpt")
def _(d):
    p = llama(d)
    p["ckpt"].unlink()
    (d / "model.ckpt").mkdir()
    (d / "model.ckpt" / "junk.txt").write_text("x")
    return Case(convert_argv(p), p["ckpt"], out=p["out"])


def _values(kind):
    """A weight of the Llama fixture with a value that is not finite or does not fit f16."""
    def build(d):
        p = llama(d)
        (offset, length), dtype = tensor_location(p["ckpt"], "model.layers.0.attention.wo.weight")
        value = {"nan": np.nan, "inf": np.inf, "f16-overflow": 1e6}[kind]
        patch(p["ckpt"], offset + 8, np.array([value], np.float32).tobytes())
        return Case(convert_argv(p), p["ckpt"], out=p["out"], contains=("wo.weight",))
    return build


variants("ckpt-values", [(k, _values(k)) for k in ("nan", "inf", "f16-overflow")])


@case("ckpt-name-escapes")
def _(d):
    """A tensor name holding a terminal escape and a newline: the error line shows them escaped."""
    p = llama(d)
    data = p["ckpt"].read_bytes()
    old = b"model.norm_out.weight"
    new = b"\x1b[2J\nms2gguf: ok\x1b]0;"
    new = new + b"x" * (len(old) - len(new))
    assert data.count(old) == 1 and len(new) == len(old)
    p["ckpt"].write_bytes(data.replace(old, new))
    return Case(convert_argv(p), p["ckpt"], out=p["out"], contains=("\\x1b[2J\\x0ams2gguf: ok",))


# --- the checkpoint file: .safetensors --------------------------------------------------------------------------

def _st(header, data=b"", raw=None):
    def build(d):
        p = llama(d)
        st = d / "model.safetensors"
        st.write_bytes(raw if raw is not None else safetensors_bytes(header, data))
        p["ckpt"].unlink()
        p["ckpt"] = st
        return Case(convert_argv(p), st, out=p["out"])
    return build


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
variants("safetensors", [
    ("header-length-huge", _st(None, raw=struct.pack("<Q", 1 << 62) + b'{"a":1}' + b"\0" * 16)),
    ("header-length-past-end", _st(None, raw=struct.pack("<Q", 4000) + b'{"a": {}}' + b"\0" * 16)),
    ("header-not-json", _st(b'{"a": {"dtype": F32}}')),
    ("header-deep", _st(b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}")),
    ("header-nan", _st(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', b"\0" * 8)),
    ("header-huge-int", _st(b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}')),
    ("offsets-outside", _st({"a": {**F32, "data_offsets": [0, 1 << 40]}}, b"\0" * 8)),
    ("offsets-reversed", _st({"a": {**F32, "data_offsets": [8, 0]}}, b"\0" * 8)),
    ("negative-shape", _st({"a": {**F32, "shape": [-2]}}, b"\0" * 8)),
    ("overflowing-shape", _st({"a": {**F32, "shape": [1 << 62, 1 << 62]}}, b"\0" * 8)),
    ("float-shape", _st({"a": {**F32, "shape": [2.0]}}, b"\0" * 8)),
    ("bad-dtype", _st({"a": {**F32, "dtype": "F99"}}, b"\0" * 8)),
    ("dtype-shape-mismatch", _st({"a": {**F32, "shape": [3]}}, b"\0" * 8)),
    ("entry-not-object", _st({"a": [1, 2]}, b"\0" * 8)),
    ("metadata-not-object", _st({"__metadata__": [1], "a": F32}, b"\0" * 8)),
    ("header-not-utf8", _st(b'{"a\xff": 1}')),
])


# --- the config -------------------------------------------------------------------------------------------------

def _cfg(**changes):
    def build(d):
        return llama_case(d, "config", lambda p: yaml_config(p, **changes))
    return build


variants("config-value", [
    ("hidden-size-string", _cfg(hidden_size="'64'")),
    ("hidden-size-bool", _cfg(hidden_size="true")),
    ("hidden-size-list", _cfg(hidden_size="[64]")),
    ("hidden-size-float", _cfg(hidden_size="64.5")),
    ("hidden-size-negative", _cfg(hidden_size="-64")),
    ("hidden-size-huge", _cfg(hidden_size="1" + "0" * 30)),
    ("hidden-size-digits", _cfg(hidden_size="9" * 5000)),
    ("num-heads-zero", _cfg(num_heads="0")),
    ("num-heads-negative", _cfg(num_heads="-8")),
    ("kv-heads-zero", _cfg(n_kv_heads="0")),
    ("num-layers-huge", _cfg(num_layers="1000000000")),
    ("theta-huge", _cfg(theta="1.0e+200")),
    ("theta-nan", _cfg(theta=".nan")),
    ("theta-negative", _cfg(theta="-10000.0")),
    ("eps-nan", _cfg(rms_norm_eps=".nan")),
    ("eps-negative", _cfg(rms_norm_eps="-1.0e-06")),
    ("eps-zero", _cfg(rms_norm_eps="0.0")),
    ("eps-inf", _cfg(rms_norm_eps=".inf")),
    ("seq-length-zero", _cfg(seq_length="0", max_position_embedding="0")),
    ("intermediate-size-string", _cfg(intermediate_size="big")),
    ("vocab-size-huge", _cfg(vocab_size="4294967296")),
    ("vocab-size-big", _cfg(vocab_size="100000000")),
    ("head-dim-huge", _cfg(head_dim="1000000000")),
    ("kv-heads-huge", lambda d: llama_case(d, "ckpt", lambda p: yaml_config(p, n_kv_heads="60000"),
                                           contains=("num_kv_heads 60000",))),
    ("intermediate-size-huge", _cfg(intermediate_size="4000000000")),
    ("multiple-of-huge", _cfg(intermediate_size="null", multiple_of="4000000000")),
    ("ffn-multiplier-nan", _cfg(intermediate_size="null", ffn_dim_multiplier=".nan")),
])


def _rope(old, new):
    """The Llama 3.1 fixture (rope scaling) with one line of its scaling_factor changed."""
    def build(d):
        folder = FIX / "llama3" / "rope_scaled"
        for name in ("model.ckpt", "config.yaml"):
            shutil.copy(folder / name, d / name)
        shutil.copytree(FIX / "llama3" / "tokenizer", d / "tok")
        text = (d / "config.yaml").read_text()
        assert text.count(old) == 1, old
        (d / "config.yaml").write_text(text.replace(old, new))
        p = {"ckpt": d / "model.ckpt", "config": d / "config.yaml", "tok": d / "tok" / "tokenizer.json",
             "out": d / "out.gguf"}
        return Case(convert_argv(p, "llama3"), p["config"], out=p["out"])
    return build


variants("config-rope", [
    ("factor-nan", _rope("factor: 8.0", "factor: .nan")),
    ("factor-inf", _rope("factor: 8.0", "factor: .inf")),
    ("factor-string", _rope("factor: 8.0", "factor: eight")),
    ("factor-negative", _rope("factor: 8.0", "factor: -8.0")),
    ("low-freq-zero", _rope("low_freq_factor: 1.0", "low_freq_factor: 0")),
    ("original-huge", _rope("original_max_position_embeddings: 64", "original_max_position_embeddings: 1.0e+300")),
    ("original-fraction", _rope("original_max_position_embeddings: 64", "original_max_position_embeddings: 64.5")),
    ("not-dict", _rope("    scaling_factor:\n      factor: 8.0", "    scaling_factor: 8.0\n    xfactor: 8.0")),
    ("extend-method-unknown", _rope("extend_method: LLAMA3", "extend_method: NTK")),
])


def _cfg_text(text, name="config.yaml"):
    def build(d):
        def write(p):
            p["config"].unlink()
            p["config"] = p["config"].with_name(name)
            p["config"].write_bytes(text if isinstance(text, bytes) else text.encode())
        return llama_case(d, "config", write)
    return build


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join('*' + chr(97 + i) for _ in range(10))}]\n" for i in range(9)) + \
    "model: {model_config: {hidden_size: 64, junk: *j}}\n"
variants("config-file", [
    ("yaml-deep-lists", _cfg_text("model: " + "[" * 50000 + "]" * 50000 + "\n")),
    ("yaml-deep-maps", _cfg_text("model:\n" + "".join(" " * i + "a:\n" for i in range(1, 3000)))),
    ("yaml-billion-laughs", _cfg_text(LAUGHS)),
    ("yaml-invalid", _cfg_text("model: [unclosed\n")),
    ("yaml-not-mapping", _cfg_text("- 1\n- 2\n")),
    ("yaml-model-config-string", _cfg_text("model:\n  model_config: hello\n")),
    ("yaml-python-tag", _cfg_text("model: !!python/object/apply:os.system ['true']\n")),
    ("yaml-not-utf8", _cfg_text(b"model:\n  model_config: {hidden_size: \xff}\n")),
    ("yaml-huge-int", _cfg_text("model:\n  model_config:\n    hidden_size: " + "9" * 5000 + "\n")),
    ("json-deep", _cfg_text("[" * 100000 + "]" * 100000, "config.json")),
    ("json-nan", _cfg_text('{"hidden_size": NaN, "num_attention_heads": 8}', "config.json")),
    ("json-infinity", _cfg_text('{"hidden_size": 64, "rms_norm_eps": -Infinity}', "config.json")),
    ("json-float-overflow", _cfg_text('{"hidden_size": 64, "rope_theta": 1e999}', "config.json")),
    ("json-huge-int", _cfg_text('{"hidden_size": ' + "9" * 5000 + "}", "config.json")),
    ("json-list", _cfg_text("[1, 2]", "config.json")),
    ("json-invalid", _cfg_text('{"hidden_size": 64,', "config.json")),
])
def _auto(config, culprit="config"):
    """Auto-detection with a config of nonsense types (errors may name the checkpoint: no map fits it then)."""
    def build(d):
        p = qwen(d, "hf")
        p["config"].unlink()
        p["config"] = d / "config.json"
        p["config"].write_text(json.dumps(config))
        argv = [str(p["ckpt"]), str(p["out"]), "--config", str(p["config"]), "--tokenizer", str(p["tok"]), "-q"]
        return Case(argv, p[culprit], out=p["out"])
    return build


variants("config-auto", [
    ("architectures-nested", _auto({"architectures": [[1], {"a": 2}], "model_type": {"x": 1}, "hidden_size": 64},
                                   "ckpt")),
    ("model-type-number", _auto({"model_type": 7, "num_attention_heads": "4", "hidden_size": 64}, "ckpt")),
    ("rope-parameters-list", _auto({"model_type": "qwen2", "rope_parameters": [1, 2], "rope_scaling": "yarn",
                                    "num_attention_heads": 4, "hidden_size": 64, "num_hidden_layers": 2})),
])
variants("config-special", [
    ("fifo", lambda d: llama_case(d, "config", lambda p: fifo(p["config"]))),
    ("directory", lambda d: llama_case(d, "config", lambda p: make_dir(p["config"]))),
    ("symlink-loop", lambda d: llama_case(d, "config", lambda p: symlink_loop(p["config"]))),
    ("too-large", lambda d: llama_case(d, "config", lambda p: sparse(p["config"], 200 << 20))),
    ("missing", lambda d: llama_case(d, "config", lambda p: p["config"].unlink())),
])


# --- SentencePiece tokenizer.model and tokenizer_config.json ------------------------------------------------------

def _spm(mutate):
    def build(d):
        return llama_case(d, "tok", mutate)
    return build


variants("spm", [
    ("truncated", _spm(lambda p: p["tok"].write_bytes(p["tok"].read_bytes()[:1000]))),
    ("random", _spm(lambda p: p["tok"].write_bytes(np.random.default_rng(2).bytes(3000)))),
    ("empty", _spm(lambda p: p["tok"].write_bytes(b""))),
    ("huge-length", _spm(lambda p: p["tok"].write_bytes(b"\x0a" + varint(1 << 60) + b"\x0a\x01a"))),
    ("empty-piece", _spm(lambda p: p["tok"].write_bytes(ld(1, ld(1, b"") + b"\x15\x00\x00\x00\x00")))),
    ("nan-score", _spm(lambda p: p["tok"].write_bytes(ld(1, ld(1, b"a") + b"\x15" + struct.pack("<f", math.nan))))),
    ("fifo", _spm(lambda p: fifo(p["tok"]))),
    ("directory-empty", _spm(lambda p: (shutil.rmtree(p["tok"].parent), p["tok"].parent.mkdir(),
                                        p.__setitem__("tok", p["tok"].parent)))),
])


def _tok_config(value, raw=None):
    def build(d):
        def write(p):
            p["tok_config"].write_bytes(raw if raw is not None else json.dumps(value).encode())
        return llama_case(d, "tok_config", write)
    return build


variants("tokenizer-config", [
    ("added-id-huge", _tok_config({"added_tokens_decoder": {"1000000000": {"content": "<x>", "special": True}}})),
    ("added-id-negative", _tok_config({"added_tokens_decoder": {"-5": {"content": "<x>", "special": True}}})),
    ("added-id-not-int", _tok_config({"added_tokens_decoder": {"1e3": {"content": "<x>"}}})),
    ("added-content-not-string", _tok_config({"added_tokens_decoder": {"5": {"content": ["a"]}}})),
    ("added-entry-not-object", _tok_config({"added_tokens_decoder": {"5": "text"}})),
    ("added-decoder-list", _tok_config({"added_tokens_decoder": [1, 2]})),
    ("deep", _tok_config(None, b'{"chat_template": ' + b"[" * 100000 + b"]" * 100000 + b"}")),
    ("nan", _tok_config(None, b'{"add_bos_token": NaN}')),
    ("not-object", _tok_config([1, 2])),
    ("invalid", _tok_config(None, b'{"add_bos_token": tru')),
    ("fifo", lambda d: llama_case(d, "tok_config", lambda p: fifo(p["tok_config"]))),
    ("directory", lambda d: llama_case(d, "tok_config", lambda p: make_dir(p["tok_config"]))),
])


# --- byte-level BPE: tokenizer.json, vocab.json + merges.txt, tiktoken --------------------------------------------

def _tokjson(change):
    def build(d):
        def write(p):
            data = json.loads(p["tok"].read_text())
            out = change(data)
            p["tok"].write_bytes(out if isinstance(out, bytes) else json.dumps(data).encode())
        return qwen_case(d, "hf", "tok", write)
    return build


def _set(path, value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


variants("tokenizer-json", [
    ("vocab-id-huge", _tokjson(lambda data: data["model"]["vocab"].__setitem__("zzz", 10 ** 9))),
    ("vocab-id-sparse", _tokjson(lambda data: data["model"]["vocab"].__setitem__("zzz", 10 ** 7))),
    ("vocab-id-negative", _tokjson(lambda data: data["model"]["vocab"].__setitem__("zzz", -3))),
    ("vocab-id-string", _tokjson(lambda data: data["model"]["vocab"].__setitem__("zzz", "7"))),
    ("vocab-not-object", _tokjson(_set(("model", "vocab"), [1, 2]))),
    ("merges-not-list", _tokjson(_set(("model", "merges"), "a b"))),
    ("merge-triple", _tokjson(lambda data: data["model"]["merges"].append("a b c"))),
    ("merge-number", _tokjson(lambda data: data["model"]["merges"].append(5))),
    ("added-id-huge", _tokjson(lambda data: data["added_tokens"].append({"id": 10 ** 9, "content": "<x>"}))),
    ("added-id-negative", _tokjson(lambda data: data["added_tokens"].append({"id": -1, "content": "<x>"}))),
    ("added-id-bool", _tokjson(lambda data: data["added_tokens"].append({"id": True, "content": "<x>"}))),
    ("added-not-list", _tokjson(_set(("added_tokens",), {"a": 1}))),
    ("model-type", _tokjson(_set(("model", "type"), "Unigram"))),
    ("deep-pre-tokenizer", _tokjson(lambda data: b'{"model": {"vocab": {"a": 0}, "merges": []}, "pre_tokenizer": '
                                    + b'{"a":' * 150 + b"1" + b"}" * 150 + b"}")),
    ("deeper", _tokjson(lambda data: b'{"model": ' + b"[" * 100000 + b"]" * 100000 + b"}")),
    ("nan", _tokjson(lambda data: json.dumps(data).replace('"ignore_merges"', '"x": NaN, "ignore_merges"')
                     .encode())),
    ("truncated", _tokjson(lambda data: json.dumps(data).encode()[:5000])),
    ("fifo", lambda d: qwen_case(d, "hf", "tok", lambda p: fifo(p["tok"]))),
])


def _vocab(mutate, culprit="tok"):
    def build(d):
        return qwen_case(d, "vocab", culprit, mutate)
    return build


def _merges(p):
    return p["tok"].with_name("merges.txt")


def _added_json(p):
    return p["tok"].with_name("added_tokens.json")


variants("vocab-json", [
    ("id-huge", _vocab(lambda p: p["tok"].write_text(json.dumps({**json.loads(p["tok"].read_text()),
                                                                 "zzz": 10 ** 9})))),
    ("id-float", _vocab(lambda p: p["tok"].write_text(json.dumps({**json.loads(p["tok"].read_text()),
                                                                  "zzz": 5.5})))),
    ("duplicate-id", _vocab(lambda p: p["tok"].write_text(json.dumps({**json.loads(p["tok"].read_text()),
                                                                      "zzz": 0})))),
    ("empty", _vocab(lambda p: p["tok"].write_text("{}"))),
    ("fifo", _vocab(lambda p: fifo(p["tok"]))),
])


def _merges_case(mutate):
    def build(d):
        p = qwen(d, "vocab")
        mutate(p)
        return Case(convert_argv(p, "qwen2"), _merges(p), out=p["out"])
    return build


def _added_case(value):
    def build(d):
        p = qwen(d, "vocab")
        _added_json(p).write_text(json.dumps(value))
        return Case(convert_argv(p, "qwen2"), _added_json(p), out=p["out"])
    return build


variants("merges-txt", [
    ("triple", _merges_case(lambda p: _merges(p).write_text(_merges(p).read_text() + "a b c\n"))),
    ("not-utf8", _merges_case(lambda p: _merges(p).write_bytes(_merges(p).read_bytes() + b"\xff \xfe\n"))),
    ("fifo", _merges_case(lambda p: fifo(_merges(p)))),
    ("directory", _merges_case(lambda p: make_dir(_merges(p)))),
])
variants("added-tokens-json", [
    ("id-huge", _added_case({"<x>": 10 ** 9})),
    ("id-negative", _added_case({"<x>": -2})),
    ("id-string", _added_case({"<x>": "5"})),
    ("list", _added_case([1, 2])),
])


def _tiktoken(lines):
    def build(d):
        def write(p):
            p["tok"].write_bytes(lines(p["tok"].read_bytes()) if callable(lines) else lines)
        return qwen_case(d, "tiktoken", "tok", write)
    return build


def _pair(data):
    """A two-byte token of the file: a long run of it makes rank-based merging do work at every position."""
    return next(t for t in (base64.b64decode(line.split()[0]) for line in data.splitlines() if line.strip())
                if len(t) == 2)


def _lines(data):
    return len(data.strip().splitlines())


def _b64(token):
    return base64.b64encode(token)


variants("tiktoken", [
    ("long-token", _tiktoken(lambda data: data + _b64(_pair(data) * 135_000) + b" %d\n" % _lines(data))),
    ("many-long-tokens", _tiktoken(lambda data: data + b"".join(_b64(b"ab" * 20000 + bytes([i % 256, i // 256]))
                                                               + b" %d\n" % (_lines(data) + i) for i in range(40)))),
    ("rank-huge", _tiktoken(lambda data: data + _b64(b"zzqq") + b" 1000000000\n")),
    ("rank-negative", _tiktoken(lambda data: data + _b64(b"zzqq") + b" -4\n")),
    ("rank-digits", _tiktoken(lambda data: data + _b64(b"zzqq") + b" " + b"9" * 5000 + b"\n")),
    ("bad-base64", _tiktoken(lambda data: data + b"!!!! 5\n")),
    ("three-fields", _tiktoken(lambda data: data + _b64(b"zz") + b" 5 6\n")),
    ("repeated-rank", _tiktoken(lambda data: data + _b64(b"zzqq") + b" 0\n")),
    ("empty", _tiktoken(b"")),
])


# --- chat template file, map file ---------------------------------------------------------------------------------

def _template(mutate, name="template.jinja"):
    def build(d):
        p = llama(d)
        path = d / name
        path.write_text("{{ messages }}")
        mutate(path)
        return Case(convert_argv(p, "llama2", "--chat-template", str(path)), path, out=p["out"])
    return build


variants("chat-template", [
    ("fifo", _template(fifo)),
    ("not-utf8", _template(lambda path: path.write_bytes(b"{{ \xff }}"))),
    ("too-large", _template(lambda path: sparse(path, 2 << 30))),
    ("json-deep", _template(lambda path: path.write_bytes(b'{"chat_template": ' + b"[" * 100000 + b"]" * 100000
                                                          + b"}"), "template.json")),
    ("json-no-template", _template(lambda path: path.write_text('{"chat_template": 5}'), "template.json")),
    ("empty", _template(lambda path: path.write_text(""))),
])


def _map(change):
    def build(d):
        p = llama(d)
        path = d / "mymap.json"
        data = json.loads((ROOT / "maps" / "llama2.json").read_text())
        out = change(data)
        path.write_bytes(out if isinstance(out, bytes) else json.dumps(data).encode())
        return Case(convert_argv(p, str(path)), path, out=p["out"])
    return build


variants("map", [
    ("tensors-number", _map(lambda data: data.__setitem__("tensors", 5))),
    ("tensors-strings", _map(lambda data: data.__setitem__("tensors", ["a", "b"]))),
    ("config-number", _map(lambda data: data.__setitem__("config", 5))),
    ("metadata-bad-kind", _map(lambda data: data["metadata"].__setitem__("llama.x", ["u128", "hidden_size"]))),
    ("metadata-not-pair", _map(lambda data: data["metadata"].__setitem__("llama.x", "hidden_size"))),
    ("deep", _map(lambda data: b'{"family": ' + b"[" * 100000 + b"]" * 100000 + b"}")),
    ("list", _map(lambda data: b"[]")),
    ("fifo", lambda d: _map_fifo(d)),
])


def _map_fifo(d):
    p = llama(d)
    path = d / "mymap.json"
    fifo(path)
    return Case(convert_argv(p, str(path)), path, out=p["out"])


# --- sharded saves: Checkpoint 2.0 metadata.json / common.json / tracker, legacy strategy files ------------------

def _ckpt2(mutate, culprit):
    def build(d):
        root = d / "save"
        shutil.copytree(CKPT2, root, ignore=shutil.ignore_patterns("expected.json"))
        it = root / "iteration_00000010"
        target = {"metadata": it / "metadata.json", "common": it / "common.json",
                  "tracker": root / "latest_checkpointed_iteration.txt", "shard": it / sorted(
                      p.name for p in it.glob("*-model-*.safetensors"))[0]}
        mutate(target)
        return Case(["inspect", str(root)], target[culprit])
    return build


def _meta_edit(change):
    def mutate(target):
        data = json.loads(target["metadata"].read_text())
        out = change(data)
        target["metadata"].write_bytes(out if isinstance(out, bytes) else json.dumps(data).encode())
    return mutate


def _first_param(data):
    return data["state_dict_metadata"][next(iter(data["state_dict_metadata"]))]


variants("ckpt2-metadata", [
    ("global-shape-huge", _ckpt2(_meta_edit(lambda m: _first_param(m).__setitem__("global_shape", [1 << 40, 1 << 40])),
                                 "metadata")),
    ("global-shape-negative", _ckpt2(_meta_edit(lambda m: _first_param(m).__setitem__("global_shape", [-448, 16])),
                                     "metadata")),
    ("global-shape-string", _ckpt2(_meta_edit(lambda m: _first_param(m).__setitem__("global_shape", "448")),
                                   "metadata")),
    ("fragments-huge", _ckpt2(_meta_edit(lambda m: _first_param(m).__setitem__("axis_fragmentations",
                                                                                [10 ** 9, 1])), "metadata")),
    ("chunk-shape-huge", _ckpt2(_meta_edit(lambda m: _first_param(m)["chunk"][0].__setitem__(
        "local_shape", [1 << 40, 16])), "metadata")),
    ("chunk-offset-huge", _ckpt2(_meta_edit(lambda m: _first_param(m)["chunk"][0].__setitem__(
        "global_offset", [10 ** 12])), "metadata")),
    ("chunks-not-list", _ckpt2(_meta_edit(lambda m: _first_param(m).__setitem__("chunk", 7)), "metadata")),
    ("device-matrix-huge", _ckpt2(_meta_edit(lambda m: _first_param(m)["layout"].__setitem__(
        "device_matrix", [10 ** 9, 10 ** 9])), "metadata")),
    ("tensor-map-out-of-range", _ckpt2(_meta_edit(lambda m: _first_param(m)["layout"].__setitem__(
        "tensor_map", [[7, 9], -1])), "metadata")),
    ("rank-list-huge", _ckpt2(_meta_edit(lambda m: _first_param(m)["layout"].__setitem__(
        "rank_list", list(range(100000)))), "metadata")),
    ("storage-file-outside", _ckpt2(_meta_edit(lambda m: next(iter(m["storage_data"].values()))[0].__setitem__(
        "file_name", "../../../etc/passwd")), "metadata")),
    ("storage-not-list", _ckpt2(_meta_edit(lambda m: m["storage_data"].__setitem__(
        next(iter(m["storage_data"])), "x")), "metadata")),
    ("deep", _ckpt2(_meta_edit(lambda m: b'{"state_dict_metadata": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
                    "metadata")),
    ("nan", _ckpt2(_meta_edit(lambda m: json.dumps(m).replace('"global_shape": [448', '"global_shape": [NaN')
                              .encode()), "metadata")),
    ("fifo", _ckpt2(lambda t: fifo(t["metadata"]), "metadata")),
    ("truncated", _ckpt2(lambda t: t["metadata"].write_bytes(t["metadata"].read_bytes()[:300]), "metadata")),
])
variants("ckpt2-other", [
    ("common-deep", _ckpt2(lambda t: t["common"].write_bytes(b"[" * 100000 + b"]" * 100000), "common")),
    ("common-fifo", _ckpt2(lambda t: fifo(t["common"]), "common")),
    ("tracker-fifo", _ckpt2(lambda t: fifo(t["tracker"]), "tracker")),
    ("tracker-huge-number", _ckpt2(lambda t: t["tracker"].write_text("9" * 5000), "tracker")),
    ("tracker-too-large", _ckpt2(lambda t: sparse(t["tracker"], 10 << 20), "tracker")),
    ("shard-truncated", _ckpt2(lambda t: t["shard"].write_bytes(t["shard"].read_bytes()[:200]), "shard")),
    ("shard-fifo", _ckpt2(lambda t: fifo(t["shard"]), "shard")),
])


def _strategy(mutate, name=None):
    def build(d):
        root = d / "save"
        shutil.copytree(LEGACY, root, ignore=shutil.ignore_patterns("expected.json"))
        path = root / "strategy" / "ckpt_strategy_rank_0.ckpt"
        if name:
            for other in (root / "strategy").iterdir():
                other.unlink()
            path = root / "strategy" / name
            path.write_text("{}")
        mutate(path)
        return Case(["inspect", str(root / "checkpoint"), "--strategy", str(root / "strategy")], path)
    return build


def _json_strategy(text):
    return _strategy(lambda path: path.write_bytes(text if isinstance(text, bytes) else json.dumps(text).encode()),
                     "strategy.json")


LAYOUT = {"dev_matrix": [2, 2], "tensor_map": [1, -1], "param_split_shape": [], "indices_offset": [],
          "field": 0, "opt_weight_shard_step": 0, "opt_weight_shard_size": 0}
variants("strategy", [
    ("truncated", _strategy(lambda path: path.write_bytes(path.read_bytes()[:50]))),
    ("random", _strategy(lambda path: path.write_bytes(np.random.default_rng(3).bytes(2000)))),
    ("fifo", _strategy(fifo)),
    ("json-deep", _json_strategy(b'{"parallel_layout_item": ' + b"[" * 100000 + b"]" * 100000 + b"}")),
    ("json-nan", _json_strategy(b'{"parallel_layout_item": {"a": {"dev_matrix": [NaN]}}}')),
    ("json-dev-matrix-huge", _json_strategy({"parallel_layout_item": {
        "embedding.word_embeddings.weight": {**LAYOUT, "dev_matrix": [10 ** 9, 10 ** 9]}}})),
    ("json-dev-matrix-zero", _json_strategy({"parallel_layout_item": {
        "embedding.word_embeddings.weight": {**LAYOUT, "dev_matrix": [0, 2]}}})),
    ("json-tensor-map-out-of-range", _json_strategy({"parallel_layout_item": {
        "embedding.word_embeddings.weight": {**LAYOUT, "tensor_map": [5, -1]}}})),
    ("json-dev-matrix-string", _json_strategy({"parallel_layout_item": {
        "embedding.word_embeddings.weight": {**LAYOUT, "dev_matrix": "2,2"}}})),
    ("json-opt-shard-huge", _json_strategy({"parallel_layout_item": {
        "embedding.word_embeddings.weight": {**LAYOUT, "opt_weight_shard_size": 10 ** 9,
                                             "opt_weight_shard_step": 1}}})),
])


# --- GGUF files given to check ------------------------------------------------------------------------------------

def gguf_str(text):
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_kv(key, vtype, payload):
    return gguf_str(key) + struct.pack("<I", vtype) + payload


U32, F32T, STRT, ARRT = 4, 6, 8, 9


def gguf_file(kvs, tensors=(), data=b"", n_tensors=None, n_kv=None, version=3):
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = b"".join(kvs)
    for name, ne, ttype, offset in tensors:
        body += gguf_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne) + \
            struct.pack("<IQ", ttype, offset)
    raw = head + body
    raw += b"\0" * (-len(raw) % 32)
    return raw + data


def llama_kvs(**values):
    base = {"general.architecture": (STRT, gguf_str("llama")), "llama.block_count": (U32, struct.pack("<I", 1)),
            "llama.context_length": (U32, struct.pack("<I", 32)),
            "llama.embedding_length": (U32, struct.pack("<I", 32)),
            "llama.attention.head_count": (U32, struct.pack("<I", 4)),
            "llama.attention.layer_norm_rms_epsilon": (F32T, struct.pack("<f", 1e-5)),
            "tokenizer.ggml.model": (STRT, gguf_str("llama")),
            "tokenizer.ggml.tokens": (ARRT, struct.pack("<IQ", STRT, 2) + gguf_str("a") + gguf_str("b"))}
    base.update(values)
    return [gguf_kv(k, t, v) for k, (t, v) in base.items() if t is not None]


def _check(raw, *contains):
    def build(d):
        path = d / "model.gguf"
        path.write_bytes(raw() if callable(raw) else raw)
        return Case(["check", str(path)], path, mode="check", contains=contains)
    return build


variants("gguf", [
    ("block-count-huge", _check(lambda: gguf_file(llama_kvs(**{"llama.block_count": (U32, struct.pack("<I",
                                                                                             10 ** 8))})),
                                 "block_count is 100000000")),
    ("block-count-max", _check(lambda: gguf_file(llama_kvs(**{"llama.block_count": (U32, struct.pack("<I",
                                                                                            2 ** 32 - 1))})))),
    ("kv-count-huge", _check(lambda: gguf_file(llama_kvs(), n_kv=1 << 60))),
    ("tensor-count-huge", _check(lambda: gguf_file(llama_kvs(), n_tensors=1 << 60))),
    ("string-length-huge", _check(lambda: gguf_file([gguf_kv("general.name", STRT, struct.pack("<Q", 1 << 62))]))),
    ("key-length-huge", _check(lambda: b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 62))),
    ("array-count-huge", _check(lambda: gguf_file([gguf_kv("x", ARRT, struct.pack("<IQ", U32, 1 << 61))]))),
    ("string-array-huge", _check(lambda: gguf_file([gguf_kv("x", ARRT, struct.pack("<IQ", STRT, 1 << 61))]))),
    ("nested-array", _check(lambda: gguf_file([gguf_kv("x", ARRT, struct.pack("<IQ", ARRT, 1))]))),
    ("dims-many", _check(lambda: gguf_file(llama_kvs(), [("t", (1,) * 1000, 0, 0)]))),
    ("dims-huge", _check(lambda: gguf_file(llama_kvs(), [("token_embd.weight", (1 << 62, 1 << 62), 0, 0)]))),
    ("offset-huge", _check(lambda: gguf_file(llama_kvs(), [("token_embd.weight", (32, 2), 0, 1 << 62)]))),
    ("eps-nan", _check(lambda: gguf_file(llama_kvs(**{
        "llama.attention.layer_norm_rms_epsilon": (F32T, struct.pack("<f", math.nan))})), "not finite")),
    ("eps-negative", _check(lambda: gguf_file(llama_kvs(**{
        "llama.attention.layer_norm_rms_epsilon": (F32T, struct.pack("<f", -1e-5))})), "above 0")),
    ("heads-zero", _check(lambda: gguf_file(llama_kvs(**{"llama.attention.head_count": (U32, struct.pack("<I", 0))})),
                          "head_count is 0")),
    ("context-zero", _check(lambda: gguf_file(llama_kvs(**{"llama.context_length": (U32, struct.pack("<I", 0))})),
                            "context_length is 0")),
    ("weights-nan", _check(lambda: gguf_file(llama_kvs(), [("token_embd.weight", (32, 2), 0, 0)],
                                             np.full(64, np.nan, np.float32).tobytes()), "64 values are not finite")),
    ("weights-inf-f16", _check(lambda: gguf_file(llama_kvs(), [("token_embd.weight", (32, 2), 1, 0)],
                                                 np.full(64, np.inf, np.float16).tobytes()), "not finite")),
    ("weights-q8-scale-nan", _check(lambda: gguf_file(llama_kvs(), [("token_embd.weight", (32, 2), 8, 0)],
                                                      (np.array([np.nan], np.float16).tobytes() + bytes(32)) * 2),
                                    "2 block scales are not finite")),
    ("truncated", _check(lambda: gguf_file(llama_kvs())[:40])),
    ("not-gguf", _check(b"GGML" + b"\0" * 100)),
    ("fifo", lambda d: (fifo(d / "model.gguf"), Case(["check", str(d / "model.gguf")], d / "model.gguf",
                                                     mode="check"))[1]),
    ("directory", lambda d: ((d / "model.gguf").mkdir(), Case(["check", str(d / "model.gguf")], d / "model.gguf",
                                                              mode="check"))[1]),
    ("name-escapes", _check(lambda: gguf_file(llama_kvs(), [("\x1b[2J\nforged", (32, 2), 0, 0)],
                                              np.zeros(64, np.float32).tobytes()))),
])


# --- a directory of safetensors shards with its index; encrypted checkpoints; legacy rank trees ---------------------

SHARDS = FIX / "qwen3" / "tied" / "shards"


def _shards(mutate, culprit="index"):
    def build(d):
        root = d / "shards"
        shutil.copytree(SHARDS, root)
        target = {"index": root / "param_name_map.json", "shard": root / "model-00001-of-00002.safetensors"}
        mutate(target)
        return Case(["inspect", str(root)], target[culprit])
    return build


def _index(text):
    return _shards(lambda t: t["index"].write_bytes(text if isinstance(text, bytes) else json.dumps(text).encode()))


variants("shard-index", [
    ("deep", _index(b"[" * 100000 + b"]" * 100000)),
    ("not-object", _index([1, 2])),
    ("outside", _index({"embedding.word_embeddings.weight": "../../etc/passwd"})),
    ("value-not-string", _index({"embedding.word_embeddings.weight": 5})),
    ("nan", _index(b'{"a": NaN}')),
    ("fifo", _shards(lambda t: fifo(t["index"]))),
    ("directory", _shards(lambda t: make_dir(t["index"]))),
    ("shard-truncated", _shards(lambda t: t["shard"].write_bytes(t["shard"].read_bytes()[:100]), "shard")),
    ("shard-fifo", _shards(lambda t: fifo(t["shard"]), "shard")),
])

ENCRYPTED = FIX / "ckpt" / "enc_AES-GCM_multiblock.ckpt"
KEY16 = "30313233343536373839616263646566"


def _encrypted(mutate, key=KEY16, mode="AES-GCM"):
    def build(d):
        path = d / "enc.ckpt"
        shutil.copy(ENCRYPTED, path)
        mutate(path)
        return Case(["inspect", str(path), "--dec-key", key, "--dec-mode", mode], path)
    return build


variants("encrypted", [
    ("truncated", _encrypted(lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]))),
    ("header-only", _encrypted(lambda p: p.write_bytes(p.read_bytes()[:6]))),
    ("block-length-huge", _encrypted(lambda p: p.write_bytes(p.read_bytes()[:4] + b"\xff\xff\xff\x7f"
                                                             + p.read_bytes()[8:]))),
    ("flipped", _encrypted(lambda p: p.write_bytes(p.read_bytes()[:60] + bytes([p.read_bytes()[60] ^ 1])
                                                   + p.read_bytes()[61:]))),
    ("wrong-key", _encrypted(lambda p: None, key="00" * 16)),
    ("short-key", _encrypted(lambda p: None, key="0011")),
    ("wrong-mode", _encrypted(lambda p: None, mode="SM4-CBC")),
])


def _legacy(mutate, culprit):
    def build(d):
        root = d / "save"
        shutil.copytree(LEGACY, root, ignore=shutil.ignore_patterns("expected.json"))
        target = {"rank0": root / "checkpoint" / "rank_0" / "qwen3_rank_0-1_10.safetensors",
                  "rank1": root / "checkpoint" / "rank_1" / "qwen3_rank_1-1_10.safetensors"}
        mutate(target)
        return Case(["inspect", str(root / "checkpoint"), "--strategy", str(root / "strategy")], target[culprit])
    return build


variants("legacy-rank", [
    ("truncated", _legacy(lambda t: t["rank1"].write_bytes(t["rank1"].read_bytes()[:500]), "rank1")),
    ("fifo", _legacy(lambda t: fifo(t["rank1"]), "rank1")),
    ("symlink-loop", _legacy(lambda t: symlink_loop(t["rank0"]), "rank0")),
    ("header-deep", _legacy(lambda t: t["rank0"].write_bytes(safetensors_bytes(b"{" + b'"a":{' * 300 + b"}" * 301)),
                            "rank0")),
])
variants("tokenizer-special", [
    ("spm-symlink-loop", _spm(lambda p: symlink_loop(p["tok"]))),
    ("spm-dev-zero", _spm(lambda p: (p["tok"].unlink(), os.symlink("/dev/zero", p["tok"])))),
    ("json-directory", lambda d: qwen_case(d, "hf", "tok", lambda p: make_dir(p["tok"]))),
    ("json-too-large", lambda d: qwen_case(d, "hf", "tok", lambda p: sparse(p["tok"], 3 << 30))),
    ("tiktoken-fifo", lambda d: qwen_case(d, "tiktoken", "tok", lambda p: fifo(p["tok"]))),
])


# --- bulk job files ---------------------------------------------------------------------------------------------

def _jobs(content, name="jobs.yaml"):
    def build(d):
        path = d / name
        if content is None:
            fifo(path)
        elif isinstance(content, int):
            sparse(path, content)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return Case(["bulk", str(path), "--workers", "1"], path)
    return build


variants("bulk-jobs", [
    ("yaml-deep", _jobs("- " + "[" * 50000 + "]" * 50000 + "\n")),
    ("yaml-billion-laughs", _jobs(LAUGHS.replace("model: {model_config: {hidden_size: 64, junk: *j}}",
                                                 "jobs: [{ckpt: a, out: b, junk: *j}]"))),
    ("yaml-invalid", _jobs("- {ckpt: [unclosed\n")),
    ("yaml-huge-int", _jobs("- {ckpt: a, out: b, threads: " + "9" * 5000 + "}\n")),
    ("json-nan", _jobs('[{"ckpt": "a", "out": "b", "threads": NaN}]', "jobs.json")),
    ("json-deep", _jobs("[" * 100000 + "]" * 100000, "jobs.json")),
    ("not-a-list", _jobs("ckpt: a\n")),
    ("empty", _jobs("")),
    ("fifo", _jobs(None)),
    ("too-large", _jobs(100 << 20)),
    ("not-utf8", _jobs(b"- {ckpt: \xff}\n")),
])


# --- importance matrices (--imatrix) ------------------------------------------------------------------------------

IMATRIX = FIX / "imatrix"


def _imatrix(mutate, name="dense.imatrix.dat"):
    def build(d):
        p = llama(d)
        path = d / name
        shutil.copy(IMATRIX / name, path)
        mutate(path)
        return Case(convert_argv(p, "llama2", "--outtype", "q4_k_m", "--imatrix", str(path)), path, out=p["out"])
    return build


def _legacy_imatrix(entries, nval=4, name_length=None):
    raw = struct.pack("<i", entries) + struct.pack("<i", 1 if name_length is None else name_length) + b"a"
    return raw + struct.pack("<ii", 1, nval) + np.ones(4, np.float32).tobytes()


variants("imatrix", [
    ("fifo", _imatrix(fifo)),
    ("directory", _imatrix(make_dir)),
    ("truncated-dat", _imatrix(lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]))),
    ("dat-entries-huge", _imatrix(lambda p: p.write_bytes(_legacy_imatrix(1 << 30)))),
    ("dat-name-length-huge", _imatrix(lambda p: p.write_bytes(_legacy_imatrix(1, name_length=1 << 30)))),
    ("dat-name-length-negative", _imatrix(lambda p: p.write_bytes(_legacy_imatrix(1, name_length=-5)))),
    ("dat-values-huge", _imatrix(lambda p: p.write_bytes(_legacy_imatrix(1, nval=1 << 30)))),
    ("dat-nan", _imatrix(lambda p: p.write_bytes(_legacy_imatrix(1)[:-4] + np.array([np.nan], np.float32).tobytes()))),
    ("random", _imatrix(lambda p: p.write_bytes(np.random.default_rng(4).bytes(5000)))),
    ("gguf-truncated", _imatrix(lambda p: p.write_bytes(p.read_bytes()[:300]), "dense.imatrix.gguf")),
    ("gguf-kv-count-huge", _imatrix(lambda p: p.write_bytes(p.read_bytes()[:16] + struct.pack("<Q", 1 << 60)
                                                            + p.read_bytes()[24:]), "dense.imatrix.gguf")),
    ("gguf-tensor-count-huge", _imatrix(lambda p: p.write_bytes(p.read_bytes()[:8] + struct.pack("<Q", 1 << 60)
                                                                + p.read_bytes()[16:]), "dense.imatrix.gguf")),
    ("gguf-flipped", _imatrix(lambda p: p.write_bytes(p.read_bytes()[:100] + bytes([p.read_bytes()[100] ^ 0xFF])
                                                      + p.read_bytes()[101:]), "dense.imatrix.gguf")),
])


# --- decryption key sources -------------------------------------------------------------------------------------

def _key_file(content):
    def build(d):
        p = llama(d)
        key = d / "key.txt"
        if content is None:
            fifo(key)
        else:
            key.write_bytes(content)
        return Case(convert_argv(p, "llama2", "--dec-key-file", str(key)), key, out=p["out"])
    return build


variants("dec-key-file", [
    ("not-hex", _key_file(b"not hex at all\n")),
    ("binary", _key_file(b"\xff\xfe\x00")),
    ("empty", _key_file(b"")),
    ("fifo", _key_file(None)),
    ("too-large", _key_file(b"00" * 100000)),
])


def build_all(folder):
    folder = Path(folder)
    built = {}
    for name, fn in CASES.items():
        d = folder / name
        d.mkdir(parents=True)
        built[name] = fn(d)
    return built


if __name__ == "__main__":
    for name, c in build_all(sys.argv[1]).items():
        print(name, " ".join(c.argv))
