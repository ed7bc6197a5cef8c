"""gguf_out.encode.encode_rows: every source dtype into every output type, on one thread and several, equals the
plain numpy / ggml conversion (work buffers reused between calls must not leak one block into the next)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import llamacpp
from gguf_out import encode

OUT_TYPES = [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q5_1, T.Q4_K, T.Q6_K]


def source(dtype_name, rows, n, seed):
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * 0.05).astype(np.float32)
    x[0, :7] = [0.0, -0.0, 1e-8, 65504.0, 7e4, -1e-30, 3.0]       # f16 overflow / underflow, signed zero
    if dtype_name == "BFloat16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x.astype({"Float32": np.float32, "Float16": np.float16, "Float64": np.float64}[dtype_name])


def reference(block, dtype_name, ggml_type):
    values = encode.to_float32(block, dtype_name)
    if ggml_type == T.F32:
        return np.ascontiguousarray(values, np.float32).view(np.uint8).reshape(len(block), -1)
    if ggml_type == T.F16:
        return values.astype(np.float16).view(np.uint8).reshape(len(block), -1)
    data = np.ascontiguousarray(values, np.float32)
    return np.frombuffer(llamacpp.quantize_chunk(ggml_type, data), np.uint8).reshape(len(block), -1)


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("dtype_name", ["Float32", "Float16", "BFloat16", "Float64"])
@pytest.mark.parametrize("ggml_type", OUT_TYPES, ids=lambda t: t.name)
def test_encode_rows_equals_reference(ggml_type, dtype_name, threads, monkeypatch):
    monkeypatch.setattr(encode, "_WIDEN_ELEMENTS", 3000)            # several widening pieces per band
    for seed, rows in enumerate([96, 40, 17]):                      # shrinking bands reuse the larger buffers
        block = source(dtype_name, rows, 512, seed)
        if encode.SAME_BYTES.get(dtype_name) == ggml_type:
            continue
        got = np.asarray(encode.encode_rows(block, dtype_name, ggml_type, threads)).view(np.uint8)
        want = reference(block, dtype_name, ggml_type)
        assert np.array_equal(got.reshape(want.shape), want), (seed, rows)


def test_strided_band_and_small_tensors():
    block = source("Float32", 64, 512, 3)[:, ::-1]                  # a non-contiguous view
    assert np.array_equal(np.asarray(encode.encode_rows(block, "Float32", T.Q8_0, 2)),
                          reference(np.ascontiguousarray(block), "Float32", T.Q8_0))
    norm = np.linspace(-1, 1, 256, dtype=np.float32)
    assert np.array_equal(encode.encode_rows(norm, "Float32", T.F16, 2), norm.astype(np.float16))


def test_the_result_is_reused_by_the_next_call():
    """Documented contract (the writer consumes each result before the next call): a negative control showing
    the buffer really is shared, so the test above is checking the reuse."""
    a = encode.encode_rows(source("Float32", 32, 256, 1), "Float32", T.Q8_0, 1)
    first = np.array(a)
    encode.encode_rows(source("Float32", 32, 256, 2), "Float32", T.Q8_0, 1)
    assert not np.array_equal(a, first)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype_name", ["Float32", "BFloat16"])
def test_f16_path_is_numpys_cast_bit_for_bit(dtype_name, threads):
    """The compiled f32/bf16 -> f16 conversion against numpy's astype on every kind of value: rounding ties,
    overflow to inf, sub-normal halves, signed zeros, inf, quiet and signalling NaNs with payloads."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, (64, 1024), dtype=np.uint64).astype(np.uint32)      # every exponent
    bits[0, :8] = [0x7F800001, 0xFFC00001, 0x7FA00000, 0x7F800000, 0xFF800000, 0x80000000, 0x477FF000, 0x33000000]
    bits[1] = (np.float32(1.0) + np.arange(1024, dtype=np.float32) * np.float32(2.0 ** -11)).view(np.uint32)  # ties
    block = bits.view(np.float32) if dtype_name == "Float32" else (bits >> 16).astype(np.uint16)
    with np.errstate(all="ignore"):
        want = encode.to_float32(block, dtype_name).astype(np.float16)
    got = np.asarray(encode.encode_rows(block, dtype_name, T.F16, threads))
    assert np.array_equal(got.view(np.uint16).reshape(want.shape), want.view(np.uint16))


@pytest.mark.parametrize("dtype_name", ["Float16", "BFloat16"])
def test_f32_path_is_exact_for_every_16_bit_pattern(dtype_name):
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(64, 1024)
    block = every.view(np.float16) if dtype_name == "Float16" else every
    want = encode.to_float32(block, dtype_name).astype(np.float32)
    got = np.asarray(encode.encode_rows(block, dtype_name, T.F32, 2)).view(np.uint32).reshape(want.shape)
    assert np.array_equal(got, want.view(np.uint32))


def test_importances_reach_one_row_and_many_rows_alike():
    """A 1-D block (one row, the small-tensor path) is quantized with its importances like the same row in 2-D;
    without them the bytes differ (the importances are not dropped on either path)."""
    rng = np.random.default_rng(7)
    row = rng.standard_normal(256).astype(np.float32)
    weights = rng.uniform(0.0, 5.0, 256).astype(np.float32) ** 3
    one = bytes(encode.encode_rows(row, "Float32", T.Q4_K, 1, weights))
    two = bytes(encode.encode_rows(np.tile(row, (20, 1)), "Float32", T.Q4_K, 1, weights))
    assert one == two[:len(one)]
    assert one != bytes(encode.encode_rows(row, "Float32", T.Q4_K, 1))
