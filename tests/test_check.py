"""``ms2gguf check``: each defect class llama.cpp or Ollama enforces is caught, and converter output passes.

The broken files are written here byte by byte (the project's writer refuses most of these defects), from
a small valid Llama model. Where llama.cpp itself rejects a defect, a test loads the same files in real
llama.cpp (xllamacpp, in a subprocess because some defects abort the process) to show check agrees.
"""

import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import LLAMA, TESTS, convert
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType as V, LlamaFileType

from gguf_out.check import check_file, main as check_main
from gguf_out.writer import KV

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, LAYERS = 64, 4, 2, 16, 128, 96, 2


def base_kvs():
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, VOCAB)]
    return {
        "general.architecture": KV.str("llama"),
        "general.name": KV.str("tiny"),
        "general.file_type": KV.u32(LlamaFileType.MOSTLY_F16),
        "llama.context_length": KV.u32(2048),
        "llama.embedding_length": KV.u32(HIDDEN),
        "llama.block_count": KV.u32(LAYERS),
        "llama.feed_forward_length": KV.u32(FFN),
        "llama.attention.head_count": KV.u32(HEADS),
        "llama.attention.head_count_kv": KV.u32(KV_HEADS),
        "llama.attention.layer_norm_rms_epsilon": KV.f32(1e-5),
        "llama.rope.dimension_count": KV.u32(HEAD_DIM),
        "llama.rope.freq_base": KV.f32(10000.0),
        "tokenizer.ggml.model": KV.str("llama"),
        "tokenizer.ggml.tokens": KV.array(V.STRING, tokens),
        "tokenizer.ggml.scores": KV.array(V.FLOAT32, [0.0] * VOCAB),
        "tokenizer.ggml.token_type": KV.array(V.INT32, [2, 3, 3] + [1] * (VOCAB - 3)),
        "tokenizer.ggml.bos_token_id": KV.u32(1),
        "tokenizer.ggml.eos_token_id": KV.u32(2),
    }


def base_tensors(weight=T.F16):
    """[name, ne (ne0 first), ggml type]; 2-D weights in ``weight``, 1-D F32."""
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out = [["token_embd.weight", (HIDDEN, VOCAB), weight], ["output_norm.weight", (HIDDEN,), T.F32],
           ["output.weight", (HIDDEN, VOCAB), weight]]
    for i in range(LAYERS):
        out += [[f"blk.{i}.attn_norm.weight", (HIDDEN,), T.F32], [f"blk.{i}.attn_q.weight", (HIDDEN, q), weight],
                [f"blk.{i}.attn_k.weight", (HIDDEN, kv), weight], [f"blk.{i}.attn_v.weight", (HIDDEN, kv), weight],
                [f"blk.{i}.attn_output.weight", (q, HIDDEN), weight], [f"blk.{i}.ffn_norm.weight", (HIDDEN,), T.F32],
                [f"blk.{i}.ffn_gate.weight", (HIDDEN, FFN), weight], [f"blk.{i}.ffn_up.weight", (HIDDEN, FFN), weight],
                [f"blk.{i}.ffn_down.weight", (FFN, HIDDEN), weight]]
    return out


def _string(text):
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _nbytes(ne, ggml_type):
    block, size = GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(ne)) // block * size


def write_gguf(path, kvs=None, tensors=None, *, alignment=32, offsets=None, cut=0):
    """A GGUF v3 file; ``offsets`` overrides the data offsets, ``cut`` drops bytes from the end."""
    kvs = base_kvs() if kvs is None else kvs
    tensors = base_tensors() if tensors is None else tensors
    head = [struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs))]
    for key, kv in kvs.items():
        head.append(_string(key) + struct.pack("<I", kv.vtype) + kv.encode())
    sizes = [_nbytes(ne, t) for _, ne, t in tensors]
    padded = [-(-n // alignment) * alignment for n in sizes]
    if offsets is None:
        offsets = [int(sum(padded[:i])) for i in range(len(tensors))]
    for (name, ne, ggml_type), offset in zip(tensors, offsets):
        head.append(_string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ggml_type, offset))
    header = b"".join(head)
    header += b"\0" * (-len(header) % alignment)
    data_size = max((o + p for o, p in zip(offsets, padded)), default=0)
    blob = header + bytes(data_size)
    path.write_bytes(blob[:len(blob) - cut] if cut else blob)
    return path


def problems(path, level="error"):
    return [p for p in check_file(path).problems if p.level == level]


def only(path, kind, level="error"):
    """The problems of ``path``: exactly those of one kind; returns their texts."""
    found = check_file(path).problems
    assert found, f"{path.name}: no problem found"
    assert {(p.level, p.kind) for p in found} == {(level, kind)}, [(p.level, p.kind, p.text) for p in found]
    return " | ".join(p.text for p in found)


# --- the valid base file and its mutations --------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    return write_gguf(tmp_path / "good.gguf")


def test_base_file_is_clean(good, capsys):
    assert check_file(good).problems == []
    assert check_main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out == f"{good}: ok (21 tensors, llama, 2 layers, 96 tokens, MOSTLY_F16, {good.stat().st_size / 1024:.1f} " \
                  "KiB)\n"


def test_file_written_by_gguf_py_is_clean(tmp_path):
    """Another producer's layout (gguf-py's GGUFWriter: padding, alignment) passes too."""
    import gguf

    path = tmp_path / "gguf-py.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, kv in base_kvs().items():
        if key != "general.architecture":
            writer.add_key_value(key, kv.value, kv.vtype, sub_type=kv.item_type)
    for name, ne, ggml_type in base_tensors():
        dtype = np.float16 if ggml_type == T.F16 else np.float32
        writer.add_tensor(name, np.zeros(tuple(reversed(ne)), dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert check_file(path).problems == []


def test_wrong_key_type(tmp_path):
    kvs = base_kvs()
    kvs["llama.context_length"] = KV.i32(2048)
    kvs["llama.attention.layer_norm_rms_epsilon"] = KV(V.FLOAT64, 1e-5)
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "key-type")
    assert "llama.context_length has type i32; llama.cpp requires u32" in text
    assert "llama.attention.layer_norm_rms_epsilon has type f64; llama.cpp requires f32" in text


def test_wrong_key_type_of_tokenizer_keys(tmp_path):
    kvs = base_kvs()
    kvs["tokenizer.ggml.bos_token_id"] = KV.i32(1)
    kvs["tokenizer.ggml.scores"] = KV.array(V.FLOAT64, [0.0] * VOCAB)
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "key-type")
    assert "tokenizer.ggml.bos_token_id has type i32" in text
    assert "tokenizer.ggml.scores has type array of f64; llama.cpp requires array of f32" in text


def test_per_layer_arrays_are_accepted(tmp_path):
    kvs = base_kvs()
    kvs["llama.attention.head_count_kv"] = KV.array(V.INT32, [KV_HEADS] * LAYERS)
    report = check_file(write_gguf(tmp_path / "f.gguf", kvs))
    assert report.errors == []


@pytest.mark.parametrize("key", ["llama.block_count", "llama.attention.layer_norm_rms_epsilon",
                                 "tokenizer.ggml.model", "llama.feed_forward_length", "general.architecture"])
def test_missing_required_key(tmp_path, key):
    kvs = base_kvs()
    del kvs[key]
    found = problems(write_gguf(tmp_path / "f.gguf", kvs))
    assert f"required metadata key {key} is missing" in [p.text for p in found]
    if key != "llama.block_count":      # without it, layer tensors cannot be checked against a layer count
        assert [p.kind for p in found] == ["missing-key"]


def test_token_count_mismatch(tmp_path):
    kvs = base_kvs()
    tokens = kvs["tokenizer.ggml.tokens"].value[:-1]
    kvs["tokenizer.ggml.tokens"] = KV.array(V.STRING, tokens)
    kvs["tokenizer.ggml.scores"] = KV.array(V.FLOAT32, [0.0] * len(tokens))
    kvs["tokenizer.ggml.token_type"] = KV.array(V.INT32, [1] * len(tokens))
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "token-count")
    assert text == ("tokenizer.ggml.tokens has 95 tokens but token_embd.weight has 96 rows; "
                    "llama.cpp requires them equal")


def test_scores_shorter_than_tokens(tmp_path):
    kvs = base_kvs()
    kvs["tokenizer.ggml.scores"] = KV.array(V.FLOAT32, [0.0] * (VOCAB - 5))
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "token-count")
    assert text == "tokenizer.ggml.scores has 91 entries for 96 tokens"


def test_duplicate_tokens(tmp_path):
    kvs = base_kvs()
    tokens = list(kvs["tokenizer.ggml.tokens"].value)
    tokens[50] = "t7"
    kvs["tokenizer.ggml.tokens"] = KV.array(V.STRING, tokens)
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "duplicate-token")
    assert "'t7' (id 50)" in text and "aborts" in text


def test_special_token_out_of_range_is_a_warning(tmp_path):
    kvs = base_kvs()
    kvs["tokenizer.ggml.eos_token_id"] = KV.u32(VOCAB)
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "special-token", "warning")
    assert "tokenizer.ggml.eos_token_id = 96 is not a token id" in text


@pytest.mark.parametrize("file_type,weight,words", [
    (LlamaFileType.MOSTLY_F16, T.Q8_0, "general.file_type is MOSTLY_F16 but the tensors are F32, Q8_0"),
    (LlamaFileType.MOSTLY_Q8_0, T.F16, "general.file_type is MOSTLY_Q8_0 but no tensor is quantized (F16, F32)"),
    (LlamaFileType.ALL_F32, T.F16, "general.file_type is 0 (ALL_F32) but the tensors are F16, F32"),
    (LlamaFileType.MOSTLY_BF16, T.F16, "general.file_type is MOSTLY_BF16 but the tensors are F16, F32"),
])
def test_file_type_inconsistent(tmp_path, file_type, weight, words):
    kvs = base_kvs()
    kvs["general.file_type"] = KV.u32(file_type)
    assert only(write_gguf(tmp_path / "f.gguf", kvs, base_tensors(weight)), "file-type") == words


@pytest.mark.parametrize("file_type,weight", [(LlamaFileType.MOSTLY_Q8_0, T.Q8_0), (LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
                                              (LlamaFileType.MOSTLY_BF16, T.BF16)])
def test_file_type_consistent(tmp_path, file_type, weight):
    kvs = base_kvs()
    kvs["general.file_type"] = KV.u32(file_type)
    assert check_file(write_gguf(tmp_path / "f.gguf", kvs, base_tensors(weight))).problems == []


def test_file_type_zero_is_a_warning(tmp_path, capsys):
    kvs = base_kvs()
    kvs["general.file_type"] = KV.u32(LlamaFileType.ALL_F32)
    path = write_gguf(tmp_path / "f.gguf", kvs, base_tensors(T.F32))
    assert "cannot quantize" in only(path, "file-type", "warning")
    assert check_main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{path}: warning: general.file_type is 0 (ALL_F32): Ollama")
    assert lines[1].startswith(f"{path}: ok (") and lines[1].endswith("1 warning)")


def test_missing_file_type_is_a_warning(tmp_path):
    kvs = base_kvs()
    del kvs["general.file_type"]
    assert "general.file_type is missing" in only(write_gguf(tmp_path / "f.gguf", kvs), "file-type", "warning")


def _offsets(tensors, alignment=32):
    padded = [-(-_nbytes(ne, t) // alignment) * alignment for _, ne, t in tensors]
    return [int(sum(padded[:i])) for i in range(len(tensors))]


def test_misaligned_offset(tmp_path):
    tensors = base_tensors()
    offsets = _offsets(tensors)
    offsets[3] += 2
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors, offsets=offsets), "offset")
    assert text == f"tensor 'blk.0.attn_norm.weight': data offset {offsets[3]} is not a multiple of the alignment 32"


def test_non_contiguous_offsets(tmp_path):
    tensors = base_tensors()
    offsets = _offsets(tensors)
    offsets[1], offsets[2] = offsets[2], offsets[1]      # data not in the infos' order
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors, offsets=offsets), "offset")
    assert f"tensor 'output_norm.weight': data offset {offsets[1]}, expected {offsets[2]}" in text


def test_gap_between_tensors(tmp_path):
    tensors = base_tensors()
    offsets = _offsets(tensors)
    offsets[-1] += 64
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors, offsets=offsets), "offset")
    assert text.startswith("tensor 'blk.1.ffn_down.weight': data offset") and "without gaps" in text


@pytest.mark.parametrize("value", [KV.u32(48), KV.u32(0), KV(V.UINT64, 32)])
def test_alignment_not_a_power_of_two(tmp_path, value):
    kvs = base_kvs()
    kvs["general.alignment"] = value
    assert "must be a u32 power of two" in only(write_gguf(tmp_path / "f.gguf", kvs), "alignment")


def test_custom_alignment_is_honoured(tmp_path):
    kvs = base_kvs()
    kvs["general.alignment"] = KV.u32(64)
    assert check_file(write_gguf(tmp_path / "f.gguf", kvs, alignment=64)).problems == []


def test_more_than_four_dimensions(tmp_path):
    tensors = base_tensors()
    tensors.append(["rope_freqs.weight", (2, 2, 2, 2, 1), T.F32])
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors), "dims")
    assert text == "tensor 'rope_freqs.weight' has 5 dimensions [1, 2, 2, 2, 2]; llama.cpp and Ollama allow at most 4"


def test_missing_required_tensor(tmp_path):
    tensors = [t for t in base_tensors() if t[0] != "blk.1.ffn_up.weight"]
    assert only(write_gguf(tmp_path / "f.gguf", tensors=tensors), "missing-tensor") == \
        "layer 1 is incomplete as a dense layer: blk.1.ffn_up.weight missing"


def test_output_weight_may_be_absent(tmp_path):
    """Tied embeddings: llama.cpp uses token_embd when output.weight is missing."""
    tensors = [t for t in base_tensors() if t[0] != "output.weight"]
    assert check_file(write_gguf(tmp_path / "f.gguf", tensors=tensors)).problems == []


@pytest.mark.parametrize("name,ne,words", [
    ("blk.0.attn_k.weight", (HIDDEN, HIDDEN), "[64, 64]; the metadata gives [32, 64] (kv_width=32 x hidden_size=64)"),
    ("blk.1.ffn_down.weight", (HIDDEN, FFN), "[64, 128]; the metadata gives [64, 128]"),
    ("output_norm.weight", (32,), "[32]; the metadata gives [64] (hidden_size=64)"),
])
def test_wrong_shape(tmp_path, name, ne, words):
    tensors = base_tensors()
    for t in tensors:
        if t[0] == name:
            t[1] = ne
    if name == "blk.1.ffn_down.weight":     # [hidden, ffn] in numpy order, given transposed
        words = "[128, 64]; the metadata gives [64, 128] (hidden_size=64 x ffn_size=128)"
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors), "shape")
    assert text == f"tensor '{name}' has shape {words}"


def test_rope_dimension_contradicting_head_size(tmp_path):
    kvs = base_kvs()
    kvs["llama.attention.key_length"] = KV.u32(HEAD_DIM)
    kvs["llama.rope.dimension_count"] = KV.u32(HEAD_DIM // 2)
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "hparams")
    assert "llama.rope.dimension_count = 8 but llama.attention.key_length = 16; both must be head_dim" in text


@pytest.mark.parametrize("name", ["blk.0.attn_qkv_proj.weight", "decoder.layers.0.weight", "blk.2.attn_q.weight",
                                  "blk.0.attn_q.lora_a"])
def test_stray_tensor(tmp_path, name):
    tensors = base_tensors()
    tensors.append([name, (HIDDEN,), T.F32])
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors), "stray-tensor")
    assert text.startswith(f"tensor '{name}' is ")


def test_truncated_file(tmp_path, capsys):
    path = write_gguf(tmp_path / "f.gguf", cut=100)
    text = only(path, "truncated")
    assert text.startswith("truncated: tensor 'blk.1.ffn_down.weight''s data ends at byte")
    assert check_main([str(path)]) == 1
    assert capsys.readouterr().out == f"{path}: error: {text}\n"


def test_truncated_inside_the_header(tmp_path):
    whole = write_gguf(tmp_path / "g.gguf").read_bytes()
    for cut in (whole.index(b"tokenizer.ggml.tokens") + 100, whole.index(b"tokenizer.ggml.tokens") + 900):
        path = tmp_path / f"f{cut}.gguf"
        path.write_bytes(whole[:cut])
        text = only(path, "truncated")
        assert text.startswith("truncated: ") and "'tokenizer.ggml.tokens'" in text, text


@pytest.mark.parametrize("content,words", [
    (b"\x7fELF" + bytes(60), "not a GGUF file (starts with 7f 45 4c 46, not 47 47 55 46 'GGUF')"),
    (b"", "not a GGUF file (empty)"),
    (b"GG", "not a GGUF file (2 bytes long)"),
])
def test_not_a_gguf(tmp_path, capsys, content, words):
    path = tmp_path / "f.gguf"
    path.write_bytes(content)
    assert only(path, "not-gguf") == words
    assert check_main([str(path)]) == 1
    assert capsys.readouterr().out == f"{path}: error: {words}\n"


def test_unsupported_version(tmp_path):
    path = tmp_path / "f.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    assert "GGUF version 1" in only(path, "version")
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    assert "big-endian" in only(path, "version")


def test_string_longer_than_ollama_accepts(tmp_path):
    kvs = base_kvs()
    kvs["tokenizer.chat_template"] = KV.str("x" * ((16 << 20) + 1))
    text = only(write_gguf(tmp_path / "f.gguf", kvs), "limit")
    assert "'tokenizer.chat_template' at byte" in text and "is 16777217 bytes long; Ollama accepts at most" in text


def test_array_longer_than_ollama_accepts(tmp_path):
    """The header claims 64 Mi + 1 elements; the check reports the limit without reading them."""
    path = tmp_path / "f.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("big") + struct.pack("<IIQ", V.ARRAY, V.UINT8,
                                                                                          (64 << 20) + 1))
    kinds = {p.kind: p.text for p in check_file(path).problems}
    assert kinds["limit"] == "'big' has 67108865 elements; Ollama accepts at most 67108864 (64 Mi)"
    assert "truncated" in kinds


def test_nested_array_and_unknown_value_type(tmp_path):
    path = tmp_path / "f.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("a") + struct.pack("<IIQ", V.ARRAY, V.ARRAY, 1))
    assert "nested array" in only(path, "value-type")
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("a") + struct.pack("<I", 13))
    assert only(path, "value-type") == "'a': unknown value type 13 (GGUF types are 0-12)"


def test_duplicate_tensor_and_long_name(tmp_path):
    tensors = base_tensors()
    tensors.append(list(tensors[1]))
    text = only(write_gguf(tmp_path / "f.gguf", tensors=tensors), "duplicate-tensor")
    assert text.startswith("tensor 'output_norm.weight' appears twice")
    tensors = base_tensors()
    tensors.append(["blk.0." + "x" * 60 + ".weight", (HIDDEN,), T.F32])
    found = {p.kind for p in check_file(write_gguf(tmp_path / "g.gguf", tensors=tensors)).problems}
    assert found == {"name", "stray-tensor"}


def test_row_length_not_a_multiple_of_the_block(tmp_path):
    tensors = base_tensors()
    tensors.append(["rope_freqs.weight", (48,), T.Q8_0])
    texts = [p.text for p in check_file(write_gguf(tmp_path / "f.gguf", tensors=tensors)).problems]
    assert "tensor 'rope_freqs.weight': row length 48 is not a multiple of Q8_0's block of 32" in texts


def test_several_files_and_exit_status(tmp_path, good, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    assert check_main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{good}: ok (") and out[1].startswith(f"{bad}: error: not a GGUF file")
    assert check_main([str(tmp_path / "missing.gguf")]) == 1
    assert capsys.readouterr().out == f"{tmp_path / 'missing.gguf'}: error: cannot read (No such file or directory)\n"


def test_cli_subcommand(good):
    result = subprocess.run([sys.executable, "-m", "gguf_out.cli", "check", str(good)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"{good}: ok (21 tensors") and not result.stderr


# --- llama.cpp agrees on the defects it enforces ----------------------------------------------------------------

_LOADER = """
import sys
sys.path.insert(0, sys.argv[1])
from llamacpp import LlamaModel
for path in sys.argv[2:]:
    try:
        LlamaModel(path, n_ctx=64).close()
        print("loaded", path, flush=True)
    except RuntimeError:
        print("rejected", path, flush=True)
"""


def llama_cpp_verdicts(paths):
    result = subprocess.run([sys.executable, "-c", _LOADER, str(TESTS), *map(str, paths)], capture_output=True,
                            text=True, timeout=300)
    verdicts = dict(line.split(" ", 1)[::-1] for line in result.stdout.splitlines())
    return verdicts, result.returncode


def test_llama_cpp_rejects_what_check_rejects(tmp_path):
    pytest.importorskip("xllamacpp")
    files = {"good": write_gguf(tmp_path / "good.gguf")}
    kvs = base_kvs()
    kvs["llama.context_length"] = KV.i32(2048)
    files["key-type"] = write_gguf(tmp_path / "key-type.gguf", kvs)
    kvs = base_kvs()
    del kvs["llama.block_count"]
    files["missing-key"] = write_gguf(tmp_path / "missing-key.gguf", kvs)
    kvs = base_kvs()
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        kvs[key] = KV.array(kvs[key].item_type, kvs[key].value[:-1])
    files["token-count"] = write_gguf(tmp_path / "token-count.gguf", kvs)
    tensors = base_tensors()
    offsets = _offsets(tensors)
    offsets[3] += 32
    files["offset"] = write_gguf(tmp_path / "offset.gguf", tensors=tensors, offsets=offsets)
    files["dims"] = write_gguf(tmp_path / "dims.gguf", tensors=base_tensors() + [["rope_freqs.weight",
                                                                                  (2, 2, 2, 2, 1), T.F32]])
    files["missing-tensor"] = write_gguf(tmp_path / "missing-tensor.gguf",
                                         tensors=[t for t in base_tensors() if t[0] != "blk.1.ffn_up.weight"])
    tensors = base_tensors()
    tensors[5][1] = (HIDDEN, HIDDEN)        # blk.0.attn_k
    files["shape"] = write_gguf(tmp_path / "shape.gguf", tensors=tensors)
    files["stray-tensor"] = write_gguf(tmp_path / "stray.gguf", tensors=base_tensors() + [
        ["blk.0.attn_q.bias_extra", (HIDDEN,), T.F32]])
    files["truncated"] = write_gguf(tmp_path / "truncated.gguf", cut=100)
    (tmp_path / "not-gguf.gguf").write_bytes(b"\x7fELF" + bytes(100))
    files["not-gguf"] = tmp_path / "not-gguf.gguf"

    verdicts, status = llama_cpp_verdicts(files.values())
    assert status == 0
    for kind, path in files.items():
        report = check_file(path)
        if kind == "good":
            assert report.problems == [] and verdicts[str(path)] == "loaded"
        else:
            assert kind in {p.kind for p in report.errors}, (kind, report.problems)
            assert verdicts[str(path)] == "rejected", kind


def test_llama_cpp_aborts_on_duplicate_tokens(tmp_path):
    """Why duplicates are an error: llama.cpp does not even fail cleanly (GGML_ASSERT aborts the process)."""
    pytest.importorskip("xllamacpp")
    kvs = base_kvs()
    tokens = list(kvs["tokenizer.ggml.tokens"].value)
    tokens[50] = "t7"
    kvs["tokenizer.ggml.tokens"] = KV.array(V.STRING, tokens)
    path = write_gguf(tmp_path / "dupes.gguf", kvs)
    assert "duplicate-token" in {p.kind for p in check_file(path).errors}
    verdicts, status = llama_cpp_verdicts([path])
    assert status != 0 and str(path) not in verdicts


def test_llama_cpp_loads_the_warning_cases(tmp_path):
    """file_type problems are Ollama's, not llama.cpp's: such files load."""
    pytest.importorskip("xllamacpp")
    kvs = base_kvs()
    kvs["general.file_type"] = KV.u32(LlamaFileType.ALL_F32)
    path = write_gguf(tmp_path / "f32.gguf", kvs, base_tensors(T.F32))
    verdicts, status = llama_cpp_verdicts([path])
    assert status == 0 and verdicts[str(path)] == "loaded"


# --- converter output -------------------------------------------------------------------------------------------

VARIANTS = ["mha", "gqa_fused", "padded_vocab", "bf16", "k256"]
OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_converter_output_passes(tmp_path, variant, capsys):
    paths = []
    for outtype in OUTTYPES:
        out = tmp_path / f"{variant}-{outtype}.gguf"
        assert convert(LLAMA / variant / "model.ckpt", out, "--outtype", outtype) == 0
        paths.append(out)
    capsys.readouterr()
    assert check_main([str(p) for p in paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path, outtype in zip(paths, OUTTYPES):
        report = check_file(path)
        assert report.errors == [], (outtype, report.errors)
        expected = {("warning", "file-type")} if outtype == "f32" else set()
        assert {(p.level, p.kind) for p in report.problems} == expected
        assert f"{path}: ok (" in "\n".join(lines)


def test_converter_refuses_output_that_fails_the_check(tmp_path, monkeypatch, capsys):
    """A defect in what the converter writes (here: an i32 context length) stops it before OUT appears."""
    from gguf_out import conversion as convert_module

    real = convert_module.metadata.build

    def wrong_type(*args):
        return [(k, KV.i32(v.value) if k == "llama.context_length" else v) for k, v in real(*args)]

    monkeypatch.setattr(convert_module.metadata, "build", wrong_type)
    out = tmp_path / "out.gguf"
    assert convert(LLAMA / "mha" / "model.ckpt", out) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ms2gguf: error: {out}: the converted GGUF fails its check, so it was not written: " \
                  "llama.context_length has type i32; llama.cpp requires u32"
    assert list(tmp_path.iterdir()) == []
