"""Per-preset tensor-type tables from the real ``llama_model_quantize`` (llama.cpp's llama-quantize), for the tests.

    python tests/gen_quant_tables.py MODEL.gguf --presets q4_k_m,q8_0 [--imatrix FILE] --out TABLE.json \
        [--keep DIR] [--threads N]

MODEL.gguf is an f16 or f32 GGUF (e.g. written by ms2gguf).  For each preset the script runs llama.cpp's
``llama_model_quantize`` on it and reads the result back with gguf-py; TABLE.json is
``{preset: {tensor name: ggml type name}}``.  ``--keep DIR`` keeps the quantized files (``DIR/<preset>.gguf``), so
their bytes and metadata can be compared too.

It needs ``llama-cpp-python`` (whose library exports ``llama_model_quantize``; the ``xllamacpp`` test wheel does not)
and so runs in its own venv, e.g. ``/work/venv-lcpp`` (built from the PyPI sdist: see the README of the tests).

``--imatrix FILE`` does what llama-quantize's ``--imatrix`` does before it calls ``llama_model_quantize``
(``tools/quantize/quantize.cpp`` ``load_imatrix`` and ``common/imatrix-loader.cpp``): read the GGUF imatrix
(``<name>.in_sum2`` / ``<name>.counts``, per expert) or the legacy ``imatrix.dat``, turn it into per-column
weights (sum / count per expert; 1 where an expert has count 0; legacy: value / ncall), pass them by tensor name,
and add the ``quantize.imatrix.*`` metadata as key overrides.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"


class Imatrix:
    """Per-column weights by tensor name, the datasets and the chunk count, as llama-quantize loads them."""

    def __init__(self, weights, datasets, chunk_count):
        self.weights = weights          # {name: float32 array}
        self.datasets = datasets
        self.chunk_count = chunk_count


def load_imatrix(path) -> Imatrix:
    try:
        reader = GGUFReader(path)
    except Exception:       # not a GGUF file: llama.cpp then tries the legacy format
        return _load_legacy(path)
    fields = reader.fields
    datasets = [str(bytes(fields["imatrix.datasets"].parts[i]), "utf-8")
                for i in fields["imatrix.datasets"].data] if "imatrix.datasets" in fields else []
    has_metadata = all(k in fields for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"))
    if not has_metadata:
        raise SystemExit(f"{path}: missing imatrix metadata (llama-quantize refuses the file)")
    chunk_count = int(fields["imatrix.chunk_count"].parts[-1][0])
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    weights = {}
    for name in sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith((".in_sum2", ".counts"))}):
        sums, counts = tensors.get(name + ".in_sum2"), tensors.get(name + ".counts")
        if sums is None or counts is None:
            raise SystemExit(f"{path}: mismatched sums and counts for {name}")
        per_expert = sums.reshape(len(counts), -1)
        out = np.empty_like(per_expert)
        for j, c in enumerate(counts):
            count = np.float32(math.copysign(math.floor(abs(float(c)) + 0.5), float(c)))   # std::lround (halves
            # away from zero; Python's round() would round them to even), then (float)
            out[j] = per_expert[j] / count if count > 0 else np.float32(1.0)
        weights[name] = out.reshape(-1)
    return Imatrix(weights, datasets, chunk_count)


def _load_legacy(path) -> Imatrix:
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise SystemExit(f"{path}: no data")
    weights = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = data[pos:pos + length].split(b"\0")[0].decode()
        pos += length
        ncall, nval = take("<ii")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        weights[name] = values / np.float32(ncall) if ncall > 0 else values.copy()
    chunk_count, datasets = 0, []
    if pos < len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0:
                datasets.append(data[pos:pos + length].split(b"\0")[0].decode())
    return Imatrix(weights, datasets, chunk_count)


def quantize(llama_cpp, src, dst, preset, imatrix=None, imatrix_file=None, threads=0):
    """Run llama_model_quantize(src -> dst) for one preset (``q4_k_m``, ``Q8_0``, ...)."""
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset.upper()}", None)
    if ftype is None:
        raise SystemExit(f"unknown preset {preset!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    keep = []          # the ctypes objects must outlive the call
    if imatrix is not None:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.weights) + 1))()
        for i, (name, values) in enumerate(imatrix.weights.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix.weights)].name = None       # terminator
        params.imatrix = entries
        overrides = [(KV_IMATRIX_FILE, str(imatrix_file))]
        if imatrix.datasets:
            overrides.append((KV_IMATRIX_DATASET, imatrix.datasets[0]))
        overrides.append((KV_IMATRIX_ENTRIES, len(imatrix.weights)))
        if imatrix.chunk_count > 0:
            overrides.append((KV_IMATRIX_CHUNKS, imatrix.chunk_count))
        kvo = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()
        for i, (key, value) in enumerate(overrides):
            kvo[i].key = key.encode()
            if isinstance(value, str):
                kvo[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                kvo[i].value.val_str = value.encode()[:127]
            else:
                kvo[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
                kvo[i].value.val_i64 = value
        kvo[len(overrides)].key = b""                   # terminator
        params.kv_overrides = kvo
        keep += [entries, kvo]
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for {preset} (status {rc})")


def tensor_types(path):
    return {t.name: GGMLQuantizationType(t.tensor_type).name for t in GGUFReader(path).tensors}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="f16 or f32 GGUF")
    ap.add_argument("--presets", required=True, help="comma-separated, e.g. q4_k_m,q6_k,q8_0,q4_0")
    ap.add_argument("--imatrix", help="GGUF imatrix or legacy imatrix.dat")
    ap.add_argument("--out", required=True, help="JSON table to write")
    ap.add_argument("--keep", help="directory for the quantized files (default: deleted)")
    ap.add_argument("--threads", type=int, default=0, help="llama_model_quantize's nthread (0 = all cores)")
    args = ap.parse_args(argv)

    import llama_cpp      # llama-cpp-python; imported late so --help works anywhere

    llama_cpp.llama_backend_init()
    imatrix = load_imatrix(args.imatrix) if args.imatrix else None
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(args.keep) if args.keep else Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            dst = outdir / f"{preset.lower()}.gguf"
            quantize(llama_cpp, args.model, dst, preset, imatrix, args.imatrix, args.threads)
            table[preset.lower()] = tensor_types(dst)
    Path(args.out).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(table)} presets", file=sys.stderr)


if __name__ == "__main__":
    main()
