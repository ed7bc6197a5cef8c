"""Reading an N-dimensional box (a slice on every axis) of a C-order tensor stored as flat bytes.

The transforms of mixture-of-experts and MLA tensors read one expert, or a block of one expert's rows or columns,
out of tensors of many gigabytes; sharded checkpoints assemble such boxes from pieces held by several files. Both
come down to this: given a way to read a byte range of the tensor, fill an array with the box, reading only what it
needs (a contiguous cover when that costs little more, the box's own runs of bytes otherwise).
"""

from math import prod

import numpy as np

# read the contiguous cover of a box in one go when it is at most this many times the box (or this small)
_COVER_FACTOR = 2
_COVER_BYTES = 8 << 20


def normalize(box, shape):
    """A box as a tuple of (start, stop) per axis, clipped to ``shape``; missing trailing axes are whole.

    Accepts slices (step 1), (start, stop) pairs or None (the whole axis)."""
    box = tuple(box) if box is not None else ()
    if len(box) > len(shape):
        raise IndexError(f"box has {len(box)} axes but the tensor has {len(shape)}")
    out = []
    for axis, size in enumerate(shape):
        part = box[axis] if axis < len(box) else None
        if part is None:
            start, stop = 0, size
        elif isinstance(part, slice):
            if part.step not in (None, 1):
                raise IndexError("box slices must have step 1")
            start, stop, _ = part.indices(size)
        else:
            start, stop, _ = slice(*part).indices(size)
        out.append((start, max(start, stop)))
    return tuple(out)


def read_box(shape, dtype, box, read_bytes):
    """The box of a C-order tensor as a new array.

    ``read_bytes(offset, buffer)`` fills ``buffer`` (a writable uint8 memoryview) with the tensor's bytes starting
    at byte ``offset`` of its element data."""
    dtype = np.dtype(dtype)
    box = normalize(box, shape)
    out = np.empty(tuple(b - a for a, b in box), dtype)
    if out.size:
        _fill(shape, dtype.itemsize, box, read_bytes, out, 0)
    return out


def _fill(shape, itemsize, box, read_bytes, out, base):
    """Fill ``out`` with ``box`` of the (sub)tensor of ``shape`` whose bytes start at ``base``."""
    # the trailing axes the box covers whole form runs of contiguous bytes
    k = len(shape)
    while k > 0 and box[k - 1] == (0, shape[k - 1]):
        k -= 1
    strides = [prod(shape[i + 1:]) * itemsize for i in range(len(shape))]
    if k <= 1:
        # the box is one contiguous range: whole trailing axes, a range on (at most) the first axis
        start = box[0][0] if shape else 0
        read_bytes(base + start * (strides[0] if shape else 0), _bytes(out))
        return
    # contiguous cover: from the box's first element to its last
    first = sum(a * s for (a, _), s in zip(box, strides))
    last = sum((b - 1) * s for (_, b), s in zip(box, strides)) + itemsize
    box_bytes = out.size * itemsize
    if last - first <= max(_COVER_BYTES, _COVER_FACTOR * box_bytes):
        cover = np.empty((last - first) // itemsize, out.dtype)
        read_bytes(base + first, _bytes(cover))
        # the box's elements sit in the cover at the tensor's own strides, from its first element on
        out[...] = np.lib.stride_tricks.as_strided(cover, shape=out.shape, strides=strides, writeable=False)
        return
    # otherwise one sub-box per index of the first axis
    for j, index in enumerate(range(*box[0])):
        _fill(shape[1:], itemsize, box[1:], read_bytes, out[j], base + index * strides[0])


def _bytes(array):
    return memoryview(array.reshape(-1).view(np.uint8))


def slice_array(array, box):
    """``box`` of an in-memory array (a view)."""
    box = normalize(box, array.shape)
    return array[tuple(slice(a, b) for a, b in box)]
