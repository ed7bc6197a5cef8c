"""Index a ``.safetensors`` file (as MindSpore writes it; ckpt-format.md §9).

Layout: an 8-byte little-endian header length, a JSON header, then the data section. Every offset in
the header is checked against the file before use.
"""

from math import prod

from . import dtypes
from .errors import CheckpointError
from .safeio import parse_json
from .tensor import Tensor

MAX_HEADER = 100 * 1024 * 1024     # MindSpore's own parser refuses larger headers too


def looks_like(source):
    if source.size < 10:
        return False
    n = int.from_bytes(source[0:8], "little")
    return n + 8 <= source.size and source[8:9] == b"{"


def index(source):
    """(tensors in data order, metadata dict)."""
    path = source.path
    n = int.from_bytes(source[0:8], "little")
    if n > MAX_HEADER:
        raise CheckpointError(path, f"safetensors header of {n} bytes is implausibly large", 0)
    try:
        text = bytes(source[8:8 + n]).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(path, f"safetensors header is not valid JSON (invalid UTF-8 at byte {8 + err.start})",
                              8) from None
    header = parse_json(text, path, what="safetensors header", offset=8)
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object", 8)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(path, "safetensors __metadata__ is not an object", 8)
    data_start = 8 + n
    data_size = source.size - data_start
    tensors = []
    for name, info in header.items():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointError(path, f"safetensors entry name {name!r} is not valid Unicode", 8) from None
        tensors.append(_tensor(source, name, info, meta, data_start, data_size))
    tensors.sort(key=lambda t: t.pieces[0][0])
    return tensors, meta


def _tensor(source, name, info, meta, data_start, data_size):
    path = source.path

    def bad(what):
        return CheckpointError(path, f"safetensors entry '{name}': {what}", 8)

    if not isinstance(info, dict):
        raise bad("is not an object")
    dtype = dtypes.SAFETENSORS.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise bad(f"unsupported dtype {info.get('dtype')!r}")
    if meta.get(name) == "Int4":        # MindSpore stores qint4x2 as I8 and flags it in the metadata
        dtype = dtypes.DTYPES["Int4"]
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise bad(f"invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise bad(f"data_offsets {offsets!r} outside the {data_size}-byte data section")
    problem = dtypes.shape_problem(shape, dtype.itemsize)
    if problem:
        raise bad(problem)
    nbytes = offsets[1] - offsets[0]
    if nbytes != prod(shape) * dtype.itemsize:
        raise bad(f"{nbytes} bytes, but {info['dtype']} {shape} needs {prod(shape) * dtype.itemsize}")
    return Tensor(name, dtype, tuple(shape), [(data_start + offsets[0], nbytes)], 1, source,
                  offset=data_start + offsets[0])
