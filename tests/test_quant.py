"""gguf_out.quant (the compiled quantizers) against ggml's own ``ggml_quantize_chunk`` from the xllamacpp wheel: the
bytes must be identical for every type, on many value distributions, with and without importance weights, on one
thread and on several."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import llamacpp
from gguf_out import kquants, quant
from test_kquants import distributions

TYPES = list(quant.TYPES)
DISTS = distributions(6, 1024, seed=11)
DISTS["subnormal"] = (np.random.default_rng(2).standard_normal((6, 1024)) * 1e-39).astype(np.float32)
DISTS["huge"] = (np.random.default_rng(3).standard_normal((6, 1024)) * 1e37).astype(np.float32)
DISTS["one_outlier_per_block"] = DISTS["gaussian"].copy()
DISTS["one_outlier_per_block"][:, ::32] = 7.0


def weights(kind, n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "uniform": rng.random(n).astype(np.float32) * 4,
        "ones": np.ones(n, np.float32),
        "heavy": (rng.standard_normal(n) ** 2 * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32),
        "some_zero": np.where(rng.random(n) < 0.3, 0, rng.random(n)).astype(np.float32),
    }[kind]


def ggml(qtype, data, qw=None):
    return np.frombuffer(llamacpp.quantize_chunk(qtype, data, qw), np.uint8).reshape(data.shape[0], -1)


def assert_same(qtype, data, got, qw=None):
    ref = ggml(qtype, data, qw)
    assert got.shape == ref.shape and got.dtype == np.uint8
    if not np.array_equal(got, ref):
        size = quant.GGML_QUANT_SIZES[qtype][1]
        bad = np.flatnonzero((got.reshape(-1, size) != ref.reshape(-1, size)).any(axis=1))
        pytest.fail(f"{qtype.name}: {bad.size} of {got.size // size} blocks differ from ggml, first {bad[:5]}")


@pytest.mark.parametrize("dist", list(DISTS))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml(qtype, dist):
    data = DISTS[dist]
    assert_same(qtype, data, quant.quantize(data, qtype))


@pytest.mark.parametrize("wkind", ["uniform", "ones", "heavy", "some_zero"])
@pytest.mark.parametrize("dist", ["gaussian", "outliers", "zeros", "sparse", "ties", "mixed_subblocks", "tiny",
                                  "all_positive"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_weighted_bytes_equal_ggml(qtype, dist, wkind):
    data = DISTS[dist]
    qw = weights(wkind, data.shape[1], seed=len(dist))
    assert_same(qtype, data, quant.quantize(data, qtype, quant_weights=qw), qw)


@pytest.mark.parametrize("qtype", [t for t in TYPES if t != T.Q8_0], ids=lambda t: t.name)
def test_weights_change_the_bytes(qtype):
    """Negative control: the weighted path is really another algorithm (Q8_0 alone ignores weights, as ggml)."""
    data = DISTS["gaussian"]
    plain = quant.quantize(data, qtype)
    assert not np.array_equal(plain, quant.quantize(data, qtype, quant_weights=weights("heavy", 1024)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_row_lengths_and_expert_shapes(qtype):
    """Short rows (one block), long rows, and an expert tensor [experts, rows, n] seen as its rows."""
    block = quant.block_size(qtype)
    for n in sorted({block, 256, 256 * 3, 256 * 11}):
        data = distributions(3, n, seed=n)["outliers"]
        assert_same(qtype, data, quant.quantize(data, qtype))
    experts = distributions(4 * 8, 512, seed=4)["gaussian"].reshape(4, 8, 512)
    rows = experts.reshape(-1, 512)
    assert_same(qtype, rows, quant.quantize(rows, qtype))


@pytest.mark.parametrize("threads", [2, 3, 8])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_parallel_equals_ggml(qtype, threads):
    data = distributions(37, 512, seed=threads)["outliers"]
    assert_same(qtype, data, quant.quantize_parallel(data, qtype, threads))
    qw = weights("uniform", 512)
    assert_same(qtype, data, quant.quantize_parallel(data, qtype, threads, quant_weights=qw), qw)


@pytest.mark.parametrize("qtype", kquants.K_TYPES, ids=lambda t: t.name)
def test_numpy_reference_agrees(qtype):
    """The NumPy port (gguf_out.kquants, kept as a readable second implementation) and the compiled kernels."""
    data = DISTS["mixed_subblocks"]
    assert np.array_equal(kquants.quantize(data, qtype), quant.quantize(data, qtype))


def test_input_checks():
    with pytest.raises(ValueError, match="row length 300 is not a multiple of 256"):
        quant.quantize(np.zeros((2, 300), np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="row length 40 is not a multiple of 32"):
        quant.quantize(np.zeros((2, 40), np.float32), T.Q8_0)
    with pytest.raises(ValueError, match="not a type these quantizers write"):
        quant.quantize(np.zeros((2, 256), np.float32), T.IQ2_XS)
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize(np.zeros(256, np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="quant_weights has 3 values, expected one per column"):
        quant.quantize(np.zeros((2, 256), np.float32), T.Q4_K, quant_weights=np.ones(3))
    assert quant.quantize(np.zeros((0, 512), np.float32), T.Q6_K).shape == (0, 420)
    assert quant.quantize_parallel(np.zeros((0, 512), np.float32), T.Q6_K, 2).shape == (0, 420)


def test_other_float_dtypes_are_converted():
    data = DISTS["bf16_grid"][:2]
    assert np.array_equal(quant.quantize(data.astype(np.float64), T.Q4_K), quant.quantize(data, T.Q4_K))
    assert np.array_equal(quant.quantize(data.astype(np.float16), T.Q8_0),
                          quant.quantize(data.astype(np.float16).astype(np.float32), T.Q8_0))
