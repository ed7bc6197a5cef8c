"""gguf_out.imatrix: both imatrix formats read as llama-quantize reads them, and clear one-line errors."""

import struct

import gguf
import numpy as np
import pytest
from conftest import FIXTURES

from gguf_out import imatrix
from gguf_out.errors import ConvertError

IMATRIX = FIXTURES / "imatrix"


class _Writer(gguf.GGUFWriter):
    def add_architecture(self):        # imatrix files have no general.architecture
        pass


def write_gguf(path, entries, datasets=("data.txt",), chunk_count=7, chunk_size=512, keys=None, dtype=np.float32):
    """entries: {name: (in_sum2 [n_mat, n], counts [n_mat])}; a value of None leaves that tensor out."""
    w = _Writer(path=str(path), arch="")
    w.add_type(gguf.GGUFType.IMATRIX)
    keys = keys if keys is not None else ("datasets", "chunk_count", "chunk_size")
    if "datasets" in keys:
        w.add_array(gguf.Keys.IMatrix.DATASETS, list(datasets))
    if "chunk_count" in keys:
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, chunk_count)
    if "chunk_size" in keys:
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, chunk_size)
    for name, (sums, counts) in sorted(entries.items()):
        if sums is not None:
            w.add_tensor(f"{name}.in_sum2", np.asarray(sums, dtype))
        if counts is not None:
            w.add_tensor(f"{name}.counts", np.asarray(counts, np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_dat(path, entries, trailer=(3, "data.txt")):
    """entries: {name: (values, ncall)}."""
    out = [struct.pack("<i", len(entries))]
    for name, (values, ncall) in entries.items():
        raw = name.encode()
        values = np.asarray(values, "<f4")
        out.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size) + values.tobytes())
    if trailer is not None:
        out.append(struct.pack("<i", trailer[0]) + struct.pack("<i", len(trailer[1])) + trailer[1].encode())
    path.write_bytes(b"".join(out))
    return path


def test_gguf_weights_are_sums_over_counts_per_expert(tmp_path):
    sums = np.float32([[3, 6, 9, 12], [1, 1, 1, 1], [5, 5, 5, 5]])
    path = write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_up_exps.weight": (sums, [3, 0, 2.5]),
                                            "blk.0.attn_q.weight": ([[2, 4, 6, 8]], [2])})
    m = imatrix.load(path)
    w, warning = m.for_tensor("blk.0.ffn_up_exps.weight", (3, 7, 4))
    assert warning is None
    # count 2.5 rounds to 3 (std::lround: halves away from zero); an expert with no token gets 1
    np.testing.assert_array_equal(w, np.float32([[1, 2, 3, 4], [1, 1, 1, 1], [5 / 3] * 4]))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(m.for_tensor("blk.0.attn_q.weight", (5, 4))[0], [[1, 2, 3, 4]])
    assert m.datasets == ["data.txt"] and m.chunk_count == 7 and not m.legacy


def test_legacy_values_over_ncall(tmp_path):
    path = write_dat(tmp_path / "m.dat", {"blk.0.attn_q.weight": ([2, 4, 6, 8], 2), "output.weight": ([1, 2], 0)})
    m = imatrix.load(path)
    np.testing.assert_array_equal(m.for_tensor("blk.0.attn_q.weight", (3, 4))[0], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(m.weights["output.weight"], [1, 2])       # ncall 0: the values as they are
    assert m.legacy and m.datasets == ["data.txt"] and m.chunk_count == 3


def test_legacy_without_trailer(tmp_path):
    m = imatrix.load(write_dat(tmp_path / "m.dat", {"a.weight": ([1.0], 1)}, trailer=None))
    assert m.datasets == [] and m.chunk_count == 0


def test_dat_and_gguf_fixtures_hold_the_same_weights():
    dat = imatrix.load(IMATRIX / "dense.imatrix.dat")
    gg = imatrix.load(IMATRIX / "dense.imatrix.gguf")
    assert dat.weights.keys() == gg.weights.keys() and len(gg.weights) > 50
    for name in gg.weights:
        np.testing.assert_array_equal(dat.weights[name], gg.weights[name], err_msg=name)


def test_quantize_keys(tmp_path):
    long_name = tmp_path / ("x" * 150 + ".gguf")
    m = imatrix.load(write_gguf(long_name, {"a.weight": ([[1.0]], [1])}, datasets=("d1.txt", "d2.txt")))
    kvs = dict(m.kvs())
    assert len(kvs[imatrix.KV_FILE].value.encode()) == 127            # llama-quantize's char[128] override
    assert kvs[imatrix.KV_DATASET].value == "d1.txt"                   # the first dataset only
    assert kvs[imatrix.KV_ENTRIES].vtype == gguf.GGUFValueType.UINT32 and kvs[imatrix.KV_ENTRIES].value == 1
    assert kvs[imatrix.KV_CHUNKS].value == 7
    m = imatrix.load(write_gguf(tmp_path / "n.gguf", {"a.weight": ([[1.0]], [1])}, chunk_count=0))
    assert [k for k, _ in m.kvs()] == [imatrix.KV_FILE, imatrix.KV_DATASET, imatrix.KV_ENTRIES]
    m = imatrix.load(write_dat(tmp_path / "n.dat", {"a.weight": ([1.0], 1)}, trailer=None))
    assert [k for k, _ in m.kvs()] == [imatrix.KV_FILE, imatrix.KV_ENTRIES]


def test_missing_entry_is_a_warning(tmp_path):
    m = imatrix.load(write_gguf(tmp_path / "m.gguf", {"blk.0.attn_q.weight": ([[1, 2]], [1])}))
    w, warning = m.for_tensor("blk.0.attn_k.weight", (4, 2))
    assert w is None and "no importance entry for blk.0.attn_k.weight" in warning


def test_wrong_length_is_an_error_except_for_token_embd(tmp_path):
    m = imatrix.load(write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_up_exps.weight": ([[1, 2], [3, 4]], [1, 1]),
                                                       "token_embd.weight": ([[1, 2]], [1])}))
    with pytest.raises(ConvertError, match=r"the entry for blk.0.ffn_up_exps.weight has 4 values, the tensor "
                                           r"needs 2 columns x 3 experts = 6"):
        m.for_tensor("blk.0.ffn_up_exps.weight", (3, 5, 2))
    w, warning = m.for_tensor("token_embd.weight", (10, 3))
    assert w is None and "has 2 values" in warning and "quantized without" in warning


@pytest.mark.parametrize("case,message", [
    ("no_metadata", "missing imatrix metadata (imatrix.chunk_size); llama-quantize refuses the file"),
    ("no_counts", "mismatched sums and counts for a.weight"),
    ("f16", "a.weight.in_sum2 and a.weight.counts must be F32"),
    ("not_finite", "the entry for a.weight has a non-finite value (inf)"),
    ("indivisible", "a.weight.in_sum2 has 3 values, not a multiple of its 2 counts"),
])
def test_gguf_errors(tmp_path, case, message):
    entries = {"a.weight": ([[1.0, 2.0]], [1])}
    kwargs = {}
    if case == "no_metadata":
        kwargs["keys"] = ("datasets", "chunk_count")
    elif case == "no_counts":
        entries = {"a.weight": ([[1.0]], None)}
    elif case == "f16":
        kwargs["dtype"] = np.float16
    elif case == "not_finite":
        entries = {"a.weight": ([[1.0, np.inf]], [1])}
    elif case == "indivisible":
        entries = {"a.weight": ([1.0, 2.0, 3.0], [1, 1])}
    path = write_gguf(tmp_path / "m.gguf", entries, **kwargs)
    with pytest.raises(ConvertError) as e:
        imatrix.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("data,message", [
    (b"", "truncated legacy imatrix: the entry count at byte 0"),
    (struct.pack("<i", 0), "no data (entry count 0)"),
    (struct.pack("<ii", 1, 1000) + b"abc", "entry 1: name of 1000 bytes at byte 8 does not fit"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 4) + b"\0" * 8, "entry 1 (a): 4 values at byte 17 run "
                                                                              "past the end (25 bytes)"),
    (struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 0), "entry 1 (a) has 0 values"),
])
def test_legacy_errors(tmp_path, data, message):
    path = tmp_path / "m.dat"
    path.write_bytes(data)
    with pytest.raises(ConvertError) as e:
        imatrix.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConvertError, match="cannot read the importance matrix"):
        imatrix.load(tmp_path / "none.dat")
