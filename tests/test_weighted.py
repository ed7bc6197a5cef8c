"""gguf_out.weighted against ggml's importance-weighted quantizers (ggml_quantize_chunk with quant_weights, from
the xllamacpp wheel): the bytes must be identical for every type, distribution and kind of importance."""

import llamacpp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from test_kquants import distributions

from gguf_out import kquants, weighted

TYPES = list(weighted.WEIGHTED_TYPES)


def importances(n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(n).astype(np.float32)
    return {
        "uniform": base,
        "heavy_tail": (base ** 6 * 1e3).astype(np.float32),      # a few columns dominate, as in real imatrices
        "some_zero": np.where(rng.random(n) < 0.3, 0, base).astype(np.float32),
        "all_zero": np.zeros(n, np.float32),
        "ones": np.ones(n, np.float32),                          # an expert that saw no token
        "tiny": (base * 1e-12).astype(np.float32),
    }


def ggml(qtype, data, qw):
    return np.frombuffer(llamacpp.quantize_chunk(qtype, data, qw), np.uint8).reshape(data.shape[0], -1)


def assert_same(qtype, data, qw):
    got, ref = weighted.quantize(data, qtype, qw), ggml(qtype, data, qw)
    assert got.shape == ref.shape and got.dtype == np.uint8
    if not np.array_equal(got, ref):
        size = GGML_QUANT_SIZES[qtype][1]
        bad = np.flatnonzero((got.reshape(-1, size) != ref.reshape(-1, size)).any(axis=1))
        pytest.fail(f"{qtype.name}: {bad.size} of {got.size // size} blocks differ from ggml, first {bad[:5]}")


DISTS = distributions(6, 768)
WEIGHTS = importances(768)


@pytest.mark.parametrize("dist", list(DISTS))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bytes_equal_ggml(qtype, dist):
    assert_same(qtype, DISTS[dist], WEIGHTS["heavy_tail"])


@pytest.mark.parametrize("kind", list(WEIGHTS))
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_kinds_of_importance(qtype, kind):
    for dist in ("gaussian", "outliers", "sparse"):
        assert_same(qtype, DISTS[dist], WEIGHTS[kind])


@pytest.mark.parametrize("rows", [1, 2, 3, 130])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_row_counts_and_chunk_seams(qtype, rows, monkeypatch):
    monkeypatch.setattr(weighted, "_CHUNK_ELEMENTS", 3 * 512)      # several chunks, one of a single row
    data = distributions(rows, 512, seed=rows)["outliers"]
    assert_same(qtype, data, importances(512, seed=rows)["uniform"])


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1], ids=lambda t: t.name)
def test_legacy_rows_of_32(qtype):
    """sigma2 of Q4_0..Q5_1 is over the whole row: rows of one block and of an odd number of blocks."""
    for n in (32, 96):
        assert_same(qtype, distributions(5, n)["gaussian"], importances(n)["heavy_tail"])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_importances_change_the_bytes(qtype):
    """Negative control: the weighted path is not the unweighted one (and ggml agrees that it differs)."""
    data = DISTS["gaussian"]
    plain = np.frombuffer(llamacpp.quantize_chunk(qtype, data), np.uint8).reshape(data.shape[0], -1)
    with_w = weighted.quantize(data, qtype, WEIGHTS["heavy_tail"])
    assert not np.array_equal(plain, with_w)
    if qtype in kquants.K_TYPES:
        assert np.array_equal(plain, kquants.quantize(data, qtype))


def test_input_checks():
    data = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="Q8_0 has no importance-weighted quantizer"):
        weighted.quantize(data, T.Q8_0, np.ones(256, np.float32))
    with pytest.raises(ValueError, match="100 importance weights for rows of 256"):
        weighted.quantize(data, T.Q4_K, np.ones(100, np.float32))
    with pytest.raises(ValueError, match="row length 96 is not a multiple of 256"):
        weighted.quantize(np.zeros((2, 96), np.float32), T.Q4_K, np.ones(96, np.float32))
    assert weighted.quantize(np.zeros((0, 256), np.float32), T.Q6_K, np.ones(256, np.float32)).shape == (0, 210)
