"""A tensor entry of a checkpoint: where its bytes are, and numpy access to them."""

from dataclasses import dataclass, field
from math import prod

import numpy as np

from . import box as boxes


def scalar_value(tensor):
    """A one-element numeric tensor as a Python value (BFloat16 bits widened to a float)."""
    if tensor.n_elements != 1 or tensor.dtype.kind == "raw":
        raise TypeError(f"{tensor.name} is not a scalar")
    value = tensor.array().reshape(())
    if tensor.dtype.name == "BFloat16":
        return float((value.astype(np.uint32) << 16).view(np.float32))
    return value.item()


@dataclass
class Tensor:
    """One named entry: a tensor whose bytes may be spread over several records ("pieces").

    ``pieces`` are (offset, length) byte ranges in ``source`` (the open checkpoint's data file), in
    order; their concatenation is the C-order little-endian element bytes. Nothing is read until asked.
    """
    name: str
    dtype: object                 # msckpt.dtypes.DType, or None for a MapTensor
    shape: tuple
    pieces: list
    records: int
    source: object = field(repr=False, default=None)
    kind: str = "tensor"          # "tensor", "str" or "maptensor"
    offset: int = 0               # byte offset of the first record (for messages)
    parts: list = field(default_factory=list, repr=False)   # maptensor: [(dtype name, dims)] per part

    @property
    def nbytes(self):
        return sum(length for _, length in self.pieces)

    @property
    def n_elements(self):
        return prod(self.shape)

    def byte_ranges(self):
        """Non-empty (offset, length) ranges in ``source``, for copying straight from the file.

        Tensors assembled from several files (e.g. merged shards) have no such ranges and return None.
        """
        return [(off, n) for off, n in self.pieces if n]

    def raw(self):
        """The element bytes: a zero-copy memoryview when stored in one piece."""
        self._check_readable()
        ranges = self.byte_ranges()
        if len(ranges) == 1:
            off, n = ranges[0]
            return self.source.view(off, n)
        return b"".join(bytes(self.source.view(off, n)) for off, n in ranges)

    def array(self):
        """The tensor as a numpy array (read-only zero-copy view for single-piece tensors).

        BFloat16 comes back as its raw uint16 bits; Int4/Float8/HiFloat8 as raw uint8 bytes.
        """
        if self.kind == "str":
            raise TypeError(f"{self.name} is a string entry; use .string()")
        self._check_readable()
        dtype = self.dtype.np_dtype
        ranges = self.byte_ranges()
        if len(ranges) <= 1:
            if not ranges:
                return np.zeros(self.shape, dtype)
            off, n = ranges[0]
            return np.frombuffer(self.source.view(off, n), dtype=dtype).reshape(self.shape)
        out = np.empty(self.shape, dtype)
        flat = out.reshape(-1).view(np.uint8)
        pos = 0
        for off, n in ranges:
            flat[pos:pos + n] = np.frombuffer(self.source.view(off, n), dtype=np.uint8)
            pos += n
        return out

    def rows(self, start, stop):
        """Rows [start, stop) along axis 0 as a new array, reading only the bytes they need.

        Read with positioned reads, not through the memory map: streaming a whole model row band by row
        band then leaves no file pages mapped into the process (they would count as its memory).
        """
        return self.read_box(((start, stop),))

    def read_box(self, box):
        """The box ``box`` (a (start, stop) pair or slice per axis; missing trailing axes whole) as a new array,
        reading only the bytes it needs (msckpt/box.py)."""
        self._check_readable()
        return boxes.read_box(self.shape, self.dtype.np_dtype, box, self._read_bytes)

    def _read_bytes(self, offset, buffer):
        """Fill ``buffer`` with the element bytes from byte ``offset`` of the tensor on, across its pieces."""
        want_lo, want_hi = offset, offset + len(buffer)
        pos = 0                       # byte position of the current piece within the tensor
        for off, length in self.byte_ranges():
            lo, hi = max(pos, want_lo), min(pos + length, want_hi)
            if lo < hi:
                self.source.read_into(off + lo - pos, buffer[lo - want_lo:hi - want_lo])
            pos += length
            if pos >= want_hi:
                break

    def string(self):
        """A ``str`` entry's text (stored as UTF-32LE, NUL-padded)."""
        if self.kind != "str":
            raise TypeError(f"{self.name} is not a string entry")
        return bytes(self.raw()).decode("utf-32-le", errors="replace").rstrip("\x00")

    def value(self):
        """A Python value for strings and one-element tensors (training scalars)."""
        self._check_readable()
        if self.kind == "str":
            return self.string()
        return scalar_value(self)

    def _check_readable(self):
        if self.kind == "maptensor":
            raise TypeError(f"{self.name} is a MapTensor (a MapParameter table), which ms2gguf does not read")
