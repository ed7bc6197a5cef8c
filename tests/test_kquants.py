"""gguf_out.kquants against ggml's own K-quant reference quantizers (ggml_quantize_chunk from the xllamacpp wheel):
the bytes must be identical (gguf-targets.md §8, §11.1)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

import llamacpp
from gguf_out import kquants

K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def distributions(rows, n, seed=0):
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal((rows, n)).astype(np.float32) * np.float32(0.02)
    outliers = gauss.copy()
    outliers[rng.random(outliers.shape) < 0.01] *= 100
    sparse = gauss.copy()
    sparse[rng.random(sparse.shape) < 0.9] = 0
    mixed_subblocks = gauss * np.repeat(10.0 ** rng.integers(-6, 3, (rows, n // 16)), 16, axis=1)
    ties = rng.choice(np.float32([-2.0, -1.0, 0.0, 1.0, 2.0]), (rows, n))
    return {
        "gaussian": gauss,
        "outliers": outliers,
        "zeros": np.zeros((rows, n), np.float32),
        "constant": np.full((rows, n), 0.37, np.float32),
        "tiny": rng.standard_normal((rows, n)).astype(np.float32) * np.float32(1e-8),
        "bf16_grid": (gauss.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32),
        "small_ints": rng.integers(-8, 8, (rows, n)).astype(np.float32),
        "all_positive": np.abs(gauss) + np.float32(0.01),
        "all_negative": -np.abs(gauss) - np.float32(0.01),
        "sparse": sparse,
        "ties": ties,                                   # equal |x| of both signs: first-occurrence rules
        "mixed_subblocks": mixed_subblocks.astype(np.float32),
        "wide_range": (rng.standard_normal((rows, n)) * 10.0 ** rng.integers(-30, 30, (rows, n))).astype(np.float32),
    }


def ggml(qtype, data):
    return np.frombuffer(llamacpp.quantize_chunk(qtype, data), np.uint8).reshape(data.shape[0], -1)


def assert_same(qtype, data, got):
    ref = ggml(qtype, data)
    assert got.shape == ref.shape and got.dtype == np.uint8
    if not np.array_equal(got, ref):
        size = kquants.GGML_QUANT_SIZES[qtype][1]
        bad = np.flatnonzero((got.reshape(-1, size) != ref.reshape(-1, size)).any(axis=1))
        pytest.fail(f"{qtype.name}: {bad.size} of {got.size // size} blocks differ from ggml, first {bad[:5]}")


DISTS = distributions(8, 1024)


@pytest.mark.parametrize("dist", list(DISTS))
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml(qtype, dist):
    data = DISTS[dist]
    assert_same(qtype, data, kquants.quantize(data, qtype))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_row_lengths(qtype, k):
    data = distributions(5, 256 * k, seed=k)["outliers"]
    assert_same(qtype, data, kquants.quantize(data, qtype))


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_many_blocks_and_chunk_seams(qtype, monkeypatch):
    """Thousands of sub-blocks (Q3_K's later descent passes run on a subset of them), split over many small
    chunks with a partial last one."""
    data = distributions(96, 1024, seed=7)["gaussian"]
    monkeypatch.setitem(kquants.CHUNK_ELEMENTS, qtype, 7 * 256)
    assert_same(qtype, data, kquants.quantize(data, qtype))


@pytest.mark.parametrize("qtype", [T.Q3_K, T.Q6_K], ids=lambda t: t.name)
def test_parallel_equals_serial(qtype, monkeypatch):
    data = distributions(64, 1024, seed=3)["gaussian"]
    monkeypatch.setitem(kquants.CHUNK_ELEMENTS, qtype, 4 * 256)
    got = kquants.quantize_parallel(data, qtype, threads=3)
    assert_same(qtype, data, got)


# rough quality bounds: relative RMSE on Gaussian data (measured §8.6: 0.28, 0.15, 0.083, 0.043, 0.025)
RMSE = {T.Q2_K: 0.35, T.Q3_K: 0.2, T.Q4_K: 0.11, T.Q5_K: 0.06, T.Q6_K: 0.035}


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_dequantize_round_trip(qtype):
    data = DISTS["gaussian"]

    def rmse(t):
        back = dequantize(kquants.quantize(data, t), t)
        assert back.shape == data.shape
        return float(np.sqrt(np.mean((back - data) ** 2)))

    assert rmse(qtype) / data.std() < RMSE[qtype]
    if qtype != T.Q2_K:     # the next coarser type is worse: the round trip measures something
        assert rmse(K_TYPES[K_TYPES.index(qtype) - 1]) > rmse(qtype)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_ggml_validates_rows(qtype):
    got = kquants.quantize(DISTS["outliers"], qtype)
    assert llamacpp.validate_row_data(qtype, got.tobytes())
    # negative control: an fp16 NaN in the first block's d is rejected
    bad = got.copy()
    offset = {T.Q2_K: 80, T.Q3_K: 108, T.Q4_K: 0, T.Q5_K: 0, T.Q6_K: 208}[qtype]
    bad[0, offset:offset + 2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    assert not llamacpp.validate_row_data(qtype, bad.tobytes())


def test_input_checks():
    with pytest.raises(ValueError, match="row length 300 is not a multiple of 256"):
        kquants.quantize(np.zeros((2, 300), np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="not a K-quant"):
        kquants.quantize(np.zeros((2, 256), np.float32), T.Q8_0)
    with pytest.raises(ValueError, match="2-D"):
        kquants.quantize(np.zeros(256, np.float32), T.Q4_K)
    assert kquants.quantize(np.zeros((0, 512), np.float32), T.Q6_K).shape == (0, 420)


def test_other_float_dtypes_are_converted():
    data = DISTS["bf16_grid"][:2]
    assert np.array_equal(kquants.quantize(data.astype(np.float64), T.Q4_K), kquants.quantize(data, T.Q4_K))


def test_numpy_axis0_sum_is_sequential():
    """The port's premise (§8.3): np.add.reduce over axis 0 of a (n, S >= 2) array adds row by row, in order,
    not pairwise.  If a NumPy release changes that, this says so directly."""
    rng = np.random.default_rng(0)
    for n, s in [(16, 2), (32, 3), (32, 1000)]:
        a = (rng.standard_normal((n, s)) * 10.0 ** rng.integers(-6, 6, (n, s))).astype(np.float32)
        acc = a[0].copy()
        for i in range(1, n):
            acc += a[i]
        assert np.array_equal(np.add.reduce(a, axis=0), acc)
