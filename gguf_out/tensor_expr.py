"""Lazy tensor expressions: how a GGUF tensor is made from checkpoint tensors, read one box at a time.

A map rule turns checkpoint tensors into GGUF tensors by reshaping, slicing, transposing, picking rows, stacking
or concatenating several sources, or scaling (maps/*.json ``steps``, gguf_out/steps.py). Each GGUF tensor is an
expression tree over its sources; nothing is read until the writer asks for a box (a (start, stop) range on every
axis, msckpt/box.py) of the result. Every node maps the box it is asked for to the boxes of its children, so a band
of one expert of a 15 GB expert tensor reads just the bytes that band needs, and memory is bounded by the band
whatever the tensor's size.

Structural nodes keep the source's dtype (BFloat16 stays raw uint16 bits, so a bf16 -> bf16 conversion is exact);
arithmetic nodes (``Scale``) compute in float32.
"""

from itertools import product
from math import prod

import numpy as np

from msckpt.box import normalize

FLOAT32 = "Float32"


def to_float32(block, dtype_name):
    """Values of a block in the checkpoint's dtype as float32 (BFloat16 arrives as its uint16 bits)."""
    if dtype_name == FLOAT32:
        return block
    if dtype_name == "BFloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32)


class Expr:
    shape: tuple
    dtype_name: str

    def read(self, box):
        """The values in ``box`` (normalized: a (start, stop) pair per axis) as a new or owned array."""
        raise NotImplementedError

    def read_all(self):
        return self.read(normalize(None, self.shape))

    def sources(self):
        """The checkpoint tensors this expression reads, in order."""
        return [t for child in self.children for t in child.sources()]

    children = ()

    def byte_ranges(self):
        """The file byte ranges whose concatenation is this tensor, when it is exactly one source read whole."""
        return None


class Source(Expr):
    """A checkpoint tensor (or a generated one) read as it is."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = tuple(int(d) for d in tensor.shape)
        self.dtype_name = tensor.dtype.name

    def read(self, box):
        return self.tensor.read_box(box)

    def sources(self):
        return [self.tensor]

    def byte_ranges(self):
        return self.tensor.byte_ranges()

    def __repr__(self):
        return f"Source({self.tensor.name})"


class Reshape(Expr):
    """The child in another shape with the same element order (C order): leading axes regrouped, e.g.
    ``[E*H, 2F] -> [E, H, 2F]``. A box of the result becomes runs of consecutive leading positions, each read as
    the boxes of the child that cover it."""

    def __init__(self, child, shape):
        shape = tuple(int(d) for d in shape)
        if prod(shape) != prod(child.shape):
            raise ValueError(f"cannot reshape {list(child.shape)} to {list(shape)}")
        self.child, self.shape, self.dtype_name = child, shape, child.dtype_name
        self.children = (child,)
        # the trailing axes both shapes share are passed through; only the leading ones are regrouped
        k = 0
        while (k < min(len(shape), len(child.shape)) - 1 and shape[len(shape) - 1 - k] ==
               child.shape[len(child.shape) - 1 - k]):
            k += 1
        self._lead, self._child_lead = shape[:len(shape) - k], child.shape[:len(child.shape) - k]
        self._tail = k

    def read(self, box):
        nl = len(self._lead)
        lead_box, tail_box = box[:nl], box[nl:]
        out = np.empty(tuple(b - a for a, b in box), _np_dtype(self))
        if out.size == 0:
            return out
        for where, lo, hi in _runs(self._lead, lead_box):
            parts = [self.child.read(b + tail_box) for b in flat_to_boxes(self._child_lead, lo, hi)]
            tail_shape = tuple(b - a for a, b in tail_box)
            run = np.concatenate([p.reshape((-1,) + tail_shape) for p in parts]) if len(parts) > 1 else \
                parts[0].reshape((-1,) + tail_shape)
            out[where] = run.reshape(out[where].shape)
        return out

    def __repr__(self):
        return f"Reshape({self.child!r}, {list(self.shape)})"


class Slice(Expr):
    """A range of the child along one axis."""

    def __init__(self, child, axis, start, stop):
        axis %= len(child.shape)
        if not 0 <= start <= stop <= child.shape[axis]:
            raise ValueError(f"slice {start}:{stop} out of range for axis {axis} of {list(child.shape)}")
        self.child, self.axis, self.start = child, axis, start
        self.children = (child,)
        self.shape = child.shape[:axis] + (stop - start,) + child.shape[axis + 1:]
        self.dtype_name = child.dtype_name

    def read(self, box):
        a, b = box[self.axis]
        return self.child.read(box[:self.axis] + ((a + self.start, b + self.start),) + box[self.axis + 1:])

    def __repr__(self):
        return f"Slice({self.child!r}, axis {self.axis}, {self.start}:{self.start + self.shape[self.axis]})"


class Take(Expr):
    """Chosen positions of the child along one axis (index arrays: fused-tensor splits, rope permutations).

    The transforms it serves reorder locally (within a head or a group), so a band of the result comes from a
    narrow band of the child; positions far apart are read as separate bands."""

    def __init__(self, child, axis, indices):
        axis %= len(child.shape)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (len(indices) and (indices.min() < 0 or indices.max() >= child.shape[axis])):
            raise ValueError(f"indices out of range for axis {axis} of {list(child.shape)}")
        self.child, self.axis, self.indices = child, axis, indices
        self.children = (child,)
        self.shape = child.shape[:axis] + (len(indices),) + child.shape[axis + 1:]
        self.dtype_name = child.dtype_name

    def read(self, box):
        a, b = box[self.axis]
        idx = self.indices[a:b]
        if len(idx) == 0:
            return np.empty(tuple(hi - lo for lo, hi in box), _np_dtype(self))
        pieces, positions = [], []
        for lo, hi in _clusters(idx):
            sub = box[:self.axis] + ((lo, hi),) + box[self.axis + 1:]
            pieces.append(self.child.read(sub))
            positions.append(lo)
        if len(pieces) == 1:
            return np.take(pieces[0], idx - positions[0], axis=self.axis)
        # several bands: index into their concatenation
        offsets = np.cumsum([0] + [p.shape[self.axis] for p in pieces[:-1]])
        starts = np.asarray(positions)
        which = np.searchsorted(starts, idx, side="right") - 1
        return np.take(np.concatenate(pieces, axis=self.axis), offsets[which] + idx - starts[which], axis=self.axis)

    def __repr__(self):
        return f"Take({self.child!r}, axis {self.axis}, {len(self.indices)} positions)"


class Transpose(Expr):
    """The child's axes in another order (numpy ``transpose(axes)``)."""

    def __init__(self, child, axes):
        axes = tuple(int(a) % len(child.shape) for a in axes)
        if sorted(axes) != list(range(len(child.shape))):
            raise ValueError(f"bad axes {list(axes)} for a {len(child.shape)}-axis tensor")
        self.child, self.axes = child, axes
        self.children = (child,)
        self.shape = tuple(child.shape[a] for a in axes)
        self.dtype_name = child.dtype_name

    def read(self, box):
        child_box = [None] * len(self.axes)
        for i, a in enumerate(self.axes):
            child_box[a] = box[i]
        return np.ascontiguousarray(self.child.read(tuple(child_box)).transpose(self.axes))

    def __repr__(self):
        return f"Transpose({self.child!r}, {list(self.axes)})"


class Stack(Expr):
    """Several tensors of one shape stacked along a new leading axis (per-expert tensors -> one 3-D tensor)."""

    def __init__(self, children):
        children = _common_dtype(list(children))
        if not children or any(c.shape != children[0].shape for c in children):
            raise ValueError("stacked tensors must have the same shape")
        self.children = tuple(children)
        self.shape = (len(children),) + children[0].shape
        self.dtype_name = children[0].dtype_name

    def read(self, box):
        (a, b), rest = box[0], box[1:]
        out = np.empty(tuple(hi - lo for lo, hi in box), _np_dtype(self))
        for j, i in enumerate(range(a, b)):
            out[j] = self.children[i].read(rest)
        return out

    def __repr__(self):
        return f"Stack({len(self.children)} x {list(self.children[0].shape)})"


class Concat(Expr):
    """Several tensors joined along one axis (e.g. separate gate and up halves into one fused tensor, or each
    head's rows from two tensors)."""

    def __init__(self, children, axis=0):
        children = _common_dtype(list(children))
        axis %= len(children[0].shape) if children else 1
        rest = [c.shape[:axis] + c.shape[axis + 1:] for c in children]
        if not children or any(r != rest[0] for r in rest):
            raise ValueError(f"concatenated tensors must agree on every axis but axis {axis}")
        self.children, self.axis = tuple(children), axis
        shape = list(children[0].shape)
        shape[axis] = sum(c.shape[axis] for c in children)
        self.shape = tuple(shape)
        self.dtype_name = children[0].dtype_name

    def read(self, box):
        ax = self.axis
        a, b = box[ax]
        parts, start = [], 0
        for child in self.children:
            lo, hi = max(a, start), min(b, start + child.shape[ax])
            if lo < hi:
                parts.append(child.read(box[:ax] + ((lo - start, hi - start),) + box[ax + 1:]))
            start += child.shape[ax]
        if not parts:
            return np.empty(tuple(hi - lo for lo, hi in box), _np_dtype(self))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=ax)

    def __repr__(self):
        return f"Concat({len(self.children)} tensors, axis {self.axis})"


class ToFloat32(Expr):
    """The child's values as float32 (to combine tensors of different dtypes)."""

    def __init__(self, child):
        self.child = child
        self.children = (child,)
        self.shape, self.dtype_name = child.shape, FLOAT32

    def read(self, box):
        return to_float32(self.child.read(box), self.child.dtype_name)

    def __repr__(self):
        return f"ToFloat32({self.child!r})"


class Scale(ToFloat32):
    """The child multiplied by a constant, in float32 (e.g. a routing scale folded into the expert down
    projections)."""

    def __init__(self, child, factor):
        super().__init__(child)
        self.factor = float(factor)

    def read(self, box):
        return super().read(box) * np.float32(self.factor)

    def __repr__(self):
        return f"Scale({self.child!r}, {self.factor})"


# ---------------------------------------------------------------------------------------------------------------
# box arithmetic


def flat_to_boxes(shape, lo, hi):
    """Boxes of ``shape`` that cover exactly the flat (C-order) positions [lo, hi), in order."""
    if hi <= lo:
        return []
    if len(shape) == 1:
        return [((lo, hi),)]
    inner = prod(shape[1:])
    first, last = lo // inner, (hi - 1) // inner
    if first == last:                            # within one position of the first axis
        return [((first, first + 1),) + b for b in flat_to_boxes(shape[1:], lo - first * inner, hi - first * inner)]
    boxes = []
    start = first
    if lo % inner:                               # a partial head
        boxes += [((first, first + 1),) + b for b in flat_to_boxes(shape[1:], lo % inner, inner)]
        start = first + 1
    end = last + 1 if hi % inner == 0 else last  # whole positions of the first axis in between
    if start < end:
        boxes.append(((start, end),) + tuple((0, n) for n in shape[1:]))
    if hi % inner:                               # a partial tail
        boxes += [((last, last + 1),) + b for b in flat_to_boxes(shape[1:], 0, hi % inner)]
    return boxes


def _runs(shape, box):
    """(index into the box's array, flat lo, flat hi) for each run of consecutive flat positions of ``box``."""
    k = len(shape) - 1
    while k > 0 and box[k] == (0, shape[k]):
        k -= 1
    inner = prod(shape[k + 1:])
    strides = [prod(shape[i + 1:]) for i in range(len(shape))]
    a, b = box[k]
    for prefix in product(*(range(lo, hi) for lo, hi in box[:k])):
        lo = sum(i * s for i, s in zip(prefix, strides)) + a * inner
        where = tuple(i - lo_ for i, (lo_, _) in zip(prefix, box[:k]))
        yield where, lo, lo + (b - a) * inner


def _clusters(idx):
    """Ranges [lo, hi) covering the positions ``idx``, split where reading the gap would cost more than the
    positions themselves."""
    values = np.unique(idx)
    gaps = np.nonzero(np.diff(values) > max(64, len(values)))[0]
    starts = np.concatenate([[0], gaps + 1])
    ends = np.concatenate([gaps, [len(values) - 1]])
    return [(int(values[s]), int(values[e]) + 1) for s, e in zip(starts, ends)]


def _common_dtype(children):
    names = {c.dtype_name for c in children}
    if len(names) > 1:      # e.g. a bf16 tensor stacked with an f32 one: compute in float32
        children = [c if c.dtype_name == FLOAT32 else ToFloat32(c) for c in children]
    return children


_NP = {"Float32": np.float32, "Float16": np.float16, "BFloat16": np.uint16, "Float64": np.float64}


def _np_dtype(expr):
    return _NP[expr.dtype_name]
