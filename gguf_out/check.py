"""``ms2gguf check FILE.gguf``: what llama.cpp and Ollama would reject, found without loading the model.

The file is parsed here (not with gguf-py, whose reader stops at the first problem with a traceback), so a
broken file gets one line per problem: the container rules of llama.cpp's ``gguf.cpp`` and Ollama's
parser (gguf-targets.md §1.2, §10.2), exact metadata types (§2.1), the vocabulary (§3.3),
``general.file_type`` (§6, §10.4), and the tensors the architecture needs, with their shapes. Required
tensors and shapes come from the family maps (``maps/*.json``) whose arch the file names; every tensor
must be one gguf-py lists for that arch.
"""

import argparse
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType as V, Keys, LlamaFileType

from . import split
from .output import escape

MAGIC = b"GGUF"
MAX_STRING = 16 << 20       # Ollama's MaxStringLength
MAX_ARRAY = 64 << 20        # Ollama's MaxArraySize (elements)
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_NAME = 64               # GGML_MAX_NAME: a tensor name must be shorter
DEFAULT_ALIGNMENT = 32

_SCALARS = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
            V.FLOAT32: "<f", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d", V.BOOL: "<?"}
_TYPE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
               V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array", V.UINT64: "u64",
               V.INT64: "i64", V.FLOAT64: "f64"}
_KINDS = {"u32": V.UINT32, "i32": V.INT32, "f32": V.FLOAT32, "bool": V.BOOL, "str": V.STRING}

# Exact types llama.cpp (and Ollama's typed accessors) insist on. An (ARRAY, item) tuple is an array type.
GENERAL_TYPES = {
    Keys.General.ARCHITECTURE: V.STRING, Keys.General.NAME: V.STRING, Keys.General.TYPE: V.STRING,
    Keys.General.FILE_TYPE: V.UINT32,       # (general.alignment has its own check)
    Keys.General.QUANTIZATION_VERSION: V.UINT32,
    Keys.Tokenizer.MODEL: V.STRING, Keys.Tokenizer.PRE: V.STRING,
    Keys.Tokenizer.LIST: (V.ARRAY, V.STRING), Keys.Tokenizer.SCORES: (V.ARRAY, V.FLOAT32),
    Keys.Tokenizer.TOKEN_TYPE: (V.ARRAY, V.INT32), Keys.Tokenizer.MERGES: (V.ARRAY, V.STRING),
    Keys.Tokenizer.ADD_BOS: V.BOOL, Keys.Tokenizer.ADD_EOS: V.BOOL, Keys.Tokenizer.ADD_PREFIX: V.BOOL,
    Keys.Tokenizer.ADD_SEP: V.BOOL, Keys.Tokenizer.CHAT_TEMPLATE: V.STRING,
}
# tokenizer.ggml.bos_token_id, eos_, eot_, padding_, seperator_, fim_*_ ...: all u32
SPECIAL_IDS = tuple(getattr(Keys.Tokenizer, n) for n in dir(Keys.Tokenizer) if n.endswith("_ID"))
GENERAL_TYPES.update({key: V.UINT32 for key in SPECIAL_IDS})
# "{arch}.<suffix>" hyperparameters llama.cpp reads for every arch, with their types; the maps' metadata
# types are added per arch. Per-layer values may also be arrays.
ARCH_TYPES = {
    "context_length": V.UINT32, "embedding_length": V.UINT32, "block_count": V.UINT32,
    "feed_forward_length": V.UINT32, "attention.head_count": V.UINT32, "attention.head_count_kv": V.UINT32,
    "attention.layer_norm_rms_epsilon": V.FLOAT32, "attention.layer_norm_epsilon": V.FLOAT32,
    "attention.key_length": V.UINT32, "attention.value_length": V.UINT32,
    "rope.dimension_count": V.UINT32, "rope.freq_base": V.FLOAT32, "rope.scaling.type": V.STRING,
    "rope.scaling.factor": V.FLOAT32, "rope.scaling.original_context_length": V.UINT32,
    "vocab_size": V.UINT32, "expert_count": V.UINT32, "expert_used_count": V.UINT32,
    "expert_feed_forward_length": V.UINT32, "expert_shared_count": V.UINT32,
    "expert_shared_feed_forward_length": V.UINT32, "leading_dense_block_count": V.UINT32,
    "expert_weights_scale": V.FLOAT32, "expert_weights_norm": V.BOOL, "expert_gating_func": V.UINT32,
}
PER_LAYER = {"feed_forward_length", "attention.head_count", "attention.head_count_kv"}
# llama.cpp's load_hparams fails without these (any arch) ...
ARCH_REQUIRED = ("context_length", "embedding_length", "block_count")
# ... and without these when the family uses them (missing -> a key error or a wrong tensor shape)
MAP_REQUIRED = {"feed_forward_length", "attention.head_count", "attention.layer_norm_rms_epsilon",
                "attention.layer_norm_epsilon"}
# ... and, in a file with expert tensors, these (an abort, not a load error, when the first two are missing:
# moe-families.md §2.3)
MOE_ABORTS = ("expert_count", "expert_used_count")
MOE_REQUIRED = set(MOE_ABORTS) | {"expert_feed_forward_length", "expert_shared_count", "leading_dense_block_count"}

FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
               GGMLQuantizationType.F64}
INT_TYPES = {GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32,
             GGMLQuantizationType.I64}


@dataclass
class Problem:
    level: str      # "error" or "warning"
    kind: str       # short class name, e.g. "key-type", "offset" (for tests and filtering)
    text: str


@dataclass
class Value:
    vtype: int
    value: object
    item_type: int | None = None
    at: int = 0     # byte offset of the KV pair


@dataclass
class TensorEntry:
    name: str
    ne: tuple       # ne0 first, as stored
    ggml_type: int
    offset: int     # relative to the data section
    at: int         # byte offset of the tensor info
    nbytes: int | None = None

    @property
    def shape(self):
        """numpy order (rows first)."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self):
        try:
            return GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return f"type {self.ggml_type}"


@dataclass
class Report:
    path: str
    problems: list = field(default_factory=list)
    kv: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    size: int = 0
    notes: list = field(default_factory=list)       # what could not be checked, for the "ok" line
    data_start: int = 0

    @property
    def errors(self):
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self):
        return [p for p in self.problems if p.level == "warning"]

    def error(self, kind, text):
        self.problems.append(Problem("error", kind, text))

    def warning(self, kind, text):
        self.problems.append(Problem("warning", kind, text))

    def summary(self):
        kv = self.kv
        parts = [f"{len(self.tensors)} tensors"]
        arch = _scalar(kv, Keys.General.ARCHITECTURE)
        if isinstance(arch, str):
            parts.append(arch)
            layers = _scalar(kv, f"{arch}.block_count")
            if isinstance(layers, int):
                parts.append(f"{layers} layers")
        tokens = kv.get(Keys.Tokenizer.LIST)
        if tokens is not None and isinstance(tokens.value, list):
            parts.append(f"{len(tokens.value)} tokens")
        ftype = _scalar(kv, Keys.General.FILE_TYPE)
        if isinstance(ftype, int):
            parts.append(_ftype_name(ftype))
        parts.append(_human(self.size))
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''}")
        return ", ".join(parts + self.notes)


class _Fatal(Exception):
    """The rest of the file cannot be read."""

    def __init__(self, kind, text):
        super().__init__(text)
        self.kind, self.text = kind, text


# ---------------------------------------------------------------------------------------------------------
# container


class _Reader:
    def __init__(self, buf):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, n, what):
        if n > self.size - self.pos:
            raise _Fatal("truncated", f"truncated: the file ends at byte {self.size}, inside {what} "
                                      f"(which starts at byte {self.pos} and needs {n} bytes)")
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def unpack(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what, report):
        n = self.unpack("<Q", f"the length of {what}")
        if n > MAX_STRING:
            report.error("limit", f"{what} at byte {self.pos} is {n} bytes long; Ollama accepts at most "
                                  f"{MAX_STRING} (16 MiB)")
        return bytes(self.take(n, what)).decode("utf-8", errors="surrogateescape")


def _value(r, vtype, what, report):
    if vtype == V.STRING:
        return r.string(what, report), None
    if vtype == V.ARRAY:
        item = r.unpack("<I", f"the item type of {what}")
        count = r.unpack("<Q", f"the length of {what}")
        if item == V.ARRAY:
            raise _Fatal("value-type", f"{what}: nested array (array of arrays): llama.cpp and Ollama reject it")
        if item not in _TYPE_NAMES:
            raise _Fatal("value-type", f"{what}: unknown array item type {item} (GGUF types are 0-12)")
        if count > MAX_ARRAY:
            report.error("limit", f"{what} has {count} elements; Ollama accepts at most {MAX_ARRAY} (64 Mi)")
        if item == V.STRING:
            if count * 8 > r.size - r.pos:      # each string needs at least its 8-byte length
                raise _Fatal("truncated", f"truncated: {what} claims {count} strings but the file has only "
                                          f"{r.size - r.pos} bytes left")
            return [r.string(f"{what}[{i}]", report) for i in range(count)], item
        fmt = _SCALARS[item]
        width = struct.calcsize(fmt)
        data = r.take(count * width, what)
        return np.frombuffer(data, dtype=np.dtype(fmt)).tolist(), item
    if vtype not in _SCALARS:
        raise _Fatal("value-type", f"{what}: unknown value type {vtype} (GGUF types are 0-12)")
    return r.unpack(_SCALARS[vtype], what), None


def _parse(buf, report):
    """Header, metadata and tensor infos into ``report``; container problems recorded as found."""
    r = _Reader(buf)
    if len(buf) < 4 or bytes(buf[:4]) != MAGIC:
        head = bytes(buf[:4])
        raise _Fatal("not-gguf", "not a GGUF file " + (f"(starts with {head.hex(' ')}, not 47 47 55 46 'GGUF')"
                                                        if len(head) == 4 else f"({len(buf)} bytes long)"))
    r.take(4, "the magic")
    version = r.unpack("<I", "the version")
    if version not in (2, 3):
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        if swapped in (1, 2, 3):
            raise _Fatal("version", "big-endian GGUF: llama.cpp on little-endian machines cannot load it")
        raise _Fatal("version", f"GGUF version {version}; llama.cpp reads versions 2 and 3")
    n_tensors = r.unpack("<Q", "the tensor count")
    n_kv = r.unpack("<Q", "the metadata count")
    if n_tensors > r.size or n_kv > r.size:
        raise _Fatal("truncated", f"the header claims {n_tensors} tensors and {n_kv} metadata pairs, more than "
                                  f"a {r.size}-byte file can hold")

    for i in range(n_kv):
        at = r.pos
        key = r.string(f"metadata key #{i}", report)
        vtype = r.unpack("<I", f"the type of '{key}'")
        value, item = _value(r, vtype, f"'{key}'", report)
        if key in report.kv:
            report.error("duplicate-key", f"metadata key '{key}' appears twice (byte {at})")
        report.kv[key] = Value(vtype, value, item, at)

    alignment = DEFAULT_ALIGNMENT
    field_ = report.kv.get(Keys.General.ALIGNMENT)
    if field_ is not None:
        value = field_.value if field_.vtype == V.UINT32 else None
        if not isinstance(value, int) or value <= 0 or value & (value - 1):
            report.error("alignment", f"general.alignment is {field_.value!r} ({_TYPE_NAMES.get(field_.vtype)}); "
                                      "it must be a u32 power of two")
        else:
            alignment = value

    names = set()
    for i in range(n_tensors):
        at = r.pos
        name = r.string(f"the name of tensor #{i}", report)
        n_dims = r.unpack("<I", f"the dimension count of '{name}'")
        if n_dims > 16:
            raise _Fatal("dims", f"tensor '{name}' (byte {at}) claims {n_dims} dimensions; ggml has at most "
                                 f"{MAX_DIMS}")
        ne = tuple(r.unpack("<Q", f"dimension {d} of '{name}'") for d in range(n_dims))
        ggml_type = r.unpack("<I", f"the type of '{name}'")
        offset = r.unpack("<Q", f"the data offset of '{name}'")
        tensor = TensorEntry(name, ne, ggml_type, offset, at)
        report.tensors.append(tensor)
        _check_tensor_info(tensor, names, report)
        names.add(name)

    data_start = -(-r.pos // alignment) * alignment
    report.data_start = data_start
    _check_offsets(report, data_start, alignment)


def _check_tensor_info(t, names, report):
    where = f"tensor '{t.name}'"
    if t.name in names:
        report.error("duplicate-tensor", f"{where} appears twice (byte {t.at})")
    if len(t.name.encode("utf-8", errors="surrogateescape")) >= MAX_NAME:
        report.error("name", f"{where}: the name is {len(t.name)} bytes; ggml allows at most {MAX_NAME - 1}")
    if len(t.ne) > MAX_DIMS:
        report.error("dims", f"{where} has {len(t.ne)} dimensions {list(t.shape)}; llama.cpp and Ollama allow at "
                             f"most {MAX_DIMS}")
    if any(d >= 1 << 63 for d in t.ne):
        report.error("dims", f"{where}: dimension {list(t.ne)} is negative as int64")
        return
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
    except (ValueError, KeyError):
        report.error("tensor-type", f"{where}: unknown ggml type {t.ggml_type}")
        return
    ne0 = t.ne[0] if t.ne else 1
    if ne0 % block:
        report.error("block", f"{where}: row length {ne0} is not a multiple of {t.type_name}'s block of {block}")
        return
    n = 1
    for d in t.ne:
        n *= d
    t.nbytes = n // block * size


def _check_offsets(report, data_start, alignment):
    """Like llama.cpp, report the first offset that is not where the previous tensors end (later ones follow)."""
    expected = 0
    for t in report.tensors:
        where = f"tensor '{t.name}'"
        if t.nbytes is None:
            return
        if t.offset % alignment:
            report.error("offset", f"{where}: data offset {t.offset} is not a multiple of the alignment {alignment}")
            break
        if t.offset != expected:
            report.error("offset", f"{where}: data offset {t.offset}, expected {expected} (tensor data must follow "
                                   "the tensor infos' order without gaps)")
            break
        expected = t.offset + -(-t.nbytes // alignment) * alignment
    for t in report.tensors:
        end = data_start + t.offset + (t.nbytes or 0)
        if end > report.size:
            report.error("truncated", f"truncated: tensor '{t.name}''s data ends at byte {end} but the file has only "
                                      f"{report.size} bytes")
            return


# ---------------------------------------------------------------------------------------------------------
# metadata and tensors against the architecture


def _scalar(kv, key):
    v = kv.get(key)
    return None if v is None or v.vtype == V.ARRAY else v.value


def _type_text(t):
    return f"array of {_TYPE_NAMES.get(t[1], t[1])}" if isinstance(t, tuple) else _TYPE_NAMES.get(t, str(t))


def _actual(v):
    return (V.ARRAY, v.item_type) if v.vtype == V.ARRAY else v.vtype


def _expected_types(arch, family_maps):
    types = {f"{arch}.{suffix}": t for suffix, t in ARCH_TYPES.items()}
    for fmap in family_maps:
        for key, (kind, _) in fmap.metadata.items():
            types[key.replace("{arch}", arch)] = _KINDS[kind]
    types.update(GENERAL_TYPES)
    return types


def _check_types(report, arch, family_maps):
    expected = _expected_types(arch, family_maps)
    for key, v in report.kv.items():
        want = expected.get(key)
        if want is None:
            continue
        got = _actual(v)
        if got == want:
            continue
        suffix = key[len(arch) + 1:] if key.startswith(arch + ".") else None
        if suffix in PER_LAYER and got in ((V.ARRAY, V.UINT32), (V.ARRAY, V.INT32)):
            continue        # per-layer values
        report.error("key-type", f"{key} has type {_type_text(got)}; llama.cpp requires {_type_text(want)}")


def _check_required(report, arch, family_maps):
    required = [Keys.General.ARCHITECTURE, Keys.Tokenizer.MODEL, Keys.Tokenizer.LIST]
    if arch:
        required += [f"{arch}.{suffix}" for suffix in ARCH_REQUIRED]
    experts = any("_exps." in t.name for t in report.tensors)
    for fmap in family_maps:
        for key in fmap.metadata:
            full = key.replace("{arch}", arch)
            suffix = full[len(arch) + 1:]
            if key in fmap.optional_metadata or (suffix in MOE_REQUIRED and not experts):
                continue
            if (suffix in MAP_REQUIRED or suffix in MOE_REQUIRED) and full not in required:
                required.append(full)
    if arch and experts:
        required += [f"{arch}.{suffix}" for suffix in MOE_ABORTS if f"{arch}.{suffix}" not in required]
    for key in required:
        if key not in report.kv:
            why = " (llama.cpp aborts the process without it)" if key.rsplit(".", 1)[-1] in MOE_ABORTS else ""
            report.error("missing-key", f"required metadata key {key} is missing{why}")


def _check_vocab(report, n_embd_rows):
    tokens_v = report.kv.get(Keys.Tokenizer.LIST)
    if tokens_v is None or tokens_v.vtype != V.ARRAY or tokens_v.item_type != V.STRING:
        return None
    tokens = tokens_v.value
    n = len(tokens)
    if n_embd_rows is not None and n != n_embd_rows:
        report.error("token-count", f"{Keys.Tokenizer.LIST} has {n} tokens but token_embd.weight has {n_embd_rows} "
                                    "rows; llama.cpp requires them equal")
    if len(set(tokens)) != n:
        seen, dupes = set(), []
        for i, t in enumerate(tokens):
            if t in seen and len(dupes) < 3:
                dupes.append(f"{t!r} (id {i})")
            seen.add(t)
        report.error("duplicate-token", f"duplicate tokens {', '.join(dupes)}: llama.cpp aborts on duplicates")
    for key in (Keys.Tokenizer.SCORES, Keys.Tokenizer.TOKEN_TYPE):
        v = report.kv.get(key)
        if v is not None and v.vtype == V.ARRAY and len(v.value) != n:
            report.error("token-count", f"{key} has {len(v.value)} entries for {n} tokens")
    for key in SPECIAL_IDS:
        v = report.kv.get(key)
        if v is not None and v.vtype == V.UINT32 and v.value >= n:
            report.warning("special-token", f"{key} = {v.value} is not a token id (there are {n} tokens); "
                                            "llama.cpp ignores it")
    return n


def _ftype_name(value):
    try:
        return LlamaFileType(value).name
    except ValueError:
        return f"file type {value}"


def _ftype_base(ftype):
    """The ggml type a llama_ftype is made of (MOSTLY_Q4_K_M -> Q4_K), or None if not known."""
    name = ftype.name.removeprefix("MOSTLY_")
    for candidate in (name, name.rsplit("_", 1)[0]):
        if candidate in GGMLQuantizationType.__members__:
            return GGMLQuantizationType[candidate]
    return None


def _check_file_type(report):
    v = report.kv.get(Keys.General.FILE_TYPE)
    types = {t.ggml_type for t in report.tensors}
    if v is None:
        report.warning("file-type", "general.file_type is missing: Ollama reads the file type as unknown and "
                                    "cannot quantize it at create time")
        return
    if v.vtype != V.UINT32:
        return      # reported as a key type error
    try:
        ftype = LlamaFileType(v.value)
    except ValueError:
        report.warning("file-type", f"general.file_type = {v.value} is not a known llama_ftype")
        return
    found = ", ".join(sorted(_type_name(t) for t in types))
    if ftype == LlamaFileType.ALL_F32:
        if types - {GGMLQuantizationType.F32}:
            report.error("file-type", f"general.file_type is 0 (ALL_F32) but the tensors are {found}")
        else:
            report.warning("file-type", "general.file_type is 0 (ALL_F32): Ollama reads that as 'unknown' and "
                                        "cannot quantize this file at create time (convert with --outtype f16)")
        return
    base = _ftype_base(ftype)
    if base in FLOAT_TYPES:     # F16 and BF16 files are not mixed: 2-D weights of that type, the rest F32
        extra = types - {base, GGMLQuantizationType.F32}
        if extra or base not in types:
            report.error("file-type", f"general.file_type is {ftype.name} but the tensors are {found}")
    elif not types - FLOAT_TYPES - INT_TYPES:
        report.error("file-type", f"general.file_type is {ftype.name} but no tensor is quantized ({found})")


def _type_name(t):
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return str(t)


def _arch_enum(arch):
    for enum, name in gguf.MODEL_ARCH_NAMES.items():
        if name == arch:
            return enum
    return None


def _maps_for(arch):
    from .errors import ConvertError
    from .maps import bundled_names, load_map

    found = []
    for name in bundled_names():
        try:
            fmap = load_map(name)
        except ConvertError:
            continue
        if fmap.arch == arch:
            found.append(fmap)
    return found


def _symbols(report, arch, fmap, n_tokens):
    """The map's shape symbols (hidden_size, q_width, ...) as this file's metadata gives them.

    A symbol whose value is unclear (per-layer values that differ, or two keys that disagree) is left
    out, so no shape is checked against it.
    """
    hp, source, per_layer, unclear = {}, {}, set(), set()
    for key, (_, name) in fmap.metadata.items():
        full = key.replace("{arch}", arch)
        v = report.kv.get(full)
        if v is None or v.vtype == V.STRING or not isinstance(name, str):
            continue
        value = v.value
        if v.vtype == V.ARRAY:      # per-layer values: one shape for all layers only if they are all equal
            if len(set(value)) != 1:
                per_layer.add(name)
                continue
            value = value[0]
        if name in hp and hp[name] != value:
            report.error("hparams", f"{source[name]} = {hp[name]} but {full} = {value}; both must be "
                                    f"{name} (map '{fmap.family}')")
            unclear.add(name)
            continue
        hp[name], source[name] = value, full
    unclear |= per_layer
    for name in unclear:
        hp.pop(name, None)
    if n_tokens is not None:
        hp["vocab_size"] = n_tokens
    heads = hp.get("num_heads")
    if heads and not unclear & {"num_heads", "num_kv_heads", "head_dim"}:
        if "head_dim" not in hp and hp.get("hidden_size"):
            hp["head_dim"] = hp["hidden_size"] // heads
        hp.setdefault("num_kv_heads", heads)
        if "head_dim" in hp:
            hp["q_width"] = heads * hp["head_dim"]
            hp["kv_width"] = hp["num_kv_heads"] * hp["head_dim"]
            hp["qkv_width"] = hp["q_width"] + 2 * hp["kv_width"]
    if "ffn_size" in hp and "ffn_size" not in unclear:
        hp["gate_up_width"] = 2 * hp["ffn_size"]
    if per_layer:
        report.notes.append(f"per-layer {', '.join(sorted(per_layer))}: those shapes not checked")
    return hp


def _pattern(name):
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        parts[1] = "{i}"
    return ".".join(parts)


def _check_tensors(report, arch, family_maps, layers, hp):
    by_name = {t.name: t for t in report.tensors}
    stray = set()
    enum = _arch_enum(arch)
    if enum is not None:
        allowed = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS.get(enum, [])}
        for t in report.tensors:
            base, _, suffix = _pattern(t.name).rpartition(".")
            if base not in allowed or suffix not in ("weight", "bias"):
                report.error("stray-tensor", f"tensor '{t.name}' is not a tensor of architecture '{arch}'; "
                                             "llama.cpp rejects extra tensors")
                stray.add(t.name)
            elif "{i}" in base and isinstance(layers, int) and int(t.name.split(".")[1]) >= layers:
                report.error("stray-tensor", f"tensor '{t.name}' is beyond the {layers} layers of "
                                             f"{arch}.block_count")
                stray.add(t.name)
    if not family_maps:
        report.notes.append(f"no ms2gguf map for '{arch}': required tensors and shapes not checked")
        return
    required = set.intersection(*(set(m.required) for m in family_maps))
    for pattern in sorted(required):
        if "{i}" in pattern and layers is None:
            continue
        names = [pattern.replace("{i}", str(i)) for i in range(layers)] if "{i}" in pattern else [pattern]
        missing = [n for n in names if n not in by_name]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            report.error("missing-tensor", f"required tensor {', '.join(missing[:3])}{more} is missing")
    if isinstance(layers, int):
        _check_layer_kinds(report, by_name, family_maps, required, layers)
    shapes = {}
    for fmap in family_maps:
        for pattern, spec in fmap.shapes.items():
            shapes.setdefault(pattern, spec)
    for t in report.tensors:
        spec = shapes.get(_pattern(t.name))
        if t.name in stray or not spec or any(isinstance(s, str) and s not in hp for s in spec):
            continue
        expected = tuple(int(hp[s]) if isinstance(s, str) else int(s) for s in spec)
        if t.shape != expected:
            described = " x ".join(f"{s}={hp[s]}" if isinstance(s, str) else str(s) for s in spec)
            report.error("shape", f"tensor '{t.name}' has shape {list(t.shape)}; the metadata gives "
                                  f"{list(expected)} ({described})")


def _layer_kinds(family_maps, common):
    """[(kind, [tensor patterns])] the maps of one arch allow per layer: their layer_kinds, and for maps without
    any, the per-layer tensors they require beyond what all the arch's maps require (a dense feed-forward)."""
    kinds = []
    for fmap in family_maps:
        found = list(fmap.layer_kinds.items()) or [("dense", sorted(p for p in set(fmap.required) - common
                                                                     if "{i}" in p))]
        for kind, patterns in found:
            if patterns and (kind, sorted(patterns)) not in kinds:
                kinds.append((kind, sorted(patterns)))
    return kinds


def _check_layer_kinds(report, by_name, family_maps, common, layers):
    """Every layer must be complete as exactly one kind (dense or mixture-of-experts): llama.cpp fails to load a
    layer missing one of its tensors."""
    kinds = _layer_kinds(family_maps, common)
    if not kinds:
        return
    for layer in range(layers):
        names = [[p.replace("{i}", str(layer)) for p in patterns] for _, patterns in kinds]
        if any(all(n in by_name for n in group) for group in names):
            continue
        best = max(range(len(kinds)), key=lambda k: sum(n in by_name for n in names[k]))
        lacking = [n for n in names[best] if n not in by_name]
        report.error("missing-tensor", f"layer {layer} is incomplete as a {kinds[best][0]} layer: "
                                       f"{', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''} missing")


POSITIVE_COUNTS = ("context_length", "embedding_length", "block_count", "attention.head_count")


def _check_hparams(report, arch):
    """Values llama.cpp would load and then compute nonsense (or divide by zero) with."""
    for key, v in report.kv.items():
        if not key.startswith(arch + ".") or v.vtype == V.STRING:
            continue
        suffix = key[len(arch) + 1:]
        values = v.value if isinstance(v.value, list) else [v.value]
        if v.vtype in (V.FLOAT32, V.FLOAT64) or v.item_type in (V.FLOAT32, V.FLOAT64):
            if any(not math.isfinite(x) for x in values):
                shown = values[0] if len(values) == 1 else "an array with NaN or infinite values"
                report.error("hparams", f"{key} is not finite ({shown})")
            elif ("epsilon" in suffix or suffix == "rope.freq_base") and any(x <= 0 for x in values):
                report.error("hparams", f"{key} is {values[0] if len(values) == 1 else min(values)}; it must be "
                                        "above 0")
        elif suffix in POSITIVE_COUNTS and v.vtype != V.ARRAY and v.value == 0:
            report.error("hparams", f"{key} is 0")


def check_buffer(buf, report, family_maps=None, values=False):
    """All checks on a GGUF's bytes; ``values``: also scan the tensor data for non-finite values."""
    if _container(buf, report, values):
        _check_model(report, family_maps)
    return report


def _container(buf, report, values=False):
    """Parse ``buf`` into ``report`` (``values``: and scan its tensor data); False when the rest cannot be read."""
    report.size = len(buf)
    try:
        _parse(buf, report)
    except _Fatal as fatal:
        report.error(fatal.kind, fatal.text)
        return False
    if values:
        from .check_values import scan
        scan(buf, report, report.data_start)
    return True


def _check_model(report, family_maps=None):
    """The metadata and tensors of a parsed file (or of a split set's files together) against the architecture."""
    arch = _scalar(report.kv, Keys.General.ARCHITECTURE)
    if not isinstance(arch, str):
        arch = ""
    elif _arch_enum(arch) is None:
        report.error("arch", f"unknown architecture '{arch}' (general.architecture)")
    if family_maps is None:
        family_maps = _maps_for(arch) if arch else []
    family_maps = [m for m in family_maps if m.arch == arch]
    if _scalar(report.kv, Keys.General.TYPE) == "adapter":
        _check_adapter(report, arch)
        return
    _check_types(report, arch, family_maps)
    if arch:
        _check_hparams(report, arch)
    _check_required(report, arch, family_maps)
    embd = next((t for t in report.tensors if t.name == "token_embd.weight"), None)
    rows = embd.shape[0] if embd is not None and len(embd.ne) == 2 else None
    n_tokens = _check_vocab(report, rows)
    if rows is not None and n_tokens != rows:
        n_tokens = None     # reported once as a token count error, not again as the shape of every vocab tensor
    _check_file_type(report)
    if arch:
        layers = _scalar(report.kv, f"{arch}.block_count")
        layers = layers if isinstance(layers, int) and not isinstance(layers, bool) else None
        if layers is not None and layers > len(report.tensors):
            # every layer has tensors; and the per-layer checks below must not loop over a number the file made up
            report.error("hparams", f"{arch}.block_count is {layers}, but the file has only {len(report.tensors)} "
                                    "tensors")
            layers = None
        hp = {}
        for fmap in family_maps:
            hp.update(_symbols(report, arch, fmap, n_tokens))
        _check_tensors(report, arch, family_maps, layers, hp)


def _check_adapter(report, arch):
    """A LoRA adapter (general.type = adapter) as llama.cpp's llama-adapter.cpp loads it: adapter.type lora, an f32
    adapter.lora.alpha, only ``<tensor of the architecture>.lora_a`` / ``.lora_b`` pairs with one rank each:
    lora_a ne [in, r], lora_b ne [r, out]."""
    kind = report.kv.get("adapter.type")
    if kind is None or kind.vtype != V.STRING or kind.value != "lora":
        report.error("adapter", f"adapter.type is {None if kind is None else kind.value!r}; llama.cpp loads 'lora'")
    alpha = report.kv.get("adapter.lora.alpha")
    if alpha is None:
        report.warning("adapter", "no adapter.lora.alpha: llama.cpp then scales the adapter by 1, not alpha / rank")
    elif alpha.vtype != V.FLOAT32:
        report.error("key-type", f"adapter.lora.alpha has type {_type_text(_actual(alpha))}; llama.cpp requires "
                                 "f32")
    if not arch:
        report.error("missing-key", "required metadata key general.architecture is missing")
    enum = _arch_enum(arch) if arch else None
    allowed = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS.get(enum, [])} \
        if enum is not None else None
    halves = {}
    for t in report.tensors:
        base, _, suffix = t.name.rpartition(".")
        if suffix not in ("lora_a", "lora_b"):
            report.error("stray-tensor", f"tensor '{t.name}' is not a LoRA tensor (.lora_a / .lora_b)")
            continue
        if allowed is not None and _pattern(base).rpartition(".")[0] not in allowed:
            report.error("stray-tensor", f"tensor '{t.name}': '{base}' is not a tensor of architecture '{arch}'")
        if len(t.ne) != 2:
            report.error("tensor-shape", f"tensor '{t.name}' has {len(t.ne)} dimensions; LoRA tensors are 2-D")
            continue
        halves.setdefault(base, {})[suffix] = t
    for base, both in halves.items():
        if len(both) != 2:
            report.error("missing-tensor", f"LoRA tensor '{base}.{next(iter(both))}' has no "
                                           f"{'lora_b' if 'lora_a' in both else 'lora_a'} partner")
        elif both["lora_a"].ne[1] != both["lora_b"].ne[0]:
            report.error("tensor-shape", f"LoRA '{base}': lora_a ne {list(both['lora_a'].ne)} and lora_b ne "
                                         f"{list(both['lora_b'].ne)} disagree on the rank")
    ranks = sorted({b["lora_b"].ne[0] for b in halves.values() if len(b) == 2 and len(b["lora_b"].ne) == 2})
    report.notes.append(f"LoRA adapter, {len(halves)} pairs" + (f", rank {'/'.join(map(str, ranks))}" if ranks
                                                                  else "")
                        + (f", alpha {alpha.value:g}" if alpha is not None and alpha.vtype == V.FLOAT32 else ""))


def _read(path, report, values=False):
    """Parse the file at ``path`` into ``report`` (container only; ``values``: and scan the tensor data); False
    when it cannot be read on. A FIFO, device or directory is refused without blocking."""
    from msckpt import CheckpointError, safeio

    try:
        if not os.path.lexists(path):
            raise FileNotFoundError(2, "No such file or directory")
        with safeio.open_regular(path, what="GGUF file") as f:
            size = f.seek(0, 2)
            if size == 0:
                report.error("not-gguf", "not a GGUF file (empty)")
                return False
            # slicing an mmap copies, so no buffer stays exported when it closes
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _container(mm, report, values)
    except CheckpointError as err:
        report.error("io", err.what)
        return False
    except OSError as err:
        report.error("io", f"cannot read ({err.strerror or err})")
        return False


def _split_keys(report):
    """(split.no, split.count, split.tensors.count) of a parsed file, None for a file without split keys; keys
    of the wrong type are errors (llama.cpp reads them with typed getters)."""
    present = [k for k in split.KEY_TYPES if k in report.kv]
    if not present:
        return None
    values = []
    for key, vtype in split.KEY_TYPES.items():
        v = report.kv.get(key)
        if v is None:
            report.error("split", f"'{key}' is missing (the file has {', '.join(present)})")
            return None
        if v.vtype != vtype:
            report.error("key-type", f"'{key}' is {_TYPE_NAMES.get(v.vtype, v.vtype)}; llama.cpp reads it as "
                                     f"{_TYPE_NAMES[vtype]}")
            return None
        values.append(v.value)
    no, count, total = values
    if count < 1 or no >= count:
        report.error("split", f"split.no {no} with split.count {count}: not a split of the set")
        return None
    return no, count, total


def check_file(path, family_maps=None, values=False):
    """A Report of everything wrong with the GGUF at ``path`` (``family_maps``: default the bundled ones). The
    first file of a split set is checked with the whole set (the other files found by name, as llama.cpp does).
    ``values``: also scan the tensor data for NaN / infinite values (a read of every file)."""
    report = Report(str(path))
    if not _read(path, report, values):
        return report
    keys = _split_keys(report)
    if keys is None or keys[1] == 1:
        _check_model(report, family_maps)
        return report
    no, count, _ = keys
    parsed = split.parse_name(path)
    if no != 0:
        first = split.NAME_FORMAT.format(parsed[0], 1, count) if parsed else "the file with split.no 0"
        report.error("split-part", f"split {no + 1} of {count}: give the first file ({first}); it is checked with "
                                   "the whole set")
        return report
    if parsed is None or parsed[1:] != (1, count):
        report.error("split-name", f"split 1 of {count}, but the name does not end in -00001-of-{count:05d}.gguf: "
                                   "llama.cpp finds the other splits by name")
        return report
    paths = split.names(Path(path).with_name(parsed[0] + ".gguf"), count)
    return check_set(paths, family_maps, first=report, values=values)


def _first_of_set(path):
    """The first file's path when ``path`` is named as split K > 1 of a set, else None."""
    parsed = split.parse_name(path)
    if parsed is None or parsed[1] == 1:
        return None
    return str(Path(path).with_name(split.NAME_FORMAT.format(Path(parsed[0]).name, 1, parsed[2])))


def check_set(paths, family_maps=None, first=None, values=False):
    """One Report for a split set, ``paths`` in split order: each file's container and split keys, then the
    metadata (in the first file) and the tensors of all files together against the architecture."""
    report = first or Report(str(paths[0]))
    if first is None and not _read(paths[0], report, values):
        return report
    count = len(paths)
    keys = _split_keys(report)
    if count > 1 and keys is None and not report.errors:
        report.error("split", f"split 1 of {count} has no split keys")
    total = keys[2] if keys else None
    if keys and keys[:2] != (0, count):
        report.error("split", f"split.no {keys[0]}, split.count {keys[1]} in split 1 of {count}")
    complete = keys is not None or count == 1
    for k, path in enumerate(paths[1:], start=2):
        where = f"split {k} of {count} ({Path(path).name})"
        if not os.path.exists(path):
            report.error("missing-split", f"{where} is missing")
            complete = False
            continue
        part = Report(str(path))
        ok = _read(path, part, values) and check_part_keys(part, k - 1, count, total)
        report.problems += [Problem(p.level, p.kind, f"{where}: {p.text}") for p in part.problems]
        report.size += part.size
        complete = complete and ok
        if ok:
            names = {t.name for t in report.tensors}
            for t in part.tensors:
                if t.name in names:
                    report.error("duplicate-tensor", f"{where}: tensor '{t.name}' is also in an earlier split")
            report.tensors += part.tensors
    report.notes.append(f"{count} files")
    if not complete:        # the model cannot be judged without all its tensors
        return report
    if total is not None and total != len(report.tensors):
        report.error("split", f"split.tensors.count is {total} but the {count} files hold {len(report.tensors)} "
                              "tensors (llama.cpp: corrupted model)")
    _check_model(report, family_maps)
    return report


def check_part_keys(report, index, count, total=None):
    """The split keys of a parsed split: split ``index`` (0-based) of ``count`` (of ``total`` tensors)."""
    keys = _split_keys(report)
    if keys is None:
        if not report.errors:
            report.error("split", "no split keys (split.no, split.count, split.tensors.count)")
        return False
    no, n, tensors = keys
    if (no, n) != (index, count):
        report.error("split", f"split.no {no} and split.count {n}; expected {index} and {count}")
        return False
    if total is not None and tensors != total:
        report.error("split", f"split.tensors.count {tensors}; the first split says {total}")
        return False
    return True


def check_part(path, index, count):
    """The checks one split can pass alone (``--split-part``): its container and its split keys."""
    report = Report(str(path))
    if _read(path, report):
        check_part_keys(report, index, count)
    return report


def _human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def build_parser():
    p = argparse.ArgumentParser(prog="ms2gguf check", description="Validate GGUF files against what llama.cpp and "
                                "Ollama enforce: container layout, metadata types, required keys, vocabulary, "
                                "general.file_type, and the tensors (names, shapes) the architecture needs.")
    p.add_argument("files", nargs="+", metavar="FILE.gguf")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only, no 'ok' lines")
    p.add_argument("--no-values", action="store_true", help="do not scan the tensor data for NaN / infinite values "
                   "(it reads the whole file)")
    return p


def main(argv):
    args = build_parser().parse_args(argv)
    status = 0
    given = {os.path.abspath(f) for f in args.files}
    for path in args.files:
        first = _first_of_set(path)
        if first is not None and os.path.abspath(first) in given:
            if not args.quiet:      # e.g. 'ms2gguf check *.gguf': the set is checked with its first file
                print(escape(f"{path}: split of {Path(first).name}, checked with it"))
            continue
        report = check_file(path, values=not args.no_values)
        for problem in report.problems:
            print(escape(f"{path}: {problem.level}: {problem.text}"))
        if report.errors:
            status = 1
        elif not args.quiet:
            print(escape(f"{path}: ok ({report.summary()})"))
    return status
