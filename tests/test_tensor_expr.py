"""Lazy tensor expressions (gguf_out/tensor_expr.py) and map steps (gguf_out/steps.py) against numpy.

Every node must give, for any box, exactly numpy's result of the same operations on the whole array: a wrong box
mapping (an off-by-one at an expert boundary, a transposed box, a run that crosses a leading position) shows up
as a mismatch on some random box.
"""

import numpy as np
import pytest

from gguf_out import steps, tensor_expr as X
from gguf_out.errors import ConvertError
from msckpt.box import slice_array
from msckpt.dtypes import DTYPES


class ArrayTensor:
    """An in-memory tensor with the reader's interface; counts the elements it is asked for."""

    def __init__(self, array, name="t"):
        self.a, self.shape, self.name = array, array.shape, name
        self.dtype = DTYPES["Float32"] if array.dtype == np.float32 else DTYPES["BFloat16"]
        self.read_elements = 0

    def read_box(self, box):
        part = slice_array(self.a, box).copy()
        self.read_elements += part.size
        return part

    def byte_ranges(self):
        return None


RNG = np.random.default_rng(1)


def random_box(shape):
    box = []
    for n in shape:
        start = int(RNG.integers(0, n + 1))
        box.append((start, int(RNG.integers(start, n + 1))))
    return tuple(box)


def assert_reads_like(expr, ref, n=300):
    assert expr.shape == ref.shape
    for _ in range(n):
        box = random_box(ref.shape)
        got, want = expr.read(box), ref[tuple(slice(a, b) for a, b in box)]
        assert got.shape == want.shape and np.array_equal(got, want), (expr, box)
    assert np.array_equal(expr.read_all(), ref)


def src(array):
    return X.Source(ArrayTensor(array))


def test_expert_views_of_mcore_weight1():
    E, H, F = 3, 5, 4
    w1 = RNG.standard_normal((E * H, 2 * F)).astype(np.float32)
    as_3d = X.Reshape(src(w1), (E, H, 2 * F))
    assert_reads_like(as_3d, w1.reshape(E, H, 2 * F))
    gate = X.Transpose(X.Slice(as_3d, 2, 0, F), (0, 2, 1))
    up = X.Transpose(X.Slice(as_3d, 2, F, 2 * F), (0, 2, 1))
    assert_reads_like(gate, w1.reshape(E, H, 2 * F)[:, :, :F].transpose(0, 2, 1))
    assert_reads_like(up, w1.reshape(E, H, 2 * F)[:, :, F:].transpose(0, 2, 1))


@pytest.mark.parametrize("shape", [(6, 20), (2, 12, 5), (120,), (4, 6, 5), (24, 5), (2, 3, 20)])
def test_reshape_any_regrouping(shape):
    a = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert_reads_like(X.Reshape(src(a), shape), a.reshape(shape))
    assert_reads_like(X.Reshape(src(a.reshape(shape)), (2, 3, 4, 5)), a)


def test_take_reads_far_apart_positions_as_separate_bands():
    a = RNG.standard_normal((300, 3)).astype(np.float32)
    idx = np.concatenate([np.arange(0, 4), np.arange(200, 204)])
    tensor = ArrayTensor(a)
    expr = X.Take(X.Source(tensor), 0, idx)
    assert_reads_like(expr, a[idx])
    tensor.read_elements = 0
    expr.read_all()
    assert tensor.read_elements == 8 * 3       # not the 204 rows between the two bands
    perm = RNG.permutation(24)
    b = RNG.standard_normal((24, 5)).astype(np.float32)
    assert_reads_like(X.Take(src(b), 0, perm), b[perm])
    c = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    assert_reads_like(X.Take(src(c), 2, [3, 0, 1]), c[:, :, [3, 0, 1]])


def test_stack_concat_scale_transpose():
    a = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert_reads_like(X.Stack([src(a[i]) for i in range(2)]), a)
    assert_reads_like(X.Concat([src(a[0]), src(a[1])]), a.reshape(6, 4, 5))
    assert_reads_like(X.Scale(src(a), 2.5), a * np.float32(2.5))
    assert_reads_like(X.Transpose(src(a), (3, 1, 0, 2)), a.transpose(3, 1, 0, 2))


def test_mixed_dtypes_are_combined_in_float32():
    f32 = RNG.standard_normal((3, 4)).astype(np.float32)
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
    stacked = X.Stack([X.Source(ArrayTensor(bf16)), X.Source(ArrayTensor(f32))])
    assert stacked.dtype_name == "Float32"
    want = np.stack([(bf16.astype(np.uint32) << 16).view(np.float32), f32])
    assert np.array_equal(stacked.read_all(), want)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)])
def test_flat_to_boxes_covers_exactly(shape):
    n = int(np.prod(shape))
    positions = np.arange(n).reshape(shape)
    for lo in range(n + 1):
        for hi in range(lo, n + 1):
            covered = []
            for box in X.flat_to_boxes(shape, lo, hi):
                covered += positions[tuple(slice(a, b) for a, b in box)].reshape(-1).tolist()
            assert covered == list(range(lo, hi)), (shape, lo, hi)


def test_steps_build_the_expressions_maps_ask_for():
    E, H, F = 4, 6, 3
    w1 = RNG.standard_normal((E * H, 2 * F)).astype(np.float32)
    hp = {"n_expert": E, "hidden_size": H, "expert_ffn_size": F, "fold": 1.5}
    ctx = steps.StepContext(hp)
    recipe = [{"reshape": ["n_expert", "hidden_size", "2*expert_ffn_size"]}, {"split": {"axis": 2, "parts": 2}},
              {"transpose": [0, 2, 1]}, {"each": [[], [{"scale": "fold"}]]}]
    assert steps.fan_out(recipe, "test") == 2
    (gate, _), (up, what) = steps.apply(recipe, src(w1), ctx, "w1")
    ref = w1.reshape(E, H, 2 * F)
    assert_reads_like(gate, ref[:, :, :F].transpose(0, 2, 1), n=50)
    assert_reads_like(up, ref[:, :, F:].transpose(0, 2, 1) * np.float32(1.5), n=50)
    assert "x 1.5" in what
    with pytest.raises(ConvertError, match="needs missing_size"):
        steps.apply([{"reshape": ["missing_size", -1]}], src(w1), ctx, "w1")
    with pytest.raises(ConvertError, match="does not split into 5"):
        steps.apply([{"split": {"axis": 1, "parts": 5}}], src(w1), ctx, "w1")
    with pytest.raises(ConvertError, match="one list of steps per tensor"):
        steps.fan_out([{"each": [[]]}, {"split": {"axis": 0, "parts": 2}}, {"each": [[]]}], "test")
