"""A tensor assembled from blocks ("tiles") that other tensors hold: shards of a distributed save.

Legacy rank trees (``rank_N/`` + strategy, distributed.py) and MindFormers' Checkpoint 2.0 (``iteration_*/`` +
metadata.json, iteration.py) both store a parameter as equal blocks of its full tensor spread over several files.
A TiledTensor knows which block each piece covers and reads pieces only when asked, each for its part of the
requested box only, so a row band or one expert of a tensor of many gigabytes costs just those bytes.
"""

from math import prod

import numpy as np

from . import box as boxes
from .tensor import scalar_value


class TiledTensor:
    """The msckpt Tensor reading interface over tiles: (piece, offset of its block in the full tensor).

    A piece is a msckpt Tensor (or anything with ``shape``, ``records`` and ``read_box``); pieces read with
    positioned reads, so streaming a merged tensor leaves no file pages mapped into the process.
    """
    kind = "tensor"
    offset = 0
    source = None

    def __init__(self, name, dtype, shape, tiles):
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.tiles = sorted(tiles, key=lambda tile: tile[1])

    @property
    def records(self):
        return sum(piece.records for piece, _ in self.tiles)

    @property
    def n_elements(self):
        return prod(self.shape)

    @property
    def nbytes(self):
        return self.n_elements * self.dtype.itemsize

    def byte_ranges(self):
        return None          # assembled from several places: no single byte range to copy

    def array(self):
        """The full tensor (a new array; BFloat16 as raw uint16 bits like Tensor.array())."""
        return self.read_box(())

    def rows(self, start, stop):
        """Rows [start, stop) along axis 0, read from only the pieces that cover them."""
        return self.read_box(((start, stop),))

    def read_box(self, box):
        """A box of the tensor (msckpt/box.py), each covering piece read for its part of it only."""
        box = boxes.normalize(box, self.shape)
        inside = [(piece, offset) for piece, offset in self.tiles
                  if all(o <= a and b <= o + n for (a, b), o, n in zip(box, offset, piece.shape))]
        if inside and all(a < b for a, b in box):
            # within one piece (a row band inside a block, one expert's slice): its read is the answer, no copy
            piece, offset = inside[0]
            return piece.read_box(tuple((a - o, b - o) for (a, b), o in zip(box, offset)))
        out = np.empty(tuple(b - a for a, b in box), self.dtype.np_dtype)
        for piece, offset in self.tiles:
            part = [(max(a, o), min(b, o + n)) for (a, b), o, n in zip(box, offset, piece.shape)]
            if any(lo >= hi for lo, hi in part):
                continue
            local = tuple((lo - o, hi - o) for (lo, hi), o in zip(part, offset))
            where = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(part, box))
            out[where] = piece.read_box(local)
        return out

    def raw(self):
        return self.array().tobytes()

    def string(self):
        raise TypeError(f"{self.name} is not a string entry")

    def value(self):
        """A Python value for a one-element tensor."""
        return scalar_value(self)
