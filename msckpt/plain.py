"""Index a plain ``.ckpt``: walk its records and group them into tensors (ckpt-format.md §3-7)."""

from math import prod

from . import dtypes
from .errors import CheckpointError
from .tensor import Tensor
from .wire import Walker

CRC_MARK = b"crc_num"
CRC_TRAILER = 17     # b"crc_num" + the CRC-32 as a 10-byte big-endian integer


def crc_trailer(source):
    """The stored CRC if the file ends with a ``crc_num`` trailer, else None."""
    if source.size >= CRC_TRAILER and source[source.size - CRC_TRAILER:source.size - 10] == CRC_MARK:
        return int.from_bytes(source[source.size - 10:source.size], "big")
    return None


def index(source, end):
    """The tensors of a plain checkpoint whose records occupy bytes [0, end)."""
    walker = Walker(source, source.path, end)
    tensors = []
    group = None        # (first record, [records]) of consecutive same-tag records
    for rec in walker.records():
        if group and rec.tag == group[0].tag and rec.kind == group[0].kind:
            group.append(rec)
            continue
        if group:
            tensors.append(_tensor(source, group))
        group = [rec]
    if group:
        tensors.append(_tensor(source, group))
    return tensors


def _tensor(source, group):
    first, last = group[0], group[-1]
    if first.kind == "maptensor":
        parts = [(p.tensor_type, list(p.dims)) for rec in group for p in rec.parts]
        return Tensor(first.tag, None, (), [], len(group), source, kind="maptensor",
                      offset=first.offset, parts=parts)
    for rec in group:
        if rec.tensor_type != first.tensor_type:
            raise CheckpointError(source.path, f"'{first.tag}': slice records disagree on dtype "
                                  f"({first.tensor_type} vs {rec.tensor_type})", rec.offset)
    dtype = dtypes.lookup(first.tensor_type)
    if dtype is None:
        raise CheckpointError(source.path, f"'{first.tag}': unknown tensor_type '{first.tensor_type}'", first.offset)
    pieces = [(rec.content_offset, rec.content_len) for rec in group]
    nbytes = sum(n for _, n in pieces)
    # Like MindSpore's loader, the shape comes from the last record of the group.
    dims = list(last.dims)
    kind = "tensor"
    if dtype.kind == "str":
        kind = "str"
        if nbytes % 4:
            raise CheckpointError(source.path, f"'{first.tag}': string of {nbytes} bytes is not UTF-32", first.offset)
        return Tensor(first.tag, dtype, (), pieces, len(group), source, kind=kind, offset=first.offset)
    if dims == [0] and nbytes == dtype.itemsize:
        dims = []       # a scalar written by 2020-era MindSpore (ckpt-format.md §4)
    problem = dtypes.shape_problem(dims, dtype.itemsize)
    if problem:
        raise CheckpointError(source.path, f"'{first.tag}': {problem}", first.offset)
    expected = prod(dims) * dtype.itemsize
    if nbytes != expected:
        raise CheckpointError(
            source.path, f"'{first.tag}': {nbytes} content bytes, but {first.tensor_type} {dims} "
            f"needs {expected}", first.offset)
    return Tensor(first.tag, dtype, tuple(dims), pieces, len(group), source, kind=kind, offset=first.offset)
