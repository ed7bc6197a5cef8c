"""Importance matrices for ``--imatrix``: llama.cpp's GGUF imatrix and the legacy ``imatrix.dat``, read and turned
into per-column weights exactly as llama-quantize does (ecosystem.md §2c; llama.cpp ``common/imatrix-loader.cpp``
and ``tools/quantize/quantize.cpp`` ``load_imatrix``).

* GGUF (``general.type = imatrix``): ``<tensor>.in_sum2`` (Σx² per input column, one row per expert) and
  ``<tensor>.counts`` (tokens per expert); the weight is in_sum2 / lround(count) per expert, 1 for an expert that
  saw no token.  ``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size`` must be present
  (llama-quantize refuses the file otherwise).
* legacy: ``int32 n_entries``, then per entry ``int32 len, name, int32 ncall, int32 nval, float32[nval]`` (values
  are mean x² times ncall, so the weight is value / ncall), then optionally ``int32 chunks, int32 len, dataset``.

Entries are looked up by the GGUF tensor name (``blk.0.attn_q.weight``, ``blk.0.ffn_down_exps.weight``); an entry
must hold ``n_per_row x n_expert`` values.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import ConvertError
from .writer import KV

KV_FILE = "quantize.imatrix.file"
KV_DATASET = "quantize.imatrix.dataset"
KV_ENTRIES = "quantize.imatrix.entries_count"
KV_CHUNKS = "quantize.imatrix.chunks_count"
_TOKEN_EMBD = ("token_embd.weight", "per_layer_token_embd.weight")
_MAX_KV_STRING = 127       # llama-quantize copies file and dataset names into a char[128] override


class Imatrix:
    """Per-column importances by tensor name, as llama-quantize passes them to llama_model_quantize."""

    def __init__(self, path, weights, datasets, chunk_count, legacy):
        self.path = str(path)
        self.weights = weights            # {name: float32 1-D array}
        self.datasets = datasets
        self.chunk_count = chunk_count
        self.legacy = legacy

    def kvs(self):
        """The quantize.imatrix.* keys llama-quantize adds (as key overrides, written after the file's own keys)."""
        kvs = [(KV_FILE, KV.str(_clip(self.path)))]
        if self.datasets:
            kvs.append((KV_DATASET, KV.str(_clip(self.datasets[0]))))
        kvs.append((KV_ENTRIES, KV.u32(len(self.weights))))
        if self.chunk_count > 0:
            kvs.append((KV_CHUNKS, KV.u32(self.chunk_count)))
        return kvs

    def for_tensor(self, name, shape):
        """(weights as [n_expert, n_per_row] or None, warning or None) for an output tensor of numpy ``shape``
        about to be quantized.  No entry: quantized without (llama-quantize says so and goes on).  An entry of
        the wrong length: an error (llama-quantize stops), except for token_embd, which it quantizes without."""
        values = self.weights.get(name)
        n_per_row = int(shape[-1])
        n_mat = int(shape[0]) if len(shape) == 3 else 1
        if values is None:
            return None, f"{self.path}: no importance entry for {name}; it is quantized without one"
        if values.size != n_per_row * n_mat:
            what = f"{n_per_row} columns" + (f" x {n_mat} experts" if n_mat > 1 else "")
            text = (f"{self.path}: the entry for {name} has {values.size} values, the tensor needs {what} = "
                    f"{n_per_row * n_mat} (imatrix computed on another model?)")
            if name in _TOKEN_EMBD:
                return None, text + "; it is quantized without one"
            raise ConvertError(text)
        return values.reshape(n_mat, n_per_row), None


def _clip(text):
    raw = text.encode("utf-8")[:_MAX_KV_STRING]
    return raw.decode("utf-8", errors="ignore")


def load(path) -> Imatrix:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConvertError(f"{path}: cannot read the importance matrix: {e.strerror or e}") from None
    if data[:4] == b"GGUF":
        imatrix = _load_gguf(path)
    else:
        imatrix = _load_legacy(path, data)
    for name, values in imatrix.weights.items():
        if not np.isfinite(values).all():
            bad = values[~np.isfinite(values)][0]
            raise ConvertError(f"{path}: the entry for {name} has a non-finite value ({bad}); llama-quantize "
                               "refuses such a matrix")
    return imatrix


def _load_gguf(path):
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path)
    except (ValueError, KeyError, IndexError, struct.error, OSError) as e:    # gguf-py on a damaged file
        raise ConvertError(f"{path}: not a readable GGUF imatrix ({e})") from None
    fields = reader.fields
    if not reader.tensors:
        raise ConvertError(f"{path}: no data (no tensors in the imatrix file)")
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in fields]
    if missing:
        raise ConvertError(f"{path}: missing imatrix metadata ({', '.join(missing)}); llama-quantize refuses the "
                           "file")
    datasets = []
    field = fields["imatrix.datasets"]
    if field.types == [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        datasets = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    for key in ("imatrix.chunk_count", "imatrix.chunk_size"):     # llama.cpp reads both with gguf_get_val_u32
        if fields[key].types != [GGUFValueType.UINT32]:
            raise ConvertError(f"{path}: {key} must be a UINT32")
    chunk_count = int(fields["imatrix.chunk_count"].parts[-1][0])
    pairs = {}
    for t in reader.tensors:
        for suffix, slot in ((".in_sum2", 0), (".counts", 1)):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
    weights = {}
    for name in sorted(pairs):
        sums, counts = pairs[name]
        if sums is None or counts is None:
            raise ConvertError(f"{path}: mismatched sums and counts for {name} (one of {name}.in_sum2 / "
                               f"{name}.counts is missing)")
        if sums.tensor_type != GGMLQuantizationType.F32 or counts.tensor_type != GGMLQuantizationType.F32:
            raise ConvertError(f"{path}: {name}.in_sum2 and {name}.counts must be F32")
        s = np.asarray(sums.data, dtype=np.float32).reshape(-1)
        c = np.asarray(counts.data, dtype=np.float32).reshape(-1)
        if not c.size or s.size % c.size:
            raise ConvertError(f"{path}: {name}.in_sum2 has {s.size} values, not a multiple of its {c.size} "
                               "counts")
        weights[name] = _gguf_weights(s.reshape(c.size, -1), c)
    return Imatrix(path, weights, datasets, chunk_count, legacy=False)


def _lround(values):
    """std::lround: halves away from zero."""
    v = values.astype(np.float64)
    return np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))


def _gguf_weights(sums, counts):
    """in_sum2 / count per expert row (count = (float) lround(count)); an expert with count <= 0 gets 1."""
    count = _lround(counts).astype(np.float32)
    out = np.ones_like(sums)
    seen = count > 0
    out[seen] = sums[seen] / count[seen, None]
    return out.reshape(-1)


def _load_legacy(path, data):
    pos = 0

    def take(fmt, what):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ConvertError(f"{path}: truncated legacy imatrix: {what} at byte {pos} runs past the end "
                               f"({len(data)} bytes); not a GGUF or imatrix.dat file?")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i", "the entry count")
    if n_entries < 1:
        raise ConvertError(f"{path}: no data (entry count {n_entries}); not an imatrix.dat file?")
    weights = {}
    for i in range(n_entries):
        (length,) = take("<i", f"entry {i + 1}'s name length")
        if length < 0 or pos + length > len(data):
            raise ConvertError(f"{path}: entry {i + 1}: name of {length} bytes at byte {pos} does not fit the "
                               "file; not an imatrix.dat file?")
        name = data[pos:pos + length].split(b"\0")[0].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii", f"entry {i + 1} ({name}) counts")
        if nval < 1:
            raise ConvertError(f"{path}: entry {i + 1} ({name}) has {nval} values")
        if pos + 4 * nval > len(data):
            raise ConvertError(f"{path}: entry {i + 1} ({name}): {nval} values at byte {pos} run past the end "
                               f"({len(data)} bytes)")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        weights[name] = values / np.float32(ncall) if ncall > 0 else values.copy()
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):                       # optional trailer: chunk count, dataset name
        (chunk_count,) = take("<i", "the chunk count")
        if pos + 4 <= len(data):
            (length,) = take("<i", "the dataset name length")
            if 0 < length <= len(data) - pos:
                datasets.append(data[pos:pos + length].split(b"\0")[0].decode("utf-8", errors="replace"))
    return Imatrix(path, weights, datasets, chunk_count, legacy=True)
